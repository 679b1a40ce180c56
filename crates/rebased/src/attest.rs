//! The statements a version is attested with (`signing.attest`): SLSA
//! provenance from the release, and an SBOM of the operating-system
//! packages read from the version's layers in the registry (each layer
//! streamed to a temporary file, then read for the package databases).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use rebased_core::config::Attestation;
use rebased_core::oci::Manifest;
use rebased_core::{Digest, ImageRef};
use rebased_registry::Registry;
use rebased_sign::attest::{self, PackageFiles, Provenance};

/// What the provenance says beyond the registry's digests.
pub struct Build<'a> {
    /// The image's name.
    pub image: &'a str,
    /// The version.
    pub version: String,
    /// Every base and its digest.
    pub bases: &'a BTreeMap<String, Digest>,
    /// The source URL and revision, where there is one.
    pub source: Option<(String, String)>,
    /// The backend (`native`, `buildah`, ...).
    pub backend: &'a str,
    /// The trigger.
    pub trigger: String,
    /// The job.
    pub job: u64,
    /// When the job started building.
    pub started: DateTime<Utc>,
    /// When the version was pushed.
    pub finished: DateTime<Utc>,
}

/// The `(predicate type, statement)` of each of `kinds` for `digest` in
/// `repo` (for an index, the SBOM of each child in `children`).
pub async fn statements(
    registry: &Registry,
    repo: &ImageRef,
    digest: &Digest,
    children: &BTreeMap<String, Digest>,
    kinds: &[Attestation],
    build: &Build<'_>,
) -> Result<Vec<(String, Vec<u8>)>> {
    let name = repo.name();
    let mut out = Vec::new();
    for kind in kinds {
        match kind {
            Attestation::Slsa => {
                let p = Provenance {
                    repository: &name,
                    digest,
                    image: build.image,
                    version: &build.version,
                    bases: build.bases,
                    source: build.source.as_ref().map(|(u, r)| (u.as_str(), r.as_str())),
                    rebased_version: env!("CARGO_PKG_VERSION"),
                    backend: build.backend,
                    trigger: &build.trigger,
                    job: build.job,
                    started: build.started,
                    finished: build.finished,
                };
                out.push((attest::SLSA_PROVENANCE.to_owned(), attest::provenance(&p)));
            }
            Attestation::Sbom => {
                let manifests: Vec<&Digest> = if children.is_empty() {
                    vec![digest]
                } else {
                    children.values().collect()
                };
                let index = (!children.is_empty()).then_some(digest);
                for m in manifests {
                    let files = package_files(registry, repo, m)
                        .await
                        .with_context(|| format!("reading the packages of {name}@{m}"))?;
                    out.push((
                        attest::SPDX.to_owned(),
                        attest::sbom(
                            &name,
                            m,
                            index,
                            &files,
                            Utc::now(),
                            env!("CARGO_PKG_VERSION"),
                        ),
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// Largest layer read for the SBOM (as the native backend reads a base
/// layer): a layer declared larger is refused before it is fetched, and a
/// registry that sends more than declared is cut off.
const MAX_LAYER: u64 = 1 << 30;

/// The package files of the image manifest `digest`, through its layers,
/// each streamed to an unnamed temporary file of its own (created
/// exclusively, so a name planted in the temporary directory is never
/// followed) and read from there.
async fn package_files(
    registry: &Registry,
    repo: &ImageRef,
    digest: &Digest,
) -> Result<PackageFiles> {
    let manifest = registry.manifest(&repo.pinned(digest)).await?;
    let Ok(Manifest::Image(m)) = Manifest::parse(&manifest.bytes) else {
        anyhow::bail!("{digest} is not an image manifest");
    };
    let mut files = PackageFiles::default();
    for layer in &m.layers {
        let Some(d) = layer.digest() else {
            continue;
        };
        let declared = layer.size;
        if declared > MAX_LAYER {
            anyhow::bail!(
                "layer {d} is {declared} bytes, more than the {MAX_LAYER} read for an SBOM"
            );
        }
        let tmp = tempfile::tempfile().context("creating a temporary file for a layer")?;
        let writer = tmp
            .try_clone()
            .context("opening the layer's temporary file")?;
        let limit = if declared > 0 { declared } else { MAX_LAYER };
        let capped = Capped {
            inner: tokio::fs::File::from_std(writer),
            left: limit,
        };
        registry
            .blob_to_writer(repo, &d, capped)
            .await
            .with_context(|| format!("fetching layer {d}"))?;
        let before = files;
        files = tokio::task::spawn_blocking(move || {
            let mut f = before;
            let mut r = tmp;
            std::io::Seek::rewind(&mut r)
                .and_then(|()| f.apply_layer(r))
                .map(|()| f)
        })
        .await
        .context("reading a layer")?
        .with_context(|| format!("layer {d}"))?;
    }
    Ok(files)
}

/// A writer that refuses more than `left` bytes.
struct Capped<W> {
    inner: W,
    left: u64,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Capped<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if u64::try_from(buf.len()).unwrap_or(u64::MAX) > self.left {
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the layer is larger than its manifest says (or than the cap)",
            )));
        }
        let this = &mut *self;
        let n = std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.left -= u64::try_from(n).unwrap_or(u64::MAX).min(this.left);
        std::task::Poll::Ready(Ok(n))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    #[tokio::test]
    async fn a_layer_larger_than_declared_is_cut_off() {
        let mut w = Capped {
            inner: Vec::new(),
            left: 10,
        };
        w.write_all(b"0123456789").await.expect("within the cap");
        let err = w.write_all(b"x").await.expect_err("over the cap");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert_eq!(w.inner, b"0123456789");
    }
}
