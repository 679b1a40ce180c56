//! `rebased-bench`: the cost of watching and rebuilding, measured against
//! the simplest peer (issue 9). It starts Debian's real `docker-registry`
//! and the real `rebased` release binary (`target/release/rebased`, or
//! `$REBASED_BIN`) and runs six scenarios:
//!
//! 1. `fanin`: fan-in polling over fleets of images sharing bases;
//! 2. `peer`: the same images checked by a shell loop of `skopeo inspect`;
//! 3. `webhook`: the registry's notification -> the job running;
//! 4. `rebuild`: a rebuild after a base update, native vs buildah;
//! 5. `api`: `GET /v1/status` and `/v1/images` under `wrk`;
//! 6. `idle`: CPU and RSS of a daemon with nothing changing;
//! 7. `startup`: a restart to its first finished round, ledger in the store;
//! 8. `watchdog`: a first start against a registry that never answers,
//!    with systemd's `NOTIFY_SOCKET` and `WATCHDOG_USEC`;
//! 9. `notify`: events through a `webhook` notifier to a loopback receiver.
//! 10. `engines`: one fleet rebuilt by one, two and three remote engines
//!     (Podman's Docker-compatible service on this machine). Not in the
//!     default set: it needs podman and runc; ask for it with `--only`.
//! 11. `dashboard`: at 10,000 images the paged summary `GET /v1/images`
//!     under `wrk`, and the fleet page's first rows in headless Chromium.
//!
//! Each figure is printed with its method; `--json FILE` writes them all.

mod dashboard;
mod engines;
mod fleet;
mod harness;
mod notify;
mod scenarios;
mod startup;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;
use serde_json::{json, Value};

/// Every scenario, in the order they run.
const SCENARIOS: &[&str] = &[
    "fanin",
    "peer",
    "webhook",
    "rebuild",
    "api",
    "idle",
    "startup",
    "watchdog",
    "notify",
    "dashboard",
    "engines",
];

/// Scenarios run only when named in `--only`.
const OPT_IN: &[&str] = &["engines"];

/// The benchmark harness of rebased.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// CI sizes: every scenario in seconds, not minutes.
    #[arg(long)]
    quick: bool,
    /// Scenarios to run, comma-separated (fanin, peer, webhook, rebuild,
    /// api, idle, startup, watchdog, notify); all by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Write every figure as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The peer loop runs over at most this many images per fleet and is
    /// scaled to the fleet (default: 1000; --quick: every image).
    #[arg(long)]
    peer_sample: Option<usize>,
    /// Fleets as IMAGESxBASES, comma-separated (default: 1000x10,
    /// 1000x100, 10000x10, 10000x100; --quick: 100x5).
    #[arg(long, value_delimiter = ',')]
    fleets: Vec<String>,
    /// Poll cycles measured per fleet (default 5; --quick: 2).
    #[arg(long)]
    cycles: Option<usize>,
    /// Webhook pushes (default 200; --quick: 5).
    #[arg(long)]
    pushes: Option<usize>,
    /// Idle window in seconds (default 60; --quick: 3).
    #[arg(long)]
    idle_seconds: Option<u64>,
    /// The restart scenario's fleet, IMAGESxBASES (default 10000x100;
    /// --quick: 100x5).
    #[arg(long)]
    startup_fleet: Option<String>,
    /// Images of the watchdog scenario (default 1000; --quick: 20).
    #[arg(long)]
    watchdog_images: Option<usize>,
    /// Events of the notify scenario (default 1000; --quick: 50).
    #[arg(long)]
    notify_events: Option<usize>,
}

/// The sizes of one run.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// (images, bases) of each fan-in fleet.
    pub fleets: Vec<(usize, usize)>,
    /// Poll cycles measured per fleet.
    pub cycles: usize,
    /// Images of the peer loop per fleet, at most.
    pub peer_sample: usize,
    /// Webhook pushes.
    pub pushes: usize,
    /// Rebuild context: (files, bytes).
    pub payload: (usize, usize),
    /// Rebuilds per backend.
    pub rebuilds: usize,
    /// Images for the API scenario.
    pub api_images: usize,
    /// wrk duration per path.
    pub wrk_seconds: u64,
    /// Images of the dashboard scenario.
    pub dashboard_images: usize,
    /// Page loads of the dashboard scenario's first-rows measure.
    pub first_rows_runs: usize,
    /// wrk connections.
    pub wrk_connections: u32,
    /// Images for the idle scenario.
    pub idle_images: usize,
    /// The idle window.
    pub idle_seconds: u64,
    /// (images, bases) of the restart scenario.
    pub startup: (usize, usize),
    /// Restarts timed.
    pub restarts: usize,
    /// Images of the unreachable-registry scenario.
    pub watchdog_images: usize,
    /// `WATCHDOG_USEC` given to the daemon.
    pub watchdog_usec: u64,
    /// Images of the remote engines scenario.
    pub engine_images: usize,
    /// How long into the import the SIGTERM comes.
    pub watchdog_hold: std::time::Duration,
    /// Events through the webhook notifier.
    pub notify_events: usize,
}

impl Sizes {
    fn full() -> Self {
        Self {
            fleets: vec![(1000, 10), (1000, 100), (10_000, 10), (10_000, 100)],
            cycles: 5,
            peer_sample: 1000,
            pushes: 200,
            payload: (2000, 50 << 20),
            rebuilds: 3,
            api_images: 1000,
            wrk_seconds: 10,
            dashboard_images: 10_000,
            first_rows_runs: 5,
            wrk_connections: 32,
            idle_images: 1000,
            idle_seconds: 60,
            startup: (10_000, 100),
            restarts: 3,
            watchdog_images: 1000,
            engine_images: 12,
            watchdog_usec: 2_000_000,
            watchdog_hold: std::time::Duration::from_secs(10),
            notify_events: 1000,
        }
    }

    fn quick() -> Self {
        Self {
            fleets: vec![(100, 5)],
            cycles: 2,
            peer_sample: usize::MAX,
            pushes: 5,
            payload: (50, 2 << 20),
            rebuilds: 1,
            api_images: 100,
            wrk_seconds: 1,
            dashboard_images: 100,
            first_rows_runs: 1,
            wrk_connections: 8,
            idle_images: 100,
            idle_seconds: 3,
            startup: (100, 5),
            restarts: 1,
            watchdog_images: 20,
            engine_images: 4,
            watchdog_usec: 4_000_000,
            watchdog_hold: std::time::Duration::from_secs(5),
            notify_events: 50,
        }
    }
}

fn parse_fleet(s: &str) -> Result<(usize, usize)> {
    let Some((i, b)) = s.split_once('x') else {
        bail!("a fleet is IMAGESxBASES, not {s:?}");
    };
    let (i, b): (usize, usize) = (i.trim().parse()?, b.trim().parse()?);
    if i == 0 || b == 0 {
        bail!("a fleet needs images and bases: {s:?}");
    }
    Ok((i, b))
}

fn run(args: Args) -> Result<Value> {
    let mut sizes = if args.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    if !args.fleets.is_empty() {
        sizes.fleets = args
            .fleets
            .iter()
            .map(|f| parse_fleet(f))
            .collect::<Result<_>>()?;
    }
    if let Some(n) = args.peer_sample {
        sizes.peer_sample = n;
    }
    if let Some(n) = args.cycles {
        sizes.cycles = n.max(1);
    }
    if let Some(n) = args.pushes {
        sizes.pushes = n.max(1);
    }
    if let Some(n) = args.idle_seconds {
        sizes.idle_seconds = n.max(1);
    }
    if let Some(f) = &args.startup_fleet {
        sizes.startup = parse_fleet(f)?;
    }
    if let Some(n) = args.watchdog_images {
        sizes.watchdog_images = n.max(1);
    }
    if let Some(n) = args.notify_events {
        sizes.notify_events = n.max(1);
    }
    let selected: BTreeSet<String> = if args.only.is_empty() {
        SCENARIOS
            .iter()
            .filter(|s| !OPT_IN.contains(s))
            .map(|s| (*s).to_owned())
            .collect()
    } else {
        args.only.iter().map(|s| s.trim().to_owned()).collect()
    };
    if let Some(bad) = selected.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
        bail!("unknown scenario {bad:?}; known: {}", SCENARIOS.join(", "));
    }
    let bin = harness::rebased_bin()?;
    let machine = harness::machine();
    println!("rebased-bench: {}", bin.display());
    println!(
        "machine: {} cores, {} GiB, {}, load average {}",
        machine["nproc"], machine["memory_gib"], machine["cpu"], machine["load_average_at_start"]
    );
    let mut results = serde_json::Map::new();
    results.insert("machine".to_owned(), machine);
    results.insert("quick".to_owned(), json!(args.quick));
    let has = |s: &str| selected.contains(s);
    if has("fanin") || has("peer") {
        let v = scenarios::fan_in(&sizes, has("fanin"), has("peer"))?;
        results.insert("fanin".to_owned(), v);
    }
    if has("webhook") {
        results.insert("webhook".to_owned(), scenarios::webhook(&sizes)?);
    }
    if has("rebuild") {
        results.insert("rebuild".to_owned(), scenarios::rebuild(&sizes)?);
    }
    if has("api") {
        results.insert("api".to_owned(), scenarios::api(&sizes)?);
    }
    if has("idle") {
        results.insert("idle".to_owned(), scenarios::idle(&sizes)?);
    }
    if has("startup") {
        results.insert("startup".to_owned(), startup::startup(&sizes)?);
    }
    if has("watchdog") {
        results.insert("watchdog".to_owned(), startup::watchdog(&sizes)?);
    }
    if has("notify") {
        results.insert("notify".to_owned(), notify::notify(&sizes)?);
    }
    if has("engines") {
        results.insert("engines".to_owned(), engines::engines(&sizes)?);
    }
    if has("dashboard") {
        results.insert("dashboard".to_owned(), dashboard::dashboard(&sizes)?);
    }
    results.insert(
        "load_average_at_end".to_owned(),
        json!(harness::load_average()),
    );
    Ok(Value::Object(results))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let json_path = args.json.clone();
    match run(args) {
        Ok(results) => {
            if let Some(path) = json_path {
                let text = serde_json::to_string_pretty(&results).unwrap_or_default();
                if let Err(e) = std::fs::write(&path, text) {
                    eprintln!("error: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
