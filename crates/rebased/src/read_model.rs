//! The API's backend: the daemon's answers as `rebased-api`'s view types,
//! and its actions handed to the poll loop, the dispatcher and the
//! reconciler. [`image_state`] is the one derivation of the state an image
//! is shown in.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::Utc;
use rebased_api::metrics::Metrics;
use rebased_api::pages::{ImageSummaryView, LastJobView, Rendered, SummaryBaseView};
use rebased_api::{
    Accepted, ActionError, ApiError, AuditStarted, AuditStatusView, AuditView, Backend, BaseView,
    BoxFuture, CheckRequest, Conflict, EngineView, FindingView, FloatingTagView, ImageBaseView,
    ImageSourceView, ImageView, JobReasonView, JobView, PendingView, RollbackView, SignatureView,
    SourceView, StatusView, SupersessionView, VersionView, WebhookReply,
};
use rebased_core::config::ImageConfig;
use rebased_core::job::{Job, JobState};
use rebased_core::{ImageRef, ImageState, Trigger, Version};
use rebased_scheduler::dispatch::{lock as lock_queue, Command, SharedQueue};
use rebased_scheduler::queue::reason;
use rebased_state::Store;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::audit;
use crate::events::reason_view;
use crate::live::{Live, PLAN_VERIFY_EVERY};
use crate::memo::Memo;
use crate::notifiers::Notifiers;
use crate::poll;
use crate::reconcile::Reconciler;
use crate::status::Status;

/// The state an image is shown in: a hold wins, then what its job is
/// doing, then what the store says, except that a fresh image with a base
/// change settling is stale, and a stored queued or building state with no
/// job behind it (a job dropped at a reload) is stale too.
pub fn image_state(
    stored: Option<ImageState>,
    job: Option<JobState>,
    settling: bool,
) -> ImageState {
    match (stored.unwrap_or(ImageState::Stale), job) {
        (ImageState::Held, _) => ImageState::Held,
        (_, Some(JobState::Running)) => ImageState::Building,
        (_, Some(JobState::Queued)) => ImageState::Queued,
        (ImageState::Fresh, _) if settling => ImageState::Stale,
        (ImageState::Queued | ImageState::Building, None) => ImageState::Stale,
        (s, _) => s,
    }
}

/// The API's view of an image's audit.
fn audit_view(name: &str, a: rebased_state::AuditRecord) -> AuditView {
    AuditView {
        image: name.to_owned(),
        at: a.at,
        versions: a.versions,
        findings: a
            .findings
            .into_iter()
            .map(|f| FindingView {
                kind: f.kind.as_str().to_owned(),
                version: f.version,
                tag: f.tag,
                expected: f.expected,
                found: f.found,
                repaired: f.repaired,
            })
            .collect(),
        errors: a.errors,
    }
}

/// The API's view of the daemon.
pub struct ReadModel {
    live: Arc<Live>,
    store: Store,
    queue: SharedQueue,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    jobs: mpsc::Sender<Command>,
    checks: mpsc::Sender<poll::CheckRequest>,
    reconciler: Arc<Reconciler>,
    feed: Arc<tokio::sync::broadcast::Sender<rebased_api::Live>>,
    notifiers: Arc<Notifiers>,
    tasks: TaskTracker,
    stop: CancellationToken,
    /// Every image's summary, made again only when the store was written,
    /// the config reloaded or a job moved.
    ///
    /// A Dockerfile's edit that changes an image's bases is not itself a
    /// write: it shows once the store is next written, which every poll
    /// round does (each checked base's record) and a decide of the image
    /// does.
    summaries: Memo<SummaryKey, Arc<Vec<ImageSummaryView>>>,
    /// The images' last audits and the audit part of `GET /v1/status`, as
    /// of one store generation and one config: a status query, and a list
    /// of every image, read no audit record while neither moved.
    audits: Memo<(u64, usize), Arc<Audits>>,
    /// The full list's rendered answer (`GET /v1/images` without a query),
    /// under the summaries' key: an image's bases come from its
    /// Dockerfile, whose edit is not a store write, so it is kept for half
    /// of [`PLAN_VERIFY_EVERY`], how long the Dockerfiles' own cache
    /// trusts an entry: an edit shows within one and a half of it.
    list: Arc<Memo<SummaryKey, Rendered>>,
}

/// How long the rendered full list is sent again: half of how long a
/// Dockerfile's parsed bases are trusted without looking at the file, so a
/// Dockerfile's edit shows in the list within 1.5 s.
const LIST_MAX_AGE: std::time::Duration = match PLAN_VERIFY_EVERY.checked_div(2) {
    Some(half) => half,
    None => PLAN_VERIFY_EVERY,
};

/// Every managed image's last audit, read at once.
#[derive(Default)]
struct Audits {
    /// By image.
    views: HashMap<String, AuditView>,
    /// What `GET /v1/status` shows of them.
    status: AuditStatusView,
}

/// What the summaries were made from: the store's generation, the config
/// in force (by identity) and a hash of the jobs and their states.
#[derive(Clone, Copy, PartialEq, Eq)]
struct SummaryKey {
    generation: u64,
    config: usize,
    jobs: u64,
}

/// What a [`ReadModel`] works with.
pub struct Parts {
    /// The config in force.
    pub live: Arc<Live>,
    /// The store.
    pub store: Store,
    /// The queue.
    pub queue: SharedQueue,
    /// The daemon's status.
    pub status: Arc<Status>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Commands to the dispatcher.
    pub jobs: mpsc::Sender<Command>,
    /// Checks for the poll loop.
    pub checks: mpsc::Sender<poll::CheckRequest>,
    /// Decides images (resume) and rolls them back.
    pub reconciler: Arc<Reconciler>,
    /// The event stream's live feed.
    pub feed: Arc<tokio::sync::broadcast::Sender<rebased_api::Live>>,
    /// The notifiers.
    pub notifiers: Arc<Notifiers>,
    /// The supervisor's tasks: an audit a request starts is one of them,
    /// so the stop waits for it.
    pub tasks: TaskTracker,
    /// The daemon's stop (an audit ends at it).
    pub stop: CancellationToken,
}

impl ReadModel {
    /// An auditor over the config in force, the ledger and the metrics.
    fn auditor(&self) -> audit::Auditor {
        audit::Auditor {
            live: Arc::clone(&self.live),
            store: self.store.clone(),
            metrics: Arc::clone(&self.metrics),
            stop: self.stop.clone(),
        }
    }

    /// A read model over `parts`.
    pub fn new(parts: Parts) -> Self {
        Self {
            live: parts.live,
            store: parts.store,
            queue: parts.queue,
            status: parts.status,
            metrics: parts.metrics,
            jobs: parts.jobs,
            checks: parts.checks,
            reconciler: parts.reconciler,
            feed: parts.feed,
            notifiers: parts.notifiers,
            tasks: parts.tasks,
            stop: parts.stop,
            summaries: Memo::new(None),
            audits: Memo::new(None),
            list: Arc::new(Memo::new(Some(LIST_MAX_AGE))),
        }
    }

    /// The images' last audits and, for the status, when the last ran, the
    /// findings left unrepaired and the images with them; read again only
    /// when the store was written or the config reloaded since.
    fn audits(&self) -> Arc<Audits> {
        let cfg = self.live.cfg();
        let key = || (self.store.generation(), Arc::as_ptr(&cfg) as usize);
        let Ok(audits) = self.audits.get(key, &cfg, |_| {
            Ok::<_, std::convert::Infallible>(self.read_audits(&cfg))
        });
        audits
    }

    fn read_audits(&self, cfg: &rebased_core::config::Config) -> Arc<Audits> {
        let mut audits = Audits::default();
        let records = self.store.audits().unwrap_or_else(|e| {
            warn!("cannot read the audit records: {e}");
            Vec::new()
        });
        let managed: HashSet<&str> = cfg.image.iter().map(|i| i.name.as_str()).collect();
        for (name, a) in records {
            if !managed.contains(name.as_str()) {
                continue;
            }
            let status = &mut audits.status;
            status.last_run = status.last_run.max(Some(a.at));
            let drift = a.findings.iter().filter(|f| f.repaired.is_none()).count();
            if drift > 0 {
                status.drift += drift;
                status.images.push(name.clone());
            }
            audits.views.insert(name.clone(), audit_view(&name, a));
        }
        Arc::new(audits)
    }

    /// Once the list being made is too old to be sent, it is let go: no
    /// request may come to replace it, and at 10,000 images it is about
    /// 10 MB.
    fn forget_list_when_old(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let list = Arc::clone(&self.list);
        let stop = self.stop.clone();
        self.tasks.spawn_on(
            async move {
                tokio::select! {
                    () = tokio::time::sleep(LIST_MAX_AGE) => {
                        if list.forget_old() {
                            debug!("the rendered image list is let go");
                        }
                    }
                    () = stop.cancelled() => {}
                }
            },
            &runtime,
        );
    }

    fn summary_key(&self, cfg: &Arc<rebased_core::config::Config>) -> SummaryKey {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for j in lock_queue(&self.queue).jobs() {
            (j.id, j.state, j.attempts_made()).hash(&mut h);
        }
        SummaryKey {
            generation: self.store.generation(),
            config: Arc::as_ptr(cfg) as usize,
            jobs: h.finish(),
        }
    }

    /// Every image's summary, made from the store, the queue and the
    /// config in force, in name order.
    fn make_summaries(
        &self,
        cfg: &rebased_core::config::Config,
    ) -> Result<Vec<ImageSummaryView>, ApiError> {
        let bases: BTreeMap<String, rebased_state::BaseRecord> = self
            .store
            .bases()
            .map_err(internal)?
            .into_iter()
            .map(|b| (b.reference.clone(), b))
            .collect();
        let (active, last): (BTreeMap<String, JobState>, BTreeMap<String, LastJobView>) = {
            let q = lock_queue(&self.queue);
            let mut last: BTreeMap<String, (u64, LastJobView)> = BTreeMap::new();
            for j in q.jobs() {
                if last.get(&j.image).is_none_or(|(id, _)| *id < j.id) {
                    last.insert(
                        j.image.clone(),
                        (
                            j.id,
                            LastJobView {
                                id: j.id,
                                state: j.state.to_string(),
                                finished_at: j.finished_at,
                                error: j.error.clone(),
                                published: j.published,
                            },
                        ),
                    );
                }
            }
            let active = cfg
                .image
                .iter()
                .filter_map(|i| {
                    q.active(i.name.as_str())
                        .map(|j| (i.name.to_string(), j.state))
                })
                .collect();
            (active, last.into_iter().map(|(k, (_, v))| (k, v)).collect())
        };
        let mut out = Vec::with_capacity(cfg.image.len());
        for image in &cfg.image {
            let name = image.name.as_str();
            let record = self.store.image(name).map_err(internal)?;
            let current = record.as_ref().and_then(|r| r.current);
            let version = match current {
                Some(c) => self.store.version(name, &c).map_err(internal)?,
                None => None,
            };
            let mut settling = false;
            let image_bases: Vec<SummaryBaseView> = match self.live.image_bases(image) {
                Ok(refs) => refs
                    .iter()
                    .map(|r| {
                        let key = r.to_string();
                        let rec = bases.get(&key);
                        settling |= rec.is_some_and(|b| b.pending.is_some());
                        SummaryBaseView {
                            digest: r
                                .digest()
                                .cloned()
                                .or_else(|| rec.and_then(|b| b.digest.clone())),
                            last_checked: rec.and_then(|b| b.checked_at),
                            last_changed: rec.and_then(|b| b.changed_at),
                            error: rec
                                .and_then(|b| b.error.clone())
                                .filter(|_| r.digest().is_none()),
                            reference: key,
                        }
                    })
                    .collect(),
                Err(_) => Vec::new(),
            };
            let state = image_state(
                record.as_ref().map(|r| r.state),
                active.get(name).copied(),
                settling,
            );
            let source = image.context.git().map(|g| {
                let rec = self.store.source(&g.key()).ok().flatten();
                ImageSourceView {
                    url: g.public_url(),
                    reference: g.reference_or_head().to_owned(),
                    dir: g.dir.display().to_string(),
                    commit: rec.as_ref().and_then(|r| r.commit.clone()),
                    error: rec.and_then(|r| r.error),
                }
            });
            out.push(ImageSummaryView {
                name: name.to_owned(),
                state,
                unchecked: image_bases.iter().any(|b| b.error.is_some()),
                repository: image.repository.to_string(),
                current_version: current,
                current_digest: version.as_ref().map(|v| v.digest.clone()),
                current_built_at: version.as_ref().map(|v| v.built_at),
                bases: image_bases,
                last_error: record.and_then(|r| r.last_error),
                last_job: last.get(name).cloned(),
                source,
                drift: self.store.audit(name).ok().flatten().map_or(0, |a| {
                    a.findings.iter().filter(|f| f.repaired.is_none()).count()
                }),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// 503 while stopping: new work is not taken.
    fn refuse_if_stopping(&self) -> Result<(), ActionError> {
        if self.status.is_stopping() {
            return Err(ActionError::Unavailable(
                "rebased is stopping: no new checks, builds or webhooks are taken".to_owned(),
            ));
        }
        Ok(())
    }

    fn view(&self, image: &ImageConfig) -> Result<ImageView, ApiError> {
        let name = image.name.as_str();
        let record = self.store.image(name).map_err(internal)?;
        let versions = self.store.versions(name).map_err(internal)?;
        let mut history = self.store.supersessions(name).map_err(internal)?;
        let current = record.as_ref().and_then(|r| r.current);
        let current_digest = current
            .and_then(|c| versions.iter().find(|v| v.version == c))
            .map(|v| v.digest.clone());
        let mut settling = false;
        let bases = match self.live.image_bases(image) {
            Ok(bases) => bases
                .iter()
                .map(|r| {
                    let key = r.to_string();
                    let rec = self.store.base(&key).ok().flatten();
                    settling |= rec.as_ref().is_some_and(|b| b.pending.is_some());
                    ImageBaseView {
                        digest: r
                            .digest()
                            .cloned()
                            .or_else(|| rec.as_ref().and_then(|b| b.digest.clone())),
                        last_checked: rec.as_ref().and_then(|b| b.checked_at),
                        // A pinned base is never checked, so never fails.
                        error: rec.and_then(|b| b.error).filter(|_| r.digest().is_none()),
                        reference: key,
                    }
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let job = lock_queue(&self.queue).active(name).map(|j| j.state);
        let state = image_state(record.as_ref().map(|r| r.state), job, settling);
        let rollbacks = self
            .store
            .rollbacks(name)
            .map_err(internal)?
            .into_iter()
            .map(|r| RollbackView {
                at: r.at,
                from: r.from,
                to: r.to,
                digest: r.digest,
            })
            .collect();
        let source = image.context.git().map(|g| {
            let rec = self.store.source(&g.key()).ok().flatten();
            ImageSourceView {
                url: g.public_url(),
                reference: g.reference_or_head().to_owned(),
                dir: g.dir.display().to_string(),
                commit: rec.as_ref().and_then(|r| r.commit.clone()),
                error: rec.and_then(|r| r.error),
            }
        });
        let unchecked = bases.iter().any(|b: &ImageBaseView| b.error.is_some());
        let audit = self.audits().views.get(name).cloned();
        Ok(ImageView {
            audit,
            floating_tags: Vec::new(),
            source,
            rollbacks,
            name: name.to_owned(),
            state,
            unchecked,
            repository: image.repository.to_string(),
            current_version: current,
            current_digest,
            bases,
            last_error: record.and_then(|r| r.last_error),
            versions: versions
                .into_iter()
                .map(|v| {
                    let mut supersessions: Vec<SupersessionView> = history
                        .remove(&v.version)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|s| SupersessionView {
                            by: s.by,
                            at: s.at,
                            reason: reason_view(s.reason),
                        })
                        .collect();
                    // A version read back from the registry has its one
                    // supersession in the record, not in events.
                    if supersessions.is_empty() {
                        if let (Some(by), Some(at), Some(r)) =
                            (v.superseded_by, v.superseded_at, v.reason.clone())
                        {
                            supersessions.push(SupersessionView {
                                by,
                                at,
                                reason: reason_view(r),
                            });
                        }
                    }
                    VersionView {
                        version: v.version,
                        digest: v.digest,
                        built_at: v.built_at,
                        trigger: v.trigger,
                        bases: v.bases,
                        children: v.children,
                        superseded_by: v.superseded_by,
                        superseded_at: v.superseded_at,
                        supersedes: v.supersedes,
                        revision: v.source,
                        reason: v.reason.map(reason_view),
                        signature: v.signature.map(|s| SignatureView {
                            key: s.key,
                            manifest: s.manifest,
                            attestations: s.attestations,
                            at: s.at,
                        }),
                        supersessions,
                    }
                })
                .collect(),
        })
    }
}

impl ReadModel {
    /// The gauges of `/metrics` that count images by shown state, images
    /// with an unchecked base, and unchecked bases.
    fn state_gauges(&self) {
        const STATES: [ImageState; 6] = [
            ImageState::Fresh,
            ImageState::Stale,
            ImageState::Queued,
            ImageState::Building,
            ImageState::Failing,
            ImageState::Held,
        ];
        let cfg = self.live.cfg();
        let jobs: BTreeMap<String, JobState> = {
            let q = lock_queue(&self.queue);
            cfg.image
                .iter()
                .filter_map(|i| {
                    q.active(i.name.as_str())
                        .map(|j| (i.name.to_string(), j.state))
                })
                .collect()
        };
        let bases: BTreeMap<String, rebased_state::BaseRecord> = self
            .store
            .bases()
            .unwrap_or_default()
            .into_iter()
            .map(|b| (b.reference.clone(), b))
            .collect();
        let mut counts: BTreeMap<String, u64> = STATES.iter().map(|s| (s.to_string(), 0)).collect();
        let mut unchecked_images = 0;
        let mut unchecked_bases = std::collections::BTreeSet::new();
        for image in &cfg.image {
            let name = image.name.as_str();
            let stored = self.store.image(name).ok().flatten().map(|r| r.state);
            let (mut settling, mut unchecked) = (false, false);
            if let Ok(refs) = self.live.image_bases(image) {
                for r in refs.iter().filter(|r| r.digest().is_none()) {
                    let key = r.to_string();
                    if let Some(b) = bases.get(&key) {
                        settling |= b.pending.is_some();
                        if b.error.is_some() {
                            unchecked = true;
                            unchecked_bases.insert(key);
                        }
                    }
                }
            }
            let state = image_state(stored, jobs.get(name).copied(), settling);
            *counts.entry(state.to_string()).or_insert(0) += 1;
            unchecked_images += u64::from(unchecked);
        }
        for (state, n) in counts {
            self.metrics
                .set_gauge("rebased_images", &[("state", &state)], n);
        }
        self.metrics
            .set_gauge("rebased_images_unchecked", &[], unchecked_images);
        self.metrics
            .set_gauge("rebased_bases_unchecked", &[], unchecked_bases.len() as u64);
    }
}

fn internal(e: rebased_state::StateError) -> ApiError {
    ApiError::internal(e.to_string())
}

fn job_view(j: &Job) -> JobView {
    JobView {
        id: j.id,
        image: j.image.clone(),
        state: j.state.to_string(),
        trigger: j.trigger(),
        reasons: j
            .reasons
            .iter()
            .map(|r| JobReasonView {
                trigger: r.trigger,
                at: r.at,
                detail: r.detail.clone(),
            })
            .collect(),
        attempts: j.attempts_made(),
        not_before: j.not_before,
        created_at: j.created_at,
        started_at: j.started_at,
        finished_at: j.finished_at,
        error: j.error.clone(),
        published: j.published,
        note: j.note.clone(),
    }
}

/// Queues a build through the dispatcher and waits for the job it made or
/// merged into.
async fn request(
    jobs: &mpsc::Sender<Command>,
    image: &str,
    reason: rebased_core::job::JobReason,
) -> Result<(Job, bool), ActionError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    jobs.try_send(Command::Request {
        image: image.to_owned(),
        reason,
        reply,
    })
    .map_err(|e| ActionError::Unavailable(format!("cannot queue the rebuild: {e}")))?;
    match tokio::time::timeout(std::time::Duration::from_secs(30), answer).await {
        Ok(Ok(answer)) => Ok(answer),
        _ => Err(ActionError::Unavailable(format!(
            "the rebuild of {image} was not queued: the dispatcher did not answer (rebased is stopping?)"
        ))),
    }
}

/// What a job's log says when it has no build log: it built nothing (why),
/// or failed before its build started (the error), or has not run yet.
fn job_summary(j: &Job) -> String {
    let why = match (&j.note, &j.error, j.state) {
        (Some(note), _, _) => note.clone(),
        (None, Some(e), _) => format!("failed before its build started: {e}"),
        (None, None, JobState::Queued) => "not started yet".to_owned(),
        (None, None, JobState::Running) => "running; its build has not started yet".to_owned(),
        (None, None, JobState::Cancelled) => "cancelled before its build started".to_owned(),
        (None, None, _) => "no build log was captured".to_owned(),
    };
    format!(
        "job {} ({}): {}, attempts {}: {why}\n",
        j.id,
        j.image,
        j.state,
        j.attempts_made()
    )
}

impl Backend for ReadModel {
    fn status(&self) -> StatusView {
        let (queue_depth, running) = {
            let q = lock_queue(&self.queue);
            let running = q
                .jobs()
                .filter(|j| j.state == JobState::Running)
                .map(|j| j.image.clone())
                .collect();
            (q.depth(), running)
        };
        let t = self.status.times();
        let audit = self.audits().status.clone();
        StatusView {
            audit,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: t.started_at,
            uptime_seconds: (Utc::now() - t.started_at).num_seconds(),
            config_file: self.live.config_file().display().to_string(),
            config_loaded_at: t.config_loaded_at,
            config_error: t.config_error,
            images: self.live.cfg().image.len(),
            queue_depth,
            running,
            last_poll: t.last_poll,
            next_poll: t.next_poll,
        }
    }

    fn images(&self) -> Result<Vec<ImageView>, ApiError> {
        self.live.cfg().image.iter().map(|i| self.view(i)).collect()
    }

    /// Rendered once and then sent as the same bytes (one `ETag` hash, one
    /// buffer however many requests are in flight) until the store is
    /// written, the config reloaded or a job moves, or after
    /// [`LIST_MAX_AGE`].
    fn images_answer(&self) -> Result<Rendered, ApiError> {
        let cfg = self.live.cfg();
        self.list.get(
            || self.summary_key(&cfg),
            &cfg,
            |stale| {
                self.forget_list_when_old();
                // Each image's view is written and dropped in turn: the
                // list's peak memory is its bytes.
                let last_len = stale.map_or(0, |l| l.body_len());
                Rendered::of_each(
                    cfg.image.iter().map(|i| self.view(i)),
                    last_len + last_len / 16,
                )
            },
        )
    }

    fn image(&self, name: &str) -> Result<Option<ImageView>, ApiError> {
        let Some(image) = self.live.image(name) else {
            return Ok(None);
        };
        let mut view = self.view(&image)?;
        view.floating_tags = image
            .tags
            .iter()
            .map(|t| FloatingTagView {
                template: t.as_str().to_owned(),
                tag: view.current_version.map(|v| t.render(&v)),
                version: view.current_version,
            })
            .collect();
        Ok(Some(view))
    }

    /// Made again only when the store was written, the config reloaded or
    /// a job moved since: at 10,000 images a page is then a filter over
    /// what is at hand, not 10,000 reads.
    fn image_summaries(&self) -> Result<Arc<Vec<ImageSummaryView>>, ApiError> {
        let cfg = self.live.cfg();
        self.summaries.get(
            || self.summary_key(&cfg),
            &cfg,
            |_| self.make_summaries(&cfg).map(Arc::new),
        )
    }

    /// Ready until the stop begins: from then on new work is refused.
    fn ready(&self) -> bool {
        !self.status.is_stopping()
    }

    fn jobs(&self) -> Result<Vec<JobView>, ApiError> {
        Ok(lock_queue(&self.queue).jobs().map(job_view).collect())
    }

    fn job(&self, id: u64) -> Result<Option<JobView>, ApiError> {
        Ok(lock_queue(&self.queue).get(id).map(job_view))
    }

    fn job_log(&self, id: u64) -> Result<Option<String>, ApiError> {
        let Some(job) = lock_queue(&self.queue).get(id).cloned() else {
            return Ok(None);
        };
        match std::fs::read_to_string(self.live.log_path(id)) {
            Ok(log) => Ok(Some(log)),
            // A job that exists always has an answer: why it has no build log.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(job_summary(&job))),
            Err(e) => Err(ApiError::internal(format!("reading log of job {id}: {e}"))),
        }
    }

    fn engines(&self) -> Result<Vec<EngineView>, ApiError> {
        Ok(self
            .live
            .pool()
            .views()
            .into_iter()
            .map(|e| EngineView {
                name: e.name,
                url: e.url,
                state: e.state.as_str().to_owned(),
                running: e.running,
                max_builds: e.max_builds,
                done: e.done,
                failed: e.failed,
                lost: e.lost,
                last_error: e.last_error,
                platforms: e.platforms,
                version: e.version,
            })
            .collect())
    }

    fn sources(&self) -> Result<Vec<SourceView>, ApiError> {
        let records = self.store.sources().map_err(internal)?;
        Ok(self
            .live
            .git_sources()
            .into_iter()
            .map(|(key, s)| {
                let rec = records.iter().find(|r| r.key == key);
                SourceView {
                    url: s.git.public_url(),
                    reference: s.git.reference_or_head().to_owned(),
                    commit: rec.and_then(|r| r.commit.clone()),
                    pending: rec.and_then(|r| r.pending.as_ref().map(|(c, _)| c.clone())),
                    last_checked: rec.and_then(|r| r.checked_at),
                    last_changed: rec.and_then(|r| r.changed_at),
                    error: rec.and_then(|r| r.error.clone()),
                    dependents: s.images,
                }
            })
            .collect())
    }

    fn bases(&self) -> Result<Vec<BaseView>, ApiError> {
        let mut dependents: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for image in &self.live.cfg().image {
            if let Ok(bases) = self.live.image_bases(image) {
                for b in bases.iter() {
                    dependents
                        .entry(b.to_string())
                        .or_default()
                        .push(image.name.to_string());
                }
            }
        }
        let records = self.store.bases().map_err(internal)?;
        Ok(records
            .into_iter()
            .filter_map(|r| Some((dependents.remove(&r.reference)?, r)))
            .map(|(deps, r)| BaseView {
                dependents: deps,
                reference: r.reference,
                digest: r.digest,
                pending: r
                    .pending
                    .map(|(digest, since)| PendingView { digest, since }),
                platforms: r.platforms,
                rate_limit_remaining: r.rate_limit_remaining,
                last_checked: r.checked_at,
                last_changed: r.changed_at,
                error: r.error,
            })
            .collect())
    }

    fn check(&self, req: CheckRequest) -> Result<Accepted, ActionError> {
        self.refuse_if_stopping()?;
        let references = match &req.reference {
            Some(r) => Some(vec![
                ImageRef::parse(r).map_err(|e| ActionError::BadRequest(e.to_string()))?
            ]),
            None => None,
        };
        let detail = match &req.reference {
            Some(r) => format!("checking {r}"),
            None => "checking every base".to_owned(),
        };
        self.checks
            .try_send(poll::CheckRequest {
                references,
                // A check only looks; a build it causes is due to the base change.
                trigger: Trigger::Poll,
                all: false,
                sources: Vec::new(),
            })
            .map_err(|e| ActionError::Unavailable(format!("cannot queue the check: {e}")))?;
        Ok(Accepted {
            status: "accepted".to_owned(),
            detail,
            job: None,
        })
    }

    fn rebuild<'a>(
        &'a self,
        name: &'a str,
        force: bool,
    ) -> BoxFuture<'a, Result<Accepted, ActionError>> {
        Box::pin(async move {
            self.refuse_if_stopping()?;
            if self.live.image(name).is_none() {
                return Err(ActionError::NotFound(format!("image {name:?} not found")));
            }
            let record = self
                .store
                .image(name)
                .map_err(|e| ActionError::Internal(e.to_string()))?;
            let held = record.as_ref().filter(|r| crate::records::held(r));
            if let (Some(r), false) = (held, force) {
                return Err(ActionError::Conflict {
                    image: name.to_owned(),
                    conflict: Conflict::Held {
                        image: name.to_owned(),
                        version: r.current.map_or_else(|| "-".to_owned(), |v| v.to_string()),
                    },
                });
            }
            let mut why = reason(
                Trigger::Manual,
                Utc::now(),
                if held.is_some() {
                    "rebuild through the hold requested through the API (--force)"
                } else {
                    "rebuild requested through the API"
                },
            );
            why.force = force;
            let (job, merged) = request(&self.jobs, name, why).await?;
            let mut detail = if merged {
                format!("rebuild of {name} merged into queued job {}", job.id)
            } else {
                format!("rebuild of {name} queued as job {}", job.id)
            };
            if held.is_some() {
                detail.push_str(&format!(
                    " (forced: {name} is held; the build is published and tagged, and {name} stays held until `rebased resume {name}`)"
                ));
            }
            Ok(Accepted {
                status: "accepted".to_owned(),
                detail,
                job: Some(job.id),
            })
        })
    }

    fn audit<'a>(
        &'a self,
        image: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<AuditView>, ActionError>> {
        Box::pin(async move {
            let auditor = self.auditor();
            let only = image.map(str::to_owned);
            // Its own task: a client that gives up does not cut the audit
            // (or a repair) short; it runs to the end and is recorded.
            let run = self
                .tasks
                .spawn(async move { auditor.run(only.as_deref()).await });
            match run.await {
                Ok(Ok(audits)) => Ok(audits
                    .into_iter()
                    .map(|(name, a)| audit_view(&name, a))
                    .collect()),
                Ok(Err(e @ audit::AuditError::NotFound(_))) => {
                    Err(ActionError::NotFound(e.to_string()))
                }
                Ok(Err(e @ audit::AuditError::Stopped(_))) => {
                    Err(ActionError::Unavailable(e.to_string()))
                }
                Ok(Err(e)) => Err(ActionError::Internal(e.to_string())),
                Err(e) => Err(ActionError::Internal(format!("the audit failed: {e}"))),
            }
        })
    }

    fn audit_start(&self, image: Option<&str>) -> Result<AuditStarted, ActionError> {
        let images: Vec<String> = self
            .live
            .cfg()
            .image
            .iter()
            .map(|i| i.name.as_str().to_owned())
            .filter(|n| image.is_none_or(|only| only == n))
            .collect();
        if let (Some(name), true) = (image, images.is_empty()) {
            return Err(ActionError::NotFound(
                audit::AuditError::NotFound(name.to_owned()).to_string(),
            ));
        }
        let auditor = self.auditor();
        let only = image.map(str::to_owned);
        let at = chrono::Utc::now();
        self.tasks.spawn(async move {
            match auditor.run(only.as_deref()).await {
                Ok(_) => {}
                Err(e @ audit::AuditError::Stopped(_)) => tracing::info!("{e}"),
                Err(e) => tracing::error!("the audit started by POST /v1/audit failed: {e}"),
            }
        });
        Ok(AuditStarted { at, images })
    }

    fn rollback<'a>(
        &'a self,
        name: &'a str,
        to: &'a str,
    ) -> BoxFuture<'a, Result<RollbackView, ActionError>> {
        Box::pin(async move {
            let to = Version::parse(to).map_err(|e| ActionError::BadRequest(e.to_string()))?;
            let event = self.reconciler.rollback(name, &to).await?;
            Ok(RollbackView {
                at: event.at,
                from: event.from,
                to: event.to,
                digest: event.digest,
            })
        })
    }

    fn resume<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Accepted, ActionError>> {
        Box::pin(async move {
            let job = self.reconciler.resume(name).await?;
            let detail = match job {
                Some(id) => {
                    format!("{name} builds automatically again; a build is queued as job {id}")
                }
                None => format!("{name} builds automatically again"),
            };
            Ok(Accepted {
                status: "resumed".to_owned(),
                detail,
                job,
            })
        })
    }

    fn webhook(&self, source: &str, references: Vec<String>) -> Result<WebhookReply, ActionError> {
        self.refuse_if_stopping()?;
        let watched = self.live.watched();
        let mut check = Vec::new();
        let mut ignored = Vec::new();
        for r in references {
            match ImageRef::parse(&r) {
                Ok(parsed) if watched.contains(&parsed) => {
                    if !check.contains(&parsed) {
                        check.push(parsed);
                    }
                }
                Ok(parsed) => ignored.push(format!("{parsed}: not a base of any image")),
                Err(e) => ignored.push(e.to_string()),
            }
        }
        let status = if check.is_empty() {
            "ignored"
        } else {
            "accepted"
        };
        if !check.is_empty() {
            tracing::info!(source, references = %check.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "), "webhook: checking now");
            self.checks
                .try_send(poll::CheckRequest {
                    references: Some(check.clone()),
                    trigger: Trigger::Webhook,
                    all: false,
                    sources: Vec::new(),
                })
                .map_err(|e| ActionError::Unavailable(format!("cannot queue the check: {e}")))?;
        }
        Ok(WebhookReply {
            status: status.to_owned(),
            references: check.iter().map(ToString::to_string).collect(),
            ignored,
        })
    }

    fn source_webhook(
        &self,
        source: &str,
        push: rebased_watcher::push::Push,
    ) -> Result<WebhookReply, ActionError> {
        use rebased_watcher::push::{canonical, ref_matches};
        self.refuse_if_stopping()?;
        let named: Vec<String> = push.repositories.iter().map(|u| canonical(u)).collect();
        let keys: Vec<(String, String)> = self
            .live
            .git_sources()
            .into_iter()
            .filter(|(_, s)| {
                named.contains(&canonical(&s.git.url))
                    && !s.git.is_commit()
                    && ref_matches(s.git.reference_or_head(), push.reference.as_deref())
            })
            .map(|(k, s)| {
                (
                    k,
                    format!("{}#{}", s.git.public_url(), s.git.reference_or_head()),
                )
            })
            .collect();
        if keys.is_empty() {
            return Ok(WebhookReply {
                status: "ignored".to_owned(),
                references: Vec::new(),
                ignored: vec![format!(
                    "{} {}: not the repository and ref of any source",
                    push.repositories.first().map_or("-", String::as_str),
                    push.reference.as_deref().unwrap_or("-")
                )],
            });
        }
        tracing::info!(source, sources = ?keys.iter().map(|(_, s)| s).collect::<Vec<_>>(), "push webhook: looking up now");
        self.checks
            .try_send(poll::CheckRequest {
                references: Some(Vec::new()),
                trigger: Trigger::Webhook,
                all: false,
                sources: keys.iter().map(|(k, _)| k.clone()).collect(),
            })
            .map_err(|e| ActionError::Unavailable(format!("cannot queue the check: {e}")))?;
        Ok(WebhookReply {
            status: "accepted".to_owned(),
            references: keys.into_iter().map(|(_, s)| s).collect(),
            ignored: Vec::new(),
        })
    }

    fn events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<rebased_api::EventView>, ApiError> {
        let events = self
            .store
            .log_after(after, limit)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(events
            .iter()
            .map(|e| crate::events::view(e, &self.live))
            .collect())
    }

    fn live(&self) -> Option<tokio::sync::broadcast::Receiver<rebased_api::Live>> {
        Some(self.feed.subscribe())
    }

    fn notifiers(&self) -> Result<Vec<rebased_api::NotifierView>, ApiError> {
        self.notifiers
            .views()
            .map_err(|e| ApiError::internal(e.to_string()))
    }

    fn notify_test<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Accepted, ActionError>> {
        Box::pin(async move {
            match self.notifiers.test(name).await {
                Ok(Some(seq)) => Ok(Accepted {
                    status: "accepted".to_owned(),
                    detail: format!("test event {seq} logged for notifier {name}"),
                    job: None,
                }),
                Ok(None) => Err(ActionError::NotFound(format!("notifier {name}"))),
                Err(e) => Err(ActionError::Internal(format!("{e:#}"))),
            }
        })
    }

    fn metrics(&self) -> &Metrics {
        self.metrics
            .set_queue_depth(lock_queue(&self.queue).depth());
        self.state_gauges();
        &self.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_without_a_build_log_says_why() {
        let at = Utc::now();
        let mut job = Job::new(3, "hello", reason(Trigger::Manual, at, "asked"));
        job.state = JobState::Succeeded;
        job.note = Some("nothing published: hello is held (rolled back)".to_owned());
        assert_eq!(
            job_summary(&job),
            "job 3 (hello): succeeded, attempts 1: nothing published: hello is held (rolled back)\n"
        );
        let mut job = Job::new(4, "hello", reason(Trigger::Poll, at, "base moved"));
        job.state = JobState::Failed;
        job.attempts = 1;
        job.error = Some("cannot read Dockerfile /x/Dockerfile".to_owned());
        assert_eq!(
            job_summary(&job),
            "job 4 (hello): failed, attempts 1: failed before its build started: cannot read Dockerfile /x/Dockerfile\n"
        );
        assert!(
            job_summary(&Job::new(5, "a", reason(Trigger::Poll, at, "x")))
                .contains("queued, attempts 0: not started yet")
        );
    }

    #[test]
    fn the_shown_state_follows_hold_then_job_then_store() {
        use ImageState as S;
        assert_eq!(
            image_state(Some(S::Held), Some(JobState::Running), false),
            S::Held
        );
        assert_eq!(
            image_state(Some(S::Fresh), Some(JobState::Running), false),
            S::Building
        );
        assert_eq!(
            image_state(Some(S::Failing), Some(JobState::Queued), false),
            S::Queued
        );
        assert_eq!(image_state(Some(S::Fresh), None, true), S::Stale);
        assert_eq!(image_state(Some(S::Fresh), None, false), S::Fresh);
        assert_eq!(image_state(Some(S::Building), None, false), S::Stale);
        assert_eq!(image_state(Some(S::Queued), None, false), S::Stale);
        assert_eq!(image_state(None, None, false), S::Stale);
        assert_eq!(image_state(Some(S::Failing), None, true), S::Failing);
    }
}
