//! The image records as the daemon reads and writes them: the one answer
//! to "is it held", state changes that keep the rest of the record, what a
//! version was built from, and store writes on the writer thread.

use anyhow::{anyhow, Result};
use rebased_core::{ImageState, Version};
use rebased_scheduler::Inputs;
use rebased_state::{ImageRecord, StateError, Store, VersionRecord};
use tracing::error;

/// True when image `name` is held (rolled back): nothing builds it and no
/// floating tag of it moves until it is resumed. An unreadable record is
/// an error: the caller cannot know, and does nothing a hold forbids.
pub fn is_held(store: &Store, name: &str) -> Result<bool, StateError> {
    Ok(store.image(name)?.is_some_and(|r| held(&r)))
}

/// True when `record` says its image is held (see [`is_held`]).
pub fn held(record: &ImageRecord) -> bool {
    record.state == ImageState::Held
}

/// Sets an image's state (and error), keeping the rest of its record; the
/// inputs of a failure are dropped unless it is failing.
pub fn set_state(store: &Store, name: &str, state: ImageState, error: Option<String>) {
    let result = store.update_image(name, |rec| {
        rec.state = state;
        rec.last_error = error.clone();
        if state != ImageState::Failing {
            rec.failed_inputs = None;
            rec.failed_platforms.clear();
            rec.failed_source = None;
        }
    });
    if let Err(e) = result {
        error!(image = %name, "cannot record image state: {e}");
    }
}

/// Marks an image failing with `error` and the inputs it failed with;
/// `None`: not known (it failed before they were), and then no inputs
/// count as the ones it failed with. Job `job` gave up: a `failed` event
/// is logged with the change (and `failing` when the image turns so).
pub fn set_failing(
    store: &Store,
    name: &str,
    job: Option<rebased_core::job::JobId>,
    error: Option<String>,
    inputs: Option<&Inputs>,
) {
    let text = error.clone().unwrap_or_else(|| "the job failed".to_owned());
    let result = store.job_failed(name, job, &text, |rec| {
        rec.state = ImageState::Failing;
        rec.last_error = error.clone();
        rec.failed_inputs = inputs.map(|i| i.digests.clone());
        rec.failed_platforms = inputs.map(|i| i.platforms.clone()).unwrap_or_default();
        rec.failed_source = inputs.and_then(|i| i.source.clone());
    });
    if let Err(e) = result {
        error!(image = %name, "cannot record failing state: {e}");
    }
}

/// The store key of a watched local context's source record (its
/// content hash).
pub fn context_key(dir: &std::path::Path) -> String {
    format!("context:{}", dir.display())
}

/// What a published version was built from.
pub fn version_inputs(v: &VersionRecord) -> Inputs {
    Inputs {
        digests: v.bases.clone(),
        platforms: v.platforms.clone(),
        source: v.source.clone(),
    }
}

/// The highest version in the ledger of `name`.
pub fn highest(store: &Store, name: &str) -> Result<Option<Version>, StateError> {
    Ok(store.versions(name)?.into_iter().map(|v| v.version).max())
}

/// Runs a store write (a flushed transaction: an fsync) on the store's
/// writer thread, so the async threads that run the dispatcher, the poll
/// loop and the API keep going meanwhile. The caller awaits it: writes stay
/// in the order they are made. One long-lived thread rather than tokio's
/// blocking pool: the start-up import's thousands of records are then
/// allocated in one malloc arena, not spread over a new thread's arena per
/// batch (BENCHMARKS.md, "Memory at 10,000 images"); it also runs under a
/// current-thread runtime.
pub async fn write<T: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&Store) -> Result<T, StateError> + Send + 'static,
) -> Result<T> {
    let store = store.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    writer()?
        .send(Box::new(move || {
            // The caller may have gone (a cancelled task): the write stands.
            let _ = tx.send(f(&store));
        }))
        .map_err(|_| anyhow!("store writer thread gone"))?;
    rx.await
        .map_err(|_| anyhow!("store writer thread gone"))?
        .map_err(Into::into)
}

/// One queued store write.
type WriteJob = Box<dyn FnOnce() + Send>;

/// The writer thread's queue, started on first use.
fn writer() -> Result<&'static std::sync::mpsc::Sender<WriteJob>> {
    static WRITER: std::sync::OnceLock<std::sync::mpsc::Sender<WriteJob>> =
        std::sync::OnceLock::new();
    if let Some(w) = WRITER.get() {
        return Ok(w);
    }
    let (tx, rx) = std::sync::mpsc::channel::<WriteJob>();
    let spawned = std::thread::Builder::new()
        .name("store-writer".to_owned())
        .spawn(move || {
            for job in rx {
                // A write that panics fails its caller (its answer is
                // dropped), not every write after it.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                    error!("a store write panicked; its caller is told it failed");
                }
            }
        });
    match spawned {
        Ok(_) => Ok(WRITER.get_or_init(|| tx)),
        Err(e) => Err(anyhow!("cannot start the store writer thread: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write that panics fails its own caller only: the writer thread
    /// goes on, and the next write is made.
    #[tokio::test(flavor = "current_thread")]
    async fn a_panicking_write_fails_only_its_caller() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("db")).expect("store");
        let failed = write(&store, |_| -> Result<(), StateError> {
            panic!("boom");
        })
        .await;
        assert!(failed.is_err());
        let written = write(&store, |s| s.flush("after a panic").map(|()| 7)).await;
        assert_eq!(written.expect("the writer thread survives"), 7);
    }
}
