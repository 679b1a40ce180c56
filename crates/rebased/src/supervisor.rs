//! The supervisor: opens the store, wires the parts, starts every task in
//! one [`TaskTracker`] under one shutdown token, feeds the watchdog, and
//! stops in order.
//!
//! Start: state directory, store, the queue as it was (jobs found running
//! are queued again), the API bound, SIGHUP listened for, `READY=1`, the
//! ledger import of every image (cancellable, feeding the watchdog), then
//! the poll loop and the reload watch (a SIGHUP received during the import
//! is answered then).
//!
//! Stop: the first SIGTERM or SIGINT cancels the shutdown token: the poll
//! loop ends, the dispatcher starts no new job and the API refuses new work
//! (503). A running build may finish for `daemon.stop_timeout`; a second
//! signal, or the timeout, cancels it (the engine is killed) and its job is
//! stored queued, to run first at the next start. Then the API stops, every
//! task has ended, and the store is flushed.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rebased_api::metrics::Metrics;
use rebased_core::config::Config;
use rebased_core::job::JobState;
use rebased_core::Trigger;
use rebased_scheduler::dispatch::{Clock, Command, Dispatcher, Limits, SharedQueue};
use rebased_scheduler::graph::Graph;
use rebased_scheduler::queue::Queue;
use rebased_state::Store;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::audit;
use crate::contexts;
use crate::ledger;
use crate::live::Live;
use crate::notifiers::{self, Notifiers};
use crate::notify::Notifier;
use crate::poll::{self, Poller, Round};
use crate::read_model::{self, ReadModel};
use crate::reconcile::{self, Reconciler};
use crate::reload::{self, Reloader};
use crate::status::Status;

/// How the daemon runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Until a signal.
    Run,
    /// One check of every base and the builds it causes, then exit.
    Once,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Stopped (run) or every build succeeded (once).
    Clean,
    /// `once`: a base could not be checked, a Dockerfile could not be
    /// read, or a build failed; each said in a line.
    Failed(Vec<String>),
}

/// Without a watchdog the start-up import and the poll loop still show
/// they are alive this often.
const NO_WATCHDOG_PULSE: Duration = Duration::from_secs(3600);

/// Runs the daemon with `cfg` (read from `config_file`) until it stops.
pub async fn run(cfg: Config, graph: Graph, config_file: PathBuf, mode: Mode) -> Result<Exit> {
    let store = open_store(&cfg)?;
    let (queue, first_new_job) = load_queue(&store)?;
    let limits = Limits {
        max_concurrent: cfg.daemon.max_concurrent_builds,
        max_attempts: if mode == Mode::Once {
            1
        } else {
            cfg.builder.max_attempts
        },
    };
    let parts = Wiring::new(store, queue, cfg, config_file, mode);
    info!(config = %parts.live.config_file().display(), images = parts.live.cfg().image.len(), order = %graph.order().join(", "), "rebased starting");
    let dispatcher = Dispatcher::new(
        Arc::clone(&parts.queue),
        graph,
        Arc::clone(&parts.reconciler),
        limits,
        Clock::system(),
    );
    match mode {
        Mode::Once => once(parts, dispatcher, first_new_job).await,
        Mode::Run => serve(parts, dispatcher).await,
    }
}

/// Every part, wired, and the channels between them.
struct Wiring {
    store: Store,
    queue: SharedQueue,
    live: Arc<Live>,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    /// Cancelled: the stop begins (see the module's doc).
    shutdown: CancellationToken,
    /// Cancelled: running builds are killed.
    builds: CancellationToken,
    reconciler: Arc<Reconciler>,
    poller: Poller,
    jobs_tx: mpsc::Sender<Command>,
    jobs_rx: mpsc::Receiver<Command>,
    check_tx: mpsc::Sender<poll::CheckRequest>,
    check_rx: mpsc::Receiver<poll::CheckRequest>,
}

impl Wiring {
    fn new(
        store: Store,
        queue: SharedQueue,
        cfg: Config,
        config_file: PathBuf,
        mode: Mode,
    ) -> Self {
        let (jobs_tx, jobs_rx) = mpsc::channel(1 << 16);
        let (check_tx, check_rx) = mpsc::channel(64);
        let shutdown = CancellationToken::new();
        let metrics = Arc::new(Metrics::default());
        let live = Arc::new(Live::new(
            config_file,
            cfg,
            mode == Mode::Once,
            Arc::clone(&metrics),
        ));
        let status = Arc::new(Status::new(Notifier::from_env(), shutdown.clone()));
        let builds = CancellationToken::new();
        let reconciler = Arc::new(Reconciler::new(reconcile::Parts {
            live: Arc::clone(&live),
            store: store.clone(),
            queue: Arc::clone(&queue),
            jobs: jobs_tx.clone(),
            builds: builds.clone(),
            metrics: Arc::clone(&metrics),
            status: Arc::clone(&status),
        }));
        let poller = Poller::new(poll::Parts {
            live: Arc::clone(&live),
            store: store.clone(),
            queue: Arc::clone(&queue),
            metrics: Arc::clone(&metrics),
            status: Arc::clone(&status),
            reconciler: Arc::clone(&reconciler),
        });
        Self {
            store,
            queue,
            live,
            status,
            metrics,
            shutdown,
            builds,
            reconciler,
            poller,
            jobs_tx,
            jobs_rx,
            check_tx,
            check_rx,
        }
    }
}

/// How often the remote engines are checked.
const ENGINE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// The remote engines' health checks until `cancel`, each round's states
/// in the metrics (`rebased_engine_up`, `rebased_engine_running`).
fn engine_health(
    live: &Live,
    cancel: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let metrics = live.metrics();
    live.pool()
        .run_health(ENGINE_CHECK_INTERVAL, cancel, move |engines| {
            for e in engines {
                let up = u64::from(e.state == rebased_builder::remote::pool::EngineState::Up);
                metrics.set_gauge("rebased_engine_up", &[("engine", e.name.as_str())], up);
                metrics.set_gauge(
                    "rebased_engine_running",
                    &[("engine", e.name.as_str())],
                    e.running as u64,
                );
            }
        })
}

/// `rebased once`: import, one round over every base deciding every
/// image, the builds it causes (and their cascades), then exit.
async fn once(
    parts: Wiring,
    dispatcher: Dispatcher<Reconciler>,
    first_new_job: u64,
) -> Result<Exit> {
    let Wiring {
        store,
        queue,
        live,
        status,
        mut poller,
        jobs_rx,
        ..
    } = parts;
    let (cfg, registry) = live.in_force();
    let images = cfg.image.clone();
    drop(cfg);
    let never = CancellationToken::new();
    // Its one task, the engines' health checks, ends with this function
    // (the guard on any early return, awaited at the end).
    let tasks = TaskTracker::new();
    let health = CancellationToken::new();
    let stop_health = health.clone().drop_guard();
    tasks.spawn(engine_health(&live, health));
    ledger::import_all(
        &store,
        &registry,
        &images,
        &status,
        NO_WATCHDOG_PULSE,
        &never,
    )
    .await;
    contexts::init(&live, &store).await;
    let round = Round {
        due: live.watched().into_iter().collect(),
        trigger: Trigger::Poll,
        all: true,
    };
    let sources = live.git_sources();
    let due_sources: Vec<String> = sources.keys().cloned().collect();
    poller.round(&round, &due_sources, &sources).await;
    dispatcher.run_until_idle(jobs_rx).await;
    drop(stop_health);
    tasks.close();
    tasks.wait().await;
    flush(&store, "exit").await?;
    let mut problems: Vec<String> = Vec::new();
    for base in &round.due {
        let key = base.to_string();
        if let Some(e) = store.base(&key)?.and_then(|b| b.error) {
            problems.push(format!("base {key} could not be checked: {e}"));
        }
    }
    problems.extend(poller.unreadable());
    problems.extend(
        rebased_scheduler::dispatch::lock(&queue)
            .jobs()
            .filter(|j| j.id >= first_new_job && j.state == JobState::Failed)
            .map(|j| {
                format!(
                    "build of {} failed (job {}): {}",
                    j.image,
                    j.id,
                    j.error.as_deref().unwrap_or("no error recorded")
                )
            }),
    );
    Ok(if problems.is_empty() {
        Exit::Clean
    } else {
        Exit::Failed(problems)
    })
}

/// `rebased run`: every task in one tracker until a signal, then the stop
/// in order (see the module's doc).
async fn serve(parts: Wiring, dispatcher: Dispatcher<Reconciler>) -> Result<Exit> {
    let Wiring {
        store,
        queue,
        live,
        status,
        metrics,
        shutdown,
        builds,
        reconciler,
        poller,
        jobs_tx,
        jobs_rx,
        check_tx,
        check_rx,
    } = parts;
    let (listener, secrets) = listen(&live.cfg()).await?;
    let stop_timeout = live.cfg().daemon.stop_timeout.0;

    let tasks = TaskTracker::new();
    // Cancelled once the dispatcher has ended: no signal can matter after.
    let stopped = CancellationToken::new();
    let api_shutdown = CancellationToken::new();
    let context_reconciler = Arc::clone(&reconciler);
    tasks.spawn(audit::scheduled(
        audit::Auditor {
            live: Arc::clone(&live),
            store: store.clone(),
            metrics: Arc::clone(&metrics),
            stop: shutdown.clone(),
        },
        shutdown.clone(),
    ));
    let feed = crate::events::channel();
    tasks.spawn(crate::events::pump(
        store.clone(),
        Arc::clone(&feed),
        api_shutdown.clone(),
    ));
    // Each notifier is its own task; they stop with the API, last, so the
    // events of the builds that finish during the stop still go out.
    let notifiers = Arc::new(Notifiers::new(
        notifiers::Parts {
            store: store.clone(),
            live: Arc::clone(&live),
            metrics: Arc::clone(&metrics),
            feed: Arc::clone(&feed),
        },
        tasks.clone(),
        api_shutdown.clone(),
    ));
    notifiers.apply(&live.cfg().notify);
    let read_model = ReadModel::new(read_model::Parts {
        live: Arc::clone(&live),
        store: store.clone(),
        queue: Arc::clone(&queue),
        status: Arc::clone(&status),
        metrics,
        jobs: jobs_tx.clone(),
        checks: check_tx.clone(),
        reconciler,
        feed: Arc::clone(&feed),
        notifiers: Arc::clone(&notifiers),
        tasks: tasks.clone(),
        stop: shutdown.clone(),
    });
    let api = tasks.spawn(rebased_api::serve(
        listener,
        Arc::new(read_model) as Arc<dyn rebased_api::Backend>,
        secrets,
        api_shutdown.clone(),
    ));
    tasks.spawn(signals(
        shutdown.clone(),
        builds,
        stop_timeout,
        stopped.clone(),
    ));
    tasks.spawn(engine_health(&live, shutdown.clone()));
    let dispatch = tasks.spawn(dispatcher.run(jobs_rx, shutdown.clone()));
    // Before READY=1: from then on `systemctl reload` may send SIGHUP, whose
    // default action would end the process during the import; the reload
    // itself waits for the reload task, after the import.
    let hup = reload::listen_hangup();
    // State open, config loaded, API bound.
    status.notify("READY=1");
    status.report(&queue, live.cfg().image.len());
    let watchdog_every = crate::notify::watchdog_interval();
    if let Some(every) = watchdog_every {
        tasks.spawn(watchdog(Arc::clone(&status), every, shutdown.clone()));
    }
    let pulse = watchdog_every.unwrap_or(NO_WATCHDOG_PULSE);
    // Read back what the registries already hold before deciding anything.
    // The config's image list as it is (no copy of thousands of tables);
    // no reload can swap it before the reload task starts, below.
    let (cfg, registry) = live.in_force();
    ledger::import_all(&store, &registry, &cfg.image, &status, pulse, &shutdown).await;
    drop((cfg, registry));
    // Watched contexts are hashed before the first round decides them.
    contexts::init(&live, &store).await;
    tasks.spawn(contexts::run(
        contexts::Parts {
            live: Arc::clone(&live),
            store: store.clone(),
            reconciler: Arc::clone(&context_reconciler),
        },
        shutdown.clone(),
    ));
    let poll = (!shutdown.is_cancelled())
        .then(|| tasks.spawn(poller.run(check_rx, pulse, shutdown.clone())));
    tasks.spawn(reload::run(
        Reloader {
            live: Arc::clone(&live),
            status: Arc::clone(&status),
            jobs: jobs_tx,
            checks: check_tx,
            queue: Arc::clone(&queue),
            notifiers,
        },
        hup,
        shutdown.clone(),
    ));

    shutdown.cancelled().await;
    status.notify("STOPPING=1");
    info!("stopping: no new jobs; running builds may finish");
    stop_in_order(
        Running {
            poll,
            dispatch,
            api,
            tasks,
        },
        &stopped,
        &api_shutdown,
    )
    .await;
    flush(&store, "shutdown").await?;
    info!("stopped");
    Ok(Exit::Clean)
}

/// The tasks of `rebased run` that the stop waits for in turn.
struct Running {
    poll: Option<JoinHandle<()>>,
    dispatch: JoinHandle<()>,
    api: JoinHandle<std::io::Result<()>>,
    tasks: TaskTracker,
}

/// The stop's order: the poll loop, then the dispatcher (its running
/// builds), then `stopped` (no signal matters after) and the API with the
/// event feed and the notifiers (`api_shutdown`), then every other task.
async fn stop_in_order(
    running: Running,
    stopped: &CancellationToken,
    api_shutdown: &CancellationToken,
) {
    if let Some(poll) = running.poll {
        if let Err(e) = poll.await {
            warn!("poll loop: {e}");
        }
    }
    if let Err(e) = running.dispatch.await {
        warn!("dispatcher: {e}");
    }
    stopped.cancel();
    api_shutdown.cancel();
    match running.api.await {
        Ok(Err(e)) => warn!("API server: {e}"),
        Err(e) => warn!("API task: {e}"),
        Ok(Ok(())) => {}
    }
    running.tasks.close();
    running.tasks.wait().await;
}

/// The API's secrets and its bound listener: a listener reachable from
/// other hosts without both tokens is refused.
async fn listen(cfg: &Config) -> Result<(rebased_api::Listener, rebased_api::Secrets)> {
    let secrets = rebased_api::Secrets {
        api_token: read_secret(cfg.daemon.api_token_file.as_ref(), "daemon.api_token_file")?,
        webhook_token: read_secret(cfg.webhooks.token_file.as_ref(), "webhooks.token_file")?,
    };
    refuse_open_listener(
        &cfg.daemon.listen,
        secrets.api_token.is_some() && secrets.webhook_token.is_some(),
    )?;
    let listener = rebased_api::bind(&cfg.daemon.listen)
        .await
        .map_err(bind_error)?;
    Ok((listener, secrets))
}

/// Why the API cannot listen, said once, naming `daemon.listen`.
fn bind_error(e: rebased_api::BindError) -> anyhow::Error {
    let listen = &e.listen;
    let cause = &e.source;
    if cause.kind() == std::io::ErrorKind::AddrInUse {
        anyhow!("daemon.listen = \"{listen}\" is in use ({cause}): another process (another rebased?) listens there; stop it, or set another daemon.listen")
    } else {
        anyhow!("cannot listen on daemon.listen = \"{listen}\": {cause}")
    }
}

/// Creates the state directory (0700: the ledger, build scratch with auth
/// files, and logs are rebased's alone) and opens the store in it.
fn open_store(cfg: &Config) -> Result<Store> {
    use std::os::unix::fs::PermissionsExt;
    let state_dir = &cfg.daemon.state_dir;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create state_dir {}", state_dir.display()))?;
    std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict state_dir {}", state_dir.display()))?;
    match Store::open(&state_dir.join("db")) {
        Ok(store) => Ok(store),
        Err(rebased_state::StateError::Locked { .. }) => bail!(
            "another rebased is running on state_dir {}: its database is locked; stop that one, or give this one another daemon.state_dir",
            state_dir.display()
        ),
        Err(e) => Err(e.into()),
    }
}

/// The queue as it was: jobs running at a crash run again. Returns it and
/// the id of the first job of this run.
fn load_queue(store: &Store) -> Result<(SharedQueue, u64)> {
    let (mut queue, changed) = Queue::load(store.jobs()?);
    let interrupted = changed
        .iter()
        .filter(|j| j.state == JobState::Queued)
        .count();
    if interrupted > 0 {
        // A clean stop stores an interrupted job as queued: these were cut
        // off by a crash or a kill.
        warn!(
            jobs = interrupted,
            "jobs left running by an unclean stop are queued again"
        );
    }
    for job in &changed {
        store.put_job(job)?;
    }
    let dropped = queue.prune(rebased_scheduler::dispatch::KEEP_FINISHED);
    store.delete_jobs(&dropped)?;
    if queue.depth() > 0 {
        info!(queued = queue.depth(), "resuming queued jobs");
    }
    let first_new_job = queue.next_id();
    Ok((Arc::new(Mutex::new(queue)), first_new_job))
}

/// Flushes the store on a blocking thread.
async fn flush(store: &Store, what: &'static str) -> Result<()> {
    crate::records::write(store, move |s| s.flush(what)).await
}

/// A token file's contents, trimmed; an empty file is an error.
fn read_secret(path: Option<&PathBuf>, key: &str) -> Result<Option<String>> {
    let Some(path) = path else {
        return Ok(None);
    };
    let t = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {key} {}", path.display()))?
        .trim()
        .to_owned();
    if t.is_empty() {
        bail!("{key} {} is empty", path.display());
    }
    Ok(Some(t))
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

/// Sends `WATCHDOG=1` every `every` while the daemon shows signs of life
/// (the poll loop going round, the start-up import waiting on registries);
/// a loop stalled for four intervals is not vouched for.
async fn watchdog(status: Arc<Status>, every: Duration, shutdown: CancellationToken) {
    let limit = chrono::Duration::from_std(every * 4).unwrap_or(chrono::Duration::MAX);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        let age = status.since_beat();
        if age <= limit {
            status.notify("WATCHDOG=1");
        } else {
            warn!(
                stalled_s = age.num_seconds(),
                "poll loop stalled: not feeding the watchdog"
            );
        }
    }
}

/// First SIGTERM/SIGINT: cancel `shutdown` (stop starting work; running
/// builds get `stop_timeout`). A second signal, or the timeout: cancel
/// `builds` (their jobs are stored queued). Ends with `stopped`.
async fn signals(
    shutdown: CancellationToken,
    builds: CancellationToken,
    stop_timeout: Duration,
    stopped: CancellationToken,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = stopped.cancelled() => return,
    }
    info!(
        stop_timeout_s = stop_timeout.as_secs(),
        "signal received: finishing running builds"
    );
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => warn!("second signal: cancelling running builds; their jobs run at the next start"),
        _ = int.recv() => warn!("second signal: cancelling running builds; their jobs run at the next start"),
        _ = tokio::time::sleep(stop_timeout) => warn!("stop_timeout reached: cancelling builds"),
        _ = stopped.cancelled() => return,
    }
    builds.cancel();
    // Further signals change nothing: the builds are being killed, and the
    // stop goes on (systemd's TimeoutStopSec is the last word).
    loop {
        tokio::select! {
            _ = term.recv() => info!("already stopping"),
            _ = int.recv() => info!("already stopping"),
            _ = stopped.cancelled() => return,
        }
    }
}
