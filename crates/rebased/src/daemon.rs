//! The daemon: wiring of the loop of DESIGN.md.
//!
//! Three long-lived tasks share one [`Daemon`]:
//! - the poller ([`crate::poller`]): checks each unique base on its schedule,
//!   settles changes, and queues builds of the images a change makes stale;
//! - the dispatcher (`rebased_scheduler::dispatch`): runs queued jobs within
//!   `max_concurrent_builds`, retries with backoff, cascades;
//! - the API server (`rebased_api`).
//!
//! The daemon is the dispatcher's [`Executor`](rebased_scheduler::dispatch::Executor)
//! ([`crate::executor`]): it builds, pushes, records and moves tags.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use rebased_builder::native::cache::LayerCache;
use rebased_builder::{Engine, EngineKind, Native};
use rebased_core::config::{Config, ImageConfig, LogFormat};
use rebased_core::ImageRef;
use rebased_registry::Registry;
use rebased_scheduler::dispatch::{Clock, Command, Dispatcher, Limits, SharedQueue};
use rebased_scheduler::graph::Graph;
use rebased_scheduler::queue::Queue;
use rebased_scheduler::{select_platforms, Inputs};
use rebased_state::Store;
use rebased_state::VersionRecord;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config;
use crate::poller::{self, CheckRequest};

/// How the daemon runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Until a signal.
    Run,
    /// One check of every base and the builds it causes, then exit.
    Once,
}

/// What the API shows about the running daemon.
pub struct Runtime {
    pub started_at: DateTime<Utc>,
    pub config_loaded_at: DateTime<Utc>,
    pub config_error: Option<String>,
    pub last_poll: Option<DateTime<Utc>>,
    pub next_poll: Option<DateTime<Utc>>,
}

/// The wired daemon, shared by its tasks.
pub struct Daemon {
    /// The config in force (replaced whole on a reload).
    config: std::sync::RwLock<Arc<Config>>,
    pub config_file: PathBuf,
    pub store: Store,
    registry: std::sync::RwLock<Arc<Registry>>,
    pub runtime: Mutex<Runtime>,
    pub queue: SharedQueue,
    /// Commands to the dispatcher.
    pub jobs_tx: mpsc::Sender<Command>,
    /// Immediate checks for the poller.
    pub check_tx: mpsc::Sender<CheckRequest>,
    /// Cancels running builds (after `stop_timeout` on shutdown).
    pub builds: CancellationToken,
    /// The inputs of each image's latest failed attempt (for `failing`).
    pub failed_inputs: Mutex<BTreeMap<String, Inputs>>,
    /// `rebased once`: no settle delay.
    pub once: bool,
    /// Counters for `GET /metrics`.
    pub metrics: rebased_api::metrics::Metrics,
    /// systemd notifications.
    pub notifier: crate::notify::Notifier,
    /// When the poll loop last went round (unix seconds): the watchdog's pulse.
    pub heartbeat: std::sync::atomic::AtomicI64,
    /// Set on SIGTERM: no new jobs, checks or webhooks are taken.
    pub stopping: std::sync::atomic::AtomicBool,
    /// The bases of each Dockerfile, reused while the file is unchanged.
    plans: Mutex<PlanCache>,
    /// Images whose Dockerfile could not be read or parsed at the last look
    /// (marked failing for that): a round decides them again once it can.
    /// The first round after a start or a reload decides every image.
    pub bad_plans: Mutex<std::collections::HashSet<String>>,
}

/// The bases of each Dockerfile, by its path and the build args it is read
/// with (so an entry made under an old config during a reload can only
/// ever serve that old input; a reload empties the cache to free it), each
/// with the file's identity (inode, size, mtime,
/// ctime) when it was read: a poll cycle, a webhook and `GET /v1/images`
/// look at every image's bases, and re-reading and re-parsing thousands of
/// unchanged files each time was most of their cost. A changed file is
/// read again. Equal base lists are shared (`interned`): thousands of
/// images usually have a few dozen distinct bases.
#[derive(Default)]
struct PlanCache {
    entries: std::collections::HashMap<String, CachedBases>,
    interned: std::collections::HashSet<Arc<[ImageRef]>>,
}

/// One Dockerfile's bases, the file's stamp, and when the stamp was last
/// compared with the file.
struct CachedBases {
    stamp: FileStamp,
    verified: std::time::Instant,
    bases: Arc<[ImageRef]>,
}

/// A cached entry younger than this is used without looking at the file:
/// one poll round (its schedule, then its decisions) or one API request
/// looks at each file once, not several times.
const PLAN_VERIFY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What tells a file changed without reading it.
#[derive(Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    ino: u64,
    dev: u64,
    len: u64,
    mtime: Option<std::time::SystemTime>,
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(path: &std::path::Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            ino: m.ino(),
            dev: m.dev(),
            len: m.len(),
            mtime: m.modified().ok(),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// Entry point of `run` and `once`.
pub fn main(config_file: PathBuf, mode: Mode) -> ExitCode {
    let (cfg, graph) = match config::load_checked(&config_file) {
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
    match rt.block_on(run(cfg, graph, config_file, mode)) {
        Ok(code) => code,
        Err(e) => {
            error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cfg: &Config) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(&cfg.daemon.log).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let format = match cfg.daemon.log_format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        f => f,
    };
    let registry = tracing_subscriber::registry().with(filter);
    let text = || tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(j) => registry
                .with(j.with_syslog_identifier("rebased".to_owned()))
                .try_init(),
            Err(e) => {
                eprintln!("journald unavailable ({e}); logging text to stderr");
                registry.with(text()).try_init()
            }
        },
        _ => registry.with(text()).try_init(),
    };
}

/// True when systemd connected stderr to the journal: `JOURNAL_STREAM` is
/// `DEVICE:INODE` of that stream.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    journal_stream_matches(&stream, meta.dev(), meta.ino())
}

/// Parses `JOURNAL_STREAM` (`DEV:INO`) and compares.
fn journal_stream_matches(stream: &str, dev: u64, ino: u64) -> bool {
    match stream.split_once(':') {
        Some((d, i)) => d.trim().parse() == Ok(dev) && i.trim().parse() == Ok(ino),
        None => false,
    }
}

async fn run(cfg: Config, graph: Graph, config_file: PathBuf, mode: Mode) -> Result<ExitCode> {
    let state_dir = cfg.daemon.state_dir.clone();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create state_dir {}", state_dir.display()))?;
    // The ledger, build scratch (auth files) and logs are rebased's alone.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict state_dir {}", state_dir.display()))?;
    }
    let store = Store::open(&state_dir.join("db"))?;
    let registry = Arc::new(Registry::new(&cfg.registries));

    // The queue as it was: jobs running at a crash run again.
    let (mut queue, changed) = Queue::load(store.jobs()?);
    for job in &changed {
        store.put_job(job)?;
    }
    let dropped = queue.prune(rebased_scheduler::dispatch::KEEP_FINISHED);
    store.delete_jobs(&dropped)?;
    if queue.depth() > 0 {
        info!(queued = queue.depth(), "resuming queued jobs");
    }
    let first_new_job = queue.next_id();
    let queue: SharedQueue = Arc::new(Mutex::new(queue));

    let (jobs_tx, jobs_rx) = mpsc::channel(1 << 16);
    let (check_tx, check_rx) = mpsc::channel(64);
    let now = Utc::now();
    let limits = Limits {
        max_concurrent: cfg.daemon.max_concurrent_builds,
        max_attempts: if mode == Mode::Once {
            1
        } else {
            cfg.builder.max_attempts
        },
    };
    let daemon = Arc::new(Daemon {
        config_file: config_file.clone(),
        store,
        registry: std::sync::RwLock::new(registry),
        runtime: Mutex::new(Runtime {
            started_at: now,
            config_loaded_at: now,
            config_error: None,
            last_poll: None,
            next_poll: None,
        }),
        queue: Arc::clone(&queue),
        jobs_tx,
        check_tx,
        builds: CancellationToken::new(),
        failed_inputs: Mutex::new(BTreeMap::new()),
        once: mode == Mode::Once,
        metrics: rebased_api::metrics::Metrics::default(),
        notifier: crate::notify::Notifier::from_env(),
        heartbeat: std::sync::atomic::AtomicI64::new(Utc::now().timestamp()),
        stopping: std::sync::atomic::AtomicBool::new(false),
        plans: Mutex::new(PlanCache::default()),
        bad_plans: Mutex::new(std::collections::HashSet::new()),
        config: std::sync::RwLock::new(Arc::new(cfg)),
    });
    info!(config = %config_file.display(), images = daemon.cfg().image.len(), order = ?graph.order(), "rebased starting");

    let shutdown = CancellationToken::new();
    let dispatcher = Dispatcher::new(queue, graph, Arc::clone(&daemon), limits, Clock::system());

    if mode == Mode::Once {
        for image in &daemon.cfg().image {
            if let Err(e) = daemon.ensure_ledger(image).await {
                warn!(image = %image.name, "cannot read the ledger back from the registry: {e:#}");
            }
        }
        poller::round(&daemon, None, true).await;
        dispatcher.run_until_idle(jobs_rx).await;
        daemon.store.flush("exit")?;
        let failed = rebased_scheduler::dispatch::lock(&daemon.queue)
            .jobs()
            .filter(|j| j.id >= first_new_job && j.state == rebased_core::job::JobState::Failed)
            .count();
        return Ok(if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }

    let read_secret = |path: &Option<PathBuf>, key: &str| -> Result<Option<String>> {
        match path {
            Some(path) => {
                let t = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {key} {}", path.display()))?
                    .trim()
                    .to_owned();
                if t.is_empty() {
                    bail!("{key} {} is empty", path.display());
                }
                Ok(Some(t))
            }
            None => Ok(None),
        }
    };
    let secrets = rebased_api::Secrets {
        api_token: read_secret(&daemon.cfg().daemon.api_token_file, "daemon.api_token_file")?,
        webhook_token: read_secret(&daemon.cfg().webhooks.token_file, "webhooks.token_file")?,
    };
    refuse_open_listener(
        &daemon.cfg().daemon.listen,
        secrets.api_token.is_some() && secrets.webhook_token.is_some(),
    )?;
    let listener = rebased_api::bind(&daemon.cfg().daemon.listen).await?;
    let api_shutdown = CancellationToken::new();
    let api = tokio::spawn(rebased_api::serve(
        listener,
        Arc::clone(&daemon) as Arc<dyn rebased_api::Backend>,
        secrets,
        api_shutdown.clone(),
    ));
    tokio::spawn(signals(
        shutdown.clone(),
        daemon.builds.clone(),
        daemon.cfg().daemon.stop_timeout.0,
    ));
    let dispatch = tokio::spawn(dispatcher.run(jobs_rx, shutdown.clone()));
    // State open, config loaded, API bound.
    daemon.notifier.send("READY=1");
    daemon.report_status();
    if let Some(every) = crate::notify::watchdog_interval() {
        tokio::spawn(watchdog(Arc::clone(&daemon), every, shutdown.clone()));
    }
    // Read back what the registries already hold before deciding anything.
    for image in &daemon.cfg().image {
        if let Err(e) = daemon.ensure_ledger(image).await {
            warn!(image = %image.name, "cannot read the ledger back from the registry yet: {e:#}");
        }
    }
    let poll = tokio::spawn(poller::run(Arc::clone(&daemon), check_rx, shutdown.clone()));
    tokio::spawn(crate::reload::run(Arc::clone(&daemon), shutdown.clone()));

    shutdown.cancelled().await;
    daemon
        .stopping
        .store(true, std::sync::atomic::Ordering::SeqCst);
    daemon.notifier.send("STOPPING=1");
    info!("stopping: no new jobs; running builds may finish");
    if let Err(e) = poll.await {
        warn!("poller: {e}");
    }
    if let Err(e) = dispatch.await {
        warn!("dispatcher: {e}");
    }
    api_shutdown.cancel();
    match api.await {
        Ok(Err(e)) => warn!("API server: {e}"),
        Err(e) => warn!("API task: {e}"),
        Ok(Ok(())) => {}
    }
    daemon.store.flush("shutdown")?;
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Sends `WATCHDOG=1` every `every` while the poll loop keeps going round
/// (it wakes at least that often when the watchdog is on).
async fn watchdog(daemon: Arc<Daemon>, every: std::time::Duration, shutdown: CancellationToken) {
    let limit = chrono::Duration::from_std(every * 4).unwrap_or(chrono::Duration::MAX);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        let beat = daemon.heartbeat.load(std::sync::atomic::Ordering::Relaxed);
        let age = Utc::now() - DateTime::<Utc>::from_timestamp(beat, 0).unwrap_or_default();
        if age <= limit {
            daemon.notifier.send("WATCHDOG=1");
        } else {
            warn!(
                stalled_s = age.num_seconds(),
                "poll loop stalled: not feeding the watchdog"
            );
        }
    }
}

/// A TCP listener reachable from other hosts needs an API token.
fn refuse_open_listener(listen: &str, has_token: bool) -> Result<()> {
    if listen.starts_with("unix:") || has_token {
        return Ok(());
    }
    let addrs: Vec<std::net::SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(listen)
        .with_context(|| format!("daemon.listen {listen:?} is not HOST:PORT or unix:/path"))?
        .collect();
    if addrs.iter().any(|a| !a.ip().is_loopback()) {
        bail!(
            "daemon.listen = {listen:?} is reachable from other hosts: set daemon.api_token_file and webhooks.token_file, or listen on 127.0.0.1 or a unix socket"
        );
    }
    Ok(())
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
    let second = tokio::select! {
        _ = term.recv() => true,
        _ = int.recv() => true,
        _ = tokio::time::sleep(stop_timeout) => false,
    };
    if !second {
        warn!("stop_timeout reached: cancelling builds");
        builds.cancel();
        // Then a further signal still means "now".
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    }
    // Second signal: kill running engines and exit at once. Every state
    // write is its own flushed transaction, and interrupted jobs are still
    // stored as running, so the next start runs them again.
    warn!("second signal: exiting now");
    builds.cancel();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    std::process::exit(0);
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere; the data is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One image's Dockerfile as read now.
pub struct Plan {
    pub text: String,
    pub model: rebased_core::dockerfile::Dockerfile,
    pub bases: Vec<ImageRef>,
}

impl Daemon {
    /// The config in force.
    pub fn cfg(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The settle time in force (none in `once` mode).
    pub fn settle(&self) -> std::time::Duration {
        if self.once {
            std::time::Duration::ZERO
        } else {
            self.cfg().daemon.settle.0
        }
    }

    /// The registry client of the config in force.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// An engine of the config in force, with its storage in the state
    /// directory.
    pub fn engine(&self, kind: EngineKind) -> Engine {
        let cfg = self.cfg();
        Engine::with_storage(
            kind,
            &cfg.daemon.state_dir.join("containers"),
            cfg.builder.timeout.0,
        )
    }

    /// The native builder of the config in force.
    pub fn native(&self) -> Native {
        let cfg = self.cfg();
        Native {
            timeout: cfg.builder.timeout.0,
            layer_cache: Some(LayerCache::new(cfg.daemon.state_dir.join("layers"))),
        }
    }

    /// The image called `name`.
    pub fn image(&self, name: &str) -> Option<ImageConfig> {
        self.cfg()
            .image
            .iter()
            .find(|i| i.name.as_str() == name)
            .cloned()
    }

    /// Swaps in a new config (and what is built from it).
    pub fn install_config(&self, cfg: Config) {
        // The registry client keeps its token cache and concurrency pools
        // unless the registry settings changed.
        if cfg.registries != self.cfg().registries {
            let registry = Arc::new(Registry::new(&cfg.registries));
            *self.registry.write().unwrap_or_else(|p| p.into_inner()) = registry;
        }
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(cfg);
        *lock(&self.plans) = PlanCache::default();
    }

    /// Reads and parses an image's Dockerfile (for a build: always read now).
    pub fn plan(&self, image: &ImageConfig) -> Result<Plan> {
        let p = config::read_dockerfile(&image.dockerfile_path(), &image.build_args)?;
        let bases = p.model.bases();
        Ok(Plan {
            text: p.text,
            model: p.model,
            bases,
        })
    }

    /// An image's bases (`FROM`s and `COPY --from`s of external images):
    /// from the cache while its Dockerfile is unchanged (same inode, size,
    /// mtime and ctime; looked at once per [`PLAN_VERIFY_EVERY`]), else read
    /// and parsed now. Errors are not cached.
    pub fn image_bases(&self, image: &ImageConfig) -> Result<Arc<[ImageRef]>> {
        let path = image.dockerfile_path();
        let key = format!("{}\0{:?}", path.display(), image.build_args);
        if let Some(c) = lock(&self.plans).entries.get(&key) {
            if c.verified.elapsed() < PLAN_VERIFY_EVERY {
                return Ok(Arc::clone(&c.bases));
            }
        }
        let stamp = FileStamp::of(&path);
        if let Some(stamp) = stamp {
            if let Some(c) = lock(&self.plans).entries.get_mut(&key) {
                if c.stamp == stamp {
                    c.verified = std::time::Instant::now();
                    return Ok(Arc::clone(&c.bases));
                }
            }
        }
        let p = config::read_dockerfile(&path, &image.build_args)?;
        let bases = p.model.bases();
        let mut cache = lock(&self.plans);
        let bases = match cache.interned.get(bases.as_slice()) {
            Some(shared) => Arc::clone(shared),
            None => {
                let shared: Arc<[ImageRef]> = bases.into();
                cache.interned.insert(Arc::clone(&shared));
                shared
            }
        };
        // Stamped before the read: a write during the read is seen next time.
        if let Some(stamp) = stamp {
            cache.entries.insert(
                key,
                CachedBases {
                    stamp,
                    verified: std::time::Instant::now(),
                    bases: Arc::clone(&bases),
                },
            );
        }
        Ok(bases)
    }

    /// An image's inputs from the settled base digests in the store; `Err`
    /// names a base whose digest is not known yet.
    pub fn stored_inputs(
        &self,
        image: &ImageConfig,
        bases: &[ImageRef],
    ) -> std::result::Result<Inputs, ImageRef> {
        let mut inputs = Inputs::default();
        for base in bases {
            let key = base.to_string();
            let rec = self.store.base(&key).ok().flatten();
            let digest = match base.digest() {
                Some(d) => d.clone(),
                None => rec
                    .as_ref()
                    .and_then(|r| r.digest.clone())
                    .ok_or_else(|| base.clone())?,
            };
            if let Some(r) = rec.filter(|r| base.digest().is_none() && !r.platforms.is_empty()) {
                inputs.platforms.insert(
                    key.clone(),
                    select_platforms(&r.platforms, &image.platforms),
                );
            }
            inputs.digests.insert(key, digest);
        }
        Ok(inputs)
    }

    /// True when `base` is the repository of a managed image.
    pub fn is_managed(&self, base: &ImageRef) -> bool {
        let name = base.name();
        self.cfg()
            .image
            .iter()
            .any(|i| i.repository.to_string() == name)
    }

    /// Registries reached over plain http.
    pub fn insecure_registries(&self) -> Vec<String> {
        self.cfg()
            .registries
            .iter()
            .filter(|(_, r)| r.insecure)
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// Saves a build log under `state_dir/logs`.
    pub fn save_log(&self, job: u64, log: &str) {
        let dir = self.cfg().daemon.state_dir.join("logs");
        let path = dir.join(format!("{job}.log"));
        if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, log)) {
            warn!(path = %path.display(), "cannot save build log: {e}");
        }
    }

    /// Tells systemd (`STATUS=`) what the daemon is doing, in one line.
    pub fn report_status(&self) {
        let (queued, building) = {
            let q = rebased_scheduler::dispatch::lock(&self.queue);
            let building = q
                .jobs()
                .filter(|j| j.state == rebased_core::job::JobState::Running)
                .count();
            (q.depth(), building)
        };
        let last = lock(&self.runtime)
            .last_poll
            .map_or("never".to_owned(), |t| t.format("%H:%M:%S").to_string());
        self.notifier.status(&format!(
            "{} images, {queued} queued, {building} building, last poll {last}",
            self.cfg().image.len()
        ));
    }

    /// The path of a job's build log.
    pub fn log_path(&self, job: u64) -> PathBuf {
        self.cfg()
            .daemon
            .state_dir
            .join("logs")
            .join(format!("{job}.log"))
    }
}

/// What a published version was built from.
pub fn version_inputs(v: &VersionRecord) -> Inputs {
    Inputs {
        digests: v.bases.clone(),
        platforms: v.platforms.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_parsing() {
        assert!(journal_stream_matches("8:12345", 8, 12345));
        assert!(!journal_stream_matches("8:12345", 8, 1));
        assert!(!journal_stream_matches("garbage", 8, 12345));
        assert!(!journal_stream_matches("", 0, 0));
    }
}
