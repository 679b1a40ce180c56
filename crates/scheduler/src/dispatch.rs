//! The dispatcher: owns the queue, starts due jobs within the concurrency
//! bound, applies retries, and cascades a publish to the images built FROM
//! the published image's repository.
//!
//! It talks to the rest of the daemon through a command channel (in) and the
//! [`Executor`] trait (out); it never builds or reads a registry itself.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rebased_core::job::{Job, JobId, JobReason};
use rebased_core::Trigger;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::graph::Graph;
use crate::queue::{reason, Finished, Outcome, Queue};

/// How many finished jobs are kept for the API.
pub const KEEP_FINISHED: usize = 1000;

/// What the dispatcher needs from the daemon.
pub trait Executor: Send + Sync + 'static {
    /// Runs one attempt of `job` (decide again, build, push, record).
    fn execute(&self, job: Job) -> impl Future<Output = Outcome> + Send;
    /// `job` changed; `attempt` says how an attempt ended, if one did.
    /// Persist it and update the image's state. The dispatcher awaits it
    /// before it goes on, so records are written in the order of the
    /// changes (an implementation may write on a blocking thread).
    fn record(&self, job: Job, attempt: Option<Attempt>) -> impl Future<Output = ()> + Send;
    /// Finished jobs dropped from the queue (to drop from the store too).
    fn forget(&self, ids: Vec<JobId>) -> impl Future<Output = ()> + Send;
}

/// How an attempt ended: what it returned and what the queue made of it.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// What the executor returned.
    pub outcome: Outcome,
    /// What the queue decided.
    pub finished: Finished,
}

/// Commands to the dispatcher.
#[derive(Debug)]
pub enum Command {
    /// Queue a build of `image` (or merge into its queued job).
    Enqueue {
        /// The image.
        image: String,
        /// Why.
        reason: JobReason,
    },
    /// [`Command::Enqueue`], answered with the job it made or merged into.
    Request {
        /// The image.
        image: String,
        /// Why.
        reason: JobReason,
        /// Gets the job (`true`: merged into a queued one).
        reply: tokio::sync::oneshot::Sender<(Job, bool)>,
    },
    /// Drop the queued job of `image`, if any.
    Cancel {
        /// The image.
        image: String,
    },
    /// A new dependency graph (config reload).
    Graph(Graph),
    /// New limits (config reload); running jobs are not affected.
    Limits(Limits),
}

/// Limits the dispatcher enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Builds at once.
    pub max_concurrent: usize,
    /// Attempts before giving up.
    pub max_attempts: u32,
}

/// The dispatcher's clock: the system's wall clock (what the rest of the
/// daemon stamps times with), or, in tests, one that follows tokio's
/// (pausable) clock from a start time.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// `Utc::now()`.
    System,
    /// `start` plus the tokio time elapsed since `base`.
    Tokio {
        /// Wall-clock reading at `base`.
        start: DateTime<Utc>,
        /// When the clock was made.
        base: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock reading `start` now and following tokio's clock.
    pub fn starting_at(start: DateTime<Utc>) -> Self {
        Self::Tokio {
            start,
            base: tokio::time::Instant::now(),
        }
    }

    /// The system clock.
    pub fn system() -> Self {
        Self::System
    }

    /// Now.
    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Self::System => Utc::now(),
            Self::Tokio { start, base } => {
                *start
                    + chrono::Duration::from_std(base.elapsed()).unwrap_or(chrono::Duration::zero())
            }
        }
    }
}

/// The dispatcher re-checks at least this often (a wall-clock jump cannot
/// leave a due job waiting for long).
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// The queue shared with readers (the API).
pub type SharedQueue = Arc<Mutex<Queue>>;

/// Locks the shared queue (a poisoned lock still holds usable data).
pub fn lock(q: &SharedQueue) -> MutexGuard<'_, Queue> {
    q.lock().unwrap_or_else(|p| p.into_inner())
}

/// The dispatcher.
pub struct Dispatcher<E> {
    queue: SharedQueue,
    graph: Graph,
    executor: Arc<E>,
    limits: Limits,
    clock: Clock,
}

impl<E: Executor> Dispatcher<E> {
    /// A dispatcher over `queue` (as loaded from the store).
    pub fn new(
        queue: SharedQueue,
        graph: Graph,
        executor: Arc<E>,
        limits: Limits,
        clock: Clock,
    ) -> Self {
        Self {
            queue,
            graph,
            executor,
            limits,
            clock,
        }
    }

    /// Runs until `shutdown` is cancelled and every running job has ended,
    /// or the command channel closes with nothing running.
    pub async fn run(self, rx: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        self.run_inner(rx, shutdown, false).await;
    }

    /// Runs what is queued (and what it cascades to) until nothing is
    /// running and nothing can start: the `once` mode.
    pub async fn run_until_idle(self, rx: mpsc::Receiver<Command>) {
        self.run_inner(rx, CancellationToken::new(), true).await;
    }

    async fn run_inner(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
        until_idle: bool,
    ) {
        let mut running: JoinSet<(JobId, Outcome)> = JoinSet::new();
        let mut tasks: std::collections::HashMap<tokio::task::Id, JobId> =
            std::collections::HashMap::new();
        let mut open = true;
        loop {
            if until_idle {
                while let Ok(cmd) = rx.try_recv() {
                    self.command(cmd).await;
                }
            }
            if !shutdown.is_cancelled() {
                self.start_due(&mut running, &mut tasks).await;
            }
            if (shutdown.is_cancelled() || !open || until_idle) && running.is_empty() {
                // Commands that arrived while stopping are kept for the next start.
                while let Ok(cmd) = rx.try_recv() {
                    if let Command::Enqueue { .. } | Command::Request { .. } = cmd {
                        self.command(cmd).await;
                    }
                }
                break;
            }
            let now = self.clock.now();
            let wait = lock(&self.queue)
                .next_due(now)
                .and_then(|t| (t - now).to_std().ok())
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP);
            tokio::select! {
                Some(done) = running.join_next_with_id(), if !running.is_empty() => match done {
                    Ok((task, (id, outcome))) => {
                        tasks.remove(&task);
                        self.finish(id, outcome).await;
                    }
                    Err(e) => {
                        warn!("build task failed: {e}");
                        if let Some(id) = tasks.remove(&e.id()) {
                            self.finish(id, Outcome::failed(format!("the build task failed: {e}"))).await;
                        }
                    }
                },
                cmd = rx.recv(), if open && !shutdown.is_cancelled() => match cmd {
                    Some(cmd) => self.command(cmd).await,
                    None => open = false,
                },
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled(), if !shutdown.is_cancelled() => {
                    info!(running = running.len(), "dispatcher stopping: no new jobs start");
                }
            }
        }
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Enqueue { image, reason } => {
                self.enqueue(&image, reason).await;
            }
            Command::Request {
                image,
                reason,
                reply,
            } => {
                let answer = self.enqueue(&image, reason).await;
                let _ = reply.send(answer);
            }
            Command::Cancel { image } => {
                let cancelled = lock(&self.queue).cancel_image(&image, self.clock.now());
                if let Some(job) = cancelled {
                    self.executor.record(job, None).await;
                }
            }
            Command::Graph(g) => self.graph = g,
            Command::Limits(l) => self.limits = l,
        }
    }

    async fn enqueue(&self, image: &str, reason: JobReason) -> (Job, bool) {
        let (job, merged) = lock(&self.queue).enqueue(image, reason);
        debug!(image, job = job.id, merged, "enqueued");
        self.executor.record(job.clone(), None).await;
        (job, merged)
    }

    async fn start_due(
        &self,
        running: &mut JoinSet<(JobId, Outcome)>,
        tasks: &mut std::collections::HashMap<tokio::task::Id, JobId>,
    ) {
        let now = self.clock.now();
        let started: Vec<Job> = {
            let mut q = lock(&self.queue);
            let ids = q.runnable(now, self.limits.max_concurrent, &self.graph);
            ids.into_iter().filter_map(|id| q.start(id, now)).collect()
        };
        for job in started {
            info!(image = %job.image, job = job.id, attempt = job.attempts + 1, "job starting");
            self.executor.record(job.clone(), None).await;
            let executor = Arc::clone(&self.executor);
            let id = job.id;
            let handle = running.spawn(async move { (id, executor.execute(job).await) });
            tasks.insert(handle.id(), id);
        }
    }

    async fn finish(&self, id: JobId, outcome: Outcome) {
        let now = self.clock.now();
        let finished = lock(&self.queue).finish(id, &outcome, now, self.limits.max_attempts);
        let Some((job, fin)) = finished else { return };
        match &fin {
            Finished::Retry(at) => {
                warn!(image = %job.image, job = id, attempts = job.attempts, retry_at = %at, error = %job.error.as_deref().unwrap_or("-"), "job failed; will retry")
            }
            Finished::GaveUp => {
                warn!(image = %job.image, job = id, attempts = job.attempts, error = %job.error.as_deref().unwrap_or("-"), "job failed; giving up")
            }
            Finished::Done => info!(image = %job.image, job = id, %outcome, "job done"),
            Finished::Requeued => {
                info!(image = %job.image, job = id, "job interrupted; queued again")
            }
        }
        let image = job.image.clone();
        let published = match &outcome {
            Outcome::Published(v) => Some(*v),
            _ => None,
        };
        self.executor
            .record(
                job,
                Some(Attempt {
                    outcome,
                    finished: fin,
                }),
            )
            .await;
        if let Some(v) = published {
            for child in self.graph.children(&image) {
                self.enqueue(
                    child,
                    reason(Trigger::Cascade, now, format!("{image} published {v}")),
                )
                .await;
            }
        }
        let dropped = lock(&self.queue).prune(KEEP_FINISHED);
        if !dropped.is_empty() {
            self.executor.forget(dropped).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::test_graph as graph;
    use rebased_core::job::JobState;
    use rebased_core::Version;
    use std::collections::BTreeMap;

    /// Records what ran when; outcomes scripted per image.
    #[derive(Default)]
    struct Fake {
        log: Mutex<Vec<(String, &'static str, u64)>>,
        script: Mutex<BTreeMap<String, Vec<Outcome>>>,
        build_secs: u64,
        start: Mutex<Option<tokio::time::Instant>>,
        concurrent: Mutex<(usize, usize)>,
        /// Every record: the job's state and the attempt, if one ended.
        records: Mutex<Vec<(JobState, Option<Attempt>)>>,
    }

    impl Fake {
        fn secs(&self) -> u64 {
            let mut s = self.start.lock().expect("lock");
            s.get_or_insert_with(tokio::time::Instant::now)
                .elapsed()
                .as_secs()
        }
        fn events(&self) -> Vec<(String, &'static str, u64)> {
            self.log.lock().expect("lock").clone()
        }
    }

    impl Executor for Fake {
        async fn execute(&self, job: Job) -> Outcome {
            {
                let mut c = self.concurrent.lock().expect("lock");
                c.0 += 1;
                c.1 = c.1.max(c.0);
            }
            let t = self.secs();
            self.log
                .lock()
                .expect("lock")
                .push((job.image.clone(), "start", t));
            tokio::time::sleep(Duration::from_secs(self.build_secs)).await;
            self.concurrent.lock().expect("lock").0 -= 1;
            let next = self
                .script
                .lock()
                .expect("lock")
                .get_mut(&job.image)
                .and_then(|v| (!v.is_empty()).then(|| v.remove(0)));
            next.unwrap_or(Outcome::Published(Version::parse("1.0.1").expect("v")))
        }
        async fn record(&self, job: Job, attempt: Option<Attempt>) {
            self.records
                .lock()
                .expect("lock")
                .push((job.state, attempt.clone()));
            if let Some(Finished::GaveUp) = attempt.map(|a| a.finished) {
                let t = self.secs();
                self.log
                    .lock()
                    .expect("lock")
                    .push((job.image.clone(), "gave-up", t));
            }
        }
        async fn forget(&self, _: Vec<JobId>) {}
    }

    async fn drive(
        fake: Arc<Fake>,
        g: Graph,
        limits: Limits,
        initial: &[&str],
        run_for: Duration,
    ) -> SharedQueue {
        let queue: SharedQueue = Arc::new(Mutex::new(Queue::default()));
        let clock = Clock::starting_at(Utc::now());
        let d = Dispatcher::new(Arc::clone(&queue), g, fake, limits, clock);
        let (tx, rx) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(d.run(rx, shutdown.clone()));
        for image in initial {
            tx.send(Command::Enqueue {
                image: image.to_string(),
                reason: reason(Trigger::Poll, clock.now(), "test"),
            })
            .await
            .expect("send");
        }
        tokio::time::sleep(run_for).await;
        shutdown.cancel();
        task.await.expect("dispatcher ends");
        queue
    }

    const LIMITS: Limits = Limits {
        max_concurrent: 2,
        max_attempts: 5,
    };

    #[tokio::test(start_paused = true)]
    async fn concurrency_is_bounded() {
        let fake = Arc::new(Fake {
            build_secs: 10,
            ..Fake::default()
        });
        let g = graph(&[("a", &[]), ("b", &[]), ("c", &[]), ("d", &[]), ("e", &[])]);
        drive(
            Arc::clone(&fake),
            g,
            LIMITS,
            &["a", "b", "c", "d", "e"],
            Duration::from_secs(100),
        )
        .await;
        let starts: Vec<u64> = fake
            .events()
            .iter()
            .filter(|e| e.1 == "start")
            .map(|e| e.2)
            .collect();
        assert_eq!(starts, [0, 0, 10, 10, 20]);
        assert_eq!(fake.concurrent.lock().expect("lock").1, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_then_give_up() {
        let fake = Arc::new(Fake::default());
        fake.script.lock().expect("lock").insert(
            "a".into(),
            (0..5).map(|_| Outcome::failed("boom")).collect(),
        );
        let q = drive(
            Arc::clone(&fake),
            graph(&[("a", &[])]),
            LIMITS,
            &["a"],
            Duration::from_secs(3 * 3600),
        )
        .await;
        let events = fake.events();
        let starts: Vec<u64> = events
            .iter()
            .filter(|e| e.1 == "start")
            .map(|e| e.2)
            .collect();
        // attempts at 0, +1 min, +2, +4, +8
        assert_eq!(starts, [0, 60, 180, 420, 900]);
        assert_eq!(events.last().map(|e| e.1), Some("gave-up"));
        let q = lock(&q);
        let job = q.jobs().next().expect("job");
        assert_eq!((job.state, job.attempts), (JobState::Failed, 5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_is_recorded_with_the_inputs_it_was_decided_with() {
        let fake = Arc::new(Fake::default());
        let inputs = crate::Inputs::from_digests(BTreeMap::from([(
            "docker.io/library/alpine:3".to_owned(),
            rebased_core::Digest::sha256(b"base"),
        )]));
        let failure = Outcome::Failed(crate::queue::Failure {
            error: "boom".to_owned(),
            inputs: Some(inputs.clone()),
        });
        fake.script
            .lock()
            .expect("lock")
            .insert("a".into(), vec![failure.clone()]);
        let limits = Limits {
            max_concurrent: 1,
            max_attempts: 1,
        };
        drive(
            Arc::clone(&fake),
            graph(&[("a", &[])]),
            limits,
            &["a"],
            Duration::from_secs(10),
        )
        .await;
        let records = fake.records.lock().expect("lock").clone();
        let states: Vec<JobState> = records.iter().map(|r| r.0).collect();
        assert_eq!(
            states,
            [JobState::Queued, JobState::Running, JobState::Failed],
            "recorded in the order of the changes"
        );
        let last = records.last().and_then(|r| r.1.clone()).expect("attempt");
        assert_eq!(last.finished, Finished::GaveUp);
        assert_eq!(last.outcome, failure, "the failure carries its inputs");
    }

    #[tokio::test(start_paused = true)]
    async fn cascades_build_children_after_parents_once() {
        let fake = Arc::new(Fake {
            build_secs: 5,
            ..Fake::default()
        });
        // x (upstream) -> a, b ; d FROM a and b ; e FROM d
        let g = graph(&[
            ("e", &["d"]),
            ("d", &["a", "b"]),
            ("a", &["x"]),
            ("b", &["x"]),
        ]);
        let limits = Limits {
            max_concurrent: 1,
            max_attempts: 5,
        };
        let q = drive(
            Arc::clone(&fake),
            g,
            limits,
            &["a", "b"],
            Duration::from_secs(600),
        )
        .await;
        let order: Vec<String> = fake
            .events()
            .iter()
            .filter(|e| e.1 == "start")
            .map(|e| e.0.clone())
            .collect();
        assert_eq!(order, ["a", "b", "d", "e"], "d once after a and b, then e");
        let q = lock(&q);
        let d = q.jobs().find(|j| j.image == "d").expect("d job");
        assert_eq!(
            d.reasons.len(),
            2,
            "both parents' cascades merged: {:?}",
            d.reasons
        );
        assert!(d.reasons.iter().all(|r| r.trigger == Trigger::Cascade));
    }

    #[tokio::test(start_paused = true)]
    async fn triggers_arriving_meanwhile_merge_into_one_run() {
        let fake = Arc::new(Fake {
            build_secs: 30,
            ..Fake::default()
        });
        let queue: SharedQueue = Arc::new(Mutex::new(Queue::default()));
        let clock = Clock::starting_at(Utc::now());
        let d = Dispatcher::new(
            Arc::clone(&queue),
            graph(&[("a", &[])]),
            Arc::clone(&fake),
            LIMITS,
            clock,
        );
        let (tx, rx) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(d.run(rx, shutdown.clone()));
        let send = |trigger| {
            let tx = tx.clone();
            async move {
                tx.send(Command::Enqueue {
                    image: "a".into(),
                    reason: reason(trigger, clock.now(), "t"),
                })
                .await
                .expect("send");
            }
        };
        send(Trigger::Poll).await;
        tokio::time::sleep(Duration::from_secs(5)).await; // first run is building
        send(Trigger::Webhook).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        send(Trigger::Manual).await;
        send(Trigger::Poll).await;
        tokio::time::sleep(Duration::from_secs(120)).await;
        shutdown.cancel();
        task.await.expect("ends");
        let starts: Vec<u64> = fake
            .events()
            .iter()
            .filter(|e| e.1 == "start")
            .map(|e| e.2)
            .collect();
        assert_eq!(
            starts,
            [0, 30],
            "one run, then one more for everything that came meanwhile"
        );
        let q = lock(&queue);
        let second = q.jobs().nth(1).expect("second job");
        let triggers: Vec<Trigger> = second.reasons.iter().map(|r| r.trigger).collect();
        assert_eq!(
            triggers,
            [Trigger::Webhook, Trigger::Manual, Trigger::Poll],
            "every reason kept"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fresh_publishes_do_not_cascade() {
        let fake = Arc::new(Fake::default());
        fake.script
            .lock()
            .expect("lock")
            .insert("a".into(), vec![Outcome::Fresh("fresh".into())]);
        let g = graph(&[("a", &[]), ("b", &["a"])]);
        drive(
            Arc::clone(&fake),
            g,
            LIMITS,
            &["a"],
            Duration::from_secs(60),
        )
        .await;
        let order: Vec<String> = fake
            .events()
            .iter()
            .filter(|e| e.1 == "start")
            .map(|e| e.0.clone())
            .collect();
        assert_eq!(order, ["a"]);
    }
}
