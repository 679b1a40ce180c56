//! `GET /`: the dashboard, from assets compiled into the binary
//! (`crates/api/assets`: one HTML page, one stylesheet, one plain script).
//! Nothing is fetched from elsewhere: no CDN, fonts or external scripts.
//! The page reads the same JSON API as every other client, and writes only
//! with the API token it asks for (kept in `sessionStorage`, sent as
//! `Authorization: Bearer`): no cookies, so a foreign page cannot make the
//! browser act.

use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("../assets/index.html");
const STYLE: &str = include_str!("../assets/app.css");
const SCRIPT: &str = include_str!("../assets/app.js");

/// Who may load what: only this origin's script, style and API.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body,
    )
}

/// The dashboard's routes (stateless: the page reads the API).
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/assets/app.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// issue 19: under 200 KB in all, and nothing loaded from elsewhere.
    #[test]
    fn assets_are_small_and_local() {
        let total = INDEX.len() + STYLE.len() + SCRIPT.len();
        assert!(total < 200 * 1024, "{total} bytes");
        for (name, text) in [
            ("index.html", INDEX),
            ("app.css", STYLE),
            ("app.js", SCRIPT),
        ] {
            // The SVG namespace is a name, not a place anything is loaded from.
            let text = text.replace("'http://www.w3.org/2000/svg'", "");
            for foreign in ["http://", "https://", "//cdn", "@import", "url(http"] {
                assert!(!text.contains(foreign), "{name} refers to {foreign}");
            }
        }
        assert!(INDEX.contains("src=\"/assets/app.js\""));
        assert!(INDEX.contains("href=\"/assets/app.css\""));
        assert!(!SCRIPT.contains("document.cookie"), "no cookies");
        assert!(SCRIPT.contains("sessionStorage"));
    }
}
