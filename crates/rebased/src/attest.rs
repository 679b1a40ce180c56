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
                for m in manifests {
                    let files = package_files(registry, repo, m)
                        .await
                        .with_context(|| format!("reading the packages of {name}@{m}"))?;
                    out.push((
                        attest::SPDX.to_owned(),
                        attest::sbom(&name, m, &files, Utc::now(), env!("CARGO_PKG_VERSION")),
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// The package files of the image manifest `digest`, through its layers.
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
    let dir = std::env::temp_dir();
    for layer in &m.layers {
        let Some(d) = layer.digest() else {
            continue;
        };
        let path = dir.join(format!(
            "rebased-sbom-{}-{}",
            std::process::id(),
            d.encoded()
        ));
        let file = tokio::fs::File::create(&path)
            .await
            .with_context(|| format!("creating {}", path.display()))?;
        let fetched = registry.blob_to_writer(repo, &d, file).await;
        let read = match fetched {
            Ok(_) => {
                let p = path.clone();
                let before = files;
                tokio::task::spawn_blocking(move || {
                    let mut f = before;
                    std::fs::File::open(&p)
                        .and_then(|r| f.apply_layer(r))
                        .map(|()| f)
                })
                .await
                .context("reading a layer")?
                .with_context(|| format!("layer {d}"))
            }
            Err(e) => Err(e.into()),
        };
        let _ = tokio::fs::remove_file(&path).await;
        files = read?;
    }
    Ok(files)
}
