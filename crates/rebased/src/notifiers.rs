//! The notifiers (`[[notify]]`): each is its own task that delivers the
//! events of the global log it wants, in order, from its durable outbox in
//! the store (an [`OutboxRecord`]: a cursor into the log and the retry
//! state), so a kill -9 loses nothing (the event after the cursor is sent
//! again, under the same delivery id) and a slow or hung receiver delays
//! only its own notifier: builds, the API and the other notifiers never
//! wait for one.
//!
//! Not to be confused with `notify.rs` (systemd's sd_notify).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use rebased_api::metrics::Metrics;
use rebased_api::{Live as Feed, NotifierView};
use rebased_core::notify::{smtp_host, NotifyConfig, NotifyKind};
use rebased_notify::{backoff, Secret, Sender, Target, GIVE_UP_AFTER};
use rebased_state::{LogEvent, LogKind, OutboxRecord, Store};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::live::{lock, Live};
use crate::records;

/// Events a chat kind or email puts in one digest message at most.
const DIGEST: usize = 20;
/// Events read from the log at a time.
const PAGE: usize = 200;
/// How long a notifier whose secrets cannot be read waits before it
/// reads them again.
const SETUP_RETRY: Duration = Duration::from_secs(30);

/// What the notifier tasks share.
struct Shared {
    store: Store,
    live: Arc<Live>,
    metrics: Arc<Metrics>,
    feed: Arc<broadcast::Sender<Feed>>,
    sender: Sender,
}

/// One running notifier.
struct Running {
    cfg: NotifyConfig,
    stop: CancellationToken,
}

/// Every notifier of the config in force.
pub struct Notifiers {
    shared: Arc<Shared>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    running: Mutex<BTreeMap<String, Running>>,
}

/// What [`Notifiers::new`] needs.
pub struct Parts {
    /// The store: the log and the outboxes.
    pub store: Store,
    /// The config in force (the event documents' repositories).
    pub live: Arc<Live>,
    /// Deliveries are counted there.
    pub metrics: Arc<Metrics>,
    /// Wakes the notifiers when the log grows.
    pub feed: Arc<broadcast::Sender<Feed>>,
}

impl Notifiers {
    /// Notifiers whose tasks run in `tasks` until `shutdown`; none yet
    /// (see [`Notifiers::apply`]).
    pub fn new(parts: Parts, tasks: TaskTracker, shutdown: CancellationToken) -> Self {
        Self {
            shared: Arc::new(Shared {
                store: parts.store,
                live: parts.live,
                metrics: parts.metrics,
                feed: parts.feed,
                sender: Sender::new(),
            }),
            tasks,
            shutdown,
            running: Mutex::new(BTreeMap::new()),
        }
    }

    /// Runs exactly the notifiers of `cfgs`: a removed one stops and its
    /// outbox is dropped (and said so), an added one starts at the end of
    /// the log, a changed one starts again from its outbox.
    pub fn apply(&self, cfgs: &[NotifyConfig]) {
        let store = &self.shared.store;
        let mut running = lock(&self.running);
        let wanted: BTreeMap<&str, &NotifyConfig> =
            cfgs.iter().map(|c| (c.name.as_str(), c)).collect();
        running.retain(|name, r| {
            let keep = wanted.get(name.as_str()).is_some_and(|c| **c == r.cfg);
            if !keep {
                r.stop.cancel();
            }
            keep
        });
        // Outboxes of notifiers no longer configured (also those removed
        // while the daemon was down).
        match store.outboxes() {
            Ok(boxes) => {
                for b in boxes
                    .iter()
                    .filter(|b| !wanted.contains_key(b.name.as_str()))
                {
                    let pending = store.log_end().unwrap_or(b.cursor).saturating_sub(b.cursor);
                    match store.drop_outbox(&b.name) {
                        Ok(_) => info!(
                            notifier = %b.name,
                            pending,
                            "notifier removed from the config: its outbox is dropped"
                        ),
                        Err(e) => error!(notifier = %b.name, "cannot drop the outbox: {e}"),
                    }
                    self.shared.metrics.set_gauge(
                        "rebased_notify_outbox_depth",
                        &[("notifier", &b.name)],
                        0,
                    );
                }
            }
            Err(e) => error!("cannot read the notifiers' outboxes: {e}"),
        }
        for cfg in cfgs {
            if running.contains_key(&cfg.name) {
                continue;
            }
            match store.outbox(&cfg.name) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    let end = store.log_end().unwrap_or(0);
                    let rec = OutboxRecord {
                        name: cfg.name.clone(),
                        cursor: end,
                        ..OutboxRecord::default()
                    };
                    if let Err(e) = store.put_outbox(&rec) {
                        error!(notifier = %cfg.name, "cannot create the outbox: {e}");
                        continue;
                    }
                    info!(notifier = %cfg.name, kind = cfg.kind.as_str(), from = end + 1, "notifier added: it sends the events after the log's end");
                }
                Err(e) => {
                    error!(notifier = %cfg.name, "cannot read the outbox: {e}");
                    continue;
                }
            }
            let stop = self.shutdown.child_token();
            self.tasks
                .spawn(run(Arc::clone(&self.shared), cfg.clone(), stop.clone()));
            running.insert(
                cfg.name.clone(),
                Running {
                    cfg: cfg.clone(),
                    stop,
                },
            );
        }
    }

    /// Every notifier's standing.
    pub fn views(&self) -> Result<Vec<NotifierView>, rebased_state::StateError> {
        let store = &self.shared.store;
        let end = store.log_end()?;
        let running = lock(&self.running);
        let mut out = Vec::new();
        for (name, r) in running.iter() {
            let rec = store.outbox(name)?.unwrap_or_default();
            out.push(NotifierView {
                name: name.clone(),
                kind: r.cfg.kind.as_str().to_owned(),
                pending: end.saturating_sub(rec.cursor),
                cursor: rec.cursor,
                delivered: rec.delivered,
                dropped: rec.dropped,
                last_success: rec.last_success,
                last_error: rec.last_error,
                next_attempt: rec.next_attempt,
            });
        }
        Ok(out)
    }

    /// Logs a test event for notifier `name`; its sequence number, or
    /// `None` when there is no such notifier.
    pub async fn test(&self, name: &str) -> anyhow::Result<Option<u64>> {
        if !lock(&self.running).contains_key(name) {
            return Ok(None);
        }
        let name = name.to_owned();
        let seq = records::write(&self.shared.store, move |s| {
            s.log_event(
                None,
                LogKind::Test {
                    notifier: Some(name),
                },
            )
        })
        .await?;
        Ok(Some(seq))
    }
}

/// Reads a notifier's secrets: the target a delivery needs.
pub fn target(cfg: &NotifyConfig) -> Result<Target, String> {
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map(|t| Secret::new(&t))
            .map_err(|e| format!("cannot read {key} {}: {}", path.display(), e.kind()))
    };
    let url = match (&cfg.url, &cfg.url_file) {
        (Some(u), _) => Some(Secret::new(u)),
        (None, Some(p)) => Some(read("url_file", p)?),
        (None, None) => None,
    };
    let hmac_key = cfg
        .secret_file
        .as_ref()
        .map(|p| read("secret_file", p))
        .transpose()?;
    let email =
        if cfg.kind == NotifyKind::Email {
            let (implicit_tls, host, port) = smtp_host(cfg.smtp.as_deref().unwrap_or_default())?;
            let auth = match (&cfg.username, &cfg.password_file) {
                (Some(u), Some(p)) => Some((u.clone(), read("password_file", p)?)),
                (Some(u), None) => Some((u.clone(), Secret::new(""))),
                _ => None,
            };
            Some(rebased_notify::Email {
                implicit_tls,
                starttls: cfg.starttls,
                host,
                port,
                from: cfg.from.clone().unwrap_or_default(),
                to: cfg.to.clone(),
                auth,
                ca_pem: match &cfg.ca_file {
                    Some(p) => Some(std::fs::read(p).map_err(|e| {
                        format!("cannot read ca_file {}: {}", p.display(), e.kind())
                    })?),
                    None => None,
                },
            })
        } else {
            None
        };
    Ok(Target {
        name: cfg.name.clone(),
        kind: cfg.kind,
        url,
        hmac_key,
        chat_id: cfg.chat_id.clone(),
        email,
        timeout: cfg.timeout.0,
    })
}

/// Whether notifier `cfg` wants `e`.
fn wants(cfg: &NotifyConfig, e: &LogEvent) -> bool {
    match &e.kind {
        LogKind::Test { notifier } => notifier.as_deref().is_none_or(|n| n == cfg.name),
        k => cfg.wants(k.name(), e.image.as_deref()),
    }
}

/// One notifier's task: deliver, in order, until `stop`.
async fn run(shared: Arc<Shared>, cfg: NotifyConfig, stop: CancellationToken) {
    let name = cfg.name.clone();
    let mut feed = shared.feed.subscribe();
    let target = loop {
        match target(&cfg) {
            Ok(t) => break t,
            Err(why) => {
                error!(notifier = %name, "{why}");
                let _ = update(&shared.store, &name, |r| r.last_error = Some(why.clone())).await;
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(SETUP_RETRY) => {}
                }
            }
        }
    };
    let log_id = match shared.store.log_id() {
        Ok(id) => id,
        Err(e) => {
            error!(notifier = %name, "cannot read the log's id: {e}");
            return;
        }
    };
    let batch = if cfg.kind.batches() { DIGEST } else { 1 };
    loop {
        if stop.is_cancelled() {
            return;
        }
        let mut rec = match shared.store.outbox(&name) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                error!(notifier = %name, "cannot read the outbox: {e}");
                if sleep_or_stop(&stop, SETUP_RETRY).await {
                    return;
                }
                continue;
            }
        };
        let end = shared.store.log_end().unwrap_or(rec.cursor);
        shared.metrics.set_gauge(
            "rebased_notify_outbox_depth",
            &[("notifier", &name)],
            end.saturating_sub(rec.cursor),
        );
        let page = match shared.store.log_after(rec.cursor, PAGE) {
            Ok(p) => p,
            Err(e) => {
                error!(notifier = %name, "cannot read the event log: {e}");
                if sleep_or_stop(&stop, SETUP_RETRY).await {
                    return;
                }
                continue;
            }
        };
        let Some(first) = page.first() else {
            // Nothing new: wait for the log to grow.
            tokio::select! {
                () = stop.cancelled() => return,
                _ = feed.recv() => {}
                () = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
            continue;
        };
        if first.seq > rec.cursor + 1 {
            let lost = first.seq - rec.cursor - 1;
            error!(notifier = %name, lost, "events were trimmed from the log before this notifier delivered them");
            rec.dropped += lost;
            rec.cursor = first.seq - 1;
            shared.metrics.add(
                "rebased_notify_deliveries_total",
                &[("notifier", &name), ("outcome", "dropped")],
                lost,
            );
        }
        let mut picked = Vec::new();
        let mut upto = rec.cursor;
        for e in &page {
            if wants(&cfg, e) {
                if picked.len() == batch {
                    break;
                }
                picked.push(e);
            }
            upto = e.seq;
        }
        if picked.is_empty() {
            rec.cursor = upto;
            if put(&shared.store, rec).await.is_err() && sleep_or_stop(&stop, SETUP_RETRY).await {
                return;
            }
            continue;
        }
        if let Some(at) = rec.next_attempt {
            let wait = (at - Utc::now()).to_std().unwrap_or_default();
            if !wait.is_zero() && sleep_or_stop(&stop, wait).await {
                return;
            }
        }
        let docs: Vec<_> = picked
            .iter()
            .map(|e| crate::events::view(e, &shared.live))
            .collect();
        let id = match (picked.first(), picked.last()) {
            (Some(a), Some(b)) if a.seq != b.seq => format!("{log_id}-{}-{}", a.seq, b.seq),
            (Some(a), _) => format!("{log_id}-{}", a.seq),
            _ => log_id.clone(),
        };
        let n = picked.len() as u64;
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            r = shared.sender.deliver(&target, &id, &docs) => r,
        };
        let now = Utc::now();
        match outcome {
            Ok(()) => {
                rec.cursor = upto;
                rec.attempts = 0;
                rec.failing_since = None;
                rec.next_attempt = None;
                rec.last_success = Some(now);
                rec.delivered += n;
                shared.metrics.add(
                    "rebased_notify_deliveries_total",
                    &[("notifier", &name), ("outcome", "delivered")],
                    n,
                );
            }
            Err(e) => {
                let text = e.to_string();
                shared.metrics.inc(
                    "rebased_notify_deliveries_total",
                    &[("notifier", &name), ("outcome", "failed")],
                );
                if failed(&mut rec, now, upto, n, text.clone()) {
                    error!(notifier = %name, delivery = %id, events = n, "dropping after 24 h of failed attempts: {text}");
                    shared.metrics.add(
                        "rebased_notify_deliveries_total",
                        &[("notifier", &name), ("outcome", "dropped")],
                        n,
                    );
                } else {
                    warn!(notifier = %name, delivery = %id, attempt = rec.attempts, retry_at = ?rec.next_attempt, "delivery failed: {text}");
                }
            }
        }
        if put(&shared.store, rec).await.is_err() && sleep_or_stop(&stop, SETUP_RETRY).await {
            return;
        }
    }
}

/// Records a failed attempt at the `n` events up to `upto` in `rec`:
/// the next attempt after the backoff, or, 24 hours after the first
/// failure, the events dropped (`true`) and the cursor past them.
fn failed(
    rec: &mut OutboxRecord,
    now: chrono::DateTime<Utc>,
    upto: u64,
    n: u64,
    error: String,
) -> bool {
    rec.attempts += 1;
    rec.last_error = Some(error);
    let since = *rec.failing_since.get_or_insert(now);
    if (now - since).to_std().unwrap_or_default() >= GIVE_UP_AFTER {
        rec.cursor = upto;
        rec.dropped += n;
        rec.attempts = 0;
        rec.failing_since = None;
        rec.next_attempt = None;
        return true;
    }
    rec.next_attempt = chrono::Duration::from_std(backoff(rec.attempts))
        .ok()
        .map(|d| now + d);
    false
}

/// Sleeps `d`; `true` when `stop` came first.
async fn sleep_or_stop(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(d) => false,
    }
}

/// Stores `rec` (flushed) on a blocking thread, unless its outbox was
/// dropped meanwhile (the notifier was removed: nothing to write back).
async fn put(store: &Store, rec: OutboxRecord) -> anyhow::Result<()> {
    let name = rec.name.clone();
    let r = records::write(store, move |s| {
        if s.outbox(&rec.name)?.is_some() {
            s.put_outbox(&rec)?;
        }
        Ok(())
    })
    .await;
    if let Err(e) = &r {
        error!(notifier = %name, "cannot record the outbox: {e:#}");
    }
    r
}

/// Changes notifier `name`'s outbox record, if it has one.
async fn update(
    store: &Store,
    name: &str,
    f: impl FnOnce(&mut OutboxRecord),
) -> anyhow::Result<()> {
    if let Some(mut rec) = store.outbox(name)? {
        f(&mut rec);
        put(store, rec).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_event_is_retried_with_backoff_then_dropped_after_24_hours() {
        let t0 = Utc::now();
        let mut rec = OutboxRecord {
            name: "ops".to_owned(),
            cursor: 4,
            ..OutboxRecord::default()
        };
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..12 {
            assert!(!failed(&mut rec, now, 5, 1, "500".to_owned()));
            let next = rec.next_attempt.expect("a next attempt");
            waits.push((next - now).num_seconds());
            now = next;
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]);
        assert_eq!(rec.cursor, 4, "not moved while retrying");
        assert_eq!(rec.failing_since, Some(t0));
        // A day after the first failure: dropped, the cursor past it.
        let later = t0 + chrono::Duration::hours(24);
        assert!(failed(&mut rec, later, 5, 1, "500".to_owned()));
        assert_eq!(
            (rec.cursor, rec.dropped, rec.attempts, rec.next_attempt),
            (5, 1, 0, None)
        );
        assert_eq!(rec.last_error.as_deref(), Some("500"));
    }
}
