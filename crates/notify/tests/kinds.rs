//! Each kind against a loopback receiver (a real HTTP server, axum) that
//! checks the request against the service's documented payload shape and
//! content type.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::Uri;
use axum::http::{HeaderMap, StatusCode};
use axum::Router;
use rebased_api::EventView;
use rebased_core::notify::NotifyKind;
use rebased_notify::{signature, DeliveryError, Secret, Sender, Target};
use serde_json::Value;

#[derive(Debug, Clone)]
struct Seen {
    uri: String,
    content_type: String,
    headers: HeaderMap,
    body: Bytes,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// A receiver answering every POST with `status` (after `delay`),
/// recording it. Its base URL.
async fn receiver(status: StatusCode, delay: Duration) -> (String, Log) {
    let log: Log = Arc::default();
    async fn take(
        State((log, status, delay)): State<(Log, StatusCode, Duration)>,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> StatusCode {
        log.lock().unwrap().push(Seen {
            uri: uri.to_string(),
            content_type: headers
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default(),
            headers,
            body,
        });
        tokio::time::sleep(delay).await;
        status
    }
    let app = Router::new()
        .fallback(axum::routing::post(take))
        .with_state((Arc::clone(&log), status, delay));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, log)
}

fn event(seq: u64, kind: &str, version: &str) -> EventView {
    serde_json::from_value(serde_json::json!({
        "seq": seq, "type": kind, "time": "2026-12-01T20:00:00Z", "image": "web",
        "version": version, "digest": format!("sha256:{}", "a".repeat(64)),
        "repository": "127.0.0.1:5000/team/web", "previous_version": "1.0.0",
        "reason": {"trigger": "poll", "bases": [{"reference": "127.0.0.1:5000/base:latest",
            "before": format!("sha256:{}", "b".repeat(64)), "after": format!("sha256:{}", "c".repeat(64))}]},
        "job": 7, "log_url": "/v1/jobs/7/log"
    }))
    .unwrap()
}

fn target(kind: NotifyKind, url: &str) -> Target {
    Target {
        name: "n".to_owned(),
        kind,
        url: Some(Secret::new(url)),
        hmac_key: None,
        chat_id: None,
        email: None,
        timeout: Duration::from_secs(5),
    }
}

/// Sends two events (a digest for the chat kinds) and returns what the
/// receiver saw.
async fn send(kind: NotifyKind, path: &str, f: impl FnOnce(&mut Target)) -> Seen {
    let (url, log) = receiver(StatusCode::OK, Duration::ZERO).await;
    let mut t = target(kind, &format!("{url}{path}"));
    f(&mut t);
    let events = [event(41, "published", "1.0.1"), event(42, "held", "1.0.1")];
    let n = if kind == NotifyKind::Webhook { 1 } else { 2 };
    Sender::new()
        .deliver(&t, "log-41", &events[..n])
        .await
        .unwrap();
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one request");
    seen.into_iter().next().unwrap()
}

fn json(s: &Seen) -> Value {
    assert_eq!(s.content_type, "application/json", "{s:?}");
    serde_json::from_slice(&s.body).unwrap()
}

#[tokio::test]
async fn webhook_posts_the_event_document_signed() {
    let s = send(NotifyKind::Webhook, "/hook", |t| {
        t.hmac_key = Some(Secret::new("k"));
    })
    .await;
    let body = json(&s);
    assert_eq!(body["seq"], 41);
    assert_eq!(body["type"], "published");
    assert_eq!(s.headers["x-rebased-delivery"], "log-41");
    assert_eq!(s.headers["x-rebased-event"], "published");
    assert_eq!(
        s.headers["x-rebased-signature-256"].to_str().unwrap(),
        signature(&Secret::new("k"), &s.body)
    );
}

#[tokio::test]
async fn slack_gets_an_incoming_webhook_text() {
    let s = send(NotifyKind::Slack, "/services/T0/B0/X", |_| {}).await;
    assert_eq!(s.uri, "/services/T0/B0/X");
    let body = json(&s);
    let text = body["text"].as_str().unwrap();
    assert!(text.contains("web 1.0.1 published (was 1.0.0)"), "{text}");
    assert!(text.contains("web held"), "a digest of both: {text}");
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
}

#[tokio::test]
async fn discord_gets_content_without_mentions() {
    let s = send(NotifyKind::Discord, "/api/webhooks/1/tok", |_| {}).await;
    let body = json(&s);
    let content = body["content"].as_str().unwrap();
    assert!(content.chars().count() <= 2000);
    assert!(content.contains("published"), "{content}");
    assert_eq!(body["allowed_mentions"]["parse"], serde_json::json!([]));
}

#[tokio::test]
async fn teams_gets_a_message_with_an_adaptive_card() {
    let s = send(NotifyKind::Teams, "/workflows/x", |_| {}).await;
    let body = json(&s);
    assert_eq!(body["type"], "message");
    let att = &body["attachments"][0];
    assert_eq!(
        att["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert!(att["contentUrl"].is_null());
    let card = &att["content"];
    assert_eq!(card["type"], "AdaptiveCard");
    assert_eq!(
        card["$schema"],
        "http://adaptivecards.io/schemas/adaptive-card.json"
    );
    assert!(card["version"].as_str().unwrap().starts_with("1."));
    let blocks = card["body"].as_array().unwrap();
    assert!(blocks.iter().all(|b| b["type"] == "TextBlock"));
    assert_eq!(blocks[0]["text"], "rebased: 2 events");
}

#[tokio::test]
async fn ntfy_gets_a_plain_text_publish_with_a_title() {
    let s = send(NotifyKind::Ntfy, "/rebased-ops", |_| {}).await;
    assert_eq!(s.uri, "/rebased-ops");
    assert!(s.content_type.starts_with("text/plain"), "{s:?}");
    let text = std::str::from_utf8(&s.body).unwrap();
    assert!(text.contains("web 1.0.1 published"), "{text}");
    assert_eq!(s.headers["title"], "rebased: 2 events");
}

#[tokio::test]
async fn gotify_gets_a_message_with_title_and_priority() {
    let s = send(NotifyKind::Gotify, "/message?token=AppTok", |_| {}).await;
    assert_eq!(s.uri, "/message?token=AppTok");
    let body = json(&s);
    assert!(body["title"].is_string());
    assert!(body["message"].as_str().unwrap().contains("published"));
    assert!(body["priority"].is_u64());
}

#[tokio::test]
async fn telegram_gets_send_message_with_the_chat() {
    let s = send(NotifyKind::Telegram, "/bot123:ABC", |t| {
        t.chat_id = Some("-1001234".to_owned());
    })
    .await;
    assert_eq!(s.uri, "/bot123:ABC/sendMessage");
    let body = json(&s);
    assert_eq!(body["chat_id"], "-1001234");
    let text = body["text"].as_str().unwrap();
    assert!(
        text.chars().count() <= 4096 && text.contains("published"),
        "{text}"
    );
}

#[tokio::test]
async fn failures_and_timeouts_never_show_the_url() {
    let (url, _) = receiver(StatusCode::INTERNAL_SERVER_ERROR, Duration::ZERO).await;
    let t = target(NotifyKind::Slack, &format!("{url}/services/SECRET-TOKEN"));
    let e = Sender::new()
        .deliver(&t, "x", &[event(1, "published", "1.0.1")])
        .await
        .unwrap_err();
    assert!(
        matches!(e, DeliveryError::Status { status: 500, .. }),
        "{e}"
    );
    assert!(!format!("{e} {e:?}").contains("SECRET-TOKEN"), "{e:?}");

    let (url, _) = receiver(StatusCode::OK, Duration::from_secs(5)).await;
    let mut t = target(NotifyKind::Webhook, &format!("{url}/SECRET-TOKEN"));
    t.timeout = Duration::from_millis(300);
    let e = Sender::new()
        .deliver(&t, "x", &[event(1, "published", "1.0.1")])
        .await
        .unwrap_err();
    assert!(matches!(e, DeliveryError::Timeout { .. }), "{e}");

    // Nothing listens there.
    let t = target(NotifyKind::Webhook, "http://127.0.0.1:9/SECRET-TOKEN");
    let e = Sender::new()
        .deliver(&t, "x", &[event(1, "published", "1.0.1")])
        .await
        .unwrap_err();
    assert!(matches!(e, DeliveryError::Unreachable { .. }), "{e}");
    assert!(!format!("{e} {e:?}").contains("SECRET-TOKEN"), "{e:?}");
}
