//! The ledger against the registry: importing versions the registry already
//! holds (first sight of a repository, or a lost state directory), finishing
//! floating tags, rollback and resume.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use chrono::Utc;
use rebased_builder::provenance;
use rebased_core::config::ImageConfig;
use rebased_core::{Digest, ImageState, Trigger, Version};
use rebased_scheduler::dispatch::{lock as lock_queue, Command};
use rebased_state::{BaseChange, Reason, RollbackEvent, VersionRecord};
use tracing::{info, warn};

use crate::daemon::Daemon;
use crate::destination::Destination;

/// At most this many versions are read back from a repository.
const MAX_IMPORT: usize = 200;

/// Fails the process at a named point, for crash tests. Only debug builds
/// (the test builds) read `REBASED_FAILPOINT`; release builds never do.
pub fn failpoint(name: &str) {
    if cfg!(debug_assertions) && std::env::var("REBASED_FAILPOINT").is_ok_and(|f| f == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

fn repository(image: &ImageConfig) -> Destination {
    Destination::from(&image.repository)
}

impl Daemon {
    /// Makes sure the ledger of `image` knows what its repository holds:
    /// unless already done, every semver tag (newest 200) is read back with
    /// its annotations, and the highest becomes the current version.
    pub async fn ensure_ledger(&self, image: &ImageConfig) -> Result<()> {
        let name = image.name.as_str();
        if self.store.image(name)?.is_some_and(|r| r.ledger_synced) {
            return Ok(());
        }
        let repo = repository(image);
        let registry = self.registry();
        let tags = repo.list_tags(&registry).await?;
        let mut versions: Vec<Version> =
            tags.iter().filter_map(|t| Version::parse(t).ok()).collect();
        versions.sort();
        if versions.len() > MAX_IMPORT {
            warn!(image = %name, found = versions.len(), "importing only the newest {MAX_IMPORT} versions");
            versions.drain(..versions.len() - MAX_IMPORT);
        }
        let mut records: BTreeMap<Version, VersionRecord> = BTreeMap::new();
        for v in &versions {
            let manifest = repo.manifest(&registry, &v.to_string()).await?;
            let rec = provenance::recorded(&repo.provenance(&registry, &manifest).await);
            records.insert(
                *v,
                VersionRecord {
                    version: *v,
                    digest: manifest.digest,
                    built_at: rec.created.unwrap_or_else(Utc::now),
                    bases: rec.bases.unwrap_or_default(),
                    platforms: rec.platforms,
                    trigger: rec.trigger.unwrap_or(Trigger::Recovered),
                    superseded_by: None,
                    superseded_at: None,
                    reason: None,
                    supersedes: rec.supersedes,
                    job: None,
                },
            );
        }
        // Link each version to its predecessor: the annotated one, else the one before.
        let order: Vec<Version> = records.keys().copied().collect();
        for (i, v) in order.iter().enumerate() {
            let Some(rec) = records.get(v).cloned() else {
                continue;
            };
            let prev = rec
                .supersedes
                .or_else(|| i.checked_sub(1).map(|j| order[j]));
            let Some(prev) = prev else { continue };
            if let Some(p) = records.get_mut(&prev) {
                p.superseded_by = Some(*v);
                p.superseded_at = Some(rec.built_at);
                p.reason = Some(Reason {
                    trigger: rec.trigger,
                    bases: rec
                        .bases
                        .iter()
                        .map(|(r, d)| BaseChange {
                            reference: r.clone(),
                            before: p.bases.get(r).cloned(),
                            after: d.clone(),
                        })
                        .collect(),
                });
            }
        }
        let current = order.last().copied();
        let list: Vec<VersionRecord> = records.into_values().collect();
        self.store.import(name, &list, current)?;
        match current {
            Some(v) => {
                info!(image = %name, versions = list.len(), current = %v, "ledger read back from the registry")
            }
            None => info!(image = %name, "repository holds no version yet"),
        }
        Ok(())
    }

    /// Points every floating tag of `image` at `digest` (rendered for
    /// `version`) where it does not already: finishes a move a crash cut short.
    pub async fn ensure_floating_tags(
        &self,
        image: &ImageConfig,
        version: &Version,
        digest: &Digest,
    ) -> Result<()> {
        let repo = repository(image);
        let registry = self.registry();
        let mut errors = Vec::new();
        for template in &image.tags {
            let tag = template.render(version);
            match repo.lookup(&registry, &tag).await {
                Ok(Some(d)) if &d == digest => continue,
                Ok(_) => {}
                Err(e) => {
                    errors.push(format!("{tag}: {e}"));
                    continue;
                }
            }
            match repo.tag(&registry, digest, &tag).await {
                Ok(()) => info!(image = %image.name, tag = %tag, %version, "moved floating tag"),
                Err(e) => errors.push(format!("{tag}: {e}")),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(anyhow!("floating tags did not move: {}", errors.join("; ")))
        }
    }

    /// Rolls `name` back to `to`: the floating tags of the current version
    /// and of `to` point at `to`'s digest again, the event is recorded, and
    /// the image is held.
    pub async fn rollback(&self, name: &str, to: &Version) -> Result<RollbackEvent> {
        let image = self
            .image(name)
            .ok_or_else(|| anyhow!("no image {name:?}"))?;
        if lock_queue(&self.queue)
            .active(name)
            .is_some_and(|j| j.state == rebased_core::job::JobState::Running)
        {
            bail!("{name} is building; roll back when the build is done");
        }
        self.ensure_ledger(&image).await?;
        let target = self
            .store
            .version(name, to)?
            .ok_or_else(|| anyhow!("{name} has no version {to} in its ledger"))?;
        // Held first, so that no job starting meanwhile builds or moves tags.
        let before = self.store.image(name)?.map(|r| r.state);
        self.store
            .update_image(name, |r| r.state = ImageState::Held)?;
        let from = self.store.image(name)?.and_then(|r| r.current);
        let _ = self
            .jobs_tx
            .send(Command::Cancel {
                image: name.to_owned(),
            })
            .await;
        match self.move_back(&image, name, to, from, &target.digest).await {
            Ok(event) => Ok(event),
            Err(e) => {
                let restore = before.unwrap_or(ImageState::Fresh);
                self.store.update_image(name, |r| r.state = restore)?;
                Err(e)
            }
        }
    }

    async fn move_back(
        &self,
        image: &ImageConfig,
        name: &str,
        to: &Version,
        from: Option<Version>,
        digest: &Digest,
    ) -> Result<RollbackEvent> {
        let repo = repository(image);
        let registry = self.registry();
        let mut tags: Vec<String> = image.tags.iter().map(|t| t.render(to)).collect();
        if let Some(f) = &from {
            tags.extend(image.tags.iter().map(|t| t.render(f)));
        }
        tags.sort();
        tags.dedup();
        for tag in &tags {
            repo.tag(&registry, digest, tag)
                .await
                .with_context(|| format!("pointing {tag} at {to}"))?;
        }
        let event = RollbackEvent {
            at: Utc::now(),
            from,
            to: *to,
            digest: digest.clone(),
        };
        self.store.rollback(name, &event)?;
        info!(image = %name, to = %to, from = ?from.map(|f| f.to_string()), tags = ?tags, "rolled back; image held");
        Ok(event)
    }

    /// Ends a hold: the image is decided again at once.
    pub async fn resume(&self, name: &str) -> Result<()> {
        let image = self
            .image(name)
            .ok_or_else(|| anyhow!("no image {name:?}"))?;
        let Some(rec) = self.store.image(name)? else {
            bail!("{name} is not held");
        };
        if rec.state != ImageState::Held {
            bail!("{name} is not held (it is {})", rec.state);
        }
        self.store.update_image(name, |r| {
            if r.state == ImageState::Held {
                r.state = ImageState::Fresh;
            }
        })?;
        info!(image = %name, "resumed");
        let plan = self.plan(&image)?;
        crate::poller::evaluate(
            self,
            &image,
            &plan.bases,
            Trigger::Poll,
            "resumed after a rollback",
        )
        .await;
        Ok(())
    }

    /// The highest version in the ledger of `name`.
    pub fn highest(&self, name: &str) -> Result<Option<Version>> {
        Ok(self
            .store
            .versions(name)?
            .into_iter()
            .map(|v| v.version)
            .max())
    }
}
