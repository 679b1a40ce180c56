//! The chaos harness: over many iterations, a base moves and something
//! breaks while rebased reacts: the daemon is `kill -9`ed at a random
//! moment (during a build, between the version push and the floating tags,
//! during state writes), it aborts itself at a failpoint, the registry is
//! restarted mid-push, or the build engine is killed. After each iteration
//! the invariants are checked against the registry and the ledger:
//!
//! - no version tag ever points at two digests;
//! - every base change led to exactly one new version of each image, built
//!   from that base digest;
//! - floating tags end on the newest version;
//! - the ledger matches the registry;
//! - no job is lost (nothing left queued or running, every version has its
//!   job) or duplicated (no version without a base change).
//!
//! `REBASED_CHAOS_ITERATIONS` (default 4, one of each fault kind) and
//! `REBASED_CHAOS_SEED` choose the run; figures are printed at the end
//! (`cargo test -p rebased-e2e --test chaos -- --nocapture`).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rebased_e2e::{image_table, wait_for, Daemon, Setup};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(180);
const IMAGES: [&str; 2] = ["fast", "engine"];

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// SIGKILL of the daemon at a random moment.
    KillDaemon,
    /// The daemon aborts at a failpoint (after the version push, or after
    /// the first floating tag), then starts again.
    Failpoint,
    /// The registry is restarted at a random moment.
    RestartRegistry,
    /// The build engine (buildah) is killed mid-build.
    KillBuilder,
}

const FAULTS: [Fault; 4] = [
    Fault::KillDaemon,
    Fault::Failpoint,
    Fault::RestartRegistry,
    Fault::KillBuilder,
];

fn contexts(s: &Setup) -> (PathBuf, PathBuf) {
    let host = s.host();
    let fast = s.context(
        "fast",
        &format!("FROM {host}/base:latest\nCOPY hello /hello\n"),
    );
    // A RUN: built by buildah (backend auto), so there is an engine to kill.
    let engine = s.context(
        "engine",
        &format!(
            "FROM {host}/base:latest\nCOPY hello /hello\nRUN [\"/bin/busybox\", \"cp\", \"/hello\", \"/copied\"]\n"
        ),
    );
    (fast, engine)
}

/// Direct children of `pid` whose command is `name`.
fn children_named(pid: u32, name: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map(|(_, c)| c).unwrap_or_default();
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) && comm == name {
            out.push(child);
        }
    }
    out
}

/// Waits until every image is fresh at `want` versions. A daemon that is
/// gone (a failpoint abort) is started again. A build that failed because
/// of the fault backs off for a minute; when its version is not in the
/// registry and nothing is building it, a rebuild request runs it now (it
/// cannot duplicate a version: the version tag is absent).
fn settle(daemon: &mut Daemon, s: &Setup, want: usize) -> Duration {
    let started = Instant::now();
    let mut nudged: BTreeMap<String, Instant> = BTreeMap::new();
    wait_for("every image fresh at the new version", WAIT, || {
        let Some(all) = daemon.try_get("/v1/images") else {
            daemon.kill_hard();
            *daemon = s.start();
            return None;
        };
        let jobs = daemon.try_get("/v1/jobs")?;
        let mut done = true;
        for i in all.as_array()? {
            let name = i["name"].as_str()?;
            let fresh =
                i["state"] == "fresh" && i["versions"].as_array().is_some_and(|v| v.len() == want);
            if fresh {
                continue;
            }
            done = false;
            let running = jobs
                .as_array()?
                .iter()
                .any(|j| j["image"] == name && j["state"] == "running");
            let next = format!("{name}:1.0.{}", want - 1);
            let recent = nudged
                .get(name)
                .is_some_and(|t| t.elapsed() < Duration::from_secs(10));
            if i["last_error"].is_string()
                && !running
                && !recent
                && s.registry.digest(&next).is_none()
            {
                println!("  rebuild of {name} requested after: {}", i["last_error"]);
                daemon.post(&format!("/v1/images/{name}/rebuild"), None);
                nudged.insert(name.to_owned(), Instant::now());
            }
        }
        done.then_some(())
    });
    started.elapsed()
}

#[test]
fn invariants_hold_through_crashes_and_faults() {
    let iterations: usize = std::env::var("REBASED_CHAOS_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let seed: u64 = std::env::var("REBASED_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    println!("chaos: {iterations} iterations, seed {seed}");
    let mut rng = Rng(seed);

    let mut s = Setup::empty();
    let mut base_digests = vec![s.bases.push(&s.registry, "base:latest", "v0")];
    let (fast, engine) = contexts(&s);
    let host = s.host().to_owned();
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"0s\"\nstop_timeout = \"0s\"",
        &format!(
            "{}{}",
            image_table(
                "fast",
                &fast,
                &format!("{host}/fast"),
                "tags = [\"latest\"]"
            ),
            image_table(
                "engine",
                &engine,
                &format!("{host}/engine"),
                "tags = [\"latest\"]"
            ),
        ),
    );
    let mut daemon = s.start();
    settle(&mut daemon, &s, 1);

    // Every version tag ever seen, with its digest.
    let mut seen: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut counts: BTreeMap<Fault, usize> = BTreeMap::new();
    let mut recoveries = Vec::new();
    let kinds_offset = rng.below(FAULTS.len() as u64) as usize;
    for i in 1..=iterations {
        // Every kind once per round of four, in a seeded order.
        let fault = if i <= FAULTS.len() {
            FAULTS[(i - 1 + kinds_offset) % FAULTS.len()]
        } else {
            FAULTS[rng.below(FAULTS.len() as u64) as usize]
        };
        *counts.entry(fault).or_default() += 1;
        let delay = Duration::from_millis(rng.below(3000));
        println!("iteration {i}: {fault:?} after {delay:?}");
        match fault {
            Fault::Failpoint => {
                let point = if rng.below(2) == 0 {
                    "after-version-push"
                } else {
                    "after-first-floating-tag"
                };
                daemon.stop();
                daemon = s.start_with_env(&[("REBASED_FAILPOINT", point)]);
                base_digests.push(s.bases.push(&s.registry, "base:latest", &format!("v{i}")));
            }
            Fault::KillDaemon => {
                base_digests.push(s.bases.push(&s.registry, "base:latest", &format!("v{i}")));
                std::thread::sleep(delay);
                daemon.kill_hard();
                daemon = s.start();
            }
            Fault::RestartRegistry => {
                base_digests.push(s.bases.push(&s.registry, "base:latest", &format!("v{i}")));
                std::thread::sleep(delay);
                s.registry.restart();
            }
            Fault::KillBuilder => {
                base_digests.push(s.bases.push(&s.registry, "base:latest", &format!("v{i}")));
                let pid = daemon.pid();
                let killed = wait_for("buildah to run", WAIT, || {
                    let found = children_named(pid, "buildah");
                    for p in &found {
                        let _ = std::process::Command::new("kill")
                            .args(["-s", "KILL", &p.to_string()])
                            .status();
                    }
                    (!found.is_empty()).then_some(found.len())
                });
                println!("  killed {killed} buildah process(es)");
            }
        }
        let took = settle(&mut daemon, &s, i + 1);
        recoveries.push(took);

        // The invariants.
        let newest = format!("1.0.{i}");
        for name in IMAGES {
            let versions = s.registry.versions(name);
            for (tag, digest) in &versions {
                let key = (name.to_owned(), tag.clone());
                if let Some(before) = seen.insert(key, digest.clone()) {
                    assert_eq!(
                        &before, digest,
                        "{name}:{tag} moved (iteration {i}, {fault:?})"
                    );
                }
            }
            let expected: Vec<String> = (0..=i).map(|n| format!("1.0.{n}")).collect();
            let mut got: Vec<String> = versions.keys().cloned().collect();
            got.sort_by_key(|v| v.rsplit('.').next().and_then(|p| p.parse::<u32>().ok()));
            assert_eq!(got, expected, "{name}: one version per base change");
            assert_eq!(
                s.registry.digest(&format!("{name}:latest")),
                versions.get(&newest).cloned(),
                "{name}: latest on the newest version"
            );
            assert_eq!(
                daemon.ledger(name),
                versions,
                "{name}: the ledger matches the registry"
            );
            let image = daemon.image(name);
            // Each version was built from its base change.
            for (n, base) in base_digests.iter().enumerate() {
                let v = image["versions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|v| v["version"] == format!("1.0.{n}"))
                    .unwrap();
                let bases: Vec<&Value> = v["bases"].as_object().unwrap().values().collect();
                assert_eq!(bases, [&Value::String(base.clone())], "{name} 1.0.{n}");
            }
        }
        let jobs = daemon.get("/v1/jobs");
        for j in jobs.as_array().unwrap() {
            assert!(
                j["state"] != "queued" && j["state"] != "running",
                "a job left behind: {j}"
            );
        }
    }
    daemon.stop();
    let total: Duration = recoveries.iter().sum();
    let worst = recoveries.iter().max().copied().unwrap_or_default();
    println!(
        "chaos figures: {iterations} iterations, faults {counts:?}, {} versions checked, recovery to fresh: mean {:?}, worst {worst:?}",
        seen.len(),
        total / iterations.max(1) as u32,
    );
}

/// The source trigger under `kill -9`: commits are pushed to a git
/// context and the daemon is killed while the build they cause runs (or
/// at a random moment); after each restart exactly one new minor version
/// exists per commit, annotated with that commit, no tag ever moved, the
/// ledger matches the registry and no job is left behind.
#[test]
fn kill_9_during_a_source_triggered_build_loses_and_duplicates_no_version() {
    let iterations: usize = std::env::var("REBASED_CHAOS_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut rng = Rng(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1);
    let s = Setup::new();
    let host = s.host().to_owned();
    let repo = rebased_e2e::GitRepo::new(s.dir(), "src");
    // A RUN: built by buildah, so the build lasts long enough to be hit.
    let df = format!(
        "FROM {host}/base:latest\nCOPY hello /hello\nRUN [\"/bin/busybox\", \"cp\", \"/hello\", \"/copied\"]\n"
    );
    let mut commits = vec![repo.commit(&[("Dockerfile", &df), ("hello", "0\n")])];
    let url = format!("{}#main", repo.file_url());
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"0s\"\nstop_timeout = \"0s\"",
        &image_table(
            "src",
            std::path::Path::new(&url),
            &format!("{host}/src"),
            "tags = [\"latest\"]",
        ),
    );
    let mut daemon = s.start();
    daemon.wait_version("src", "1.0.0", WAIT);
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for i in 1..=iterations {
        commits.push(repo.commit(&[("hello", &format!("{i}\n"))]));
        if i == 1 {
            // Killed while the source-triggered build runs.
            wait_for("the source-triggered build to run", WAIT, || {
                let jobs = daemon.try_get("/v1/jobs")?;
                jobs.as_array()?
                    .iter()
                    .any(|j| j["image"] == "src" && j["state"] == "running")
                    .then_some(())
            });
        } else {
            std::thread::sleep(Duration::from_millis(rng.below(2500)));
        }
        println!("iteration {i}: kill -9");
        daemon.kill_hard();
        daemon = s.start();
        let want = format!("1.{i}.0");
        let mut nudged: Option<Instant> = None;
        wait_for("the version of the new commit", WAIT, || {
            let image = daemon.try_get("/v1/images/src")?;
            if image["state"] == "fresh" && image["current_version"] == want.as_str() {
                return Some(());
            }
            let running = daemon.try_get("/v1/jobs")?.as_array()?.iter().any(|j| {
                j["image"] == "src" && (j["state"] == "running" || j["state"] == "queued")
            });
            let recent = nudged.is_some_and(|t| t.elapsed() < Duration::from_secs(10));
            if image["last_error"].is_string()
                && !running
                && !recent
                && s.registry.digest(&format!("src:{want}")).is_none()
            {
                println!("  rebuild requested after: {}", image["last_error"]);
                daemon.post("/v1/images/src/rebuild", None);
                nudged = Some(Instant::now());
            }
            None
        });
        let versions = s.registry.versions("src");
        let expected: Vec<String> = (0..=i).map(|n| format!("1.{n}.0")).collect();
        assert_eq!(
            versions.keys().cloned().collect::<Vec<_>>(),
            expected,
            "one version per commit, none lost, none twice"
        );
        for (n, commit) in commits.iter().enumerate() {
            let tag = format!("src:1.{n}.0");
            let revision = s.registry.raw_manifest(&tag)["annotations"]
                ["org.opencontainers.image.revision"]
                .clone();
            assert_eq!(revision, Value::String(commit.clone()), "{tag}");
        }
        for (tag, digest) in &versions {
            if let Some(before) = seen.insert(tag.clone(), digest.clone()) {
                assert_eq!(&before, digest, "src:{tag} moved");
            }
        }
        assert_eq!(
            daemon.ledger("src"),
            versions,
            "the ledger matches the registry"
        );
        assert_eq!(
            s.registry.digest("src:latest"),
            versions.get(&want).cloned(),
            "latest on the newest version"
        );
        for j in daemon.get("/v1/jobs").as_array().unwrap() {
            assert!(
                j["state"] != "queued" && j["state"] != "running",
                "a job left behind: {j}"
            );
        }
    }
    daemon.stop();
}
