//! Blobs: existence checks, cross-repository mounts, uploads, streamed
//! copies between registries and bounded reads, every one through the
//! [`Transport`]. Every blob read is verified against its digest here.
//!
//! An upload is `POST /v2/NAME/blobs/uploads/` then, for bytes in memory,
//! one `PUT LOCATION?digest=D` with the bytes (retried like any request:
//! the body can be sent again), and for a copy between registries one
//! streamed `PATCH LOCATION` (never retried: the stream cannot be
//! restarted) and a `PUT LOCATION?digest=D` without a body.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::stream::{BoxStream, StreamExt};
use rebased_core::{Digest, ImageRef};
use reqwest::{Method, Response, StatusCode};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::{debug, warn};

use crate::error::{chain, error, ErrorKind, RegistryError};
use crate::hash::Hasher;
use crate::transport::token::Scopes;
use crate::transport::{
    query_escape, read_capped, registry_errors, status_error, Body, Request, Transport,
};

/// Piece size of a streamed copy's upload body: the copy holds at most
/// about this much of the blob in memory.
const CHUNK: usize = 4 << 20;
/// Largest body read from a mount's refusal to say why.
const MAX_REFUSAL: usize = 64 << 10;

fn hasher_for(blob: &ImageRef, digest: &Digest) -> Result<Hasher, RegistryError> {
    Hasher::for_digest(digest).ok_or_else(|| {
        error(
            blob,
            ErrorKind::Protocol,
            format!("cannot verify digest algorithm {:?}", digest.algorithm()),
        )
    })
}

/// What a failed read of a download stream means: the network (an
/// `io::Error` wrapping the `reqwest::Error`), or anything else.
fn stream_error(blob: &ImageRef, e: &std::io::Error) -> RegistryError {
    let network = e
        .get_ref()
        .is_some_and(|inner| inner.is::<reqwest::Error>());
    let kind = if network {
        ErrorKind::Unreachable
    } else {
        ErrorKind::Protocol
    };
    let mut detail = format!("reading the blob: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    error(blob, kind, detail)
}

fn verify(blob: &ImageRef, digest: &Digest, hasher: Hasher) -> Result<(), RegistryError> {
    let actual = hasher.finish();
    if actual == digest.as_str() {
        Ok(())
    } else {
        Err(error(
            blob,
            ErrorKind::Protocol,
            format!("content does not match its digest (it hashes to {actual})"),
        ))
    }
}

/// A download re-cut into [`CHUNK`]-sized pieces, hashed and counted on the
/// way; at its end the hash is checked, so a mismatching blob fails the
/// upload body (and so the upload) before it is committed.
struct Rechunk {
    inner: BoxStream<'static, Result<Bytes, std::io::Error>>,
    buf: BytesMut,
    hasher: Option<Hasher>,
    expected: Digest,
    source: ImageRef,
    copied: Arc<AtomicU64>,
    /// Why the download failed, reported against the source.
    failure: Arc<Mutex<Option<RegistryError>>>,
}

impl Rechunk {
    fn fail(&self, e: RegistryError) -> RegistryError {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
        e
    }

    fn into_stream(self) -> BoxStream<'static, Result<Bytes, RegistryError>> {
        futures_util::stream::unfold(self, |mut st| async move {
            loop {
                let hasher = st.hasher.as_mut()?;
                if st.buf.len() >= CHUNK {
                    let piece = st.buf.split_to(CHUNK).freeze();
                    return Some((Ok(piece), st));
                }
                match st.inner.next().await {
                    Some(Ok(bytes)) => {
                        hasher.update(&bytes);
                        st.copied.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        st.buf.extend_from_slice(&bytes);
                    }
                    Some(Err(e)) => {
                        st.hasher = None;
                        let e = st.fail(stream_error(&st.source, &e));
                        return Some((Err(e), st));
                    }
                    None => {
                        let hasher = st.hasher.take()?;
                        if let Err(e) = verify(&st.source, &st.expected, hasher) {
                            let e = st.fail(e);
                            return Some((Err(e), st));
                        }
                        if st.buf.is_empty() {
                            return None;
                        }
                        let rest = st.buf.split().freeze();
                        return Some((Ok(rest), st));
                    }
                }
            }
        })
        .boxed()
    }
}

/// The body of a blob GET (redirects followed), or the error for its status.
async fn get(
    t: &Transport,
    repository: &ImageRef,
    blob: &ImageRef,
    digest: &Digest,
) -> Result<Response, RegistryError> {
    let req = Request::new(
        Method::GET,
        t.url(repository, &format!("blobs/{digest}")),
        Scopes::pull(repository.repository()),
    );
    let resp = t.send(blob, req).await?;
    if resp.status().is_success() {
        Ok(resp)
    } else {
        Err(status_error(blob, resp, !t.has_credentials(blob), "no such blob").await)
    }
}

/// The download as a stream of byte pieces; a network failure is an
/// `io::Error` wrapping the `reqwest::Error` (see [`stream_error`]).
fn pieces(resp: Response) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    resp.bytes_stream()
        .map(|r| r.map_err(std::io::Error::other))
        .boxed()
}

/// Whether `repository` holds blob `digest` (`HEAD /v2/<name>/blobs/<digest>`).
pub(crate) async fn exists(
    t: &Transport,
    repository: &ImageRef,
    digest: &Digest,
) -> Result<bool, RegistryError> {
    let blob = repository.pinned(digest);
    let req = Request::new(
        Method::HEAD,
        t.url(repository, &format!("blobs/{digest}")),
        Scopes::pull(repository.repository()),
    );
    let resp = t.send(&blob, req).await?;
    match resp.status() {
        s if s.is_success() => Ok(true),
        StatusCode::NOT_FOUND => Ok(false),
        _ => Err(status_error(&blob, resp, !t.has_credentials(&blob), "no such blob").await),
    }
}

/// Cross-repository mount of `digest` from `from` into `repository` (see
/// [`crate::Registry::mount_blob`]). The token asked for carries push on
/// the target and pull on the source, in one token request.
pub(crate) async fn mount(
    t: &Transport,
    repository: &ImageRef,
    from: &ImageRef,
    digest: &Digest,
) -> Result<bool, RegistryError> {
    Ok(matches!(
        try_mount(t, repository, from, digest).await?,
        Mount::Mounted
    ))
}

/// How a mount request was answered.
enum Mount {
    Mounted,
    /// Declined; with the `Location` (absolute) of the upload session the
    /// registry opened instead (a 202), if it did.
    Declined(Option<String>),
}

/// Mounts `digest` from `from` into `repository`, else streams it from
/// `from` (see [`crate::Registry::mount_or_copy`]): `None` when mounted,
/// else the bytes copied.
pub(crate) async fn mount_or_copy(
    t: &Transport,
    repository: &ImageRef,
    from: &ImageRef,
    digest: &Digest,
) -> Result<Option<u64>, RegistryError> {
    match try_mount(t, repository, from, digest).await? {
        Mount::Mounted => Ok(None),
        Mount::Declined(session) => copy_into(t, from, repository, digest, session)
            .await
            .map(Some),
    }
}

async fn try_mount(
    t: &Transport,
    repository: &ImageRef,
    from: &ImageRef,
    digest: &Digest,
) -> Result<Mount, RegistryError> {
    if from.registry() != repository.registry() {
        return Ok(Mount::Declined(None));
    }
    let blob = repository.pinned(digest);
    let url = t.url(
        repository,
        &format!("blobs/uploads/?mount={digest}&from={}", from.repository()),
    );
    let scopes = Scopes::push(repository.repository()).with(from.repository(), "pull");
    let resp = t
        .send(&blob, Request::new(Method::POST, url, scopes))
        .await?;
    let status = resp.status();
    let refused = |cause: &str, session: Option<String>| {
        warn!(
            registry = repository.registry(),
            source = from.repository(),
            target = repository.repository(),
            %digest,
            status = status.as_u16(),
            cause,
            "cross-repository mount refused; the blob will be copied instead"
        );
        Ok(Mount::Declined(session))
    };
    match status.as_u16() {
        201 if resp.headers().contains_key("location") => {
            debug!(blob = %blob, from = %from, "mounted");
            Ok(Mount::Mounted)
        }
        // 201 without a Location: mounted, but check rather than trust it.
        201 => Ok(if exists(t, repository, digest).await? {
            Mount::Mounted
        } else {
            warn!(blob = %blob, from = %from, "the registry answered the mount 201 without a Location and does not hold the blob: streaming it instead");
            Mount::Declined(None)
        }),
        // The registry opened an ordinary upload instead: its session is
        // the copy's (mount_or_copy), else left to the registry to expire.
        202 => {
            let session = resp
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(|l| absolute(t, repository, l));
            refused(
                "the registry opened an upload instead (the source may not hold the blob)",
                session,
            )
        }
        401 | 403 | 404 => {
            let body = read_capped(resp, MAX_REFUSAL).await.unwrap_or_default();
            let why = registry_errors(&body);
            refused(
                if why.is_empty() {
                    "no reason given"
                } else {
                    &why
                },
                None,
            )
        }
        _ => Err(status_error(&blob, resp, !t.has_credentials(&blob), "no such repository").await),
    }
}

/// Opens an upload session in `repository`; its `Location`, absolute.
async fn start_upload(
    t: &Transport,
    repository: &ImageRef,
    blob: &ImageRef,
) -> Result<String, RegistryError> {
    let req = Request::new(
        Method::POST,
        t.url(repository, "blobs/uploads/"),
        Scopes::push(repository.repository()),
    );
    let resp = t.send(blob, req).await?;
    if resp.status() != StatusCode::ACCEPTED {
        return Err(status_error(blob, resp, !t.has_credentials(blob), "no such repository").await);
    }
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            error(
                blob,
                ErrorKind::Protocol,
                "upload started without a Location",
            )
        })?;
    Ok(absolute(t, repository, location))
}

/// A `Location` as an absolute URL (registries may answer a path).
fn absolute(t: &Transport, repository: &ImageRef, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else {
        format!("{}{location}", t.base_url(repository))
    }
}

/// Commits an upload: `PUT LOCATION?digest=D` with `body`.
async fn finish_upload(
    t: &Transport,
    repository: &ImageRef,
    blob: &ImageRef,
    location: &str,
    body: Body,
) -> Result<(), RegistryError> {
    let digest = blob.digest().map(ToString::to_string).unwrap_or_default();
    let sep = if location.contains('?') { '&' } else { '?' };
    let req = Request::new(
        Method::PUT,
        format!("{location}{sep}digest={}", query_escape(&digest)),
        Scopes::push(repository.repository()),
    )
    .header("Content-Type", "application/octet-stream")
    .body(body);
    let resp = t.send(blob, req).await?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(status_error(blob, resp, !t.has_credentials(blob), "no such upload").await)
    }
}

/// Uploads `data` as blob `digest` into `repository` after checking it
/// against `digest` (a mismatch is a `Protocol` error and nothing is sent).
pub(crate) async fn push(
    t: &Transport,
    repository: &ImageRef,
    data: Bytes,
    digest: &Digest,
) -> Result<(), RegistryError> {
    let blob = repository.pinned(digest);
    let mut hasher = hasher_for(&blob, digest)?;
    hasher.update(&data);
    verify(&blob, digest, hasher)?;
    let size = data.len();
    let location = start_upload(t, repository, &blob).await?;
    let body = Body::Bytes(data);
    finish_upload(t, repository, &blob, &location, body).await?;
    debug!(blob = %blob, size, "pushed blob");
    Ok(())
}

/// Streams blob `digest` from `from` into `to` (see
/// [`crate::Registry::copy_blob`]); the bytes copied.
pub(crate) async fn copy(
    t: &Transport,
    from: &ImageRef,
    to: &ImageRef,
    digest: &Digest,
) -> Result<u64, RegistryError> {
    copy_into(t, from, to, digest, None).await
}

/// [`copy`] into the upload session `session` (an absolute `Location`)
/// when one is open, else into a new one.
async fn copy_into(
    t: &Transport,
    from: &ImageRef,
    to: &ImageRef,
    digest: &Digest,
    session: Option<String>,
) -> Result<u64, RegistryError> {
    let source = from.pinned(digest);
    let hasher = hasher_for(&source, digest)?;
    let download = get(t, from, &source, digest).await?;
    let size = upload_stream(t, to, digest, &source, hasher, pieces(download), session).await?;
    debug!(from = %source, to = %to.pinned(digest), size, "copied blob");
    Ok(size)
}

/// Streams the file `path` as blob `digest` into `repository` (see
/// [`crate::Registry::push_blob_file`]); the bytes sent.
pub(crate) async fn push_file(
    t: &Transport,
    repository: &ImageRef,
    path: &std::path::Path,
    digest: &Digest,
) -> Result<u64, RegistryError> {
    let blob = repository.pinned(digest);
    let hasher = hasher_for(&blob, digest)?;
    let file = tokio::fs::File::open(path).await.map_err(|e| {
        error(
            &blob,
            ErrorKind::Protocol,
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let read = futures_util::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = BytesMut::with_capacity(CHUNK);
        match f.read_buf(&mut buf).await {
            Ok(0) => None,
            Ok(_) => Some((Ok(buf.freeze()), f)),
            Err(e) => Some((Err(e), f)),
        }
    })
    .boxed();
    let size = upload_stream(t, repository, digest, &blob, hasher, read, None).await?;
    debug!(blob = %blob, size, from = %path.display(), "pushed blob from a file");
    Ok(size)
}

/// Uploads `inner` as blob `digest` into `to` in one streamed `PATCH` and
/// a `PUT` without a body, verifying the bytes against `digest` on the way
/// (a mismatch fails the upload before it is committed); a failure to read
/// `inner` is reported against `source`; into the upload session
/// `session` (an absolute `Location`) when one is open, else a new one.
/// Returns the bytes sent.
async fn upload_stream(
    t: &Transport,
    to: &ImageRef,
    digest: &Digest,
    source: &ImageRef,
    hasher: Hasher,
    inner: BoxStream<'static, Result<Bytes, std::io::Error>>,
    session: Option<String>,
) -> Result<u64, RegistryError> {
    let target = to.pinned(digest);
    let location = match session {
        Some(l) => l,
        None => start_upload(t, to, &target).await?,
    };
    let copied = Arc::new(AtomicU64::new(0));
    let failure = Arc::new(Mutex::new(None));
    let stream = Rechunk {
        inner,
        buf: BytesMut::with_capacity(CHUNK),
        hasher: Some(hasher),
        expected: digest.clone(),
        source: source.clone(),
        copied: Arc::clone(&copied),
        failure: Arc::clone(&failure),
    }
    .into_stream();
    let source_failure = || failure.lock().unwrap_or_else(|p| p.into_inner()).take();
    let req = Request::new(Method::PATCH, location, Scopes::push(to.repository()))
        .header("Content-Type", "application/octet-stream")
        .body(Body::Stream(reqwest::Body::wrap_stream(stream)));
    let resp = match t.send(&target, req).await {
        Ok(resp) => resp,
        Err(e) => return Err(source_failure().unwrap_or(e)),
    };
    if let Some(e) = source_failure() {
        return Err(e);
    }
    if resp.status() != StatusCode::ACCEPTED && !resp.status().is_success() {
        return Err(
            status_error(&target, resp, !t.has_credentials(&target), "no such upload").await,
        );
    }
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(|l| absolute(t, to, l))
        .ok_or_else(|| {
            error(
                &target,
                ErrorKind::Protocol,
                "upload PATCH answered without a Location",
            )
        })?;
    finish_upload(t, to, &target, &location, Body::Empty).await?;
    Ok(copied.load(Ordering::Relaxed))
}

/// Reads blob `digest` of `repository` whole, refusing one larger than
/// `limit` bytes; verified against `digest`.
pub(crate) async fn read(
    t: &Transport,
    repository: &ImageRef,
    digest: &Digest,
    limit: u64,
) -> Result<Vec<u8>, RegistryError> {
    let blob = repository.pinned(digest);
    let mut hasher = hasher_for(&blob, digest)?;
    let too_large = |n: u64| {
        error(
            &blob,
            ErrorKind::Protocol,
            format!("blob of {n} bytes or more exceeds the limit of {limit} bytes"),
        )
    };
    let resp = get(t, repository, &blob, digest).await?;
    let declared = resp.content_length();
    if let Some(n) = declared.filter(|n| *n > limit) {
        return Err(too_large(n));
    }
    let capacity = declared.unwrap_or(0).min(limit).min(1 << 20);
    let mut buf = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
    let mut stream = pieces(resp);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| stream_error(&blob, &e))?;
        let n = (buf.len() + chunk.len()) as u64;
        if n > limit {
            return Err(too_large(n));
        }
        hasher.update(&chunk);
        buf.extend_from_slice(&chunk);
    }
    verify(&blob, digest, hasher)?;
    Ok(buf)
}

/// Streams blob `digest` of `repository` into `out` and flushes it; the
/// size. Verified against `digest`; on an error `out` may hold part of it.
pub(crate) async fn to_writer<W: AsyncWrite + Unpin + Send>(
    t: &Transport,
    repository: &ImageRef,
    digest: &Digest,
    mut out: W,
) -> Result<u64, RegistryError> {
    let blob = repository.pinned(digest);
    let mut hasher = hasher_for(&blob, digest)?;
    let write_failed = |e: std::io::Error| {
        error(
            &blob,
            ErrorKind::Protocol,
            format!("writing the blob out: {}", chain(&e)),
        )
    };
    let resp = get(t, repository, &blob, digest).await?;
    let mut stream = pieces(resp);
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| stream_error(&blob, &e))?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        out.write_all(&chunk).await.map_err(write_failed)?;
    }
    out.flush().await.map_err(write_failed)?;
    verify(&blob, digest, hasher)?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_known_values() {
        assert_eq!(
            Digest::sha256(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let d = Digest::parse(&format!("sha512:{}", "0".repeat(128))).expect("valid");
        let mut h = Hasher::for_digest(&d).expect("sha512");
        h.update(b"abc");
        assert!(h.finish().starts_with("sha512:ddaf35a193617aba"));
        let other = Digest::parse("blake3:abc").expect("valid");
        assert!(Hasher::for_digest(&other).is_none());
    }

    #[tokio::test]
    async fn rechunk_cuts_pieces_and_verifies() {
        let data: Vec<u8> = (0..(CHUNK * 2 + 100)).map(|i| (i % 251) as u8).collect();
        let digest = Digest::sha256(&data);
        let source = ImageRef::parse("127.0.0.1:1/a/b").expect("ref");
        // Many small reads, as a network gives them.
        let reads: Vec<Result<Bytes, std::io::Error>> = data
            .chunks(7000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let make = |digest: Digest, reads: Vec<Result<Bytes, std::io::Error>>| {
            let failure = Arc::new(Mutex::new(None));
            let copied = Arc::new(AtomicU64::new(0));
            let s = Rechunk {
                inner: futures_util::stream::iter(reads).boxed(),
                buf: BytesMut::new(),
                hasher: Hasher::for_digest(&digest),
                expected: digest,
                source: source.clone(),
                copied: Arc::clone(&copied),
                failure: Arc::clone(&failure),
            };
            (s.into_stream(), copied, failure)
        };
        let (stream, copied, _) = make(
            digest,
            reads
                .iter()
                .map(|r| Ok(r.as_ref().expect("ok").clone()))
                .collect(),
        );
        let pieces: Vec<_> = stream.collect().await;
        let sizes: Vec<usize> = pieces
            .iter()
            .map(|p| p.as_ref().expect("ok").len())
            .collect();
        assert_eq!(sizes, vec![CHUNK, CHUNK, 100]);
        assert_eq!(copied.load(Ordering::Relaxed), data.len() as u64);

        let wrong = Digest::sha256(b"something else");
        let (stream, _, failure) = make(wrong, reads.into_iter().collect());
        let pieces: Vec<_> = stream.collect().await;
        assert!(pieces.last().expect("items").is_err());
        let e = failure.lock().expect("lock").clone().expect("recorded");
        assert_eq!(e.kind, ErrorKind::Protocol);
        assert!(e.detail.contains("does not match"), "{e}");
    }
}
