//! Manifest HEAD (and GET when the digest header is missing) spoken directly:
//! the bearer-token and basic challenge flows, a token cache, retries with
//! backoff on connection errors and 5xx, `429` with `Retry-After`, and the
//! `ratelimit-remaining` header Docker Hub sends.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rebased_core::{Digest, ImageRef};
use tracing::debug;

use crate::auth::Credentials;
use crate::{ErrorKind, RegistryError, MANIFEST_MEDIA_TYPES};

/// Attempts per request (the first plus retries).
const ATTEMPTS: u32 = 4;
/// Longest `Retry-After` honoured before giving up for this round.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Largest manifest read into memory.
const MAX_MANIFEST: usize = 4 << 20;

/// What a manifest HEAD tells.
#[derive(Debug, Clone)]
pub struct Head {
    /// The digest.
    pub digest: Digest,
    /// Docker Hub's `ratelimit-remaining`, when sent.
    pub rate_limit_remaining: Option<u64>,
}

/// The cache key under which "this registry wants basic auth" is remembered.
const BASIC: &str = "*basic*";

/// A cached bearer token.
struct Token {
    value: String,
    until: Instant,
}

/// Tokens by (registry, scope).
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<(String, String), Token>>,
}

impl TokenCache {
    fn get(&self, key: &(String, String)) -> Option<String> {
        let t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        t.get(key)
            .filter(|t| t.until > Instant::now())
            .map(|t| t.value.clone())
    }

    fn put(&self, key: (String, String), value: String, ttl: Duration) {
        // `Instant + Duration` panics on overflow: a TTL past what the clock
        // can represent is simply not cached.
        let Some(until) = Instant::now().checked_add(ttl) else {
            return;
        };
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        t.insert(key, Token { value, until });
    }
}

fn err(r: &ImageRef, kind: ErrorKind, detail: impl Into<String>) -> RegistryError {
    RegistryError {
        registry: r.registry().to_owned(),
        reference: r.to_string(),
        kind,
        detail: detail.into(),
    }
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

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Bearer realm=..., service=..., scope=...`.
    Bearer {
        /// Token endpoint.
        realm: String,
        /// `service` parameter.
        service: Option<String>,
        /// `scope` parameter, if the registry names one.
        scope: Option<String>,
    },
    /// `Basic realm=...`.
    Basic,
}

/// Parses a `WWW-Authenticate` header; `None` for anything else.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, rest) = header
        .trim()
        .split_once(char::is_whitespace)
        .unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params: HashMap<String, String> = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (key, after) = s.split_once('=')?;
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (q[..end].to_owned(), &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.insert(key, value);
        s = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge::Bearer {
        realm: params.remove("realm")?,
        service: params.remove("service"),
        scope: params.remove("scope"),
    })
}

/// The URL of a manifest.
pub fn manifest_url(r: &ImageRef, insecure: bool) -> String {
    let scheme = if insecure { "http" } else { "https" };
    let reference = match (r.digest(), r.tag()) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.to_owned(),
        (None, None) => "latest".to_owned(),
    };
    format!(
        "{scheme}://{}/v2/{}/manifests/{reference}",
        r.api_host(),
        r.repository()
    )
}

/// Resolves `r` to a digest with one HEAD (plus a GET if the registry sends
/// no digest header), authenticating as challenged.
pub async fn head(
    http: &reqwest::Client,
    tokens: &TokenCache,
    r: &ImageRef,
    insecure: bool,
    creds: Option<&Credentials>,
) -> Result<Head, RegistryError> {
    request(http, tokens, r, insecure, creds, false)
        .await
        .map(|(h, _)| h)
}

/// GETs the manifest `r` names (bytes capped at 4 MiB, digest checked when
/// `r` is pinned), authenticating as [`head`] does; the bytes as served.
pub async fn get_manifest(
    http: &reqwest::Client,
    tokens: &TokenCache,
    r: &ImageRef,
    insecure: bool,
    creds: Option<&Credentials>,
) -> Result<(Head, Vec<u8>), RegistryError> {
    let (head, fetched) = request(http, tokens, r, insecure, creds, true).await?;
    let fetched = fetched.ok_or_else(|| err(r, ErrorKind::Protocol, "GET manifest: no body"))?;
    Ok((head, fetched))
}

async fn request(
    http: &reqwest::Client,
    tokens: &TokenCache,
    r: &ImageRef,
    insecure: bool,
    creds: Option<&Credentials>,
    get: bool,
) -> Result<(Head, Option<Vec<u8>>), RegistryError> {
    let url = manifest_url(r, insecure);
    let scope = format!("repository:{}:pull", r.repository());
    let key = (r.registry().to_owned(), scope.clone());
    // A registry that wanted basic credentials once gets them up front, so a
    // check stays one request.
    let basic_key = (r.registry().to_owned(), BASIC.to_owned());
    let mut auth: Option<String> = tokens.get(&key).map(|t| format!("Bearer {t}")).or_else(|| {
        tokens
            .get(&basic_key)
            .and(creds)
            .map(|c| format!("Basic {}", c.basic()))
    });
    let mut challenged = false;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut req = if get { http.get(&url) } else { http.head(&url) }
            .header("Accept", MANIFEST_MEDIA_TYPES.join(", "));
        if let Some(a) = &auth {
            req = req.header("Authorization", a);
        }
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(e) => {
                if attempt < ATTEMPTS {
                    backoff(attempt).await;
                    continue;
                }
                let what = if e.is_timeout() {
                    "timed out"
                } else {
                    "cannot connect"
                };
                return Err(err(
                    r,
                    ErrorKind::Unreachable,
                    format!("{what}: {}", chain(&e)),
                ));
            }
        };
        let status = resp.status();
        let rate = resp
            .headers()
            .get("ratelimit-remaining")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_rate_limit);
        match status.as_u16() {
            200..=299 if get => {
                if resp
                    .content_length()
                    .is_some_and(|l| l as usize > MAX_MANIFEST)
                {
                    return Err(err(r, ErrorKind::Protocol, "manifest larger than 4 MiB"));
                }
                let bytes = read_capped(resp, MAX_MANIFEST)
                    .await
                    .map_err(|e| err(r, ErrorKind::Protocol, format!("manifest: {e}")))?;
                let digest = Digest::sha256(&bytes);
                if let Some(want) = r.digest() {
                    if want.algorithm() == "sha256" && want != &digest {
                        return Err(err(
                            r,
                            ErrorKind::Protocol,
                            format!("the registry served a manifest with digest {digest}"),
                        ));
                    }
                }
                debug!(reference = %r, %digest, "GET manifest");
                return Ok((
                    Head {
                        digest,
                        rate_limit_remaining: rate,
                    },
                    Some(bytes),
                ));
            }
            200..=299 => {
                let header = resp
                    .headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let digest = match header {
                    Some(d) => {
                        Digest::parse(&d).map_err(|e| err(r, ErrorKind::Protocol, e.to_string()))?
                    }
                    None => get_digest(http, &url, auth.as_deref(), r).await?,
                };
                debug!(reference = %r, %digest, "HEAD manifest");
                return Ok((
                    Head {
                        digest,
                        rate_limit_remaining: rate,
                    },
                    None,
                ));
            }
            401 if !challenged => {
                challenged = true;
                let header = resp
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                match parse_challenge(&header) {
                    Some(Challenge::Bearer {
                        realm,
                        service,
                        scope: s,
                    }) => {
                        let scope = s.unwrap_or(scope.clone());
                        let (token, ttl) =
                            fetch_token(http, r, &realm, service.as_deref(), &scope, creds).await?;
                        tokens.put(key.clone(), token.clone(), ttl);
                        auth = Some(format!("Bearer {token}"));
                    }
                    Some(Challenge::Basic) => match creds {
                        Some(c) => {
                            tokens.put(basic_key.clone(), String::new(), Duration::from_secs(3600));
                            auth = Some(format!("Basic {}", c.basic()));
                        }
                        None => return Err(err(
                            r,
                            ErrorKind::Unauthorized,
                            "the registry wants credentials (basic auth) and none are configured",
                        )),
                    },
                    None => {
                        return Err(err(
                            r,
                            ErrorKind::Unauthorized,
                            format!("401 with an unusable challenge {header:?}"),
                        ))
                    }
                }
                attempt -= 1; // the challenge round does not count
            }
            401 | 403 => {
                let why = if creds.is_some() {
                    "credentials refused"
                } else {
                    "access denied to anonymous requests"
                };
                return Err(err(r, ErrorKind::Unauthorized, format!("{status}: {why}")));
            }
            404 => {
                return Err(err(
                    r,
                    ErrorKind::NotFound,
                    format!("{status}: no such manifest"),
                ))
            }
            429 => {
                let wait = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after);
                match wait {
                    Some(w) if w <= MAX_RETRY_AFTER && attempt < ATTEMPTS => {
                        debug!(reference = %r, wait_s = w.as_secs(), "429: waiting as Retry-After says");
                        tokio::time::sleep(w).await;
                    }
                    _ => {
                        let after = wait.map_or("no Retry-After".to_owned(), |w| {
                            format!("retry after {} s", w.as_secs())
                        });
                        return Err(err(
                            r,
                            ErrorKind::RateLimited,
                            format!("429 too many requests ({after})"),
                        ));
                    }
                }
            }
            500..=599 if attempt < ATTEMPTS => backoff(attempt).await,
            _ => {
                return Err(err(
                    r,
                    ErrorKind::Protocol,
                    format!("unexpected status {status}"),
                ))
            }
        }
    }
}

/// Reads a body chunk by chunk, refusing it once it passes `cap` bytes (a
/// hostile or broken server cannot make us buffer without bound).
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| chain(&e))? {
        if buf.len() + chunk.len() > cap {
            return Err(format!("response larger than {cap} bytes"));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

async fn backoff(attempt: u32) {
    tokio::time::sleep(Duration::from_millis(250 << attempt.min(4))).await;
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

async fn get_digest(
    http: &reqwest::Client,
    url: &str,
    auth: Option<&str>,
    r: &ImageRef,
) -> Result<Digest, RegistryError> {
    let mut req = http
        .get(url)
        .header("Accept", MANIFEST_MEDIA_TYPES.join(", "));
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| err(r, ErrorKind::Unreachable, chain(&e)))?;
    if !resp.status().is_success() {
        return Err(err(
            r,
            ErrorKind::Protocol,
            format!("GET manifest: {}", resp.status()),
        ));
    }
    if resp
        .content_length()
        .is_some_and(|l| l as usize > MAX_MANIFEST)
    {
        return Err(err(r, ErrorKind::Protocol, "manifest larger than 4 MiB"));
    }
    let body = read_capped(resp, MAX_MANIFEST)
        .await
        .map_err(|e| err(r, ErrorKind::Protocol, format!("manifest: {e}")))?;
    Ok(Digest::sha256(&body))
}

/// The user name Docker's config uses for an identity (refresh) token.
pub const IDENTITY_TOKEN_USER: &str = "<token>";

fn form_escape(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn fetch_token(
    http: &reqwest::Client,
    r: &ImageRef,
    realm: &str,
    service: Option<&str>,
    scope: &str,
    creds: Option<&Credentials>,
) -> Result<(String, Duration), RegistryError> {
    let req = match creds {
        // An identity token (`docker login` with OAuth2) is a refresh token:
        // exchange it at the token endpoint, as the Docker client does.
        Some(c) if c.username == IDENTITY_TOKEN_USER => {
            let mut form: Vec<(&str, &str)> = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", &c.secret),
                ("client_id", "rebased"),
                ("scope", scope),
            ];
            if let Some(s) = service {
                form.push(("service", s));
            }
            let body: String = form
                .iter()
                .map(|(k, v)| format!("{k}={}", form_escape(v)))
                .collect::<Vec<_>>()
                .join("&");
            http.post(realm)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body)
        }
        _ => {
            let mut query: Vec<(&str, &str)> = vec![("scope", scope)];
            if let Some(s) = service {
                query.push(("service", s));
            }
            let mut req = http.get(realm).query(&query);
            if let Some(c) = creds {
                req = req.header("Authorization", format!("Basic {}", c.basic()));
            }
            req
        }
    };
    let resp = req.send().await.map_err(|e| {
        err(
            r,
            ErrorKind::Unauthorized,
            format!("token endpoint {realm}: {}", chain(&e)),
        )
    })?;
    let status = resp.status();
    if !status.is_success() {
        return Err(err(
            r,
            ErrorKind::Unauthorized,
            format!("token endpoint {realm} answered {status}"),
        ));
    }
    let body = read_capped(resp, 1 << 20).await.map_err(|e| {
        err(
            r,
            ErrorKind::Unauthorized,
            format!("token endpoint {realm}: {e}"),
        )
    })?;
    if body.len() > 1 << 20 {
        return Err(err(
            r,
            ErrorKind::Unauthorized,
            format!("token endpoint {realm}: response over 1 MiB"),
        ));
    }
    parse_token_response(&body).map_err(|e| {
        err(
            r,
            ErrorKind::Unauthorized,
            format!("token endpoint {realm}: {e}"),
        )
    })
}

/// Longest a bearer token is cached, whatever `expires_in` says.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// A token endpoint's JSON answer: the token (`token`, else `access_token`)
/// and how long to cache it (`expires_in`, default 60 s, at least 10 s and
/// at most an hour, less 5 s to renew a little early).
pub fn parse_token_response(body: &[u8]) -> Result<(String, Duration), String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let token = v
        .get("token")
        .or_else(|| v.get("access_token"))
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| "no token in the response".to_owned())?;
    let ttl = v
        .get("expires_in")
        .and_then(|e| e.as_u64())
        .unwrap_or(60)
        .max(10);
    // Renew a little early.
    let ttl = Duration::from_secs(ttl.saturating_sub(5)).min(MAX_TOKEN_TTL);
    Ok((token.to_owned(), ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Bearer realm="https://ghcr.io/token", service="ghcr.io""#),
            Some(Challenge::Bearer {
                realm: "https://ghcr.io/token".into(),
                service: Some("ghcr.io".into()),
                scope: None
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None, "no realm");
        assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
        assert_eq!(parse_challenge(""), None);
    }

    #[test]
    fn form_values_are_escaped() {
        assert_eq!(
            form_escape("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
        assert_eq!(form_escape("ab-._~"), "ab-._~");
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

    /// `expires_in` near `u64::MAX` made `Instant::now() + ttl` overflow
    /// and panic in the token cache.
    #[test]
    fn token_cache_survives_huge_expires_in() {
        let body = br#"{"token":"t","expires_in":18446744073709551615}"#;
        let (token, ttl) = parse_token_response(body).expect("parses");
        assert_eq!(ttl, MAX_TOKEN_TTL);
        let cache = TokenCache::default();
        let key = ("r".to_owned(), "s".to_owned());
        cache.put(key.clone(), token, ttl);
        assert_eq!(cache.get(&key).as_deref(), Some("t"));
        let other = ("r".to_owned(), "other".to_owned());
        cache.put(other.clone(), "u".to_owned(), Duration::MAX);
        assert_eq!(
            cache.get(&other),
            None,
            "an unrepresentable expiry is not cached"
        );
    }

    #[test]
    fn token_responses() {
        let (t, ttl) = parse_token_response(br#"{"access_token":"a"}"#).expect("parses");
        assert_eq!((t.as_str(), ttl), ("a", Duration::from_secs(55)));
        let (_, ttl) = parse_token_response(br#"{"token":"a","expires_in":1}"#).expect("parses");
        assert_eq!(ttl, Duration::from_secs(5));
        assert!(parse_token_response(br#"{"token":""}"#).is_err());
        assert!(parse_token_response(b"[").is_err());
    }

    #[test]
    fn rate_limit_header() {
        assert_eq!(parse_rate_limit("76;w=21600"), Some(76));
        assert_eq!(parse_rate_limit("100"), Some(100));
        assert_eq!(parse_rate_limit("x"), None);
    }

    #[test]
    fn urls() {
        let r = ImageRef::parse("alpine:3").expect("valid");
        assert_eq!(
            manifest_url(&r, false),
            "https://registry-1.docker.io/v2/library/alpine/manifests/3"
        );
        let r = ImageRef::parse("127.0.0.1:5000/a/b").expect("valid");
        assert_eq!(
            manifest_url(&r, true),
            "http://127.0.0.1:5000/v2/a/b/manifests/latest"
        );
    }
}
