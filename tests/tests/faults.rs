//! Bad inputs and unreachable registries get clear errors and lose nothing:
//! one daemon, several images, each with its own problem, next to one that
//! is fine.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::process::Command;
use std::time::Duration;

use rebased_e2e::{free_port, image_table, rebased_bin, Setup};

const WAIT: Duration = Duration::from_secs(120);

#[test]
fn faults_are_reported_per_image_and_nothing_is_overwritten() {
    let s = Setup::new();
    let (registry, host) = (&s.registry, s.host());
    let dead = format!("127.0.0.1:{}", free_port()); // nothing listens here
    let good = s.context(
        "good",
        &format!("FROM {host}/base:latest\nCOPY hello /hello\n"),
    );
    let unreachable = s.context(
        "unreachable",
        &format!("FROM {dead}/base:latest\nCOPY hello /hello\n"),
    );
    let broken = s.context(
        "broken",
        &format!("FROM {host}/base:latest\nCOPY missing-file /x\n"),
    );
    let baddf = s.context("baddf", "FROM alpine\nFROBNICATE now\n");

    let token_file = s.dir().join("api-token");
    fs::write(&token_file, "s3cret\n").unwrap();
    let mut images = format!("[registries.\"{dead}\"]\ninsecure = true\n");
    images += &image_table("good", &good, &format!("{host}/good"), "");
    images += &image_table(
        "unreachable",
        &unreachable,
        &format!("{host}/unreachable"),
        "",
    );
    images += &image_table("broken", &broken, &format!("{host}/broken"), "");
    images += &image_table("baddf", &baddf, &format!("{host}/baddf"), "");
    s.write_config(
        &format!(
            "api_token_file = \"{}\"\npoll = \"*/1 * * * * *\"\nsettle = \"0s\"\n\n[builder]\nmax_attempts = 1\n",
            token_file.display()
        ),
        &images,
    );

    let daemon = s.start();
    daemon.wait_version("good", "1.0.0", WAIT);
    let state = |name: &str| daemon.image(name);
    daemon.wait_failing("broken", WAIT);
    daemon.wait_failing("baddf", WAIT);

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
    let broken_jobs = || daemon.jobs_of("broken").len();
    let before = broken_jobs();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        broken_jobs(),
        before,
        "no retry of a failing image with unchanged inputs"
    );
    let job = daemon.jobs_of("broken").into_iter().next().unwrap();
    assert_eq!(job["state"], "failed");
    let log = daemon.get_text(&format!("/v1/jobs/{}/log", job["id"]));
    assert!(log.contains("missing-file"), "the build log is kept: {log}");

    // ...until someone asks: POSTs need the API token.
    fs::write(broken.join("missing-file"), "now here\n").unwrap();
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
    // broken publishes after the rebuild.
    daemon.wait_version("broken", "1.0.0", WAIT);
    assert_eq!(state("broken")["state"], "fresh");
    assert!(registry.digest("broken:1.0.0").is_some());
    assert_eq!(daemon.post("/v1/check", Some("s3cret")), 202);
}

#[test]
fn once_publishes_and_exits() {
    let s = Setup::new();
    let (registry, host) = (&s.registry, s.host());
    let ctx = s.context(
        "app",
        &format!("FROM {host}/base:latest\nCOPY hello /hello\n"),
    );
    let config = s.write_config("", &image_table("app", &ctx, &format!("{host}/app"), ""));
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
