//! Start-up: how long a restart takes to its first finished round with the
//! ledger already in the store (`startup`), and whether a first start
//! against a registry that never answers keeps the systemd watchdog fed
//! and can be stopped (`watchdog`).

use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::Utc;
use serde_json::{json, Value};

use crate::fleet::{self, YEARLY};
use crate::harness::{free_port, image_table, log_lines, write_config, Daemon, LogLine, Registry};
use crate::scenarios::figure;
use crate::Sizes;

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn count(lines: &[LogLine], message: &str) -> usize {
    lines.iter().filter(|l| l.message == message).count()
}

/// Seconds from `t0` to the first log line with `message`.
fn at(lines: &[LogLine], message: &str, t0: chrono::DateTime<Utc>) -> Option<f64> {
    lines
        .iter()
        .find(|l| l.message == message)
        .map(|l| round2((l.at - t0).num_microseconds().unwrap_or(0) as f64 / 1e6))
}

/// Starts the daemon and waits for its first finished round; returns it,
/// the wall time, and when it was spawned.
fn start_to_round(
    f: &fleet::Fleet,
    log: &Path,
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<(Daemon, Duration, chrono::DateTime<Utc>)> {
    let spawned = Utc::now();
    let t0 = Instant::now();
    let mut daemon = Daemon::start_with_env(&f.config, &f.listen, log, env)?;
    daemon.wait_log("poll round finished", timeout)?;
    Ok((daemon, t0.elapsed(), spawned))
}

/// The restart scenario: a fleet started once (importing every ledger),
/// stopped, then started again `restarts` times with the ledger in the
/// store, each timed from spawn to the first `poll round finished`.
pub fn startup(sizes: &Sizes) -> Result<Value> {
    let (images, bases) = sizes.startup;
    println!("\n== start-up: {images} images over {bases} bases, ledger already in the store");
    let registry = Registry::start(None)?;
    let work = crate::harness::tempdir()?;
    let f = fleet::make(&registry, work.path(), images, bases, YEARLY)?;
    let long = Duration::from_secs(1800);
    let first_log = work.path().join("daemon-first.log");
    let (mut daemon, first, _) = start_to_round(&f, &first_log, &[], long)?;
    daemon.stop()?;
    let first_lines = log_lines(&first_log)?;
    let imported_first = count(&first_lines, "ledger read back from the registry");
    let mut runs = Vec::new();
    for i in 0..sizes.restarts {
        let log = work.path().join(format!("daemon-restart-{i}.log"));
        let (mut daemon, wall, spawned) = start_to_round(&f, &log, &[], long)?;
        daemon.stop()?;
        let lines = log_lines(&log)?;
        let round_ms = lines
            .iter()
            .find(|l| l.message == "poll round finished")
            .and_then(|l| l.fields.get("elapsed_ms").and_then(Value::as_f64))
            .map(round2);
        runs.push(json!({
            "wall_s": round2(wall.as_secs_f64()),
            // Spawn -> the daemon's first line (the config read and its
            // Dockerfiles parsed for the graph).
            "to_starting_s": at(&lines, "rebased starting", spawned),
            "first_round_ms": round_ms,
            "imported": count(&lines, "ledger read back from the registry"),
        }));
    }
    let mut walls: Vec<f64> = runs.iter().filter_map(|r| r["wall_s"].as_f64()).collect();
    walls.sort_by(f64::total_cmp);
    let median = walls.get(walls.len() / 2).copied().unwrap_or(f64::NAN);
    figure(
        "first start to first round done (s)",
        round2(first.as_secs_f64()),
        "spawn -> first 'poll round finished', importing every ledger",
    );
    figure(
        "restart to first round done, median (s)",
        median,
        "spawn -> first 'poll round finished', ledger in the store",
    );
    figure(
        "restart to first round done, max (s)",
        walls.last().copied().unwrap_or(f64::NAN),
        "same, slowest restart",
    );
    Ok(json!({
        "images": images,
        "bases": bases,
        "first_start_s": round2(first.as_secs_f64()),
        "imported_first_start": imported_first,
        "restarts": runs,
        "restart_s_median": median,
        "restart_s_max": walls.last().copied(),
    }))
}

/// Datagrams received on a bound `NOTIFY_SOCKET`, with when.
struct NotifySocket {
    received: Arc<Mutex<Vec<(Instant, String)>>>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NotifySocket {
    fn bind(path: &Path) -> Result<Self> {
        let sock =
            UnixDatagram::bind(path).with_context(|| format!("binding {}", path.display()))?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let (r, d) = (Arc::clone(&received), Arc::clone(&done));
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !d.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if let Ok(mut v) = r.lock() {
                        v.push((Instant::now(), text));
                    }
                }
            }
        });
        Ok(Self {
            received,
            done,
            thread: Some(thread),
        })
    }

    fn messages(&self) -> Vec<(Instant, String)> {
        self.received.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The largest gap between `WATCHDOG=1` pings from `READY=1` to `until`
/// (the first gap counted from `READY=1`, the last one to `until`), and
/// how many pings came.
fn watchdog_gaps(messages: &[(Instant, String)], until: Instant) -> (Option<Duration>, usize) {
    let Some(ready) = messages
        .iter()
        .find(|(_, m)| m == "READY=1")
        .map(|(t, _)| *t)
    else {
        return (None, 0);
    };
    let pings: Vec<Instant> = messages
        .iter()
        .filter(|(t, m)| m == "WATCHDOG=1" && *t >= ready)
        .map(|(t, _)| *t)
        .collect();
    let mut last = ready;
    let mut max = Duration::ZERO;
    for t in pings.iter().copied().chain(std::iter::once(until)) {
        max = max.max(t.saturating_duration_since(last));
        last = t;
    }
    (Some(max), pings.len())
}

/// A TCP port that accepts connections and never answers: a registry that
/// is "up" but hangs every request until the client's timeout.
fn blackhole() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    Ok(port)
}

/// The first-start scenario against a registry that never answers: every
/// image's repository is on it, so the start-up import has nothing but
/// hanging requests. `NOTIFY_SOCKET` and `WATCHDOG_USEC` are set as systemd
/// sets them. Twice: stopped by SIGTERM in the middle of the import, and
/// left to reach its first round.
pub fn watchdog(sizes: &Sizes) -> Result<Value> {
    let images = sizes.watchdog_images;
    let usec = sizes.watchdog_usec;
    let watchdog_sec = Duration::from_micros(usec);
    println!(
        "\n== first start against a registry that never answers: {images} images, WATCHDOG_USEC={usec}"
    );
    let registry = Registry::start(None)?;
    let work = crate::harness::tempdir()?;
    let base = registry.push_image("base", "latest", &[("marker", b"base\n")])?;
    let _ = base;
    let hole = format!("127.0.0.1:{}", blackhole()?);
    let mut tables = format!("\n[registries.\"{hole}\"]\ninsecure = true\n");
    for i in 0..images {
        let ctx = work.path().join("ctx").join(format!("app-{i}"));
        std::fs::create_dir_all(&ctx)?;
        std::fs::write(
            ctx.join("Dockerfile"),
            format!("FROM {}/base:latest\nCMD [\"/bin/sh\"]\n", registry.host),
        )?;
        tables.push_str(&image_table(
            &format!("app-{i}"),
            &ctx,
            &format!("{hole}/app-{i}"),
        ));
    }
    let listen = format!("127.0.0.1:{}", free_port()?);
    let config = write_config(
        work.path(),
        &listen,
        &registry.host,
        &format!("poll = \"{YEARLY}\"\nsettle = \"0s\"\nstop_timeout = \"1s\""),
        &tables,
    )?;
    let usec_text = usec.to_string();
    let mut runs = serde_json::Map::new();
    for (run, wait_round) in [("stopped_during_import", false), ("to_first_round", true)] {
        // A fresh state each time: a first start.
        let _ = std::fs::remove_dir_all(work.path().join("state"));
        let sock_path = work.path().join(format!("notify-{run}.sock"));
        let notify = NotifySocket::bind(&sock_path)?;
        let sock_text = sock_path.display().to_string();
        let env = [
            ("NOTIFY_SOCKET", sock_text.as_str()),
            ("WATCHDOG_USEC", usec_text.as_str()),
        ];
        let log = work.path().join(format!("daemon-{run}.log"));
        let t0 = Instant::now();
        let mut daemon = Daemon::start_with_env(&config, &listen, &log, &env)?;
        let mut first_round = None;
        if wait_round {
            daemon.wait_log("poll round finished", Duration::from_secs(1800))?;
            first_round = Some(t0.elapsed());
            // A few pings more after the round.
            std::thread::sleep(watchdog_sec * 2);
        } else {
            // The API is up: the import comes next.
            daemon.wait_log("API listening", Duration::from_secs(60))?;
            std::thread::sleep(sizes.watchdog_hold);
        }
        let (stop, status) = daemon.stop_timed()?;
        let ended = Instant::now();
        let (gap, pings) = watchdog_gaps(&notify.messages(), ended - stop);
        let Some(gap) = gap else {
            bail!("no READY=1 on NOTIFY_SOCKET:\n{}", daemon.log_tail(20));
        };
        let lines = log_lines(&log)?;
        let entry = json!({
            "first_round_s": first_round.map(|d| round2(d.as_secs_f64())),
            "watchdog_max_gap_s": round2(gap.as_secs_f64()),
            "watchdog_pings": pings,
            "stop_s": round2(stop.as_secs_f64()),
            "exit_success": status.is_some_and(|s| s.success()),
            "stopped_by_sigterm": status.is_some(),
            "import_abandoned": count(&lines, "stopping: start-up import abandoned") > 0,
            "stall_warnings": count(&lines, "poll loop stalled: not feeding the watchdog"),
        });
        figure(
            &format!("{run}: largest gap between WATCHDOG=1 (s)"),
            entry["watchdog_max_gap_s"].clone(),
            "READY=1 -> SIGTERM, datagrams on the harness's NOTIFY_SOCKET",
        );
        if let Some(d) = first_round {
            figure(
                &format!("{run}: spawn to first round done (s)"),
                round2(d.as_secs_f64()),
                "spawn -> first 'poll round finished'",
            );
        }
        figure(
            &format!("{run}: SIGTERM to exit (s)"),
            entry["stop_s"].clone(),
            "kill -TERM -> the process gone",
        );
        runs.insert(run.to_owned(), entry);
    }
    Ok(json!({
        "images": images,
        "watchdog_usec": usec,
        "runs": runs,
    }))
}
