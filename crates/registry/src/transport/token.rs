//! The bearer-token side of the transport: `WWW-Authenticate` challenges,
//! the token request (several `scope=` parameters in one request, as the
//! Docker client and buildah send them), the token response and the token
//! cache keyed by registry and scope set.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rebased_core::ImageRef;

use super::capped::read_capped;
use crate::auth::Credentials;
use crate::error::{chain, error, ErrorKind, RegistryError};

/// Longest a bearer token is cached, whatever `expires_in` says.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Largest token response read.
const MAX_TOKEN_RESPONSE: usize = 1 << 20;

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Bearer realm=..., service=..., scope=...`.
    Bearer {
        /// Token endpoint.
        realm: String,
        /// `service` parameter.
        service: Option<String>,
        /// `scope` parameter, if the registry names one (several scopes
        /// are separated by spaces).
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

/// The access a request needs, as token scopes
/// (`repository:NAME:pull,push`): the actions of each resource merged and
/// sorted, so the same access is the same scope set (and cache key)
/// however it was built, and a challenge naming `push,pull` adds nothing
/// to our `pull,push`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Scopes(BTreeMap<(String, String), BTreeSet<String>>);

impl Scopes {
    /// Pull on `repository`.
    pub(crate) fn pull(repository: &str) -> Self {
        Self::default().with(repository, "pull")
    }

    /// Pull and push on `repository`.
    pub(crate) fn push(repository: &str) -> Self {
        Self::default().with(repository, "pull,push")
    }

    /// These scopes and `actions` (comma-separated) on `repository`.
    pub(crate) fn with(mut self, repository: &str, actions: &str) -> Self {
        self.add("repository", repository, actions);
        self
    }

    fn add(&mut self, kind: &str, name: &str, actions: &str) {
        self.0
            .entry((kind.to_owned(), name.to_owned()))
            .or_default()
            .extend(
                actions
                    .split(',')
                    .filter(|a| !a.is_empty())
                    .map(str::to_owned),
            );
    }

    /// These scopes and every one a challenge names (space-separated
    /// `type:name:actions`; a name may itself hold colons, as
    /// `host:port/name` does), one string per resource.
    fn and_challenged(&self, challenged: Option<&str>) -> Vec<String> {
        let mut all = self.clone();
        for scope in challenged.unwrap_or_default().split_whitespace() {
            let Some((kind, rest)) = scope.split_once(':') else {
                continue;
            };
            let Some((name, actions)) = rest.rsplit_once(':') else {
                continue;
            };
            all.add(kind, name, actions);
        }
        all.strings()
    }

    fn strings(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|((kind, name), actions)| {
                let actions: Vec<&str> = actions.iter().map(String::as_str).collect();
                format!("{kind}:{name}:{}", actions.join(","))
            })
            .collect()
    }

    fn key(&self) -> String {
        self.strings().join(" ")
    }
}

/// A cached bearer token.
struct Token {
    value: String,
    until: Instant,
}

/// Bearer tokens by registry and scope set, and the registries that asked
/// for basic credentials.
#[derive(Default)]
pub(crate) struct TokenCache {
    tokens: Mutex<HashMap<(String, String), Token>>,
    basic: Mutex<BTreeSet<String>>,
}

impl TokenCache {
    pub(crate) fn get(&self, registry: &str, scopes: &Scopes) -> Option<String> {
        self.get_key(&(registry.to_owned(), scopes.key()))
    }

    pub(crate) fn put(&self, registry: &str, scopes: &Scopes, value: String, ttl: Duration) {
        self.put_key((registry.to_owned(), scopes.key()), value, ttl);
    }

    fn get_key(&self, key: &(String, String)) -> Option<String> {
        let t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        t.get(key)
            .filter(|t| t.until > Instant::now())
            .map(|t| t.value.clone())
    }

    fn put_key(&self, key: (String, String), value: String, ttl: Duration) {
        // `Instant + Duration` panics on overflow: a TTL past what the clock
        // can represent is simply not cached.
        let Some(until) = Instant::now().checked_add(ttl) else {
            return;
        };
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        t.insert(key, Token { value, until });
    }

    /// Whether `registry` once answered with a basic challenge.
    pub(crate) fn wants_basic(&self, registry: &str) -> bool {
        let b = self.basic.lock().unwrap_or_else(|p| p.into_inner());
        b.contains(registry)
    }

    pub(crate) fn remember_basic(&self, registry: &str) {
        let mut b = self.basic.lock().unwrap_or_else(|p| p.into_inner());
        b.insert(registry.to_owned());
    }
}

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

/// Where and for what a token is asked.
pub(crate) struct TokenRequest<'a> {
    pub(crate) realm: &'a str,
    pub(crate) service: Option<&'a str>,
    /// The request's scopes and the challenge's `scope`.
    pub(crate) scopes: &'a Scopes,
    pub(crate) challenged: Option<&'a str>,
}

/// Asks the token endpoint for a token carrying every scope of `want`, in
/// one request; the token and how long to cache it.
pub(crate) async fn fetch_token(
    http: &reqwest::Client,
    r: &ImageRef,
    want: &TokenRequest<'_>,
    creds: Option<&Credentials>,
) -> Result<(String, Duration), RegistryError> {
    let realm = want.realm;
    let scopes = want.scopes.and_challenged(want.challenged);
    let fail = |detail: String| error(r, ErrorKind::Unauthorized, detail);
    let req = match creds {
        // An identity token (`docker login` with OAuth2) is a refresh token:
        // exchange it at the token endpoint, as the Docker client does
        // (OAuth2 joins several scopes with spaces).
        Some(c) if c.is_identity_token() => {
            let scope = scopes.join(" ");
            let mut form: Vec<(&str, &str)> = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", &c.secret),
                ("client_id", "rebased"),
                ("scope", &scope),
            ];
            if let Some(s) = want.service {
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
            let mut query: Vec<(&str, &str)> =
                scopes.iter().map(|s| ("scope", s.as_str())).collect();
            if let Some(s) = want.service {
                query.push(("service", s));
            }
            let mut req = http.get(realm).query(&query);
            if let Some(c) = creds {
                req = req.header("Authorization", format!("Basic {}", c.basic()));
            }
            req
        }
    };
    let resp = req
        .send()
        .await
        .map_err(|e| fail(format!("token endpoint {realm}: {}", chain(&e))))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(fail(format!("token endpoint {realm} answered {status}")));
    }
    let body = read_capped(resp, MAX_TOKEN_RESPONSE)
        .await
        .map_err(|e| fail(format!("token endpoint {realm}: {e}")))?;
    parse_token_response(&body).map_err(|e| fail(format!("token endpoint {realm}: {e}")))
}

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
    fn scope_sets_are_one_key_however_built() {
        let a = Scopes::push("team/app").with("upstream/base", "pull");
        let b = Scopes::pull("upstream/base").with("team/app", "pull,push");
        assert_eq!(a, b);
        assert_eq!(
            a.key(),
            "repository:team/app:pull,push repository:upstream/base:pull"
        );
        assert_ne!(a, Scopes::push("team/app"));
        assert_eq!(
            Scopes::pull("a").and_challenged(Some("repository:a:pull repository:b:pull")),
            vec!["repository:a:pull", "repository:b:pull"]
        );
        assert_eq!(
            Scopes::push("team/app")
                .with("upstream/base", "pull")
                .and_challenged(Some(
                    "repository:team/app:push,pull repository:upstream/base:pull"
                )),
            vec![
                "repository:team/app:pull,push",
                "repository:upstream/base:pull"
            ],
            "a challenge's push,pull is our pull,push"
        );
        assert_eq!(
            Scopes::default().and_challenged(Some("registry:catalog:* nonsense")),
            vec!["registry:catalog:*"]
        );
    }

    /// `expires_in` near `u64::MAX` made `Instant::now() + ttl` overflow
    /// and panic in the token cache.
    #[test]
    fn token_cache_survives_huge_expires_in() {
        let body = br#"{"token":"t","expires_in":18446744073709551615}"#;
        let (token, ttl) = parse_token_response(body).expect("parses");
        assert_eq!(ttl, MAX_TOKEN_TTL);
        let cache = TokenCache::default();
        let s = Scopes::pull("s");
        cache.put("r", &s, token, ttl);
        assert_eq!(cache.get("r", &s).as_deref(), Some("t"));
        let other = Scopes::pull("other");
        cache.put("r", &other, "u".to_owned(), Duration::MAX);
        assert_eq!(
            cache.get("r", &other),
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
}
