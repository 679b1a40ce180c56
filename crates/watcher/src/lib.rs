//! Watching bases: each unique base reference is checked once per cycle,
//! however many images use it, with a bound on requests in flight.

pub mod push;
pub mod webhook;

use std::collections::BTreeSet;
use std::sync::Arc;

use rebased_core::{Digest, ImageRef};
use rebased_registry::{Registry, RegistryError};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, warn};

/// The outcome of checking one base.
#[derive(Debug, Clone)]
pub struct Check {
    /// The base reference.
    pub reference: ImageRef,
    /// Its digest now, or why it could not be had.
    pub result: Result<Digest, RegistryError>,
    /// The registry's `ratelimit-remaining`, when it said.
    pub rate_limit_remaining: Option<u64>,
}

/// Checks every reference in `refs` once (duplicates collapse), at most
/// `concurrency` at a time. The result is in reference order.
pub async fn check_all(
    registry: Arc<Registry>,
    refs: impl IntoIterator<Item = ImageRef>,
    concurrency: usize,
) -> Vec<Check> {
    let unique: BTreeSet<ImageRef> = refs.into_iter().collect();
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    for reference in unique {
        let registry = Arc::clone(&registry);
        let permits = Arc::clone(&permits);
        set.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let head = registry.head(&reference).await;
            let rate_limit_remaining = head.as_ref().ok().and_then(|h| h.rate_limit_remaining);
            let result = head.map(|h| h.digest);
            match &result {
                Ok(d) => debug!(base = %reference, digest = %d, "checked"),
                Err(e) => warn!(base = %reference, error = %e, "check failed"),
            }
            Check {
                reference,
                result,
                rate_limit_remaining,
            }
        });
    }
    let mut out = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(check) => out.push(check),
            Err(e) => warn!(error = %e, "base check task failed"),
        }
    }
    out.sort_by(|a, b| a.reference.cmp(&b.reference));
    out
}
