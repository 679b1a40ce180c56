//! The reconciler: [`decide`] is the one place that says whether an image
//! is held, failing with the inputs of now, fresh, or to be built as which
//! version; the poll loop, the executor and the API's resume all ask it.
//! [`Reconciler`] queues what a poll finds stale ([`Reconciler::evaluate`])
//! and is the dispatcher's [`Executor`]: a job decides again with the
//! inputs of its start (level-triggered, so a re-run after a crash or a
//! merged trigger is idempotent), builds pinned, and publishes.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use chrono::Utc;
use rebased_api::metrics::Metrics;
use rebased_api::{ActionError, Conflict};
use rebased_core::config::ImageConfig;
use rebased_core::job::{Job, JobId, JobState};
use rebased_core::{Digest, ImageRef, ImageState, Trigger, Version};
use rebased_scheduler::dispatch::{Attempt, Command, Executor, SharedQueue};
use rebased_scheduler::queue::{reason, Failure, Finished, Outcome};
use rebased_scheduler::{
    select_platforms, Bumps, Change, Decision, Inputs, Published, SourceChange,
};
use rebased_state::{BaseRecord, RollbackEvent, StateError, Store, VersionRecord};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, info_span, warn, Instrument};

use crate::build::{self, Build};
use crate::destination::Destination;
use crate::ledger;
use crate::live::{Live, Plan};
use crate::publish::{self, move_tags, Move, Release};
use crate::records::{self, version_inputs};
use crate::status::Status;

/// Who asks [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asker {
    /// The poll loop (or a resume): an image failing with the inputs of
    /// now is left alone until they change.
    Poll,
    /// A job (a retry, a rebuild, a cascade): it runs whatever failed before.
    Job,
    /// A rebuild forced through a hold (`rebuild --force`).
    Forced,
}

/// What a job did when it published nothing: why, for its record and log.
fn held_note(name: &str) -> String {
    format!("nothing published: {name} is held (rolled back); `rebased resume {name}` ends the hold, `rebased rebuild {name} --force` builds it anyway")
}

/// What [`decide`] says about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Rolled back: nothing builds it until it is resumed.
    Held,
    /// Its last job gave up with exactly these inputs (asked by a poll).
    Failing,
    /// Built from the inputs of now; the current version, if any.
    Fresh(Option<Box<VersionRecord>>),
    /// To be built.
    Build {
        /// The version to publish.
        version: Version,
        /// The version it replaces.
        supersedes: Option<Version>,
        /// Why.
        trigger: Trigger,
        /// Every base, before and after.
        changes: Vec<Change>,
        /// The source, before and after (for an image with one).
        source: Option<SourceChange>,
    },
}

/// Decides `image` with the inputs of `now` and `trigger`, from its record
/// and ledger in `store`: held, failing with these inputs (only when
/// `asker` is the poll loop), fresh, or the next version to build (a bump
/// of the highest version ever published, so none is reused).
pub fn decide(
    store: &Store,
    image: &ImageConfig,
    now: &Inputs,
    trigger: Trigger,
    asker: Asker,
) -> Result<Verdict, StateError> {
    let name = image.name.as_str();
    let record = store.image(name)?;
    if let Some(r) = &record {
        if records::held(r) && asker != Asker::Forced {
            return Ok(Verdict::Held);
        }
        if asker == Asker::Poll && r.state == ImageState::Failing {
            let failed_with = r.failed_inputs.as_ref().map(|d| Inputs {
                digests: d.clone(),
                platforms: r.failed_platforms.clone(),
                source: r.failed_source.clone(),
            });
            if failed_with.is_some_and(|f| f.same_as(now)) {
                return Ok(Verdict::Failing);
            }
        }
    }
    let current = match record.as_ref().and_then(|r| r.current) {
        Some(v) => store.version(name, &v)?,
        None => None,
    };
    let built = current.as_ref().map(version_inputs);
    let highest = records::highest(store, name)?;
    let bumps = Bumps {
        base: image.bump,
        source: image.source_bump,
    };
    let published = current
        .as_ref()
        .zip(built.as_ref())
        .zip(highest.as_ref())
        .map(|((c, inputs), highest)| Published {
            version: &c.version,
            inputs,
            highest,
        });
    Ok(
        match rebased_scheduler::decide(published, &image.version, bumps, now, trigger) {
            Decision::Fresh => Verdict::Fresh(current.map(Box::new)),
            Decision::Build {
                version,
                supersedes,
                trigger,
                changes,
                source,
            } => Verdict::Build {
                version,
                supersedes,
                trigger,
                changes,
                source,
            },
        },
    )
}

/// An image's inputs from the settled base digests in `store`; `Err` names
/// a base whose digest is not known yet.
pub fn stored_inputs(
    store: &Store,
    image: &ImageConfig,
    bases: &[ImageRef],
) -> Result<Inputs, ImageRef> {
    let mut inputs = Inputs::default();
    for base in bases {
        let key = base.to_string();
        let rec = store.base(&key).ok().flatten();
        let digest = match base.digest() {
            Some(d) => d.clone(),
            None => rec
                .as_ref()
                .and_then(|r| r.digest.clone())
                .ok_or_else(|| base.clone())?,
        };
        if let Some(r) = rec.filter(|r| base.digest().is_none() && !r.platforms.is_empty()) {
            inputs.platforms.insert(
                key.clone(),
                select_platforms(&r.platforms, &image.platforms),
            );
        }
        inputs.digests.insert(key, digest);
    }
    Ok(inputs)
}

/// The settled revision of `image`'s source in `store` (`None` for a
/// local context); `Err` says the source's commit is not known yet.
pub fn stored_source(store: &Store, image: &ImageConfig) -> Result<Option<String>, String> {
    let Some(git) = image.context.git() else {
        // A watched local context: the content hash the watch recorded.
        return match image.context.local().filter(|_| image.watch_context) {
            None => Ok(None),
            Some(dir) => store
                .source(&records::context_key(dir))
                .ok()
                .flatten()
                .and_then(|r| r.commit)
                .map(Some)
                .ok_or_else(|| format!("content hash of context {} unknown", dir.display())),
        };
    };
    store
        .source(&git.key())
        .ok()
        .flatten()
        .and_then(|r| r.commit)
        .map(Some)
        .ok_or_else(|| format!("commit of source {} unknown", git.public_url()))
}

/// Decides images and runs their jobs.
pub struct Reconciler {
    live: Arc<Live>,
    store: Store,
    queue: SharedQueue,
    jobs: mpsc::Sender<Command>,
    /// Cancelled: running builds are killed (their jobs are queued again).
    builds: CancellationToken,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
}

/// What a [`Reconciler`] works with.
pub struct Parts {
    /// The config in force.
    pub live: Arc<Live>,
    /// The store.
    pub store: Store,
    /// The queue (shared with the dispatcher and the API).
    pub queue: SharedQueue,
    /// Commands to the dispatcher.
    pub jobs: mpsc::Sender<Command>,
    /// Cancels running builds.
    pub builds: CancellationToken,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The daemon's status.
    pub status: Arc<Status>,
}

impl Reconciler {
    /// A reconciler over `parts`.
    pub fn new(parts: Parts) -> Self {
        let Parts {
            live,
            store,
            queue,
            jobs,
            builds,
            metrics,
            status,
        } = parts;
        Self {
            live,
            store,
            queue,
            jobs,
            builds,
            metrics,
            status,
        }
    }

    /// Queues a build of `image` if it is stale now (settled digests in
    /// the store); marks it fresh if it is.
    pub async fn evaluate(
        &self,
        image: &ImageConfig,
        bases: &[ImageRef],
        trigger: Trigger,
        detail: &str,
    ) {
        self.decide_and_queue(image, bases, trigger, detail, false)
            .await;
    }

    /// [`Reconciler::evaluate`]; with `answer`, waits for the dispatcher
    /// to say which job it queued (a resume reports it).
    async fn decide_and_queue(
        &self,
        image: &ImageConfig,
        bases: &[ImageRef],
        trigger: Trigger,
        detail: &str,
        answer: bool,
    ) -> Option<JobId> {
        let name = image.name.as_str();
        let mut now = match stored_inputs(&self.store, image, bases) {
            Ok(i) => i,
            Err(base) => {
                warn!(image = %name, base = %base, "base digest unknown; image not decided this round");
                return None;
            }
        };
        now.source = match stored_source(&self.store, image) {
            Ok(s) => s,
            Err(e) => {
                warn!(image = %name, "{e}; image not decided this round");
                return None;
            }
        };
        let verdict = match decide(&self.store, image, &now, trigger, Asker::Poll) {
            Ok(v) => v,
            Err(e) => {
                error!(image = %name, "cannot read the ledger: {e}");
                return None;
            }
        };
        match verdict {
            Verdict::Held | Verdict::Failing => None,
            Verdict::Fresh(_) => {
                let stored = self.store.image(name).ok().flatten().map(|r| r.state);
                if stored != Some(ImageState::Fresh)
                    && rebased_scheduler::dispatch::lock(&self.queue)
                        .active(name)
                        .is_none()
                {
                    records::set_state(&self.store, name, ImageState::Fresh, None);
                }
                None
            }
            Verdict::Build {
                version, trigger, ..
            } => {
                info!(image = %name, %version, %trigger, detail, "image is stale: queueing a build");
                let why = reason(trigger, Utc::now(), detail);
                if !answer {
                    let cmd = Command::Enqueue {
                        image: name.to_owned(),
                        reason: why,
                    };
                    if self.jobs.send(cmd).await.is_err() {
                        warn!(image = %name, "dispatcher gone; build not queued");
                    }
                    return None;
                }
                let (reply, job) = tokio::sync::oneshot::channel();
                let cmd = Command::Request {
                    image: name.to_owned(),
                    reason: why,
                    reply,
                };
                if self.jobs.send(cmd).await.is_err() {
                    warn!(image = %name, "dispatcher gone; build not queued");
                    return None;
                }
                match tokio::time::timeout(std::time::Duration::from_secs(30), job).await {
                    Ok(Ok((job, _))) => Some(job.id),
                    _ => None,
                }
            }
        }
    }

    /// Ends a hold: the image is decided again at once; the job queued,
    /// if it is stale.
    pub async fn resume(&self, name: &str) -> Result<Option<JobId>, ActionError> {
        let image = self
            .live
            .image(name)
            .ok_or_else(|| ActionError::NotFound(format!("no image {name:?}")))?;
        let internal = |e: StateError| ActionError::Internal(e.to_string());
        let owned = name.to_owned();
        let resumed = records::write(&self.store, move |s| s.resume(&owned))
            .await
            .map_err(|e| ActionError::Internal(format!("{e:#}")))?;
        if resumed.is_none() {
            let state = self
                .store
                .image(name)
                .map_err(internal)?
                .map_or(ImageState::Stale, |r| r.state);
            return Err(ActionError::Conflict {
                image: name.to_owned(),
                conflict: Conflict::NotHeld(state),
            });
        }
        info!(image = %name, "resumed");
        let bases = self
            .live
            .image_bases(&image)
            .map_err(|e| ActionError::Internal(format!("{e:#}")))?;
        Ok(self
            .decide_and_queue(
                &image,
                &bases,
                Trigger::Poll,
                "resumed after a rollback",
                true,
            )
            .await)
    }

    /// Rolls `name` back to `to` and holds it.
    pub async fn rollback(&self, name: &str, to: &Version) -> Result<RollbackEvent, ActionError> {
        let image = self
            .live
            .image(name)
            .ok_or_else(|| ActionError::NotFound(format!("no image {name:?}")))?;
        let registry = self.live.registry();
        ledger::rollback(&self.store, &registry, &image, to, &self.queue, &self.jobs).await
    }

    /// One attempt: `Ok(version)` when a version was published, else
    /// why nothing was.
    async fn run_job(
        &self,
        image: &ImageConfig,
        job: &Job,
        tried: &mut Option<Inputs>,
    ) -> Result<std::result::Result<Version, String>> {
        let registry = self.live.registry();
        let name = image.name.as_str();
        self.unless_stopping(ledger::ensure(&self.store, &registry, image))
            .await?;
        let forced = job.is_forced();
        if !forced && records::is_held(&self.store, name)? {
            info!("image is held (rolled back); not building");
            return Ok(Err(held_note(name)));
        }
        // The source's settled commit, read once: the Dockerfile, the
        // context and the inputs all come from this one checkout by id.
        let (plan, context, source) = match image.context.git() {
            None => {
                let dir = image
                    .context
                    .local()
                    .map(std::path::Path::to_path_buf)
                    .unwrap_or_default();
                let hash = stored_source(&self.store, image).map_err(|e| anyhow!("{e}"))?;
                (self.live.plan(image)?, dir, hash)
            }
            Some(git) => {
                let commit = stored_source(&self.store, image)
                    .map_err(|e| anyhow!("{e}"))?
                    .unwrap_or_default();
                let creds = self.live.source_credentials(git);
                let checkout = self
                    .unless_stopping(async {
                        Ok(self
                            .live
                            .sources()
                            .checkout(git, creds.as_ref(), &commit)
                            .await?)
                    })
                    .await?;
                let plan = self.live.plan_in(image, &checkout.dir)?;
                (plan, checkout.dir, Some(commit))
            }
        };
        let (mut now, pins) = self.unless_stopping(self.inputs(image, &plan)).await?;
        now.source = source;
        *tried = Some(now.clone());
        // A rebuild request merged into the job forces a build.
        let trigger = if job.is_manual() {
            Trigger::Manual
        } else {
            job.trigger()
        };
        let asker = if forced { Asker::Forced } else { Asker::Job };
        let (version, supersedes, trigger, changes, source_change) =
            match decide(&self.store, image, &now, trigger, asker)? {
                Verdict::Build {
                    version,
                    supersedes,
                    trigger,
                    changes,
                    source,
                } => (version, supersedes, trigger, changes, source),
                Verdict::Held => {
                    info!("image is held (rolled back); not building");
                    return Ok(Err(held_note(name)));
                }
                Verdict::Failing | Verdict::Fresh(None) => {
                    info!("image is already fresh; nothing to build");
                    return Ok(Err(format!(
                        "nothing published: {name} is already built from the bases of now"
                    )));
                }
                Verdict::Fresh(Some(current)) => {
                    info!("image is already fresh; nothing to build");
                    // A crash may have cut the floating tags' move short: finish it.
                    let repo = Destination::from(&image.repository);
                    let tags: Vec<String> = image
                        .tags
                        .iter()
                        .map(|t| t.render(&current.version))
                        .collect();
                    move_tags(
                        &repo,
                        &registry,
                        &current.digest,
                        &tags,
                        Move::WhereDifferent,
                    )
                    .await?;
                    // This job published it before a crash: it still counts
                    // as its publish (and cascades).
                    return Ok(if current.job == Some(job.id) {
                        Ok(current.version)
                    } else {
                        Err(format!(
                        "nothing published: {name} is already built from the bases of now, as {}",
                        current.version
                    ))
                    });
                }
            };
        let repo = Destination::from(&image.repository);
        info!(%version, %trigger, supersedes = %supersedes.map_or_else(|| "-".to_owned(), |v| v.to_string()), "building");
        let signer = self
            .live
            .signer()
            .map_err(|e| anyhow::anyhow!("signing.key_file: {e}"))?;
        let cfg = self.live.cfg();
        let release = Release {
            signer: signer.as_deref(),
            attest: &cfg.signing.attest,
            backend: build::backend_name(&self.live, &plan, image),
            started: chrono::Utc::now(),
            image,
            repo: &repo,
            version,
            supersedes,
            trigger,
            inputs: &now,
            changes: &changes,
            source: source_change.as_ref(),
            job: job.id,
            forced,
        };
        let build = Build {
            release: &release,
            plan: &plan,
            context: &context,
            pins: &pins,
        };
        let push = build::run(&self.live, &registry, &self.builds, &build);
        publish::publish(&self.store, &registry, &release, push, &self.builds).await?;
        if forced && records::is_held(&self.store, name).unwrap_or(false) {
            info!(%version, "forced through the hold: published and tagged; the image stays held");
        }
        Ok(Ok(version))
    }

    /// `step`, unless builds are cancelled first (a stop): for the steps of
    /// a job that may be abandoned, where nothing is pushed yet or what is
    /// left is finished by the job's next run. A build observes the
    /// cancellation itself; a pushed version is always recorded.
    async fn unless_stopping<T>(
        &self,
        step: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        tokio::select! {
            r = step => r,
            _ = self.builds.cancelled() => Err(anyhow!("cancelled: rebased is stopping")),
        }
    }

    /// The inputs of now: settled digests from the poll loop; bases that
    /// are managed images (a cascade) or never checked are resolved now.
    async fn inputs(
        &self,
        image: &ImageConfig,
        plan: &Plan,
    ) -> Result<(Inputs, BTreeMap<ImageRef, Digest>)> {
        let registry = self.live.registry();
        for base in plan.bases.iter().filter(|b| b.digest().is_none()) {
            let key = base.to_string();
            let rec = self.store.base(&key)?;
            if rec.as_ref().is_some_and(|r| r.digest.is_some()) && !self.live.is_managed(base) {
                continue;
            }
            let d = registry
                .resolve(base)
                .await
                .with_context(|| format!("resolving base {base}"))?;
            let mut rec = rec.unwrap_or_else(|| BaseRecord::new(&key));
            let t = Utc::now();
            if rec.digest.as_ref() != Some(&d) {
                rec.changed_at = Some(t);
                rec.platforms = registry
                    .platforms(&base.pinned(&d))
                    .await
                    .unwrap_or_default();
            }
            rec.digest = Some(d);
            rec.pending = None;
            rec.checked_at = Some(t);
            rec.error = None;
            self.store.put_base(&rec)?;
        }
        let inputs = stored_inputs(&self.store, image, &plan.bases)
            .map_err(|base| anyhow!("digest of base {base} unknown"))?;
        let pins = plan
            .bases
            .iter()
            .filter_map(|b| {
                inputs
                    .digests
                    .get(&b.to_string())
                    .map(|d| (b.clone(), d.clone()))
            })
            .collect();
        Ok((inputs, pins))
    }
}

impl Executor for Reconciler {
    async fn execute(&self, job: Job) -> Outcome {
        let Some(image) = self.live.image(&job.image) else {
            warn!(image = %job.image, job = job.id, "image no longer configured; job dropped");
            return Outcome::Fresh(format!(
                "nothing published: {} is no longer in the config",
                job.image
            ));
        };
        let span = info_span!("job", image = %job.image, job = job.id);
        let started = std::time::Instant::now();
        let mut tried = None;
        let result = self
            .run_job(&image, &job, &mut tried)
            .instrument(span)
            .await;
        let outcome = match result {
            Ok(Ok(v)) => {
                self.metrics.inc(
                    "rebased_versions_published_total",
                    &[("image", job.image.as_str())],
                );
                Outcome::Published(v)
            }
            Ok(Err(why)) => Outcome::Fresh(why),
            Err(_) if self.builds.is_cancelled() => Outcome::Interrupted,
            Err(e) => {
                error!(image = %job.image, job = job.id, "{e:#}");
                Outcome::Failed(Failure {
                    error: format!("{e:#}"),
                    inputs: tried,
                })
            }
        };
        let label = match &outcome {
            Outcome::Published(_) => "published",
            Outcome::Fresh(_) => "fresh",
            Outcome::Failed(_) => "failed",
            Outcome::Interrupted => "interrupted",
        };
        self.metrics
            .inc("rebased_builds_total", &[("outcome", label)]);
        if !matches!(outcome, Outcome::Fresh(_)) {
            self.metrics.observe_build(started.elapsed().as_secs_f64());
        }
        outcome
    }

    async fn record(&self, job: Job, attempt: Option<Attempt>) {
        let store = self.store.clone();
        let queue = Arc::clone(&self.queue);
        let written = records::write(&self.store, move |_| {
            record_job(&store, &queue, &job, attempt.as_ref());
            Ok(())
        })
        .await;
        if let Err(e) = written {
            error!("recording a job: {e}");
        }
        self.status.report(&self.queue, self.live.cfg().image.len());
    }

    async fn forget(&self, ids: Vec<JobId>) {
        let logs: Vec<_> = ids.iter().map(|id| self.live.log_path(*id)).collect();
        let store = self.store.clone();
        let done = records::write(&self.store, move |_| {
            if let Err(e) = store.delete_jobs(&ids) {
                warn!("cannot drop old jobs: {e}");
            }
            for log in logs {
                let _ = std::fs::remove_file(log);
            }
            Ok(())
        })
        .await;
        if let Err(e) = done {
            error!("forgetting jobs: {e}");
        }
    }
}

/// Writes `job` (flushed) and the image state its change means.
fn record_job(store: &Store, queue: &SharedQueue, job: &Job, attempt: Option<&Attempt>) {
    if let Err(e) = store.put_job(job) {
        error!(job = job.id, "cannot record job: {e}");
    }
    let name = job.image.as_str();
    match records::is_held(store, name) {
        Ok(false) => {}
        Ok(true) => return,
        Err(e) => {
            error!(image = %name, "cannot record the image state: {e}");
            return;
        }
    }
    match (job.state, attempt.map(|a| (&a.finished, &a.outcome))) {
        (JobState::Queued, Some((Finished::Retry(_), _))) => {
            records::set_state(store, name, ImageState::Queued, job.error.clone())
        }
        (JobState::Queued, _) => records::set_state(store, name, ImageState::Queued, None),
        (JobState::Running, _) => records::set_state(store, name, ImageState::Building, None),
        (JobState::Failed, outcome) => {
            // Unknown inputs (a failure before they were known) stay unknown.
            let inputs = match outcome {
                Some((_, Outcome::Failed(f))) => f.inputs.as_ref(),
                _ => None,
            };
            records::set_failing(store, name, Some(job.id), job.error.clone(), inputs);
        }
        (JobState::Succeeded, _) => {
            if rebased_scheduler::dispatch::lock(queue)
                .active(name)
                .is_none()
            {
                records::set_state(store, name, ImageState::Fresh, None);
            }
        }
        (JobState::Cancelled, _) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rebased_core::config::Config;

    fn image(extra: &str) -> ImageConfig {
        let cfg = Config::parse(&format!(
            "[[image]]\nname = \"web\"\ncontext = \"/srv/web\"\nrepository = \"127.0.0.1:5000/web\"\nversion = \"1.4.2\"\n{extra}"
        ))
        .expect("config");
        cfg.image.into_iter().next().expect("image")
    }

    fn d(seed: &str) -> Digest {
        Digest::sha256(seed.as_bytes())
    }

    fn v(s: &str) -> Version {
        Version::parse(s).expect("version")
    }

    const BASE: &str = "docker.io/library/alpine:3";

    fn inputs(digest: &Digest) -> Inputs {
        Inputs::from_digests(BTreeMap::from([(BASE.to_owned(), digest.clone())]))
    }

    fn publish(store: &Store, version: &str, from: &Digest) {
        let record =
            VersionRecord::new(v(version), d(version), inputs(from).digests, Trigger::Poll);
        store.publish("web", &record, None).expect("publish");
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("db")).expect("store");
        (dir, store)
    }

    #[test]
    fn nothing_published_builds_the_first_version() {
        let (_dir, store) = store();
        let verdict = decide(
            &store,
            &image(""),
            &inputs(&d("a")),
            Trigger::Poll,
            Asker::Poll,
        );
        let Ok(Verdict::Build {
            version,
            supersedes,
            trigger,
            changes,
            ..
        }) = verdict
        else {
            panic!("{verdict:?}");
        };
        assert_eq!(
            (version, supersedes, trigger),
            (v("1.4.2"), None, Trigger::Initial)
        );
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].before, None);
    }

    #[test]
    fn same_inputs_are_fresh_and_a_new_digest_builds_the_next_version() {
        let (_dir, store) = store();
        publish(&store, "1.4.2", &d("a"));
        let img = image("");
        match decide(&store, &img, &inputs(&d("a")), Trigger::Poll, Asker::Poll) {
            Ok(Verdict::Fresh(Some(current))) => assert_eq!(current.version, v("1.4.2")),
            other => panic!("{other:?}"),
        }
        match decide(
            &store,
            &img,
            &inputs(&d("b")),
            Trigger::Webhook,
            Asker::Poll,
        ) {
            Ok(Verdict::Build {
                version,
                supersedes,
                trigger,
                changes,
                ..
            }) => {
                assert_eq!((version, supersedes), (v("1.4.3"), Some(v("1.4.2"))));
                assert_eq!(trigger, Trigger::Webhook);
                assert_eq!(changes[0].before, Some(d("a")));
                assert_eq!(changes[0].after, d("b"));
            }
            other => panic!("{other:?}"),
        }
        // A rebuild request builds even when fresh.
        assert!(matches!(
            decide(&store, &img, &inputs(&d("a")), Trigger::Manual, Asker::Job),
            Ok(Verdict::Build { version, .. }) if version == v("1.4.3")
        ));
        // The revision bump.
        assert!(matches!(
            decide(&store, &image("bump = \"revision\""), &inputs(&d("b")), Trigger::Poll, Asker::Poll),
            Ok(Verdict::Build { version, .. }) if version == v("1.4.2-r1")
        ));
    }

    #[test]
    fn a_held_image_is_held_for_everyone() {
        let (_dir, store) = store();
        publish(&store, "1.4.2", &d("a"));
        store
            .update_image("web", |r| r.state = ImageState::Held)
            .expect("hold");
        for asker in [Asker::Poll, Asker::Job] {
            for trigger in [Trigger::Poll, Trigger::Manual] {
                assert_eq!(
                    decide(&store, &image(""), &inputs(&d("b")), trigger, asker).ok(),
                    Some(Verdict::Held)
                );
            }
        }
        assert!(records::is_held(&store, "web").expect("readable"));
    }

    #[test]
    fn failing_with_the_same_inputs_waits_for_a_change_but_not_a_job() {
        let (_dir, store) = store();
        publish(&store, "1.4.2", &d("a"));
        records::set_failing(
            &store,
            "web",
            None,
            Some("boom".into()),
            Some(&inputs(&d("b"))),
        );
        let img = image("");
        assert_eq!(
            decide(&store, &img, &inputs(&d("b")), Trigger::Poll, Asker::Poll).ok(),
            Some(Verdict::Failing)
        );
        // A retry or a rebuild runs what failed.
        assert!(matches!(
            decide(&store, &img, &inputs(&d("b")), Trigger::Poll, Asker::Job),
            Ok(Verdict::Build { .. })
        ));
        // Other inputs: decided again.
        assert!(matches!(
            decide(&store, &img, &inputs(&d("c")), Trigger::Poll, Asker::Poll),
            Ok(Verdict::Build { .. })
        ));
        // Any other state drops the failure's inputs.
        records::set_state(&store, "web", ImageState::Queued, None);
        assert!(matches!(
            decide(&store, &img, &inputs(&d("b")), Trigger::Poll, Asker::Poll),
            Ok(Verdict::Build { .. })
        ));
    }

    /// A failure before the inputs were known is not a failure with no
    /// inputs: an image without external bases (`FROM scratch`) is still
    /// decided again by the poll loop.
    #[test]
    fn a_failure_with_unknown_inputs_never_waits_for_a_change() {
        let (_dir, store) = store();
        let mut job = Job::new(
            1,
            "web",
            rebased_core::job::JobReason {
                trigger: Trigger::Poll,
                at: Utc::now(),
                detail: "test".into(),
                force: false,
            },
        );
        job.state = JobState::Failed;
        job.error = Some("cannot read the Dockerfile".into());
        let attempt = Attempt {
            outcome: Outcome::failed("cannot read the Dockerfile"),
            finished: Finished::GaveUp,
        };
        let queue: SharedQueue = std::sync::Arc::default();
        record_job(&store, &queue, &job, Some(&attempt));
        let rec = store.image("web").expect("read").expect("record");
        assert_eq!(rec.state, ImageState::Failing);
        assert_eq!(rec.failed_inputs, None);
        let none = Inputs::default();
        assert!(matches!(
            decide(&store, &image(""), &none, Trigger::Poll, Asker::Poll),
            Ok(Verdict::Build { .. })
        ));
    }

    #[test]
    fn after_a_rollback_the_next_version_is_above_the_highest() {
        let (_dir, store) = store();
        publish(&store, "1.4.2", &d("a"));
        publish(&store, "1.4.3", &d("b"));
        let event = RollbackEvent {
            at: Utc::now(),
            from: Some(v("1.4.3")),
            to: v("1.4.2"),
            digest: d("1.4.2"),
        };
        store.rollback("web", &event).expect("rollback");
        records::set_state(&store, "web", ImageState::Fresh, None);
        match decide(
            &store,
            &image(""),
            &inputs(&d("c")),
            Trigger::Poll,
            Asker::Poll,
        ) {
            Ok(Verdict::Build {
                version,
                supersedes,
                ..
            }) => assert_eq!((version, supersedes), (v("1.4.4"), Some(v("1.4.2")))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stored_inputs_need_every_digest() {
        let (_dir, store) = store();
        let img = image("platforms = [\"linux/arm64\"]");
        let base = ImageRef::parse("alpine:3").expect("ref");
        let pinned = ImageRef::parse(&format!("busybox@{}", d("p"))).expect("ref");
        assert_eq!(
            stored_inputs(&store, &img, &[base.clone(), pinned.clone()]),
            Err(base.clone()),
            "a base never checked is not known"
        );
        let mut rec = BaseRecord::new(&base.to_string());
        rec.digest = Some(d("index"));
        rec.platforms = BTreeMap::from([
            ("linux/amd64".to_owned(), d("amd")),
            ("linux/arm64/v8".to_owned(), d("arm")),
        ]);
        store.put_base(&rec).expect("put");
        let now = stored_inputs(&store, &img, &[base.clone(), pinned.clone()]).expect("inputs");
        assert_eq!(now.digests[&base.to_string()], d("index"));
        assert_eq!(
            now.digests[&pinned.to_string()],
            d("p"),
            "a pin is its own digest"
        );
        assert_eq!(
            now.platforms[&base.to_string()],
            BTreeMap::from([("linux/arm64/v8".to_owned(), d("arm"))]),
            "only the image's platforms"
        );
    }
}
