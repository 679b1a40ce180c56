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
//!
//! Every request goes through one transport (`transport`): auth challenges
//! (bearer and basic), a token cache keyed by registry and scope set,
//! retries with backoff, `429` with `Retry-After`, per-registry CAs and
//! size caps. Modules depend one way, without cycles: `lib` (the facade)
//! -> `manifests`, `tags`, `blobs` -> `transport` -> `auth`, `error`, with
//! `manifests` -> `document`, `blobs` -> `hash`, and inside `transport`
//! `token` -> `capped`; `layout` -> `document`, `hash`; `document`, `hash`
//! and `error` depend on no other module of the crate.

pub mod auth;
mod blobs;
mod document;
mod error;
mod hash;
pub mod layout;
mod manifests;
mod tags;
mod transport;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use rebased_core::config::RegistryConfig;
use rebased_core::{Digest, ImageRef};
use tokio::io::AsyncWrite;
use tracing::debug;

pub use document::{index_platforms, RawManifest, MANIFEST_MEDIA_TYPES};
pub use error::{ErrorKind, RegistryError};
pub use layout::{BlobWriter, Layout, LayoutError, Platform};
pub use manifests::Head;
pub use transport::token::{parse_token_response, Challenge};
pub use transport::{parse_rate_limit, parse_retry_after, Observer, RequestKind, RequestOutcome};

/// `WWW-Authenticate` parsing, re-exported for the fuzz targets and tests.
pub use transport::token::parse_challenge;

/// Tags asked for per tag list request.
const TAG_PAGE: usize = 1000;

/// A client for every registry rebased talks to, configured per host.
pub struct Registry {
    transport: transport::Transport,
}

impl Registry {
    /// A client honouring `[registries."HOST"]`: `insecure` (plain http),
    /// `ca_file`, `concurrency`, and credentials.
    pub fn new(registries: &BTreeMap<String, RegistryConfig>) -> Self {
        Self::with_timeout(registries, Duration::from_secs(30))
    }

    /// Like [`Registry::new`], with `timeout` for connecting and for each
    /// read of a response (tests use short ones).
    pub fn with_timeout(registries: &BTreeMap<String, RegistryConfig>, timeout: Duration) -> Self {
        Self {
            transport: transport::Transport::new(registries, timeout),
        }
    }

    /// This client, telling `observer` of every HTTP request it sends
    /// (polls, a build's pulls and pushes, tag moves, token requests).
    pub fn observed_by(mut self, observer: std::sync::Arc<dyn Observer>) -> Self {
        self.transport.observe(observer);
        self
    }

    /// Credentials for `host`, from the config, Docker's config.json or a
    /// credential helper; `None` for anonymous access.
    pub fn credentials(&self, host: &str) -> Result<Option<auth::Credentials>, String> {
        self.transport.credentials(host)
    }

    /// One `HEAD` of `reference` (a `GET` only when the registry sends no
    /// `Docker-Content-Digest`), within the host's concurrency bound, with
    /// retries and rate-limit handling. For an index this is the index digest.
    pub async fn head(&self, reference: &ImageRef) -> Result<Head, RegistryError> {
        let _permits = self.transport.permits(&[reference.registry()]).await;
        manifests::head(&self.transport, reference).await
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

    /// The manifest `reference` points at, bytes unchanged (read up to
    /// 4 MiB, never without bound).
    pub async fn manifest(&self, reference: &ImageRef) -> Result<RawManifest, RegistryError> {
        let _permits = self.transport.permits(&[reference.registry()]).await;
        let (head, bytes) = manifests::get(&self.transport, reference).await?;
        let media_type = document::declared_media_type(&bytes).ok_or_else(|| {
            error::error(
                reference,
                ErrorKind::Protocol,
                "manifest is not a JSON object",
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
        let manifest = self.manifest(&repository.pinned(digest)).await?;
        let target = repository.with_tag(tag);
        let _permits = self.transport.permits(&[target.registry()]).await;
        manifests::put(
            &self.transport,
            &target,
            manifest.bytes,
            &manifest.media_type,
        )
        .await?;
        debug!(reference = %target, %digest, "tagged");
        Ok(())
    }

    /// Every tag of `repository` (following pagination).
    pub async fn list_tags(&self, repository: &ImageRef) -> Result<Vec<String>, RegistryError> {
        self.list_tags_in_pages(repository, TAG_PAGE).await
    }

    /// Like [`Registry::list_tags`], asking for `page` tags per request
    /// (at least one).
    pub async fn list_tags_in_pages(
        &self,
        repository: &ImageRef,
        page: usize,
    ) -> Result<Vec<String>, RegistryError> {
        let _permits = self.transport.permits(&[repository.registry()]).await;
        tags::list(&self.transport, repository, page.max(1)).await
    }

    /// Whether `repository` holds blob `digest` (`HEAD /v2/<name>/blobs/<digest>`).
    pub async fn blob_exists(
        &self,
        repository: &ImageRef,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let _permits = self.transport.permits(&[repository.registry()]).await;
        blobs::exists(&self.transport, repository, digest).await
    }

    /// Cross-repository mount of `digest` from `from` into `repository`,
    /// with a token carrying push on `repository` and pull on `from`.
    ///
    /// `Ok(true)` when mounted (201). `Ok(false)` when the registry declines:
    /// `from` is on another registry, the registry answered 202 (it started
    /// an ordinary upload instead; that session is left to the registry to
    /// expire: [`Registry::mount_or_copy`] uses it), or 401 / 403 / 404; each refusal by the registry is logged
    /// (a warning naming the registry, both repositories, the status and
    /// the registry's reason). The caller then copies the blob
    /// ([`Registry::copy_blob`]). Other failures are errors.
    pub async fn mount_blob(
        &self,
        repository: &ImageRef,
        from: &ImageRef,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let _permits = self.transport.permits(&[repository.registry()]).await;
        blobs::mount(&self.transport, repository, from, digest).await
    }

    /// A cross-repository mount of `digest` from `from` into `repository`
    /// ([`Registry::mount_blob`]), and when it is declined a streamed copy
    /// from `from` ([`Registry::copy_blob`]) into the upload session the
    /// registry opened in answer to the mount (a 202), or a new one.
    /// `Ok(None)` when mounted, else `Ok(Some(bytes copied))`.
    pub async fn mount_or_copy(
        &self,
        repository: &ImageRef,
        from: &ImageRef,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        let _permits = self
            .transport
            .permits(&[from.registry(), repository.registry()])
            .await;
        blobs::mount_or_copy(&self.transport, repository, from, digest).await
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
        let _permits = self.transport.permits(&[repository.registry()]).await;
        blobs::push(&self.transport, repository, data, digest).await
    }

    /// Streams blob `digest` from `from` (any registry) into `to` without
    /// holding it in memory (at most a few MiB at a time); returns the
    /// bytes copied. The content is verified against `digest` before the
    /// upload is committed. The streamed upload is not retried (see the
    /// transport); a failure is the caller's to retry. It does not check
    /// whether `to` already has the blob or try a mount: see
    /// [`Registry::blob_exists`] and [`Registry::mount_blob`].
    pub async fn copy_blob(
        &self,
        from: &ImageRef,
        to: &ImageRef,
        digest: &Digest,
    ) -> Result<u64, RegistryError> {
        let _permits = self
            .transport
            .permits(&[from.registry(), to.registry()])
            .await;
        blobs::copy(&self.transport, from, to, digest).await
    }

    /// Streams the file `path` as blob `digest` into `repository` (a layer
    /// of an OCI layout on disk), holding at most a few MiB of it in
    /// memory; returns the bytes sent. The content is verified against
    /// `digest` before the upload is committed; like [`Registry::copy_blob`]
    /// the streamed upload is sent once, not retried.
    pub async fn push_blob_file(
        &self,
        repository: &ImageRef,
        path: &std::path::Path,
        digest: &Digest,
    ) -> Result<u64, RegistryError> {
        let _permits = self.transport.permits(&[repository.registry()]).await;
        blobs::push_file(&self.transport, repository, path, digest).await
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
        let _permits = self.transport.permits(&[repository.registry()]).await;
        blobs::read(&self.transport, repository, digest, limit).await
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
        out: W,
    ) -> Result<u64, RegistryError> {
        let _permits = self.transport.permits(&[repository.registry()]).await;
        blobs::to_writer(&self.transport, repository, digest, out).await
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
        let _permits = self.transport.permits(&[reference.registry()]).await;
        manifests::put(&self.transport, reference, bytes, media_type).await
    }
}
