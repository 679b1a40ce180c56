//! Blobs and manifest pushes: existence checks, cross-repository mounts,
//! uploads, streamed copies between registries, bounded reads, and pushing
//! manifest bytes. Every blob read is verified against its digest here, not
//! only by the transport.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::stream::{BoxStream, StreamExt};
use oci_client::errors::OciDistributionError;
use oci_client::{Reference, RegistryOperation};
use rebased_core::digest::hex;
use rebased_core::{Digest, ImageRef};
use sha2::Digest as _;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;
use tracing::debug;

use crate::{classify, to_oci, ErrorKind, Registry, RegistryError};

/// Upload piece size for streamed copies: oci-client PATCHes at most 4 MiB
/// at a time, so pieces of exactly that size make one PATCH each.
const CHUNK: usize = 4 << 20;

/// A running content hash for a digest's algorithm.
pub(crate) enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    /// A hasher for `digest`'s algorithm; `None` for algorithms we cannot
    /// compute (anything but sha256 and sha512).
    pub(crate) fn for_digest(digest: &Digest) -> Option<Self> {
        match digest.algorithm() {
            "sha256" => Some(Self::Sha256(sha2::Sha256::new())),
            "sha512" => Some(Self::Sha512(sha2::Sha512::new())),
            _ => None,
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
        }
    }

    /// `algorithm:hex` of everything hashed.
    pub(crate) fn finish(self) -> String {
        match self {
            Self::Sha256(h) => Digest::of_sha256(h).to_string(),
            Self::Sha512(h) => format!("sha512:{}", hex(&h.finalize())),
        }
    }
}

fn error(r: &ImageRef, kind: ErrorKind, detail: impl Into<String>) -> RegistryError {
    RegistryError {
        registry: r.registry().to_owned(),
        reference: r.to_string(),
        kind,
        detail: detail.into(),
    }
}

fn hasher_for(blob: &ImageRef, digest: &Digest) -> Result<Hasher, RegistryError> {
    Hasher::for_digest(digest).ok_or_else(|| {
        error(
            blob,
            ErrorKind::Protocol,
            format!("cannot verify digest algorithm {:?}", digest.algorithm()),
        )
    })
}

/// What a failed read of a download stream means: the network, or content
/// that does not match (oci-client's verifying stream reports a mismatch as
/// an `io::Error` wrapping its digest error).
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
/// upload before it is committed.
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
    fn fail(&self, e: RegistryError) -> OciDistributionError {
        let detail = e.to_string();
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        OciDistributionError::GenericError(Some(detail))
    }

    fn into_stream(self) -> BoxStream<'static, Result<Bytes, OciDistributionError>> {
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

impl Registry {
    /// Permits of each host's concurrency pool, taken in a fixed order (and
    /// once per host) so two transfers in opposite directions cannot
    /// deadlock.
    async fn permits(&self, hosts: &[&str]) -> Vec<OwnedSemaphorePermit> {
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

    /// Authenticates for `op` on `r`'s repository (a token, when the
    /// registry wants one) and returns the oci-client reference.
    async fn authorize(
        &self,
        r: &ImageRef,
        op: RegistryOperation,
    ) -> Result<Reference, RegistryError> {
        let oci = to_oci(r);
        let auth = self.oci_auth_async(r).await?;
        self.client
            .auth(&oci, &auth, op)
            .await
            .map_err(|e| classify(r, e))?;
        Ok(oci)
    }

    /// Whether `repository` holds blob `digest` (`HEAD /v2/<name>/blobs/<digest>`).
    pub async fn blob_exists(
        &self,
        repository: &ImageRef,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let blob = repository.pinned(digest);
        let _permits = self.permits(&[repository.registry()]).await;
        let oci = self.authorize(repository, RegistryOperation::Pull).await?;
        self.client
            .blob_exists(&oci, digest.as_str())
            .await
            .map_err(|e| classify(&blob, e))
    }

    /// Cross-repository mount of `digest` from `from` into `repository`.
    ///
    /// `Ok(true)` when mounted (201). `Ok(false)` when the registry declines:
    /// `from` is on another registry, the registry answered 202 (it started
    /// an ordinary upload instead; that session is left to the registry to
    /// expire), or 401 / 403 / 404. The caller then copies the blob
    /// ([`Registry::copy_blob`]). Other failures are errors.
    pub async fn mount_blob(
        &self,
        repository: &ImageRef,
        from: &ImageRef,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        if from.registry() != repository.registry() {
            return Ok(false);
        }
        let blob = repository.pinned(digest);
        let _permits = self.permits(&[repository.registry()]).await;
        let oci = self.authorize(repository, RegistryOperation::Push).await?;
        let source = to_oci(from);
        match self.client.mount_blob(&oci, &source, digest.as_str()).await {
            Ok(()) => {
                debug!(blob = %blob, from = %from, "mounted");
                Ok(true)
            }
            // 201 without a Location: mounted, but check rather than trust it.
            Err(OciDistributionError::RegistryNoLocationError) => self
                .client
                .blob_exists(&oci, digest.as_str())
                .await
                .map_err(|e| classify(&blob, e)),
            // Any 2xx but 201: the registry opened an upload instead.
            Err(OciDistributionError::SpecViolationError(why)) => {
                debug!(blob = %blob, from = %from, %why, "mount declined");
                Ok(false)
            }
            Err(OciDistributionError::ServerError {
                code: 401 | 403 | 404,
                ..
            }) => Ok(false),
            Err(e) => Err(classify(&blob, e)),
        }
    }

    /// Uploads `data` as blob `digest` into `repository`. The data is
    /// checked against `digest` first; a mismatch is an error (kind
    /// `Protocol`) and nothing is sent.
    pub async fn push_blob(
        &self,
        repository: &ImageRef,
        data: Bytes,
        digest: &Digest,
    ) -> Result<(), RegistryError> {
        let blob = repository.pinned(digest);
        let mut hasher = hasher_for(&blob, digest)?;
        hasher.update(&data);
        verify(&blob, digest, hasher)?;
        let _permits = self.permits(&[repository.registry()]).await;
        let oci = self.authorize(repository, RegistryOperation::Push).await?;
        let size = data.len();
        self.client
            .push_blob(&oci, data, digest.as_str())
            .await
            .map_err(|e| classify(&blob, e))?;
        debug!(blob = %blob, size, "pushed blob");
        Ok(())
    }

    /// Streams blob `digest` from `from` (any registry) into `to` without
    /// holding it in memory (at most a few MiB at a time, uploaded in 4 MiB
    /// pieces); returns the bytes copied. The content is verified against
    /// `digest` before the upload is committed. It does not check whether
    /// `to` already has the blob or try a mount: see
    /// [`Registry::blob_exists`] and [`Registry::mount_blob`].
    pub async fn copy_blob(
        &self,
        from: &ImageRef,
        to: &ImageRef,
        digest: &Digest,
    ) -> Result<u64, RegistryError> {
        let source = from.pinned(digest);
        let target = to.pinned(digest);
        let hasher = hasher_for(&source, digest)?;
        let _permits = self.permits(&[from.registry(), to.registry()]).await;
        let src = self.authorize(from, RegistryOperation::Pull).await?;
        let dst = self.authorize(to, RegistryOperation::Push).await?;
        let download = self
            .client
            .pull_blob_stream(&src, digest.as_str())
            .await
            .map_err(|e| classify(&source, e))?;
        let size_hint = download.content_length;
        let copied = Arc::new(AtomicU64::new(0));
        let failure = Arc::new(Mutex::new(None));
        let stream = Rechunk {
            inner: download.stream,
            buf: BytesMut::with_capacity(CHUNK),
            hasher: Some(hasher),
            expected: digest.clone(),
            source: source.clone(),
            copied: Arc::clone(&copied),
            failure: Arc::clone(&failure),
        }
        .into_stream();
        let pushed = self
            .client
            .push_blob_stream(&dst, stream, digest.as_str(), size_hint)
            .await;
        if let Err(e) = pushed {
            let from_source = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
            return Err(from_source.unwrap_or_else(|| classify(&target, e)));
        }
        let size = copied.load(Ordering::Relaxed);
        debug!(from = %source, to = %target, size, "copied blob");
        Ok(size)
    }

    /// Reads blob `digest` of `repository` whole, refusing (kind `Protocol`)
    /// one larger than `limit` bytes; the content is verified against
    /// `digest`.
    pub async fn blob(
        &self,
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
        let _permits = self.permits(&[repository.registry()]).await;
        let oci = self.authorize(repository, RegistryOperation::Pull).await?;
        let mut stream = self
            .client
            .pull_blob_stream(&oci, digest.as_str())
            .await
            .map_err(|e| classify(&blob, e))?;
        if let Some(n) = stream.content_length.filter(|n| *n > limit) {
            return Err(too_large(n));
        }
        let capacity = stream.content_length.unwrap_or(0).min(limit).min(1 << 20);
        let mut buf = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
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

    /// Streams blob `digest` of `repository` into `out` (for an OCI layout:
    /// see [`crate::Layout::blob_writer`]), flushes it, and returns the
    /// size. The content is verified against `digest`; on an error `out`
    /// may hold part of the blob. A failure to write `out` is reported with
    /// kind `Protocol` and says so.
    pub async fn blob_to_writer<W: AsyncWrite + Unpin + Send>(
        &self,
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
                format!("writing the blob out: {e}"),
            )
        };
        let _permits = self.permits(&[repository.registry()]).await;
        let oci = self.authorize(repository, RegistryOperation::Pull).await?;
        let mut stream = self
            .client
            .pull_blob_stream(&oci, digest.as_str())
            .await
            .map_err(|e| classify(&blob, e))?;
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

    /// Pushes manifest `bytes` under `reference` (a tag, or a digest for an
    /// index's children) as `media_type`; returns the manifest's digest (the
    /// sha256 of the bytes). A reference whose digest differs from the bytes'
    /// is refused before anything is sent.
    pub async fn push_manifest(
        &self,
        reference: &ImageRef,
        bytes: Vec<u8>,
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        let digest = Digest::sha256(&bytes);
        if let Some(named) = reference.digest().filter(|d| **d != digest) {
            return Err(error(
                reference,
                ErrorKind::Protocol,
                format!("manifest bytes hash to {digest}, not {named}"),
            ));
        }
        let content_type = media_type.parse().map_err(|_| {
            error(
                reference,
                ErrorKind::Protocol,
                format!("bad media type {media_type:?}"),
            )
        })?;
        let _permits = self.permits(&[reference.registry()]).await;
        let oci = self.authorize(reference, RegistryOperation::Push).await?;
        self.client
            .push_manifest_raw(&oci, bytes, content_type)
            .await
            .map_err(|e| classify(reference, e))?;
        debug!(%reference, %digest, "pushed manifest");
        Ok(digest)
    }
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
