//! The poll loop: every unique base on the most frequent schedule of the
//! images that use it, one request per base per round; changes settle
//! before they count; images a settled change makes stale are queued.
//!
//! [`PollLoop`] is the loop's state as a plain struct (when each base is
//! due, the settle and webhook rechecks, the webhook batch, the forced set
//! and "decide every image"), driven by [`Poller::run`]: `plan` says what
//! the next round checks, `on_round` takes its result, `next_wake` says
//! when to look again, `wait` sleeps until then or until requests come.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rebased_api::metrics::Metrics;
use rebased_core::config::{CronSpec, ImageConfig};
use rebased_core::{Digest, ImageRef, ImageState, Trigger};
use rebased_scheduler::dispatch::{Clock, SharedQueue};
use rebased_scheduler::schedule::next_of;
use rebased_scheduler::settle::{Observation, Watch};
use rebased_state::{BaseRecord, Store};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::live::Live;
use crate::reconcile::Reconciler;
use crate::records;
use crate::status::Status;

/// How long a webhook's check waits for the registry to finish writing
/// the tag it announced (and for further deliveries to join the round).
pub const WEBHOOK_DELAY: Duration = Duration::from_millis(10);

/// When a webhook's check still finds the digest unchanged, the reference
/// is checked once more after this long.
pub const WEBHOOK_RECHECK: chrono::Duration = chrono::Duration::milliseconds(250);

/// Without a watchdog the loop still goes round this often.
const IDLE_WAKE: Duration = Duration::from_secs(3600);

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

/// Each polled base and the schedules of the images using it.
pub type Schedules = BTreeMap<ImageRef, Vec<CronSpec>>;

/// What one round does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    /// The bases to check, sorted.
    pub due: Vec<ImageRef>,
    /// What a change it finds is recorded as.
    pub trigger: Trigger,
    /// Decide every image afterwards, changed or not.
    pub all: bool,
}

/// The poll loop's state.
#[derive(Debug)]
pub struct PollLoop {
    /// When each polled base is due.
    next: BTreeMap<ImageRef, DateTime<Utc>>,
    /// The trigger of the next round.
    trigger: Trigger,
    /// Bases asked for now (a check, a webhook).
    forced: Option<BTreeSet<ImageRef>>,
    /// Decide every image in the next round: the first, and one after a
    /// reload.
    evaluate_all: bool,
    /// Bases looked at again because of a webhook (the tag not moved yet,
    /// or a change settling): what that look finds is the webhook's doing.
    webhook_rechecks: BTreeSet<ImageRef>,
}

impl Default for PollLoop {
    fn default() -> Self {
        Self {
            next: BTreeMap::new(),
            trigger: Trigger::Poll,
            forced: None,
            evaluate_all: true,
            webhook_rechecks: BTreeSet::new(),
        }
    }
}

impl PollLoop {
    /// The round due at `now` with the bases of `specs`, if any: the bases
    /// whose time has come and the ones asked for; the first round, and one
    /// after a reload, runs even with nothing due (to decide every image).
    pub fn plan(&mut self, specs: &Schedules, now: DateTime<Utc>) -> Option<Round> {
        self.next.retain(|r, _| specs.contains_key(r));
        for r in specs.keys() {
            self.next.entry(r.clone()).or_insert(now);
        }
        let mut due: Vec<ImageRef> = self
            .next
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(r, _)| r.clone())
            .collect();
        if let Some(f) = self.forced.take() {
            due.extend(f.into_iter().filter(|r| specs.contains_key(r)));
            due.sort();
            due.dedup();
        }
        let waiting = self.webhook_rechecks.len();
        self.webhook_rechecks
            .retain(|r| specs.contains_key(r) && !due.contains(r));
        if self.webhook_rechecks.len() < waiting && !due.is_empty() {
            self.trigger = Trigger::Webhook;
        }
        let all = self.evaluate_all;
        if due.is_empty() && !all {
            self.trigger = Trigger::Poll;
            return None;
        }
        Some(Round {
            due,
            trigger: self.trigger,
            all,
        })
    }

    /// `round` finished at `after` and wants `rechecks` (settle windows,
    /// webhooks that found nothing yet): each checked base is due next at
    /// its schedule's next time, or at its recheck if sooner.
    pub fn on_round(
        &mut self,
        round: &Round,
        rechecks: &BTreeMap<ImageRef, DateTime<Utc>>,
        specs: &Schedules,
        tz: Tz,
        after: DateTime<Utc>,
    ) {
        for r in &round.due {
            let mut t = specs
                .get(r)
                .and_then(|s| next_of(&s.iter().collect::<Vec<_>>(), tz, after))
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
            if let Some(at) = rechecks.get(r) {
                t = t.min(*at);
                if round.trigger == Trigger::Webhook {
                    self.webhook_rechecks.insert(r.clone());
                }
            }
            self.next.insert(r.clone(), t);
        }
        self.evaluate_all = false;
        self.trigger = Trigger::Poll;
    }

    /// When a base is due next.
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.next.values().min().copied()
    }

    /// Requests arrived: their bases are checked in the next round (every
    /// base of `specs` for a request naming none), as a webhook if any of
    /// them is one.
    pub fn on_requests(&mut self, reqs: Vec<CheckRequest>, specs: &Schedules) {
        let Some(first) = reqs.first().map(|r| r.trigger) else {
            return;
        };
        self.trigger = reqs
            .iter()
            .map(|r| r.trigger)
            .find(|t| *t == Trigger::Webhook)
            .unwrap_or(first);
        let mut refs: BTreeSet<ImageRef> = self.forced.take().unwrap_or_default();
        for req in reqs {
            self.evaluate_all |= req.all;
            match req.references {
                Some(r) => refs.extend(r),
                None => refs.extend(specs.keys().cloned()),
            }
        }
        self.forced = Some(refs);
    }

    /// Waits until the next base is due (by `clock`), at most `pulse`, or
    /// until requests arrive on `checks`: a webhook waits [`WEBHOOK_DELAY`]
    /// for the registry to write its tag and takes into the same round
    /// whatever arrives meanwhile. `false` when `shutdown` is cancelled.
    pub async fn wait(
        &mut self,
        checks: &mut mpsc::Receiver<CheckRequest>,
        specs: &Schedules,
        clock: &Clock,
        pulse: Duration,
        shutdown: &CancellationToken,
    ) -> bool {
        let wait = self
            .next_wake()
            .map(|w| (w - clock.now()).to_std().unwrap_or_default())
            .unwrap_or(IDLE_WAKE)
            // Go round at least as often as the watchdog wants a pulse.
            .min(pulse);
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
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
                    self.on_requests(reqs, specs);
                }
                true
            }
            _ = shutdown.cancelled() => false,
        }
    }
}

/// Runs rounds: checks bases, folds the answers through settle, records
/// them, and has the reconciler decide the images a change touches.
pub struct Poller {
    live: Arc<Live>,
    store: Store,
    queue: SharedQueue,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    reconciler: Arc<Reconciler>,
    /// Images whose Dockerfile could not be read or parsed at the last look
    /// (marked failing for that): a round decides them again once it can.
    /// The first round after a start or a reload decides every image.
    bad_plans: HashSet<String>,
}

/// What a [`Poller`] works with.
pub struct Parts {
    /// The config in force.
    pub live: Arc<Live>,
    /// The store.
    pub store: Store,
    /// The queue.
    pub queue: SharedQueue,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The daemon's status.
    pub status: Arc<Status>,
    /// Decides images.
    pub reconciler: Arc<Reconciler>,
}

impl Poller {
    /// A poller over `parts`.
    pub fn new(parts: Parts) -> Self {
        Self {
            live: parts.live,
            store: parts.store,
            queue: parts.queue,
            metrics: parts.metrics,
            status: parts.status,
            reconciler: parts.reconciler,
            bad_plans: HashSet::new(),
        }
    }

    /// The poll loop, until `shutdown`; `pulse` bounds each wait (the
    /// watchdog's interval).
    pub async fn run(
        mut self,
        mut checks: mpsc::Receiver<CheckRequest>,
        pulse: Duration,
        shutdown: CancellationToken,
    ) {
        let clock = Clock::system();
        let mut state = PollLoop::default();
        loop {
            let began = std::time::Instant::now();
            let specs = self.live.schedules();
            if let Some(round) = state.plan(&specs, Utc::now()) {
                // A round against a slow registry must not hold up a stop.
                let rechecks = tokio::select! {
                    r = self.round(&round) => r,
                    _ = shutdown.cancelled() => break,
                };
                let tz: Tz = self.live.cfg().daemon.timezone.parse().unwrap_or(Tz::UTC);
                state.on_round(&round, &rechecks, &specs, tz, Utc::now());
                info!(
                    bases = round.due.len(),
                    images = self.live.cfg().image.len(),
                    elapsed_ms = began.elapsed().as_secs_f64() * 1000.0,
                    "poll round finished"
                );
            }
            self.status.update(|t| t.next_poll = state.next_wake());
            self.status.beat();
            self.status.report(&self.queue, self.live.cfg().image.len());
            if !state
                .wait(&mut checks, &specs, &clock, pulse, &shutdown)
                .await
            {
                break;
            }
        }
    }

    /// One round: check `round.due`, fold the results through settle, and
    /// have the images that a settled change (or, with `round.all`,
    /// anything) makes stale queued. Returns the rechecks wanted.
    pub async fn round(&mut self, round: &Round) -> BTreeMap<ImageRef, DateTime<Utc>> {
        let started = Utc::now();
        let (changed, rechecks) = self.check(round).await;
        self.status.update(|t| t.last_poll = Some(started));
        for image in &self.live.cfg().image {
            self.decide_image(image, &changed, round).await;
        }
        rechecks
    }

    /// Checks each due base once and records what was seen; returns the
    /// settled changes and the rechecks wanted.
    async fn check(
        &self,
        round: &Round,
    ) -> (
        BTreeMap<ImageRef, (Option<Digest>, Digest)>,
        BTreeMap<ImageRef, DateTime<Utc>>,
    ) {
        let registry = self.live.registry();
        let checks = rebased_watcher::check_all(Arc::clone(&registry), round.due.clone(), 8).await;
        let mut changed = BTreeMap::new();
        let mut rechecks = BTreeMap::new();
        for check in checks {
            let key = check.reference.to_string();
            let mut rec = self
                .store
                .base(&key)
                .ok()
                .flatten()
                .unwrap_or_else(|| BaseRecord::new(&key));
            let now = Utc::now();
            rec.checked_at = Some(now);
            // Each answer is a sign of life for the watchdog, however long the round.
            self.status.beat();
            self.count(&check, &mut rec);
            match &check.result {
                Ok(seen) => {
                    rec.error = None;
                    let mut watch = Watch {
                        settled: rec.digest.clone(),
                        pending: rec.pending.clone(),
                    };
                    let reference = &check.reference;
                    match watch.observe(seen, now, self.live.settle()) {
                        Observation::Unchanged if round.trigger == Trigger::Webhook => {
                            // A registry may notify before it has moved the tag
                            // (distribution emits the push event, then writes the
                            // tag): look once more shortly.
                            rechecks.insert(reference.clone(), now + WEBHOOK_RECHECK);
                        }
                        Observation::Unchanged => {}
                        Observation::First(d) => {
                            rec.changed_at.get_or_insert(now);
                            info!(base = %key, digest = %d, "base first seen");
                            // A new base of an image (e.g. an edited Dockerfile) is a change for it.
                            changed.insert(reference.clone(), (None, d));
                        }
                        Observation::Waiting(at) => {
                            info!(base = %key, digest = %seen, settles_at = %at, "base changed; waiting for it to settle");
                            rechecks.insert(reference.clone(), at);
                        }
                        Observation::Settled { before, after } => {
                            info!(base = %key, from = ?before.as_ref().map(Digest::as_str), to = %after, "base changed and settled");
                            rec.changed_at = Some(now);
                            changed.insert(reference.clone(), (before, after));
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
                            rec.platforms = match registry.platforms(&reference.pinned(d)).await {
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
            if let Err(e) = self.store.put_base(&rec) {
                error!(base = %key, "cannot record base: {e}");
            }
        }
        (changed, rechecks)
    }

    /// The metrics of one check.
    fn count(&self, check: &rebased_watcher::Check, rec: &mut BaseRecord) {
        let registry = check.reference.registry().to_owned();
        self.metrics.inc(
            "rebased_registry_requests_total",
            &[("registry", &registry)],
        );
        let outcome = if check.result.is_ok() { "ok" } else { "error" };
        if let Some(left) = check.rate_limit_remaining {
            self.metrics.set_rate_limit_remaining(&registry, left);
            rec.rate_limit_remaining = Some(left);
        }
        self.metrics.inc(
            "rebased_polls_total",
            &[("registry", &registry), ("outcome", outcome)],
        );
    }

    /// Has `image` decided if a change touches it (or the round decides all).
    async fn decide_image(
        &mut self,
        image: &ImageConfig,
        changed: &BTreeMap<ImageRef, (Option<Digest>, Digest)>,
        round: &Round,
    ) {
        let name = image.name.as_str();
        let bases = match self.live.image_bases(image) {
            Ok(b) => b,
            Err(e) => {
                self.mark_bad_plan(name, &format!("{e:#}"));
                return;
            }
        };
        let touched: Vec<&ImageRef> = bases.iter().filter(|b| changed.contains_key(*b)).collect();
        // Its Dockerfile could not be read before and can now: decide it.
        let was_bad_plan = self.bad_plans.remove(name);
        if !round.all && touched.is_empty() && !was_bad_plan {
            return;
        }
        // A queued or running job decides with the inputs of its start: with
        // no change seen, it covers this image already.
        if touched.is_empty()
            && rebased_scheduler::dispatch::lock(&self.queue)
                .active(name)
                .is_some()
        {
            return;
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
        self.reconciler
            .evaluate(image, &bases, round.trigger, &detail)
            .await;
    }

    /// An image whose Dockerfile cannot be read or parsed is failing for
    /// that (said once, not every round).
    fn mark_bad_plan(&mut self, name: &str, error: &str) {
        self.bad_plans.insert(name.to_owned());
        let current = self.store.image(name).ok().flatten();
        if current.as_ref().is_some_and(|r| {
            r.state == ImageState::Failing && r.last_error.as_deref() == Some(error)
        }) {
            return;
        }
        error!(image = %name, "{error}");
        records::set_state(
            &self.store,
            name,
            ImageState::Failing,
            Some(error.to_owned()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> ImageRef {
        ImageRef::parse(s).expect("reference")
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    /// `a` every minute, `b` every hour.
    fn specs() -> Schedules {
        let mut s = Schedules::new();
        s.insert(
            r("a:latest"),
            vec![CronSpec::parse("* * * * *").expect("cron")],
        );
        s.insert(
            r("b:latest"),
            vec![CronSpec::parse("0 * * * *").expect("cron")],
        );
        s
    }

    fn request(trigger: Trigger, refs: Option<&[&str]>, all: bool) -> CheckRequest {
        CheckRequest {
            references: refs.map(|v| v.iter().map(|s| r(s)).collect()),
            trigger,
            all,
        }
    }

    const T0: &str = "2026-01-01T00:00:30Z";
    const PULSE: Duration = Duration::from_secs(3600);

    /// A loop past its first round (everything checked at `T0`).
    fn started(clock: &Clock) -> PollLoop {
        let mut state = PollLoop::default();
        let round = state.plan(&specs(), clock.now()).expect("first round");
        assert_eq!(round.due, [r("a:latest"), r("b:latest")]);
        assert!(round.all, "the first round decides every image");
        assert_eq!(round.trigger, Trigger::Poll);
        state.on_round(&round, &BTreeMap::new(), &specs(), Tz::UTC, clock.now());
        state
    }

    async fn wait(
        state: &mut PollLoop,
        rx: &mut mpsc::Receiver<CheckRequest>,
        clock: &Clock,
    ) -> bool {
        state
            .wait(rx, &specs(), clock, PULSE, &CancellationToken::new())
            .await
    }

    #[tokio::test(start_paused = true)]
    async fn each_base_is_due_on_its_schedule() {
        let clock = Clock::starting_at(at(T0));
        let mut state = started(&clock);
        assert_eq!(state.next_wake(), Some(at("2026-01-01T00:01:00Z")));
        assert_eq!(state.plan(&specs(), clock.now()), None, "nothing due yet");
        let (_tx, mut rx) = mpsc::channel(8);
        assert!(wait(&mut state, &mut rx, &clock).await);
        assert!(clock.now() >= at("2026-01-01T00:01:00Z"));
        assert!(clock.now() < at("2026-01-01T00:01:01Z"), "{}", clock.now());
        let round = state.plan(&specs(), clock.now()).expect("a is due");
        assert_eq!(round.due, [r("a:latest")], "b waits for the hour");
        assert!(!round.all);
        state.on_round(&round, &BTreeMap::new(), &specs(), Tz::UTC, clock.now());
        assert_eq!(state.next_wake(), Some(at("2026-01-01T00:02:00Z")));
        // A base no image uses any more is no longer polled.
        let mut fewer = specs();
        fewer.remove(&r("a:latest"));
        assert_eq!(state.plan(&fewer, clock.now()), None);
        assert_eq!(state.next_wake(), Some(at("2026-01-01T01:00:00Z")));
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_is_bounded_by_the_pulse_and_ends_on_shutdown() {
        let clock = Clock::starting_at(at(T0));
        let mut state = started(&clock);
        let (_tx, mut rx) = mpsc::channel(8);
        let begun = tokio::time::Instant::now();
        let stop = CancellationToken::new();
        assert!(
            state
                .wait(&mut rx, &specs(), &clock, Duration::from_secs(5), &stop)
                .await
        );
        assert_eq!(begun.elapsed(), Duration::from_secs(5));
        stop.cancel();
        assert!(!state.wait(&mut rx, &specs(), &clock, PULSE, &stop).await);
    }

    #[tokio::test(start_paused = true)]
    async fn webhooks_arriving_together_make_one_webhook_round() {
        let clock = Clock::starting_at(at(T0));
        let mut state = started(&clock);
        let (tx, mut rx) = mpsc::channel(8);
        tx.send(request(Trigger::Webhook, Some(&["a:latest"]), false))
            .await
            .expect("send");
        // Arrives within WEBHOOK_DELAY: joins the same round.
        let late = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(WEBHOOK_DELAY / 2).await;
            late.send(request(Trigger::Poll, Some(&["b:latest"]), false))
                .await
                .expect("send");
        });
        let begun = tokio::time::Instant::now();
        assert!(wait(&mut state, &mut rx, &clock).await);
        assert_eq!(
            begun.elapsed(),
            WEBHOOK_DELAY,
            "a webhook waits for the registry"
        );
        let round = state.plan(&specs(), clock.now()).expect("forced round");
        assert_eq!(round.due, [r("a:latest"), r("b:latest")]);
        assert_eq!(
            round.trigger,
            Trigger::Webhook,
            "a webhook in the batch decides"
        );
        state.on_round(&round, &BTreeMap::new(), &specs(), Tz::UTC, clock.now());

        // A check first is not held back, and is not a webhook; a webhook
        // arriving just after is its own round.
        tx.send(request(Trigger::Poll, Some(&["b:latest"]), false))
            .await
            .expect("send");
        tx.send(request(Trigger::Webhook, Some(&["a:latest"]), false))
            .await
            .expect("send");
        let begun = tokio::time::Instant::now();
        assert!(wait(&mut state, &mut rx, &clock).await);
        assert_eq!(begun.elapsed(), Duration::ZERO);
        let round = state.plan(&specs(), clock.now()).expect("check round");
        assert_eq!(
            (round.due.as_slice(), round.trigger),
            (&[r("b:latest")][..], Trigger::Poll)
        );
        state.on_round(&round, &BTreeMap::new(), &specs(), Tz::UTC, clock.now());
        assert!(wait(&mut state, &mut rx, &clock).await);
        let round = state.plan(&specs(), clock.now()).expect("webhook round");
        assert_eq!(
            (round.due.as_slice(), round.trigger),
            (&[r("a:latest")][..], Trigger::Webhook)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_settling_change_is_looked_at_again_when_it_settles() {
        let clock = Clock::starting_at(at(T0));
        let mut state = started(&clock);
        let (tx, mut rx) = mpsc::channel(8);
        tx.send(request(Trigger::Poll, Some(&["b:latest"]), false))
            .await
            .expect("send");
        assert!(wait(&mut state, &mut rx, &clock).await);
        let round = state.plan(&specs(), clock.now()).expect("round");
        let settles = clock.now() + chrono::Duration::seconds(20);
        let rechecks = BTreeMap::from([(r("b:latest"), settles)]);
        state.on_round(&round, &rechecks, &specs(), Tz::UTC, clock.now());
        assert_eq!(state.next_wake(), Some(settles), "before a's minute");
        assert!(wait(&mut state, &mut rx, &clock).await);
        assert_eq!(clock.now(), settles);
        let round = state.plan(&specs(), clock.now()).expect("recheck round");
        assert_eq!(round.due, [r("b:latest")]);
        assert_eq!(round.trigger, Trigger::Poll, "a poll's recheck is a poll");
    }

    #[tokio::test(start_paused = true)]
    async fn a_webhooks_recheck_is_recorded_as_the_webhook() {
        let clock = Clock::starting_at(at(T0));
        let mut state = started(&clock);
        let (tx, mut rx) = mpsc::channel(8);
        tx.send(request(Trigger::Webhook, Some(&["b:latest"]), false))
            .await
            .expect("send");
        assert!(wait(&mut state, &mut rx, &clock).await);
        let round = state.plan(&specs(), clock.now()).expect("webhook round");
        assert_eq!(round.trigger, Trigger::Webhook);
        // The tag had not moved yet: look again shortly.
        let again = clock.now() + WEBHOOK_RECHECK;
        state.on_round(
            &round,
            &BTreeMap::from([(r("b:latest"), again)]),
            &specs(),
            Tz::UTC,
            clock.now(),
        );
        assert!(wait(&mut state, &mut rx, &clock).await);
        assert_eq!(clock.now(), again);
        let round = state.plan(&specs(), clock.now()).expect("recheck round");
        assert_eq!(round.due, [r("b:latest")]);
        assert_eq!(
            round.trigger,
            Trigger::Webhook,
            "what the recheck finds is the webhook's"
        );
        state.on_round(&round, &BTreeMap::new(), &specs(), Tz::UTC, clock.now());
        // The next scheduled round is a poll again.
        assert!(wait(&mut state, &mut rx, &clock).await);
        let round = state.plan(&specs(), clock.now()).expect("a's minute");
        assert_eq!(
            (round.due.as_slice(), round.trigger),
            (&[r("a:latest")][..], Trigger::Poll)
        );
    }

    #[test]
    fn forced_bases_are_only_the_watched_ones() {
        let now = at(T0);
        let mut state = PollLoop::default();
        let round = state.plan(&specs(), now).expect("first");
        state.on_round(&round, &BTreeMap::new(), &specs(), Tz::UTC, now);
        state.on_requests(
            vec![request(
                Trigger::Webhook,
                Some(&["a:latest", "zzz:1"]),
                false,
            )],
            &specs(),
        );
        let round = state.plan(&specs(), now).expect("forced");
        assert_eq!(round.due, [r("a:latest")]);
        state.on_round(&round, &BTreeMap::new(), &specs(), Tz::UTC, now);
        // Only unwatched references: no round, and the webhook does not
        // stick to the next scheduled one.
        state.on_requests(
            vec![request(Trigger::Webhook, Some(&["zzz:1"]), false)],
            &specs(),
        );
        assert_eq!(state.plan(&specs(), now), None);
        let round = state
            .plan(&specs(), at("2026-01-01T00:01:00Z"))
            .expect("a's minute");
        assert_eq!(round.trigger, Trigger::Poll);
        // A check naming nothing checks every base.
        state.on_round(&round, &BTreeMap::new(), &specs(), Tz::UTC, now);
        state.on_requests(vec![request(Trigger::Poll, None, false)], &specs());
        let round = state.plan(&specs(), now).expect("every base");
        assert_eq!(round.due, [r("a:latest"), r("b:latest")]);
        assert!(!round.all);
    }

    #[test]
    fn a_reload_decides_every_image_once() {
        let now = at(T0);
        let mut state = PollLoop::default();
        let round = state.plan(&specs(), now).expect("first");
        state.on_round(&round, &BTreeMap::new(), &specs(), Tz::UTC, now);
        assert_eq!(state.plan(&specs(), now), None);
        // What reload asks: no base in particular, every image decided.
        state.on_requests(vec![request(Trigger::Poll, Some(&[]), true)], &specs());
        let round = state.plan(&specs(), now).expect("evaluate-all round");
        assert!(round.due.is_empty() && round.all, "{round:?}");
        state.on_round(&round, &BTreeMap::new(), &specs(), Tz::UTC, now);
        assert_eq!(state.plan(&specs(), now), None, "only once");
    }
}
