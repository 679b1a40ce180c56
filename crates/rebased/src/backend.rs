//! The daemon's answers to the API, as the API's view types.

use std::collections::BTreeMap;

use chrono::Utc;
use rebased_api::WebhookReply;
use rebased_api::{
    Accepted, ApiError, Backend, BaseChangeView, BaseView, BoxFuture, CheckRequest, ImageBaseView,
    ImageView, JobReasonView, JobView, PendingView, ReasonView, RollbackView, StatusView,
    VersionView,
};
use rebased_core::config::ImageConfig;
use rebased_core::job::{Job, JobState};
use rebased_core::Version;
use rebased_core::{ImageRef, ImageState, Trigger};
use rebased_scheduler::dispatch::{lock as lock_queue, Command};
use rebased_scheduler::queue::reason;

use crate::daemon::{lock, Daemon};
use crate::poller;

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

impl Backend for Daemon {
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
        let rt = lock(&self.runtime);
        StatusView {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: rt.started_at,
            uptime_seconds: (Utc::now() - rt.started_at).num_seconds(),
            config_file: self.config_file.display().to_string(),
            config_loaded_at: rt.config_loaded_at,
            config_error: rt.config_error.clone(),
            images: self.cfg().image.len(),
            queue_depth,
            running,
            last_poll: rt.last_poll,
            next_poll: rt.next_poll,
        }
    }

    fn images(&self) -> Result<Vec<ImageView>, ApiError> {
        self.cfg().image.iter().map(|i| self.view(i)).collect()
    }

    fn image(&self, name: &str) -> Result<Option<ImageView>, ApiError> {
        self.image(name).map(|i| self.view(&i)).transpose()
    }

    fn ready(&self) -> bool {
        true
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
        match std::fs::read_to_string(self.log_path(id)) {
            Ok(log) => Ok(Some(log)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ApiError::internal(format!("reading log of job {id}: {e}"))),
        }
    }

    fn bases(&self) -> Result<Vec<BaseView>, ApiError> {
        let mut dependents: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for image in &self.cfg().image {
            if let Ok(bases) = self.image_bases(image) {
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

    fn check(&self, req: CheckRequest) -> Result<Accepted, ApiError> {
        refuse_if_stopping(self)?;
        let references = match &req.reference {
            Some(r) => Some(vec![
                ImageRef::parse(r).map_err(|e| ApiError::bad_request(e.to_string()))?
            ]),
            None => None,
        };
        let detail = match &req.reference {
            Some(r) => format!("checking {r}"),
            None => "checking every base".to_owned(),
        };
        self.check_tx
            .try_send(poller::CheckRequest {
                references,
                // A check only looks; a build it causes is due to the base change.
                trigger: Trigger::Poll,
                all: false,
            })
            .map_err(|e| ApiError::unavailable(format!("cannot queue the check: {e}")))?;
        Ok(Accepted {
            status: "accepted".to_owned(),
            detail,
        })
    }

    fn rebuild(&self, name: &str) -> Result<Accepted, ApiError> {
        refuse_if_stopping(self)?;
        if self.image(name).is_none() {
            return Err(ApiError::not_found(format!("image {name:?}")));
        }
        self.jobs_tx
            .try_send(Command::Enqueue {
                image: name.to_owned(),
                reason: reason(
                    Trigger::Manual,
                    Utc::now(),
                    "rebuild requested through the API",
                ),
            })
            .map_err(|e| ApiError::unavailable(format!("cannot queue the rebuild: {e}")))?;
        Ok(Accepted {
            status: "accepted".to_owned(),
            detail: format!("rebuild of {name} queued"),
        })
    }

    fn rollback<'a>(
        &'a self,
        name: &'a str,
        to: &'a str,
    ) -> BoxFuture<'a, Result<RollbackView, ApiError>> {
        Box::pin(async move {
            let to = Version::parse(to).map_err(|e| ApiError::bad_request(e.to_string()))?;
            let event = Daemon::rollback(self, name, &to)
                .await
                .map_err(action_error)?;
            Ok(RollbackView {
                at: event.at,
                from: event.from,
                to: event.to,
                digest: event.digest,
            })
        })
    }

    fn webhook(&self, source: &str, references: Vec<String>) -> Result<WebhookReply, ApiError> {
        refuse_if_stopping(self)?;
        let watched = poller::watched(self);
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
            self.check_tx
                .try_send(poller::CheckRequest {
                    references: Some(check.clone()),
                    trigger: Trigger::Webhook,
                    all: false,
                })
                .map_err(|e| ApiError::unavailable(format!("cannot queue the check: {e}")))?;
        }
        Ok(WebhookReply {
            status: status.to_owned(),
            references: check.iter().map(ToString::to_string).collect(),
            ignored,
        })
    }

    fn metrics(&self) -> &rebased_api::metrics::Metrics {
        self.metrics
            .set_queue_depth(lock_queue(&self.queue).depth());
        &self.metrics
    }

    fn resume<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Accepted, ApiError>> {
        Box::pin(async move {
            Daemon::resume(self, name).await.map_err(action_error)?;
            Ok(Accepted {
                status: "resumed".to_owned(),
                detail: format!("{name} builds automatically again"),
            })
        })
    }
}

/// 503 while stopping: new work is not taken.
fn refuse_if_stopping(d: &Daemon) -> Result<(), ApiError> {
    if d.stopping.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(ApiError::unavailable(
            "rebased is stopping: no new checks, builds or webhooks are taken".to_owned(),
        ));
    }
    Ok(())
}

fn action_error(e: anyhow::Error) -> ApiError {
    let text = format!("{e:#}");
    let status = if text.contains("no image") || text.contains("has no version") {
        404
    } else if text.contains("is building") || text.contains("is not held") {
        409
    } else {
        502
    };
    ApiError {
        error: text,
        detail: None,
        status,
    }
}

impl Daemon {
    fn view(&self, image: &ImageConfig) -> Result<ImageView, ApiError> {
        let name = image.name.as_str();
        let record = self.store.image(name).map_err(internal)?;
        let versions = self.store.versions(name).map_err(internal)?;
        let current = record.as_ref().and_then(|r| r.current);
        let current_digest = current
            .and_then(|c| versions.iter().find(|v| v.version == c))
            .map(|v| v.digest.clone());
        let mut pending = false;
        let bases = match self.image_bases(image) {
            Ok(bases) => bases
                .iter()
                .map(|r| {
                    let key = r.to_string();
                    let rec = self.store.base(&key).ok().flatten();
                    pending |= rec.as_ref().is_some_and(|b| b.pending.is_some());
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
        let active = lock_queue(&self.queue).active(name).map(|j| j.state);
        let stored = record.as_ref().map_or(ImageState::Stale, |r| r.state);
        let state = match (stored, active) {
            (ImageState::Held, _) => ImageState::Held,
            (_, Some(JobState::Running)) => ImageState::Building,
            (_, Some(JobState::Queued)) => ImageState::Queued,
            (ImageState::Fresh, _) if pending => ImageState::Stale,
            (ImageState::Queued | ImageState::Building, None) => ImageState::Stale,
            (s, _) => s,
        };
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
