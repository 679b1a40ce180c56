//! The ledger against the registry: importing the versions a repository
//! already holds (first sight of it, or a lost state directory), the
//! import of every image at start, and rollback.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;
use futures_util::StreamExt;
use rebased_api::{ActionError, Conflict};
use rebased_builder::provenance;
use rebased_core::config::{ImageConfig, Repository};
use rebased_core::job::JobState;
use rebased_core::{Digest, ImageState, Trigger, Version};
use rebased_registry::Registry;
use rebased_scheduler::dispatch::{lock as lock_queue, Command, SharedQueue};
use rebased_state::{
    BaseChange, ImportedLedger, Reason, RollbackEvent, SourceChange, Store, VersionRecord,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::destination::Destination;
use crate::live::lock;
use crate::publish::{move_tags, Move};
use crate::records;
use crate::status::Status;

/// At most this many versions are read back from a repository.
const MAX_IMPORT: usize = 200;

/// Images read back at once at start.
const IMPORT_CONCURRENCY: usize = 8;

/// Ledgers read back at start are written this many in one transaction
/// (one disk sync each batch, not each image). At 10,000 images a first
/// start took 3.6 s with one transaction per image and 1.1 s with batches
/// of 16, 64 or 256; larger batches cost more peak memory, and 32 kept the
/// peak lowest with the write on a blocking-pool thread (BENCHMARKS.md).
const IMPORT_BATCH: usize = 32;

/// Makes sure the ledger of `image` knows what its repository holds:
/// unless already done, every semver tag (newest 200) is read back with
/// its annotations, and the highest becomes the current version.
pub async fn ensure(store: &Store, registry: &Registry, image: &ImageConfig) -> Result<()> {
    let name = image.name.as_str();
    if store.image(name)?.is_some_and(|r| r.ledger_synced) {
        return Ok(());
    }
    let ledger = read_back(registry, image).await?;
    let ledger = records::write(store, move |s| {
        s.import(&ledger.name, &ledger.versions, ledger.current)
            .map(|()| ledger)
    })
    .await?;
    log_imported(&ledger);
    Ok(())
}

fn log_imported(ledger: &ImportedLedger) {
    let name = &ledger.name;
    match ledger.current {
        Some(v) => {
            info!(image = %name, versions = ledger.versions.len(), current = %v, "ledger read back from the registry")
        }
        None => info!(image = %name, "repository holds no version yet"),
    }
}

/// The versions `image`'s repository holds, linked to their predecessors,
/// and the highest.
async fn read_back(registry: &Registry, image: &ImageConfig) -> Result<ImportedLedger> {
    let name = image.name.as_str();
    let repo = Destination::from(&image.repository);
    let tags = repo.list_tags(registry).await?;
    let mut versions: Vec<Version> = tags.iter().filter_map(|t| Version::parse(t).ok()).collect();
    versions.sort();
    if versions.len() > MAX_IMPORT {
        warn!(image = %name, found = versions.len(), "importing only the newest {MAX_IMPORT} versions");
        versions.drain(..versions.len() - MAX_IMPORT);
    }
    let mut records: BTreeMap<Version, VersionRecord> = BTreeMap::new();
    for v in &versions {
        let manifest = repo.manifest(registry, &v.to_string()).await?;
        let rec = provenance::recorded(&repo.provenance(registry, &manifest).await);
        records.insert(
            *v,
            VersionRecord {
                version: *v,
                children: rebased_registry::index_platforms(&manifest.bytes),
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
                source: rec.source,
                signature: None,
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
                        moved: Vec::new(),
                    })
                    .collect(),
                source: rec.source.clone().map(|after| SourceChange {
                    before: p.source.clone(),
                    after,
                }),
            });
        }
    }
    Ok(ImportedLedger {
        name: name.to_owned(),
        versions: records.into_values().collect(),
        current: order.last().copied(),
    })
}

/// The import at start: [`ensure`] for every image not yet in the ledger,
/// a few at once, before the first round decides anything. It stops when
/// `shutdown` is cancelled, and beats `status` at least every `pulse` while
/// it waits, so a slow or unreachable registry at first start never
/// starves the watchdog. A registry found unreachable (refused, timed out)
/// is not asked for its other images: their import comes before their
/// first build, as for any image whose import failed.
pub async fn import_all(
    store: &Store,
    registry: &Registry,
    images: &[ImageConfig],
    status: &Status,
    pulse: Duration,
    shutdown: &CancellationToken,
) {
    // Images already in the ledger cost one store read each, here and not
    // in a task per image.
    let todo: Vec<&ImageConfig> = images
        .iter()
        .filter(|i| {
            !store
                .image(i.name.as_str())
                .ok()
                .flatten()
                .is_some_and(|r| r.ledger_synced)
        })
        .collect();
    if todo.is_empty() {
        return;
    }
    let total = todo.len();
    info!(images = total, "reading ledgers back from the registries");
    let unreachable: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let mut reads = futures_util::stream::iter(todo)
        .map(|image| {
            let unreachable = &unreachable;
            async move {
                let host = match &image.repository {
                    Repository::Registry(r) => Some(r.registry().to_owned()),
                    Repository::OciLayout(_) => None,
                };
                if host.as_ref().is_some_and(|h| lock(unreachable).contains(h)) {
                    return (image, Import::Deferred);
                }
                match read_back(registry, image).await {
                    Ok(ledger) => (image, Import::Read(ledger)),
                    Err(e) => {
                        if let Some(h) = host.filter(|_| is_unreachable(&e)) {
                            lock(unreachable).insert(h);
                        }
                        (image, Import::Failed(e))
                    }
                }
            }
        })
        .buffer_unordered(IMPORT_CONCURRENCY);
    let mut tick = tokio::time::interval(pulse);
    let mut batch: Vec<ImportedLedger> = Vec::new();
    let (mut done, mut deferred) = (0, 0);
    loop {
        tokio::select! {
            next = reads.next() => match next {
                Some((_, Import::Read(ledger))) => batch.push(ledger),
                Some((_, Import::Deferred)) => deferred += 1,
                Some((image, Import::Failed(e))) => {
                    warn!(image = %image.name, "cannot read the ledger back from the registry yet: {e:#}");
                }
                None => break,
            },
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => {
                // What was read is kept.
                done += write_batch(store, std::mem::take(&mut batch)).await;
                info!(imported = done, "stopping: start-up import abandoned");
                return;
            }
        }
        if batch.len() >= IMPORT_BATCH {
            done += write_batch(store, std::mem::take(&mut batch)).await;
        }
        status.beat();
    }
    write_batch(store, batch).await;
    if deferred > 0 {
        warn!(
            images = deferred,
            hosts = ?lock(&unreachable),
            "registries unreachable: these images are imported before their first build"
        );
    }
}

/// Writes read-back ledgers in one transaction, off the async threads
/// ([`records::write`]); returns how many.
async fn write_batch(store: &Store, batch: Vec<ImportedLedger>) -> usize {
    if batch.is_empty() {
        return 0;
    }
    let n = batch.len();
    match records::write(store, move |s| s.import_many(&batch).map(|()| batch)).await {
        Ok(batch) => {
            for ledger in &batch {
                log_imported(ledger);
            }
            n
        }
        Err(e) => {
            warn!(images = n, "cannot record the ledgers read back (imported again before each image's first build): {e:#}");
            0
        }
    }
}

/// How one start-up import went.
enum Import {
    Read(ImportedLedger),
    /// Not tried: its registry was found unreachable.
    Deferred,
    Failed(anyhow::Error),
}

/// True when `e` says a registry did not answer at all.
fn is_unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<rebased_registry::RegistryError>()
            .is_some_and(|r| r.kind == rebased_registry::ErrorKind::Unreachable)
    })
}

/// Rolls `image` back to `to`: the floating tags of the current version
/// and of `to` point at `to`'s digest again, the event is recorded, and
/// the image is held. Refused while it builds.
pub async fn rollback(
    store: &Store,
    registry: &Registry,
    image: &ImageConfig,
    to: &Version,
    queue: &SharedQueue,
    jobs: &mpsc::Sender<Command>,
) -> Result<RollbackEvent, ActionError> {
    let name = image.name.as_str();
    let internal = |e: rebased_state::StateError| ActionError::Internal(e.to_string());
    if lock_queue(queue)
        .active(name)
        .is_some_and(|j| j.state == JobState::Running)
    {
        return Err(ActionError::Conflict {
            image: name.to_owned(),
            conflict: Conflict::Building,
        });
    }
    ensure(store, registry, image).await.map_err(action_error)?;
    let target = store.version(name, to).map_err(internal)?.ok_or_else(|| {
        ActionError::NotFound(format!("{name} has no version {to} in its ledger"))
    })?;
    // Held first, so that no job starting meanwhile builds or moves tags.
    let before = store.image(name).map_err(internal)?.map(|r| r.state);
    let from = store
        .update_image(name, |r| r.state = ImageState::Held)
        .map_err(internal)?
        .current;
    let _ = jobs
        .send(Command::Cancel {
            image: name.to_owned(),
        })
        .await;
    match move_back(store, registry, image, to, from, &target.digest).await {
        Ok(event) => Ok(event),
        Err(e) => {
            let restore = before.unwrap_or(ImageState::Fresh);
            store
                .update_image(name, |r| r.state = restore)
                .map_err(internal)?;
            Err(action_error(e))
        }
    }
}

/// An action's failure: the store's own (500) when a store error is among
/// its causes, else a registry's or an OCI layout's (502).
fn action_error(e: anyhow::Error) -> ActionError {
    let text = format!("{e:#}");
    if e.chain().any(|c| c.is::<rebased_state::StateError>()) {
        ActionError::Internal(text)
    } else {
        ActionError::Upstream(text)
    }
}

/// Points the floating tags of `to` and of `from` at `digest` and records
/// the rollback.
async fn move_back(
    store: &Store,
    registry: &Registry,
    image: &ImageConfig,
    to: &Version,
    from: Option<Version>,
    digest: &Digest,
) -> Result<RollbackEvent> {
    let name = image.name.as_str();
    let repo = Destination::from(&image.repository);
    let mut tags: Vec<String> = image.tags.iter().map(|t| t.render(to)).collect();
    if let Some(f) = &from {
        tags.extend(image.tags.iter().map(|t| t.render(f)));
    }
    tags.sort();
    tags.dedup();
    move_tags(&repo, registry, digest, &tags, Move::Back)
        .await
        .with_context(|| format!("pointing the floating tags at {to}"))?;
    let event = RollbackEvent {
        at: Utc::now(),
        from,
        to: *to,
        digest: digest.clone(),
    };
    let (owned, recorded) = (name.to_owned(), event.clone());
    records::write(store, move |s| s.rollback(&owned, &recorded)).await?;
    info!(image = %name, to = %to, from = %from.map_or_else(|| "-".to_owned(), |f| f.to_string()), tags = %tags.join(", "), "rolled back; image held");
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rebased_core::config::Config;

    fn image() -> ImageConfig {
        let cfg = Config::parse(
            "[[image]]\nname = \"web\"\ncontext = \"/srv/web\"\nrepository = \"127.0.0.1:9/web\"\nversion = \"1.0.0\"\n",
        )
        .expect("config");
        cfg.image.into_iter().next().expect("image")
    }

    /// A rollback that fails on the store is the daemon's failure (500),
    /// not a registry's (502).
    #[tokio::test]
    async fn a_store_failure_in_a_rollback_is_internal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        store.damage_image_record("web").expect("damage");
        let registry = Registry::new(&BTreeMap::new());
        let queue: SharedQueue = std::sync::Arc::default();
        let (jobs, _rx) = mpsc::channel(1);
        let to = Version::parse("1.0.0").expect("version");
        let e = rollback(&store, &registry, &image(), &to, &queue, &jobs)
            .await
            .expect_err("unreadable record");
        assert!(
            matches!(&e, ActionError::Internal(t) if t.contains("image web")),
            "{e:?}"
        );
    }

    /// The start-up import records what it read on a current-thread
    /// runtime too (`block_in_place` would panic there).
    #[tokio::test(flavor = "current_thread")]
    async fn the_import_records_on_a_current_thread_runtime() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("db")).expect("store");
        let layout = dir.path().join("layout");
        let cfg = Config::parse(&format!(
            "[[image]]\nname = \"web\"\ncontext = \"/srv/web\"\nrepository = \"oci:{}\"\nversion = \"1.0.0\"\n",
            layout.display()
        ))
        .expect("config");
        let registry = Registry::new(&BTreeMap::new());
        let status = Status::new(
            crate::notify::Notifier::from_env(),
            CancellationToken::new(),
        );
        import_all(
            &store,
            &registry,
            &cfg.image,
            &status,
            Duration::from_secs(3600),
            &CancellationToken::new(),
        )
        .await;
        assert!(store
            .image("web")
            .expect("read")
            .is_some_and(|r| r.ledger_synced));
    }

    #[test]
    fn registry_failures_stay_upstream() {
        let e = anyhow::anyhow!("manifest unknown").context("pointing the floating tags at 1.0.0");
        assert!(matches!(action_error(e), ActionError::Upstream(_)));
    }
}
