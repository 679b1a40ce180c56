//! Reloading the config on SIGHUP and when the file changes: a valid config
//! is applied without dropping the queue or running builds; an invalid one is
//! refused, logged with file, line and key, and shown in `/v1/status` while
//! the old one keeps running.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rebased_scheduler::dispatch::{Command, Limits, SharedQueue};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config;
use crate::live::Live;
use crate::notifiers::Notifiers;
use crate::poll::CheckRequest;
use crate::status::Status;

/// What a reload changes and tells.
pub struct Reloader {
    /// The config in force, swapped on success.
    pub live: Arc<Live>,
    /// Where a refused reload is shown.
    pub status: Arc<Status>,
    /// The dispatcher, told the new graph and limits.
    pub jobs: mpsc::Sender<Command>,
    /// The poll loop, asked to decide every image.
    pub checks: mpsc::Sender<CheckRequest>,
    /// For the `STATUS=` line.
    pub queue: SharedQueue,
    /// The notifiers, told the new `[[notify]]` tables.
    pub notifiers: Arc<Notifiers>,
}

/// Editors write a file in several steps: wait this long for quiet.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Listens for SIGHUP from now on: SIGHUP's default action ends the
/// process, so the supervisor calls this before `READY=1` (a `systemctl
/// reload` may come during the start-up import) and hands the stream to
/// [`run`], which answers a SIGHUP received before it started.
pub fn listen_hangup() -> Option<Signal> {
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            error!("cannot listen for SIGHUP: {e}");
            None
        }
    }
}

/// Reloads on SIGHUP (from `hup`, see [`listen_hangup`]) and on changes of
/// the config file until `shutdown`.
pub async fn run(reloader: Reloader, mut hup: Option<Signal>, shutdown: CancellationToken) {
    let (tx, mut changes) = mpsc::channel::<()>(16);
    // Kept alive for as long as this task runs.
    let _watcher = watch(reloader.live.config_file(), tx);
    loop {
        let why = tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
            Some(()) = changes.recv() => {
                // Debounce: wait for quiet, then reload once.
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, changes.recv()).await {}
                "config file changed"
            }
        };
        reloader.reload(why).await;
    }
}

/// Watches the config file's directory (editors replace files by renaming,
/// which a watch on the file itself would miss).
fn watch(file: &std::path::Path, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let dir = file
        .parent()
        .map(PathBuf::from)
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let name = file.file_name().map(|n| n.to_owned());
    let handler = move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let ours = event.paths.iter().any(|p| p.file_name() == name.as_deref());
            if ours && !matches!(event.kind, notify::EventKind::Access(_)) {
                let _ = tx.try_send(());
            }
        }
    };
    match notify::recommended_watcher(handler) {
        Ok(mut w) => match w.watch(&dir, notify::RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                warn!(dir = %dir.display(), "cannot watch the config directory; reload with SIGHUP: {e}");
                None
            }
        },
        Err(e) => {
            warn!("cannot watch the config file; reload with SIGHUP: {e}");
            None
        }
    }
}

impl Reloader {
    /// Reads the config again and applies it, or keeps the old one.
    pub async fn reload(&self, why: &str) {
        self.status.notify("RELOADING=1");
        info!(reason = why, file = %self.live.config_file().display(), "reloading the config");
        match config::load_checked(self.live.config_file()) {
            Ok((mut cfg, graph)) => {
                let old = self.live.cfg();
                // These are bound at start: keep them, and say so.
                let mut kept = Vec::new();
                if cfg.daemon.state_dir != old.daemon.state_dir {
                    kept.push("daemon.state_dir");
                    cfg.daemon.state_dir = old.daemon.state_dir.clone();
                }
                if cfg.daemon.listen != old.daemon.listen {
                    kept.push("daemon.listen");
                    cfg.daemon.listen = old.daemon.listen.clone();
                }
                if cfg.daemon.api_token_file != old.daemon.api_token_file
                    || cfg.webhooks.token_file != old.webhooks.token_file
                {
                    kept.push("token files");
                }
                if cfg.daemon.stop_timeout != old.daemon.stop_timeout {
                    kept.push("daemon.stop_timeout");
                }
                if cfg.daemon.log != old.daemon.log
                    || cfg.daemon.log_format != old.daemon.log_format
                {
                    kept.push("daemon.log, daemon.log_format");
                }
                if !kept.is_empty() {
                    warn!(keys = %kept.join(", "), "these settings apply only at start: restart to change them");
                }
                let limits = Limits {
                    max_concurrent: cfg.daemon.max_concurrent_builds,
                    max_attempts: cfg.builder.max_attempts,
                };
                let images = cfg.image.len();
                let notify = cfg.notify.clone();
                self.live.install(cfg);
                self.notifiers.apply(&notify);
                let _ = self.jobs.send(Command::Graph(graph)).await;
                let _ = self.jobs.send(Command::Limits(limits)).await;
                self.status.update(|t| {
                    t.config_loaded_at = Utc::now();
                    t.config_error = None;
                });
                // New images and bases are decided at once.
                let _ = self.checks.try_send(CheckRequest {
                    references: Some(Vec::new()),
                    trigger: rebased_core::Trigger::Poll,
                    all: true,
                    sources: Vec::new(),
                });
                info!(images, "config reloaded");
            }
            Err(e) => {
                let text = format!("{e:#}");
                error!("config reload refused, the previous config stays in force: {text}");
                self.status.update(|t| t.config_error = Some(text));
            }
        }
        self.status.notify("READY=1");
        self.status.report(&self.queue, self.live.cfg().image.len());
    }
}
