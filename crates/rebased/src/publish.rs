//! Publishing a version: the version tag is pushed (or an identical one
//! adopted), then signed (with `[signing]`), then the version is recorded,
//! then the floating tags move. [`publish`] is the one function that does
//! this, and its order is the invariant: a version is signed and in the
//! ledger before any floating tag points at it, and a version tag is never
//! overwritten.
//!
//! [`move_tags`] is the one floating-tag mover (publish, a crash's
//! unfinished move, rollback).

use std::future::Future;

use anyhow::{bail, Context, Result};
use chrono::Utc;
use rebased_builder::provenance;
use rebased_core::config::ImageConfig;
use rebased_core::job::JobId;
use rebased_core::{Digest, Trigger, Version};
use rebased_registry::Registry;
use rebased_scheduler::{Change, Inputs};
use rebased_state::{BaseChange, Reason, SourceChange, Store, VersionRecord};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::destination::Destination;
use crate::{attest, records, signing};

/// Fails the process at a named point, for crash tests. Only debug builds
/// (the test builds) read `REBASED_FAILPOINT`; release builds never do.
pub fn failpoint(name: &str) {
    if cfg!(debug_assertions) && std::env::var("REBASED_FAILPOINT").is_ok_and(|f| f == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

/// One version to publish: what the reconciler decided.
pub struct Release<'a> {
    /// The image.
    pub image: &'a ImageConfig,
    /// Where its versions live.
    pub repo: &'a Destination,
    /// The version.
    pub version: Version,
    /// The version it supersedes.
    pub supersedes: Option<Version>,
    /// Why it is built.
    pub trigger: Trigger,
    /// The inputs it is built from.
    pub inputs: &'a Inputs,
    /// Each base's move since the superseded version.
    pub changes: &'a [Change],
    /// The source's move since the superseded version.
    pub source: Option<&'a rebased_scheduler::SourceChange>,
    /// The job that builds it.
    pub job: JobId,
    /// An operator forced it through a hold (`rebuild --force`): the
    /// floating tags move to it although the image is held (and stays so).
    pub forced: bool,
    /// The `[signing]` key: the version (and each child of an index) is
    /// signed before it is recorded.
    pub signer: Option<&'a rebased_sign::SigningKey>,
    /// The attestations pushed with the signature.
    pub attest: &'a [rebased_core::config::Attestation],
    /// The backend that builds it (`native`, `buildah`, ...), for provenance.
    pub backend: &'static str,
    /// When the job started building it.
    pub started: chrono::DateTime<Utc>,
}

/// Publishes `release`: looks up its version tag (an existing one is
/// adopted when it was built from the same bases, else refused), else runs
/// `push` (the build, which pushes the version tag and returns its
/// digest); records the version; then, unless the image was rolled back
/// meanwhile (and the build was not forced through the hold), moves the
/// floating tags. A tag that did not move is the
/// image's error, finished by its next job; the version still counts.
/// `cancel` (a stop) abandons the look before the push; `push` observes it
/// itself; once `push` has returned, the version is recorded whatever
/// happens.
pub async fn publish(
    store: &Store,
    registry: &Registry,
    release: &Release<'_>,
    push: impl Future<Output = Result<Digest>>,
    cancel: &CancellationToken,
) -> Result<Digest> {
    let Release {
        image,
        repo,
        version,
        ..
    } = release;
    let name = image.name.as_str();
    let tag = version.to_string();
    let target = repo.target(&tag);
    // Versions are immutable: look before pushing.
    let existing = tokio::select! {
        e = adoptable(registry, release) => e?,
        _ = cancel.cancelled() => bail!("cancelled before the push of {target}: rebased is stopping"),
    };
    let adopted = existing.is_some();
    let digest = match existing {
        Some(d) => d,
        None => {
            let d = push.await?;
            info!(digest = %d, "pushed {target}");
            failpoint("after-version-push");
            d
        }
    };
    let mut record = version_record(release, &digest);
    if image.platforms.len() > 1 {
        // An index: each platform's child, as the ledger's record of it.
        match repo.manifest(registry, &tag).await {
            Ok(m) => record.children = rebased_registry::index_platforms(&m.bytes),
            Err(e) => error!("cannot read {target}'s children back: {e:#}"),
        }
    }
    if let Some(key) = release.signer {
        match repo.registry() {
            Some(r) => {
                let build = attest::Build {
                    image: name,
                    version: version.to_string(),
                    bases: &record.bases,
                    source: image
                        .context
                        .git()
                        .map(|g| g.public_url())
                        .zip(record.source.clone()),
                    backend: release.backend,
                    trigger: release.trigger.to_string(),
                    job: release.job,
                    started: release.started,
                    finished: record.built_at,
                };
                let statements = attest::statements(
                    registry,
                    r,
                    &digest,
                    &record.children,
                    release.attest,
                    &build,
                )
                .await
                .with_context(|| format!("attesting {target} ({digest})"))?;
                let sig = signing::sign(
                    registry,
                    r,
                    key,
                    &digest,
                    &record.children,
                    &statements,
                    // An adopted tag may have been signed meanwhile (by
                    // us before a crash, or by someone else): keep that.
                    if adopted {
                        signing::Keep::Existing
                    } else {
                        signing::Keep::Nothing
                    },
                )
                .await
                .with_context(|| format!("signing {target} ({digest})"))?;
                record.signature = Some(sig);
                failpoint("after-signature");
            }
            None => info!("{target} is an OCI layout: not signed (signatures live in registries)"),
        }
    }
    let reason = release.supersedes.map(|_| Reason {
        trigger: release.trigger,
        bases: release
            .changes
            .iter()
            .map(|c| BaseChange {
                reference: c.reference.clone(),
                before: c.before.clone(),
                after: c.after.clone(),
                moved: c.moved.clone(),
            })
            .collect(),
        source: release.source.map(|c| SourceChange {
            before: c.before.clone(),
            after: c.after.clone(),
        }),
    });
    let owned = name.to_owned();
    records::write(store, move |s| s.publish(&owned, &record, reason))
        .await
        .with_context(|| format!("recording {target} ({digest})"))?;
    info!(%digest, "published {target}");
    if !release.forced && !may_move_tags(store, name) {
        return Ok(digest);
    }
    let tags: Vec<String> = image.tags.iter().map(|t| t.render(version)).collect();
    if let Err(e) = move_tags(repo, registry, &digest, &tags, Move::New).await {
        // The version is published (and cascades); the tags are finished
        // by the image's next job.
        let msg = format!("{target} is published but {e}");
        error!("{msg}");
        if let Err(e) = store.update_image(name, |r| r.last_error = Some(msg.clone())) {
            error!("cannot record the error: {e}");
        }
    }
    Ok(digest)
}

/// Whether the floating tags of `name` may move to a version just
/// recorded: not when it was rolled back meanwhile, nor when its record
/// cannot be read (a hold cannot be ruled out; the next job moves them).
fn may_move_tags(store: &Store, name: &str) -> bool {
    match records::is_held(store, name) {
        Ok(false) => true,
        Ok(true) => {
            info!("image was rolled back meanwhile: floating tags stay where they are");
            false
        }
        Err(e) => {
            error!("cannot tell whether the image is held: floating tags stay where they are: {e}");
            false
        }
    }
}

/// The digest of `release`'s version tag if it exists and was built from
/// the same bases (a run cut short after its push): adopted instead of
/// built. An existing tag of anything else is refused.
pub async fn adoptable(registry: &Registry, release: &Release<'_>) -> Result<Option<Digest>> {
    let repo = release.repo;
    let tag = release.version.to_string();
    let Some(d) = repo.lookup(registry, &tag).await? else {
        return Ok(None);
    };
    let manifest = repo.manifest(registry, &tag).await?;
    let annotations = repo.provenance(registry, &manifest).await;
    let revision = provenance::recorded(&annotations).source;
    match provenance::bases_from(&annotations) {
        Some(b) if b == release.inputs.digests && revision == release.inputs.source => {
            info!(digest = %d, "version tag already pushed with the same inputs: adopting it");
            Ok(Some(d))
        }
        _ => bail!(
            "version tag {} already exists ({d}) and was not built by rebased from the current bases and source; refusing to overwrite it",
            repo.target(&tag)
        ),
    }
}

/// The ledger's record of a release published as `digest`.
fn version_record(release: &Release<'_>, digest: &Digest) -> VersionRecord {
    VersionRecord {
        version: release.version,
        digest: digest.clone(),
        built_at: Utc::now(),
        bases: release.inputs.digests.clone(),
        platforms: release.inputs.platforms.clone(),
        children: Default::default(),
        trigger: release.trigger,
        superseded_by: None,
        superseded_at: None,
        reason: None,
        supersedes: release.supersedes,
        job: Some(release.job),
        source: release.inputs.source.clone(),
        signature: None,
    }
}

/// Whether [`move_tags`] looks at a tag before moving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// A new version: point every tag at it (none points at it yet).
    New,
    /// A rollback: point every tag at the earlier version.
    Back,
    /// Only tags that point elsewhere (finishing a move a crash cut short).
    WhereDifferent,
}

/// Points each of `tags` at the manifest `digest`, which `repo` holds, by
/// copying its bytes (so a floating tag carries the version's digest).
/// Every tag is tried; the error names each one that did not move.
pub async fn move_tags(
    repo: &Destination,
    registry: &Registry,
    digest: &Digest,
    tags: &[String],
    how: Move,
) -> Result<()> {
    let mut errors = Vec::new();
    let mut moved = 0;
    for tag in tags {
        if how == Move::WhereDifferent {
            match repo.lookup(registry, tag).await {
                Ok(Some(d)) if &d == digest => continue,
                Ok(_) => {}
                Err(e) => {
                    errors.push(format!("{tag}: {e:#}"));
                    continue;
                }
            }
        }
        match repo.tag(registry, digest, tag).await {
            Ok(()) => {
                info!(tag = %tag, %digest, "moved floating tag");
                moved += 1;
                if moved == 1 && how == Move::New {
                    failpoint("after-first-floating-tag");
                }
            }
            Err(e) => errors.push(format!("{tag}: {e:#}")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("floating tags did not move: {}", errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_move_only_when_the_image_is_known_not_held() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        assert!(may_move_tags(&store, "web"), "no record: not held");
        records::set_state(&store, "web", rebased_core::ImageState::Held, None);
        assert!(!may_move_tags(&store, "web"), "held");
        records::set_state(&store, "web", rebased_core::ImageState::Fresh, None);
        assert!(may_move_tags(&store, "web"));
        store.damage_image_record("web").expect("damage");
        assert!(records::is_held(&store, "web").is_err());
        assert!(!may_move_tags(&store, "web"), "unreadable: maybe held");
    }
}
