//! What the running daemon says about itself: the times `/v1/status`
//! shows, the heartbeat the watchdog reads, whether it is stopping (its
//! shutdown token), and the one-line `STATUS=` for systemd.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rebased_core::job::JobState;
use rebased_scheduler::dispatch::SharedQueue;
use tokio_util::sync::CancellationToken;

use crate::live::lock;
use crate::notify::Notifier;

/// Times shown by `/v1/status`.
#[derive(Debug, Clone)]
pub struct Times {
    /// When the daemon started.
    pub started_at: DateTime<Utc>,
    /// When the config in force was loaded.
    pub config_loaded_at: DateTime<Utc>,
    /// Why the last reload was refused, until one succeeds.
    pub config_error: Option<String>,
    /// When the last poll round started.
    pub last_poll: Option<DateTime<Utc>>,
    /// When the poll loop wakes next.
    pub next_poll: Option<DateTime<Utc>>,
}

/// The daemon's own status.
pub struct Status {
    times: Mutex<Times>,
    /// When the daemon last showed it is alive (unix seconds): the
    /// watchdog's pulse.
    heartbeat: AtomicI64,
    /// Cancelled when the stop begins.
    shutdown: CancellationToken,
    notifier: Notifier,
}

impl Status {
    /// A daemon starting now, notifying systemd through `notifier`, that
    /// stops when `shutdown` is cancelled.
    pub fn new(notifier: Notifier, shutdown: CancellationToken) -> Self {
        let now = Utc::now();
        Self {
            times: Mutex::new(Times {
                started_at: now,
                config_loaded_at: now,
                config_error: None,
                last_poll: None,
                next_poll: None,
            }),
            heartbeat: AtomicI64::new(now.timestamp()),
            shutdown,
            notifier,
        }
    }

    /// The times as they are now.
    pub fn times(&self) -> Times {
        lock(&self.times).clone()
    }

    /// Changes the times.
    pub fn update(&self, f: impl FnOnce(&mut Times)) {
        f(&mut lock(&self.times));
    }

    /// A sign of life: the loop that holds the daemon went round.
    pub fn beat(&self) {
        self.heartbeat
            .store(Utc::now().timestamp(), Ordering::Relaxed);
    }

    /// How long since the last sign of life.
    pub fn since_beat(&self) -> chrono::Duration {
        let beat = self.heartbeat.load(Ordering::Relaxed);
        Utc::now() - DateTime::<Utc>::from_timestamp(beat, 0).unwrap_or_default()
    }

    /// True once stopping: no new work is taken.
    pub fn is_stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Sends `state` to systemd (nothing without `NOTIFY_SOCKET`).
    pub fn notify(&self, state: &str) {
        self.notifier.send(state);
    }

    /// Tells systemd (`STATUS=`) what the daemon is doing, in one line.
    pub fn report(&self, queue: &SharedQueue, images: usize) {
        let (queued, building) = {
            let q = rebased_scheduler::dispatch::lock(queue);
            let building = q.jobs().filter(|j| j.state == JobState::Running).count();
            (q.depth(), building)
        };
        let last = self
            .times()
            .last_poll
            .map_or("never".to_owned(), |t| t.format("%H:%M:%S").to_string());
        self.notifier.status(&format!(
            "{images} images, {queued} queued, {building} building, last poll {last}"
        ));
    }
}
