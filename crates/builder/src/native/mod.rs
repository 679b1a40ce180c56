//! The `native` backend: pure Rust, no daemon, no root.
//!
//! It builds one stage of `FROM`, `COPY`/`ADD` of local files and the
//! instructions that only change the config ([`plan`] refuses anything else
//! before any IO). Its own layers are made from the context and from which
//! directories the image lacks ([`context`], [`tree`], [`layer`]: sorted
//! entries, fixed mtimes, numeric owners, gzip without timestamps), so a
//! rebuild after a base update that keeps those directories uploads no
//! layer bytes. Base layers are read only for their file lists and
//! `/etc/passwd` (once per layer digest, kept in the [`cache`]); they are
//! published by mounting them across repositories, or streamed registry to
//! registry when a mount is declined. Every platform of the request is
//! built from one run, sharing the layers.

pub mod cache;
pub mod context;
pub mod image;
pub mod layer;
pub mod passwd;
pub mod plan;
pub mod tree;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rebased_core::dockerfile::Dockerfile;
use rebased_core::oci::{media_type, Descriptor, ImageConfig, ImageIndex, ImageManifest, Manifest};
use rebased_core::{Digest, ImageRef};
use rebased_registry::layout::Layout;
use rebased_registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{BuildError, BuildOutput, BuildRequest, Target};
use cache::{Known, LayerCache, UserFile};
use context::{Context, CopySpec, Entry, EntryKind, Existing};
use image::{CopyStep, Platform, Stage, OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST};
use plan::Plan;
use tree::Tree;

/// A base's config is read whole; refuse more.
const MAX_CONFIG: u64 = 4 << 20;
/// A base layer read for `/etc/passwd`: compressed and decompressed limits.
const MAX_LAYER_READ: u64 = 1 << 30;
const MAX_LAYER_UNPACKED: u64 = 4 << 30;

/// How to run the native backend.
#[derive(Debug, Clone)]
pub struct Native {
    /// Time limit for the whole build and push.
    pub timeout: Duration,
    /// Where own layers are remembered between builds ([`cache`]); none:
    /// every build tars and gzips its sources.
    pub layer_cache: Option<LayerCache>,
}

/// The log of one build, readable after a timeout or cancellation.
#[derive(Debug, Default, Clone)]
struct Log(Arc<Mutex<String>>);

impl Log {
    fn line(&self, text: impl AsRef<str>) {
        let mut l = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        l.push_str(text.as_ref());
        l.push('\n');
    }

    fn text(&self) -> String {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// A failure inside a native build, before the log is attached.
#[derive(Debug)]
enum Fail {
    Refused(rebased_core::dockerfile::DockerfileError),
    Step(String, String),
}

fn step_err(step: &str) -> impl Fn(String) -> Fail + '_ {
    move |reason| Fail::Step(step.to_owned(), reason)
}

/// A base as resolved for one platform.
struct BasePlatform {
    platform: Platform,
    config: Option<ImageConfig>,
    layers: Vec<Descriptor>,
}

/// One platform's result, ready to publish.
struct Built {
    platform: Platform,
    config: Vec<u8>,
    config_digest: Digest,
    manifest: Vec<u8>,
    manifest_digest: Digest,
    /// Base layer descriptors (digest, size) then own layers.
    base_layers: Vec<(Digest, u64)>,
    own_layers: Vec<Digest>,
}

impl Native {
    /// Builds `req` and publishes it to its target, reading bases through
    /// `registry`.
    pub async fn build(
        &self,
        req: &BuildRequest,
        registry: &Registry,
        cancel: &CancellationToken,
    ) -> Result<BuildOutput, BuildError> {
        let log = Log::default();
        let run = self.run(req, registry, &log);
        let outcome = tokio::select! {
            r = run => r,
            _ = tokio::time::sleep(self.timeout) => {
                return Err(BuildError::Timeout { step: "native build", seconds: self.timeout.as_secs(), log: log.text() });
            }
            _ = cancel.cancelled() => {
                return Err(BuildError::Cancelled { step: "native build", log: log.text() });
            }
        };
        match outcome {
            Ok(digest) => Ok(BuildOutput {
                digest: Some(digest),
                log: log.text(),
            }),
            Err(Fail::Refused(e)) => {
                log.line(format!("refused: {e}"));
                Err(BuildError::Refused {
                    line: e.line,
                    reason: e.reason,
                    log: log.text(),
                })
            }
            Err(Fail::Step(step, reason)) => {
                log.line(format!("error: {step}: {reason}"));
                Err(BuildError::Native {
                    step,
                    reason,
                    log: log.text(),
                })
            }
        }
    }

    /// The build: planned and checked, bases resolved per platform, each
    /// platform built, then everything published.
    async fn run(
        &self,
        req: &BuildRequest,
        registry: &Registry,
        log: &Log,
    ) -> Result<Digest, Fail> {
        let (plan, ctx, requested) = prepare(req)?;
        match &plan.base {
            Some(b) => log.line(format!("FROM {b}")),
            None => log.line("FROM scratch"),
        }
        let bases = resolve_base(registry, plan.base.as_ref(), &requested).await?;
        // BuildKit runs the base's ONBUILD triggers; refuse rather than
        // silently build something else.
        for b in &bases {
            if let Some(e) = onbuild_refusal(b.config.as_ref(), plan.from_line) {
                return Err(Fail::Refused(e));
            }
        }
        let created_at = match req.source_date_epoch {
            Some(t) => chrono::DateTime::from_timestamp(t, 0).unwrap_or_default(),
            None => chrono::Utc::now(),
        };
        let build = Build {
            req,
            registry,
            plan: &plan,
            ctx: Arc::new(ctx),
            log,
            cache: self.layer_cache.as_ref(),
            target: Presence::of(&req.target, registry),
            created: created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            mtime: req.source_date_epoch.unwrap_or(0).max(0) as u64,
        };
        let mut layers: HashMap<String, OwnLayer> = HashMap::new();
        let mut built = Vec::new();
        for base in &bases {
            built.push(build.platform(base, &mut layers).await?);
        }
        let own_blobs: HashMap<Digest, OwnBlob> = layers
            .into_values()
            .map(|l| (l.known.digest, l.blob))
            .collect();
        let index = (built.len() > 1).then(|| index_bytes(&built, &req.annotations));
        match &req.target {
            Target::Registry(target) => {
                publish_registry(
                    registry,
                    plan.base.as_ref(),
                    target,
                    &built,
                    &own_blobs,
                    index,
                    log,
                )
                .await
            }
            Target::Layout { path, tag } => {
                publish_layout(
                    registry,
                    plan.base.as_ref(),
                    path,
                    tag,
                    &built,
                    &own_blobs,
                    index,
                    log,
                )
                .await
            }
        }
    }
}

/// The Dockerfile planned, the context opened and the platforms parsed;
/// everything that can be checked without the base checked (instruction
/// arguments, chmod, ports, flags), before anything is fetched.
fn prepare(req: &BuildRequest) -> Result<(Plan, Context, Vec<Platform>), Fail> {
    let df = Dockerfile::parse(&req.dockerfile, &req.build_args).map_err(Fail::Refused)?;
    let plan = Plan::new(&df, &req.build_args).map_err(Fail::Refused)?;
    let ctx =
        Context::open(&req.context).map_err(|e| Fail::Step("context".to_owned(), e.to_string()))?;
    let requested = req
        .platforms
        .iter()
        .map(|p| Platform::parse(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(step_err("platforms"))?;
    let mut dry = Stage::new(
        None,
        &Platform::host(),
        &plan.globals,
        plan.escape,
        String::new(),
    );
    for step in &plan.steps {
        dry.apply(step, &req.build_args)
            .map_err(|reason| refusal(step.line, reason))?;
    }
    Ok((plan, ctx, requested))
}

fn refusal(line: usize, reason: String) -> Fail {
    Fail::Refused(rebased_core::dockerfile::DockerfileError { line, reason })
}

/// What every platform of one build shares.
struct Build<'a> {
    req: &'a BuildRequest,
    registry: &'a Registry,
    plan: &'a Plan,
    ctx: Arc<Context>,
    log: &'a Log,
    cache: Option<&'a LayerCache>,
    target: Presence<'a>,
    /// The config's `created`.
    created: String,
    /// Every layer entry's mtime.
    mtime: u64,
}

/// One platform being built: its config, what its file system holds so
/// far, and the own layers made for it.
struct PlatformBuild<'b> {
    base: &'b BasePlatform,
    stage: Stage,
    tree: Tree,
    /// The base's `/etc/passwd` and `/etc/group`, read when a name needs
    /// them.
    users: Option<(Option<String>, Option<String>)>,
    own: Vec<(Digest, u64)>,
}

impl Build<'_> {
    /// Builds one platform: every instruction applied to its config, a
    /// layer for each `COPY`/`ADD` and each `WORKDIR` that creates a
    /// directory, then its config and manifest.
    async fn platform(
        &self,
        base: &BasePlatform,
        layers: &mut HashMap<String, OwnLayer>,
    ) -> Result<Built, Fail> {
        let needs_tree = self
            .plan
            .steps
            .iter()
            .any(|s| matches!(s.keyword.as_str(), "COPY" | "ADD" | "WORKDIR"));
        let tree = if needs_tree {
            base_tree(
                self.registry,
                self.plan.base.as_ref(),
                base,
                self.cache,
                self.log,
            )
            .await?
        } else {
            Tree::default()
        };
        let mut p = PlatformBuild {
            base,
            stage: Stage::new(
                base.config.as_ref(),
                &base.platform,
                &self.plan.globals,
                self.plan.escape,
                self.created.clone(),
            ),
            tree,
            users: None,
            own: Vec::new(),
        };
        for step in &self.plan.steps {
            let refuse = |reason: String| refusal(step.line, reason);
            match p.stage.apply(step, &self.req.build_args).map_err(refuse)? {
                Some(copy) => self.copy(&mut p, step, &copy, layers).await?,
                None if step.keyword == "WORKDIR" => self.workdir(&mut p, step, layers).await?,
                None => {}
            }
        }
        self.finish(p)
    }

    /// The uid and gid of a `--chown` or `USER` value, names looked up in
    /// the base's `/etc/passwd` and `/etc/group` (read once per platform);
    /// the inner error says why the value does not resolve.
    async fn ids(
        &self,
        p: &mut PlatformBuild<'_>,
        spec: &str,
    ) -> Result<Result<(u32, u32), String>, Fail> {
        if passwd::needs_lookup(spec) && p.users.is_none() {
            let users = read_users(
                self.registry,
                self.plan.base.as_ref(),
                p.base,
                self.cache,
                self.log,
            );
            p.users = Some(users.await?);
        }
        let (pw, gr) = p.users.clone().unwrap_or_default();
        Ok(passwd::resolve_chown(spec, pw.as_deref(), gr.as_deref()))
    }

    /// A `COPY`/`ADD` layer, its destination resolved in the image so far.
    async fn copy(
        &self,
        p: &mut PlatformBuild<'_>,
        step: &plan::Step,
        copy: &CopyStep,
        layers: &mut HashMap<String, OwnLayer>,
    ) -> Result<(), Fail> {
        let refuse = |reason: String| refusal(step.line, reason);
        let owner = match &copy.chown {
            None => (0, 0),
            Some(spec) => self
                .ids(p, spec)
                .await?
                .map_err(|e| refuse(format!("--chown={spec}: {e}")))?,
        };
        let resolved = p
            .tree
            .resolve(&copy.dest)
            .map_err(|e| refuse(format!("{} destination: {e}", step.keyword)))?;
        let mut dest = format!("/{}", resolved.path());
        if copy.dest.ends_with('/') && !dest.ends_with('/') {
            dest.push('/');
        }
        let spec = CopySpec {
            sources: copy.sources.clone(),
            dest,
            owner,
            chmod: copy.chmod,
            extract_archives: copy.add,
            archive_owners: copy.add && copy.chown.is_none(),
            existing: Some(Existing {
                dirs: resolved.dirs,
            }),
        };
        let key = format!("{spec:?}");
        if !layers.contains_key(&key) {
            let made = own_layer(
                self.ctx.clone(),
                spec,
                self.mtime,
                self.cache,
                &self.target,
                self.log,
            )
            .await
            .map_err(refuse)?;
            self.log.line(format!(
                "line {}: {} -> layer {} ({}, {}){}",
                step.line,
                copy.created_by.trim_end_matches(" # rebased"),
                made.known.digest,
                rebased_core::units::count(made.known.files as u64, "file"),
                rebased_core::units::bytes(made.known.size),
                made.how
            ));
            layers.insert(key.clone(), made);
        }
        let l = layers
            .get(&key)
            .ok_or_else(|| refuse("layer vanished".into()))?;
        overwrites(&p.tree, &l.entries).map_err(refuse)?;
        p.tree.add(&l.entries).map_err(|e| refuse(e.to_string()))?;
        p.stage
            .add_layer(l.known.diff_id.as_str(), copy.created_by.clone());
        p.own.push((l.known.digest.clone(), l.known.size));
        Ok(())
    }

    /// The layer of a `WORKDIR` whose directory the image lacks: the
    /// missing directories, 0755, owned by the current `USER`. None when
    /// the directory is there (BuildKit drops such an empty layer too).
    async fn workdir(
        &self,
        p: &mut PlatformBuild<'_>,
        step: &plan::Step,
        layers: &mut HashMap<String, OwnLayer>,
    ) -> Result<(), Fail> {
        let refuse = |reason: String| refusal(step.line, reason);
        let wd = p.stage.working_dir();
        let resolved = p
            .tree
            .resolve(&wd)
            .map_err(|e| refuse(format!("WORKDIR {wd}: {e}")))?;
        if resolved.is_dir() {
            return Ok(());
        }
        if resolved.exists {
            return Err(refuse(format!(
                "WORKDIR {wd}: /{} is in the image and is not a directory",
                resolved.path()
            )));
        }
        let user = p.stage.user();
        let (uid, gid) = if user.is_empty() {
            (0, 0)
        } else {
            self.ids(p, &user)
                .await?
                .map_err(|e| refuse(format!("WORKDIR {wd} as USER {user}: {e}")))?
        };
        let entries: Vec<Entry> = (resolved.dirs..resolved.segs.len())
            .map(|k| Entry {
                path: resolved.segs[..=k].join("/"),
                kind: EntryKind::Dir,
                mode: 0o755,
                uid,
                gid,
            })
            .collect();
        let key = format!("WORKDIR {entries:?}");
        if !layers.contains_key(&key) {
            let (e, mtime) = (entries.clone(), self.mtime);
            let made = blocking(move || layer::build(&e, mtime).map_err(|e| e.to_string()))
                .await
                .map(|l| built(l, entries.clone()))
                .map_err(refuse)?;
            self.log.line(format!(
                "line {}: WORKDIR {wd} -> layer {} (creates /{}, owner {uid}:{gid})",
                step.line,
                made.known.digest,
                resolved.path()
            ));
            layers.insert(key.clone(), made);
        }
        let l = layers
            .get(&key)
            .ok_or_else(|| refuse("layer vanished".into()))?;
        p.tree.add(&l.entries).map_err(|e| refuse(e.to_string()))?;
        p.stage.layer_for_last(l.known.diff_id.as_str());
        p.own.push((l.known.digest.clone(), l.known.size));
        Ok(())
    }

    /// The platform's config and manifest.
    fn finish(&self, p: PlatformBuild<'_>) -> Result<Built, Fail> {
        let config = serde_json::to_vec(&p.stage.finish(&self.req.annotations))
            .map_err(|e| Fail::Step("config".to_owned(), e.to_string()))?;
        let config_digest = Digest::sha256(&config);
        let mut descriptors: Vec<Descriptor> = p.base.layers.clone();
        descriptors.extend(
            p.own
                .iter()
                .map(|(d, size)| Descriptor::new(OCI_LAYER_GZIP, d, *size)),
        );
        let manifest = serde_json::to_vec(&ImageManifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.to_owned()),
            config: Descriptor::new(OCI_CONFIG, &config_digest, config.len() as u64),
            layers: descriptors,
            annotations: self.req.annotations.clone(),
            ..ImageManifest::default()
        })
        .map_err(|e| Fail::Step("manifest".to_owned(), e.to_string()))?;
        let base_layers = p
            .base
            .layers
            .iter()
            .filter_map(|d| Some((d.digest()?, d.size)))
            .collect();
        Ok(Built {
            platform: p.base.platform.clone(),
            manifest_digest: Digest::sha256(&manifest),
            config_digest,
            config,
            manifest,
            base_layers,
            own_layers: p.own.into_iter().map(|(d, _)| d).collect(),
        })
    }
}

/// The index of a multi-platform result.
fn index_bytes(built: &[Built], annotations: &BTreeMap<String, String>) -> Vec<u8> {
    let manifests = built
        .iter()
        .map(|b| Descriptor {
            platform: Some(b.platform.clone()),
            ..Descriptor::new(OCI_MANIFEST, &b.manifest_digest, b.manifest.len() as u64)
        })
        .collect();
    serde_json::to_vec(&ImageIndex {
        manifests,
        annotations: annotations.clone(),
        ..ImageIndex::new()
    })
    .unwrap_or_default()
}

/// The refusal of a base whose config has `ONBUILD` triggers (BuildKit
/// would run them; the native backend cannot).
fn onbuild_refusal(
    config: Option<&ImageConfig>,
    from_line: usize,
) -> Option<rebased_core::dockerfile::DockerfileError> {
    let list = config?
        .config
        .as_ref()?
        .on_build
        .as_ref()
        .filter(|t| !t.is_empty())?;
    Some(rebased_core::dockerfile::DockerfileError {
        line: from_line,
        reason: format!(
            "the base has ONBUILD triggers ({}), which the native backend does not run; {}",
            list.join("; "),
            plan::HINT
        ),
    })
}

/// Docker media types of base layers, as OCI names them (same bytes).
fn oci_layer(mut d: Descriptor) -> Descriptor {
    let mapped = match d.media_type.as_str() {
        media_type::DOCKER_LAYER_GZIP => OCI_LAYER_GZIP,
        media_type::DOCKER_FOREIGN_LAYER_GZIP => media_type::OCI_NONDISTRIBUTABLE_LAYER_GZIP,
        _ => return d,
    };
    d.media_type = mapped.to_owned();
    d
}

/// The base for each platform to build: the requested ones (or the host's)
/// from an index, or the single manifest's own platform.
async fn resolve_base(
    registry: &Registry,
    base: Option<&ImageRef>,
    requested: &[Platform],
) -> Result<Vec<BasePlatform>, Fail> {
    let err = step_err("base");
    let Some(base) = base else {
        let platforms = if requested.is_empty() {
            vec![Platform::host()]
        } else {
            requested.to_vec()
        };
        return Ok(platforms
            .into_iter()
            .map(|platform| BasePlatform {
                platform,
                config: None,
                layers: Vec::new(),
            })
            .collect());
    };
    let top = registry
        .manifest(base)
        .await
        .map_err(|e| err(e.to_string()))?;
    let top = Manifest::parse(&top.bytes)
        .map_err(|e| err(format!("manifest of {base} is not a manifest: {e}")))?;
    let mut out = Vec::new();
    if let Manifest::Index(index) = &top {
        let entries = &index.manifests;
        let wanted = if requested.is_empty() {
            vec![Platform::host()]
        } else {
            requested.to_vec()
        };
        for want in wanted {
            let entry = entries.iter().find(|e| {
                e.platform
                    .as_ref()
                    .and_then(Platform::complete)
                    .is_some_and(|p| want.matches(&p))
            });
            let Some(entry) = entry else {
                let have: Vec<String> = entries
                    .iter()
                    .filter_map(|e| e.platform.as_ref().and_then(Platform::complete))
                    .map(|p| p.to_string())
                    .collect();
                return Err(err(format!(
                    "{base} has no {want} image (it has {})",
                    have.join(", ")
                )));
            };
            let digest = entry
                .digest()
                .ok_or_else(|| err(format!("{base}: index entry without a valid digest")))?;
            let child = registry
                .manifest(&base.pinned(&digest))
                .await
                .map_err(|e| err(e.to_string()))?;
            let child = match Manifest::parse(&child.bytes) {
                Ok(Manifest::Image(m)) => m,
                Ok(Manifest::Index(_)) => {
                    return Err(err(format!(
                        "manifest {digest} of {base} is an index inside an index"
                    )))
                }
                Err(e) => {
                    return Err(err(format!(
                        "manifest {digest} of {base} is not a manifest: {e}"
                    )))
                }
            };
            let (config, layers) = manifest_parts(registry, base, &child).await?;
            let platform = config
                .as_ref()
                .and_then(|c| c.platform().complete())
                .map_or(want.clone(), |mut p| {
                    if p.variant.is_none() {
                        p.variant = want.variant.clone();
                    }
                    p
                });
            out.push(BasePlatform {
                platform,
                config,
                layers,
            });
        }
    } else if let Manifest::Image(manifest) = &top {
        let (config, layers) = manifest_parts(registry, base, manifest).await?;
        let platform = config
            .as_ref()
            .and_then(|c| c.platform().complete())
            .unwrap_or_else(Platform::host);
        if let Some(other) = requested.iter().find(|r| !r.matches(&platform)) {
            return Err(err(format!(
                "{base} is a single-platform image for {platform}; {other} was asked for"
            )));
        }
        out.push(BasePlatform {
            platform,
            config,
            layers,
        });
    }
    Ok(out)
}

/// A base manifest's config (fetched) and layer descriptors (OCI types).
async fn manifest_parts(
    registry: &Registry,
    base: &ImageRef,
    manifest: &ImageManifest,
) -> Result<(Option<ImageConfig>, Vec<Descriptor>), Fail> {
    let err = step_err("base");
    let config_digest = manifest
        .config
        .digest()
        .ok_or_else(|| err(format!("{base}: manifest has no config digest")))?;
    let bytes = registry
        .blob(base, &config_digest, MAX_CONFIG)
        .await
        .map_err(|e| err(e.to_string()))?;
    let config: ImageConfig = serde_json::from_slice(&bytes).map_err(|e| {
        err(format!(
            "config {config_digest} of {base} is not an image config: {e}"
        ))
    })?;
    let layers = manifest.layers.iter().cloned().map(oci_layer).collect();
    Ok((Some(config), layers))
}

/// Refuses what Docker refuses to copy over the image: a directory onto a
/// file or symlink ("cannot copy to non-directory"; a base's `/bin ->
/// usr/bin` would be replaced), a file onto a directory.
fn overwrites(tree: &Tree, entries: &[Entry]) -> Result<(), String> {
    for e in entries {
        let Some(there) = tree.get(&e.path) else {
            continue;
        };
        let dir = e.kind == EntryKind::Dir;
        match (&there.kind, dir) {
            (tree::Kind::Dir, false) => {
                return Err(format!(
                    "cannot replace the directory /{} of the image with a file",
                    e.path
                ))
            }
            (tree::Kind::Symlink(t), true) => {
                return Err(format!(
                    "cannot copy a directory to /{}, a symlink to {t} in the image",
                    e.path
                ))
            }
            (tree::Kind::Other, true) => {
                return Err(format!(
                    "cannot copy a directory to /{}, a file in the image",
                    e.path
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The file system of a base platform without contents: each layer's file
/// list (from the layer cache, else read from the layer, bounded as the
/// reads for `--chown` are) merged bottom up.
async fn base_tree(
    registry: &Registry,
    base: Option<&ImageRef>,
    bp: &BasePlatform,
    cache: Option<&LayerCache>,
    log: &Log,
) -> Result<Tree, Fail> {
    let mut tree = Tree::default();
    let Some(base) = base else {
        return Ok(tree);
    };
    let err = step_err("base files");
    for d in &bp.layers {
        let Some(digest) = d.digest() else {
            continue;
        };
        let known = match cache {
            Some(c) => {
                let (c, d) = (c.clone(), digest.clone());
                blocking(move || Ok(c.file_list(&d))).await.map_err(&err)?
            }
            None => None,
        };
        let changes = match known {
            Some(changes) => changes,
            None => {
                log.line(format!("reading the file list of base layer {digest}"));
                let blob = registry
                    .blob(base, &digest, MAX_LAYER_READ)
                    .await
                    .map_err(|e| err(e.to_string()))?;
                let d = digest.clone();
                let changes = blocking(move || {
                    tree::read_layer(&blob, MAX_LAYER_UNPACKED)
                        .map_err(|e| format!("layer {d}: {e}"))
                })
                .await
                .map_err(&err)?;
                if let Some(c) = cache {
                    let (c, d, ch) = (c.clone(), digest.clone(), changes.clone());
                    let kept =
                        blocking(move || c.remember_file_list(&d, &ch).map_err(|e| e.to_string()));
                    if let Err(e) = kept.await {
                        log.line(format!(
                            "layer cache: cannot keep the file list of {digest}: {e}"
                        ));
                    }
                }
                changes
            }
        };
        tree = blocking(move || {
            tree.apply(&changes)
                .map_err(|e| format!("layer {digest}: {e}"))?;
            Ok(tree)
        })
        .await
        .map_err(&err)?;
    }
    Ok(tree)
}

/// `/etc/passwd` and `/etc/group` of a base platform, read from its layers
/// top down (only for `--chown` and `USER` by name); what each layer holds
/// there comes from the layer cache when it was read before.
async fn read_users(
    registry: &Registry,
    base: Option<&ImageRef>,
    bp: &BasePlatform,
    cache: Option<&LayerCache>,
    log: &Log,
) -> Result<(Option<String>, Option<String>), Fail> {
    let Some(base) = base else {
        return Ok((None, None));
    };
    let err = step_err("base users");
    let mut passwd: Option<Option<String>> = None;
    let mut group: Option<Option<String>> = None;
    for d in bp.layers.iter().rev() {
        if passwd.is_some() && group.is_some() {
            break;
        }
        let Some(digest) = d.digest() else {
            continue;
        };
        let files = layer_user_files(registry, base, &digest, cache, log).await?;
        for (slot, file) in [(&mut passwd, files.0), (&mut group, files.1)] {
            if slot.is_some() {
                continue;
            }
            match file {
                UserFile::Found(text) => *slot = Some(Some(text)),
                UserFile::Whiteout => *slot = Some(None),
                UserFile::Absent => {}
                UserFile::Unreadable(e) => return Err(err(format!("layer {digest}: {e}"))),
            }
        }
    }
    Ok((passwd.flatten(), group.flatten()))
}

/// What one base layer holds at `/etc/passwd` and `/etc/group`.
async fn layer_user_files(
    registry: &Registry,
    base: &ImageRef,
    digest: &Digest,
    cache: Option<&LayerCache>,
    log: &Log,
) -> Result<(UserFile, UserFile), Fail> {
    let err = step_err("base users");
    if let Some(c) = cache {
        let (c, d) = (c.clone(), digest.clone());
        if let Some(files) = blocking(move || Ok(c.user_files(&d))).await.map_err(&err)? {
            return Ok(files);
        }
    }
    log.line(format!(
        "reading /etc/passwd and /etc/group from base layer {digest}"
    ));
    let blob = registry
        .blob(base, digest, MAX_LAYER_READ)
        .await
        .map_err(|e| err(e.to_string()))?;
    let files = blocking(move || {
        let look = |path| match layer::find_file(&blob, path, MAX_LAYER_UNPACKED) {
            Ok(layer::Lookup::Found(bytes)) => {
                UserFile::Found(String::from_utf8_lossy(&bytes).into_owned())
            }
            Ok(layer::Lookup::Whiteout) => UserFile::Whiteout,
            Ok(layer::Lookup::Absent) => UserFile::Absent,
            Err(e) => UserFile::Unreadable(e.to_string()),
        };
        Ok((look("etc/passwd"), look("etc/group")))
    })
    .await
    .map_err(&err)?;
    if let Some(c) = cache {
        let (c, d, f) = (c.clone(), digest.clone(), files.clone());
        let kept = blocking(move || {
            c.remember_user_files(&d, &f.0, &f.1)
                .map_err(|e| e.to_string())
        });
        if let Err(e) = kept.await {
            log.line(format!(
                "layer cache: cannot keep /etc/passwd and /etc/group of {digest}: {e}"
            ));
        }
    }
    Ok(files)
}

/// One own layer of a build.
struct OwnLayer {
    known: Known,
    blob: OwnBlob,
    /// How it was had, for the log ("" when built).
    how: &'static str,
    /// Its entries, without file contents (for the image's tree).
    entries: Vec<Entry>,
}

/// An own layer's blob: built now, or (a layer from the cache, whose blob
/// was at the target) its entries, to build it again should the blob be
/// gone by the time it is published.
enum OwnBlob {
    Made(bytes::Bytes),
    /// The context and the `COPY`/`ADD` to read again (not its entries:
    /// those of an `ADD` archive hold the unpacked bytes).
    Again {
        ctx: Arc<Context>,
        spec: CopySpec,
        mtime: u64,
    },
}

impl OwnBlob {
    /// The blob `d`, built again if need be (and refused if that no longer
    /// gives `d`).
    async fn bytes(&self, d: &Digest, log: &Log) -> Result<bytes::Bytes, String> {
        match self {
            OwnBlob::Made(b) => Ok(b.clone()),
            OwnBlob::Again { ctx, spec, mtime } => {
                log.line(format!(
                    "layer {d}: no longer at the target since it was checked; building it again"
                ));
                let (ctx, spec, mtime) = (ctx.clone(), spec.clone(), *mtime);
                let made = blocking(move || {
                    let entries = ctx.entries(&spec).map_err(|e| e.to_string())?;
                    layer::build(&entries, mtime).map_err(|e| e.to_string())
                })
                .await?;
                if &made.digest != d {
                    return Err(format!(
                        "layer {d} is no longer at the target and building it again gives {} (the sources changed since, or the layer cache predates a change of format); the next build makes the new layer",
                        made.digest
                    ));
                }
                Ok(made.blob.into())
            }
        }
    }
}

/// Where a build publishes, asked whether a blob is already there.
enum Presence<'a> {
    Registry(&'a Registry, ImageRef),
    Layout(Layout),
    Unknown,
}

impl<'a> Presence<'a> {
    fn of(target: &Target, registry: &'a Registry) -> Presence<'a> {
        let found = match target {
            Target::Registry(t) => ImageRef::parse_repository(&t.name())
                .ok()
                .map(|repo| Presence::Registry(registry, repo)),
            // Not created here: a layout that is not there yet holds nothing.
            Target::Layout { path, .. } => path
                .join("oci-layout")
                .is_file()
                .then(|| Layout::open(path).ok().map(Presence::Layout))
                .flatten(),
        };
        found.unwrap_or(Presence::Unknown)
    }

    /// Whether `d` is there; an error answers no (the build then makes the
    /// blob, and publishing reports the error if it persists).
    async fn has(&self, d: &Digest) -> bool {
        match self {
            Presence::Registry(registry, repo) => {
                registry.blob_exists(repo, d).await.unwrap_or(false)
            }
            Presence::Layout(layout) => layout.has_blob(d),
            Presence::Unknown => false,
        }
    }
}

/// Runs `f` off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("layer task failed: {e}"))?
}

/// One `COPY`/`ADD` layer: from the cache when its sources are unchanged
/// (or their contents are) and the blob is already at the target, else
/// built.
async fn own_layer(
    ctx: Arc<Context>,
    spec: CopySpec,
    mtime: u64,
    cache: Option<&LayerCache>,
    target: &Presence<'_>,
    log: &Log,
) -> Result<OwnLayer, String> {
    let (c, sp) = (ctx.clone(), spec.clone());
    let entries = Arc::new(blocking(move || c.entries(&sp).map_err(|e| e.to_string())).await?);
    let shape = shape(&entries);
    let build = |entries: Arc<Vec<context::Entry>>| {
        let shape = shape.clone();
        async move {
            blocking(move || layer::build(&entries, mtime).map_err(|e| e.to_string()))
                .await
                .map(|l| built(l, shape))
        }
    };
    // Had from the cache: built again at publish only if the blob is gone.
    let cached = |known: Known, how: &'static str| OwnLayer {
        known,
        blob: OwnBlob::Again { ctx, spec, mtime },
        how,
        entries: shape.clone(),
    };
    let Some(cache) = cache else {
        return build(entries).await;
    };
    let e = entries.clone();
    let stamp = match blocking(move || cache::stamp(&e, mtime).map_err(|e| e.to_string())).await {
        Ok(s) => Some(s),
        Err(e) => {
            log.line(format!(
                "layer cache: cannot stat the sources ({e}); building"
            ));
            None
        }
    };
    // Off the async threads: a write may trim a map of thousands of files.
    let record = |known: Known, contents_too: bool| {
        let (cache, stamp) = (cache.clone(), stamp.clone());
        async move {
            let digest = known.digest.clone();
            let wrote = blocking(move || {
                match (&stamp, contents_too) {
                    (_, true) => cache.remember(stamp.as_ref(), &known),
                    (Some(s), false) => cache.remember_stamp(s, &known),
                    (None, false) => Ok(()),
                }
                .map_err(|e| e.to_string())
            })
            .await;
            if let Err(e) = wrote {
                log.line(format!("layer cache: cannot record layer {digest}: {e}"));
            }
        }
    };
    if let Some(known) = stamp.as_ref().and_then(|s| cache.by_stamp(s)) {
        if target.has(&known.digest).await {
            return Ok(cached(
                known,
                "; sources unchanged since an earlier build, not rebuilt",
            ));
        }
        // The same sources, so the same contents: only the blob is missing.
        let made = build(entries).await?;
        record(made.known.clone(), true).await;
        return Ok(made);
    }
    let e = entries.clone();
    let diff_id = blocking(move || layer::diff_id(&e, mtime).map_err(|e| e.to_string())).await?;
    if let Some(known) = cache.by_diff_id(&diff_id) {
        if target.has(&known.digest).await {
            record(known.clone(), false).await;
            return Ok(cached(
                known,
                "; same contents as an earlier build, not recompressed",
            ));
        }
    }
    let made = build(entries).await?;
    record(made.known.clone(), true).await;
    Ok(made)
}

/// The entries of a layer without file contents: what the image's tree
/// needs of them.
fn shape(entries: &[Entry]) -> Vec<Entry> {
    entries
        .iter()
        .map(|e| Entry {
            kind: match &e.kind {
                EntryKind::File(_) => EntryKind::File(context::FileData::Bytes(Vec::new())),
                other => other.clone(),
            },
            ..e.clone()
        })
        .collect()
}

fn built(l: layer::Layer, entries: Vec<Entry>) -> OwnLayer {
    OwnLayer {
        entries,
        known: Known {
            size: l.blob.len() as u64,
            digest: l.digest,
            diff_id: l.diff_id,
            files: l.files,
        },
        blob: OwnBlob::Made(l.blob.into()),
        how: "",
    }
}

/// Publishes to a registry repository: base layers mounted (or streamed),
/// own layers and configs uploaded unless present, manifests pushed, the
/// tag last.
async fn publish_registry(
    registry: &Registry,
    base: Option<&ImageRef>,
    target: &ImageRef,
    built: &[Built],
    own: &HashMap<Digest, OwnBlob>,
    index: Option<Vec<u8>>,
    log: &Log,
) -> Result<Digest, Fail> {
    let err = step_err("push");
    let repo = ImageRef::parse_repository(&target.name()).map_err(|e| err(e.to_string()))?;
    let mut uploaded: u64 = 0;
    let mut done: Vec<Digest> = Vec::new();
    for b in built {
        for (d, size) in &b.base_layers {
            if !missing(registry, &repo, d, &mut done, log).await? {
                continue;
            }
            let Some(base) = base else { continue };
            match registry
                .mount_or_copy(&repo, base, d)
                .await
                .map_err(|e| err(e.to_string()))?
            {
                None => log.line(format!("base layer {d}: mounted from {}", base.name())),
                Some(n) => log.line(format!(
                    "base layer {d}: copied {n} of {size} bytes from {}",
                    base.name()
                )),
            }
        }
        for d in &b.own_layers {
            if !missing(registry, &repo, d, &mut done, log).await? {
                continue;
            }
            let data = own
                .get(d)
                .ok_or_else(|| err(format!("layer {d} was not built")))?
                .bytes(d, log)
                .await
                .map_err(&err)?;
            uploaded += data.len() as u64;
            registry
                .push_blob(&repo, data, d)
                .await
                .map_err(|e| err(e.to_string()))?;
            log.line(format!("layer {d}: uploaded"));
        }
        let config_state = if registry
            .blob_exists(&repo, &b.config_digest)
            .await
            .map_err(|e| err(e.to_string()))?
        {
            "already there"
        } else {
            registry
                .push_blob(
                    &repo,
                    bytes::Bytes::from(b.config.clone()),
                    &b.config_digest,
                )
                .await
                .map_err(|e| err(e.to_string()))?;
            "uploaded"
        };
        log.line(format!(
            "config {} ({}): {config_state}",
            b.config_digest, b.platform
        ));
    }
    let tag = target.tag().unwrap_or("latest");
    let digest = match index {
        None => {
            let b = built
                .first()
                .ok_or_else(|| err("nothing was built".to_owned()))?;
            registry
                .push_manifest(&repo.with_tag(tag), b.manifest.clone(), OCI_MANIFEST)
                .await
                .map_err(|e| err(e.to_string()))?
        }
        Some(index) => {
            for b in built {
                registry
                    .push_manifest(
                        &repo.pinned(&b.manifest_digest),
                        b.manifest.clone(),
                        OCI_MANIFEST,
                    )
                    .await
                    .map_err(|e| err(e.to_string()))?;
                log.line(format!("manifest {} ({})", b.manifest_digest, b.platform));
            }
            registry
                .push_manifest(&repo.with_tag(tag), index, OCI_INDEX)
                .await
                .map_err(|e| err(e.to_string()))?
        }
    };
    log.line(format!(
        "pushed {repo}:{tag} {digest}; layer bytes uploaded: {uploaded}"
    ));
    info!(target = %target, %digest, uploaded = %rebased_core::units::bytes(uploaded), "native build pushed");
    Ok(digest)
}

/// Whether blob `d` still has to reach `repo`: not met earlier in this
/// publish (platforms share layers) and not already there.
async fn missing(
    registry: &Registry,
    repo: &ImageRef,
    d: &Digest,
    done: &mut Vec<Digest>,
    log: &Log,
) -> Result<bool, Fail> {
    if done.contains(d) {
        return Ok(false);
    }
    done.push(d.clone());
    let there = registry
        .blob_exists(repo, d)
        .await
        .map_err(|e| Fail::Step("push".to_owned(), e.to_string()))?;
    if there {
        log.line(format!("layer {d}: already in {repo}, not uploaded"));
    }
    Ok(!there)
}

/// Publishes into an OCI image layout: every blob is stored in it (base
/// layers downloaded once), the tag is an `index.json` entry.
#[allow(clippy::too_many_arguments)]
async fn publish_layout(
    registry: &Registry,
    base: Option<&ImageRef>,
    path: &std::path::Path,
    tag: &str,
    built: &[Built],
    own: &HashMap<Digest, OwnBlob>,
    index: Option<Vec<u8>>,
    log: &Log,
) -> Result<Digest, Fail> {
    let err = step_err("oci layout");
    let layout = Layout::open(path).map_err(|e| err(e.to_string()))?;
    for b in built {
        for (d, _) in &b.base_layers {
            if layout.has_blob(d) {
                continue;
            }
            let Some(base) = base else { continue };
            let mut w = layout.blob_writer(d).map_err(|e| err(e.to_string()))?;
            registry
                .blob_to_writer(base, d, &mut w)
                .await
                .map_err(|e| err(e.to_string()))?;
            let n = w.commit().await.map_err(|e| err(e.to_string()))?;
            log.line(format!(
                "base layer {d}: downloaded {n} bytes into {}",
                path.display()
            ));
        }
        for d in &b.own_layers {
            if !layout.has_blob(d) {
                let data = own
                    .get(d)
                    .ok_or_else(|| err(format!("layer {d} was not built")))?
                    .bytes(d, log)
                    .await
                    .map_err(&err)?;
                layout.put_blob(&data).map_err(|e| err(e.to_string()))?;
                log.line(format!("layer {d}: written"));
            }
        }
        layout.put_blob(&b.config).map_err(|e| err(e.to_string()))?;
    }
    let digest = match index {
        None => {
            let b = built
                .first()
                .ok_or_else(|| err("nothing was built".to_owned()))?;
            layout
                .put_manifest(&b.manifest, OCI_MANIFEST, tag)
                .map_err(|e| err(e.to_string()))?
        }
        Some(index) => {
            for b in built {
                layout
                    .put_blob(&b.manifest)
                    .map_err(|e| err(e.to_string()))?;
            }
            layout
                .put_manifest(&index, OCI_INDEX, tag)
                .map_err(|e| err(e.to_string()))?
        }
    };
    let mut text = String::new();
    let _ = write!(text, "wrote {}:{tag} {digest}", path.display());
    log.line(text);
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_with_onbuild_triggers_is_refused_at_its_from_line() {
        let config = |text: &str| -> ImageConfig {
            serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
        };
        let with = config(r#"{"config": {"OnBuild": ["RUN npm ci", "COPY . /app"]}}"#);
        let e = onbuild_refusal(Some(&with), 3).expect("refused");
        assert_eq!(e.line, 3);
        assert!(e.reason.contains("RUN npm ci; COPY . /app"), "{}", e.reason);
        assert!(e.reason.contains("buildah"), "{}", e.reason);
        for fine in [
            r#"{"config": {"OnBuild": []}}"#,
            r#"{"config": {"OnBuild": null}}"#,
            r#"{"config": {}}"#,
        ] {
            assert!(onbuild_refusal(Some(&config(fine)), 1).is_none(), "{fine}");
        }
        assert!(onbuild_refusal(None, 1).is_none());
    }

    #[tokio::test]
    async fn a_cached_layer_gone_from_the_target_is_built_again_when_published() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("data"), "contents").unwrap_or_else(|e| panic!("{e}"));
        let ctx = Arc::new(Context::open(dir.path()).unwrap_or_else(|e| panic!("{e}")));
        let spec = CopySpec {
            sources: vec!["data".to_owned()],
            dest: "/".to_owned(),
            owner: (0, 0),
            chmod: None,
            extract_archives: false,
            archive_owners: false,
            existing: None,
        };
        let entries = ctx.entries(&spec).unwrap_or_else(|e| panic!("{e}"));
        let want = layer::build(&entries, 0).unwrap_or_else(|e| panic!("{e}"));
        let log = Log::default();
        let again = OwnBlob::Again {
            ctx,
            spec,
            mtime: 0,
        };
        let bytes = again
            .bytes(&want.digest, &log)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Digest::sha256(&bytes), want.digest);
        assert!(log.text().contains("building it again"), "{}", log.text());
        // A cache record from another layer format: refused, not pushed
        // under the wrong digest.
        let other = Digest::sha256(b"not this layer");
        let e = again.bytes(&other, &log).await.expect_err("refused");
        assert!(e.contains("building it again gives"), "{e}");
    }

    #[test]
    fn docker_layer_types_are_named_as_oci_names_them() {
        let descriptor = |kind: &str| Descriptor {
            media_type: kind.to_owned(),
            digest: "sha256:x".to_owned(),
            size: 1,
            ..Descriptor::default()
        };
        let d = oci_layer(descriptor(media_type::DOCKER_LAYER_GZIP));
        assert_eq!(d.media_type, OCI_LAYER_GZIP);
        assert_eq!(d.digest, "sha256:x");
        let z = descriptor(media_type::OCI_LAYER_ZSTD);
        assert_eq!(oci_layer(z.clone()), z);
    }
}
