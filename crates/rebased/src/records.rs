//! The image records as the daemon reads and writes them: the one answer
//! to "is it held", state changes that keep the rest of the record, what a
//! version was built from, and store writes on a blocking thread.

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

/// Runs a store write (a flushed transaction: an fsync) on a blocking
/// thread, so the async threads that run the dispatcher, the poll loop
/// and the API keep going meanwhile. The caller awaits it: writes stay in
/// the order they are made.
pub async fn write<T: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&Store) -> Result<T, StateError> + Send + 'static,
) -> Result<T> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| anyhow!("store write task: {e}"))?
        .map_err(Into::into)
}
