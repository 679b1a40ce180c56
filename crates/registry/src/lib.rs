//! The one place in rebased that speaks the OCI distribution API.
//!
//! [`Registry`] resolves references to digests (one `HEAD` with every
//! manifest media type in `Accept`), reads manifests and their annotations,
//! lists tags, and points a tag at an existing manifest (the way `crane tag`
//! does: the manifest bytes are copied unchanged, so the digest stays).
//!
//! It also moves blobs (existence checks, cross-repository mounts, uploads,
//! streamed copies between registries, bounded reads) and pushes manifests,
//! for the native builder; [`layout`] writes the same content into an OCI
//! image layout directory instead of a registry.

pub mod auth;
mod blobs;
mod http;
pub mod layout;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use rebased_core::config::RegistryConfig;
use rebased_core::{Digest, ImageRef};
use tracing::debug;

/// Manifest media types we accept, most specific first.
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// What went wrong talking to a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// 401/403, or the token flow failed.
    Unauthorized,
    /// The repository, tag or manifest does not exist.
    NotFound,
    /// Too many requests (429).
    RateLimited,
    /// Connection refused, DNS, TLS, timeouts.
    Unreachable,
    /// The registry answered with something we cannot use.
    Protocol,
}

/// A registry error naming the registry, the reference and the cause.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reference} (registry {registry}): {kind_text}: {detail}", kind_text = kind_text(.kind))]
pub struct RegistryError {
    /// The registry host.
    pub registry: String,
    /// The reference being accessed.
    pub reference: String,
    /// Class of the failure.
    pub kind: ErrorKind,
    /// The underlying cause.
    pub detail: String,
}

fn kind_text(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Unauthorized => "unauthorized",
        ErrorKind::NotFound => "not found",
        ErrorKind::RateLimited => "rate limited",
        ErrorKind::Unreachable => "unreachable",
        ErrorKind::Protocol => "protocol error",
    }
}

/// A manifest as stored, with what is needed to copy it.
#[derive(Debug, Clone)]
pub struct RawManifest {
    /// The exact bytes.
    pub bytes: Vec<u8>,
    /// Its digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
}

impl RawManifest {
    /// The manifest's `annotations`, empty when there are none.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        serde_json::from_slice::<serde_json::Value>(&self.bytes)
            .ok()
            .and_then(|v| v.get("annotations").cloned())
            .and_then(|a| serde_json::from_value(a).ok())
            .unwrap_or_default()
    }
}

/// A client for every registry rebased talks to, configured per host.
pub struct Registry {
    client: Client,
    config: BTreeMap<String, RegistryConfig>,
    /// Per-host HTTP clients (plain http, extra CA); `Err` says why a host's
    /// TLS setup failed, reported on every request to it.
    http: BTreeMap<String, Result<reqwest::Client, String>>,
    default_http: reqwest::Client,
    tokens: http::TokenCache,
    limits: std::sync::Mutex<BTreeMap<String, Arc<tokio::sync::Semaphore>>>,
    creds: std::sync::Mutex<BTreeMap<String, (std::time::Instant, CredsResult)>>,
}

type CredsResult = Result<Option<auth::Credentials>, String>;

/// How long credentials are reused before they are looked up again.
const CREDS_TTL: Duration = Duration::from_secs(60);

pub use http::{
    parse_challenge, parse_rate_limit, parse_retry_after, parse_token_response, Challenge, Head,
};
pub use layout::{BlobWriter, Layout, LayoutError, Platform};

fn http_client(
    ca_file: Option<&std::path::Path>,
    timeout: Duration,
) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .timeout(timeout)
        .user_agent(concat!("rebased/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        b = b.add_root_certificate(cert);
    }
    b.build().map_err(|e| format!("HTTP client: {e}"))
}

impl Registry {
    /// A client honouring `[registries."HOST"]`: `insecure` (plain http),
    /// `ca_file`, `concurrency`, and credentials.
    pub fn new(registries: &BTreeMap<String, RegistryConfig>) -> Self {
        Self::with_timeout(registries, Duration::from_secs(30))
    }

    /// Like [`Registry::new`], with `timeout` per request (tests use short ones).
    pub fn with_timeout(registries: &BTreeMap<String, RegistryConfig>, timeout: Duration) -> Self {
        let insecure: Vec<String> = registries
            .iter()
            .filter(|(_, c)| c.insecure)
            .map(|(h, _)| h.clone())
            .collect();
        let extra_roots: Vec<oci_client::client::Certificate> = registries
            .values()
            .filter_map(|c| c.ca_file.as_ref())
            .filter_map(|p| std::fs::read(p).ok())
            .map(|data| oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data,
            })
            .collect();
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure),
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(timeout),
            extra_root_certificates: extra_roots,
            ..Default::default()
        };
        let http = registries
            .iter()
            .map(|(h, c)| (h.clone(), http_client(c.ca_file.as_deref(), timeout)))
            .collect();
        Self {
            client: Client::new(config),
            config: registries.clone(),
            http,
            default_http: http_client(None, timeout).unwrap_or_default(),
            tokens: http::TokenCache::default(),
            limits: std::sync::Mutex::new(BTreeMap::new()),
            creds: std::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// Credentials for `host`, from the config, Docker's config.json or a
    /// credential helper; `None` for anonymous access.
    pub fn credentials(&self, host: &str) -> Result<Option<auth::Credentials>, String> {
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
            .insert(host.to_owned(), (std::time::Instant::now(), c.clone()));
    }

    /// Like [`Registry::credentials`], but a credential helper (a program)
    /// runs off the async workers.
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

    fn oci_auth(&self, r: &ImageRef) -> Result<RegistryAuth, RegistryError> {
        to_registry_auth(r, self.credentials(r.registry()))
    }

    /// [`Registry::oci_auth`] without blocking an async worker on a helper.
    async fn oci_auth_async(&self, r: &ImageRef) -> Result<RegistryAuth, RegistryError> {
        to_registry_auth(r, self.credentials_async(r.registry()).await)
    }

    fn permit_pool(&self, host: &str) -> Arc<tokio::sync::Semaphore> {
        let mut l = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.config.get(host).map_or(8, |c| c.concurrency.max(1));
        Arc::clone(
            l.entry(host.to_owned())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(n))),
        )
    }

    /// One `HEAD` of `reference` (a `GET` only when the registry sends no
    /// `Docker-Content-Digest`), within the host's concurrency bound, with
    /// retries and rate-limit handling. For an index this is the index digest.
    pub async fn head(&self, reference: &ImageRef) -> Result<Head, RegistryError> {
        let (creds, http, insecure) = self.endpoint(reference).await?;
        let _permit = self.permit_pool(reference.registry()).acquire_owned().await;
        http::head(http, &self.tokens, reference, insecure, creds.as_ref()).await
    }

    /// What our own requests to `reference`'s registry use: its
    /// credentials, its HTTP client (CA, TLS) and whether it is plain http.
    async fn endpoint(
        &self,
        reference: &ImageRef,
    ) -> Result<(Option<auth::Credentials>, &reqwest::Client, bool), RegistryError> {
        let host = reference.registry();
        let fail = |kind, detail: String| RegistryError {
            registry: host.to_owned(),
            reference: reference.to_string(),
            kind,
            detail,
        };
        let creds = self
            .credentials_async(host)
            .await
            .map_err(|d| fail(ErrorKind::Unauthorized, d))?;
        let http = match self.http.get(host) {
            Some(Ok(c)) => c,
            Some(Err(e)) => return Err(fail(ErrorKind::Unreachable, format!("TLS setup: {e}"))),
            None => &self.default_http,
        };
        let insecure = self.config.get(host).is_some_and(|c| c.insecure);
        Ok((creds, http, insecure))
    }

    /// The digest `reference` points at now (see [`Registry::head`]).
    pub async fn resolve(&self, reference: &ImageRef) -> Result<Digest, RegistryError> {
        self.head(reference).await.map(|h| h.digest)
    }

    /// Like [`Registry::resolve`], but a missing tag is `Ok(None)`.
    pub async fn lookup(&self, reference: &ImageRef) -> Result<Option<Digest>, RegistryError> {
        match self.resolve(reference).await {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The manifest `reference` points at, bytes unchanged.
    pub async fn manifest(&self, reference: &ImageRef) -> Result<RawManifest, RegistryError> {
        let host = reference.registry();
        let fail = |kind, detail: String| RegistryError {
            registry: host.to_owned(),
            reference: reference.to_string(),
            kind,
            detail,
        };
        let (creds, http, insecure) = self.endpoint(reference).await?;
        let _permit = self.permit_pool(host).acquire_owned().await;
        // Our own GET: the body is read up to 4 MiB, never without bound.
        let (head, bytes) =
            http::get_manifest(http, &self.tokens, reference, insecure, creds.as_ref()).await?;
        let media_type = declared_media_type(&bytes).ok_or_else(|| {
            fail(
                ErrorKind::Protocol,
                "manifest is not a JSON object".to_owned(),
            )
        })?;
        Ok(RawManifest {
            bytes,
            digest: head.digest,
            media_type,
        })
    }

    /// For an index (or Docker manifest list): each platform
    /// (`os/architecture[/variant]`) and its child manifest digest. Empty for
    /// a single-platform manifest. Pass a reference pinned by digest to read
    /// exactly the index that was resolved.
    pub async fn platforms(
        &self,
        reference: &ImageRef,
    ) -> Result<BTreeMap<String, Digest>, RegistryError> {
        let manifest = self.manifest(reference).await?;
        Ok(index_platforms(&manifest.bytes))
    }

    /// Points `repository:tag` at the manifest `digest` of the same
    /// repository, copying its bytes so the digest does not change.
    pub async fn tag(
        &self,
        repository: &ImageRef,
        digest: &Digest,
        tag: &str,
    ) -> Result<(), RegistryError> {
        let source = repository.pinned(digest);
        let manifest = self.manifest(&source).await?;
        let target = repository.with_tag(tag);
        let oci = to_oci(&target);
        let content_type = manifest.media_type.parse().map_err(|_| RegistryError {
            registry: target.registry().to_owned(),
            reference: target.to_string(),
            kind: ErrorKind::Protocol,
            detail: format!("bad media type {:?}", manifest.media_type),
        })?;
        self.client
            .auth(&oci, &self.oci_auth(&target)?, RegistryOperation::Push)
            .await
            .map_err(|e| classify(&target, e))?;
        self.client
            .push_manifest_raw(&oci, manifest.bytes, content_type)
            .await
            .map_err(|e| classify(&target, e))?;
        debug!(reference = %target, %digest, "tagged");
        Ok(())
    }

    /// Every tag of `repository` (following pagination).
    pub async fn list_tags(&self, repository: &ImageRef) -> Result<Vec<String>, RegistryError> {
        let oci = to_oci(&repository.with_tag("latest"));
        let auth = self.oci_auth(repository)?;
        let mut tags: Vec<String> = Vec::new();
        let mut last: Option<String> = None;
        loop {
            let page = match self
                .client
                .list_tags(&oci, &auth, Some(1000), last.as_deref())
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    let e = classify(repository, e);
                    if e.kind == ErrorKind::NotFound && tags.is_empty() {
                        return Ok(Vec::new());
                    }
                    return Err(e);
                }
            };
            // Some registries cap pages below `n`: read until a page is empty
            // or repeats.
            let next = page.tags.last().cloned();
            tags.extend(page.tags);
            if next.is_none() || next == last {
                break;
            }
            last = next;
        }
        Ok(tags)
    }
}

/// The platform -> child digest map of an index's bytes (empty if the bytes
/// are not an index). Entries without a platform or a valid digest, and
/// attestation entries (`unknown/unknown`), are skipped.
pub fn index_platforms(bytes: &[u8]) -> BTreeMap<String, Digest> {
    let mut out = BTreeMap::new();
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return out;
    };
    let Some(manifests) = value.get("manifests").and_then(|m| m.as_array()) else {
        return out;
    };
    for m in manifests {
        let Some(p) = m.get("platform") else { continue };
        let field = |k: &str| p.get(k).and_then(|v| v.as_str()).unwrap_or_default();
        let (os, arch, variant) = (field("os"), field("architecture"), field("variant"));
        if os.is_empty() || arch.is_empty() || os == "unknown" || arch == "unknown" {
            continue;
        }
        let key = if variant.is_empty() {
            format!("{os}/{arch}")
        } else {
            format!("{os}/{arch}/{variant}")
        };
        if let Some(d) = m
            .get("digest")
            .and_then(|d| d.as_str())
            .and_then(|d| Digest::parse(d).ok())
        {
            out.entry(key).or_insert(d);
        }
    }
    out
}

fn to_registry_auth(r: &ImageRef, creds: CredsResult) -> Result<RegistryAuth, RegistryError> {
    match creds {
        Ok(Some(c)) if c.username == http::IDENTITY_TOKEN_USER => {
            Ok(RegistryAuth::Bearer(c.secret))
        }
        Ok(Some(c)) => Ok(RegistryAuth::Basic(c.username, c.secret)),
        Ok(None) => Ok(RegistryAuth::Anonymous),
        Err(detail) => Err(RegistryError {
            registry: r.registry().to_owned(),
            reference: r.to_string(),
            kind: ErrorKind::Unauthorized,
            detail,
        }),
    }
}

/// The media type a manifest's bytes declare; without a `mediaType` field,
/// an index when it has `manifests`, else an OCI image manifest. `None` when
/// the bytes are not a JSON object.
pub(crate) fn declared_media_type(bytes: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let object = value.as_object()?;
    Some(match object.get("mediaType").and_then(|m| m.as_str()) {
        Some(m) => m.to_owned(),
        None if object.contains_key("manifests") => MANIFEST_MEDIA_TYPES[0].to_owned(),
        None => MANIFEST_MEDIA_TYPES[2].to_owned(),
    })
}

fn to_oci(r: &ImageRef) -> Reference {
    let registry = r.registry().to_owned();
    let repository = r.repository().to_owned();
    match (r.tag(), r.digest()) {
        (Some(t), Some(d)) => {
            Reference::with_tag_and_digest(registry, repository, t.to_owned(), d.to_string())
        }
        (None, Some(d)) => Reference::with_digest(registry, repository, d.to_string()),
        (t, None) => Reference::with_tag(registry, repository, t.unwrap_or("latest").to_owned()),
    }
}

fn classify(reference: &ImageRef, e: OciDistributionError) -> RegistryError {
    let kind = match &e {
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => ErrorKind::Unauthorized,
        OciDistributionError::ImageManifestNotFoundError(_) => ErrorKind::NotFound,
        OciDistributionError::ServerError { code, .. } => match code {
            401 | 403 => ErrorKind::Unauthorized,
            404 => ErrorKind::NotFound,
            429 => ErrorKind::RateLimited,
            _ => ErrorKind::Protocol,
        },
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                ErrorKind::NotFound
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                ErrorKind::Unauthorized
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Toomanyrequests))
            {
                ErrorKind::RateLimited
            } else {
                ErrorKind::Protocol
            }
        }
        // `error_for_status` (as in oci-client's blob HEAD) carries the status.
        OciDistributionError::RequestError(r) => match r.status().map(|s| s.as_u16()) {
            Some(401 | 403) => ErrorKind::Unauthorized,
            Some(404) => ErrorKind::NotFound,
            Some(429) => ErrorKind::RateLimited,
            Some(_) => ErrorKind::Protocol,
            None => ErrorKind::Unreachable,
        },
        _ => ErrorKind::Protocol,
    };
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    RegistryError {
        registry: reference.registry().to_owned(),
        reference: reference.to_string(),
        kind,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_platforms_reads_children() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let c = format!("sha256:{}", "c".repeat(64));
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"digest": a, "platform": {"os": "linux", "architecture": "amd64"}},
                {"digest": b, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"digest": c, "platform": {"os": "unknown", "architecture": "unknown"}},
                {"digest": "not-a-digest", "platform": {"os": "linux", "architecture": "s390x"}},
                {"digest": c}
            ]
        });
        let p = index_platforms(index.to_string().as_bytes());
        assert_eq!(p.len(), 2);
        assert_eq!(p["linux/amd64"].as_str(), a);
        assert_eq!(p["linux/arm64/v8"].as_str(), b);
        assert!(index_platforms(b"{\"layers\": []}").is_empty());
        assert!(index_platforms(b"garbage").is_empty());
    }
}
