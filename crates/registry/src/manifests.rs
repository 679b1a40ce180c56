//! Manifest requests: `HEAD` (a `GET` when the registry sends no
//! `Docker-Content-Digest`), `GET` capped at 4 MiB and checked against a
//! pinned digest, and `PUT`.

use rebased_core::{Digest, ImageRef};
use reqwest::Method;
use tracing::debug;

use crate::document::MANIFEST_MEDIA_TYPES;
use crate::error::{error, ErrorKind, RegistryError};
use crate::transport::token::Scopes;
use crate::transport::{parse_rate_limit, read_capped, status_error, Body, Request, Transport};

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

/// The URL of a manifest: by digest when `r` is pinned, else by tag.
fn manifest_url(t: &Transport, r: &ImageRef) -> String {
    let reference = match (r.digest(), r.tag()) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.to_owned(),
        (None, None) => "latest".to_owned(),
    };
    t.url(r, &format!("manifests/{reference}"))
}

fn read_request(t: &Transport, method: Method, r: &ImageRef) -> Request {
    Request::new(method, manifest_url(t, r), Scopes::pull(r.repository()))
        .header("Accept", MANIFEST_MEDIA_TYPES.join(", "))
}

/// Resolves `r` to a digest with one HEAD (plus a GET if the registry sends
/// no digest header).
pub(crate) async fn head(t: &Transport, r: &ImageRef) -> Result<Head, RegistryError> {
    let resp = t.send(r, read_request(t, Method::HEAD, r)).await?;
    if !resp.status().is_success() {
        return Err(status_error(r, resp, !t.has_credentials(r), "no such manifest").await);
    }
    let rate = rate_limit(&resp);
    let header = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let digest = match header {
        Some(d) => Digest::parse(&d).map_err(|e| error(r, ErrorKind::Protocol, e.to_string()))?,
        None => get(t, r).await?.0.digest,
    };
    debug!(reference = %r, %digest, "HEAD manifest");
    Ok(Head {
        digest,
        rate_limit_remaining: rate,
    })
}

fn rate_limit(resp: &reqwest::Response) -> Option<u64> {
    resp.headers()
        .get("ratelimit-remaining")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_rate_limit)
}

/// GETs the manifest `r` names (bytes capped at 4 MiB, digest checked when
/// `r` is pinned by a sha256 digest); the bytes as served.
pub(crate) async fn get(t: &Transport, r: &ImageRef) -> Result<(Head, Vec<u8>), RegistryError> {
    let resp = t.send(r, read_request(t, Method::GET, r)).await?;
    if !resp.status().is_success() {
        return Err(status_error(r, resp, !t.has_credentials(r), "no such manifest").await);
    }
    let rate = rate_limit(&resp);
    let bytes = read_capped(resp, MAX_MANIFEST).await.map_err(|e| {
        error(
            r,
            ErrorKind::Protocol,
            format!("manifest larger than 4 MiB or unreadable: {e}"),
        )
    })?;
    let digest = Digest::sha256(&bytes);
    if let Some(want) = r.digest() {
        if want.algorithm() == "sha256" && want != &digest {
            return Err(error(
                r,
                ErrorKind::Protocol,
                format!("the registry served a manifest with digest {digest}"),
            ));
        }
    }
    debug!(reference = %r, %digest, "GET manifest");
    Ok((
        Head {
            digest,
            rate_limit_remaining: rate,
        },
        bytes,
    ))
}

/// PUTs manifest `bytes` under `r` (a tag, or the digest of the bytes) as
/// `media_type`; the bytes are in memory, so the request is retried like
/// any other. Returns the digest of the bytes.
pub(crate) async fn put(
    t: &Transport,
    r: &ImageRef,
    bytes: Vec<u8>,
    media_type: &str,
) -> Result<Digest, RegistryError> {
    let digest = Digest::sha256(&bytes);
    if let Some(named) = r.digest().filter(|d| **d != digest) {
        return Err(error(
            r,
            ErrorKind::Protocol,
            format!("manifest bytes hash to {digest}, not {named}"),
        ));
    }
    if media_type.is_empty() || media_type.bytes().any(|b| b.is_ascii_control()) {
        return Err(error(
            r,
            ErrorKind::Protocol,
            format!("bad media type {media_type:?}"),
        ));
    }
    let req = Request::new(
        Method::PUT,
        manifest_url(t, r),
        Scopes::push(r.repository()),
    )
    .header("Content-Type", media_type)
    .body(Body::Bytes(bytes.into()));
    let resp = t.send(r, req).await?;
    if !resp.status().is_success() {
        return Err(status_error(r, resp, !t.has_credentials(r), "no such repository").await);
    }
    debug!(reference = %r, %digest, "pushed manifest");
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use rebased_core::config::RegistryConfig;

    use super::*;

    #[test]
    fn urls() {
        let insecure = RegistryConfig {
            insecure: true,
            ..RegistryConfig::default()
        };
        let t = Transport::new(
            &BTreeMap::from([("127.0.0.1:5000".to_owned(), insecure)]),
            Duration::from_secs(1),
        );
        let r = ImageRef::parse("alpine:3").expect("valid");
        assert_eq!(
            manifest_url(&t, &r),
            "https://registry-1.docker.io/v2/library/alpine/manifests/3"
        );
        let r = ImageRef::parse("127.0.0.1:5000/a/b").expect("valid");
        assert_eq!(
            manifest_url(&t, &r),
            "http://127.0.0.1:5000/v2/a/b/manifests/latest"
        );
    }
}
