//! The six scenarios of issue 9. Each returns its figures as JSON and
//! prints them, each with how it was measured.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::fleet::{self, YEARLY};
use crate::harness::{
    access_method_path, clock_ticks, free_port, image_table, load_average, percentile, proc_stat,
    wait_for, write_config, Daemon, Registry,
};
use crate::Sizes;

/// Prints one figure with its method.
pub fn figure(label: &str, value: impl std::fmt::Display, method: &str) {
    println!("  {label:<44} {value:>14}   [{method}]");
}

pub(crate) fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

pub(crate) fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Scenarios 1 and 2: fan-in polling at each size, and (with `peer`) the
/// skopeo loop over the same images.
pub fn fan_in(sizes: &Sizes, fanin: bool, peer: bool) -> Result<Value> {
    let mut out = Vec::new();
    for &(images, bases) in &sizes.fleets {
        println!("\n== fan-in polling: {images} images over {bases} bases");
        let registry = Registry::start(None)?;
        let work = crate::harness::tempdir()?;
        let f = fleet::make(&registry, work.path(), images, bases, YEARLY)?;
        let (mut daemon, startup) = fleet::start(&f, work.path())?;
        let ticks = clock_ticks();
        let mut cycles = Vec::new();
        for _ in 0..sizes.cycles {
            let mark = registry.log_mark();
            let t0 = Instant::now();
            daemon.post("/v1/check")?;
            let line = daemon.wait_log("poll round finished", Duration::from_secs(600))?;
            let wall = t0.elapsed();
            // The access log is written as each response completes: all of
            // this round's requests are in before the round ends.
            let lines = registry.access_since(mark)?;
            let rebased: Vec<&String> = lines.iter().filter(|l| l.contains("rebased/")).collect();
            let manifests = rebased
                .iter()
                .filter(|l| access_method_path(l).is_some_and(|(_, p)| p.contains("/manifests/")))
                .count();
            cycles.push(json!({
                "manifest_requests": manifests,
                "requests": rebased.len(),
                "wall_ms": round2(wall.as_secs_f64() * 1000.0),
                "daemon_ms": line.fields.get("elapsed_ms").and_then(Value::as_f64).map(round2),
            }));
        }
        let stat = proc_stat(daemon.pid(), ticks)?;
        let mut walls: Vec<f64> = cycles
            .iter()
            .filter_map(|c| c["wall_ms"].as_f64())
            .collect();
        walls.sort_by(f64::total_cmp);
        let manifests: Vec<u64> = cycles
            .iter()
            .filter_map(|c| c["manifest_requests"].as_u64())
            .collect();
        let wall_median = percentile(&walls, 50.0);
        let requests_per_cycle = cycles
            .first()
            .and_then(|c| c["requests"].as_u64())
            .unwrap_or(0);
        if fanin {
            figure(
                "manifest requests per cycle",
                format!("{manifests:?}"),
                "registry access log, HEAD/GET .../manifests/ by rebased, per POST /v1/check",
            );
            figure(
                "cycle wall time, median (ms)",
                round2(wall_median),
                "POST /v1/check sent -> 'poll round finished' in the daemon log",
            );
            figure(
                "cycle wall time, max (ms)",
                round2(walls.last().copied().unwrap_or(f64::NAN)),
                "same, slowest cycle",
            );
            figure(
                "daemon peak RSS (MiB)",
                mib(stat.hwm_kib),
                "VmHWM of /proc/PID/status after start-up and the cycles",
            );
            figure(
                "start-up to first round done (s)",
                round2(startup.as_secs_f64()),
                "spawn -> first 'poll round finished' (ledger import of every image)",
            );
        }
        let mut entry = json!({
            "images": images,
            "bases": bases,
            "cycles": cycles,
            "manifest_requests_per_cycle": manifests,
            "requests_per_cycle": requests_per_cycle,
            "cycle_wall_ms_median": round2(wall_median),
            "cycle_wall_ms_max": walls.last().copied().map(round2),
            "peak_rss_mib": mib(stat.hwm_kib),
            "rss_mib": mib(stat.rss_kib),
            "startup_s": round2(startup.as_secs_f64()),
        });
        daemon.stop()?;
        if peer {
            entry["peer"] = skopeo_loop(
                &registry,
                work.path(),
                &f.image_bases,
                sizes.peer_sample,
                requests_per_cycle,
                manifests.first().copied().unwrap_or(0),
                wall_median,
            )?;
        }
        out.push(entry);
    }
    Ok(Value::Array(out))
}

/// Scenario 2: `skopeo inspect` of each image's base in a shell loop.
fn skopeo_loop(
    registry: &Registry,
    work: &Path,
    image_bases: &[String],
    sample: usize,
    rebased_requests: u64,
    rebased_manifests: u64,
    rebased_wall_ms: f64,
) -> Result<Value> {
    let n = image_bases.len().min(sample.max(1));
    let scale = image_bases.len() as f64 / n as f64;
    let refs = work.join("peer-refs.txt");
    fs::write(&refs, image_bases[..n].join("\n") + "\n")?;
    let script = "while read -r ref; do\n  skopeo inspect --tls-verify=false \"docker://$ref\" | grep -q '\"Digest\"' || echo \"failed: $ref\" >&2\ndone < \"$1\"\n";
    let mark = registry.log_mark();
    let t0 = Instant::now();
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("peer")
        .arg(&refs)
        .output()
        .context("running the skopeo loop")?;
    let wall = t0.elapsed().as_secs_f64() * 1000.0 * scale;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || stderr.contains("failed:") {
        bail!("the skopeo loop failed: {stderr}");
    }
    let lines = registry.access_since(mark)?;
    let skopeo: Vec<&String> = lines.iter().filter(|l| l.contains("skopeo/")).collect();
    let manifests = skopeo
        .iter()
        .filter(|l| access_method_path(l).is_some_and(|(_, p)| p.contains("/manifests/")))
        .count() as f64
        * scale;
    let requests = skopeo.len() as f64 * scale;
    let how = if n < image_bases.len() {
        format!(
            "{n} of {} images run, scaled x{scale:.0} (the loop is linear)",
            image_bases.len()
        )
    } else {
        format!("all {n} images run")
    };
    figure(
        "peer: requests per cycle",
        requests.round(),
        &format!("registry access log, agent skopeo; {how}"),
    );
    figure(
        "peer: manifest requests per cycle",
        manifests.round(),
        "same, .../manifests/ only",
    );
    figure(
        "peer: wall time per cycle (s)",
        round2(wall / 1000.0),
        "bash loop of `skopeo inspect` per image, sequential",
    );
    let req_ratio = requests / rebased_requests.max(1) as f64;
    let time_ratio = wall / rebased_wall_ms.max(0.001);
    figure(
        "peer / rebased: requests",
        format!("{req_ratio:.0}x"),
        "peer requests / rebased requests per cycle",
    );
    figure(
        "peer / rebased: wall time",
        format!("{time_ratio:.0}x"),
        "peer loop wall / rebased cycle wall (median)",
    );
    Ok(json!({
        "images_run": n,
        "scale": scale,
        "requests_per_cycle": requests.round(),
        "manifest_requests_per_cycle": manifests.round(),
        "wall_s": round2(wall / 1000.0),
        "rebased_requests_per_cycle": rebased_requests,
        "rebased_manifest_requests_per_cycle": rebased_manifests,
        "requests_ratio": round2(req_ratio),
        "wall_ratio": round2(time_ratio),
    }))
}

fn job_time(job: &Value, key: &str) -> Option<DateTime<Utc>> {
    job.get(key)
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn finished(job: &Value) -> bool {
    matches!(
        job["state"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

/// The newest job of `image` with an id above `after`, once finished.
fn wait_job(daemon: &Daemon, image: &str, after: Option<u64>, timeout: Duration) -> Result<Value> {
    let job = wait_for(
        &format!("a finished job of {image} after job {after:?}"),
        timeout,
        Duration::from_millis(10),
        || {
            let jobs = daemon.get("/v1/jobs")?;
            Ok(jobs
                .as_array()
                .into_iter()
                .flatten()
                .filter(|j| {
                    j["image"] == image
                        && j["id"]
                            .as_u64()
                            .is_some_and(|id| after.is_none_or(|a| id > a))
                })
                .find(|j| finished(j))
                .cloned())
        },
    );
    job.with_context(|| format!("the daemon's log ends:\n{}", daemon.log_tail(30)))
}

/// Scenario 3: the registry's notification arriving -> the job running.
pub fn webhook(sizes: &Sizes) -> Result<Value> {
    println!(
        "\n== webhook to build start: {} pushes, settle 0, native backend",
        sizes.pushes
    );
    const TOKEN: &str = "bench-hook-token";
    let listen = format!("127.0.0.1:{}", free_port()?);
    let url = format!("http://{listen}/v1/webhooks/distribution");
    let registry = Registry::start(Some((&url, TOKEN)))?;
    registry.push_image("base", "latest", &[("marker", b"v0\n")])?;
    let work = crate::harness::tempdir()?;
    let ctx = work.path().join("app");
    fs::create_dir_all(&ctx)?;
    fs::write(ctx.join("hello"), "hello\n")?;
    fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}/base:latest\nCOPY hello /hello\nCMD [\"/bin/sh\"]\n",
            registry.host
        ),
    )?;
    let token_file = work.path().join("token");
    fs::write(&token_file, TOKEN)?;
    let config = write_config(
        work.path(),
        &listen,
        &registry.host,
        &format!("poll = \"{YEARLY}\"\nsettle = \"0s\""),
        &format!(
            "\n[builder]\nbackend = \"native\"\n\n[webhooks]\ntoken_file = \"{}\"\n{}",
            token_file.display(),
            image_table("app", &ctx, &format!("{}/app", registry.host))
        ),
    )?;
    let mut daemon = Daemon::start(&config, &listen, &work.path().join("daemon.log"))?;
    let first = wait_job(&daemon, "app", None, Duration::from_secs(120))?;
    let mut last = first["id"].as_u64();
    daemon.new_log_lines()?;
    let mut latencies = Vec::new();
    let mut failed = 0;
    for k in 1..=sizes.pushes {
        let pushed_at = Utc::now();
        registry.push_image(
            "base",
            "latest",
            &[("marker", format!("v{k}\n").as_bytes())],
        )?;
        let job = wait_job(&daemon, "app", last, Duration::from_secs(120))?;
        last = job["id"].as_u64().or(last);
        if job["state"] != "succeeded" {
            failed += 1;
        }
        let started = job_time(&job, "started_at")
            .ok_or_else(|| anyhow!("job {last:?} has no started_at: {job}"))?;
        // Only the lines since the last push: the log is not read again whole.
        let arrived = daemon
            .new_log_lines()?
            .into_iter()
            .find(|l| {
                l.message == "webhook: checking now"
                    && l.at >= pushed_at - chrono::Duration::milliseconds(5)
                    && l.fields.to_string().contains("/base:latest")
            })
            .ok_or_else(|| anyhow!("no webhook for push {k} in the daemon log"))?;
        latencies.push((started - arrived.at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
    }
    // Every push is one job, no more: wait out a webhook re-check, then
    // count the image's jobs since the first build.
    std::thread::sleep(Duration::from_millis(500));
    let jobs = daemon
        .get("/v1/jobs")?
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| {
            j["image"] == "app"
                && j["id"]
                    .as_u64()
                    .zip(first["id"].as_u64())
                    .is_some_and(|(id, f)| id > f)
        })
        .count();
    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&sorted, 50.0), percentile(&sorted, 99.0));
    let method =
        "daemon log timestamp of 'webhook: checking now' -> the job's started_at (GET /v1/jobs)";
    figure("webhook -> building, p50 (ms)", round2(p50), method);
    figure("webhook -> building, p99 (ms)", round2(p99), "same");
    figure(
        "webhook -> building, max (ms)",
        round2(sorted.last().copied().unwrap_or(f64::NAN)),
        "same",
    );
    figure(
        "pushes / jobs / failed builds",
        format!("{} / {jobs} / {failed}", sizes.pushes),
        "each push awaited; the image's jobs since its first build, from GET /v1/jobs",
    );
    Ok(json!({
        "pushes": sizes.pushes,
        "jobs": jobs,
        "failed_builds": failed,
        "p50_ms": round2(p50),
        "p99_ms": round2(p99),
        "max_ms": sorted.last().copied().map(round2),
        "latencies_ms": latencies.iter().map(|l| round2(*l)).collect::<Vec<_>>(),
    }))
}

/// Writes `count` files of pseudo-random bytes totalling `bytes` under
/// `dir/files` (xorshift: incompressible, the same every run).
fn write_payload(dir: &Path, count: usize, bytes: usize) -> Result<()> {
    let files = dir.join("files");
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let each = bytes / count.max(1);
    for i in 0..count {
        let sub = files.join(format!("d{:02}", i % 40));
        fs::create_dir_all(&sub)?;
        let mut buf = Vec::with_capacity(each);
        while buf.len() < each {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            buf.extend_from_slice(&state.to_le_bytes());
        }
        buf.truncate(each);
        fs::write(sub.join(format!("f{i:05}.bin")), buf)?;
    }
    Ok(())
}

/// Scenario 4: a rebuild after a base update, native vs buildah.
pub fn rebuild(sizes: &Sizes) -> Result<Value> {
    let (count, bytes) = sizes.payload;
    println!(
        "\n== rebuild after a base update: FROM base + COPY of {} MiB in {count} files + CMD",
        bytes / (1 << 20)
    );
    let ctx_dir = crate::harness::tempdir()?;
    let ctx = ctx_dir.path().join("app");
    write_payload(&ctx, count, bytes)?;
    let mut out = serde_json::Map::new();
    for backend in ["native", "buildah"] {
        let registry = Registry::start(None)?;
        registry.push_image("base", "latest", &[("marker", b"v1\n")])?;
        fs::write(
            ctx.join("Dockerfile"),
            format!(
                "FROM {}/base:latest\nCOPY files/ /data/\nCMD [\"/bin/sh\"]\n",
                registry.host
            ),
        )?;
        let work = crate::harness::tempdir()?;
        let listen = format!("127.0.0.1:{}", free_port()?);
        let config = write_config(
            work.path(),
            &listen,
            &registry.host,
            &format!("poll = \"{YEARLY}\"\nsettle = \"0s\""),
            &format!(
                "\n[builder]\nbackend = \"{backend}\"\n{}",
                image_table("app", &ctx, &format!("{}/app", registry.host))
            ),
        )?;
        let daemon = Daemon::start(&config, &listen, &work.path().join("daemon.log"))?;
        let first = wait_job(&daemon, "app", None, Duration::from_secs(1800))?;
        if first["state"] != "succeeded" {
            bail!("{backend}: the first build failed: {first}");
        }
        let first_s = span_s(&first, "created_at", "finished_at");
        let mut last = first["id"].as_u64();
        let mut runs = Vec::new();
        for r in 0..sizes.rebuilds {
            registry.push_image(
                "base",
                "latest",
                &[("marker", format!("v{}\n", r + 2).as_bytes())],
            )?;
            let before: BTreeSet<String> = registry.blobs().into_keys().collect();
            daemon.post("/v1/check")?;
            let job = wait_job(&daemon, "app", last, Duration::from_secs(1800))?;
            last = job["id"].as_u64().or(last);
            if job["state"] != "succeeded" {
                bail!("{backend}: rebuild {r} failed: {job}");
            }
            let new: u64 = registry
                .blobs()
                .into_iter()
                .filter(|(d, _)| !before.contains(d))
                .map(|(_, s)| s)
                .sum();
            let version = job["published"].as_str().unwrap_or("1.0.0").to_owned();
            let layers = new_layer_bytes(&registry, "app", &version, &before)?;
            let job_log =
                reqwest::blocking::get(format!("{}/v1/jobs/{}/log", daemon.api, last.unwrap_or(0)))
                    .ok()
                    .and_then(|r| r.text().ok())
                    .unwrap_or_default();
            let log_line = job_log
                .lines()
                .find_map(|l| l.split("layer bytes uploaded: ").nth(1))
                .and_then(|n| n.trim().parse::<u64>().ok());
            // How the native backend had its COPY layer (its job log says).
            let layer_cache = if job_log.contains("sources unchanged since an earlier build") {
                "stat"
            } else if job_log.contains("same contents as an earlier build") {
                "content"
            } else if job_log.contains("-> layer sha256:") {
                "built"
            } else {
                "n/a"
            };
            runs.push(json!({
                "version": version,
                "decision_to_published_s": span_s(&job, "created_at", "finished_at"),
                "new_blob_bytes": new,
                "new_layer_bytes": layers,
                "log_layer_bytes_uploaded": log_line,
                "layer_cache": layer_cache,
            }));
        }
        let mut times: Vec<f64> = runs
            .iter()
            .filter_map(|r| r["decision_to_published_s"].as_f64())
            .collect();
        times.sort_by(f64::total_cmp);
        let median = percentile(&times, 50.0);
        println!("  [{backend}]");
        figure(
            "decision -> published, median (s)",
            round2(median),
            "job created_at (queued by the poller) -> finished_at, GET /v1/jobs",
        );
        figure(
            "layer bytes uploaded per rebuild",
            format!(
                "{:?}",
                runs.iter()
                    .map(|r| r["new_layer_bytes"].as_u64().unwrap_or(0))
                    .collect::<Vec<_>>()
            ),
            "sizes of the new manifest's layers that were not in the registry's storage before",
        );
        figure(
            "all new blob bytes per rebuild",
            format!(
                "{:?}",
                runs.iter()
                    .map(|r| r["new_blob_bytes"].as_u64().unwrap_or(0))
                    .collect::<Vec<_>>()
            ),
            "new files under the registry's blobs/ (layers, config, manifest)",
        );
        if backend == "native" {
            figure(
                "own layer per rebuild",
                format!(
                    "{:?}",
                    runs.iter()
                        .map(|r| r["layer_cache"].as_str().unwrap_or("?"))
                        .collect::<Vec<_>>()
                ),
                "job log: stat = layer cache hit by the sources' stat, content = by their tar's sha256, built = tarred and gzipped",
            );
        }
        figure(
            "first build (s)",
            round2(first_s),
            "the build at start, nothing cached",
        );
        out.insert(
            backend.to_owned(),
            json!({
                "first_build_s": round2(first_s),
                "rebuilds": runs,
                "decision_to_published_s_median": round2(median),
            }),
        );
    }
    let native = out["native"]["decision_to_published_s_median"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let buildah = out["buildah"]["decision_to_published_s_median"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let speedup = buildah / native;
    figure(
        "native speed-up over buildah",
        format!("{speedup:.1}x"),
        "buildah median / native median",
    );
    out.insert("speedup".to_owned(), json!(round2(speedup)));
    out.insert("files".to_owned(), json!(count));
    out.insert("bytes".to_owned(), json!(bytes));
    Ok(Value::Object(out))
}

fn span_s(job: &Value, from: &str, to: &str) -> f64 {
    match (job_time(job, from), job_time(job, to)) {
        (Some(a), Some(b)) => (b - a).num_milliseconds() as f64 / 1000.0,
        _ => f64::NAN,
    }
}

/// Bytes of `repo:tag`'s layers that were not stored before.
fn new_layer_bytes(
    registry: &Registry,
    repo: &str,
    tag: &str,
    before: &BTreeSet<String>,
) -> Result<u64> {
    let manifest: Value = reqwest::blocking::Client::new()
        .get(format!("http://{}/v2/{repo}/manifests/{tag}", registry.host))
        .header(
            "accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()?
        .json()?;
    Ok(manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["digest"].as_str().is_some_and(|d| !before.contains(d)))
        .filter_map(|l| l["size"].as_u64())
        .sum())
}

/// Runs `wrk` against `url`; returns (requests/s, p99 ms, errors).
fn wrk(url: &str, seconds: u64, connections: u32) -> Result<(f64, f64, u64)> {
    wrk_with(url, seconds, connections, &[])
}

/// [`wrk`] with request headers (`-H`); a 304 counts as an error in
/// wrk's `Non-2xx` line, so it is only for 2xx answers or a caller that
/// knows what it asked for.
pub(crate) fn wrk_with(
    url: &str,
    seconds: u64,
    connections: u32,
    headers: &[&str],
) -> Result<(f64, f64, u64)> {
    let mut args: Vec<String> = vec![
        "-t2".into(),
        format!("-c{connections}"),
        format!("-d{seconds}s"),
        "--timeout".into(),
        "30s".into(),
        "--latency".into(),
    ];
    for h in headers {
        args.push("-H".into());
        args.push((*h).to_owned());
    }
    args.push(url.to_owned());
    let out = Command::new("wrk")
        .args(&args)
        .output()
        .context("wrk must be installed (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no Requests/sec in wrk's output:\n{text}"))?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| parse_wrk_time(v.trim()))
        .ok_or_else(|| anyhow!("no 99% latency in wrk's output:\n{text}"))?;
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .flat_map(|l| l.split(|c: char| !c.is_ascii_digit()))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum();
    Ok((rps, p99, errors))
}

/// `1.23ms`, `456.00us`, `1.20s`, `2.00m` -> milliseconds.
fn parse_wrk_time(v: &str) -> f64 {
    let split = v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}

/// Scenario 5: the API under wrk with a fleet of images.
pub fn api(sizes: &Sizes) -> Result<Value> {
    println!(
        "\n== API under wrk: {} images, -t2 -c{} -d{}s",
        sizes.api_images, sizes.wrk_connections, sizes.wrk_seconds
    );
    let registry = Registry::start(None)?;
    let work = crate::harness::tempdir()?;
    let f = fleet::make(&registry, work.path(), sizes.api_images, 10, YEARLY)?;
    let (mut daemon, _) = fleet::start(&f, work.path())?;
    let count = daemon.get("/v1/images")?.as_array().map_or(0, Vec::len);
    if count != sizes.api_images {
        bail!(
            "GET /v1/images listed {count} images, not {}",
            sizes.api_images
        );
    }
    let mut out = serde_json::Map::new();
    let ticks = clock_ticks();
    // Where the peak is reached: after start-up and one full list, then
    // after each load.
    let settled = proc_stat(daemon.pid(), ticks)?;
    figure(
        "daemon peak RSS before the load (MiB)",
        mib(settled.hwm_kib),
        "VmHWM after start-up and one full list",
    );
    out.insert(
        "peak_rss_mib_before_load".to_owned(),
        json!(mib(settled.hwm_kib)),
    );
    for path in ["/v1/status", "/v1/images"] {
        let before = proc_stat(daemon.pid(), ticks)?;
        let (rps, p99, errors) = wrk(
            &format!("{}{path}", daemon.api),
            sizes.wrk_seconds,
            sizes.wrk_connections,
        )?;
        let after = proc_stat(daemon.pid(), ticks)?;
        // What one request costs the daemon, whatever the machine's other
        // load did to the rate: CPU in user and kernel mode, page faults.
        let requests = (rps * sizes.wrk_seconds as f64).max(1.0);
        let user_us = (after.user_s - before.user_s) * 1e6 / requests;
        let sys_us = (after.sys_s - before.sys_s) * 1e6 / requests;
        let faults = (after.minflt - before.minflt) as f64 / requests;
        figure(
            &format!("GET {path}: daemon CPU per request, user (us)"),
            round2(user_us),
            "utime over the run / requests (clock-tick resolution)",
        );
        figure(
            &format!("GET {path}: daemon CPU per request, system (us)"),
            round2(sys_us),
            "stime over the run / requests",
        );
        figure(
            &format!("GET {path}: daemon page faults per request"),
            round2(faults),
            "minflt over the run / requests",
        );
        figure(
            &format!("GET {path}: requests/s"),
            round2(rps),
            "wrk Requests/sec, wrk and rebased sharing the machine's cores",
        );
        figure(
            &format!("GET {path}: p99 (ms)"),
            round2(p99),
            "wrk --latency 99%",
        );
        out.insert(
            path.to_owned(),
            json!({"requests_per_s": round2(rps), "p99_ms": round2(p99), "errors": errors,
                "daemon_user_us_per_request": round2(user_us), "daemon_sys_us_per_request": round2(sys_us),
                "daemon_faults_per_request": round2(faults), "peak_rss_mib_after": mib(after.hwm_kib)}),
        );
        figure(
            &format!("GET {path}: daemon peak RSS after it (MiB)"),
            mib(after.hwm_kib),
            "VmHWM",
        );
    }
    let stat = proc_stat(daemon.pid(), clock_ticks())?;
    figure(
        "daemon peak RSS after the load (MiB)",
        mib(stat.hwm_kib),
        "VmHWM",
    );
    out.insert("peak_rss_mib".to_owned(), json!(mib(stat.hwm_kib)));
    out.insert("images".to_owned(), json!(sizes.api_images));
    daemon.stop()?;
    Ok(Value::Object(out))
}

/// Scenario 6: CPU and RSS of an idle daemon.
pub fn idle(sizes: &Sizes) -> Result<Value> {
    println!(
        "\n== idle: {} images over 10 bases, nothing changing, {} s, a poll every minute",
        sizes.idle_images, sizes.idle_seconds
    );
    let registry = Registry::start(None)?;
    let work = crate::harness::tempdir()?;
    // Every minute at second 0: the window holds one scheduled poll of every
    // base, a stricter idle than the default `*/15 * * * *`.
    let f = fleet::make(&registry, work.path(), sizes.idle_images, 10, "0 * * * * *")?;
    let (mut daemon, _) = fleet::start(&f, work.path())?;
    std::thread::sleep(Duration::from_secs(2));
    daemon.new_log_lines()?;
    let ticks = clock_ticks();
    let pid = daemon.pid();
    let before = proc_stat(pid, ticks)?;
    let t0 = Instant::now();
    let mut max_rss = before.rss_kib;
    let window = Duration::from_secs(sizes.idle_seconds);
    while t0.elapsed() < window {
        std::thread::sleep(Duration::from_millis(500).min(window.saturating_sub(t0.elapsed())));
        max_rss = max_rss.max(proc_stat(pid, ticks)?.rss_kib);
    }
    let after = proc_stat(pid, ticks)?;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu_pct = (after.cpu_s - before.cpu_s) / elapsed * 100.0;
    let rounds = daemon
        .new_log_lines()?
        .iter()
        .filter(|l| l.message == "poll round finished")
        .count();
    figure(
        "CPU, % of one core",
        format!("{cpu_pct:.3}"),
        "utime+stime delta of /proc/PID/stat over the window",
    );
    figure(
        "RSS, max over the window (MiB)",
        mib(max_rss),
        "VmRSS sampled every 0.5 s",
    );
    figure("poll rounds in the window", rounds, "daemon log");
    daemon.stop()?;
    Ok(json!({
        "images": sizes.idle_images,
        "seconds": round2(elapsed),
        "cpu_percent": (cpu_pct * 1000.0).round() / 1000.0,
        "rss_mib_max": mib(max_rss),
        "rss_mib_end": mib(after.rss_kib),
        "poll_rounds": rounds,
        "load_average_after": load_average(),
    }))
}
