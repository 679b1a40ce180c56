//! The poller: every unique base on the most frequent schedule of the images
//! that use it, one request per base per round; changes settle before they
//! count; images a settled change makes stale are queued.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rebased_core::config::CronSpec;
use rebased_core::{Digest, ImageRef, ImageState, Trigger};
use rebased_scheduler::dispatch::Command;
use rebased_scheduler::queue::reason;
use rebased_scheduler::schedule::next_of;
use rebased_scheduler::settle::{Observation, Watch};
use rebased_scheduler::{decide, Decision, Inputs, Published};
use rebased_state::BaseRecord;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::daemon::{lock, version_inputs, Daemon};

/// How long a webhook's check waits for the registry to finish writing
/// the tag it announced (and for further deliveries to join the round).
const WEBHOOK_DELAY: std::time::Duration = std::time::Duration::from_millis(10);

/// When a webhook's check still finds the digest unchanged, the reference
/// is checked once more after this long.
const WEBHOOK_RECHECK: chrono::Duration = chrono::Duration::milliseconds(250);

/// An immediate check: of these references, or of every base.
#[derive(Debug, Clone)]
pub struct CheckRequest {
    /// `None`: every base.
    pub references: Option<Vec<ImageRef>>,
    /// What asked (`Poll` for `POST /v1/check`, `Webhook`); recorded as the
    /// reason of any build it causes.
    pub trigger: Trigger,
    /// Decide every image afterwards, changed or not (after a reload).
    pub all: bool,
}

/// The poll loop, until `shutdown`.
pub async fn run(
    daemon: Arc<Daemon>,
    mut checks: mpsc::Receiver<CheckRequest>,
    shutdown: CancellationToken,
) {
    let mut next: BTreeMap<ImageRef, DateTime<Utc>> = BTreeMap::new();
    let mut first = true;
    let mut trigger = Trigger::Poll;
    let mut forced: Option<BTreeSet<ImageRef>> = None;
    let mut evaluate_all = false;
    // Bases looked at again because of a webhook (the tag not moved yet, or
    // a change settling): what that look finds is the webhook's doing.
    let mut webhook_rechecks: BTreeSet<ImageRef> = BTreeSet::new();
    let pulse = crate::notify::watchdog_interval().unwrap_or(std::time::Duration::from_secs(3600));
    loop {
        let began = std::time::Instant::now();
        let now = Utc::now();
        let tz: Tz = daemon.cfg().daemon.timezone.parse().unwrap_or(Tz::UTC);
        let specs = schedules(&daemon);
        next.retain(|r, _| specs.contains_key(r));
        for r in specs.keys() {
            next.entry(r.clone()).or_insert(now);
        }
        let mut due: Vec<ImageRef> = next
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(r, _)| r.clone())
            .collect();
        if let Some(f) = forced.take() {
            due.extend(f.into_iter().filter(|r| specs.contains_key(r)));
            due.sort();
            due.dedup();
        }
        let waiting = webhook_rechecks.len();
        webhook_rechecks.retain(|r| specs.contains_key(r) && !due.contains(r));
        if webhook_rechecks.len() < waiting && !due.is_empty() {
            trigger = Trigger::Webhook;
        }
        if !due.is_empty() || first || evaluate_all {
            // A round against a slow registry must not hold up a stop.
            let rechecks = tokio::select! {
                r = round(&daemon, Some((due.clone(), trigger)), first || evaluate_all) => r,
                _ = shutdown.cancelled() => break,
            };
            evaluate_all = false;
            let after = Utc::now();
            for r in &due {
                let mut t = specs
                    .get(r)
                    .and_then(|s| next_of(&s.iter().collect::<Vec<_>>(), tz, after))
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
                if let Some(at) = rechecks.get(r) {
                    t = t.min(*at);
                    if trigger == Trigger::Webhook {
                        webhook_rechecks.insert(r.clone());
                    }
                }
                next.insert(r.clone(), t);
            }
            first = false;
            trigger = Trigger::Poll;
            info!(
                bases = due.len(),
                images = daemon.cfg().image.len(),
                elapsed_ms = began.elapsed().as_secs_f64() * 1000.0,
                "poll round finished"
            );
        }
        let wake = next.values().min().copied();
        lock(&daemon.runtime).next_poll = wake;
        daemon
            .heartbeat
            .store(Utc::now().timestamp(), std::sync::atomic::Ordering::Relaxed);
        daemon.report_status();
        let wait = wake
            .map(|w| (w - Utc::now()).to_std().unwrap_or_default())
            .unwrap_or(std::time::Duration::from_secs(3600))
            // Go round at least as often as the watchdog wants a pulse.
            .min(pulse);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            req = checks.recv() => {
                if let Some(req) = req {
                    let mut reqs = vec![req];
                    if reqs[0].trigger == Trigger::Webhook {
                        // distribution notifies before it has written the tag
                        // (and a multi-platform push notifies many times):
                        // give the registry a moment, and take whatever else
                        // arrives meanwhile into the same round.
                        tokio::time::sleep(WEBHOOK_DELAY).await;
                        while let Ok(more) = checks.try_recv() {
                            reqs.push(more);
                        }
                    }
                    trigger = reqs
                        .iter()
                        .map(|r| r.trigger)
                        .find(|t| *t == Trigger::Webhook)
                        .unwrap_or(reqs[0].trigger);
                    let mut refs: BTreeSet<ImageRef> = BTreeSet::new();
                    for req in reqs {
                        evaluate_all |= req.all;
                        match req.references {
                            Some(r) => refs.extend(r),
                            None => refs.extend(specs.keys().cloned()),
                        }
                    }
                    forced = Some(refs);
                }
            }
            _ = shutdown.cancelled() => break,
        }
    }
}

/// Every polled base reference.
pub fn watched(daemon: &Daemon) -> BTreeSet<ImageRef> {
    schedules(daemon).into_keys().collect()
}

/// Each polled base and the schedules of the images using it.
fn schedules(daemon: &Daemon) -> BTreeMap<ImageRef, Vec<CronSpec>> {
    let mut out: BTreeMap<ImageRef, Vec<CronSpec>> = BTreeMap::new();
    for image in &daemon.cfg().image {
        let Ok(bases) = daemon.image_bases(image) else {
            continue;
        };
        let spec = image
            .poll
            .clone()
            .unwrap_or_else(|| daemon.cfg().daemon.poll.clone());
        for base in bases.iter().filter(|b| b.digest().is_none()).cloned() {
            let specs = out.entry(base).or_default();
            if !specs.contains(&spec) {
                specs.push(spec.clone());
            }
        }
    }
    out
}

/// One round: check `due` (all polled bases when `None`), fold the results
/// through settle, and queue the images that a settled change (or, with
/// `all`, anything) makes stale. Returns the settle rechecks wanted.
pub async fn round(
    daemon: &Daemon,
    due: Option<(Vec<ImageRef>, Trigger)>,
    all: bool,
) -> BTreeMap<ImageRef, DateTime<Utc>> {
    let (due, trigger) =
        due.unwrap_or_else(|| (schedules(daemon).into_keys().collect(), Trigger::Poll));
    let started = Utc::now();
    let checks = rebased_watcher::check_all(daemon.registry(), due, 8).await;
    let mut changed: BTreeMap<ImageRef, (Option<Digest>, Digest)> = BTreeMap::new();
    let mut rechecks = BTreeMap::new();
    for check in checks {
        let key = check.reference.to_string();
        let mut rec = daemon
            .store
            .base(&key)
            .ok()
            .flatten()
            .unwrap_or_else(|| BaseRecord::new(&key));
        let now = Utc::now();
        rec.checked_at = Some(now);
        // Each answer is a sign of life for the watchdog, however long the round.
        daemon
            .heartbeat
            .store(now.timestamp(), std::sync::atomic::Ordering::Relaxed);
        let registry = check.reference.registry().to_owned();
        daemon.metrics.inc(
            "rebased_registry_requests_total",
            &[("registry", &registry)],
        );
        let outcome = if check.result.is_ok() { "ok" } else { "error" };
        if let Some(left) = check.rate_limit_remaining {
            daemon.metrics.set_rate_limit_remaining(&registry, left);
            rec.rate_limit_remaining = Some(left);
        }
        daemon.metrics.inc(
            "rebased_polls_total",
            &[("registry", &registry), ("outcome", outcome)],
        );
        match &check.result {
            Ok(seen) => {
                rec.error = None;
                let mut watch = Watch {
                    settled: rec.digest.clone(),
                    pending: rec.pending.clone(),
                };
                match watch.observe(seen, now, daemon.settle()) {
                    Observation::Unchanged if trigger == Trigger::Webhook => {
                        // A registry may notify before it has moved the tag
                        // (distribution emits the push event, then writes the
                        // tag): look once more shortly.
                        rechecks.insert(check.reference.clone(), now + WEBHOOK_RECHECK);
                    }
                    Observation::Unchanged => {}
                    Observation::First(d) => {
                        rec.changed_at.get_or_insert(now);
                        info!(base = %key, digest = %d, "base first seen");
                        // A new base of an image (e.g. an edited Dockerfile) is a change for it.
                        changed.insert(check.reference.clone(), (None, d));
                    }
                    Observation::Waiting(at) => {
                        info!(base = %key, digest = %seen, settles_at = %at, "base changed; waiting for it to settle");
                        rechecks.insert(check.reference.clone(), at);
                    }
                    Observation::Settled { before, after } => {
                        info!(base = %key, from = ?before.as_ref().map(Digest::as_str), to = %after, "base changed and settled");
                        rec.changed_at = Some(now);
                        changed.insert(check.reference.clone(), (before, after));
                    }
                    Observation::Reverted => {
                        info!(base = %key, "base flipped back before settling; nothing to do");
                    }
                }
                let moved = rec.digest != watch.settled;
                rec.digest = watch.settled;
                rec.pending = watch.pending;
                if moved {
                    if let Some(d) = &rec.digest {
                        rec.platforms = match daemon
                            .registry()
                            .platforms(&check.reference.pinned(d))
                            .await
                        {
                            Ok(p) => p,
                            Err(e) => {
                                warn!(base = %key, "cannot read the index's platforms: {e}");
                                BTreeMap::new()
                            }
                        };
                    }
                }
            }
            Err(e) => rec.error = Some(e.to_string()),
        }
        if let Err(e) = daemon.store.put_base(&rec) {
            error!(base = %key, "cannot record base: {e}");
        }
    }
    lock(&daemon.runtime).last_poll = Some(started);

    for image in &daemon.cfg().image {
        let name = image.name.as_str();
        let bases = match daemon.image_bases(image) {
            Ok(b) => b,
            Err(e) => {
                mark_failing(daemon, name, &format!("{e:#}"));
                continue;
            }
        };
        let touched: Vec<&ImageRef> = bases.iter().filter(|b| changed.contains_key(*b)).collect();
        // Its Dockerfile could not be read before and can now: decide it.
        let was_bad_plan = lock(&daemon.bad_plans).remove(name);
        if !all && touched.is_empty() && !was_bad_plan {
            continue;
        }
        // A queued or running job decides with the inputs of its start: with
        // no change seen, it covers this image already.
        if touched.is_empty() && lock(&daemon.queue).active(name).is_some() {
            continue;
        }
        let detail = if touched.is_empty() {
            "check".to_owned()
        } else {
            touched
                .iter()
                .filter_map(|b| changed.get(*b).map(|(from, to)| (b, from, to)))
                .map(|(b, from, to)| {
                    format!(
                        "{b}: {} -> {to}",
                        from.as_ref().map_or("none".to_owned(), ToString::to_string)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        evaluate(daemon, image, &bases, trigger, &detail).await;
    }
    rechecks
}

/// Queues a build of `image` if it is stale now (settled digests).
pub async fn evaluate(
    daemon: &Daemon,
    image: &rebased_core::config::ImageConfig,
    bases: &[ImageRef],
    trigger: Trigger,
    detail: &str,
) {
    let name = image.name.as_str();
    let now = match daemon.stored_inputs(image, bases) {
        Ok(i) => i,
        Err(base) => {
            warn!(image = %name, base = %base, "base digest unknown; image not decided this round");
            return;
        }
    };
    let record = daemon.store.image(name).ok().flatten();
    if let Some(r) = &record {
        if r.state == ImageState::Held {
            return;
        }
        let failed_with = r.failed_inputs.as_ref().map(|d| Inputs {
            digests: d.clone(),
            platforms: r.failed_platforms.clone(),
        });
        if r.state == ImageState::Failing && failed_with.is_some_and(|f| f.same_as(&now)) {
            return;
        }
    }
    let current = record
        .as_ref()
        .and_then(|r| r.current)
        .and_then(|v| daemon.store.version(name, &v).ok().flatten());
    let built = current.as_ref().map(version_inputs);
    let highest = daemon.highest(name).ok().flatten();
    let published = current
        .as_ref()
        .zip(built.as_ref())
        .zip(highest.as_ref())
        .map(|((c, inputs), highest)| Published {
            version: &c.version,
            inputs,
            highest,
        });
    match decide(published, &image.version, image.bump, &now, trigger) {
        Decision::Fresh => {
            if record.as_ref().is_none_or(|r| r.state != ImageState::Fresh)
                && lock(&daemon.queue).active(name).is_none()
            {
                set_state(daemon, name, ImageState::Fresh, None);
            }
        }
        Decision::Build {
            version, trigger, ..
        } => {
            info!(image = %name, %version, %trigger, detail, "image is stale: queueing a build");
            let cmd = Command::Enqueue {
                image: name.to_owned(),
                reason: reason(trigger, Utc::now(), detail),
            };
            if daemon.jobs_tx.send(cmd).await.is_err() {
                warn!(image = %name, "dispatcher gone; build not queued");
            }
        }
    }
}

fn mark_failing(daemon: &Daemon, name: &str, error: &str) {
    lock(&daemon.bad_plans).insert(name.to_owned());
    let current = daemon.store.image(name).ok().flatten();
    if current
        .as_ref()
        .is_some_and(|r| r.state == ImageState::Failing && r.last_error.as_deref() == Some(error))
    {
        return;
    }
    error!(image = %name, "{error}");
    set_state(daemon, name, ImageState::Failing, Some(error.to_owned()));
}

/// Sets an image's state (and error), keeping the rest of its record.
pub fn set_state(daemon: &Daemon, name: &str, state: ImageState, error: Option<String>) {
    let result = daemon.store.update_image(name, |rec| {
        rec.state = state;
        rec.last_error = error.clone();
        if state != ImageState::Failing {
            rec.failed_inputs = None;
            rec.failed_platforms.clear();
        }
    });
    if let Err(e) = result {
        error!(image = %name, "cannot record image state: {e}");
    }
}
