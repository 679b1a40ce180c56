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
use rebased_state::{BaseRecord, SourceRecord, Store};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::live::{GitSource, Live};
use crate::reconcile::Reconciler;
use crate::records;
use crate::status::Status;

/// How long a webhook's check waits for the registry to finish writing
/// the tag it announced (and for further deliveries to join the round).
pub const WEBHOOK_DELAY: Duration = Duration::from_millis(10);

/// When a webhook's check still finds the digest unchanged, the reference
/// is checked once more after this long.
pub const WEBHOOK_RECHECK: chrono::Duration = chrono::Duration::milliseconds(250);

/// Git source look-ups in flight at once in a round.
const SOURCE_LOOKUPS: usize = 8;

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
    /// Git sources (by key) to look up now (a push webhook).
    pub sources: Vec<String>,
}

/// Each polled base and the schedules of the images using it.
pub type Schedules = BTreeMap<ImageRef, Vec<CronSpec>>;

/// Each git source (by its key, repository and ref) and the schedules of
/// the images using it.
pub type SourceSchedules = BTreeMap<String, Vec<CronSpec>>;

/// A source's settled move: its commit before (none at first sight) and after.
pub type SourceMoves = BTreeMap<String, (Option<String>, String)>;

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
    /// When each git source is due.
    sources_next: BTreeMap<String, DateTime<Utc>>,
    /// Sources asked for now (a source webhook).
    forced_sources: BTreeSet<String>,
    /// Every source asked for now (`POST /v1/check` naming nothing).
    all_sources: bool,
    /// When to look again at images whose Dockerfile (or context) could
    /// not be read: the next `daemon.poll` time, so a file that appears or
    /// is fixed is picked up without a manual check, even when no base is
    /// watched at all.
    plans_due: Option<DateTime<Utc>>,
}

impl Default for PollLoop {
    fn default() -> Self {
        Self {
            next: BTreeMap::new(),
            trigger: Trigger::Poll,
            forced: None,
            evaluate_all: true,
            webhook_rechecks: BTreeSet::new(),
            sources_next: BTreeMap::new(),
            forced_sources: BTreeSet::new(),
            all_sources: false,
            plans_due: None,
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
        let plans = self.plans_due.is_some_and(|t| t <= now);
        if plans {
            self.plans_due = None;
        }
        if due.is_empty() && !all && !plans {
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

    /// When a base or a source is due next (or the unreadable Dockerfiles
    /// are looked at again).
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.next
            .values()
            .chain(self.sources_next.values())
            .chain(&self.plans_due)
            .min()
            .copied()
    }

    /// The sources of `specs` due at `now` (each once per round, however
    /// many images share it), and the ones asked for.
    pub fn plan_sources(&mut self, specs: &SourceSchedules, now: DateTime<Utc>) -> Vec<String> {
        self.sources_next.retain(|k, _| specs.contains_key(k));
        for k in specs.keys() {
            self.sources_next.entry(k.clone()).or_insert(now);
        }
        let forced = std::mem::take(&mut self.forced_sources);
        let all = std::mem::take(&mut self.all_sources);
        self.sources_next
            .iter()
            .filter(|(k, t)| all || **t <= now || forced.contains(*k))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// `checked` sources were looked at, finishing at `after`: each is due
    /// at its schedule's next time, or at its settle recheck if sooner.
    pub fn on_sources(
        &mut self,
        checked: &[String],
        rechecks: &BTreeMap<String, DateTime<Utc>>,
        specs: &SourceSchedules,
        tz: Tz,
        after: DateTime<Utc>,
    ) {
        for k in checked {
            let mut t = specs
                .get(k)
                .and_then(|s| next_of(&s.iter().collect::<Vec<_>>(), tz, after))
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
            if let Some(at) = rechecks.get(k) {
                t = t.min(*at);
            }
            self.sources_next.insert(k.clone(), t);
        }
    }

    /// Some images' Dockerfile or context could not be read: a round at
    /// `at` (the daemon's next poll time) looks again; `None` when every
    /// one could.
    pub fn plans_due_at(&mut self, at: Option<DateTime<Utc>>) {
        self.plans_due = at;
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
            self.forced_sources.extend(req.sources);
            match req.references {
                Some(r) => refs.extend(r),
                None => {
                    refs.extend(specs.keys().cloned());
                    self.all_sources = true;
                }
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
    /// The last round saw a change, or a check that began or ceased to fail.
    news: bool,
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
            news: false,
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
            let (specs, unreadable) = self.live.schedules_and_unreadable();
            // A Dockerfile gone bad may leave no base to poll, so no round
            // to decide its image in: it is said now.
            self.mark_unreadable(&unreadable);
            let sources = self.live.git_sources();
            let source_specs: SourceSchedules = sources
                .iter()
                .map(|(k, s)| (k.clone(), s.specs.clone()))
                .collect();
            let now = Utc::now();
            let due_sources = state.plan_sources(&source_specs, now);
            let trigger = state.trigger;
            let round = state.plan(&specs, now).or_else(|| {
                (!due_sources.is_empty()).then(|| Round {
                    due: Vec::new(),
                    trigger,
                    all: false,
                })
            });
            if let Some(round) = round {
                // A round against a slow registry must not hold up a stop.
                let (rechecks, source_rechecks) = tokio::select! {
                    r = self.round(&round, &due_sources, &sources) => r,
                    _ = shutdown.cancelled() => break,
                };
                let tz: Tz = self.live.cfg().daemon.timezone.parse().unwrap_or(Tz::UTC);
                let now = Utc::now();
                state.on_round(&round, &rechecks, &specs, tz, now);
                state.on_sources(&due_sources, &source_rechecks, &source_specs, tz, now);
                let retry = (!self.bad_plans.is_empty())
                    .then(|| next_of(&[&self.live.cfg().daemon.poll], tz, now))
                    .flatten();
                state.plans_due_at(retry);
                // Milliseconds, rounded to hundredths (the bench reads them).
                let elapsed_ms = (began.elapsed().as_secs_f64() * 100_000.0).round() / 100.0;
                let images = self.live.cfg().image.len();
                let bases = round.due.len();
                // At INFO only when a round saw something new: a change, or
                // a base's check starting or stopping to fail.
                if std::mem::take(&mut self.news) {
                    info!(bases, images, elapsed_ms, "poll round finished");
                } else {
                    debug!(bases, images, elapsed_ms, "poll round finished");
                }
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

    /// One round: look up the sources `due_sources` (of `sources`) and
    /// check `round.due`, fold the results through settle, and have the
    /// images that a settled change (or, with `round.all`, anything) makes
    /// stale queued. A source's settled move is a change like a base's. A source
    /// seen for the first time brings the bases of its Dockerfiles, which
    /// are checked in the same round. Returns the rechecks wanted, of
    /// bases and of sources.
    pub async fn round(
        &mut self,
        round: &Round,
        due_sources: &[String],
        sources: &BTreeMap<String, GitSource>,
    ) -> (
        BTreeMap<ImageRef, DateTime<Utc>>,
        BTreeMap<String, DateTime<Utc>>,
    ) {
        let started = Utc::now();
        let (moved, source_rechecks) = self.check_sources(due_sources, sources).await;
        let mut round = round.clone();
        if !moved.is_empty() {
            let known = |r: &ImageRef| {
                self.store
                    .base(&r.to_string())
                    .ok()
                    .flatten()
                    .is_some_and(|b| b.digest.is_some())
            };
            let new: Vec<ImageRef> = self
                .live
                .schedules()
                .into_keys()
                .filter(|r| !round.due.contains(r) && !known(r))
                .collect();
            round.due.extend(new);
            round.due.sort();
        }
        let (changed, rechecks) = self.check(&round).await;
        self.status.update(|t| t.last_poll = Some(started));
        let cfg = self.live.cfg();
        // Nothing moved: only an image whose Dockerfile could not be read
        // (`bad_plans`, which the loop's look at the schedules keeps up to
        // date) has anything to decide; every other one would return at
        // once, after looking its bases up again.
        let quiet = !round.all && changed.is_empty() && moved.is_empty();
        for image in &cfg.image {
            if quiet && !self.bad_plans.contains(image.name.as_str()) {
                continue;
            }
            self.decide_image(image, &changed, &moved, &round).await;
        }
        (rechecks, source_rechecks)
    }

    /// Looks up each due source once, folds the commit through settle, and
    /// checks the settled commit out (its work tree is where the images'
    /// Dockerfiles are read). Returns the settled moves and the rechecks.
    async fn check_sources(
        &self,
        due: &[String],
        sources: &BTreeMap<String, GitSource>,
    ) -> (SourceMoves, BTreeMap<String, DateTime<Utc>>) {
        let mut moved = SourceMoves::new();
        let mut rechecks = BTreeMap::new();
        let git = self.live.sources();
        // The whole commit is checked out; each image reads its directory.
        let roots: Vec<(&String, rebased_core::source::GitContext)> = due
            .iter()
            .filter_map(|k| sources.get(k).map(|s| (k, s.git.clone())))
            .map(|(k, mut g)| {
                g.dir = std::path::PathBuf::new();
                (k, g)
            })
            .collect();
        // The look-ups, a few at a time (each is a network round trip).
        let lookups: Vec<_> = roots
            .iter()
            .map(|(_, root)| {
                let creds = self.live.source_credentials(root);
                let git = git.clone();
                let root = root.clone();
                async move { git.resolve(&root, creds.as_ref()).await }
            })
            .collect();
        let looked: Vec<_> = {
            use futures_util::stream::{self, StreamExt};
            stream::iter(lookups)
                .buffered(SOURCE_LOOKUPS)
                .collect()
                .await
        };
        for ((key, root), seen) in roots.iter().zip(looked) {
            let key: &String = key;
            let url = root.public_url();
            let mut rec = self
                .store
                .source(key)
                .ok()
                .flatten()
                .unwrap_or_else(|| SourceRecord::new(key, &url, root.reference_or_head()));
            let now = Utc::now();
            rec.checked_at = Some(now);
            self.status.beat();
            let creds = self.live.source_credentials(root);
            let outcome = match &seen {
                Ok(_) => "ok",
                Err(e) => e.kind(),
            };
            self.metrics
                .inc("rebased_source_checks_total", &[("outcome", outcome)]);
            match seen {
                Ok(commit) => {
                    rec.error = None;
                    let mut watch = Watch {
                        settled: rec.commit.clone(),
                        pending: rec.pending.clone(),
                    };
                    match watch.observe(&commit, now, self.live.settle()) {
                        Observation::Unchanged | Observation::Reverted => {}
                        Observation::First(c) => {
                            rec.changed_at.get_or_insert(now);
                            info!(source = %url, commit = %c, "source first seen");
                            moved.insert(key.clone(), (None, c));
                        }
                        Observation::Waiting(at) => {
                            info!(source = %url, %commit, settles_at = %at, "source changed; waiting for it to settle");
                            rechecks.insert(key.clone(), at);
                        }
                        Observation::Settled { before, after } => {
                            info!(source = %url, from = ?before, to = %after, "source changed and settled");
                            rec.changed_at = Some(now);
                            moved.insert(key.clone(), (before, after));
                        }
                    }
                    rec.commit = watch.settled;
                    rec.pending = watch.pending;
                    if let Some(c) = &rec.commit {
                        match git.checkout(root, creds.as_ref(), c).await {
                            Ok(out) => {
                                self.live.set_tree(key, Ok(out.tree));
                                // Trees a build may still read are kept.
                                let idle =
                                    self.live.cfg().builder.timeout.0 + Duration::from_secs(600);
                                git.prune(&root.url, &[c.as_str()], idle).await;
                            }
                            Err(e) => {
                                warn!(source = %url, "{e}");
                                rec.error = Some(e.to_string());
                                self.live.set_tree(key, Err(e.to_string()));
                            }
                        }
                    }
                }
                Err(e) => {
                    warn!(source = %url, "{e}");
                    rec.error = Some(e.to_string());
                    self.live.set_tree(key, Err(e.to_string()));
                }
            }
            if let Err(e) = self.store.put_source(&rec) {
                error!(source = %url, "cannot record source: {e}");
            }
        }
        (moved, rechecks)
    }

    /// Checks each due base once and records what was seen; returns the
    /// settled changes and the rechecks wanted.
    async fn check(
        &mut self,
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
            let mut new_error = false;
            match &check.result {
                Ok(seen) => {
                    if rec.error.take().is_some() {
                        info!(base = %key, "the base can be checked again");
                        self.news = true;
                    }
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
                            info!(base = %key, from = %before.as_ref().map_or("none", Digest::as_str), to = %after, "base changed and settled");
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
                Err(e) => {
                    let error = e.to_string();
                    if rec.error.as_ref() != Some(&error) {
                        warn!(base = %key, "cannot check the base: {error}");
                        self.news = true;
                        new_error = true;
                    }
                    rec.error = Some(error);
                }
            }
            if !changed.is_empty() || !rechecks.is_empty() {
                self.news = true;
            }
            // A new error is stored with its `base_error` event (a flushed
            // transaction: on the store's writer thread).
            let stored = if new_error {
                records::write(&self.store, move |s| s.base_failed(&rec)).await
            } else {
                self.store.put_base(&rec).map_err(Into::into)
            };
            if let Err(e) = stored {
                error!(base = %key, "cannot record base: {e:#}");
            }
        }
        (changed, rechecks)
    }

    /// The metrics of one check.
    fn count(&self, check: &rebased_watcher::Check, rec: &mut BaseRecord) {
        // The request itself is counted by the registry client's observer.
        let registry = check.reference.registry().to_owned();
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
        moved: &SourceMoves,
        round: &Round,
    ) {
        let name = image.name.as_str();
        let source_moved = image.context.git().and_then(|g| moved.get(&g.key()));
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
        if !round.all && touched.is_empty() && source_moved.is_none() && !was_bad_plan {
            return;
        }
        // A queued or running job decides with the inputs of its start: with
        // no change seen, it covers this image already.
        if touched.is_empty()
            && source_moved.is_none()
            && rebased_scheduler::dispatch::lock(&self.queue)
                .active(name)
                .is_some()
        {
            return;
        }
        let source_detail = source_moved.map(|(from, to)| {
            let short = |c: &str| c.chars().take(7).collect::<String>();
            format!(
                "source: {} -> {}",
                from.as_deref().map_or("none".to_owned(), short),
                short(to)
            )
        });
        let detail = if touched.is_empty() {
            source_detail.unwrap_or_else(|| "check".to_owned())
        } else {
            source_detail
                .into_iter()
                .chain(
                    touched
                        .iter()
                        .filter_map(|b| changed.get(*b).map(|(from, to)| (b, from, to)))
                        .map(|(b, from, to)| {
                            format!(
                                "{b}: {} -> {to}",
                                from.as_ref().map_or("none".to_owned(), ToString::to_string)
                            )
                        }),
                )
                .collect::<Vec<_>>()
                .join(", ")
        };
        self.reconciler
            .evaluate(image, &bases, round.trigger, &detail)
            .await;
    }

    /// The images whose Dockerfile (or context) could not be read at the
    /// last look, each with why.
    pub fn unreadable(&self) -> Vec<String> {
        let mut names: Vec<&String> = self.bad_plans.iter().collect();
        names.sort();
        names
            .into_iter()
            .map(|name| {
                let why = self
                    .store
                    .image(name)
                    .ok()
                    .flatten()
                    .and_then(|r| r.last_error)
                    .unwrap_or_else(|| "its Dockerfile could not be read".to_owned());
                format!("image {name}: {why}")
            })
            .collect()
    }

    /// Marks the images of `unreadable` not marked yet (see
    /// [`Poller::mark_bad_plan`]).
    fn mark_unreadable(&mut self, unreadable: &BTreeSet<String>) {
        for name in unreadable {
            if self.bad_plans.contains(name) {
                continue;
            }
            let Some(image) = self.live.image(name) else {
                continue;
            };
            if let Err(e) = self.live.image_bases(&image) {
                self.mark_bad_plan(name, &format!("{e:#}"));
            }
        }
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
            sources: Vec::new(),
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

    #[test]
    fn sources_are_due_on_their_images_schedules_and_when_a_push_names_them() {
        let minutely = CronSpec::parse("* * * * *").expect("cron");
        let hourly = CronSpec::parse("0 * * * *").expect("cron");
        let sources: SourceSchedules = BTreeMap::from([
            ("file:///a#main".to_owned(), vec![minutely]),
            ("file:///b#HEAD".to_owned(), vec![hourly]),
        ]);
        let mut state = PollLoop::default();
        let t0 = at(T0);
        let due = state.plan_sources(&sources, t0);
        assert_eq!(due, ["file:///a#main", "file:///b#HEAD"], "all at first");
        state.on_sources(&due, &BTreeMap::new(), &sources, Tz::UTC, t0);
        assert!(state.plan_sources(&sources, t0).is_empty());
        assert_eq!(state.next_wake(), Some(at("2026-01-01T00:01:00Z")));
        let t1 = at("2026-01-01T00:01:00Z");
        assert_eq!(state.plan_sources(&sources, t1), ["file:///a#main"]);
        // A push webhook names b: due now, once, as a webhook round.
        state.on_requests(
            vec![CheckRequest {
                references: Some(Vec::new()),
                trigger: Trigger::Webhook,
                all: false,
                sources: vec!["file:///b#HEAD".to_owned()],
            }],
            &specs(),
        );
        assert_eq!(state.trigger, Trigger::Webhook);
        assert_eq!(
            state.plan_sources(&sources, t0),
            ["file:///b#HEAD"],
            "forced, though not due"
        );
        assert!(state.plan_sources(&sources, t0).is_empty(), "once");
        // A settle recheck comes before the schedule.
        let recheck = BTreeMap::from([("file:///b#HEAD".to_owned(), at("2026-01-01T00:00:40Z"))]);
        state.on_sources(
            &["file:///b#HEAD".to_owned()],
            &recheck,
            &sources,
            Tz::UTC,
            t0,
        );
        assert_eq!(
            state.plan_sources(&sources, at("2026-01-01T00:00:40Z")),
            ["file:///b#HEAD"]
        );
        // A source no image uses any more is forgotten.
        let fewer: SourceSchedules = sources.into_iter().take(1).collect();
        state.plan_sources(&fewer, t1);
        assert!(!state.sources_next.contains_key("file:///b#HEAD"));
    }
}
