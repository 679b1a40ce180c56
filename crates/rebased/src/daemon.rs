//! The daemon: the loop of DESIGN.md, wired from the library crates.
//!
//! watch (poll on cron) -> decide stale images -> build pinned -> push the
//! version tag -> record -> move floating tags. One cycle checks every unique
//! base once, then walks the images in config order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use rebased_builder::provenance;
use rebased_builder::{BuildRequest, Buildah};
use rebased_core::config::{Config, ImageConfig, LogFormat, Repository};
use rebased_core::dockerfile::BaseKind;
use rebased_core::{Digest, ImageRef, ImageState, Trigger};
use rebased_registry::Registry;
use rebased_scheduler::{decide, next_after, Decision, Published};
use rebased_state::{BaseChange, BaseRecord, ImageRecord, Reason, Store, VersionRecord};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, info_span, warn, Instrument};

use crate::config;

/// How the daemon runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Until a signal.
    Run,
    /// One cycle, then exit.
    Once,
}

/// What the API shows about the running daemon.
pub struct Runtime {
    pub started_at: DateTime<Utc>,
    pub config_loaded_at: DateTime<Utc>,
    pub config_error: Option<String>,
    pub running: Vec<String>,
    pub queue_depth: usize,
    pub last_poll: Option<DateTime<Utc>>,
    pub next_poll: Option<DateTime<Utc>>,
}

/// The wired daemon.
pub struct Daemon {
    pub config: Config,
    pub config_file: PathBuf,
    pub store: Store,
    registry: Arc<Registry>,
    buildah: Buildah,
    pub runtime: Mutex<Runtime>,
    jobs: AtomicU64,
}

/// Entry point of `run` and `once`.
pub fn main(config_file: PathBuf, mode: Mode) -> ExitCode {
    let cfg = match config::load(&config_file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_logging(&cfg);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg, config_file, mode)) {
        Ok(code) => code,
        Err(e) => {
            error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(&cfg.daemon.log).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.daemon.log_format {
        LogFormat::Json => builder.json().try_init(),
        _ => builder.try_init(),
    };
}

async fn run(cfg: Config, config_file: PathBuf, mode: Mode) -> Result<ExitCode> {
    for image in &cfg.image {
        if let Repository::OciLayout(p) = &image.repository {
            bail!(
                "image {}: repository oci:{} is not supported yet; push to a registry",
                image.name,
                p.display()
            );
        }
    }
    let state_dir = cfg.daemon.state_dir.clone();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create state_dir {}", state_dir.display()))?;
    let store = Store::open(&state_dir.join("db"))?;
    let registry = Arc::new(Registry::new(&cfg.registries));
    let buildah = Buildah::with_storage(&state_dir.join("containers"), cfg.builder.timeout.0);
    let now = Utc::now();
    let daemon = Arc::new(Daemon {
        config_file: config_file.clone(),
        store,
        registry,
        buildah,
        runtime: Mutex::new(Runtime {
            started_at: now,
            config_loaded_at: now,
            config_error: None,
            running: Vec::new(),
            queue_depth: 0,
            last_poll: None,
            next_poll: None,
        }),
        jobs: AtomicU64::new(0),
        config: cfg,
    });
    info!(config = %config_file.display(), images = daemon.config.image.len(), "rebased starting");

    let shutdown = CancellationToken::new();
    // Builds get their own token: on shutdown they may finish until stop_timeout.
    let builds = CancellationToken::new();

    if mode == Mode::Once {
        let failures = daemon.cycle(Trigger::Poll, &shutdown, &builds).await;
        return Ok(if failures == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }

    let listener = rebased_api::bind(&daemon.config.daemon.listen).await?;
    let api = tokio::spawn(rebased_api::serve(
        listener,
        Arc::clone(&daemon) as Arc<dyn rebased_api::Backend>,
        shutdown.clone(),
    ));
    tokio::spawn(signals(
        shutdown.clone(),
        builds.clone(),
        daemon.config.daemon.stop_timeout.0,
    ));

    loop {
        daemon.cycle(Trigger::Poll, &shutdown, &builds).await;
        if shutdown.is_cancelled() {
            break;
        }
        let Some(next) = next_after(&daemon.config.daemon.poll, Utc::now()) else {
            warn!("poll schedule has no future time; polling stops");
            shutdown.cancelled().await;
            break;
        };
        lock(&daemon.runtime).next_poll = Some(next);
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    info!("stopping");
    match api.await {
        Ok(Err(e)) => warn!("API server: {e}"),
        Err(e) => warn!("API task: {e}"),
        Ok(Ok(())) => {}
    }
    daemon.store.flush("shutdown")?;
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// First SIGTERM/SIGINT: stop starting work; running builds get
/// `stop_timeout`. Second signal: cancel builds at once.
async fn signals(
    shutdown: CancellationToken,
    builds: CancellationToken,
    stop_timeout: std::time::Duration,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    info!(
        stop_timeout_s = stop_timeout.as_secs(),
        "signal received: finishing running builds"
    );
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => warn!("second signal: cancelling builds"),
        _ = int.recv() => warn!("second signal: cancelling builds"),
        _ = tokio::time::sleep(stop_timeout) => warn!("stop_timeout reached: cancelling builds"),
    }
    builds.cancel();
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere; the data is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One image's bases as planned for this cycle.
struct Plan {
    text: String,
    model: rebased_core::dockerfile::Dockerfile,
    bases: Vec<ImageRef>,
}

impl Daemon {
    /// One cycle: check every unique base once, then decide and build each
    /// image. Returns the number of images whose build failed.
    pub async fn cycle(
        &self,
        trigger: Trigger,
        shutdown: &CancellationToken,
        builds: &CancellationToken,
    ) -> usize {
        let started = Utc::now();
        let mut plans: BTreeMap<String, Result<Plan>> = BTreeMap::new();
        let mut wanted: Vec<ImageRef> = Vec::new();
        for image in &self.config.image {
            let plan =
                config::read_dockerfile(&image.dockerfile_path(), &image.build_args).map(|p| {
                    let bases = p.model.bases();
                    Plan {
                        text: p.text,
                        model: p.model,
                        bases,
                    }
                });
            if let Ok(p) = &plan {
                wanted.extend(p.bases.iter().filter(|b| b.digest().is_none()).cloned());
            }
            plans.insert(image.name.to_string(), plan);
        }
        let checks = rebased_watcher::check_all(Arc::clone(&self.registry), wanted, 8).await;
        let mut digests: BTreeMap<ImageRef, Result<Digest, String>> = BTreeMap::new();
        for check in checks {
            let key = check.reference.to_string();
            let prev = self.store.base(&key).ok().flatten();
            let mut rec = prev.clone().unwrap_or(BaseRecord {
                reference: key.clone(),
                digest: None,
                checked_at: None,
                changed_at: None,
                error: None,
            });
            rec.checked_at = Some(Utc::now());
            match &check.result {
                Ok(d) => {
                    if rec.digest.as_ref() != Some(d) {
                        if rec.digest.is_some() {
                            info!(base = %key, from = ?rec.digest.as_ref().map(Digest::as_str), to = %d, "base changed");
                        }
                        rec.changed_at = Some(Utc::now());
                        rec.digest = Some(d.clone());
                    }
                    rec.error = None;
                }
                Err(e) => rec.error = Some(e.to_string()),
            }
            if let Err(e) = self.store.put_base(&rec) {
                error!(base = %key, "cannot record base: {e}");
            }
            digests.insert(check.reference, check.result.map_err(|e| e.to_string()));
        }
        lock(&self.runtime).last_poll = Some(started);

        let mut failures = 0;
        for image in &self.config.image {
            if shutdown.is_cancelled() {
                break;
            }
            let name = image.name.to_string();
            let Some(plan) = plans.remove(&name) else {
                continue;
            };
            let span = info_span!("image", image = %name);
            let result = self
                .reconcile(image, plan, &digests, trigger, builds)
                .instrument(span)
                .await;
            if let Err(e) = result {
                failures += 1;
                error!(image = %name, "{e:#}");
                self.mark(&name, ImageState::Failing, Some(format!("{e:#}")));
            }
        }
        failures
    }

    fn mark(&self, name: &str, state: ImageState, error: Option<String>) {
        let mut rec = match self.store.image(name) {
            Ok(Some(r)) => r,
            Ok(None) => ImageRecord::new(name),
            Err(e) => {
                error!(image = %name, "cannot read image record: {e}");
                return;
            }
        };
        rec.state = state;
        rec.last_error = error;
        rec.updated_at = Utc::now();
        if let Err(e) = self.store.put_image(&rec) {
            error!(image = %name, "cannot record image state: {e}");
        }
    }

    async fn reconcile(
        &self,
        image: &ImageConfig,
        plan: Result<Plan>,
        digests: &BTreeMap<ImageRef, Result<Digest, String>>,
        trigger: Trigger,
        builds: &CancellationToken,
    ) -> Result<()> {
        let name = image.name.as_str();
        let plan = plan?;
        let mut now: BTreeMap<String, Digest> = BTreeMap::new();
        let mut pins: BTreeMap<ImageRef, Digest> = BTreeMap::new();
        for base in &plan.bases {
            let digest = match base.digest() {
                Some(d) => d.clone(),
                None => match digests.get(base) {
                    Some(Ok(d)) => d.clone(),
                    Some(Err(e)) => {
                        // The registry is the problem, not the image: keep its state.
                        warn!(base = %base, "base unavailable, image not decided this cycle: {e}");
                        return Ok(());
                    }
                    None => bail!("base {base} was not checked"),
                },
            };
            now.insert(base.to_string(), digest.clone());
            pins.insert(base.clone(), digest);
        }
        let record = self.store.image(name)?;
        let current = match record.as_ref().and_then(|r| r.current) {
            Some(v) => self.store.version(name, &v)?,
            None => None,
        };
        let published = current.as_ref().map(|c| Published {
            version: &c.version,
            bases: &c.bases,
        });
        let decision = decide(published, &image.version, image.bump, &now, trigger);
        let Decision::Build {
            version,
            supersedes,
            trigger,
            changes,
        } = decision
        else {
            if record.as_ref().is_none_or(|r| r.state != ImageState::Fresh) {
                self.mark(name, ImageState::Fresh, None);
            }
            return Ok(());
        };
        let Repository::Registry(repo) = &image.repository else {
            bail!("only registry repositories are supported");
        };
        let job = format!(
            "{}-{}",
            Utc::now().format("%Y%m%dT%H%M%S"),
            self.jobs.fetch_add(1, Ordering::Relaxed)
        );
        let span = info_span!("job", job = %job, version = %version);
        async {
            info!(%trigger, supersedes = ?supersedes.map(|v| v.to_string()), "building");
            self.mark(name, ImageState::Building, None);
            lock(&self.runtime).running.push(name.to_owned());
            let result = self
                .build_and_publish(
                    image, repo, &plan, &pins, &now, version, supersedes, trigger, &changes, &job,
                    builds,
                )
                .await;
            lock(&self.runtime).running.retain(|n| n != name);
            result
        }
        .instrument(span)
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn build_and_publish(
        &self,
        image: &ImageConfig,
        repo: &ImageRef,
        plan: &Plan,
        pins: &BTreeMap<ImageRef, Digest>,
        now: &BTreeMap<String, Digest>,
        version: rebased_core::Version,
        supersedes: Option<rebased_core::Version>,
        trigger: Trigger,
        changes: &[rebased_scheduler::Change],
        job: &str,
        builds: &CancellationToken,
    ) -> Result<()> {
        let name = image.name.as_str();
        let target = repo.with_tag(&version.to_string());
        // Versions are immutable: look before pushing.
        let existing = self.registry.lookup(&target).await?;
        let digest = match existing {
            Some(d) => {
                let manifest = self.registry.manifest(&target).await?;
                match provenance::bases_from(&manifest.annotations()) {
                    Some(b) if &b == now => {
                        info!(digest = %d, "version tag already pushed with the same inputs: adopting it");
                        d
                    }
                    _ => bail!(
                        "version tag {target} already exists ({d}) and was not built by rebased from the current bases; refusing to overwrite it"
                    ),
                }
            }
            None => {
                let primary = plan
                    .model
                    .uses
                    .iter()
                    .rev()
                    .find(|u| u.kind == BaseKind::From)
                    .and_then(|u| pins.get(&u.reference).map(|d| (&u.reference, d)));
                let annotations = provenance::annotations(
                    &version,
                    Utc::now(),
                    primary,
                    pins,
                    supersedes.as_ref(),
                );
                let workdir = self.config.daemon.state_dir.join("builds").join(job);
                let request = BuildRequest {
                    image: name.to_owned(),
                    job: job.to_owned(),
                    context: image.context.clone(),
                    dockerfile: plan.model.pin(&plan.text, pins),
                    build_args: image.build_args.clone(),
                    target: target.clone(),
                    annotations,
                    insecure_registries: self.insecure_registries(),
                    workdir: workdir.clone(),
                };
                let outcome = self.buildah.build(&request, builds).await;
                let log = match &outcome {
                    Ok(o) => o.log.clone(),
                    Err(e) => e.log().to_owned(),
                };
                self.save_log(job, &log);
                let _ = tokio::fs::remove_dir_all(&workdir).await;
                let out = outcome.with_context(|| format!("build of {target} (job {job})"))?;
                info!(digest = %out.digest, "pushed {target}");
                out.digest
            }
        };
        let record = VersionRecord {
            version,
            digest: digest.clone(),
            built_at: Utc::now(),
            bases: now.clone(),
            trigger,
            superseded_by: None,
            superseded_at: None,
            reason: None,
        };
        let reason = supersedes.map(|_| Reason {
            trigger,
            bases: changes
                .iter()
                .map(|c| BaseChange {
                    reference: c.reference.clone(),
                    before: c.before.clone(),
                    after: c.after.clone(),
                })
                .collect(),
        });
        self.store
            .publish(name, &record, reason)
            .with_context(|| format!("recording {target} ({digest})"))?;
        info!(%digest, "published {target}");
        let mut tag_errors = Vec::new();
        for template in &image.tags {
            let tag = template.render(&version);
            match self.registry.tag(repo, &digest, &tag).await {
                Ok(()) => info!(tag = %tag, "moved floating tag"),
                Err(e) => tag_errors.push(format!("{tag}: {e}")),
            }
        }
        if !tag_errors.is_empty() {
            return Err(anyhow!(
                "{target} is published but floating tags did not move: {}",
                tag_errors.join("; ")
            ));
        }
        Ok(())
    }

    fn insecure_registries(&self) -> Vec<String> {
        self.config
            .registries
            .iter()
            .filter(|(_, r)| r.insecure)
            .map(|(h, _)| h.clone())
            .collect()
    }

    fn save_log(&self, job: &str, log: &str) {
        let dir = self.config.daemon.state_dir.join("logs");
        let path = dir.join(format!("{job}.log"));
        if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, log)) {
            warn!(path = %path.display(), "cannot save build log: {e}");
        }
    }

    /// The config file in force.
    pub fn config_file(&self) -> &Path {
        &self.config_file
    }
}
