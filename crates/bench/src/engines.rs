//! The `engines` scenario: one fleet rebuilt after a base update by one,
//! two and three remote engines (Podman's Docker-compatible service, each
//! with its own vfs storage, on 127.0.0.1). Every engine runs on this
//! machine, so they share its cores: the wall time says what scheduling
//! costs and how builds spread more than what more hosts would give; the
//! figures say so.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::harness::{free_port, wait_for, write_config, Daemon, Registry};
use crate::scenarios::figure;
use crate::Sizes;

/// One `podman system service` on 127.0.0.1.
struct Service {
    child: Child,
    url: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_service(dir: &Path, registry: &str) -> Result<Service> {
    use std::os::unix::process::CommandExt;
    fs::create_dir_all(dir)?;
    let conf = dir.join("containers.conf");
    fs::write(
        &conf,
        "[containers]\ncgroups = \"disabled\"\nnetns = \"host\"\n\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
    )?;
    let registries = dir.join("registries.conf");
    fs::write(
        &registries,
        format!("[[registry]]\nlocation = \"{registry}\"\ninsecure = true\n"),
    )?;
    let port = free_port()?;
    let log = fs::File::create(dir.join("service.log"))?;
    let child = Command::new("podman")
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(dir.join("runroot"))
        .args(["--storage-driver", "vfs", "system", "service", "--time=0"])
        .arg(format!("tcp:127.0.0.1:{port}"))
        .env("CONTAINERS_CONF", &conf)
        .env("CONTAINERS_REGISTRIES_CONF", &registries)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("podman must be installed")?;
    let service = Service {
        child,
        url: format!("tcp://127.0.0.1:{port}"),
    };
    let ping = format!("http://127.0.0.1:{port}/_ping");
    wait_for(
        "the engine to answer",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            Ok(reqwest::blocking::get(&ping)
                .ok()
                .filter(|r| r.status().is_success()))
        },
    )?;
    Ok(service)
}

fn time(job: &Value, key: &str) -> Option<DateTime<Utc>> {
    job[key].as_str()?.parse().ok()
}

/// Every image at `version`, or the first failure.
fn wait_all(daemon: &Daemon, images: usize, version: &str) -> Result<()> {
    wait_for(
        "every image built",
        Duration::from_secs(1800),
        Duration::from_millis(100),
        || {
            let all = daemon.get("/v1/images")?;
            let all = all.as_array().map(Vec::as_slice).unwrap_or_default();
            if let Some(failing) = all.iter().find(|i| i["state"] == "failing") {
                bail!("{} failed: {}", failing["name"], failing["last_error"]);
            }
            let done = all
                .iter()
                .filter(|i| i["current_version"] == version)
                .count();
            Ok((done == images).then_some(()))
        },
    )
}

/// The scenario.
pub fn engines(sizes: &Sizes) -> Result<Value> {
    let images = sizes.engine_images;
    println!(
        "\n== remote engines: {images} images (FROM base, COPY, RUN), a base update rebuilt by 1, 2 and 3 engines (podman services on this machine, sharing its cores)"
    );
    let busybox = fs::read("/bin/busybox").context("busybox-static provides /bin/busybox")?;
    let mut out = serde_json::Map::new();
    for n in 1..=3usize {
        let registry = Registry::start(None)?;
        registry.push_image("base", "latest", &[("bin/busybox", &busybox)])?;
        let dir = crate::harness::tempdir()?;
        let services: Vec<Service> = (0..n)
            .map(|i| start_service(&dir.path().join(format!("e{i}")), &registry.host))
            .collect::<Result<_>>()?;
        let mut rest = String::from("\n[builder]\nbackend = \"remote\"\nmax_attempts = 1\n");
        for (i, s) in services.iter().enumerate() {
            rest.push_str(&format!(
                "\n[[builder.engine]]\nname = \"e{i}\"\nurl = \"{}\"\nmax_builds = 2\n",
                s.url
            ));
        }
        for i in 0..images {
            let ctx = dir.path().join(format!("app{i}"));
            fs::create_dir_all(&ctx)?;
            fs::write(ctx.join("hello"), format!("hello {i}\n"))?;
            fs::write(
                ctx.join("Dockerfile"),
                format!(
                    "FROM {}/base:latest\nCOPY hello /hello\nRUN [\"/bin/busybox\", \"cp\", \"/hello\", \"/copied\"]\n",
                    registry.host
                ),
            )?;
            rest.push_str(&crate::harness::image_table(
                &format!("app{i}"),
                &ctx,
                &format!("{}/app{i}", registry.host),
            ));
        }
        let slots = 2 * n;
        let listen = format!("127.0.0.1:{}", free_port()?);
        let config = write_config(
            dir.path(),
            &listen,
            &registry.host,
            &format!("poll = \"0 0 1 1 *\"\nsettle = \"0s\"\nmax_concurrent_builds = {slots}"),
            &rest,
        )?;
        let daemon = Daemon::start(&config, &listen, &dir.path().join("daemon.log"))?;
        wait_all(&daemon, images, "1.0.0")?;
        // The update, measured: from the check to the last push.
        registry.push_image(
            "base",
            "latest",
            &[("bin/busybox", &busybox), ("marker", b"v2\n")],
        )?;
        let start = Instant::now();
        let start_at = Utc::now();
        let _ = &start;
        daemon.post("/v1/check")?;
        wait_all(&daemon, images, "1.0.1")?;
        // Each job's record lands just after its version's.
        let jobs = wait_for(
            "every rebuild job finished",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                let jobs = daemon.get("/v1/jobs")?;
                let done = jobs
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .filter(|j| j["published"] == "1.0.1" && j["finished_at"].is_string())
                    .count();
                Ok((done == images).then_some(jobs))
            },
        )?;
        let polled = start.elapsed().as_secs_f64();
        let mut spread: BTreeMap<String, usize> = BTreeMap::new();
        let mut build_s = Vec::new();
        let mut wait_s = Vec::new();
        let mut ends = Vec::new();
        for job in jobs.as_array().into_iter().flatten() {
            if job["published"] != "1.0.1" {
                continue;
            }
            let (Some(c), Some(s), Some(f)) = (
                time(job, "created_at"),
                time(job, "started_at"),
                time(job, "finished_at"),
            ) else {
                continue;
            };
            if c < start_at - chrono::Duration::seconds(1) {
                continue;
            }
            build_s.push((f - s).as_seconds_f64());
            ends.push(f);
            wait_s.push((s - c).as_seconds_f64());
            let id = job["id"].as_u64().unwrap_or(0);
            let log = reqwest::blocking::get(format!("{}/v1/jobs/{id}/log", daemon.api))
                .ok()
                .and_then(|r| r.text().ok())
                .unwrap_or_default();
            if let Some(e) = log
                .lines()
                .find_map(|l| l.strip_prefix("# engine "))
                .and_then(|r| r.split_whitespace().next())
            {
                *spread.entry(e.to_owned()).or_default() += 1;
            }
        }
        if build_s.len() != images {
            bail!(
                "{n} engines: {} of {images} rebuild jobs found: {jobs}",
                build_s.len()
            );
        }
        // From the check to the last job's end.
        let wall = ends
            .iter()
            .max()
            .map_or(polled, |last| (*last - start_at).as_seconds_f64());
        let work: f64 = build_s.iter().sum();
        let mean = work / build_s.len() as f64;
        let ideal = work / slots.min(images) as f64;
        let overhead = wall - ideal;
        let mean_wait = wait_s.iter().sum::<f64>() / wait_s.len() as f64;
        println!("  [{n} engine(s), {slots} slots]");
        figure(
            "wall time (s)",
            format!("{wall:.2}"),
            "POST /v1/check after the base push -> the last rebuild job's finished_at",
        );
        figure(
            "build time per image, mean (s)",
            format!("{mean:.2}"),
            "job started_at -> finished_at (the engine's build and push, the version tag, the record)",
        );
        figure(
            "parallelism reached",
            format!("{:.2}", work / wall),
            "sum of build times / wall time",
        );
        figure(
            "scheduling overhead (s)",
            format!("{overhead:.2}"),
            "wall time - sum of build times / slots: the time not spent building at full occupancy (poll round, queue, dispatch, picking engines)",
        );
        figure(
            "queue wait per image, mean (s)",
            format!("{mean_wait:.2}"),
            "job created_at -> started_at",
        );
        figure(
            "spread",
            format!("{spread:?}"),
            "builds per engine, from the job logs' # engine lines",
        );
        out.insert(
            format!("{n}"),
            json!({
                "engines": n,
                "slots": slots,
                "wall_s": wall,
                "build_s_mean": mean,
                "parallelism": work / wall,
                "overhead_s": overhead,
                "queue_wait_s_mean": mean_wait,
                "spread": spread,
            }),
        );
        drop(daemon);
        drop(services);
    }
    out.insert("images".to_owned(), json!(images));
    out.insert(
        "note".to_owned(),
        json!("every engine runs on this machine and shares its cores"),
    );
    Ok(Value::Object(out))
}
