//! Running one job: decide again with the inputs of now (level-triggered, so
//! a re-run after a crash or a merged trigger is idempotent), build pinned,
//! push the version tag, record, then move the floating tags.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use chrono::Utc;
use rebased_builder::{installed_engine, provenance, BuildRequest, EngineKind};
use rebased_core::config::{Backend, ImageConfig};
use rebased_core::dockerfile::BaseKind;
use rebased_core::job::{Job, JobId, JobState};
use rebased_core::{Digest, ImageRef, ImageState, Trigger, Version};
use rebased_scheduler::dispatch::Executor;
use rebased_scheduler::queue::{Finished, Outcome};
use rebased_scheduler::{decide, Change, Decision, Inputs, Published};
use rebased_state::{BaseChange, BaseRecord, Reason, VersionRecord};
use tracing::{error, info, info_span, warn, Instrument};

use crate::daemon::{lock, version_inputs, Daemon, Plan};
use crate::destination::Destination;
use crate::ledger::failpoint;
use crate::poller::set_state;

impl Executor for Daemon {
    async fn execute(&self, job: Job) -> Outcome {
        let Some(image) = self.image(&job.image) else {
            warn!(image = %job.image, job = job.id, "image no longer configured; job dropped");
            return Outcome::Fresh;
        };
        let span = info_span!("job", image = %job.image, job = job.id);
        let started = std::time::Instant::now();
        let outcome = match self.run_job(&image, &job).instrument(span).await {
            Ok(Some(v)) => {
                self.metrics.inc(
                    "rebased_versions_published_total",
                    &[("image", job.image.as_str())],
                );
                Outcome::Published(v)
            }
            Ok(None) => Outcome::Fresh,
            Err(_) if self.builds.is_cancelled() => Outcome::Interrupted,
            Err(e) => {
                error!(image = %job.image, job = job.id, "{e:#}");
                Outcome::Failed(format!("{e:#}"))
            }
        };
        let label = match &outcome {
            Outcome::Published(_) => "published",
            Outcome::Fresh => "fresh",
            Outcome::Failed(_) => "failed",
            Outcome::Interrupted => "interrupted",
        };
        self.metrics
            .inc("rebased_builds_total", &[("outcome", label)]);
        if !matches!(outcome, Outcome::Fresh) {
            self.metrics.observe_build(started.elapsed().as_secs_f64());
        }
        outcome
    }

    fn record(&self, job: &Job, finished: Option<&Finished>) {
        if let Err(e) = self.store.put_job(job) {
            error!(job = job.id, "cannot record job: {e}");
        }
        self.report_status();
        let name = job.image.as_str();
        let held = self
            .store
            .image(name)
            .ok()
            .flatten()
            .is_some_and(|r| r.state == ImageState::Held);
        if held {
            return;
        }
        match (job.state, finished) {
            (JobState::Queued, Some(Finished::Retry(_))) => {
                set_state(self, name, ImageState::Queued, job.error.clone())
            }
            (JobState::Queued, _) => set_state(self, name, ImageState::Queued, None),
            (JobState::Running, _) => set_state(self, name, ImageState::Building, None),
            (JobState::Failed, _) => {
                let inputs = lock(&self.failed_inputs).remove(name).unwrap_or_default();
                let result = self.store.update_image(name, |rec| {
                    rec.state = ImageState::Failing;
                    rec.last_error = job.error.clone();
                    rec.failed_inputs = Some(inputs.digests.clone());
                    rec.failed_platforms = inputs.platforms.clone();
                });
                if let Err(e) = result {
                    error!(image = %name, "cannot record failing state: {e}");
                }
            }
            (JobState::Succeeded, _) => {
                if lock(&self.queue).active(name).is_none() {
                    set_state(self, name, ImageState::Fresh, None);
                }
            }
            (JobState::Cancelled, _) => {}
        }
    }

    fn forget(&self, ids: &[JobId]) {
        if let Err(e) = self.store.delete_jobs(ids) {
            warn!("cannot drop old jobs: {e}");
        }
        for id in ids {
            let _ = std::fs::remove_file(self.log_path(*id));
        }
    }
}

impl Daemon {
    /// An auth file for buildah: credentials of every registry the build
    /// pulls from or pushes to (none when all are anonymous).
    fn auth_json<'a>(
        &self,
        target: Option<&ImageRef>,
        bases: impl Iterator<Item = &'a ImageRef>,
    ) -> Result<Option<String>> {
        let mut hosts: Vec<String> = bases.map(|b| b.registry().to_owned()).collect();
        hosts.extend(target.map(|t| t.registry().to_owned()));
        hosts.sort();
        hosts.dedup();
        let registry = self.registry();
        let mut auths = serde_json::Map::new();
        for host in hosts {
            let creds = registry
                .credentials(&host)
                .map_err(|e| anyhow!("credentials for {host}: {e}"))?;
            if let Some(c) = creds {
                let entry = if c.is_identity_token() {
                    serde_json::json!({ "identitytoken": c.secret })
                } else {
                    serde_json::json!({ "auth": c.basic() })
                };
                auths.insert(host, entry);
            }
        }
        Ok((!auths.is_empty()).then(|| serde_json::json!({ "auths": auths }).to_string()))
    }

    /// One attempt: `Some(version)` when a version was published.
    async fn run_job(&self, image: &ImageConfig, job: &Job) -> Result<Option<Version>> {
        let name = image.name.as_str();
        self.ensure_ledger(image).await?;
        if self
            .store
            .image(name)?
            .is_some_and(|r| r.state == ImageState::Held)
        {
            info!("image is held (rolled back); not building");
            return Ok(None);
        }
        let plan = self.plan(image)?;
        let (now, pins) = self.inputs(image, &plan).await?;
        lock(&self.failed_inputs).insert(name.to_owned(), now.clone());
        let record = self.store.image(name)?;
        let current = match record.as_ref().and_then(|r| r.current) {
            Some(v) => self.store.version(name, &v)?,
            None => None,
        };
        let built = current.as_ref().map(version_inputs);
        let highest = self.highest(name)?;
        let published = current
            .as_ref()
            .zip(built.as_ref())
            .zip(highest.as_ref())
            .map(|((c, inputs), highest)| Published {
                version: &c.version,
                inputs,
                highest,
            });
        // A rebuild request merged into the job forces a build.
        let trigger = if job.is_manual() {
            Trigger::Manual
        } else {
            job.trigger()
        };
        let decision = decide(published, &image.version, image.bump, &now, trigger);
        let Decision::Build {
            version,
            supersedes,
            trigger,
            changes,
        } = decision
        else {
            info!("image is already fresh; nothing to build");
            // A crash may have cut the floating tags' move short: finish it.
            if let Some(c) = &current {
                self.ensure_floating_tags(image, &c.version, &c.digest)
                    .await?;
                if c.job == Some(job.id) {
                    // This job published it before a crash: it still counts
                    // as its publish (and cascades).
                    return Ok(Some(c.version));
                }
            }
            return Ok(None);
        };
        let repo = Destination::from(&image.repository);
        info!(%version, %trigger, supersedes = ?supersedes.map(|v| v.to_string()), "building");
        self.build_and_publish(
            image, &repo, &plan, &pins, &now, version, supersedes, trigger, &changes, job.id,
        )
        .await?;
        Ok(Some(version))
    }

    /// The inputs of now: settled digests from the poller; bases that are
    /// managed images (a cascade) or never checked are resolved now.
    async fn inputs(
        &self,
        image: &ImageConfig,
        plan: &Plan,
    ) -> Result<(Inputs, BTreeMap<ImageRef, Digest>)> {
        for base in plan.bases.iter().filter(|b| b.digest().is_none()) {
            let key = base.to_string();
            let rec = self.store.base(&key)?;
            if rec.as_ref().is_some_and(|r| r.digest.is_some()) && !self.is_managed(base) {
                continue;
            }
            let d = self
                .registry()
                .resolve(base)
                .await
                .with_context(|| format!("resolving base {base}"))?;
            let mut rec = rec.unwrap_or_else(|| BaseRecord::new(&key));
            let t = Utc::now();
            if rec.digest.as_ref() != Some(&d) {
                rec.changed_at = Some(t);
                rec.platforms = self
                    .registry()
                    .platforms(&base.pinned(&d))
                    .await
                    .unwrap_or_default();
            }
            rec.digest = Some(d);
            rec.pending = None;
            rec.checked_at = Some(t);
            rec.error = None;
            self.store.put_base(&rec)?;
        }
        let inputs = self
            .stored_inputs(image, &plan.bases)
            .map_err(|base| anyhow!("digest of base {base} unknown"))?;
        let pins = plan
            .bases
            .iter()
            .filter_map(|b| {
                inputs
                    .digests
                    .get(&b.to_string())
                    .map(|d| (b.clone(), d.clone()))
            })
            .collect();
        Ok((inputs, pins))
    }

    #[allow(clippy::too_many_arguments)]
    async fn build_and_publish(
        &self,
        image: &ImageConfig,
        repo: &Destination,
        plan: &Plan,
        pins: &BTreeMap<ImageRef, Digest>,
        now: &Inputs,
        version: Version,
        supersedes: Option<Version>,
        trigger: Trigger,
        changes: &[Change],
        job: JobId,
    ) -> Result<()> {
        let name = image.name.as_str();
        let target = repo.target(&version.to_string());
        let registry = self.registry();
        // Versions are immutable: look before pushing.
        let existing = repo.lookup(&registry, &version.to_string()).await?;
        let digest = match existing {
            Some(d) => {
                let manifest = repo.manifest(&registry, &version.to_string()).await?;
                match provenance::bases_from(&repo.provenance(&registry, &manifest).await) {
                    Some(b) if b == now.digests => {
                        info!(digest = %d, "version tag already pushed with the same inputs: adopting it");
                        d
                    }
                    _ => bail!(
                        "version tag {target} already exists ({d}) and was not built by rebased from the current bases; refusing to overwrite it"
                    ),
                }
            }
            None => {
                let primary = plan
                    .model
                    .uses
                    .iter()
                    .rev()
                    .find(|u| u.kind == BaseKind::From)
                    .and_then(|u| pins.get(&u.reference).map(|d| (&u.reference, d)));
                let annotations = provenance::Provenance {
                    version: &version,
                    created: Utc::now(),
                    primary,
                    bases: pins,
                    platforms: &now.platforms,
                    supersedes: supersedes.as_ref(),
                    trigger,
                }
                .annotations();
                let workdir = self
                    .cfg()
                    .daemon
                    .state_dir
                    .join("builds")
                    .join(job.to_string());
                // A missing secret file is the image's config error, said plainly
                // (the path only: never the contents).
                for (id, path) in &image.secrets {
                    std::fs::metadata(path)
                        .with_context(|| format!("build secret {id}: {}", path.display()))?;
                }
                let request = BuildRequest {
                    image: name.to_owned(),
                    job: job.to_string(),
                    context: image.context.clone(),
                    dockerfile: plan.model.pin(&plan.text, pins),
                    build_args: image.build_args.clone(),
                    target: target.clone(),
                    annotations,
                    insecure_registries: self.insecure_registries(),
                    auth_json: self.auth_json(repo.registry(), pins.keys())?,
                    ca_files: self
                        .cfg()
                        .registries
                        .values()
                        .filter_map(|r| r.ca_file.clone())
                        .collect(),
                    workdir: workdir.clone(),
                    platforms: image.platforms.clone(),
                    secrets: image.secrets.clone(),
                    source_date_epoch: source_date_epoch(),
                };
                let engine = match self.cfg().builder.backend {
                    Backend::Native => None,
                    // Native when it can build the file (no RUN, one stage, no
                    // COPY --from ...), else the first engine installed; with
                    // none, native says why it cannot.
                    Backend::Auto
                        if rebased_builder::native::plan::Plan::new(
                            &plan.model,
                            &image.build_args,
                        )
                        .is_ok() =>
                    {
                        None
                    }
                    Backend::Auto => installed_engine(),
                    Backend::Buildah => Some(EngineKind::Buildah),
                    Backend::Podman => Some(EngineKind::Podman),
                    Backend::Docker => Some(EngineKind::Docker),
                };
                let outcome = match engine {
                    None => {
                        info!(backend = "native", "building");
                        self.native().build(&request, &registry, &self.builds).await
                    }
                    Some(kind) => {
                        info!(backend = kind.program(), "building");
                        self.engine(kind).build(&request, &self.builds).await
                    }
                };
                let log = match &outcome {
                    Ok(o) => o.log.clone(),
                    Err(e) => e.log().to_owned(),
                };
                self.save_log(job, &log);
                let _ = tokio::fs::remove_dir_all(&workdir).await;
                let out = outcome.with_context(|| format!("build of {target} (job {job})"))?;
                let digest = match out.digest {
                    Some(d) => d,
                    None => repo
                        .lookup(&registry, &version.to_string())
                        .await?
                        .ok_or_else(|| anyhow!("{target} is missing after the push"))?,
                };
                info!(%digest, "pushed {target}");
                failpoint("after-version-push");
                digest
            }
        };
        let record = VersionRecord {
            version,
            digest: digest.clone(),
            built_at: Utc::now(),
            bases: now.digests.clone(),
            platforms: now.platforms.clone(),
            trigger,
            superseded_by: None,
            superseded_at: None,
            reason: None,
            supersedes,
            job: Some(job),
        };
        let reason = supersedes.map(|_| Reason {
            trigger,
            bases: changes
                .iter()
                .map(|c| BaseChange {
                    reference: c.reference.clone(),
                    before: c.before.clone(),
                    after: c.after.clone(),
                })
                .collect(),
        });
        self.store
            .publish(name, &record, reason)
            .with_context(|| format!("recording {target} ({digest})"))?;
        info!(%digest, "published {target}");
        if self
            .store
            .image(name)?
            .is_some_and(|r| r.state == ImageState::Held)
        {
            info!("image was rolled back meanwhile: floating tags stay where they are");
            return Ok(());
        }
        let mut tag_errors = Vec::new();
        for template in &image.tags {
            let tag = template.render(&version);
            match repo.tag(&registry, &digest, &tag).await {
                Ok(()) => {
                    info!(tag = %tag, "moved floating tag");
                    failpoint("after-first-floating-tag");
                }
                Err(e) => tag_errors.push(format!("{tag}: {e}")),
            }
        }
        if !tag_errors.is_empty() {
            // The version is published (and cascades); the tags are finished
            // by the image's next job.
            let msg = format!(
                "{target} is published but floating tags did not move: {}",
                tag_errors.join("; ")
            );
            error!("{msg}");
            if let Err(e) = self
                .store
                .update_image(name, |r| r.last_error = Some(msg.clone()))
            {
                error!("cannot record the error: {e}");
            }
        }
        Ok(())
    }
}

/// `SOURCE_DATE_EPOCH` from the environment, if set to a number.
fn source_date_epoch() -> Option<i64> {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
}
