//! What rebased's notifiers send, and how: each kind's request in its
//! receiver's documented format ([`render`]), the webhook signature
//! ([`signature`]), one delivery ([`Sender::deliver`]) and the retry
//! schedule ([`backoff`]).
//!
//! This crate does no IO of its own but the delivery itself; the durable
//! outbox (which event is next, retry state) lives in the daemon's store,
//! and the daemon reads the secret files and hands their contents in as a
//! [`Secret`], which no `Debug`, `Display` or error ever shows.

use std::fmt;
use std::time::Duration;

use rebased_api::EventView;
use rebased_core::notify::NotifyKind;

mod email;
mod render;

pub use render::{render, summary, Rendered};

/// A secret (a URL with a token, an HMAC key, a password): shown as
/// `<secret>` by `Debug`, never in an error.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `text` (trailing whitespace, a file's newline, dropped).
    pub fn new(text: &str) -> Self {
        Self(text.trim_end().to_owned())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// A notifier with its secrets read: everything a delivery needs.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: NotifyKind,
    /// The receiver's URL (a [`Secret`]: it may hold a token).
    pub url: Option<Secret>,
    /// `webhook`: the HMAC-SHA256 key.
    pub hmac_key: Option<Secret>,
    /// `telegram`: the chat.
    pub chat_id: Option<String>,
    /// `email`: where and how.
    pub email: Option<Email>,
    /// Each request's timeout.
    pub timeout: Duration,
}

/// An email notifier's settings.
#[derive(Debug, Clone)]
pub struct Email {
    /// Implicit TLS (`smtps://`).
    pub implicit_tls: bool,
    /// STARTTLS required (`smtp://` unless `starttls = false`).
    pub starttls: bool,
    /// The server.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The sender.
    pub from: String,
    /// The recipients.
    pub to: Vec<String>,
    /// AUTH user and password.
    pub auth: Option<(String, Secret)>,
    /// Extra trusted CA (PEM), for a server with a private certificate.
    pub ca_pem: Option<Vec<u8>>,
}

/// Why a delivery failed. Never holds a secret: a URL is named by its
/// notifier, not written out.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// No answer within the timeout.
    #[error("notifier {name}: no answer within {timeout:?}")]
    Timeout {
        /// The notifier.
        name: String,
        /// Its timeout.
        timeout: Duration,
    },
    /// The receiver could not be reached.
    #[error("notifier {name}: cannot reach the receiver: {cause}")]
    Unreachable {
        /// The notifier.
        name: String,
        /// The cause, without the URL.
        cause: String,
    },
    /// The receiver answered with an error status.
    #[error("notifier {name}: the receiver answered {status}")]
    Status {
        /// The notifier.
        name: String,
        /// The HTTP status.
        status: u16,
    },
    /// The notifier is not set up right (no URL, an email part missing).
    #[error("notifier {name}: {why}")]
    Setup {
        /// The notifier.
        name: String,
        /// Why.
        why: String,
    },
    /// The mail server refused or failed.
    #[error("notifier {name}: the mail server: {cause}")]
    Mail {
        /// The notifier.
        name: String,
        /// The cause.
        cause: String,
    },
}

/// The retry schedule: 1 s after the first failed attempt, doubling, at
/// most 10 minutes between attempts.
pub fn backoff(failed_attempts: u32) -> Duration {
    let exp = failed_attempts.saturating_sub(1).min(20);
    Duration::from_secs((1u64 << exp).min(600))
}

/// How long an event is retried before it is dropped.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);

/// `sha256=<hex HMAC-SHA256 of body under key>`, the value of
/// `X-Rebased-Signature-256`.
pub fn signature(key: &Secret, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    // HMAC takes a key of any length.
    let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(key.expose().as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(71);
    hex.push_str("sha256=");
    for b in tag.iter() {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// Sends deliveries; one per daemon (its HTTP connections are shared).
#[derive(Clone)]
pub struct Sender {
    http: reqwest::Client,
}

impl Default for Sender {
    fn default() -> Self {
        Self::new()
    }
}

impl Sender {
    /// A sender with its own HTTP client (rustls, the platform's roots).
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .user_agent(concat!("rebased/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self { http }
    }

    /// Delivers `events` (one, for `webhook`; a digest of several for the
    /// other kinds) to `target` as delivery `id`, within its timeout.
    pub async fn deliver(
        &self,
        target: &Target,
        id: &str,
        events: &[EventView],
    ) -> Result<(), DeliveryError> {
        let timeout = target.timeout;
        let attempt = async {
            if target.kind == NotifyKind::Email {
                let Some(email) = &target.email else {
                    return Err(DeliveryError::Setup {
                        name: target.name.clone(),
                        why: "no smtp settings".to_owned(),
                    });
                };
                return email::send(target, email, events).await;
            }
            self.post(target, id, events).await
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(DeliveryError::Timeout {
                name: target.name.clone(),
                timeout,
            }),
        }
    }

    async fn post(
        &self,
        target: &Target,
        id: &str,
        events: &[EventView],
    ) -> Result<(), DeliveryError> {
        let name = &target.name;
        let Some(url) = &target.url else {
            return Err(DeliveryError::Setup {
                name: name.clone(),
                why: "no url".to_owned(),
            });
        };
        let r = render(target, events);
        let url = match &r.path {
            Some(p) => format!("{}{p}", url.expose().trim_end_matches('/')),
            None => url.expose().to_owned(),
        };
        let mut req = self
            .http
            .post(&url)
            .timeout(target.timeout)
            .header(reqwest::header::CONTENT_TYPE, r.content_type);
        if target.kind == NotifyKind::Webhook {
            let kind = events.first().map_or("test", |e| e.kind.as_str());
            req = req
                .header("X-Rebased-Delivery", id)
                .header("X-Rebased-Event", kind);
            if let Some(key) = &target.hmac_key {
                req = req.header("X-Rebased-Signature-256", signature(key, &r.body));
            }
        }
        for (k, v) in &r.headers {
            req = req.header(*k, v);
        }
        let resp = req.body(r.body).send().await.map_err(|e| {
            if e.is_timeout() {
                DeliveryError::Timeout {
                    name: name.clone(),
                    timeout: target.timeout,
                }
            } else {
                DeliveryError::Unreachable {
                    name: name.clone(),
                    // Without the URL: it may hold a token.
                    cause: cause_without_url(&e),
                }
            }
        })?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Status {
                name: name.clone(),
                status: status.as_u16(),
            })
        }
    }
}

/// A reqwest error's cause without the URL it names (reqwest's own
/// `Display` writes the URL, which may hold a token): the chain of its
/// sources, which name the connection's failure only.
fn cause_without_url(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut parts = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    if parts.is_empty() {
        "the request failed".to_owned()
    } else {
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_ten_minutes() {
        let s: Vec<u64> = (1..=12).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(s, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]);
        assert_eq!(backoff(1000).as_secs(), 600);
    }

    #[test]
    fn the_signature_is_githubs_form() {
        // RFC 4231 test case 2.
        let sig = signature(&Secret::new("Jefe"), b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn secrets_do_not_show() {
        let s = Secret::new("https://hooks.slack.com/services/T0/B0/XYZ\n");
        assert_eq!(format!("{s:?}"), "<secret>");
        assert_eq!(s.expose(), "https://hooks.slack.com/services/T0/B0/XYZ");
    }
}
