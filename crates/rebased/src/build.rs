//! Running one build: the pinned Dockerfile, its provenance annotations,
//! credentials and CAs for the engine, the backend chosen, the log saved.
//! It builds and pushes the version tag; recording is `publish`'s.

use std::collections::BTreeMap;

use anyhow::{anyhow, Context, Result};
use chrono::Utc;
use rebased_builder::remote::pool::{Finish, NoEngine};
use rebased_builder::{
    installed_engine, provenance, BuildError, BuildOutput, BuildRequest, EngineKind,
};
use rebased_core::config::{Backend, ImageConfig};
use rebased_core::dockerfile::BaseKind;
use rebased_core::{Digest, ImageRef};
use rebased_registry::Registry;
use rebased_scheduler::Change;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::live::{Live, Plan};
use crate::publish::{self, Release};

/// What one build makes: the release the reconciler decided, and what
/// the build needs besides.
pub struct Build<'a> {
    /// The version to publish: image, repository, version, what it
    /// supersedes, why, its inputs and their moves, the job.
    pub release: &'a Release<'a>,
    /// Its Dockerfile, read for this build.
    pub plan: &'a Plan,
    /// The context directory: the local one, or the checkout of the
    /// decided commit.
    pub context: &'a std::path::Path,
    /// Each base and the digest it is pinned to.
    pub pins: &'a BTreeMap<ImageRef, Digest>,
}

/// Builds `build` and pushes its version tag; returns the pushed digest.
/// `cancel` kills the build (shutdown).
pub async fn run(
    live: &Live,
    registry: &Registry,
    cancel: &CancellationToken,
    build: &Build<'_>,
) -> Result<Digest> {
    let tag = build.release.version.to_string();
    let target = build.release.repo.target(&tag);
    let job = build.release.job;
    let request = request(live, registry, build)?;
    let workdir = request.workdir.clone();
    let choice = backend(live, build);
    if let Choice::Engine(_) = choice {
        emulation_check(live, build).with_context(|| format!("build of {target} (job {job})"))?;
    }
    let outcome = match choice {
        Choice::Native => {
            info!(backend = "native", "building");
            live.native().build(&request, registry, cancel).await
        }
        Choice::Engine(kind) => {
            info!(backend = kind.program(), platforms = %build.release.image.platforms.join(","), "building");
            live.engine(kind).build(&request, registry, cancel).await
        }
        Choice::Remote => remote(live, registry, cancel, build, &request).await,
    };
    let mut log = why(build.release.changes);
    log.push_str(match &outcome {
        Ok(o) => &o.log,
        Err(e) => e.log(),
    });
    live.save_log(job, &log);
    let _ = tokio::fs::remove_dir_all(&workdir).await;
    let out = outcome.with_context(|| format!("build of {target} (job {job})"))?;
    match out.digest {
        Some(d) => Ok(d),
        None => build
            .release
            .repo
            .lookup(registry, &tag)
            .await?
            .ok_or_else(|| anyhow!("{target} is missing after the push")),
    }
}

/// The job log's first lines: each base that moved, and for an index base
/// each of the image's platforms whose child moved.
fn why(changes: &[Change]) -> String {
    let mut out = String::new();
    for c in changes
        .iter()
        .filter(|c| c.before.as_ref() != Some(&c.after))
    {
        match &c.before {
            Some(b) => out.push_str(&format!(
                "# base {} moved: {b} -> {}\n",
                c.reference, c.after
            )),
            None => out.push_str(&format!("# base {}: {}\n", c.reference, c.after)),
        }
        for m in &c.moved {
            out.push_str(&format!("# base {} child {m}\n", c.reference));
        }
    }
    out
}

/// Before an engine runs a foreign platform's `RUN` steps: each such
/// platform needs an enabled binfmt handler (`builder.binfmt_dir`), else
/// the build fails here, naming the platform and what to install, and
/// nothing is built or pushed.
fn emulation_check(live: &Live, build: &Build<'_>) -> Result<()> {
    let has_run = build
        .plan
        .model
        .instructions
        .iter()
        .any(|i| i.keyword == "RUN");
    if !has_run {
        return Ok(());
    }
    let missing = rebased_builder::emulation::missing(
        &build.release.image.platforms,
        &rebased_core::oci::Platform::host(),
        &live.cfg().builder.binfmt_dir,
    );
    match missing.first() {
        None => Ok(()),
        Some(m) => Err(anyhow!("{m}")),
    }
}

/// The request given to the backend.
fn request(live: &Live, registry: &Registry, build: &Build<'_>) -> Result<BuildRequest> {
    let image = build.release.image;
    let primary = build
        .plan
        .model
        .uses
        .iter()
        .rev()
        .find(|u| u.kind == BaseKind::From)
        .and_then(|u| build.pins.get(&u.reference).map(|d| (&u.reference, d)));
    let source = image
        .context
        .git()
        .map(|g| g.public_url())
        .zip(build.release.inputs.source.clone());
    let annotations = provenance::Provenance {
        version: &build.release.version,
        created: Utc::now(),
        primary,
        bases: build.pins,
        platforms: &build.release.inputs.platforms,
        supersedes: build.release.supersedes.as_ref(),
        trigger: build.release.trigger,
        source: match (&source, &build.release.inputs.source) {
            (Some((url, commit)), _) => Some(provenance::Source::Git { url, commit }),
            (None, Some(hash)) => Some(provenance::Source::Local { hash }),
            (None, None) => None,
        },
    }
    .annotations();
    // Each platform's image names the base of its own final stage.
    let mut platform_annotations = BTreeMap::new();
    if build.plan.per_platform.len() > 1 {
        for (p, model) in &build.plan.per_platform {
            let own = model
                .uses
                .iter()
                .rev()
                .find(|u| u.kind == BaseKind::From)
                .and_then(|u| build.pins.get(&u.reference).map(|d| (&u.reference, d)));
            if let Some((name, digest)) = own.filter(|own| Some(*own) != primary) {
                platform_annotations.insert(
                    p.clone(),
                    BTreeMap::from([
                        (provenance::BASE_NAME.to_owned(), name.to_string()),
                        (provenance::BASE_DIGEST.to_owned(), digest.to_string()),
                    ]),
                );
            }
        }
    }
    let cfg = live.cfg();
    // A missing secret file is the image's config error, said plainly
    // (the path only: never the contents).
    for (id, path) in &image.secrets {
        std::fs::metadata(path)
            .with_context(|| format!("build secret {id}: {}", path.display()))?;
    }
    Ok(BuildRequest {
        image: image.name.to_string(),
        job: build.release.job.to_string(),
        context: build.context.to_owned(),
        dockerfile: build.plan.model.pin(&build.plan.text, build.pins),
        platform_dockerfiles: if build.plan.per_platform.len() > 1 {
            build
                .plan
                .per_platform
                .iter()
                .map(|(p, m)| (p.clone(), m.pin(&build.plan.text, build.pins)))
                .collect()
        } else {
            BTreeMap::new()
        },
        build_args: image.build_args.clone(),
        target: build
            .release
            .repo
            .target(&build.release.version.to_string()),
        annotations,
        platform_annotations,
        insecure_registries: live.insecure_registries(),
        auth_json: auth_json(registry, build.release.repo.registry(), build.pins.keys())?,
        ca_files: cfg
            .registries
            .values()
            .filter_map(|r| r.ca_file.clone())
            .collect(),
        workdir: cfg
            .daemon
            .state_dir
            .join("builds")
            .join(build.release.job.to_string()),
        platforms: image.platforms.clone(),
        secrets: image.secrets.clone(),
        source_date_epoch: source_date_epoch(),
    })
}

/// How a build is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Choice {
    /// The native backend.
    Native,
    /// A local engine.
    Engine(EngineKind),
    /// The pool of remote engines.
    Remote,
}

/// The backend a build of `image` from `plan` uses, as provenance names
/// it: `native`, the engine's program, or `remote`.
pub fn backend_name(live: &Live, plan: &Plan, image: &ImageConfig) -> &'static str {
    match backend_for(live, plan, image) {
        Choice::Native => "native",
        Choice::Engine(k) => k.program(),
        Choice::Remote => "remote",
    }
}

/// The backend to build with.
fn backend(live: &Live, build: &Build<'_>) -> Choice {
    backend_for(live, build.plan, build.release.image)
}

fn backend_for(live: &Live, plan: &Plan, image: &ImageConfig) -> Choice {
    let cfg = live.cfg();
    match cfg.builder.backend {
        Backend::Native => Choice::Native,
        // Native when it can build the file (no RUN, one stage, no
        // COPY --from ...), else the remote engines when there are
        // some, else the first engine installed; with none, native
        // says why it cannot.
        Backend::Auto
            if rebased_builder::native::plan::Plan::new(&plan.model, &image.build_args).is_ok() =>
        {
            Choice::Native
        }
        Backend::Auto if !cfg.builder.engines.is_empty() => Choice::Remote,
        Backend::Auto => installed_engine().map_or(Choice::Native, Choice::Engine),
        Backend::Buildah => Choice::Engine(EngineKind::Buildah),
        Backend::Podman => Choice::Engine(EngineKind::Podman),
        Backend::Docker => Choice::Engine(EngineKind::Docker),
        Backend::Remote => Choice::Remote,
    }
}

/// How many times a build lost with its engine runs again elsewhere
/// before the job fails.
const MAX_LOST: usize = 4;

/// A build on the pool's engines: on the engine the pool picks; an
/// engine lost during it (not the image's failure) has it run again on
/// another, unless its version tag is there by then, pushed by the lost
/// engine, which is adopted as `publish` adopts one (same bases and
/// source), never pushed again.
async fn remote(
    live: &Live,
    registry: &Registry,
    cancel: &CancellationToken,
    build: &Build<'_>,
    request: &BuildRequest,
) -> Result<BuildOutput, BuildError> {
    let pool = live.pool();
    let metrics = live.metrics();
    let wait = live.cfg().builder.timeout.0;
    let mut log = String::new();
    let mut lost = 0;
    loop {
        let lease = match pool.acquire(&request.platforms, wait, cancel).await {
            Ok(l) => l,
            Err(NoEngine::Cancelled) => {
                return Err(BuildError::Cancelled {
                    step: "waiting for an engine",
                    log,
                })
            }
            Err(e) => return Err(BuildError::Unsupported(e.to_string())),
        };
        let engine = lease.remote().name.clone();
        info!(backend = "remote", %engine, platforms = %build.release.image.platforms.join(","), "building");
        let outcome = lease
            .remote()
            .build(request, registry, cancel, lease.lost())
            .await;
        let count = |outcome: &str| {
            metrics.inc(
                "rebased_engine_builds_total",
                &[("engine", engine.as_str()), ("outcome", outcome)],
            );
        };
        match outcome {
            Ok(mut out) => {
                lease.finish(Finish::Done);
                count("done");
                log.push_str(&out.log);
                out.log = log;
                return Ok(out);
            }
            Err(BuildError::EngineLost {
                engine,
                reason,
                log: part,
            }) => {
                lease.finish(Finish::Lost(reason.clone()));
                count("lost");
                log.push_str(&part);
                if lost >= MAX_LOST {
                    return Err(BuildError::EngineLost {
                        engine,
                        reason,
                        log,
                    });
                }
                lost += 1;
                warn!(%engine, "engine lost during the build: {reason}; running it on another engine");
                match publish::adoptable(registry, build.release).await {
                    Ok(Some(digest)) => {
                        log.push_str(&format!(
                            "# the version tag was pushed by engine {engine} before it was lost: adopted ({digest})\n"
                        ));
                        return Ok(BuildOutput {
                            digest: Some(digest),
                            log,
                        });
                    }
                    Ok(None) => {}
                    Err(e) => {
                        return Err(BuildError::Native {
                            step: "push".to_owned(),
                            reason: format!("{e:#}"),
                            log,
                        })
                    }
                }
            }
            Err(e) => {
                lease.finish(Finish::Failed(e.to_string()));
                count("failed");
                return Err(e);
            }
        }
    }
}

/// An auth file for the engines: credentials of every registry the build
/// pulls from or pushes to (none when all are anonymous).
fn auth_json<'a>(
    registry: &Registry,
    target: Option<&ImageRef>,
    bases: impl Iterator<Item = &'a ImageRef>,
) -> Result<Option<String>> {
    let mut hosts: Vec<String> = bases.map(|b| b.registry().to_owned()).collect();
    hosts.extend(target.map(|t| t.registry().to_owned()));
    hosts.sort();
    hosts.dedup();
    let mut auths = serde_json::Map::new();
    for host in hosts {
        let creds = registry
            .credentials(&host)
            .map_err(|e| anyhow!("credentials for {host}: {e}"))?;
        if let Some(c) = creds {
            let entry = if c.is_identity_token() {
                serde_json::json!({ "identitytoken": c.secret })
            } else {
                serde_json::json!({ "auth": c.basic() })
            };
            auths.insert(host, entry);
        }
    }
    Ok((!auths.is_empty()).then(|| serde_json::json!({ "auths": auths }).to_string()))
}

/// `SOURCE_DATE_EPOCH` from the environment, if set to a number.
fn source_date_epoch() -> Option<i64> {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
}
