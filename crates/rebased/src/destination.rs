//! Where an image's versions live: a registry repository or an OCI image
//! layout directory (`repository = "oci:PATH"`). The ledger and the executor
//! read and move tags through this, whichever it is.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use anyhow::{Context, Result};
use rebased_builder::Target;
use rebased_core::config::Repository;
use rebased_core::oci::{ImageConfig, Manifest};
use rebased_core::{Digest, ImageRef};
use rebased_registry::layout::Layout;
use rebased_registry::{RawManifest, Registry};

/// An image config is read whole; refuse more.
const MAX_CONFIG: u64 = 4 << 20;

/// An image's repository.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A registry repository (no tag).
    Registry(ImageRef),
    /// An OCI image layout directory.
    Layout(PathBuf),
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Registry(r) => write!(f, "{}", r.name()),
            Self::Layout(p) => write!(f, "oci:{}", p.display()),
        }
    }
}

impl From<&Repository> for Destination {
    fn from(r: &Repository) -> Self {
        match r {
            Repository::Registry(r) => Self::Registry(r.clone()),
            Repository::OciLayout(p) => Self::Layout(p.clone()),
        }
    }
}

impl Destination {
    /// Where a build of `tag` is published.
    pub fn target(&self, tag: &str) -> Target {
        match self {
            Self::Registry(r) => Target::Registry(r.with_tag(tag)),
            Self::Layout(p) => Target::Layout {
                path: p.clone(),
                tag: tag.to_owned(),
            },
        }
    }

    /// The registry repository, if that is what it is.
    pub fn registry(&self) -> Option<&ImageRef> {
        match self {
            Self::Registry(r) => Some(r),
            Self::Layout(_) => None,
        }
    }

    /// A layout that does not exist yet holds nothing; it is created by the
    /// first publish.
    fn layout(path: &std::path::Path) -> Result<Option<Layout>> {
        if !path.join("index.json").exists() {
            return Ok(None);
        }
        Layout::open(path)
            .map(Some)
            .with_context(|| format!("opening oci:{}", path.display()))
    }

    /// Every tag.
    pub async fn list_tags(&self, registry: &Registry) -> Result<Vec<String>> {
        match self {
            Self::Registry(r) => registry
                .list_tags(r)
                .await
                // The registry's error names the repository and registry.
                .context("listing the tags"),
            Self::Layout(p) => match Self::layout(p)? {
                Some(l) => l
                    .list_tags()
                    .with_context(|| format!("listing the tags of oci:{}", p.display())),
                None => Ok(Vec::new()),
            },
        }
    }

    /// The digest `tag` points at, `None` when there is no such tag.
    pub async fn lookup(&self, registry: &Registry, tag: &str) -> Result<Option<Digest>> {
        match self {
            Self::Registry(r) => Ok(registry.lookup(&r.with_tag(tag)).await?),
            Self::Layout(p) => match Self::layout(p)? {
                Some(l) => Ok(l.lookup(tag)?),
                None => Ok(None),
            },
        }
    }

    /// The manifest `tag` points at.
    pub async fn manifest(&self, registry: &Registry, tag: &str) -> Result<RawManifest> {
        match self {
            Self::Registry(r) => {
                let tagged = r.with_tag(tag);
                registry
                    .manifest(&tagged)
                    .await
                    .with_context(|| format!("reading {tagged}"))
            }
            Self::Layout(p) => Layout::open(p)?
                .manifest(tag)
                .with_context(|| format!("reading oci:{}:{tag}", p.display())),
        }
    }

    /// What rebased recorded on a version: the manifest's annotations,
    /// completed by its config's labels (engines such as docker write
    /// labels only). An index has no config: its annotations alone.
    pub async fn provenance(
        &self,
        registry: &Registry,
        manifest: &RawManifest,
    ) -> BTreeMap<String, String> {
        let mut found = manifest.annotations();
        if found.contains_key(rebased_builder::provenance::BASES) {
            return found;
        }
        let config = match Manifest::parse(&manifest.bytes) {
            Ok(Manifest::Image(m)) => m.config.digest(),
            _ => None,
        };
        let Some(config) = config else {
            return found;
        };
        let bytes = match self {
            Self::Registry(r) => registry.blob(r, &config, MAX_CONFIG).await.ok(),
            Self::Layout(p) => Layout::open(p)
                .ok()
                .and_then(|l| l.blob(&config, MAX_CONFIG).ok()),
        };
        let labels = bytes
            .and_then(|b| serde_json::from_slice::<ImageConfig>(&b).ok())
            .map(|c| c.labels())
            .unwrap_or_default();
        for (k, v) in labels {
            found.entry(k).or_insert(v);
        }
        found
    }

    /// Points `tag` at the manifest `digest`, which the destination holds.
    pub async fn tag(&self, registry: &Registry, digest: &Digest, tag: &str) -> Result<()> {
        match self {
            Self::Registry(r) => Ok(registry.tag(r, digest, tag).await?),
            Self::Layout(p) => Ok(Layout::open(p)?.tag(digest, tag)?),
        }
    }
}
