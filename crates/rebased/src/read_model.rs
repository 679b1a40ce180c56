//! The API's backend: the daemon's answers as `rebased-api`'s view types,
//! and its actions handed to the poll loop, the dispatcher and the
//! reconciler. [`image_state`] is the one derivation of the state an image
//! is shown in.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use rebased_api::metrics::Metrics;
use rebased_api::{
    Accepted, ActionError, ApiError, Backend, BaseChangeView, BaseView, BoxFuture, CheckRequest,
    ImageBaseView, ImageView, JobReasonView, JobView, PendingView, ReasonView, RollbackView,
    StatusView, VersionView, WebhookReply,
};
use rebased_core::config::ImageConfig;
use rebased_core::job::{Job, JobState};
use rebased_core::{ImageRef, ImageState, Trigger, Version};
use rebased_scheduler::dispatch::{lock as lock_queue, Command, SharedQueue};
use rebased_scheduler::queue::reason;
use rebased_state::Store;
use tokio::sync::mpsc;

use crate::live::Live;
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
}

impl ReadModel {
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
        }
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
                        error: rec.and_then(|b| b.error),
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
        Ok(ImageView {
            rollbacks,
            name: name.to_owned(),
            state,
            repository: image.repository.to_string(),
            current_version: current,
            current_digest,
            bases,
            last_error: record.and_then(|r| r.last_error),
            versions: versions
                .into_iter()
                .map(|v| VersionView {
                    version: v.version,
                    digest: v.digest,
                    built_at: v.built_at,
                    trigger: v.trigger,
                    bases: v.bases,
                    superseded_by: v.superseded_by,
                    superseded_at: v.superseded_at,
                    supersedes: v.supersedes,
                    reason: v.reason.map(|r| ReasonView {
                        trigger: r.trigger,
                        bases: r
                            .bases
                            .into_iter()
                            .map(|b| BaseChangeView {
                                reference: b.reference,
                                before: b.before,
                                after: b.after,
                            })
                            .collect(),
                    }),
                })
                .collect(),
        })
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
        attempts: j.attempts,
        not_before: j.not_before,
        created_at: j.created_at,
        started_at: j.started_at,
        finished_at: j.finished_at,
        error: j.error.clone(),
        published: j.published,
    }
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
        StatusView {
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

    fn image(&self, name: &str) -> Result<Option<ImageView>, ApiError> {
        self.live.image(name).map(|i| self.view(&i)).transpose()
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
        if lock_queue(&self.queue).get(id).is_none() {
            return Ok(None);
        }
        match std::fs::read_to_string(self.live.log_path(id)) {
            Ok(log) => Ok(Some(log)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ApiError::internal(format!("reading log of job {id}: {e}"))),
        }
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
            })
            .map_err(|e| ActionError::Unavailable(format!("cannot queue the check: {e}")))?;
        Ok(Accepted {
            status: "accepted".to_owned(),
            detail,
        })
    }

    fn rebuild(&self, name: &str) -> Result<Accepted, ActionError> {
        self.refuse_if_stopping()?;
        if self.live.image(name).is_none() {
            return Err(ActionError::NotFound(format!("image {name:?} not found")));
        }
        self.jobs
            .try_send(Command::Enqueue {
                image: name.to_owned(),
                reason: reason(
                    Trigger::Manual,
                    Utc::now(),
                    "rebuild requested through the API",
                ),
            })
            .map_err(|e| ActionError::Unavailable(format!("cannot queue the rebuild: {e}")))?;
        Ok(Accepted {
            status: "accepted".to_owned(),
            detail: format!("rebuild of {name} queued"),
        })
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
            self.reconciler.resume(name).await?;
            Ok(Accepted {
                status: "resumed".to_owned(),
                detail: format!("{name} builds automatically again"),
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
            tracing::info!(source, references = ?check.iter().map(ToString::to_string).collect::<Vec<_>>(), "webhook: checking now");
            self.checks
                .try_send(poll::CheckRequest {
                    references: Some(check.clone()),
                    trigger: Trigger::Webhook,
                    all: false,
                })
                .map_err(|e| ActionError::Unavailable(format!("cannot queue the check: {e}")))?;
        }
        Ok(WebhookReply {
            status: status.to_owned(),
            references: check.iter().map(ToString::to_string).collect(),
            ignored,
        })
    }

    fn metrics(&self) -> &Metrics {
        self.metrics
            .set_queue_depth(lock_queue(&self.queue).depth());
        &self.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
