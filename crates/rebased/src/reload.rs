//! Reloading the config on SIGHUP and when the file changes: a valid config
//! is applied without dropping the queue or running builds; an invalid one is
//! refused, logged with file, line and key, and shown in `/v1/status` while
//! the old one keeps running.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rebased_scheduler::dispatch::{Command, Limits};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config;
use crate::daemon::{lock, Daemon};
use crate::poller::CheckRequest;

/// Editors write a file in several steps: wait this long for quiet.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Reloads on SIGHUP and on changes of the config file until `shutdown`.
pub async fn run(daemon: Arc<Daemon>, shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            error!("cannot listen for SIGHUP: {e}");
            None
        }
    };
    let (tx, mut changes) = mpsc::channel::<()>(16);
    // Kept alive for as long as this task runs.
    let _watcher = watch(&daemon.config_file, tx);
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
        reload(&daemon, why).await;
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

/// Reads the config again and applies it, or keeps the old one.
pub async fn reload(daemon: &Daemon, why: &str) {
    daemon.notifier.send("RELOADING=1");
    info!(reason = why, file = %daemon.config_file.display(), "reloading the config");
    match config::load_checked(&daemon.config_file) {
        Ok((mut cfg, graph)) => {
            let old = daemon.cfg();
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
            if cfg.daemon.log != old.daemon.log || cfg.daemon.log_format != old.daemon.log_format {
                kept.push("daemon.log, daemon.log_format");
            }
            if !kept.is_empty() {
                warn!(keys = ?kept, "these settings apply only at start: restart to change them");
            }
            let limits = Limits {
                max_concurrent: cfg.daemon.max_concurrent_builds,
                max_attempts: cfg.builder.max_attempts,
            };
            let images = cfg.image.len();
            daemon.install_config(cfg);
            let _ = daemon.jobs_tx.send(Command::Graph(graph)).await;
            let _ = daemon.jobs_tx.send(Command::Limits(limits)).await;
            {
                let mut rt = lock(&daemon.runtime);
                rt.config_loaded_at = Utc::now();
                rt.config_error = None;
            }
            // New images and bases are decided at once.
            let _ = daemon.check_tx.try_send(CheckRequest {
                references: Some(Vec::new()),
                trigger: rebased_core::Trigger::Poll,
                all: true,
            });
            info!(images, "config reloaded");
        }
        Err(e) => {
            let text = format!("{e:#}");
            error!("config reload refused, the previous config stays in force: {text}");
            lock(&daemon.runtime).config_error = Some(text);
        }
    }
    daemon.notifier.send("READY=1");
    daemon.report_status();
}
