//! The event stream: `GET /v1/events` as Server-Sent Events (the global
//! event log replayed after `Last-Event-ID` or `?after=N`, then followed
//! live, with live-only `job` messages and a `: ping` every 15 s) or, for
//! clients that poll, as JSON pages; and the notifiers' views.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use rebased_core::{Digest, Version};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::{ApiError, ReasonView, Shared};

/// One event of the global log: the document of `/v1/events`, of
/// `?after=N` and the `webhook` notifier's body. `seq`, `type` and `time`
/// always; `image` on image events; the rest where they apply (absent,
/// not null, when they do not).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventView {
    /// The global sequence number, from 1, never reused.
    pub seq: u64,
    /// `published`, `failed`, `failing`, `recovered`, `rolled_back`,
    /// `held`, `resumed`, `base_error` or `test`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// The image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The version published, or current again after a rollback or recovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub version: Option<Version>,
    /// Its manifest digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub digest: Option<Digest>,
    /// The image's repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// The version current before (superseded, or rolled back from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub previous_version: Option<Version>,
    /// Why it was built: the trigger and each input before and after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ReasonView>,
    /// The job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<u64>,
    /// The job's log (`/v1/jobs/{id}/log`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_url: Option<String>,
    /// What a person reads: the error, the hold's reason, the base and its
    /// error, the notifier a test is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `GET /v1/events?after=N` as JSON.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventsPage {
    /// The events after `after`, oldest first.
    pub events: Vec<EventView>,
    /// The last sequence number returned, or `after` when none: the next
    /// request's `after`.
    pub next: u64,
}

/// A live-only message of the stream (`event: job`, no `id:`): a job
/// changed state. Never stored, notified or replayed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobMessage {
    /// The job.
    pub job: u64,
    /// Its image.
    pub image: String,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    /// When the message was made.
    pub time: DateTime<Utc>,
}

/// What the backend's live feed says.
#[derive(Debug, Clone)]
pub enum Live {
    /// The event log has new entries.
    Logged,
    /// A job changed state.
    Job(JobMessage),
}

/// One notifier (`GET /v1/notifiers`). Never shows a URL or a secret.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NotifierView {
    /// Its name.
    pub name: String,
    /// Its kind (`webhook`, `slack`, `email`...).
    pub kind: String,
    /// Events in the log for it still to deliver.
    pub pending: u64,
    /// The sequence number of the last event it is done with.
    pub cursor: u64,
    /// Events delivered since its outbox was made.
    pub delivered: u64,
    /// Events dropped after 24 hours of failed attempts.
    pub dropped: u64,
    /// When a delivery last succeeded.
    pub last_success: Option<DateTime<Utc>>,
    /// The last delivery error.
    pub last_error: Option<String>,
    /// When the next attempt is due, while one is failing.
    pub next_attempt: Option<DateTime<Utc>>,
}

/// The query of `GET /v1/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Events with a sequence number above this (SSE: like `Last-Event-ID`).
    pub after: Option<u64>,
    /// JSON: at most this many (default 100, at most 1000).
    pub limit: Option<usize>,
    /// `json` for a JSON page even when `Accept` asks for an event stream.
    pub format: Option<String>,
}

/// Largest JSON page.
const MAX_LIMIT: usize = 1000;
/// Keep-alive comments.
const PING: Duration = Duration::from_secs(15);

/// The event log: an SSE stream (`Accept: text/event-stream`) or a JSON page.
#[utoipa::path(get, path = "/v1/events", params(EventsQuery, ("Last-Event-ID" = Option<u64>, Header, description = "SSE: resume after this sequence number")),
    responses(
        (status = 200, description = "With `Accept: text/event-stream`: the events after `Last-Event-ID` or `after` (`id:` the sequence number, `event:` the type, `data:` the event document), then live, with `event: job` messages (no `id:`) and `: ping` every 15 s. Otherwise a JSON page.",
            content((EventsPage = "application/json"), (String = "text/event-stream"))),
        (status = 400, description = "Malformed request", body = ApiError),
        (status = 500, description = "Internal error", body = ApiError)))]
pub(crate) async fn events(
    State(b): State<Shared>,
    Extension(stop): Extension<CancellationToken>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let sse = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
        && q.format.as_deref() != Some("json");
    if let Some(f) = q.format.as_deref().filter(|f| *f != "json" && *f != "sse") {
        return Err(ApiError::bad_request(format!(
            "format {f:?}: say json or sse"
        )));
    }
    if !sse {
        let limit = q.limit.unwrap_or(100);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(ApiError::bad_request(format!(
                "limit {limit}: from 1 to {MAX_LIMIT}"
            )));
        }
        let after = q.after.unwrap_or(0);
        let events = b.events_after(after, limit)?;
        let next = events.last().map_or(after, |e| e.seq);
        return Ok(Json(EventsPage { events, next }).into_response());
    }
    let last_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("Last-Event-ID is not a sequence number".to_owned())
                })?,
        ),
    };
    let after = last_id.or(q.after).unwrap_or(0);
    // Subscribed before the replay is read: nothing logged between the two is missed.
    let live = b.live();
    let (tx, rx) = mpsc::channel::<Event>(64);
    tokio::spawn(follow(b, live, after, tx, stop));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Ok(Sse::new(stream).into_response())
}

/// Feeds one SSE client: the replay after `after`, then every new entry
/// and job message, and the pings; ends when the client is gone, the
/// feed closes or the API stops.
async fn follow(
    b: Shared,
    mut live: Option<broadcast::Receiver<Live>>,
    mut after: u64,
    tx: mpsc::Sender<Event>,
    stop: CancellationToken,
) {
    if !replay(&b, &mut after, &tx).await {
        return;
    }
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING, PING);
    loop {
        let next = async {
            match live.as_mut() {
                Some(l) => l.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ping.tick() => {
                if tx.send(Event::default().comment("ping")).await.is_err() {
                    return;
                }
            }
            m = next => match m {
                // Missed messages: the log still has every persisted one.
                Ok(Live::Logged) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    if !replay(&b, &mut after, &tx).await {
                        return;
                    }
                }
                Ok(Live::Job(j)) => {
                    let Ok(e) = Event::default().event("job").json_data(&j) else {
                        continue;
                    };
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// Sends every event after `after` (moving it on); `false` when the
/// client is gone.
async fn replay(b: &Shared, after: &mut u64, tx: &mpsc::Sender<Event>) -> bool {
    loop {
        let batch = match b.events_after(*after, MAX_LIMIT) {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!("event stream: {}", e.error);
                return true;
            }
        };
        if batch.is_empty() {
            return true;
        }
        for ev in batch {
            let Ok(e) = Event::default()
                .id(ev.seq.to_string())
                .event(ev.kind.clone())
                .json_data(&ev)
            else {
                continue;
            };
            *after = ev.seq;
            if tx.send(e).await.is_err() {
                return false;
            }
        }
    }
}

/// Every notifier: pending count, last success, last error.
#[utoipa::path(get, path = "/v1/notifiers", responses((status = 200, description = "Every notifier", body = Vec<NotifierView>), (status = 500, description = "Internal error", body = ApiError)))]
pub(crate) async fn notifiers(
    State(b): State<Shared>,
) -> Result<Json<Vec<NotifierView>>, ApiError> {
    Ok(Json(b.notifiers()?))
}

/// Send a test event to one notifier (through its outbox, like any event).
#[utoipa::path(post, path = "/v1/notifiers/{name}/test", params(("name" = String, Path, description = "Notifier name")), responses((status = 202, description = "Test event logged (`detail` names its sequence number)", body = crate::Accepted), (status = 401, description = "Missing or wrong bearer token", body = ApiError), (status = 404, description = "No such notifier", body = ApiError), (status = 500, description = "Internal error", body = ApiError)), security(("bearer" = [])))]
pub(crate) async fn notify_test(
    State(b): State<Shared>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<(axum::http::StatusCode, Json<crate::Accepted>), ApiError> {
    let accepted = b.notify_test(&name).await?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(accepted)))
}
