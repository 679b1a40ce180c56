//! Remote build engines: three build hosts as network namespaces made
//! here (`ip netns`, a veth pair each, on a bridge with its own subnet),
//! each running Podman's Docker-compatible service (`podman system service
//! tcp:ADDR:PORT`, vfs storage, a `containers.conf` naming runc and
//! cgroupfs with cgroups disabled, as this sandbox needs). The registry
//! listens on the bridge's address, which rebased and the engines reach,
//! in plain http: it is `insecure` in rebased's config only, and the
//! engines pull and push there because rebased asks with `tlsVerify=false`.
//!
//! The services are started with `nsenter --net=` rather than `ip netns
//! exec`: the latter mounts a fresh `/sys` for the namespace, without the
//! cgroup mount runc looks for.
//!
//! Needs root (network namespaces); skips with a message otherwise.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rebased_e2e::{free_port, image_table, wait_for, Daemon, Registry, Setup};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(240);
const IMAGES: usize = 12;

/// One build host: a network namespace and its engine.
struct Host {
    name: String,
    netns: String,
    /// The host side of its veth pair (on the bridge).
    veth: String,
    addr: String,
    port: u16,
    dir: PathBuf,
    service: Option<Child>,
}

/// The build hosts, their bridge, and what they run; all removed on drop.
struct Hosts {
    bridge: String,
    gateway: String,
    hosts: Vec<Host>,
    _dir: tempfile::TempDir,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Hosts {
    /// `n` hosts on a bridge of their own, or why they cannot be made here.
    fn make(n: usize) -> Result<Hosts, String> {
        let id = std::process::id();
        // A subnet of this process's own: tests may run side by side.
        let subnet = format!("10.{}.{}", 100 + id % 100, (id / 100) % 250);
        let tag = format!("rb{}", id % 10_000_000);
        let mut hosts = Hosts {
            bridge: format!("{tag}b"),
            gateway: format!("{subnet}.1"),
            hosts: Vec::new(),
            _dir: tempfile::tempdir().unwrap(),
        };
        ip(&["link", "add", &hosts.bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", hosts.gateway),
            "dev",
            &hosts.bridge,
        ])?;
        ip(&["link", "set", &hosts.bridge, "up"])?;
        for i in 1..=n {
            let host = Host {
                name: format!("b{i}"),
                netns: format!("rebased-{id}-{i}"),
                veth: format!("{tag}h{i}"),
                addr: format!("{subnet}.{}", 1 + i),
                port: 2375,
                dir: hosts._dir.path().join(format!("b{i}")),
                service: None,
            };
            fs::create_dir_all(&host.dir).unwrap();
            ip(&["netns", "add", &host.netns])?;
            let ns = |args: &[&str]| {
                let mut all = vec!["-n", host.netns.as_str()];
                all.extend_from_slice(args);
                ip(&all)
            };
            ip(&[
                "link",
                "add",
                &host.veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &host.netns,
            ])?;
            ip(&["link", "set", &host.veth, "master", &hosts.bridge, "up"])?;
            ns(&["addr", "add", &format!("{}/24", host.addr), "dev", "eth0"])?;
            ns(&["link", "set", "eth0", "up"])?;
            ns(&["link", "set", "lo", "up"])?;
            hosts.hosts.push(host);
        }
        Ok(hosts)
    }

    /// Starts host `i`'s `podman system service` (a registries.conf that
    /// marks nothing insecure) and waits for its `/_ping`.
    fn start(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        let conf = h.dir.join("containers.conf");
        fs::write(
            &conf,
            "[containers]\ncgroups = \"disabled\"\nnetns = \"host\"\n\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )
        .unwrap();
        let registries = h.dir.join("registries.conf");
        // Nothing insecure of its own: the registry is plain http, and
        // only rebased's `tlsVerify=false` lets the engine pull and push.
        fs::write(&registries, "unqualified-search-registries = []\n").unwrap();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(h.dir.join("service.log"))
            .unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", h.netns))
            .arg("podman")
            .arg("--root")
            .arg(h.dir.join("root"))
            .arg("--runroot")
            .arg(h.dir.join("runroot"))
            .args(["--storage-driver", "vfs", "system", "service", "--time=0"])
            .arg(format!("tcp:{}:{}", h.addr, h.port))
            .env("CONTAINERS_CONF", &conf)
            .env("CONTAINERS_REGISTRIES_CONF", &registries)
            .env("TMPDIR", &h.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        h.service = Some(child);
        let url = format!("http://{}:{}/_ping", h.addr, h.port);
        wait_for(
            &format!("engine {} to answer", h.name),
            Duration::from_secs(30),
            || {
                reqwest::blocking::get(&url)
                    .ok()
                    .filter(|r| r.status().is_success())
            },
        );
    }

    /// Kills host `i`'s service and everything it started (its process
    /// group), as a host that stops would.
    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.hosts[i].service.take() {
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Cuts host `i`'s link (`up = false`) or restores it.
    fn link(&self, i: usize, up: bool) {
        ip(&[
            "link",
            "set",
            &self.hosts[i].veth,
            if up { "up" } else { "down" },
        ])
        .unwrap();
    }

    fn url(&self, i: usize) -> String {
        format!("tcp://{}:{}", self.hosts[i].addr, self.hosts[i].port)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for i in 0..self.hosts.len() {
            self.kill(i);
        }
        for h in &self.hosts {
            let _ = ip(&["link", "del", &h.veth]);
            let _ = ip(&["netns", "del", &h.netns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// The `/v1/engines` entry of `name`.
fn engine(daemon: &Daemon, name: &str) -> Value {
    daemon
        .get("/v1/engines")
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no engine {name}"))
}

/// The state of engine `name`, if listed.
fn engine_state(daemon: &Daemon, name: &str) -> Option<String> {
    daemon
        .get("/v1/engines")
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["state"].as_str().map(str::to_owned))
}

/// Which engine each job of `version` ran on (from the job logs' `#
/// engine NAME` lines; a re-run names both), by image.
fn engines_of(daemon: &Daemon, version: &str) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for job in daemon.get("/v1/jobs").as_array().unwrap() {
        if job["published"] != version {
            continue;
        }
        let id = job["id"].as_u64().unwrap();
        let log = daemon.get_text(&format!("/v1/jobs/{id}/log"));
        let names: Vec<String> = log
            .lines()
            .filter_map(|l| l.strip_prefix("# engine "))
            .map(|rest| rest.split_whitespace().next().unwrap_or("").to_owned())
            .collect();
        out.insert(job["image"].as_str().unwrap().to_owned(), names);
    }
    out
}

/// How many times the registry was sent `repo`'s manifest under `tag`.
fn manifest_puts(registry: &Registry, repo: &str, tag: &str) -> usize {
    let needle = format!("\"PUT /v2/{repo}/manifests/{tag} ");
    registry.log_text().matches(&needle).count()
}

/// Every image has exactly the versions `want`, each what the registry
/// holds, pushed once, labelled with its version and bases.
fn check_versions(daemon: &Daemon, registry: &Registry, want: &[&str]) {
    for i in 0..IMAGES {
        let name = format!("app{i}");
        let ledger = daemon.ledger(&name);
        let versions: Vec<&str> = ledger.keys().map(String::as_str).collect();
        assert_eq!(versions, want, "{name}: exactly one version per update");
        let last = want.last().unwrap();
        let pushed = registry.digest(&format!("{name}:{last}")).expect("pushed");
        assert_eq!(
            ledger[*last], pushed,
            "{name} {last}: recorded what was pushed"
        );
        for v in want {
            assert_eq!(
                manifest_puts(registry, &name, v),
                1,
                "{name}:{v} pushed once"
            );
        }
        let labels = &registry.inspect(&format!("{name}:{last}"))["Labels"];
        assert_eq!(labels["org.opencontainers.image.version"], *last, "{name}");
        assert!(
            labels["io.rebased.bases"]
                .as_str()
                .is_some_and(|b| b.contains("base")),
            "{name}: the provenance is on the image: {labels}"
        );
        let mut versions: Vec<String> = registry
            .tags(&name)
            .into_iter()
            .filter(|t| t.matches('.').count() == 2)
            .collect();
        versions.sort();
        assert_eq!(versions, want, "{name}: no other version tag");
        assert_eq!(
            registry.digest(&format!("{name}:latest")).as_deref(),
            Some(pushed.as_str()),
            "{name}: latest moved to {last}"
        );
    }
}

#[test]
fn builds_spread_over_three_engines_and_survive_losing_two() {
    // Root and iproute2 (scripts/test.sh installs it; CI runs as root):
    // a machine that cannot make the namespaces fails the test.
    let mut hosts = Hosts::make(3).unwrap_or_else(|e| {
        panic!("network namespaces cannot be made here (root and iproute2 needed): {e}")
    });
    let registry = Registry::start_on(&hosts.gateway);
    let s = Setup::with(registry, format!("127.0.0.1:{}", free_port()));
    let registry = &s.registry;
    s.bases.push(registry, "base:latest", "v1");
    for i in 0..3 {
        hosts.start(i);
    }
    let urls: Vec<String> = (0..3).map(|i| hosts.url(i)).collect();
    let engines = |n: usize| {
        let mut t =
            String::from("[builder]\nbackend = \"remote\"\nmax_attempts = 1\ntimeout = \"120s\"\n");
        for (i, url) in urls.iter().take(n).enumerate() {
            t.push_str(&format!(
                "\n[[builder.engine]]\nname = \"b{}\"\nurl = \"{url}\"\ninsecure = true\nmax_builds = 2\n",
                i + 1
            ));
        }
        t
    };
    let mut images = String::new();
    for i in 0..IMAGES {
        let name = format!("app{i}");
        let ctx = s.context(
            &name,
            &format!(
                "FROM {}/base:latest\nCOPY hello /hello\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"cp /hello /copied && sleep 2\"]\n",
                registry.host
            ),
        );
        images.push_str(&image_table(
            &name,
            &ctx,
            &format!("{}/{name}", registry.host),
            "",
        ));
    }
    let daemon_toml = "poll = \"*/1 * * * * *\"\nsettle = \"1s\"\nmax_concurrent_builds = 3";
    s.write_config(daemon_toml, &format!("{}{images}", engines(3)));
    let mut daemon = s.start();
    for i in 0..IMAGES {
        daemon.wait_version_never_failing(&format!("app{i}"), "1.0.0", WAIT);
    }

    // A base update over the 12: spread over the three engines.
    s.bases.push(registry, "base:latest", "v2");
    for i in 0..IMAGES {
        daemon.wait_version_never_failing(&format!("app{i}"), "1.0.1", WAIT);
    }
    check_versions(&daemon, registry, &["1.0.0", "1.0.1"]);
    let ran = engines_of(&daemon, "1.0.1");
    assert_eq!(ran.len(), IMAGES, "{ran:?}");
    let used: BTreeSet<&String> = ran.values().flatten().collect();
    assert_eq!(used.len(), 3, "every engine built some: {ran:?}");
    for name in ["b1", "b2", "b3"] {
        let e = engine(&daemon, name);
        assert_eq!(e["state"], "up", "{e}");
        assert!(e["done"].as_u64().unwrap() >= 1, "{e}");
    }

    // Another update; one engine's service is killed during a build,
    // another host's link is cut during one.
    s.bases.push(registry, "base:latest", "v3");
    wait_for("a build on b1", WAIT, || {
        (engine(&daemon, "b1")["running"].as_u64() > Some(0)).then_some(())
    });
    hosts.kill(0);
    wait_for("a build on b2", WAIT, || {
        (engine(&daemon, "b2")["running"].as_u64() > Some(0)).then_some(())
    });
    hosts.link(1, false);
    for i in 0..IMAGES {
        daemon.wait_version_never_failing(&format!("app{i}"), "1.0.2", WAIT);
    }
    check_versions(&daemon, registry, &["1.0.0", "1.0.1", "1.0.2"]);
    let (b1, b2) = (engine(&daemon, "b1"), engine(&daemon, "b2"));
    assert_eq!(b1["state"], "down", "{b1}");
    assert_eq!(b2["state"], "down", "{b2}");
    assert!(
        b1["lost"].as_u64() >= Some(1),
        "the killed service's build was lost: {b1}"
    );
    assert!(
        b2["lost"].as_u64() >= Some(1),
        "the cut host's build was lost: {b2}"
    );
    assert_eq!(b1["failed"], 0, "{b1}");
    let metrics = daemon.get_text("/metrics");
    for line in [
        "rebased_engine_up{engine=\"b1\"} 0",
        "rebased_engine_up{engine=\"b2\"} 0",
        "rebased_engine_up{engine=\"b3\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
    assert!(
        metrics.contains("rebased_engine_builds_total{engine=\"b1\",outcome=\"lost\"}"),
        "{metrics}"
    );
    let listed = daemon.cli(&["engines"]);
    assert_eq!(
        listed.lines().filter(|l| l.contains(" down ")).count(),
        2,
        "{listed}"
    );
    // The lost builds ran again elsewhere, without a failed attempt.
    let ran = engines_of(&daemon, "1.0.2");
    assert!(
        ran.values().any(|e| e.len() > 1),
        "some job names the lost engine and the one that built it: {ran:?}"
    );
    for job in daemon.get("/v1/jobs").as_array().unwrap() {
        assert_ne!(job["state"], "failed", "{job}");
    }

    // Restored: up again; the versions stay what was recorded (a late
    // push of the cut host only moves its own tag).
    hosts.start(0);
    hosts.link(1, true);
    for name in ["b1", "b2"] {
        wait_for(&format!("{name} up again"), Duration::from_secs(60), || {
            (engine(&daemon, name)["state"] == "up").then_some(())
        });
    }
    std::thread::sleep(Duration::from_secs(3));
    check_versions(&daemon, registry, &["1.0.0", "1.0.1", "1.0.2"]);
    // Engines come and go with a reload.
    let names = |d: &Daemon| -> Vec<String> {
        d.get("/v1/engines")
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect()
    };
    s.write_config(daemon_toml, &format!("{}{images}", engines(2)));
    daemon.signal("-HUP");
    wait_for("b3 removed by the reload", Duration::from_secs(30), || {
        (names(&daemon) == ["b1", "b2"]).then_some(())
    });
    s.write_config(daemon_toml, &format!("{}{images}", engines(3)));
    daemon.signal("-HUP");
    wait_for("b3 back, and up", Duration::from_secs(30), || {
        (engine_state(&daemon, "b3") == Some("up".to_owned())).then_some(())
    });
    let log = daemon.log_text();
    assert!(log.contains("engine down"), "the loss is logged");
    assert!(log.contains("engine up"), "the return is logged");

    // A crash right after a version push: the engine wrote labels only,
    // and the pushed tag is still adopted, never pushed again.
    daemon.stop();
    let mut crashing = s.start_with_env(&[("REBASED_FAILPOINT", "after-version-push")]);
    s.bases.push(registry, "base:latest", "v4");
    let status = crashing.wait_exit(WAIT);
    assert!(!status.success(), "aborted at the failpoint");
    let before: BTreeMap<String, String> = (0..IMAGES)
        .filter_map(|i| {
            let name = format!("app{i}");
            registry.digest(&format!("{name}:1.0.3")).map(|d| (name, d))
        })
        .collect();
    assert!(!before.is_empty(), "a version was pushed before the crash");
    let daemon = s.start();
    for i in 0..IMAGES {
        daemon.wait_version_never_failing(&format!("app{i}"), "1.0.3", WAIT);
    }
    for (name, digest) in &before {
        assert_eq!(
            daemon.image(name)["current_digest"],
            digest.as_str(),
            "{name}: the pushed tag was adopted"
        );
    }
    check_versions(&daemon, registry, &["1.0.0", "1.0.1", "1.0.2", "1.0.3"]);
}
