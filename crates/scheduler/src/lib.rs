//! What is built, and when.
//!
//! The logic here does no registry or build IO: it is handed observations and
//! talks to the rest of the daemon through the [`dispatch::Executor`] trait
//! and a command channel, so it is tested with `tokio::time::pause()`.
//!
//! - [`schedule`]: cron schedules per base, in the configured time zone.
//! - [`settle`]: a changed digest must hold for `settle` before it counts.
//! - [`decide`]: is an image stale, and which version comes next.
//! - [`graph`]: images built FROM other managed images; order and cycles.
//! - [`queue`]: at most one queued job per image, merging, backoff.
//! - [`dispatch`]: runs queued jobs with a concurrency bound, retries and
//!   cascades.

pub mod decide;
pub mod dispatch;
pub mod graph;
pub mod queue;
pub mod schedule;
pub mod settle;

pub use decide::{
    decide, select_platforms, Bumps, Change, Decision, Inputs, Published, SourceChange,
};
pub use schedule::next_after;
