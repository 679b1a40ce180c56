//! Bad inputs and unreachable registries get clear errors and lose nothing:
//! one daemon, several images, each with its own problem, next to one that
//! is fine.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rebased_e2e::{free_port, rebased_bin, wait_for, BaseMaker, Daemon, Registry};

const WAIT: Duration = Duration::from_secs(120);

fn context(dir: &Path, name: &str, dockerfile: &str) -> String {
    let ctx = dir.join(name);
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("hello"), "hello\n").unwrap();
    fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    ctx.display().to_string()
}

fn image(name: &str, ctx: &str, repo: &str) -> String {
    format!("\n[[image]]\nname = \"{name}\"\ncontext = \"{ctx}\"\nrepository = \"{repo}\"\nversion = \"1.0.0\"\n")
}

#[test]
fn faults_are_reported_per_image_and_nothing_is_overwritten() {
    let registry = Registry::start();
    let host = registry.host.clone();
    let bases = BaseMaker::new();
    bases.push(&registry, "base:latest", "v1");

    let work = tempfile::tempdir().unwrap();
    let dead = format!("127.0.0.1:{}", free_port()); // nothing listens here
    let good = context(
        work.path(),
        "good",
        &format!("FROM {host}/base:latest\nCOPY hello /hello\n"),
    );
    let unreachable = context(
        work.path(),
        "unreachable",
        &format!("FROM {dead}/base:latest\nCOPY hello /hello\n"),
    );
    let broken = context(
        work.path(),
        "broken",
        &format!("FROM {host}/base:latest\nCOPY missing-file /x\n"),
    );
    let baddf = context(work.path(), "baddf", "FROM alpine\nFROBNICATE now\n");

    let listen = format!("127.0.0.1:{}", free_port());
    let token_file = work.path().join("api-token");
    fs::write(&token_file, "s3cret\n").unwrap();
    let mut cfg = format!(
        "[daemon]\nstate_dir = \"{}\"\napi_token_file = \"{}\"\nlisten = \"{listen}\"\npoll = \"*/1 * * * * *\"\nsettle = \"0s\"\n\n[builder]\nmax_attempts = 1\n\n[registries.\"{host}\"]\ninsecure = true\n[registries.\"{dead}\"]\ninsecure = true\n",
        work.path().join("state").display(),
        token_file.display()
    );
    cfg += &image("good", &good, &format!("{host}/good"));
    cfg += &image("unreachable", &unreachable, &format!("{host}/unreachable"));
    cfg += &image("broken", &broken, &format!("{host}/broken"));
    cfg += &image("baddf", &baddf, &format!("{host}/baddf"));
    let config = work.path().join("rebased.toml");
    fs::write(&config, cfg).unwrap();

    let daemon = Daemon::start(&config, &listen, &work.path().join("daemon.log"));
    wait_for("good to publish 1.0.0", WAIT, || {
        let g = daemon.get("/v1/images/good");
        (g["current_version"] == "1.0.0" && g["state"] == "fresh").then_some(())
    });
    let state = |name: &str| daemon.get(&format!("/v1/images/{name}"));
    wait_for("broken and baddf to be failing", WAIT, || {
        (state("broken")["state"] == "failing" && state("baddf")["state"] == "failing")
            .then_some(())
    });

    // An unreachable base: the error names the reference and the cause.
    let u = state("unreachable");
    let err = u["bases"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        err.contains(&format!("{dead}/base:latest")) && err.contains("unreachable"),
        "{u:#}"
    );
    assert_eq!(u["current_version"], serde_json::Value::Null);

    // A failing build: the reason is shown, nothing is pushed.
    let b = state("broken");
    let e = b["last_error"].as_str().unwrap();
    assert!(e.contains("build") && e.contains("missing-file"), "{e}");
    assert!(registry.digest("broken:1.0.0").is_none());

    // A bad Dockerfile: file and line.
    let e = state("baddf")["last_error"].as_str().unwrap().to_owned();
    assert!(
        e.contains("Dockerfile:2:") && e.contains("FROBNICATE"),
        "{e}"
    );

    // The daemon is still serving.
    assert_eq!(daemon.get("/v1/status")["images"], 4);

    // A failing image is not retried while its inputs stay the same...
    let broken_jobs = || {
        daemon
            .get("/v1/jobs")
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["image"] == "broken")
            .count()
    };
    let before = broken_jobs();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        broken_jobs(),
        before,
        "no retry of a failing image with unchanged inputs"
    );
    let job = daemon
        .get("/v1/jobs")
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["image"] == "broken")
        .cloned()
        .unwrap();
    assert_eq!(job["state"], "failed");
    let log = reqwest::blocking::get(format!("{}/v1/jobs/{}/log", daemon.api, job["id"]))
        .unwrap()
        .text()
        .unwrap();
    assert!(log.contains("missing-file"), "the build log is kept: {log}");

    // ...until someone asks: POSTs need the API token.
    fs::write(Path::new(&broken).join("missing-file"), "now here\n").unwrap();
    assert_eq!(daemon.post("/v1/images/broken/rebuild", None), 401);
    assert_eq!(daemon.post("/v1/images/broken/rebuild", Some("wrong")), 401);
    assert_eq!(
        daemon.post("/v1/images/nosuch/rebuild", Some("s3cret")),
        404
    );
    assert_eq!(
        daemon.post("/v1/images/broken/rebuild", Some("s3cret")),
        202
    );
    wait_for("broken to publish after the rebuild", WAIT, || {
        let b = state("broken");
        (b["current_version"] == "1.0.0" && b["state"] == "fresh").then_some(())
    });
    assert_eq!(state("broken")["state"], "fresh");
    assert!(registry.digest("broken:1.0.0").is_some());
    assert_eq!(daemon.post("/v1/check", Some("s3cret")), 202);
}

#[test]
fn once_publishes_and_exits() {
    let registry = Registry::start();
    let host = registry.host.clone();
    BaseMaker::new().push(&registry, "base:latest", "v1");
    let work = tempfile::tempdir().unwrap();
    let ctx = context(
        work.path(),
        "app",
        &format!("FROM {host}/base:latest\nCOPY hello /hello\n"),
    );
    let config = work.path().join("rebased.toml");
    fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"{}\"\n\n[registries.\"{host}\"]\ninsecure = true\n{}",
            work.path().join("state").display(),
            image("app", &ctx, &format!("{host}/app"))
        ),
    )
    .unwrap();
    let run_once = || {
        Command::new(rebased_bin())
            .args(["once", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let out = run_once();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = registry.digest("app:1.0.0").expect("1.0.0 pushed");
    assert_eq!(
        registry.digest("app:latest").as_deref(),
        Some(first.as_str())
    );
    // Nothing changed upstream: a second run publishes nothing.
    let out = run_once();
    assert!(out.status.success());
    let mut tags = registry.tags("app");
    tags.sort();
    assert_eq!(tags, ["1", "1.0", "1.0.0", "latest"]);
}
