//! The job queue: at most one queued job per image, triggers merged into it,
//! exponential backoff after failures, and which jobs may start now.
//!
//! Persistence is the caller's: every job that changes is reported back so
//! it can be written to the store.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rebased_core::job::{Job, JobId, JobReason, JobState};
use rebased_core::Trigger;

use crate::graph::Graph;

/// First retry delay.
pub const BACKOFF_START: Duration = Duration::from_secs(60);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(3600);

/// The delay before retry number `attempt` (1 = after the first failure):
/// 1 min, 2, 4, ... capped at 1 h.
pub fn backoff(attempt: u32) -> Duration {
    let factor = 1u64
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u64::MAX);
    BACKOFF_START
        .checked_mul(u32::try_from(factor).unwrap_or(u32::MAX))
        .map_or(BACKOFF_MAX, |d| d.min(BACKOFF_MAX))
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A version was published (children cascade).
    Published(rebased_core::Version),
    /// Nothing was published, and why (already fresh, held).
    Fresh(String),
    /// The attempt failed.
    Failed(Failure),
    /// The attempt was cancelled (shutdown): it runs again after restart.
    Interrupted,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Published(v) => write!(f, "published {v}"),
            Self::Fresh(why) => f.write_str(why),
            Self::Failed(e) => write!(f, "failed: {}", e.error),
            Self::Interrupted => f.write_str("interrupted"),
        }
    }
}

/// A failed attempt: why, and the inputs it was decided with (none when it
/// failed before they were known), so that a failing image is decided
/// again only once its inputs change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The error, as shown in the job and the image.
    pub error: String,
    /// The inputs the attempt built from.
    pub inputs: Option<crate::Inputs>,
}

impl Outcome {
    /// A failure whose inputs are not known.
    pub fn failed(error: impl Into<String>) -> Self {
        Self::Failed(Failure {
            error: error.into(),
            inputs: None,
        })
    }
}

/// What [`Queue::finish`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// Done for good (success).
    Done,
    /// Failed; retry at this time.
    Retry(DateTime<Utc>),
    /// Failed `max_attempts` times: the image is failing.
    GaveUp,
    /// Back in the queue, unchanged (interrupted).
    Requeued,
}

/// The queue.
#[derive(Debug, Clone, Default)]
pub struct Queue {
    jobs: BTreeMap<JobId, Job>,
    next_id: JobId,
}

impl Queue {
    /// A queue holding `jobs` as loaded from the store. Jobs that were
    /// running when the daemon stopped are queued again (a re-run is
    /// idempotent: an already pushed version is adopted).
    pub fn load(jobs: impl IntoIterator<Item = Job>) -> (Self, Vec<Job>) {
        let mut q = Self::default();
        let mut changed = Vec::new();
        for mut job in jobs {
            q.next_id = q.next_id.max(job.id + 1);
            if job.state == JobState::Running {
                job.state = JobState::Queued;
                changed.push(job.clone());
            }
            q.jobs.insert(job.id, job);
        }
        // Two queued jobs for one image (should not happen): keep the oldest, merge the rest.
        let mut first: BTreeMap<String, JobId> = BTreeMap::new();
        let ids: Vec<JobId> = q.jobs.keys().copied().collect();
        for id in ids {
            let Some(job) = q
                .jobs
                .get(&id)
                .filter(|j| j.state == JobState::Queued)
                .cloned()
            else {
                continue;
            };
            match first.get(&job.image) {
                None => {
                    first.insert(job.image.clone(), id);
                }
                Some(&keep) => {
                    if let Some(k) = q.jobs.get_mut(&keep) {
                        k.reasons.extend(job.reasons);
                        changed.push(k.clone());
                    }
                    if let Some(dup) = q.jobs.get_mut(&id) {
                        dup.state = JobState::Cancelled;
                        changed.push(dup.clone());
                    }
                }
            }
        }
        (q, changed)
    }

    /// Queues a job for `image`, or merges `reason` into its queued job.
    /// A new input (anything but a retry) resets the backoff of a queued job.
    /// Returns the job as it now stands and whether it was merged.
    pub fn enqueue(&mut self, image: &str, reason: JobReason) -> (Job, bool) {
        if let Some(job) = self
            .jobs
            .values_mut()
            .find(|j| j.image == image && j.state == JobState::Queued)
        {
            if job.not_before > reason.at {
                job.not_before = reason.at;
                job.attempts = 0;
            }
            job.reasons.push(reason);
            return (job.clone(), true);
        }
        let id = self.next_id;
        self.next_id += 1;
        let job = Job::new(id, image, reason);
        self.jobs.insert(id, job.clone());
        (job, false)
    }

    /// Marks a job running.
    pub fn start(&mut self, id: JobId, now: DateTime<Utc>) -> Option<Job> {
        let job = self.jobs.get_mut(&id)?;
        job.state = JobState::Running;
        job.started_at = Some(now);
        Some(job.clone())
    }

    /// Records how an attempt ended.
    pub fn finish(
        &mut self,
        id: JobId,
        outcome: &Outcome,
        now: DateTime<Utc>,
        max_attempts: u32,
    ) -> Option<(Job, Finished)> {
        let job = self.jobs.get_mut(&id)?;
        let result = match outcome {
            Outcome::Published(v) => {
                job.state = JobState::Succeeded;
                job.published = Some(*v);
                job.error = None;
                job.finished_at = Some(now);
                Finished::Done
            }
            Outcome::Fresh(why) => {
                job.state = JobState::Succeeded;
                job.note = Some(why.clone());
                job.error = None;
                job.finished_at = Some(now);
                Finished::Done
            }
            Outcome::Interrupted => {
                job.state = JobState::Queued;
                Finished::Requeued
            }
            Outcome::Failed(f) => {
                job.attempts += 1;
                job.error = Some(f.error.clone());
                if job.attempts >= max_attempts {
                    job.state = JobState::Failed;
                    job.finished_at = Some(now);
                    Finished::GaveUp
                } else {
                    let delay = chrono::Duration::from_std(backoff(job.attempts))
                        .unwrap_or(chrono::Duration::MAX);
                    job.not_before = now
                        .checked_add_signed(delay)
                        .unwrap_or(DateTime::<Utc>::MAX_UTC);
                    job.state = JobState::Queued;
                    Finished::Retry(job.not_before)
                }
            }
        };
        let job = job.clone();
        // A job queued for the same image meanwhile absorbs a retry.
        if let Finished::Retry(_) = result {
            if let Some(other) = self
                .jobs
                .values()
                .find(|j| j.image == job.image && j.state == JobState::Queued && j.id != job.id)
                .map(|j| j.id)
            {
                let reasons = job.reasons.clone();
                if let Some(o) = self.jobs.get_mut(&other) {
                    o.reasons.splice(0..0, reasons);
                }
                if let Some(j) = self.jobs.get_mut(&id) {
                    j.state = JobState::Cancelled;
                    j.finished_at = Some(now);
                }
            }
        }
        Some((self.jobs.get(&id).cloned().unwrap_or(job), result))
    }

    /// Cancels the queued job of `image`, if any.
    pub fn cancel_image(&mut self, image: &str, now: DateTime<Utc>) -> Option<Job> {
        let job = self
            .jobs
            .values_mut()
            .find(|j| j.image == image && j.state == JobState::Queued)?;
        job.state = JobState::Cancelled;
        job.finished_at = Some(now);
        Some(job.clone())
    }

    /// Jobs that may start now: queued, due, the image not building, no
    /// managed ancestor queued or building, within `limit` running jobs.
    /// Oldest first.
    pub fn runnable(&self, now: DateTime<Utc>, limit: usize, graph: &Graph) -> Vec<JobId> {
        let running: BTreeSet<&str> = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Running)
            .map(|j| j.image.as_str())
            .collect();
        let busy: BTreeSet<&str> = self
            .jobs
            .values()
            .filter(|j| matches!(j.state, JobState::Running | JobState::Queued))
            .map(|j| j.image.as_str())
            .collect();
        let mut free = limit.saturating_sub(running.len());
        let mut out = Vec::new();
        let mut starting: BTreeSet<&str> = BTreeSet::new();
        for job in self.jobs.values() {
            if free == 0 {
                break;
            }
            if job.state != JobState::Queued || job.not_before > now {
                continue;
            }
            let image = job.image.as_str();
            if running.contains(image) || starting.contains(image) {
                continue;
            }
            if graph.ancestors(image).iter().any(|a| busy.contains(a)) {
                continue;
            }
            out.push(job.id);
            starting.insert(image);
            free -= 1;
        }
        out
    }

    /// The earliest `not_before` of a queued job later than `now`.
    pub fn next_due(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.jobs
            .values()
            .filter(|j| j.state == JobState::Queued && j.not_before > now)
            .map(|j| j.not_before)
            .min()
    }

    /// The id the next new job gets.
    pub fn next_id(&self) -> JobId {
        self.next_id
    }

    /// Number of queued jobs.
    pub fn depth(&self) -> usize {
        self.jobs
            .values()
            .filter(|j| j.state == JobState::Queued)
            .count()
    }

    /// Every job, by id.
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }

    /// One job.
    pub fn get(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id)
    }

    /// The queued or running job of `image`.
    pub fn active(&self, image: &str) -> Option<&Job> {
        self.jobs
            .values()
            .filter(|j| j.image == image && matches!(j.state, JobState::Queued | JobState::Running))
            .max_by_key(|j| (j.state == JobState::Running, j.id))
    }

    /// Drops finished jobs beyond the newest `keep`, returning their ids.
    pub fn prune(&mut self, keep: usize) -> Vec<JobId> {
        let finished: Vec<JobId> = self
            .jobs
            .values()
            .filter(|j| j.is_finished())
            .map(|j| j.id)
            .collect();
        let excess = finished.len().saturating_sub(keep);
        let drop: Vec<JobId> = finished.into_iter().take(excess).collect();
        for id in &drop {
            self.jobs.remove(id);
        }
        drop
    }
}

/// A reason, now.
pub fn reason(trigger: Trigger, at: DateTime<Utc>, detail: impl Into<String>) -> JobReason {
    JobReason {
        trigger,
        at,
        detail: detail.into(),
        force: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::test_graph as graph;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).expect("valid")
    }

    #[test]
    fn backoff_doubles_to_an_hour() {
        let mins: Vec<u64> = (1..=9).map(|a| backoff(a).as_secs() / 60).collect();
        assert_eq!(mins, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(200), BACKOFF_MAX);
    }

    #[test]
    fn triggers_coalesce_into_one_queued_job() {
        let mut q = Queue::default();
        let (a, merged) = q.enqueue("app", reason(Trigger::Poll, at(0), "base moved"));
        assert!(!merged);
        let (b, merged) = q.enqueue("app", reason(Trigger::Webhook, at(1), "webhook"));
        assert!(merged);
        assert_eq!(a.id, b.id);
        assert_eq!(b.reasons.len(), 2);
        assert_eq!(q.depth(), 1);
        // Once running, a new trigger queues a second job (the running one has old inputs).
        q.start(a.id, at(2));
        let (c, merged) = q.enqueue("app", reason(Trigger::Cascade, at(3), "parent"));
        assert!(!merged);
        assert_ne!(c.id, a.id);
        // ...which may not start while the first runs.
        assert!(q.runnable(at(4), 4, &graph(&[("app", &[])])).is_empty());
    }

    #[test]
    fn retries_back_off_then_give_up() {
        let g = graph(&[("app", &[])]);
        let mut q = Queue::default();
        let (job, _) = q.enqueue("app", reason(Trigger::Poll, at(0), ""));
        let mut now = at(0);
        let mut delays = Vec::new();
        for attempt in 1..=5 {
            assert_eq!(q.runnable(now, 1, &g), vec![job.id], "attempt {attempt}");
            q.start(job.id, now);
            let (_, fin) = q
                .finish(job.id, &Outcome::failed("boom"), now, 5)
                .expect("job");
            match fin {
                Finished::Retry(t) => {
                    delays.push((t - now).num_minutes());
                    assert!(
                        q.runnable(t - chrono::Duration::seconds(1), 1, &g)
                            .is_empty(),
                        "not before backoff"
                    );
                    now = t;
                }
                Finished::GaveUp => {
                    assert_eq!(attempt, 5);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(delays, [1, 2, 4, 8]);
        assert_eq!(q.get(job.id).map(|j| j.state), Some(JobState::Failed));
        assert_eq!(q.depth(), 0);
    }

    #[test]
    fn new_input_resets_backoff() {
        let mut q = Queue::default();
        let (job, _) = q.enqueue("app", reason(Trigger::Poll, at(0), ""));
        q.start(job.id, at(0));
        q.finish(job.id, &Outcome::failed("x"), at(0), 5);
        let (j, merged) = q.enqueue("app", reason(Trigger::Poll, at(10), "base moved again"));
        assert!(merged);
        assert_eq!((j.not_before, j.attempts), (at(10), 0));
    }

    #[test]
    fn concurrency_bound_and_one_build_per_image() {
        let g = graph(&[("a", &[]), ("b", &[]), ("c", &[])]);
        let mut q = Queue::default();
        for n in ["a", "b", "c"] {
            q.enqueue(n, reason(Trigger::Poll, at(0), ""));
        }
        let first = q.runnable(at(0), 2, &g);
        assert_eq!(first.len(), 2);
        for id in &first {
            q.start(*id, at(0));
        }
        assert!(q.runnable(at(0), 2, &g).is_empty(), "limit reached");
        q.finish(first[0], &Outcome::Fresh("fresh".into()), at(1), 5);
        assert_eq!(q.runnable(at(1), 2, &g).len(), 1);
    }

    #[test]
    fn children_wait_for_every_ancestor() {
        // x -> a, x -> b, d FROM a and b
        let g = graph(&[("a", &["x"]), ("b", &["x"]), ("d", &["a", "b"])]);
        let mut q = Queue::default();
        let (ja, _) = q.enqueue("a", reason(Trigger::Poll, at(0), ""));
        let (jb, _) = q.enqueue("b", reason(Trigger::Poll, at(0), ""));
        let (jd, _) = q.enqueue("d", reason(Trigger::Poll, at(0), ""));
        let r = q.runnable(at(0), 8, &g);
        assert_eq!(r, vec![ja.id, jb.id], "d waits");
        q.start(ja.id, at(0));
        q.start(jb.id, at(0));
        q.finish(
            ja.id,
            &Outcome::Published(rebased_core::Version::parse("1.0.1").expect("v")),
            at(1),
            5,
        );
        q.enqueue("d", reason(Trigger::Cascade, at(1), "a published"));
        assert!(q.runnable(at(1), 8, &g).is_empty(), "b still building");
        q.finish(
            jb.id,
            &Outcome::Published(rebased_core::Version::parse("2.0.1").expect("v")),
            at(2),
            5,
        );
        let (j, merged) = q.enqueue("d", reason(Trigger::Cascade, at(2), "b published"));
        assert!(merged && j.id == jd.id && j.reasons.len() == 3);
        assert_eq!(q.runnable(at(2), 8, &g), vec![jd.id], "d once, after both");
    }

    #[test]
    fn load_requeues_running_jobs() {
        let mut q = Queue::default();
        let (j, _) = q.enqueue("app", reason(Trigger::Poll, at(0), ""));
        let running = q.start(j.id, at(1)).expect("job");
        let (q2, changed) = Queue::load([running]);
        assert_eq!(changed.len(), 1);
        assert_eq!(q2.get(j.id).map(|j| j.state), Some(JobState::Queued));
        let (k, _) = {
            let mut q2 = q2;
            q2.enqueue("other", reason(Trigger::Poll, at(2), ""))
        };
        assert!(k.id > j.id, "ids keep increasing after load");
    }
}
