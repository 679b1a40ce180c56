//! The one HTTP transport every registry request goes through.
//!
//! [`Transport::send`] takes a [`Request`] (method, URL, the token scopes it
//! needs, headers, body) and answers the final [`reqwest::Response`]; on
//! the way it
//!
//! - authenticates as the registry challenges: a bearer token asked for
//!   the request's whole scope set in one token request and cached by
//!   registry + scope set ([`token`]), or basic credentials, remembered per
//!   registry so later requests send them up front;
//! - retries connection errors and 5xx with backoff, and waits out a `429`
//!   whose `Retry-After` is at most a minute, when the request can be
//!   safely repeated (see [`Body`]); a registry that stayed unreachable
//!   through every attempt gets one attempt per request for the next
//!   30 s (a dead registry then fails a queue of jobs at once, not after
//!   each one's backoff);
//! - uses the registry's own HTTP client: its `ca_file` is trusted for that
//!   registry only, never pooled across hosts.
//!
//! The callers (manifests, tags, blobs) turn a final status they did not
//! expect into an error with [`status_error`] and read bodies with
//! [`read_capped`], so nothing is buffered without bound.

mod capped;
pub(crate) mod token;

pub(crate) use capped::read_capped;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rebased_core::config::RegistryConfig;
use rebased_core::ImageRef;
use reqwest::{Method, Response, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use crate::auth::{self, Credentials};
use crate::error::{chain, error, ErrorKind, RegistryError};
use token::{fetch_token, parse_challenge, Challenge, Scopes, TokenCache, TokenRequest};

/// What a registry request was for, from its method and path: the labels
/// of the request counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestKind {
    /// `HEAD` of a manifest (a poll, a tag lookup).
    ManifestHead,
    /// `GET` of a manifest.
    ManifestGet,
    /// `PUT` of a manifest (a version tag, a floating tag's move).
    ManifestPut,
    /// A tag list page.
    Tags,
    /// `HEAD` of a blob (is it there).
    BlobHead,
    /// `GET` of a blob (a base layer, a config).
    BlobGet,
    /// A cross-repository mount.
    BlobMount,
    /// An upload: start, chunk or finish.
    BlobUpload,
    /// A token request.
    Token,
    /// Anything else.
    Other,
}

impl RequestKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ManifestHead => "manifest_head",
            Self::ManifestGet => "manifest_get",
            Self::ManifestPut => "manifest_put",
            Self::Tags => "tags",
            Self::BlobHead => "blob_head",
            Self::BlobGet => "blob_get",
            Self::BlobMount => "blob_mount",
            Self::BlobUpload => "blob_upload",
            Self::Token => "token",
            Self::Other => "other",
        }
    }

    /// The kind of `method url` (a distribution API URL).
    fn of(method: &Method, url: &str) -> Self {
        let path = url.split('?').next().unwrap_or(url);
        let query = url.split_once('?').map_or("", |(_, q)| q);
        if path.contains("/manifests/") {
            match *method {
                Method::HEAD => Self::ManifestHead,
                Method::GET => Self::ManifestGet,
                Method::PUT => Self::ManifestPut,
                _ => Self::Other,
            }
        } else if path.ends_with("/tags/list") {
            Self::Tags
        } else if path.contains("/blobs/uploads") {
            if query.contains("mount=") {
                Self::BlobMount
            } else {
                Self::BlobUpload
            }
        } else if path.contains("/blobs/") {
            match *method {
                Method::HEAD => Self::BlobHead,
                Method::GET => Self::BlobGet,
                _ => Self::Other,
            }
        } else {
            Self::Other
        }
    }
}

/// How a registry request ended: the class of its status, or no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// 2xx or 3xx.
    Ok,
    /// 401 or 403.
    Unauthorized,
    /// 404.
    NotFound,
    /// 429.
    RateLimited,
    /// Another 4xx or a 5xx.
    Error,
    /// No response: refused, timed out, TLS.
    Unreachable,
}

impl RequestOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::RateLimited => "rate_limited",
            Self::Error => "error",
            Self::Unreachable => "unreachable",
        }
    }

    fn of(status: StatusCode) -> Self {
        match status.as_u16() {
            200..=399 => Self::Ok,
            401 | 403 => Self::Unauthorized,
            404 => Self::NotFound,
            429 => Self::RateLimited,
            _ => Self::Error,
        }
    }
}

/// Told of every HTTP request the transport sends (each attempt, each
/// token request), for metrics: the one place that sees them all.
pub trait Observer: Send + Sync {
    /// A request to `registry` of `kind` ended with `outcome`.
    fn request(&self, registry: &str, kind: RequestKind, outcome: RequestOutcome);
}

/// Attempts per request (the first plus retries).
const ATTEMPTS: u32 = 4;
/// Longest `Retry-After` honoured before giving up for this round.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Largest error body read to say why a request failed.
const MAX_ERROR_BODY: usize = 64 << 10;
/// How long credentials are reused before they are looked up again.
const CREDS_TTL: Duration = Duration::from_secs(60);
/// How long a registry that could not be reached after every attempt is
/// tried only once per request (so a dead registry fails a queue of jobs
/// fast instead of each waiting out the backoff).
const DOWN_FOR: Duration = Duration::from_secs(30);

type CredsResult = Result<Option<Credentials>, String>;

/// A request body, and whether the request may be sent again.
pub(crate) enum Body {
    /// No body: the request is repeated on connection errors, 5xx and 429.
    Empty,
    /// Bytes in memory: sent again unchanged, so repeated like `Empty`.
    Bytes(Bytes),
    /// A stream (a blob copied between registries): it can be sent only
    /// once, so a request with it is never retried, whatever the failure;
    /// the failure goes to the caller (a build retries as a whole).
    Stream(reqwest::Body),
}

/// One request to a registry.
pub(crate) struct Request {
    method: Method,
    url: String,
    scopes: Scopes,
    headers: Vec<(&'static str, String)>,
    /// `None` once a stream body was sent.
    body: Option<Body>,
}

impl Request {
    /// `method url`, needing the token scopes `scopes`.
    pub(crate) fn new(method: Method, url: String, scopes: Scopes) -> Self {
        Self {
            method,
            url,
            scopes,
            headers: Vec::new(),
            body: Some(Body::Empty),
        }
    }

    pub(crate) fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub(crate) fn body(mut self, body: Body) -> Self {
        self.body = Some(body);
        self
    }

    /// The next attempt at this request with `auth`, and whether it may be
    /// sent again after this one (a stream is taken by its first attempt).
    fn attempt(
        &mut self,
        client: &reqwest::Client,
        auth: Option<&str>,
    ) -> (reqwest::RequestBuilder, bool) {
        let mut rb = client.request(self.method.clone(), &self.url);
        for (name, value) in &self.headers {
            rb = rb.header(*name, value);
        }
        if let Some(a) = auth {
            rb = rb.header("Authorization", a);
        }
        match self.body.take() {
            Some(Body::Empty) | None => {
                self.body = Some(Body::Empty);
                (rb, true)
            }
            Some(Body::Bytes(b)) => {
                self.body = Some(Body::Bytes(b.clone()));
                (rb.body(b), true)
            }
            Some(Body::Stream(s)) => (rb.body(s), false),
        }
    }
}

/// Where requests to one registry go, and as whom.
struct Endpoint<'a> {
    client: &'a reqwest::Client,
    creds: Option<Credentials>,
}

/// The HTTP side of [`crate::Registry`]: per-registry clients, credentials,
/// tokens and concurrency bounds.
pub(crate) struct Transport {
    config: BTreeMap<String, RegistryConfig>,
    /// Per-host HTTP clients (extra CA); `Err` says why a host's TLS setup
    /// failed, reported on every request to it.
    clients: BTreeMap<String, Result<reqwest::Client, String>>,
    default_client: reqwest::Client,
    tokens: TokenCache,
    limits: Mutex<BTreeMap<String, Arc<Semaphore>>>,
    creds: Mutex<BTreeMap<String, (Instant, CredsResult)>>,
    /// Registries that could not be reached after every attempt, and when.
    down: Mutex<BTreeMap<String, Instant>>,
    /// Told of every request.
    observer: Option<Arc<dyn Observer>>,
}

/// An HTTP client trusting the system roots and, when given, `ca_file`.
/// `timeout` bounds connecting and each read, not a whole transfer (a large
/// blob may take longer than one timeout to stream).
fn http_client(
    ca_file: Option<&std::path::Path>,
    timeout: Duration,
) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .read_timeout(timeout)
        .user_agent(concat!("rebased/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        b = b.add_root_certificate(cert);
    }
    b.build().map_err(|e| format!("HTTP client: {e}"))
}

impl Transport {
    pub(crate) fn new(registries: &BTreeMap<String, RegistryConfig>, timeout: Duration) -> Self {
        let clients = registries
            .iter()
            .map(|(h, c)| (h.clone(), http_client(c.ca_file.as_deref(), timeout)))
            .collect();
        Self {
            config: registries.clone(),
            clients,
            default_client: http_client(None, timeout).unwrap_or_default(),
            tokens: TokenCache::default(),
            limits: Mutex::new(BTreeMap::new()),
            creds: Mutex::new(BTreeMap::new()),
            down: Mutex::new(BTreeMap::new()),
            observer: None,
        }
    }

    /// Tells `observer` of every request from now on.
    pub(crate) fn observe(&mut self, observer: Arc<dyn Observer>) {
        self.observer = Some(observer);
    }

    /// Tells the observer of one request.
    pub(crate) fn observed(&self, registry: &str, kind: RequestKind, outcome: RequestOutcome) {
        if let Some(o) = &self.observer {
            o.request(registry, kind, outcome);
        }
    }

    /// Whether `host` could not be reached within the last [`DOWN_FOR`].
    fn is_down(&self, host: &str) -> bool {
        let down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        down.get(host).is_some_and(|at| at.elapsed() < DOWN_FOR)
    }

    /// Records whether `host` answered at all.
    fn mark(&self, host: &str, reachable: bool) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if reachable {
            down.remove(host);
        } else {
            down.insert(host.to_owned(), Instant::now());
        }
    }

    /// `http://` or `https://` and the API host of `r`'s registry.
    pub(crate) fn base_url(&self, r: &ImageRef) -> String {
        let insecure = self.config.get(r.registry()).is_some_and(|c| c.insecure);
        let scheme = if insecure { "http" } else { "https" };
        format!("{scheme}://{}", r.api_host())
    }

    /// `BASE/v2/REPOSITORY/TAIL` for `r`.
    pub(crate) fn url(&self, r: &ImageRef, tail: &str) -> String {
        format!("{}/v2/{}/{tail}", self.base_url(r), r.repository())
    }

    /// Credentials for `host` (see [`crate::Registry::credentials`]).
    pub(crate) fn credentials(&self, host: &str) -> CredsResult {
        if let Some(c) = self.cached_credentials(host) {
            return c;
        }
        let c = auth::credentials(host, self.config.get(host));
        self.remember_credentials(host, &c);
        c
    }

    fn cached_credentials(&self, host: &str) -> Option<CredsResult> {
        self.creds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            .filter(|(at, _)| at.elapsed() < CREDS_TTL)
            .map(|(_, c)| c.clone())
    }

    fn remember_credentials(&self, host: &str, c: &CredsResult) {
        self.creds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.to_owned(), (Instant::now(), c.clone()));
    }

    /// Like [`Transport::credentials`], but a credential helper (a
    /// program) runs off the async workers.
    async fn credentials_async(&self, host: &str) -> CredsResult {
        if let Some(c) = self.cached_credentials(host) {
            return c;
        }
        let (h, config) = (host.to_owned(), self.config.get(host).cloned());
        let c = tokio::task::spawn_blocking(move || auth::credentials(&h, config.as_ref()))
            .await
            .unwrap_or_else(|e| Err(format!("credential lookup failed: {e}")));
        self.remember_credentials(host, &c);
        c
    }

    fn permit_pool(&self, host: &str) -> Arc<Semaphore> {
        let mut l = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.config.get(host).map_or(8, |c| c.concurrency.max(1));
        Arc::clone(
            l.entry(host.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(n))),
        )
    }

    /// Permits of each host's concurrency pool (`concurrency` requests in
    /// flight), taken in a fixed order and once per host, so two transfers
    /// in opposite directions cannot deadlock. Held by the caller for a
    /// whole operation.
    pub(crate) async fn permits(&self, hosts: &[&str]) -> Vec<OwnedSemaphorePermit> {
        let mut hosts = hosts.to_vec();
        hosts.sort_unstable();
        hosts.dedup();
        let mut out = Vec::with_capacity(hosts.len());
        for host in hosts {
            // The pools are never closed, so acquiring cannot fail.
            if let Ok(p) = self.permit_pool(host).acquire_owned().await {
                out.push(p);
            }
        }
        out
    }

    /// The client and credentials for `r`'s registry.
    async fn endpoint(&self, r: &ImageRef) -> Result<Endpoint<'_>, RegistryError> {
        let host = r.registry();
        let creds = self
            .credentials_async(host)
            .await
            .map_err(|d| error(r, ErrorKind::Unauthorized, d))?;
        let client = match self.clients.get(host) {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                return Err(error(r, ErrorKind::Unreachable, format!("TLS setup: {e}")))
            }
            None => &self.default_client,
        };
        Ok(Endpoint { client, creds })
    }

    /// Sends `req` about `target` (the reference errors name), as the
    /// module documentation describes, and answers the final response
    /// whatever its status: success, a 401 after the challenge was
    /// answered, a 404, a 5xx or 429 left after the retries. Only a
    /// request that never got a response is an error here.
    pub(crate) async fn send(
        &self,
        target: &ImageRef,
        mut req: Request,
    ) -> Result<Response, RegistryError> {
        let ep = self.endpoint(target).await?;
        let mut auth = self.cached_authorization(target.registry(), &req.scopes, ep.creds.as_ref());
        let mut challenged = false;
        let mut attempt = 0;
        // A registry found unreachable a moment ago gets one attempt.
        let connect_attempts = if self.is_down(target.registry()) {
            1
        } else {
            ATTEMPTS
        };
        let kind = RequestKind::of(&req.method, &req.url);
        let registry = target.registry();
        loop {
            attempt += 1;
            let (rb, repeatable) = req.attempt(ep.client, auth.as_deref());
            let sent = rb.send().await;
            self.observed(
                registry,
                kind,
                sent.as_ref().map_or(RequestOutcome::Unreachable, |r| {
                    RequestOutcome::of(r.status())
                }),
            );
            let resp = match sent {
                Ok(resp) => resp,
                Err(e) if repeatable && attempt < connect_attempts => {
                    debug!(method = %req.method, url = %req.url, attempt, error = %chain(&e), "retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    continue;
                }
                Err(e) => {
                    if repeatable {
                        self.mark(target.registry(), false);
                    }
                    return Err(unreachable(target, &e));
                }
            };
            self.mark(target.registry(), true);
            if resp.status() == StatusCode::UNAUTHORIZED && !challenged && repeatable {
                challenged = true;
                let answer = self
                    .answer_challenge(target, &resp, &req.scopes, ep.client, ep.creds.as_ref())
                    .await?;
                // A 401 without a challenge we can answer is final.
                let Some(answer) = answer else {
                    return Ok(resp);
                };
                auth = Some(answer);
                attempt -= 1; // the challenge round does not count
                continue;
            }
            match retry_wait(&resp, attempt).filter(|_| repeatable) {
                Some(wait) => {
                    let status = resp.status();
                    debug!(method = %req.method, url = %req.url, attempt, %status, wait_ms = wait.as_millis() as u64, "retrying");
                    tokio::time::sleep(wait).await;
                }
                None => return Ok(resp),
            }
        }
    }

    /// The `Authorization` a first attempt carries: a cached token for
    /// this scope set, else basic credentials when the registry asked for
    /// them before (so a check stays one request).
    fn cached_authorization(
        &self,
        registry: &str,
        scopes: &Scopes,
        creds: Option<&Credentials>,
    ) -> Option<String> {
        if let Some(t) = self.tokens.get(registry, scopes) {
            return Some(format!("Bearer {t}"));
        }
        creds
            .filter(|_| self.tokens.wants_basic(registry))
            .map(|c| format!("Basic {}", c.basic()))
    }

    /// The `Authorization` that answers the 401 `resp`: a token for
    /// `scopes` (and whatever the challenge names), or basic credentials;
    /// `None` when `resp` carries no challenge we know.
    async fn answer_challenge(
        &self,
        target: &ImageRef,
        resp: &Response,
        scopes: &Scopes,
        client: &reqwest::Client,
        creds: Option<&Credentials>,
    ) -> Result<Option<String>, RegistryError> {
        let registry = target.registry();
        let header = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        match parse_challenge(header) {
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let want = TokenRequest {
                    realm: &realm,
                    service: service.as_deref(),
                    scopes,
                    challenged: scope.as_deref(),
                };
                let fetched = fetch_token(client, target, &want, creds).await;
                self.observed(
                    registry,
                    RequestKind::Token,
                    match &fetched {
                        Ok(_) => RequestOutcome::Ok,
                        Err(e) if e.kind == ErrorKind::Unauthorized => RequestOutcome::Unauthorized,
                        Err(e) if e.kind == ErrorKind::Unreachable => RequestOutcome::Unreachable,
                        Err(_) => RequestOutcome::Error,
                    },
                );
                let (token, ttl) = fetched?;
                self.tokens.put(registry, scopes, token.clone(), ttl);
                Ok(Some(format!("Bearer {token}")))
            }
            Some(Challenge::Basic) => match creds {
                Some(c) => {
                    self.tokens.remember_basic(registry);
                    Ok(Some(format!("Basic {}", c.basic())))
                }
                None => Err(error(
                    target,
                    ErrorKind::Unauthorized,
                    "the registry wants credentials (basic auth) and none are configured",
                )),
            },
            None => {
                debug!(%target, header, "401 without a usable challenge");
                Ok(None)
            }
        }
    }

    /// Whether requests to `r`'s registry carry credentials, as far as is
    /// known without looking them up again (no credential helper runs
    /// here: this is called on async workers to word an error).
    pub(crate) fn has_credentials(&self, r: &ImageRef) -> bool {
        let host = r.registry();
        match self.cached_credentials(host) {
            Some(c) => matches!(c, Ok(Some(_))),
            None => self.config.get(host).is_some_and(|c| c.username.is_some()),
        }
    }
}

fn unreachable(target: &ImageRef, e: &reqwest::Error) -> RegistryError {
    let cause = chain(e);
    if speaks_plain_http(&cause) {
        let host = target.registry();
        return error(
            target,
            ErrorKind::Unreachable,
            format!("{host} answers plain http: set `insecure = true` under [registries.\"{host}\"] (TLS handshake: {cause})"),
        );
    }
    let what = if e.is_timeout() {
        "timed out"
    } else {
        "cannot connect"
    };
    error(target, ErrorKind::Unreachable, format!("{what}: {cause}"))
}

/// True when a TLS handshake failed because the server answered in plain
/// http (rustls reads the reply as a record of an invalid content type).
fn speaks_plain_http(cause: &str) -> bool {
    cause.contains("InvalidContentType") || cause.contains("corrupt message")
}

/// How long to wait before attempt `attempt + 1` after `resp`: a 5xx
/// backs off, a 429 waits as its `Retry-After` says (when it says at most
/// [`MAX_RETRY_AFTER`]); `None` when `resp` is final.
fn retry_wait(resp: &Response, attempt: u32) -> Option<Duration> {
    if attempt >= ATTEMPTS {
        return None;
    }
    let status = resp.status();
    if status == StatusCode::TOO_MANY_REQUESTS {
        retry_after(resp).filter(|w| *w <= MAX_RETRY_AFTER)
    } else if status.is_server_error() {
        Some(backoff(attempt))
    } else {
        None
    }
}

fn retry_after(resp: &Response) -> Option<Duration> {
    resp.headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

/// The error for a final response whose status the caller did not expect:
/// 401/403 `Unauthorized`, 404 `NotFound` (`what` says what is missing),
/// 429 `RateLimited` (with the `Retry-After` it sent), anything else
/// `Protocol`; the registry's error codes and messages, when it sent any,
/// are appended.
pub(crate) async fn status_error(
    target: &ImageRef,
    resp: Response,
    anonymous: bool,
    what: &str,
) -> RegistryError {
    let status = resp.status();
    let wait = retry_after(&resp);
    let body = read_capped(resp, MAX_ERROR_BODY).await.unwrap_or_default();
    let why = registry_errors(&body);
    let why = if why.is_empty() {
        String::new()
    } else {
        format!(" ({why})")
    };
    let (kind, detail) = match status.as_u16() {
        401 | 403 => {
            let who = if anonymous {
                "access denied to anonymous requests"
            } else {
                "credentials refused"
            };
            (ErrorKind::Unauthorized, format!("{status}: {who}{why}"))
        }
        404 => (ErrorKind::NotFound, format!("{status}: {what}{why}")),
        429 => {
            let after = wait.map_or("no Retry-After".to_owned(), |w| {
                format!("retry after {} s", w.as_secs())
            });
            (
                ErrorKind::RateLimited,
                format!("429 too many requests ({after}){why}"),
            )
        }
        _ => (
            ErrorKind::Protocol,
            format!("unexpected status {status}{why}"),
        ),
    };
    error(target, kind, detail)
}

/// `CODE: message` of each entry of a distribution error body
/// (`{"errors": [{"code": ..., "message": ...}]}`), joined with `; `;
/// empty for any other body.
pub(crate) fn registry_errors(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Envelope {
        #[serde(default)]
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let Ok(envelope) = serde_json::from_slice::<Envelope>(body) else {
        return String::new();
    };
    envelope
        .errors
        .iter()
        .map(|e| format!("{}: {}", e.code, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `v` escaped for a URL query (RFC 3986 unreserved characters kept).
pub(crate) fn query_escape(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// 0.5 s, 1 s, 2 s, ... after the first, second, third failed attempt.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250 << attempt.min(4))
}

/// `ratelimit-remaining: 76;w=21600` -> 76.
pub fn parse_rate_limit(v: &str) -> Option<u64> {
    v.split(';').next()?.trim().parse().ok()
}

/// `Retry-After` as seconds or as an HTTP date (RFC 9110).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_has_its_kind() {
        let u = "http://r:5000/v2/a/b";
        let k = |m: Method, tail: &str| RequestKind::of(&m, &format!("{u}/{tail}"));
        assert_eq!(
            k(Method::HEAD, "manifests/latest"),
            RequestKind::ManifestHead
        );
        assert_eq!(
            k(Method::GET, "manifests/sha256:ab"),
            RequestKind::ManifestGet
        );
        assert_eq!(k(Method::PUT, "manifests/1.0.0"), RequestKind::ManifestPut);
        assert_eq!(k(Method::GET, "tags/list?n=1000"), RequestKind::Tags);
        assert_eq!(k(Method::HEAD, "blobs/sha256:ab"), RequestKind::BlobHead);
        assert_eq!(k(Method::GET, "blobs/sha256:ab"), RequestKind::BlobGet);
        assert_eq!(
            k(Method::POST, "blobs/uploads/?mount=sha256:ab&from=x/y"),
            RequestKind::BlobMount
        );
        assert_eq!(k(Method::POST, "blobs/uploads/"), RequestKind::BlobUpload);
        assert_eq!(
            k(Method::PUT, "blobs/uploads/uuid?digest=sha256:ab"),
            RequestKind::BlobUpload
        );
        assert_eq!(
            RequestOutcome::of(StatusCode::TEMPORARY_REDIRECT),
            RequestOutcome::Ok
        );
        assert_eq!(
            RequestOutcome::of(StatusCode::FORBIDDEN),
            RequestOutcome::Unauthorized
        );
        assert_eq!(
            RequestOutcome::of(StatusCode::TOO_MANY_REQUESTS),
            RequestOutcome::RateLimited
        );
        assert_eq!(
            RequestOutcome::of(StatusCode::BAD_GATEWAY),
            RequestOutcome::Error
        );
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        let soon = std::time::SystemTime::now() + Duration::from_secs(30);
        let d = parse_retry_after(&httpdate::fmt_http_date(soon)).expect("date");
        assert!(
            d <= Duration::from_secs(30) && d >= Duration::from_secs(28),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "past dates: now"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn rate_limit_header() {
        assert_eq!(parse_rate_limit("76;w=21600"), Some(76));
        assert_eq!(parse_rate_limit("100"), Some(100));
        assert_eq!(parse_rate_limit("x"), None);
    }

    #[test]
    fn registry_error_bodies() {
        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":[]}]}"#;
        assert_eq!(
            registry_errors(body),
            "UNAUTHORIZED: authentication required"
        );
        assert_eq!(registry_errors(b"<html>"), "");
    }
}
