//! Build backends.
//!
//! A build takes a Dockerfile that is already pinned (every base as
//! `name@digest`), a context, and the provenance annotations, runs the engine
//! without a shell, pushes the result under the version tag and returns the
//! pushed manifest digest and the captured log. Moving floating tags is not a
//! builder's business: the caller does it through the registry once the
//! version tag is recorded.

pub mod emulation;
pub mod engine;
pub mod native;
pub mod provenance;
pub mod remote;

use std::collections::BTreeMap;
use std::path::PathBuf;

use rebased_core::{Digest, ImageRef};

pub use engine::{installed_engine, Engine, EngineKind};
pub use native::Native;

/// Everything one build needs.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The image's name (for logs and local tags).
    pub image: String,
    /// A unique id of this build (job id).
    pub job: String,
    /// The build context directory.
    pub context: PathBuf,
    /// The pinned Dockerfile text.
    pub dockerfile: String,
    /// Platform -> its pinned Dockerfile, for a Dockerfile whose `FROM`
    /// names a platform `ARG` (a base per platform); a platform not listed
    /// is built from `dockerfile`.
    pub platform_dockerfiles: BTreeMap<String, String>,
    /// `--build-arg`s.
    pub build_args: BTreeMap<String, String>,
    /// Where to publish the version.
    pub target: Target,
    /// Platforms to build (`os/arch[/variant]`); empty: the base's, or the
    /// host's from a multi-platform base. Several make one index.
    pub platforms: Vec<String>,
    /// `SOURCE_DATE_EPOCH`: layer mtimes and the config's `created` (else 0
    /// for mtimes and now for `created`).
    pub source_date_epoch: Option<i64>,
    /// Manifest annotations, also set as config labels.
    pub annotations: BTreeMap<String, String>,
    /// Platform -> annotations that replace some of `annotations` on that
    /// platform's image (the base of its final stage, when each platform
    /// has its own); the index keeps `annotations`.
    pub platform_annotations: BTreeMap<String, BTreeMap<String, String>>,
    /// Registries reached over plain http.
    pub insecure_registries: Vec<String>,
    /// A scratch directory for this build; created if missing.
    pub workdir: PathBuf,
    /// Contents of a containers auth file (`{"auths": {...}}`) for the
    /// registries this build pulls from and pushes to; written 0600 into the
    /// workdir for the build only.
    pub auth_json: Option<String>,
    /// Build secrets: id -> file, given to the engine as build secrets
    /// (`RUN --mount=type=secret,id=ID`), never as build arguments, so they
    /// appear nowhere in the image.
    pub secrets: BTreeMap<String, PathBuf>,
    /// Extra CA certificates (PEM files) trusted for this build.
    pub ca_files: Vec<PathBuf>,
}

/// Where a build is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `repository:version` in a registry.
    Registry(ImageRef),
    /// An OCI image layout directory and the version's tag in it.
    Layout {
        /// The layout directory.
        path: PathBuf,
        /// The tag (`org.opencontainers.image.ref.name`).
        tag: String,
    },
}

impl Target {
    /// The containers-transport name (`docker://REF`, `oci:PATH:TAG`), as
    /// buildah, podman and skopeo take it.
    pub fn transport(&self) -> String {
        match self {
            Self::Registry(r) => format!("docker://{r}"),
            Self::Layout { path, tag } => format!("oci:{}:{tag}", path.display()),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Registry(r) => write!(f, "{r}"),
            Self::Layout { path, tag } => write!(f, "oci:{}:{tag}", path.display()),
        }
    }
}

/// A successful build.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// Digest of the manifest pushed under the version tag.
    /// `None` when the engine does not report it (docker-compatible CLIs
    /// that print no digest): the caller reads the version tag back.
    pub digest: Option<Digest>,
    /// The engine's output.
    pub log: String,
}

/// Why a build failed. Every variant carries the log captured so far.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The engine could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A step exited non-zero.
    #[error("{step} failed ({status}); last output: {tail}")]
    Failed {
        /// Which step (`build`, `push`).
        step: &'static str,
        /// The exit status.
        status: String,
        /// The end of the log.
        tail: String,
        /// The whole log.
        log: String,
    },
    /// The build ran past its timeout.
    #[error("{step} timed out after {seconds} s")]
    Timeout {
        /// Which step.
        step: &'static str,
        /// The limit.
        seconds: u64,
        /// The log so far.
        log: String,
    },
    /// The build was cancelled (shutdown).
    #[error("{step} cancelled")]
    Cancelled {
        /// Which step.
        step: &'static str,
        /// The log so far.
        log: String,
    },
    /// Workspace files could not be written or read.
    #[error("build workspace {path}: {source}")]
    Workspace {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The Dockerfile asks for something this backend does not do, or a
    /// `COPY`/`ADD` cannot be carried out; nothing was pushed.
    #[error("Dockerfile line {line}: {reason}")]
    Refused {
        /// 1-based line.
        line: usize,
        /// Why, with a hint.
        reason: String,
        /// The log so far.
        log: String,
    },
    /// A step of a native build, or the publishing of an engine's index,
    /// failed.
    #[error("{step}: {reason}")]
    Native {
        /// Which step (`context`, `base`, `push`, ...).
        step: String,
        /// What went wrong.
        reason: String,
        /// The log so far.
        log: String,
    },
    /// The backend cannot publish this request.
    #[error("{0}")]
    Unsupported(String),
    /// A remote engine stopped answering during the build (connection
    /// refused or dropped, no answer within the timeout, down in its
    /// health checks): not the image's failure; the build may run again
    /// on another engine.
    #[error("engine {engine} lost: {reason}")]
    EngineLost {
        /// The engine's name.
        engine: String,
        /// What was seen.
        reason: String,
        /// The log so far.
        log: String,
    },
    /// The engine reported a digest we cannot parse.
    #[error("engine reported an invalid digest {0:?}")]
    BadDigest(String),
}

impl BuildError {
    /// The log captured before the failure.
    pub fn log(&self) -> &str {
        match self {
            Self::Failed { log, .. }
            | Self::Timeout { log, .. }
            | Self::Cancelled { log, .. }
            | Self::Refused { log, .. }
            | Self::Native { log, .. }
            | Self::EngineLost { log, .. } => log,
            _ => "",
        }
    }
}
