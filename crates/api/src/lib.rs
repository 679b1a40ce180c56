//! The local HTTP API.
//!
//! Only this crate knows HTTP routing. The daemon hands in a [`Backend`] that
//! answers in terms of the view types below; the JSON field names of the API
//! are the serde names of these types, and nothing else.

mod dashboard;
mod events;
mod hooks;
pub mod metrics;
pub mod pages;

pub use events::{EventView, EventsPage, JobMessage, Live, NotifierView};

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use rebased_core::{Digest, ImageState, Trigger, Version};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusView {
    /// rebased's version.
    pub version: String,
    /// When the daemon started.
    pub started_at: DateTime<Utc>,
    /// Seconds since start.
    pub uptime_seconds: i64,
    /// The config file.
    pub config_file: String,
    /// When the config in force was loaded.
    pub config_loaded_at: DateTime<Utc>,
    /// Why the last reload failed (the previous config stays in force).
    pub config_error: Option<String>,
    /// Number of managed images.
    pub images: usize,
    /// Jobs waiting.
    pub queue_depth: usize,
    /// Images building now.
    pub running: Vec<String>,
    /// When the last poll cycle finished.
    pub last_poll: Option<DateTime<Utc>>,
    /// When the next poll cycle starts.
    pub next_poll: Option<DateTime<Utc>>,
    /// The immutability audit: the last run and what it left unrepaired.
    #[serde(default)]
    pub audit: AuditStatusView,
}

/// The audit in `GET /v1/status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditStatusView {
    /// When the last audit of an image ran.
    pub last_run: Option<DateTime<Utc>>,
    /// Findings of the images' last audits that were not repaired.
    pub drift: usize,
    /// The images with such findings.
    pub images: Vec<String>,
}

/// A version's cosign signature, as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SignatureView {
    /// The key's fingerprint (`sha256:` of its public key's DER).
    pub key: String,
    /// The `sha256-<hex>.sig` manifest.
    #[schema(value_type = String)]
    pub manifest: Digest,
    /// The `sha256-<hex>.att` manifest, with attestations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub attestations: Option<Digest>,
    /// When it was signed.
    pub at: DateTime<Utc>,
}

/// One audit finding: a tag that is not what the ledger says.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FindingView {
    /// `version_tag_moved`, `version_tag_missing`, `floating_tag_moved`,
    /// `signature_missing` or `signature_invalid`.
    pub kind: String,
    /// The version concerned.
    #[schema(value_type = String)]
    pub version: Version,
    /// The tag.
    pub tag: String,
    /// What the ledger says.
    pub expected: String,
    /// What the registry has (absent: nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found: Option<String>,
    /// The repair made, with `audit_repair`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repaired: Option<String>,
}

/// The last audit of one image.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditView {
    /// The image (in `POST /v1/audit`'s answer).
    #[serde(default)]
    pub image: String,
    /// When it ran.
    pub at: DateTime<Utc>,
    /// Versions checked.
    pub versions: usize,
    /// What it found (empty: everything as the ledger says).
    pub findings: Vec<FindingView>,
    /// What it could not check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// The body of `POST /v1/audit` (optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditRequest {
    /// Audit only this image; every image when absent.
    pub image: Option<String>,
}

/// The query of `POST /v1/audit`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::IntoParams)]
pub struct AuditQuery {
    /// `false`: start the audit and answer 202 at once (a fleet's audit
    /// can outlast an HTTP client's timeout); its findings then show in
    /// `GET /v1/status` (`audit.last_run`) and `GET /v1/images/{name}`.
    #[serde(default = "yes")]
    pub wait: bool,
}

impl Default for AuditQuery {
    fn default() -> Self {
        Self { wait: true }
    }
}

fn yes() -> bool {
    true
}

/// The answer to `POST /v1/audit?wait=false`: the audit started.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditStarted {
    /// When it was started: each image's audit (`audit.at`) is at or after it.
    pub at: DateTime<Utc>,
    /// The images it audits.
    pub images: Vec<String>,
}

/// A base of an image, as the image uses it now.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageBaseView {
    /// Normalised reference.
    pub reference: String,
    /// Its digest at the last check.
    #[schema(value_type = Option<String>)]
    pub digest: Option<Digest>,
    /// The error of the last check.
    pub error: Option<String>,
    /// When it was last checked.
    #[serde(default)]
    pub last_checked: Option<DateTime<Utc>>,
}

/// How one base moved.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BaseChangeView {
    /// The base.
    pub reference: String,
    /// Digest in the superseded version.
    #[schema(value_type = Option<String>)]
    pub before: Option<Digest>,
    /// Digest in the new version.
    #[schema(value_type = String)]
    pub after: Digest,
    /// For an index base: the image's platforms whose child moved
    /// (`linux/arm64: before -> after`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moved: Vec<String>,
}

/// Why a version was superseded.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReasonView {
    /// What caused the new build.
    #[schema(value_type = String)]
    pub trigger: Trigger,
    /// Every base, before and after.
    pub bases: Vec<BaseChangeView>,
    /// The source's revision, before and after (an image with a git or
    /// watched context).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceChangeView>,
}

/// How the source moved.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SourceChangeView {
    /// The revision of the superseded version.
    pub before: Option<String>,
    /// The revision of the new version.
    pub after: String,
}

/// One published version.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionView {
    /// The version.
    #[schema(value_type = String)]
    pub version: Version,
    /// Manifest digest.
    #[schema(value_type = String)]
    pub digest: Digest,
    /// When it was built.
    pub built_at: DateTime<Utc>,
    /// What caused the build.
    #[schema(value_type = String)]
    pub trigger: Trigger,
    /// Base reference -> digest it was built from.
    #[schema(value_type = BTreeMap<String, String>)]
    pub bases: BTreeMap<String, Digest>,
    /// When the version is an index: platform -> its child's digest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = BTreeMap<String, String>)]
    pub children: BTreeMap<String, Digest>,
    /// The version that replaced it.
    #[schema(value_type = Option<String>)]
    pub superseded_by: Option<Version>,
    /// When.
    pub superseded_at: Option<DateTime<Utc>>,
    /// Why.
    pub reason: Option<ReasonView>,
    /// The version it replaced.
    #[schema(value_type = Option<String>)]
    pub supersedes: Option<Version>,
    /// The source revision it was built from: a git commit, or a watched
    /// local context's content hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Its cosign signature, when it was signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureView>,
    /// Every time it was superseded, oldest first (the ledger is
    /// append-only: a rollback to it and a later build add one each);
    /// `superseded_by`, `superseded_at` and `reason` are the last of these.
    #[serde(default)]
    pub supersessions: Vec<SupersessionView>,
}

/// One time a version was superseded.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SupersessionView {
    /// The version current after it.
    #[schema(value_type = String)]
    pub by: Version,
    /// When.
    pub at: DateTime<Utc>,
    /// Why.
    pub reason: ReasonView,
}

/// A rollback of an image.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RollbackView {
    /// When.
    pub at: DateTime<Utc>,
    /// The version that was current.
    #[schema(value_type = Option<String>)]
    pub from: Option<Version>,
    /// The version the floating tags point at again.
    #[schema(value_type = String)]
    pub to: Version,
    /// Its digest.
    #[schema(value_type = String)]
    pub digest: Digest,
}

/// The body of `POST /v1/images/{name}/rollback`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RollbackRequest {
    /// The version to go back to.
    pub to: String,
}

/// `GET /v1/images/{name}` (and each entry of `GET /v1/images`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageView {
    /// The image's name.
    pub name: String,
    /// Where it stands.
    #[schema(value_type = String)]
    pub state: ImageState,
    /// The last check of one of its bases failed (each base's `error`
    /// says why): a `stale` image with this flag is not known to be stale,
    /// only not known to be fresh. Absent in answers of older daemons.
    #[serde(default)]
    pub unchecked: bool,
    /// Where versions are pushed.
    pub repository: String,
    /// Current version.
    #[schema(value_type = Option<String>)]
    pub current_version: Option<Version>,
    /// Its digest.
    #[schema(value_type = Option<String>)]
    pub current_digest: Option<Digest>,
    /// Its bases now.
    pub bases: Vec<ImageBaseView>,
    /// Why the last build failed.
    pub last_error: Option<String>,
    /// Every version, oldest first.
    pub versions: Vec<VersionView>,
    /// Every rollback, oldest first.
    pub rollbacks: Vec<RollbackView>,
    /// Its git source, for a git context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ImageSourceView>,
    /// Its last immutability audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditView>,
    /// Its floating tags and where each points now; only in
    /// `GET /v1/images/{name}` (absent from the lists).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub floating_tags: Vec<FloatingTagView>,
}

/// A floating tag of an image.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FloatingTagView {
    /// The template (`latest`, `{major}.{minor}`): a rollback to a version
    /// moves the tags these render for it.
    pub template: String,
    /// The tag it renders for the current version.
    pub tag: Option<String>,
    /// The version it points at: the current one.
    #[schema(value_type = Option<String>)]
    pub version: Option<Version>,
}

/// An image's git source as it stands.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageSourceView {
    /// The repository's URL (without credentials).
    pub url: String,
    /// The ref (`HEAD` when none is named).
    #[serde(rename = "ref")]
    pub reference: String,
    /// The context's directory in the repository (empty: its root).
    pub dir: String,
    /// The settled commit.
    pub commit: Option<String>,
    /// The error of the last look-up or checkout.
    pub error: Option<String>,
}

/// `GET /v1/sources` entry: one repository at one ref.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SourceView {
    /// The repository's URL (without credentials).
    pub url: String,
    /// The ref (`HEAD` when none is named).
    #[serde(rename = "ref")]
    pub reference: String,
    /// The settled commit.
    pub commit: Option<String>,
    /// A newer commit waiting to settle.
    pub pending: Option<String>,
    /// When it was last looked up.
    pub last_checked: Option<DateTime<Utc>>,
    /// When the commit last changed.
    pub last_changed: Option<DateTime<Utc>>,
    /// The error of the last look-up or checkout.
    pub error: Option<String>,
    /// The images built from it.
    pub dependents: Vec<String>,
}

/// `GET /v1/engines` entry: one remote build engine.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EngineView {
    /// Its name (`[[builder.engine]] name`).
    pub name: String,
    /// Its URL.
    pub url: String,
    /// `up`, `down`, or `unknown` (not checked yet).
    pub state: String,
    /// Builds running on it now.
    pub running: usize,
    /// Builds at once it takes (`max_builds`).
    pub max_builds: usize,
    /// Builds it pushed.
    pub done: u64,
    /// Builds that failed on it (the image's failure).
    pub failed: u64,
    /// Builds lost with it, run again on another engine.
    pub lost: u64,
    /// The last error seen: a failed health check, a failed or lost build.
    pub last_error: Option<String>,
    /// What it builds: the configured platforms, else the one it reports.
    pub platforms: Vec<String>,
    /// Its version, once it answered.
    pub version: Option<String>,
}

/// One reason merged into a job.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobReasonView {
    /// What asked for the job.
    #[schema(value_type = String)]
    pub trigger: Trigger,
    /// When.
    pub at: DateTime<Utc>,
    /// Details (base and digests, parent image, who asked).
    pub detail: String,
}

/// `GET /v1/jobs/{id}` (and each entry of `GET /v1/jobs`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobView {
    /// The job's id.
    pub id: u64,
    /// The image it builds.
    pub image: String,
    /// `queued`, `running`, `succeeded`, `failed`, `cancelled`.
    pub state: String,
    /// The first reason's trigger.
    #[schema(value_type = String)]
    pub trigger: Trigger,
    /// Every reason merged into it.
    pub reasons: Vec<JobReasonView>,
    /// Attempts made, counted from 1: the failed ones and the one running
    /// (or that succeeded); 0 while the first has not started.
    pub attempts: u32,
    /// Not started before.
    pub not_before: DateTime<Utc>,
    /// Queued at.
    pub created_at: DateTime<Utc>,
    /// Latest attempt started at.
    pub started_at: Option<DateTime<Utc>>,
    /// Finished at.
    pub finished_at: Option<DateTime<Utc>>,
    /// Latest error.
    pub error: Option<String>,
    /// The version it published.
    #[schema(value_type = Option<String>)]
    pub published: Option<Version>,
    /// Why a finished job published nothing (already fresh, held).
    #[serde(default)]
    pub note: Option<String>,
}

/// A digest seen but not yet settled.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PendingView {
    /// The new digest.
    #[schema(value_type = String)]
    pub digest: Digest,
    /// Seen since.
    pub since: DateTime<Utc>,
}

/// `GET /v1/bases` entry.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BaseView {
    /// Normalised reference.
    pub reference: String,
    /// The settled digest.
    #[schema(value_type = Option<String>)]
    pub digest: Option<Digest>,
    /// A newer digest waiting to settle.
    pub pending: Option<PendingView>,
    /// For an index: platform -> child digest.
    #[schema(value_type = BTreeMap<String, String>)]
    pub platforms: BTreeMap<String, Digest>,
    /// Last checked.
    pub last_checked: Option<DateTime<Utc>>,
    /// Last changed.
    pub last_changed: Option<DateTime<Utc>>,
    /// The error of the last check.
    pub error: Option<String>,
    /// Images built from it.
    pub dependents: Vec<String>,
    /// The registry's `ratelimit-remaining` at the last check, when it said.
    pub rate_limit_remaining: Option<u64>,
}

/// The body of `POST /v1/check` (optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckRequest {
    /// Check only this reference; every base when absent.
    pub reference: Option<String>,
}

/// An accepted action.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Accepted {
    /// `"accepted"` (`"resumed"` for a resume).
    pub status: String,
    /// What was done.
    pub detail: String,
    /// The job it queued (or merged into), when it queued one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<u64>,
}

/// The query of `POST /v1/images/{name}/rebuild`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
pub struct RebuildQuery {
    /// Build even a held (rolled back) image; it stays held.
    #[serde(default)]
    pub force: bool,
}

/// The answer to a webhook.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookReply {
    /// `accepted` (a check was started) or `ignored` (no watched reference).
    pub status: String,
    /// The normalised references that will be checked now.
    pub references: Vec<String>,
    /// References named but not watched (or not valid), with why.
    pub ignored: Vec<String>,
}

/// An API error body: `{"error": "...", "detail": ...}`.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error, utoipa::ToSchema)]
#[error("{error}")]
pub struct ApiError {
    /// What went wrong.
    pub error: String,
    /// More, when there is more.
    #[schema(value_type = Option<Object>)]
    pub detail: Option<serde_json::Value>,
    /// The HTTP status.
    #[serde(skip)]
    pub status: u16,
}

impl ApiError {
    /// 404 for a missing thing.
    pub fn not_found(what: String) -> Self {
        Self {
            error: format!("{what} not found"),
            detail: None,
            status: 404,
        }
    }

    /// 400 with a reason.
    pub fn bad_request(error: String) -> Self {
        Self {
            error,
            detail: None,
            status: 400,
        }
    }

    /// 503 with a reason.
    pub fn unavailable(error: String) -> Self {
        Self {
            error,
            detail: None,
            status: 503,
        }
    }

    /// 500 with a cause.
    pub fn internal(cause: String) -> Self {
        Self {
            error: "internal error".to_owned(),
            detail: Some(serde_json::Value::String(cause)),
            status: 500,
        }
    }
}

/// Why an action (a check, a rebuild, a rollback, a resume, a webhook)
/// was not done. The daemon says what happened; this crate alone picks the
/// HTTP status for it (`From<ActionError> for ApiError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// 404: no such image, or no such version in its ledger.
    #[error("{0}")]
    NotFound(String),
    /// 409: the image's state does not allow it now.
    #[error("{image} {conflict}")]
    Conflict {
        /// The image.
        image: String,
        /// What stands in the way.
        conflict: Conflict,
    },
    /// 400: the request itself is wrong (a bad reference or version).
    #[error("{0}")]
    BadRequest(String),
    /// 503: the daemon is stopping, or its queue is full.
    #[error("{0}")]
    Unavailable(String),
    /// 502: a registry (or an OCI layout) refused or failed.
    #[error("{0}")]
    Upstream(String),
    /// 500: the daemon's own failure (its store).
    #[error("{0}")]
    Internal(String),
}

/// What stands in the way of an action on an image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    /// It is being built: roll back when the build is done.
    #[error("is building; roll back when the build is done")]
    Building,
    /// It is not held, so there is nothing to resume; its state.
    #[error("is not held (it is {0})")]
    NotHeld(rebased_core::ImageState),
    /// It is held (rolled back): nothing builds it until it is resumed.
    #[error("is held (rolled back to {version}): `rebased resume {image}` ends the hold, `rebased rebuild {image} --force` builds it anyway")]
    Held {
        /// The image, for the commands in the hint.
        image: String,
        /// The version it was rolled back to.
        version: String,
    },
}

impl From<ActionError> for ApiError {
    fn from(e: ActionError) -> Self {
        let status = match &e {
            ActionError::NotFound(_) => 404,
            ActionError::Conflict { .. } => 409,
            ActionError::BadRequest(_) => 400,
            ActionError::Unavailable(_) => 503,
            ActionError::Upstream(_) => 502,
            ActionError::Internal(cause) => return Self::internal(cause.clone()),
        };
        Self {
            error: e.to_string(),
            detail: None,
            status,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self)).into_response()
    }
}

/// What the daemon provides to the API.
pub trait Backend: Send + Sync + 'static {
    /// Daemon status.
    fn status(&self) -> StatusView;
    /// Every managed image.
    fn images(&self) -> Result<Vec<ImageView>, ApiError>;
    /// The answer to `GET /v1/images` without a query: every image as
    /// JSON with its `ETag`. This default renders [`Backend::images`] on
    /// every call; a daemon with many images keeps the rendered answer
    /// while nothing it shows has moved.
    fn images_answer(&self) -> Result<pages::Rendered, ApiError> {
        pages::Rendered::of(&self.images()?)
    }
    /// One image, `None` if no such image is managed.
    fn image(&self, name: &str) -> Result<Option<ImageView>, ApiError>;
    /// Every managed image without its version history, in name order:
    /// what the paged `GET /v1/images` selects from. A daemon with many
    /// images keeps these at hand; this default derives them from
    /// [`Backend::images`].
    fn image_summaries(&self) -> Result<Arc<Vec<pages::ImageSummaryView>>, ApiError> {
        let mut v: Vec<pages::ImageSummaryView> = self
            .images()?
            .iter()
            .map(pages::ImageSummaryView::from)
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Arc::new(v))
    }
    /// Ready: state open and config loaded.
    fn ready(&self) -> bool;
    /// Every job (newest last).
    fn jobs(&self) -> Result<Vec<JobView>, ApiError>;
    /// One job.
    fn job(&self, id: u64) -> Result<Option<JobView>, ApiError>;
    /// A job's build log, `None` if the job has none.
    fn job_log(&self, id: u64) -> Result<Option<String>, ApiError>;
    /// Every base.
    fn bases(&self) -> Result<Vec<BaseView>, ApiError>;
    /// Every git source.
    fn sources(&self) -> Result<Vec<SourceView>, ApiError> {
        Ok(Vec::new())
    }
    /// Every remote build engine.
    fn engines(&self) -> Result<Vec<EngineView>, ApiError> {
        Ok(Vec::new())
    }
    /// Check bases now.
    fn check(&self, req: CheckRequest) -> Result<Accepted, ActionError>;
    /// Queue a rebuild of `name`, even if it is fresh or failing; a held
    /// image only when `force`.
    fn rebuild<'a>(
        &'a self,
        name: &'a str,
        force: bool,
    ) -> BoxFuture<'a, Result<Accepted, ActionError>>;
    /// Roll `name` back to version `to` and hold it.
    fn rollback<'a>(
        &'a self,
        name: &'a str,
        to: &'a str,
    ) -> BoxFuture<'a, Result<RollbackView, ActionError>>;
    /// End the hold of `name`.
    fn resume<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Accepted, ActionError>>;
    /// A git host's push named this repository and ref: check the
    /// sources it moves now.
    fn source_webhook(
        &self,
        _source: &str,
        _push: rebased_watcher::push::Push,
    ) -> Result<WebhookReply, ActionError> {
        Ok(WebhookReply {
            status: "ignored".to_owned(),
            references: Vec::new(),
            ignored: vec!["no git sources".to_owned()],
        })
    }
    /// Run the immutability audit now, of every image or of `image`; the
    /// audits made.
    fn audit<'a>(
        &'a self,
        _image: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<AuditView>, ActionError>> {
        Box::pin(async { Err(ActionError::Unavailable("no audit here".to_owned())) })
    }
    /// Start the immutability audit (of every image or of `image`) and
    /// return at once; a second one started meanwhile runs after it.
    fn audit_start(&self, _image: Option<&str>) -> Result<AuditStarted, ActionError> {
        Err(ActionError::Unavailable("no audit here".to_owned()))
    }
    /// A webhook named these references: check the watched ones now.
    fn webhook(&self, source: &str, references: Vec<String>) -> Result<WebhookReply, ActionError>;
    /// The daemon's metrics.
    fn metrics(&self) -> &metrics::Metrics;
    /// The events of the global log after sequence number `after`,
    /// oldest first, at most `limit`.
    fn events_after(&self, _after: u64, _limit: usize) -> Result<Vec<EventView>, ApiError> {
        Ok(Vec::new())
    }
    /// A feed of what is new (log entries, job changes) for the event
    /// stream; `None`: the stream only replays.
    fn live(&self) -> Option<tokio::sync::broadcast::Receiver<Live>> {
        None
    }
    /// Every notifier.
    fn notifiers(&self) -> Result<Vec<NotifierView>, ApiError> {
        Ok(Vec::new())
    }
    /// Log a test event for notifier `name`.
    fn notify_test<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Accepted, ActionError>> {
        Box::pin(async move { Err(ActionError::NotFound(format!("notifier {name}"))) })
    }
}

/// Secrets the router checks.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    /// Bearer token for every POST except webhooks.
    pub api_token: Option<String>,
    /// Token for webhooks: bearer, `?token=`, or GitHub's HMAC key.
    pub webhook_token: Option<String>,
}

/// Largest webhook body accepted.
pub const WEBHOOK_BODY_LIMIT: usize = 1 << 20;

/// A boxed future, for the backend's async actions.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

pub(crate) type Shared = Arc<dyn Backend>;

/// The router over `backend`. With an API token, every POST but webhooks
/// needs `Authorization: Bearer <token>`; `stop` ends the event streams
/// (else they would hold the graceful shutdown open).
///
/// Each layer here runs for every request of the routes it covers, so a
/// layer covers only the routes that need it: the token check the POST
/// actions (and the fallback, so that an unknown POST without the token is
/// a 401 as before), gzip the routes whose answers are large, the stop
/// token the event stream. `GET /v1/status` and the probes go through none.
pub fn router(backend: Shared, secrets: Secrets, stop: CancellationToken) -> Router {
    let token = Arc::new(secrets.api_token.clone());
    let hooks = Router::new()
        .route("/v1/webhooks/{source}", post(hooks::webhook))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state((Arc::clone(&backend), Arc::new(secrets.webhook_token)));
    let auth = {
        let token = Arc::clone(&token);
        axum::middleware::from_fn(move |req: Request, next: Next| {
            let token = Arc::clone(&token);
            async move {
                match unauthorized(token.as_deref(), &req) {
                    Some(refused) => refused.into_response(),
                    None => next.run(req).await,
                }
            }
        })
    };
    let actions = Router::new()
        .route("/v1/images/{name}/rebuild", post(rebuild))
        .route("/v1/images/{name}/rollback", post(rollback))
        .route("/v1/images/{name}/resume", post(resume))
        .route("/v1/check", post(check))
        .route("/v1/audit", post(audit))
        .route("/v1/notifiers/{name}/test", post(events::notify_test))
        .route_layer(auth);
    // gzip for clients that ask (`Accept-Encoding`); tower-http's default
    // predicate leaves small bodies, images and event streams alone.
    let large = Router::new()
        .route("/metrics", get(hooks::metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/images", get(images))
        .route("/v1/images/{name}", get(image))
        .route("/v1/jobs", get(jobs))
        .route("/v1/jobs/{id}", get(job))
        .route("/v1/jobs/{id}/log", get(job_log))
        .route("/v1/bases", get(bases))
        .route("/v1/sources", get(sources))
        .route("/v1/engines", get(engines))
        .route(
            "/v1/events",
            get(events::events).layer(axum::Extension(stop)),
        )
        .route("/v1/notifiers", get(events::notifiers))
        .merge(dashboard::routes())
        .route_layer(tower_http::compression::CompressionLayer::new());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/status", get(status))
        .merge(actions)
        .merge(large)
        .fallback(move |req: Request| async move {
            match unauthorized(token.as_deref(), &req) {
                Some(refused) => refused,
                None => ApiError::not_found("route".to_owned()),
            }
        })
        .with_state(backend)
        .merge(hooks)
}

/// The refusal of a POST (but a webhook's) without the API token, when
/// one is set.
fn unauthorized(token: Option<&str>, req: &Request) -> Option<ApiError> {
    let want = token?;
    if req.method() != Method::POST || req.uri().path().starts_with("/v1/webhooks/") {
        return None;
    }
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if constant_time_eq(given.as_bytes(), want.as_bytes()) {
        return None;
    }
    Some(ApiError {
        error: "unauthorized: this action needs Authorization: Bearer <api token>".to_owned(),
        detail: None,
        status: 401,
    })
}

/// Compares without an early exit on the first differing byte.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

/// List the jobs (queued, running and the recent finished ones), every one or a page.
#[utoipa::path(get, path = "/v1/jobs", params(pages::JobsQuery), responses((status = 200, description = "Without a query every job, oldest first (an array); with one a page, newest first (`items`, `next`, `total`); `ETag` of the body", body = pages::JobsAnswer), (status = 304, description = "Not modified (`If-None-Match`)"), (status = 400, description = "Malformed query", body = ApiError), (status = 500, description = "Internal error", body = ApiError)))]
async fn jobs(
    State(b): State<Shared>,
    headers: axum::http::HeaderMap,
    query: Result<axum::extract::Query<pages::JobsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if !q.is_paged() {
        return Ok(pages::json_with_etag(&headers, &b.jobs()?));
    }
    let page = pages::select_jobs(b.jobs()?, &q)?;
    Ok(pages::json_with_etag(&headers, &page))
}

fn parse_id(id: &str) -> Result<u64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("job id {id:?} is not a number")))
}

/// One job: trigger, state, attempts, timings, what it published or why not.
#[utoipa::path(get, path = "/v1/jobs/{id}", params(("id" = u64, Path, description = "Job id")), responses((status = 200, description = "The job", body = JobView), (status = 400, description = "Malformed request", body = ApiError), (status = 404, description = "No such job", body = ApiError), (status = 500, description = "Internal error", body = ApiError)))]
async fn job(State(b): State<Shared>, Path(id): Path<String>) -> Result<Json<JobView>, ApiError> {
    let id = parse_id(&id)?;
    b.job(id)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("job {id}")))
}

/// A job's build log, or why it has none.
#[utoipa::path(get, path = "/v1/jobs/{id}/log", params(("id" = u64, Path, description = "Job id")), responses((status = 200, description = "The captured build log", body = String, content_type = "text/plain"), (status = 400, description = "Malformed request", body = ApiError), (status = 404, description = "No such job", body = ApiError), (status = 500, description = "Internal error", body = ApiError)))]
async fn job_log(State(b): State<Shared>, Path(id): Path<String>) -> Result<String, ApiError> {
    let id = parse_id(&id)?;
    b.job_log(id)?
        .ok_or_else(|| ApiError::not_found(format!("log of job {id}")))
}

/// Every watched base: digest, platforms, last check and change, its error.
#[utoipa::path(get, path = "/v1/bases", responses((status = 200, description = "Every base", body = Vec<BaseView>), (status = 500, description = "Internal error", body = ApiError)))]
async fn bases(State(b): State<Shared>) -> Result<Json<Vec<BaseView>>, ApiError> {
    Ok(Json(b.bases()?))
}

/// Every git source: its URL, ref, settled commit, last check and change, error and dependents.
#[utoipa::path(get, path = "/v1/sources", responses((status = 200, description = "Every git source", body = Vec<SourceView>), (status = 500, description = "Internal error", body = ApiError)))]
async fn sources(State(b): State<Shared>) -> Result<Json<Vec<SourceView>>, ApiError> {
    Ok(Json(b.sources()?))
}

/// Every remote build engine: state, builds running, done, failed and lost, the last error.
#[utoipa::path(get, path = "/v1/engines", responses((status = 200, description = "Every remote build engine", body = Vec<EngineView>), (status = 500, description = "Internal error", body = ApiError)))]
async fn engines(State(b): State<Shared>) -> Result<Json<Vec<EngineView>>, ApiError> {
    Ok(Json(b.engines()?))
}

/// Check every base now, or one reference.
#[utoipa::path(post, path = "/v1/check", request_body(content = Option<CheckRequest>, description = "Optional: one reference to check"), responses((status = 202, description = "Check queued", body = Accepted), (status = 400, description = "Malformed request", body = ApiError), (status = 401, description = "Missing or wrong bearer token", body = ApiError), (status = 503, description = "Daemon stopping", body = ApiError)), security(("bearer" = [])))]
async fn check(
    State(b): State<Shared>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let req: CheckRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CheckRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("bad check request: {e}")))?
    };
    Ok((StatusCode::ACCEPTED, Json(b.check(req)?)))
}

/// Run the immutability audit now: version tags, floating tags, signatures.
#[utoipa::path(post, path = "/v1/audit", params(AuditQuery), request_body(content = Option<AuditRequest>, description = "Optional: one image to audit"), responses((status = 200, description = "The audits made, with their findings", body = Vec<AuditView>), (status = 202, description = "With `?wait=false`: the audit started; its findings show in the status and the images", body = AuditStarted), (status = 400, description = "Malformed request", body = ApiError), (status = 401, description = "Missing or wrong bearer token", body = ApiError), (status = 404, description = "No such image", body = ApiError), (status = 500, description = "Internal error", body = ApiError), (status = 503, description = "Daemon stopping", body = ApiError)), security(("bearer" = [])))]
async fn audit(
    State(b): State<Shared>,
    axum::extract::Query(q): axum::extract::Query<AuditQuery>,
    body: axum::body::Bytes,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    let req: AuditRequest = if body.iter().all(u8::is_ascii_whitespace) {
        AuditRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("bad audit request: {e}")))?
    };
    if !q.wait {
        let started = b.audit_start(req.image.as_deref())?;
        return Ok((StatusCode::ACCEPTED, Json(started)).into_response());
    }
    Ok(Json(b.audit(req.image.as_deref()).await?).into_response())
}

/// Point an image's floating tags back at a version and hold it.
#[utoipa::path(post, path = "/v1/images/{name}/rollback", params(("name" = String, Path, description = "Image name")), request_body = RollbackRequest, responses((status = 200, description = "Rolled back and held", body = RollbackView), (status = 400, description = "Malformed request", body = ApiError), (status = 401, description = "Missing or wrong bearer token", body = ApiError), (status = 404, description = "No such thing", body = ApiError), (status = 409, description = "Image is building", body = ApiError), (status = 502, description = "Registry refused", body = ApiError), (status = 500, description = "Internal error", body = ApiError)), security(("bearer" = [])))]
async fn rollback(
    State(b): State<Shared>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<RollbackView>, ApiError> {
    let req: RollbackRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "bad rollback request (expected {{\"to\": \"VERSION\"}}): {e}"
        ))
    })?;
    Ok(Json(b.rollback(&name, &req.to).await?))
}

/// End an image's hold: it builds automatically again.
#[utoipa::path(post, path = "/v1/images/{name}/resume", params(("name" = String, Path, description = "Image name")), responses((status = 200, description = "Resumed", body = Accepted), (status = 401, description = "Missing or wrong bearer token", body = ApiError), (status = 404, description = "No such thing", body = ApiError), (status = 409, description = "Image is not held", body = ApiError), (status = 500, description = "Internal error", body = ApiError)), security(("bearer" = [])))]
async fn resume(
    State(b): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<Accepted>, ApiError> {
    Ok(Json(b.resume(&name).await?))
}

/// Queue a rebuild of an image now.
#[utoipa::path(post, path = "/v1/images/{name}/rebuild", params(("name" = String, Path, description = "Image name"), RebuildQuery), responses((status = 202, description = "Rebuild queued (`job` names it)", body = Accepted), (status = 400, description = "Malformed request", body = ApiError), (status = 401, description = "Missing or wrong bearer token", body = ApiError), (status = 404, description = "No such thing", body = ApiError), (status = 409, description = "Image is held (rolled back); `?force=true` builds it anyway", body = ApiError), (status = 500, description = "Internal error", body = ApiError), (status = 503, description = "Daemon stopping", body = ApiError)), security(("bearer" = [])))]
async fn rebuild(
    State(b): State<Shared>,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<RebuildQuery>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    Ok((StatusCode::ACCEPTED, Json(b.rebuild(&name, q.force).await?)))
}

/// Readiness: the state is open and the config loaded.
#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "Ready"), (status = 503, description = "Not ready", body = ApiError)))]
async fn readyz(State(b): State<Shared>) -> Response {
    if b.ready() {
        Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        ApiError {
            error: "not ready".to_owned(),
            detail: None,
            status: 503,
        }
        .into_response()
    }
}

/// The daemon's status: version, config, queue, polls.
#[utoipa::path(get, path = "/v1/status", responses((status = 200, description = "Daemon status", body = StatusView)))]
async fn status(State(b): State<Shared>) -> Json<StatusView> {
    Json(b.status())
}

/// List the managed images with their state, versions and bases, every one or a page.
#[utoipa::path(get, path = "/v1/images", params(pages::ImagesQuery), responses((status = 200, description = "Without a query every image in config order (an array); with one a page in name order (`items`, `next`, `total`, `counts`), summaries with `view=summary`; `ETag` of the body", body = pages::ImagesAnswer), (status = 304, description = "Not modified (`If-None-Match`)"), (status = 400, description = "Malformed query", body = ApiError), (status = 500, description = "Internal error", body = ApiError)))]
async fn images(
    State(b): State<Shared>,
    headers: axum::http::HeaderMap,
    query: Result<
        axum::extract::Query<pages::ImagesQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<Response, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if !q.is_paged() {
        return Ok(b.images_answer()?.respond(&headers));
    }
    let summaries = b.image_summaries()?;
    if q.view == Some(pages::ImagesForm::Summary) {
        return Ok(pages::summary_page(&summaries, &q)?.respond(&headers));
    }
    let sel = pages::select_images(&summaries, &q)?;
    let mut items = Vec::with_capacity(sel.items.len());
    for s in &sel.items {
        // An image that left the config since the summaries were read is
        // left out of the page.
        if let Some(v) = b.image(&s.name)? {
            items.push(v);
        }
    }
    let page = pages::ImagePage {
        items,
        next: sel.next,
        total: sel.total,
        counts: sel.counts,
    };
    Ok(pages::json_with_etag(&headers, &page))
}

/// One image: state, bases, every version and its supersessions, rollbacks.
#[utoipa::path(get, path = "/v1/images/{name}", params(("name" = String, Path, description = "Image name")), responses((status = 200, description = "The image and its history", body = ImageView), (status = 404, description = "No such image", body = ApiError), (status = 500, description = "Internal error", body = ApiError)))]
async fn image(
    State(b): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<ImageView>, ApiError> {
    b.image(&name)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("image {name:?}")))
}

/// A bound listener.
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// A unix socket.
    Unix(UnixListener, std::path::PathBuf),
}

/// Why the API could not listen.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {listen}: {source}")]
pub struct BindError {
    /// The `daemon.listen` value.
    pub listen: String,
    /// The cause.
    pub source: std::io::Error,
}

/// Binds `daemon.listen`: `HOST:PORT` or `unix:/path` (socket mode 0660; a
/// stale socket file is replaced).
pub async fn bind(listen: &str) -> Result<Listener, BindError> {
    let err = |source| BindError {
        listen: listen.to_owned(),
        source,
    };
    if let Some(path) = listen.strip_prefix("unix:") {
        let path = std::path::PathBuf::from(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).map_err(err)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
        Ok(Listener::Unix(l, path))
    } else {
        TcpListener::bind(listen)
            .await
            .map(Listener::Tcp)
            .map_err(err)
    }
}

impl Listener {
    /// A printable address.
    pub fn describe(&self) -> String {
        match self {
            Self::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "tcp".to_owned()),
            Self::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }
}

/// Serves the API until `shutdown` is cancelled.
pub async fn serve(
    listener: Listener,
    backend: Shared,
    secrets: Secrets,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(backend, secrets, shutdown.clone());
    info!(listen = %listener.describe(), "API listening");
    match listener {
        Listener::Tcp(l) => {
            axum::serve(l, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        }
        Listener::Unix(l, path) => {
            let r = axum::serve(l, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            let _ = std::fs::remove_file(path);
            r
        }
    }
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "Alive")))]
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "The OpenAPI document")))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi_document())
}

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "rebased", description = "The local API of rebased: images, versions, bases, jobs, webhooks."),
    paths(
        healthz, readyz, openapi, status, images, image, rebuild, rollback, resume, jobs, job, job_log, bases, sources, engines, check, audit,
        events::events, events::notifiers, events::notify_test,
        hooks::webhook, hooks::metrics
    ),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

/// The OpenAPI document of every route.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    ApiDoc::openapi()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// issue 22: 11 of 16 operations had no summary.
    #[test]
    fn every_operation_has_a_summary_and_its_error_responses() {
        let doc = serde_json::to_value(openapi_document()).expect("json");
        let paths = doc["paths"].as_object().expect("paths");
        // These cannot fail: they answer whatever the state.
        let infallible = ["/healthz", "/openapi.json", "/v1/status", "/metrics"];
        let mut seen = 0;
        for (path, ops) in paths {
            for (method, op) in ops.as_object().expect("operations") {
                seen += 1;
                let summary = op["summary"].as_str().unwrap_or_default();
                assert!(!summary.is_empty(), "{method} {path} has no summary");
                let codes: Vec<&String> = op["responses"]
                    .as_object()
                    .expect("responses")
                    .keys()
                    .collect();
                if !infallible.contains(&path.as_str()) {
                    assert!(
                        codes
                            .iter()
                            .any(|c| c.starts_with('4') || c.starts_with('5')),
                        "{method} {path} documents no error response: {codes:?}"
                    );
                }
                if method == "post" && !path.starts_with("/v1/webhooks/") {
                    assert!(
                        codes.iter().any(|c| *c == "401"),
                        "{method} {path}: {codes:?}"
                    );
                }
            }
        }
        assert_eq!(seen, 22, "every route is in the document");
    }

    /// issue 19: the paged lists' parameters and answers are documented.
    #[test]
    fn the_paged_lists_are_in_the_document() {
        let doc = serde_json::to_value(openapi_document()).expect("json");
        for (path, want) in [
            ("/v1/images", &["limit", "cursor", "state", "q", "view"][..]),
            ("/v1/jobs", &["limit", "cursor", "state", "q"][..]),
        ] {
            let op = &doc["paths"][path]["get"];
            let names: Vec<&str> = op["parameters"]
                .as_array()
                .expect("parameters")
                .iter()
                .filter_map(|p| p["name"].as_str())
                .collect();
            assert_eq!(names, want, "{path}");
            assert!(op["responses"]["304"].is_object(), "{path}");
            assert!(op["responses"]["400"].is_object(), "{path}");
        }
        let schemas = &doc["components"]["schemas"];
        for s in [
            "ImagesAnswer",
            "ImagePage",
            "ImageSummaryPage",
            "ImageSummaryView",
            "JobPage",
        ] {
            assert!(schemas[s].is_object(), "{s} missing");
        }
        assert_eq!(
            schemas["ImagesAnswer"]["oneOf"].as_array().map(Vec::len),
            Some(3),
            "{}",
            schemas["ImagesAnswer"]
        );
    }

    #[test]
    fn action_errors_map_to_their_status() {
        let conflict = |conflict| ActionError::Conflict {
            image: "web".to_owned(),
            conflict,
        };
        let cases = [
            (ActionError::NotFound("no image \"web\"".into()), 404),
            (conflict(Conflict::Building), 409),
            (
                conflict(Conflict::NotHeld(rebased_core::ImageState::Fresh)),
                409,
            ),
            (
                conflict(Conflict::Held {
                    image: "web".into(),
                    version: "1.0.0".into(),
                }),
                409,
            ),
            (ActionError::BadRequest("bad version".into()), 400),
            (ActionError::Unavailable("stopping".into()), 503),
            (ActionError::Upstream("registry refused".into()), 502),
            (ActionError::Internal("store".into()), 500),
        ];
        for (e, status) in cases {
            assert_eq!(ApiError::from(e.clone()).status, status, "{e}");
        }
        let e = ApiError::from(conflict(Conflict::NotHeld(rebased_core::ImageState::Fresh)));
        assert_eq!(e.error, "web is not held (it is fresh)");
        let e = ApiError::from(conflict(Conflict::Building));
        assert_eq!(e.error, "web is building; roll back when the build is done");
        // An internal cause goes to the detail, not the headline.
        let e = ApiError::from(ActionError::Internal("sled: io".into()));
        assert_eq!(e.error, "internal error");
    }
}
