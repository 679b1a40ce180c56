//! `POST /v1/webhooks/{source}` and `GET /metrics`.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rebased_watcher::webhook::SOURCES;

use crate::{constant_time_eq, ApiError, Shared, WEBHOOK_BODY_LIMIT};

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub(crate) async fn metrics(State(b): State<Shared>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        b.metrics().render(),
    )
        .into_response()
}

pub(crate) type HookState = (Shared, Arc<Option<String>>);

/// How long a delivery may take to send its body.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn unauthorized() -> Response {
    ApiError {
        error: "unauthorized: send the webhook token as Authorization: Bearer, ?token=, X-Gitlab-Token, or sign with X-Hub-Signature-256 or X-Gitea-Signature".to_owned(),
        detail: None,
        status: 401,
    }
    .into_response()
}

/// Webhook deliveries handled at once; more get 503 with `Retry-After`.
pub const MAX_IN_FLIGHT: usize = 32;
static IN_FLIGHT: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_IN_FLIGHT);

/// A registry webhook: checks the watched references it names, now.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{source}",
    params(
        ("source" = String, Path, description = "distribution, dockerhub, harbor, quay, github, acr, gitlab, gitea or generic"),
        ("token" = Option<String>, Query, description = "The webhook token, if not sent as a bearer token or HMAC")
    ),
    request_body(content = Object, description = "The registry's payload (at most 1 MiB)"),
    responses(
        (status = 202, description = "Accepted or ignored", body = crate::WebhookReply),
        (status = 400, description = "Malformed payload", body = ApiError),
        (status = 401, description = "Bad token or signature", body = ApiError),
        (status = 404, description = "Unknown source", body = ApiError),
        (status = 408, description = "Body not sent within 10 s", body = ApiError),
        (status = 413, description = "Body over 1 MiB", body = ApiError),
        (status = 503, description = "Too many deliveries in flight, or stopping", body = ApiError)
    )
)]
pub(crate) async fn webhook(
    State((b, token)): State<HookState>,
    Path(source): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    // Unknown sources share one label: the path segment is the caller's.
    let label = if SOURCES.contains(&source.as_str()) {
        source.as_str()
    } else {
        "unknown"
    };
    let count = |outcome: &str| {
        b.metrics().inc(
            "rebased_webhook_deliveries_total",
            &[("source", label), ("outcome", outcome)],
        );
    };
    // Without a signature to check, the token is checked before the body is
    // read, so unauthenticated senders hold nothing. Only GitHub signs its
    // deliveries; elsewhere the header does not put off the token check.
    let signed = (source == "github" && headers.contains_key("x-hub-signature-256"))
        || (source == "gitea"
            && (headers.contains_key("x-gitea-signature")
                || headers.contains_key("x-forgejo-signature")));
    if let Some(want) = token.as_deref() {
        if !signed && !authorized(want, query.as_deref(), &headers, b"") {
            count("unauthorized");
            return unauthorized();
        }
    }
    if !SOURCES.contains(&source.as_str()) {
        count("unknown_source");
        return ApiError::not_found(format!(
            "webhook source {source:?} (known: {})",
            SOURCES.join(", ")
        ))
        .into_response();
    }
    // Bounded deliveries in flight (each may hold up to the body limit).
    let Ok(_permit) = IN_FLIGHT.try_acquire() else {
        count("busy");
        let mut r = ApiError::unavailable(format!(
            "more than {MAX_IN_FLIGHT} webhook deliveries in flight; retry shortly"
        ))
        .into_response();
        r.headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        return r;
    };
    let read =
        tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, WEBHOOK_BODY_LIMIT)).await;
    let bytes = match read {
        Ok(Ok(b)) => b,
        Err(_) => {
            count("timeout");
            return ApiError {
                error: format!(
                    "webhook body not received within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
                detail: None,
                status: 408,
            }
            .into_response();
        }
        Ok(Err(_)) => {
            count("too_large");
            return ApiError {
                error: format!("webhook body larger than {WEBHOOK_BODY_LIMIT} bytes"),
                detail: None,
                status: 413,
            }
            .into_response();
        }
    };
    // A signed delivery: the signature is over the body.
    if let (Some(want), true) = (token.as_deref(), signed) {
        if !authorized(want, query.as_deref(), &headers, &bytes) {
            count("unauthorized");
            return unauthorized();
        }
    }
    let event = [
        "x-github-event",
        "x-gitlab-event",
        "x-gitea-event",
        "x-forgejo-event",
    ]
    .iter()
    .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()));
    if rebased_watcher::push::is_push(&source, event, &bytes) {
        // A git host's push: the repository and ref it names are checked.
        let push = match rebased_watcher::push::parse(&source, event, &bytes) {
            Ok(Some(p)) => p,
            Ok(None) => {
                count("ignored");
                let reply = crate::WebhookReply {
                    status: "ignored".to_owned(),
                    references: Vec::new(),
                    ignored: vec![format!(
                        "{source} event {} is no push",
                        event.unwrap_or("-")
                    )],
                };
                return (StatusCode::ACCEPTED, Json(reply)).into_response();
            }
            Err(e) => {
                count("malformed");
                return ApiError::bad_request(format!("malformed {source} push: {e}"))
                    .into_response();
            }
        };
        return match b.source_webhook(&source, push) {
            Ok(reply) => {
                count(&reply.status);
                (StatusCode::ACCEPTED, Json(reply)).into_response()
            }
            Err(e) => ApiError::from(e).into_response(),
        };
    }
    let references = match rebased_watcher::webhook::parse(&source, event, &bytes) {
        Ok(r) => r,
        Err(e) => {
            count("malformed");
            return ApiError::bad_request(format!("malformed {source} payload: {e}"))
                .into_response();
        }
    };
    match b.webhook(&source, references) {
        Ok(reply) => {
            count(&reply.status);
            (StatusCode::ACCEPTED, Json(reply)).into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The webhook token as bearer, as `?token=`, or as the HMAC key of GitHub's
/// `X-Hub-Signature-256` over the raw body; all compared in constant time.
pub(crate) fn authorized(
    want: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> bool {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer.is_some_and(|t| constant_time_eq(t.as_bytes(), want.as_bytes())) {
        return true;
    }
    let from_query = query.and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| percent_decode(v))
    });
    if from_query.is_some_and(|t| constant_time_eq(t.as_bytes(), want.as_bytes())) {
        return true;
    }
    // GitLab sends the secret token as it is.
    let gitlab = headers.get("x-gitlab-token").and_then(|v| v.to_str().ok());
    if gitlab.is_some_and(|t| constant_time_eq(t.as_bytes(), want.as_bytes())) {
        return true;
    }
    // Gitea and Forgejo sign the body: HMAC-SHA256, hex, no prefix.
    let gitea = ["x-gitea-signature", "x-forgejo-signature"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .and_then(hex_decode);
    if let Some(sig) = gitea {
        return hmac_ok(want, body, &sig);
    }
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        .and_then(hex_decode);
    let Some(sig) = signature else { return false };
    hmac_ok(want, body, &sig)
}

/// Whether `sig` is the HMAC-SHA256 of `body` under `key` (constant time).
fn hmac_ok(key: &str, body: &[u8], sig: &[u8]) -> bool {
    use hmac::{KeyInit, Mac};
    match hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()) {
        Ok(mut mac) => {
            mac.update(body);
            mac.verify_slice(sig).is_ok()
        }
        Err(_) => false,
    }
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| s.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(key: &str, body: &[u8]) -> String {
        use hmac::{KeyInit, Mac};
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("any key");
        mac.update(body);
        let bytes = mac.finalize().into_bytes();
        format!(
            "sha256={}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header"));
        }
        h
    }

    #[test]
    fn bearer_query_and_hmac() {
        let body = br#"{"reference": "x"}"#;
        assert!(authorized(
            "s3cret",
            None,
            &headers(&[("authorization", "Bearer s3cret")]),
            body
        ));
        assert!(!authorized(
            "s3cret",
            None,
            &headers(&[("authorization", "Bearer nope")]),
            body
        ));
        assert!(authorized(
            "s3 cret",
            Some("a=1&token=s3%20cret"),
            &HeaderMap::new(),
            body
        ));
        assert!(!authorized(
            "s3cret",
            Some("token=s3cre"),
            &HeaderMap::new(),
            body
        ));
        let good = sign("s3cret", body);
        assert!(authorized(
            "s3cret",
            None,
            &headers(&[("x-hub-signature-256", &good)]),
            body
        ));
        assert!(
            !authorized(
                "s3cret",
                None,
                &headers(&[("x-hub-signature-256", &good)]),
                b"{}"
            ),
            "body changed"
        );
        let wrong_key = sign("other", body);
        assert!(!authorized(
            "s3cret",
            None,
            &headers(&[("x-hub-signature-256", &wrong_key)]),
            body
        ));
        assert!(!authorized(
            "s3cret",
            None,
            &headers(&[("x-hub-signature-256", "sha256=zz")]),
            body
        ));
        assert!(!authorized("s3cret", None, &HeaderMap::new(), body));
    }

    #[test]
    fn gitlab_token_and_gitea_signature() {
        let body = br#"{"ref": "refs/heads/main"}"#;
        assert!(authorized(
            "s3cret",
            None,
            &headers(&[("x-gitlab-token", "s3cret")]),
            body
        ));
        assert!(!authorized(
            "s3cret",
            None,
            &headers(&[("x-gitlab-token", "nope")]),
            body
        ));
        let sig = sign("s3cret", body);
        let hex = sig.trim_start_matches("sha256=");
        for h in ["x-gitea-signature", "x-forgejo-signature"] {
            assert!(
                authorized("s3cret", None, &headers(&[(h, hex)]), body),
                "{h}"
            );
            assert!(
                !authorized("s3cret", None, &headers(&[(h, hex)]), b"{}"),
                "{h}: body changed"
            );
        }
    }
}
