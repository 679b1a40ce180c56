//! The engine backends: `buildah`, `podman` and `docker`. buildah and
//! podman build with vfs storage and chroot isolation under the state
//! directory, then `push --digestfile`; docker builds in its daemon, pushes,
//! and reads the pushed digest from its output. No shell is involved:
//! every argument is passed as is.
//!
//! Several `platforms`: buildah and podman build one image per platform
//! (`--platform`), collect them into one manifest list (`manifest create`,
//! `manifest add`) and write it with `manifest push --all --format oci` to
//! an OCI layout in the build's workdir. Neither the installed buildah
//! (1.28) nor podman (4.3) can set annotations on the index itself (no
//! `manifest create --annotation`, no `manifest annotate --index`), so
//! rebased sets them on the layout's index and publishes it through the
//! registry crate: every child's blobs (streamed from the layout's files)
//! and manifest first, the index under the version tag last, so nothing is tagged for a partial set of
//! platforms, and the version's digest is the annotated index's. docker
//! (in command lines podman takes too) builds and pushes each platform's
//! image under a temporary tag of the target repository (`docker build
//! --platform P`, `docker push`), and rebased writes and pushes the
//! annotated index of those children the same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rebased_core::oci::{media_type, ImageIndex, Manifest, Platform};
use rebased_core::{Digest, ImageRef};
use rebased_registry::{Layout, Registry};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::{BuildError, BuildOutput, BuildRequest, Target};

/// Keep at most this much of a log (the tail) in memory.
const MAX_LOG: usize = 1 << 20;

/// Which engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// `buildah bud`.
    Buildah,
    /// `podman build`.
    Podman,
    /// `docker build` (a daemon; its own storage and registry settings).
    Docker,
}

impl EngineKind {
    /// The program's usual name.
    pub fn program(self) -> &'static str {
        match self {
            Self::Buildah => "buildah",
            Self::Podman => "podman",
            Self::Docker => "docker",
        }
    }
}

/// The first of buildah, podman and docker found on `PATH`.
pub fn installed_engine() -> Option<EngineKind> {
    let path = std::env::var_os("PATH")?;
    [EngineKind::Buildah, EngineKind::Podman, EngineKind::Docker]
        .into_iter()
        .find(|k| std::env::split_paths(&path).any(|dir| dir.join(k.program()).is_file()))
}

/// How to run an engine.
#[derive(Debug, Clone)]
pub struct Engine {
    /// Which engine.
    pub kind: EngineKind,
    /// The program (`buildah`, `podman`, `docker`).
    pub program: PathBuf,
    /// Container storage root (`--root`).
    pub root: PathBuf,
    /// Runtime state (`--runroot`).
    pub runroot: PathBuf,
    /// Time limit for the whole build and push.
    pub timeout: Duration,
}

impl Engine {
    /// `kind`, with storage under `dir` (`dir/root`, `dir/runroot`) for
    /// buildah and podman.
    pub fn with_storage(kind: EngineKind, dir: &Path, timeout: Duration) -> Self {
        Self {
            kind,
            program: PathBuf::from(kind.program()),
            root: dir.join("root"),
            runroot: dir.join("runroot"),
            timeout,
        }
    }

    fn command(&self, registries_conf: &Path) -> Command {
        let mut c = Command::new(&self.program);
        if self.kind != EngineKind::Docker {
            c.arg("--root")
                .arg(&self.root)
                .arg("--runroot")
                .arg(&self.runroot)
                .arg("--storage-driver")
                .arg("vfs")
                .env("CONTAINERS_REGISTRIES_CONF", registries_conf)
                .env("BUILDAH_ISOLATION", "chroot");
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so cancelling kills the build steps too.
            .process_group(0)
            .kill_on_drop(true);
        c
    }

    /// Builds and pushes `req.target`; returns the pushed digest. With
    /// several platforms, buildah and podman publish the index through
    /// `registry` (see the module's documentation).
    pub async fn build(
        &self,
        req: &BuildRequest,
        registry: &Registry,
        cancel: &CancellationToken,
    ) -> Result<BuildOutput, BuildError> {
        let deadline = Instant::now() + self.timeout;
        let docker = self.kind == EngineKind::Docker;
        if docker {
            if let Target::Layout { .. } = req.target {
                return Err(BuildError::Unsupported(
                    "the docker backend pushes to registries only; use native, buildah or podman for an oci: repository".to_owned(),
                ));
            }
        }
        let ws = Workspace::write(req, docker).await?;
        if req.platforms.len() > 1 {
            return if docker {
                self.docker_index(req, registry, &ws, deadline, cancel)
                    .await
            } else {
                self.build_index(req, registry, &ws, deadline, cancel).await
            };
        }
        // docker pushes an image by its name: build it as the target.
        let local = match (&req.target, docker) {
            (Target::Registry(r), true) => r.to_string(),
            _ => format!("localhost/rebased-build/job-{}:latest", sanitize(&req.job)),
        };
        let mut log = String::new();
        info!(image = %req.image, job = %req.job, target = %req.target, engine = self.kind.program(), "build");
        let built = self
            .run(
                "build",
                self.bud(req, &ws, &ws.dockerfile, &local, None),
                deadline,
                cancel,
                &mut log,
            )
            .await;
        let pushed = match built {
            Ok(()) => {
                info!(image = %req.image, job = %req.job, target = %req.target, engine = self.kind.program(), "push");
                self.run(
                    "push",
                    self.push(req, &ws, &local),
                    deadline,
                    cancel,
                    &mut log,
                )
                .await
            }
            Err(e) => Err(e),
        };
        // The local image is only a vehicle for the push.
        let mut rmi = ws.command(self);
        rmi.arg("rmi").arg("-f").arg(&local);
        if let Ok(out) = rmi.output().await {
            debug!(status = %out.status, engine = self.kind.program(), "rmi");
        }
        pushed?;
        let digest = if docker {
            // docker has no --digestfile; it prints `TAG: digest: sha256:... size: N`.
            pushed_digest(&log)
        } else {
            let text = tokio::fs::read_to_string(&ws.digest_file)
                .await
                .map_err(workspace_err(&ws.digest_file))?;
            Some(
                Digest::parse(text.trim())
                    .map_err(|_| BuildError::BadDigest(text.trim().to_owned()))?,
            )
        };
        Ok(BuildOutput { digest, log })
    }

    /// The build command line (`bud` or `build`) of `req` from
    /// `dockerfile`, tagged `local`, for `platform` (else the one platform
    /// of `req` when it is not the host's, else the host's).
    fn bud(
        &self,
        req: &BuildRequest,
        ws: &Workspace,
        dockerfile: &Path,
        local: &str,
        platform: Option<&str>,
    ) -> Command {
        let docker = self.kind == EngineKind::Docker;
        let mut bud = ws.command(self);
        match self.kind {
            EngineKind::Buildah => {
                bud.arg("bud");
            }
            EngineKind::Podman | EngineKind::Docker => {
                bud.arg("build");
            }
        }
        bud.args(&ws.extra);
        if !docker {
            bud.arg("--isolation").arg("chroot").arg("--layers=false");
        }
        match (platform, req.platforms.as_slice()) {
            (Some(p), _) => {
                bud.arg("--platform").arg(p);
            }
            // One platform, not the host's: built for it (emulated).
            (None, [p]) if Platform::parse(p).is_ok_and(|p| p != Platform::host()) => {
                bud.arg("--platform").arg(p);
            }
            _ => {}
        }
        bud.arg("-f").arg(dockerfile).arg("-t").arg(local);
        let mut annotations = req.annotations.clone();
        if let Some(own) = platform.and_then(|p| req.platform_annotations.get(p)) {
            annotations.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        for (k, v) in &annotations {
            if !docker {
                bud.arg("--annotation").arg(format!("{k}={v}"));
            }
            bud.arg("--label").arg(format!("{k}={v}"));
        }
        for (id, path) in &req.secrets {
            let mut spec = std::ffi::OsString::from(format!("id={id},src="));
            spec.push(path);
            bud.arg("--secret").arg(spec);
        }
        for (k, v) in &req.build_args {
            bud.arg("--build-arg").arg(format!("{k}={v}"));
        }
        bud.arg(&req.context);
        bud
    }

    /// Builds each of `req.platforms` (`--platform`), collects them into a
    /// manifest list written as an OCI layout in the workdir, annotates its
    /// index and publishes it to `req.target`: children first, the index
    /// under the version tag last.
    async fn build_index(
        &self,
        req: &BuildRequest,
        registry: &Registry,
        ws: &Workspace,
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> Result<BuildOutput, BuildError> {
        let job = sanitize(&req.job);
        let list = format!("localhost/rebased-build/job-{job}-index:latest");
        let locals: Vec<(String, String)> = req
            .platforms
            .iter()
            .map(|p| {
                (
                    p.clone(),
                    format!("localhost/rebased-build/job-{job}-{}:latest", sanitize(p)),
                )
            })
            .collect();
        let layout_dir = req.workdir.join("index");
        let mut log = String::new();
        let built = async {
            for (platform, local) in &locals {
                info!(image = %req.image, job = %req.job, %platform, engine = self.kind.program(), "build");
                log.push_str(&format!("# platform {platform}\n"));
                let bud = self.bud(req, ws, ws.dockerfile_for(platform), local, Some(platform));
                self.run("build", bud, deadline, cancel, &mut log).await?;
            }
            let _ = self.list_command(ws, &["manifest", "rm", &list]).output().await;
            self.run(
                "manifest",
                self.list_command(ws, &["manifest", "create", &list]),
                deadline,
                cancel,
                &mut log,
            )
            .await?;
            for (_, local) in &locals {
                let add = self.list_command(
                    ws,
                    &["manifest", "add", &list, &format!("containers-storage:{local}")],
                );
                self.run("manifest", add, deadline, cancel, &mut log).await?;
            }
            let _ = tokio::fs::remove_dir_all(&layout_dir).await;
            let mut push = self.list_command(ws, &["manifest", "push", "--all", "--format", "oci"]);
            push.arg(&list)
                .arg(format!("oci:{}:index", layout_dir.display()));
            self.run("manifest", push, deadline, cancel, &mut log).await
        }
        .await;
        // The local images and the list are only vehicles for the push.
        let _ = self
            .list_command(ws, &["manifest", "rm", &list])
            .output()
            .await;
        for (_, local) in &locals {
            let _ = self.list_command(ws, &["rmi", "-f", local]).output().await;
        }
        built?;
        info!(image = %req.image, job = %req.job, target = %req.target, "push index");
        // Cut short, the index is not tagged: no version (its children
        // may stay behind, untagged).
        let published = within(
            publish_index(registry, &layout_dir, req, &mut log),
            cancel,
            deadline,
        )
        .await;
        self.index_outcome(published, log)
    }

    /// The engine with `args`, for list and image housekeeping.
    fn list_command(&self, ws: &Workspace, args: &[&str]) -> Command {
        let mut c = ws.command(self);
        c.args(args);
        c
    }

    /// docker's multi-platform build, in command lines Docker and podman
    /// both take: per platform one `docker build --platform P` tagged
    /// `<repo>:<temp tag>` (see [`temp_tag`]) and one `docker push` of it,
    /// its digest from the push output (else from the registry); then
    /// rebased writes the index of those children, annotated, and pushes it
    /// under the version tag through `registry`, so nothing is tagged with
    /// the version for a partial set of platforms.
    async fn docker_index(
        &self,
        req: &BuildRequest,
        registry: &Registry,
        ws: &Workspace,
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> Result<BuildOutput, BuildError> {
        if req
            .platform_dockerfiles
            .values()
            .any(|d| d != &req.dockerfile)
        {
            return Err(BuildError::Unsupported(
                "the docker backend builds all platforms from one Dockerfile, and this one names a different base per platform (a platform ARG in FROM); use buildah or podman".to_owned(),
            ));
        }
        let Target::Registry(target) = &req.target else {
            return Err(BuildError::Unsupported(
                "the docker backend pushes to registries only".to_owned(),
            ));
        };
        let repo = ImageRef::parse_repository(&target.name()).map_err(|e| BuildError::Native {
            step: "push".to_owned(),
            reason: format!("{target}: {e}"),
            log: String::new(),
        })?;
        let mut log = String::new();
        // Platform -> the pushed child (a manifest or, from a containerd
        // image store, an index holding it).
        let mut pushed: Vec<(String, ImageRef, Option<Digest>)> = Vec::new();
        for platform in &req.platforms {
            let tmp = repo.with_tag(&temp_tag(&req.image, platform));
            let local = tmp.to_string();
            info!(image = %req.image, job = %req.job, %platform, tag = %local, "docker build and push");
            log.push_str(&format!("# platform {platform}\n"));
            let mut bud = self.bud(req, ws, ws.dockerfile_for(platform), &local, Some(platform));
            // No provenance attestation: the child must be one image.
            bud.env("BUILDX_NO_DEFAULT_ATTESTATIONS", "1");
            let built = self.run("build", bud, deadline, cancel, &mut log).await;
            let mut push_log = String::new();
            let done = match built {
                Ok(()) => {
                    self.run(
                        "push",
                        self.push(req, ws, &local),
                        deadline,
                        cancel,
                        &mut push_log,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            append(&mut log, &push_log);
            let _ = self.list_command(ws, &["rmi", "-f", &local]).output().await;
            done.map_err(|e| with_log(e, &log))?;
            pushed.push((platform.clone(), tmp, pushed_digest(&push_log)));
        }
        info!(image = %req.image, job = %req.job, target = %req.target, "push index");
        let published = within(
            publish_docker_index(registry, &repo, target, &pushed, req, &mut log),
            cancel,
            deadline,
        )
        .await;
        self.index_outcome(published, log)
    }

    /// What the push of a multi-platform index (by rebased, after the
    /// engine's builds) came to, with the build's `log`.
    fn index_outcome(
        &self,
        published: Result<Result<Digest, String>, Cut>,
        log: String,
    ) -> Result<BuildOutput, BuildError> {
        match published {
            Ok(Ok(digest)) => Ok(BuildOutput {
                digest: Some(digest),
                log,
            }),
            Ok(Err(reason)) => Err(BuildError::Native {
                step: "push".to_owned(),
                reason,
                log,
            }),
            Err(Cut::Cancelled) => Err(BuildError::Cancelled { step: "push", log }),
            Err(Cut::Timeout) => Err(BuildError::Timeout {
                step: "push",
                seconds: self.timeout.as_secs(),
                log,
            }),
        }
    }

    /// The push command line of the image `local` to `req.target`.
    fn push(&self, req: &BuildRequest, ws: &Workspace, local: &str) -> Command {
        let mut push = ws.command(self);
        push.arg("push");
        if self.kind == EngineKind::Docker {
            push.arg(local);
        } else {
            push.args(&ws.extra)
                .arg("--digestfile")
                .arg(&ws.digest_file)
                .arg(local)
                .arg(req.target.transport());
        }
        push
    }

    async fn run(
        &self,
        step: &'static str,
        mut cmd: Command,
        deadline: Instant,
        cancel: &CancellationToken,
        log: &mut String,
    ) -> Result<(), BuildError> {
        let program = self.program.display().to_string();
        log.push_str(&format!("$ {} {step}\n", program));
        let mut child = cmd.spawn().map_err(|source| BuildError::Spawn {
            program: program.clone(),
            source,
        })?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let out_task = tokio::spawn(read_all(stdout));
        let err_task = tokio::spawn(read_all(stderr));
        // Output readers may outlive a killed engine (its children hold the
        // pipes): wait for them only briefly.
        let collect = |log: &mut String, out: String, err: String| {
            append(log, &out);
            append(log, &err);
        };
        async fn join(task: tokio::task::JoinHandle<String>) -> String {
            match tokio::time::timeout(std::time::Duration::from_secs(5), task).await {
                Ok(Ok(s)) => s,
                _ => "[output reader did not finish]\n".to_owned(),
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let status = tokio::select! {
            s = child.wait() => Some(s),
            _ = tokio::time::sleep(remaining) => None,
            _ = cancel.cancelled() => {
                kill_group(&mut child).await;
                let (out, err) = (join(out_task).await, join(err_task).await);
                collect(log, out, err);
                return Err(BuildError::Cancelled { step, log: log.clone() });
            }
        };
        let Some(status) = status else {
            kill_group(&mut child).await;
            let (out, err) = (join(out_task).await, join(err_task).await);
            collect(log, out, err);
            return Err(BuildError::Timeout {
                step,
                seconds: self.timeout.as_secs(),
                log: log.clone(),
            });
        };
        let (out, err) = (join(out_task).await, join(err_task).await);
        collect(log, out, err);
        let status = status.map_err(|source| BuildError::Spawn { program, source })?;
        if status.success() {
            Ok(())
        } else {
            Err(BuildError::Failed {
                step,
                status: status.to_string(),
                tail: tail(log, 600),
                log: log.clone(),
            })
        }
    }
}

/// The largest manifest read from a build's layout.
const MAX_MANIFEST: u64 = 4 << 20;

/// Publishes the manifest list an engine wrote to the layout `dir` (tag
/// `index`) to `req.target`, with `req.annotations` on the index: every
/// child's config and layers (those the target lacks), each child manifest
/// by digest, then the index under the version tag. Returns the index's
/// digest.
async fn publish_index(
    registry: &Registry,
    dir: &Path,
    req: &BuildRequest,
    log: &mut String,
) -> Result<Digest, String> {
    let layout = Layout::open(dir).map_err(|e| e.to_string())?;
    let raw = layout.manifest("index").map_err(|e| e.to_string())?;
    let mut index: ImageIndex = match Manifest::parse(&raw.bytes) {
        Ok(Manifest::Index(i)) => i,
        _ => return Err(format!("{}: the engine wrote no index", dir.display())),
    };
    index.media_type = Some(media_type::OCI_INDEX.to_owned());
    for (k, v) in &req.annotations {
        index.annotations.insert(k.clone(), v.clone());
    }
    let index_bytes = serde_json::to_vec(&index).map_err(|e| e.to_string())?;
    // Each child: (digest, media type, bytes, its blobs).
    let mut children = Vec::new();
    for entry in &index.manifests {
        let digest = entry
            .digest()
            .ok_or_else(|| format!("index entry with a bad digest {:?}", entry.digest))?;
        let bytes = layout
            .blob(&digest, MAX_MANIFEST)
            .map_err(|e| e.to_string())?;
        let Ok(Manifest::Image(m)) = Manifest::parse(&bytes) else {
            return Err(format!("child {digest} is not an image manifest"));
        };
        let mut blobs = Vec::new();
        for d in std::iter::once(&m.config).chain(m.layers.iter()) {
            blobs.push(
                d.digest()
                    .ok_or_else(|| format!("child {digest}: bad blob digest {:?}", d.digest))?,
            );
        }
        let platform = entry
            .platform
            .as_ref()
            .map_or_else(|| "?".to_owned(), ToString::to_string);
        children.push((digest, entry.media_type.clone(), bytes, blobs, platform));
    }
    match &req.target {
        Target::Registry(target) => {
            let repo = ImageRef::parse_repository(&target.name()).map_err(|e| e.to_string())?;
            for (digest, media, bytes, blobs, platform) in children {
                for b in blobs {
                    if registry
                        .blob_exists(&repo, &b)
                        .await
                        .map_err(|e| e.to_string())?
                    {
                        continue;
                    }
                    let path = layout.blob_path(&b).map_err(|e| e.to_string())?;
                    registry
                        .push_blob_file(&repo, &path, &b)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                let media = if media.is_empty() {
                    media_type::OCI_MANIFEST.to_owned()
                } else {
                    media
                };
                registry
                    .push_manifest(&repo.pinned(&digest), bytes, &media)
                    .await
                    .map_err(|e| e.to_string())?;
                log.push_str(&format!("pushed {platform} {digest}\n"));
            }
            let tag = target.tag().unwrap_or("latest");
            let digest = registry
                .push_manifest(&repo.with_tag(tag), index_bytes, media_type::OCI_INDEX)
                .await
                .map_err(|e| e.to_string())?;
            log.push_str(&format!("pushed index {repo}:{tag} {digest}\n"));
            Ok(digest)
        }
        Target::Layout { path, tag } => {
            let out = Layout::open(path).map_err(|e| e.to_string())?;
            for (digest, _, bytes, blobs, platform) in children {
                for b in blobs {
                    if !out.has_blob(&b) {
                        let path = layout.blob_path(&b).map_err(|e| e.to_string())?;
                        let mut from = tokio::fs::File::open(&path)
                            .await
                            .map_err(|e| format!("{}: {e}", path.display()))?;
                        let mut w = out.blob_writer(&b).map_err(|e| e.to_string())?;
                        tokio::io::copy(&mut from, &mut w)
                            .await
                            .map_err(|e| format!("{}: {e}", path.display()))?;
                        w.commit().await.map_err(|e| e.to_string())?;
                    }
                }
                out.put_blob(&bytes).map_err(|e| e.to_string())?;
                log.push_str(&format!("wrote {platform} {digest}\n"));
            }
            let digest = out
                .put_manifest(&index_bytes, media_type::OCI_INDEX, tag)
                .map_err(|e| e.to_string())?;
            log.push_str(&format!(
                "wrote index oci:{}:{tag} {digest}\n",
                path.display()
            ));
            Ok(digest)
        }
    }
}

/// `e` with `log` as its whole log (a step run into a log of its own).
fn with_log(e: BuildError, whole: &str) -> BuildError {
    match e {
        BuildError::Failed { step, status, .. } => BuildError::Failed {
            step,
            status,
            tail: tail(whole, 600),
            log: whole.to_owned(),
        },
        BuildError::Timeout { step, seconds, .. } => BuildError::Timeout {
            step,
            seconds,
            log: whole.to_owned(),
        },
        BuildError::Cancelled { step, .. } => BuildError::Cancelled {
            step,
            log: whole.to_owned(),
        },
        other => other,
    }
}

/// The tag docker's multi-platform build pushes `platform`'s child of
/// `image` under before the index exists: `rebased-build-IMAGE-OS-ARCH`
/// (lowercase, `-` for anything else, at most 128 characters). One per
/// image and platform, so the next build of the image overwrites it and
/// two images that share a repository do not collide.
fn temp_tag(image: &str, platform: &str) -> String {
    let mut tag = format!("rebased-build-{}-{}", sanitize(image), sanitize(platform));
    tag.truncate(128);
    tag
}

/// Writes the index of docker's pushed children (`pushed`: platform, temp
/// tag, digest from the push output if it printed one), annotated with
/// `req.annotations`, and pushes it as `target`. Returns its digest.
async fn publish_docker_index(
    registry: &Registry,
    repo: &ImageRef,
    target: &ImageRef,
    pushed: &[(String, ImageRef, Option<Digest>)],
    req: &BuildRequest,
    log: &mut String,
) -> Result<Digest, String> {
    let mut index = ImageIndex::new();
    index.annotations = req.annotations.clone();
    for (platform, tmp, digest) in pushed {
        let reference = match digest {
            Some(d) => repo.pinned(d),
            None => tmp.clone(),
        };
        let raw = registry
            .manifest(&reference)
            .await
            .map_err(|e| e.to_string())?;
        let wanted = Platform::parse(platform).map_err(|e| format!("{platform}: {e}"))?;
        let entry = match Manifest::parse(&raw.bytes) {
            Ok(Manifest::Image(_)) => rebased_core::oci::Descriptor {
                media_type: raw.media_type.clone(),
                digest: raw.digest.to_string(),
                size: raw.bytes.len() as u64,
                platform: Some(wanted),
                ..Default::default()
            },
            // A containerd image store pushes an index: its child for
            // the platform.
            Ok(Manifest::Index(i)) => i
                .manifests
                .into_iter()
                .find(|d| d.platform.as_ref() == Some(&wanted))
                .ok_or_else(|| format!("{reference}: an index with no {platform} image"))?,
            Err(e) => return Err(format!("{reference}: {e}")),
        };
        log.push_str(&format!("pushed {platform} {}\n", entry.digest));
        index.manifests.push(entry);
    }
    let bytes = serde_json::to_vec(&index).map_err(|e| e.to_string())?;
    let tag = target.tag().unwrap_or("latest");
    let digest = registry
        .push_manifest(&repo.with_tag(tag), bytes, media_type::OCI_INDEX)
        .await
        .map_err(|e| e.to_string())?;
    log.push_str(&format!("pushed index {repo}:{tag} {digest}\n"));
    Ok(digest)
}

/// The last `digest: sha256:...` that `docker push` printed.
pub(crate) fn pushed_digest(log: &str) -> Option<Digest> {
    log.lines()
        .rev()
        .filter_map(|l| l.split_once("digest: ").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_whitespace().next())
        .find_map(|d| Digest::parse(d).ok())
}

/// Kills the engine and everything in its process group.
async fn kill_group(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        // `--` matters: without it procps' kill reads `-PID` as an option.
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--"])
            .arg(format!("-{pid}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
    let _ = child.kill().await;
}

/// Writes a file readable by its owner only.
async fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = path.to_owned();
    let data = data.to_vec();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(&data)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Lowercase alphanumerics and `-` only: safe inside a local image name.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

async fn read_all<R: AsyncRead + Unpin>(r: Option<R>) -> String {
    let mut buf = Vec::new();
    if let Some(mut r) = r {
        let _ = r.read_to_end(&mut buf).await;
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The marker that starts a cut log: `[N bytes of earlier output cut]`.
const CUT_SUFFIX: &str = " bytes of earlier output cut]\n";

/// Appends to a log kept to its last `MAX_LOG` bytes; the first line then
/// says how many bytes were cut in all.
pub(crate) fn append(log: &mut String, text: &str) {
    log.push_str(text);
    if log.len() <= MAX_LOG {
        return;
    }
    let (already, body_start) = match log
        .strip_prefix('[')
        .and_then(|rest| rest.split_once(CUT_SUFFIX))
        .and_then(|(n, _)| Some((n.parse::<usize>().ok()?, 1 + n.len() + CUT_SUFFIX.len())))
    {
        Some((n, start)) => (n, start),
        None => (0, 0),
    };
    let body_len = log.len() - body_start;
    let cut = (log.len() - MAX_LOG..log.len())
        .find(|i| *i >= body_start && log.is_char_boundary(*i))
        .unwrap_or(log.len());
    let total = already + (cut - body_start);
    debug_assert!(cut - body_start <= body_len);
    log.replace_range(..cut, &format!("[{total}{CUT_SUFFIX}"));
}

fn tail(log: &str, n: usize) -> String {
    let start = log.len().saturating_sub(n);
    let start = (start..log.len())
        .find(|i| log.is_char_boundary(*i))
        .unwrap_or(log.len());
    log[start..].trim().to_owned()
}

fn workspace_err(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.to_owned();
    move |source| BuildError::Workspace { path, source }
}

/// The files one engine build reads from its workdir: the pinned
/// Dockerfile, a `registries.conf` for insecure hosts, credentials and CAs
/// for this build only, and where the pushed digest is written.
struct Workspace {
    dockerfile: PathBuf,
    /// Platform -> its own pinned Dockerfile, where it differs.
    platform_dockerfiles: BTreeMap<String, PathBuf>,
    registries_conf: PathBuf,
    /// `--authfile` and `--cert-dir` (buildah and podman).
    extra: Vec<std::ffi::OsString>,
    /// `$DOCKER_CONFIG` for docker, which reads `config.json` there.
    docker_config: Option<PathBuf>,
    digest_file: PathBuf,
}

impl Workspace {
    async fn write(req: &BuildRequest, docker: bool) -> Result<Workspace, BuildError> {
        let ws = workspace_err;
        tokio::fs::create_dir_all(&req.workdir)
            .await
            .map_err(ws(&req.workdir))?;
        let dockerfile = req.workdir.join("Dockerfile");
        tokio::fs::write(&dockerfile, &req.dockerfile)
            .await
            .map_err(ws(&dockerfile))?;
        let mut platform_dockerfiles = BTreeMap::new();
        for (platform, text) in &req.platform_dockerfiles {
            if text == &req.dockerfile {
                continue;
            }
            let path = req
                .workdir
                .join(format!("Dockerfile.{}", sanitize(platform)));
            tokio::fs::write(&path, text).await.map_err(ws(&path))?;
            platform_dockerfiles.insert(platform.clone(), path);
        }
        let registries_conf = req.workdir.join("registries.conf");
        tokio::fs::write(
            &registries_conf,
            registries_conf_text(&req.insecure_registries),
        )
        .await
        .map_err(ws(&registries_conf))?;
        let mut extra: Vec<std::ffi::OsString> = Vec::new();
        let mut docker_config: Option<PathBuf> = None;
        if let Some(json) = &req.auth_json {
            if docker {
                let dir = req.workdir.join("docker-config");
                tokio::fs::create_dir_all(&dir).await.map_err(ws(&dir))?;
                let path = dir.join("config.json");
                write_private(&path, json.as_bytes())
                    .await
                    .map_err(ws(&path))?;
                docker_config = Some(dir);
            } else {
                let path = req.workdir.join("auth.json");
                write_private(&path, json.as_bytes())
                    .await
                    .map_err(ws(&path))?;
                extra.push("--authfile".into());
                extra.push(path.into_os_string());
            }
        }
        if !req.ca_files.is_empty() && !docker {
            let dir = req.workdir.join("certs");
            tokio::fs::create_dir_all(&dir).await.map_err(ws(&dir))?;
            for (i, ca) in req.ca_files.iter().enumerate() {
                let to = dir.join(format!("ca-{i}.crt"));
                tokio::fs::copy(ca, &to).await.map_err(ws(ca))?;
            }
            extra.push("--cert-dir".into());
            extra.push(dir.into_os_string());
        }
        let digest_file = req.workdir.join("digest");
        let _ = tokio::fs::remove_file(&digest_file).await;
        Ok(Workspace {
            dockerfile,
            platform_dockerfiles,
            registries_conf,
            extra,
            docker_config,
            digest_file,
        })
    }

    /// The pinned Dockerfile of `platform`.
    fn dockerfile_for(&self, platform: &str) -> &Path {
        self.platform_dockerfiles
            .get(platform)
            .unwrap_or(&self.dockerfile)
    }

    /// The engine's command with this build's `registries.conf` (and
    /// docker's config directory).
    fn command(&self, engine: &Engine) -> Command {
        let mut c = engine.command(&self.registries_conf);
        if let Some(dir) = &self.docker_config {
            c.env("DOCKER_CONFIG", dir);
        }
        c
    }
}

/// A registries.conf that marks `insecure` hosts as plain http; every other
/// registry keeps TLS verification.
pub fn registries_conf_text(insecure: &[String]) -> String {
    let mut s =
        String::from("# written by rebased for one build\nunqualified-search-registries = []\n");
    for host in insecure {
        s.push_str(&format!(
            "\n[[registry]]\nlocation = {host:?}\ninsecure = true\n"
        ));
    }
    s
}

/// Why a step did not finish.
enum Cut {
    Cancelled,
    Timeout,
}

/// `step` unless `cancel` fires or `deadline` passes first.
async fn within<T>(
    step: impl std::future::Future<Output = T>,
    cancel: &CancellationToken,
    deadline: Instant,
) -> Result<T, Cut> {
    tokio::select! {
        r = step => Ok(r),
        _ = cancel.cancelled() => Err(Cut::Cancelled),
        _ = tokio::time::sleep(deadline.saturating_duration_since(Instant::now())) => {
            Err(Cut::Timeout)
        }
    }
}

/// A request for the backends' unit tests.
#[cfg(test)]
pub(crate) fn tests_request(platforms: &[&str], dir: &Path) -> BuildRequest {
    BuildRequest {
        image: "app".to_owned(),
        job: "7".to_owned(),
        context: dir.join("ctx"),
        dockerfile: "FROM b@sha256:x\nRUN true\n".to_owned(),
        platform_dockerfiles: BTreeMap::new(),
        platform_annotations: BTreeMap::new(),
        build_args: BTreeMap::from([("A".to_owned(), "1".to_owned())]),
        target: Target::Registry(ImageRef::parse("r.example/app:1.0.0").expect("ref")),
        platforms: platforms.iter().map(|p| (*p).to_owned()).collect(),
        source_date_epoch: None,
        annotations: BTreeMap::from([(
            "org.opencontainers.image.version".to_owned(),
            "1.0.0".to_owned(),
        )]),
        insecure_registries: Vec::new(),
        workdir: dir.join("work"),
        auth_json: None,
        secrets: BTreeMap::new(),
        ca_files: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_conf_lists_insecure_hosts() {
        let text = registries_conf_text(&["127.0.0.1:5000".to_owned()]);
        assert!(text.contains("location = \"127.0.0.1:5000\"\ninsecure = true"));
        assert!(registries_conf_text(&[]).contains("unqualified-search-registries = []"));
    }

    #[test]
    fn docker_push_output_gives_the_digest() {
        let log = "The push refers to repository [r/app]\n5f70bf18a086: Pushed\n1.0.0: digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef size: 528\n";
        assert_eq!(
            pushed_digest(log).map(|d| d.to_string()).as_deref(),
            Some("sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        );
        assert!(pushed_digest("Writing manifest to image destination\n").is_none());
    }

    fn request(platforms: &[&str], dir: &Path) -> BuildRequest {
        tests_request(platforms, dir)
    }

    fn args(c: &Command) -> Vec<String> {
        c.as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[tokio::test]
    async fn docker_builds_each_platform_under_a_temp_tag_in_plain_commands() {
        let dir = tempfile::tempdir().expect("tempdir");
        let req = request(&["linux/amd64", "linux/arm64"], dir.path());
        let engine = Engine::with_storage(EngineKind::Docker, dir.path(), Duration::from_secs(60));
        let ws = Workspace::write(&req, true).await.expect("workspace");
        let tag = temp_tag(&req.image, "linux/arm64");
        assert_eq!(tag, "rebased-build-app-linux-arm64");
        assert_ne!(tag, temp_tag(&req.image, "linux/amd64"));
        assert_ne!(tag, temp_tag("app2", "linux/arm64"));
        assert!(temp_tag(&"x".repeat(300), "linux/arm64").len() <= 128);
        let local = format!("r.example/app:{tag}");
        let got = args(&engine.bud(&req, &ws, &ws.dockerfile, &local, Some("linux/arm64")));
        let df = ws.dockerfile.display().to_string();
        let want = [
            "build",
            "--platform",
            "linux/arm64",
            "-f",
            &df,
            "-t",
            &local,
            "--label",
            "org.opencontainers.image.version=1.0.0",
            "--build-arg",
            "A=1",
            &dir.path().join("ctx").display().to_string(),
        ];
        assert_eq!(got, want, "no buildx, --push or --metadata-file");
        assert_eq!(args(&engine.push(&req, &ws, &local)), ["push", &local]);
    }

    #[tokio::test]
    async fn each_platform_is_built_from_its_own_pinned_dockerfile() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut req = request(&["linux/amd64", "linux/arm64"], dir.path());
        req.platform_dockerfiles = BTreeMap::from([
            ("linux/amd64".to_owned(), req.dockerfile.clone()),
            (
                "linux/arm64".to_owned(),
                "FROM c@sha256:y\nRUN true\n".to_owned(),
            ),
        ]);
        let engine = Engine::with_storage(EngineKind::Buildah, dir.path(), Duration::from_secs(60));
        let ws = Workspace::write(&req, false).await.expect("workspace");
        let arm = ws.dockerfile_for("linux/arm64").to_owned();
        assert_ne!(arm, ws.dockerfile);
        assert_eq!(ws.dockerfile_for("linux/amd64"), ws.dockerfile);
        assert_eq!(
            std::fs::read_to_string(&arm).expect("read"),
            "FROM c@sha256:y\nRUN true\n"
        );
        req.platform_annotations = BTreeMap::from([(
            "linux/arm64".to_owned(),
            BTreeMap::from([(
                "org.opencontainers.image.version".to_owned(),
                "arm".to_owned(),
            )]),
        )]);
        let got = args(&engine.bud(&req, &ws, &arm, "local", Some("linux/arm64")));
        let at = |flag: &str| got.iter().position(|a| a == flag).expect(flag);
        assert!(got.contains(&"org.opencontainers.image.version=arm".to_owned()));
        assert!(!got.contains(&"org.opencontainers.image.version=1.0.0".to_owned()));
        assert_eq!(got[at("--platform") + 1], "linux/arm64");
        assert_eq!(got[at("-f") + 1], arm.display().to_string());
        assert_eq!(got.iter().filter(|a| *a == "-f").count(), 1);
        // docker cannot: one Dockerfile for all of them.
        let docker = Engine::with_storage(EngineKind::Docker, dir.path(), Duration::from_secs(60));
        let registry = Registry::new(&BTreeMap::new());
        let e = docker
            .build(&req, &registry, &CancellationToken::new())
            .await
            .expect_err("refused");
        assert!(e.to_string().contains("buildah or podman"), "{e}");
    }

    #[test]
    fn log_is_bounded_to_its_tail() {
        let mut log = String::new();
        append(&mut log, &"a".repeat(MAX_LOG));
        append(&mut log, "the end");
        assert!(log.len() <= MAX_LOG + 40);
        assert!(
            log.starts_with(&format!("[7{CUT_SUFFIX}")),
            "{}",
            &log[..40]
        );
        assert!(log.ends_with("the end"));
        // Cut again: the count adds up.
        append(&mut log, &"b".repeat(100));
        assert!(
            log.starts_with(&format!("[107{CUT_SUFFIX}")),
            "{}",
            &log[..40]
        );
        assert!(log.len() <= MAX_LOG + 40);
    }
}
