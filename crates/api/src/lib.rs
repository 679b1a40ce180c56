//! The local HTTP API.
//!
//! Only this crate knows HTTP routing. The daemon hands in a [`Backend`] that
//! answers in terms of the view types below; the JSON field names of the API
//! are the serde names of these types, and nothing else.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use rebased_core::{Digest, ImageState, Trigger, Version};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
}

/// A base of an image, as the image uses it now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageBaseView {
    /// Normalised reference.
    pub reference: String,
    /// Its digest at the last check.
    pub digest: Option<Digest>,
    /// The error of the last check.
    pub error: Option<String>,
}

/// How one base moved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaseChangeView {
    /// The base.
    pub reference: String,
    /// Digest in the superseded version.
    pub before: Option<Digest>,
    /// Digest in the new version.
    pub after: Digest,
}

/// Why a version was superseded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReasonView {
    /// What caused the new build.
    pub trigger: Trigger,
    /// Every base, before and after.
    pub bases: Vec<BaseChangeView>,
}

/// One published version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionView {
    /// The version.
    pub version: Version,
    /// Manifest digest.
    pub digest: Digest,
    /// When it was built.
    pub built_at: DateTime<Utc>,
    /// What caused the build.
    pub trigger: Trigger,
    /// Base reference -> digest it was built from.
    pub bases: BTreeMap<String, Digest>,
    /// The version that replaced it.
    pub superseded_by: Option<Version>,
    /// When.
    pub superseded_at: Option<DateTime<Utc>>,
    /// Why.
    pub reason: Option<ReasonView>,
}

/// `GET /v1/images/{name}` (and each entry of `GET /v1/images`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageView {
    /// The image's name.
    pub name: String,
    /// Where it stands.
    pub state: ImageState,
    /// Where versions are pushed.
    pub repository: String,
    /// Current version.
    pub current_version: Option<Version>,
    /// Its digest.
    pub current_digest: Option<Digest>,
    /// Its bases now.
    pub bases: Vec<ImageBaseView>,
    /// Why the last build failed.
    pub last_error: Option<String>,
    /// Every version, oldest first.
    pub versions: Vec<VersionView>,
}

/// An API error body: `{"error": "...", "detail": ...}`.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{error}")]
pub struct ApiError {
    /// What went wrong.
    pub error: String,
    /// More, when there is more.
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

    /// 500 with a cause.
    pub fn internal(cause: String) -> Self {
        Self {
            error: "internal error".to_owned(),
            detail: Some(serde_json::Value::String(cause)),
            status: 500,
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
    /// One image, `None` if no such image is managed.
    fn image(&self, name: &str) -> Result<Option<ImageView>, ApiError>;
    /// Ready: state open and config loaded.
    fn ready(&self) -> bool;
}

type Shared = Arc<dyn Backend>;

/// The router over `backend`.
pub fn router(backend: Shared) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/v1/status", get(status))
        .route("/v1/images", get(images))
        .route("/v1/images/{name}", get(image))
        .fallback(|| async { ApiError::not_found("route".to_owned()) })
        .with_state(backend)
}

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

async fn status(State(b): State<Shared>) -> Json<StatusView> {
    Json(b.status())
}

async fn images(State(b): State<Shared>) -> Result<Json<Vec<ImageView>>, ApiError> {
    Ok(Json(b.images()?))
}

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
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(backend);
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
