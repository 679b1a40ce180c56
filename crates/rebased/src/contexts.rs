//! Watched local contexts (`watch_context = true`): the content hash of
//! each (after `.dockerignore`) is the image's source revision; file
//! events (a `notify` watch on the directory tree), quiet for
//! `daemon.settle`, make it hashed again, and an image whose hash changed
//! is decided at once (trigger `context`). A touch, or the same bytes
//! saved again, leave the hash as it was and build nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rebased_core::config::ImageConfig;
use rebased_core::Trigger;
use rebased_state::{SourceRecord, Store};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::live::Live;
use crate::reconcile::Reconciler;
use crate::records;

/// The watched local contexts of the config: directory -> images.
fn watched(live: &Live) -> BTreeMap<PathBuf, Vec<ImageConfig>> {
    let mut out: BTreeMap<PathBuf, Vec<ImageConfig>> = BTreeMap::new();
    for image in &live.cfg().image {
        if let (true, Some(dir)) = (image.watch_context, image.context.local()) {
            out.entry(dir.to_owned()).or_default().push(image.clone());
        }
    }
    out
}

/// Hashes `dir` now (on a blocking thread).
async fn hash(dir: &Path) -> Result<String, String> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        rebased_builder::native::context::Context::open(&dir)
            .and_then(|c| c.content_hash())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Hashes `dir` and records it; `Some((before, after))` when it changed.
async fn refresh(store: &Store, dir: &Path) -> Option<(Option<String>, String)> {
    let k = records::context_key(dir);
    let mut rec = store
        .source(&k)
        .ok()
        .flatten()
        .unwrap_or_else(|| SourceRecord::new(&k, &dir.display().to_string(), ""));
    let now = Utc::now();
    rec.checked_at = Some(now);
    let changed = match hash(dir).await {
        Ok(h) if rec.commit.as_ref() == Some(&h) => {
            rec.error = None;
            None
        }
        Ok(h) => {
            rec.error = None;
            rec.changed_at = Some(now);
            let before = rec.commit.replace(h.clone());
            Some((before, h))
        }
        Err(e) => {
            warn!(context = %dir.display(), "cannot hash the context: {e}");
            rec.error = Some(e);
            None
        }
    };
    if let Err(e) = store.put_source(&rec) {
        error!(context = %dir.display(), "cannot record the context's hash: {e}");
    }
    changed
}

/// Records the hash of every watched context (at start, before the first
/// round decides anything).
pub async fn init(live: &Live, store: &Store) {
    for dir in watched(live).keys() {
        refresh(store, dir).await;
    }
}

/// What the watch works with.
pub struct Parts {
    /// The config in force.
    pub live: Arc<Live>,
    /// The store.
    pub store: Store,
    /// Decides the images whose context changed.
    pub reconciler: Arc<Reconciler>,
}

/// Watches the contexts until `shutdown`; a reload's new set is picked up
/// within a few seconds.
pub async fn run(parts: Parts, shutdown: CancellationToken) {
    let Parts {
        live,
        store,
        reconciler,
    } = parts;
    let (tx, mut events) = mpsc::channel::<PathBuf>(256);
    let mut dirs = watched(&live);
    let mut watcher = watch(dirs.keys(), tx.clone());
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = events.recv() => e,
            _ = tokio::time::sleep(Duration::from_secs(2)) => None,
        };
        // A reload may have changed the watched set.
        let now = watched(&live);
        if now.keys().ne(dirs.keys()) {
            for dir in now.keys().filter(|d| !dirs.contains_key(*d)) {
                refresh(&store, dir).await;
            }
            drop(watcher);
            watcher = watch(now.keys(), tx.clone());
        }
        dirs = now;
        let Some(first) = first else { continue };
        // Quiet for `settle` (at least a moment): editors write in steps.
        let quiet = live.settle().max(Duration::from_millis(100));
        let mut touched = vec![first];
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                e = tokio::time::timeout(quiet, events.recv()) => match e {
                    Ok(Some(p)) => touched.push(p),
                    _ => break,
                },
            }
        }
        for (dir, images) in &dirs {
            if !touched.iter().any(|p| p.starts_with(dir)) {
                continue;
            }
            let Some((before, after)) = refresh(&store, dir).await else {
                continue;
            };
            let short = |h: &str| {
                h.trim_start_matches("sha256:")
                    .chars()
                    .take(12)
                    .collect::<String>()
            };
            let detail = format!(
                "context: {} -> {}",
                before.as_deref().map_or("none".to_owned(), short),
                short(&after)
            );
            info!(context = %dir.display(), %detail, "context content changed");
            for image in images {
                match live.image_bases(image) {
                    Ok(bases) => {
                        reconciler
                            .evaluate(image, &bases, Trigger::Context, &detail)
                            .await
                    }
                    Err(e) => warn!(image = %image.name, "{e:#}"),
                }
            }
        }
    }
}

/// A recursive watch on each of `dirs`, sending the paths of events.
fn watch<'a>(
    dirs: impl Iterator<Item = &'a PathBuf>,
    tx: mpsc::Sender<PathBuf>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let mut w = match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if matches!(ev.kind, notify::EventKind::Access(_)) {
                return;
            }
            for p in ev.paths {
                let _ = tx.try_send(p);
            }
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            error!("cannot watch contexts: {e}");
            return None;
        }
    };
    for dir in dirs {
        if let Err(e) = w.watch(dir, RecursiveMode::Recursive) {
            warn!(context = %dir.display(), "cannot watch the context: {e}");
        }
    }
    Some(w)
}
