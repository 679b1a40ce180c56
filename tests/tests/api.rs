//! The API as a whole: its OpenAPI document covers every route, schemathesis
//! finds no server error against the live daemon, and each CLI client
//! subcommand prints what the API holds.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use rebased_e2e::{image_table, rebased_bin, Daemon, Setup};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);

fn start() -> (Setup, Daemon) {
    let s = Setup::new();
    let ctx = s.context(
        "app",
        &format!("FROM {}/base:latest\nCOPY hello /hello\n", s.host()),
    );
    s.write_config(
        "poll = \"0 0 0 1 1 *\"\nsettle = \"0s\"",
        &image_table("app", &ctx, &format!("{}/app", s.host()), ""),
    );
    let daemon = s.start();
    daemon.wait_version("app", "1.0.0", WAIT);
    (s, daemon)
}

#[test]
fn openapi_covers_every_route_and_schemathesis_finds_no_server_error() {
    let (_setup, daemon) = start();
    let doc = daemon.get("/openapi.json");
    let paths = doc["paths"].as_object().unwrap();
    for route in [
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/metrics",
        "/v1/status",
        "/v1/images",
        "/v1/images/{name}",
        "/v1/images/{name}/rebuild",
        "/v1/images/{name}/rollback",
        "/v1/images/{name}/resume",
        "/v1/bases",
        "/v1/engines",
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/log",
        "/v1/check",
        "/v1/webhooks/{source}",
    ] {
        assert!(
            paths.contains_key(route),
            "{route} missing from /openapi.json"
        );
    }
    assert!(doc["components"]["schemas"]["ImageView"].is_object());

    let out = Command::new("python3")
        .args(["-m", "schemathesis.cli", "run"])
        .arg(format!("{}/openapi.json", daemon.api))
        .args([
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "25",
            "--request-timeout",
            "10",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .expect("schemathesis must be installed (scripts/test.sh installs it with pip)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("passed"), "{text}");
    // The daemon survived it.
    assert_eq!(daemon.get("/healthz")["status"], "ok");
}

#[test]
fn cli_clients_print_what_the_api_holds() {
    let (_setup, daemon) = start();
    let status = daemon.cli(&["status"]);
    assert!(
        status.contains("images: 1") && status.contains("queue: 0 queued"),
        "{status}"
    );
    let images = daemon.cli(&["images"]);
    let line = images
        .lines()
        .find(|l| l.starts_with("app "))
        .unwrap_or_else(|| panic!("{images}"));
    assert!(line.contains("fresh") && line.contains("1.0.0"), "{images}");
    let image = daemon.cli(&["image", "app"]);
    assert!(image.contains("app: fresh, current 1.0.0"), "{image}");
    assert!(
        image
            .lines()
            .any(|l| l.starts_with("1.0.0 ") && l.contains("initial")),
        "{image}"
    );
    let jobs = daemon.cli(&["jobs"]);
    let job_line = jobs
        .lines()
        .find(|l| l.contains(" app "))
        .unwrap_or_else(|| panic!("{jobs}"));
    assert!(
        job_line.contains("succeeded") && job_line.contains("1.0.0"),
        "{jobs}"
    );
    let id = job_line.split_whitespace().next().unwrap().to_owned();
    let log = daemon.cli(&["log", &id]);
    // Built natively (no RUN): the log says what it did, step by step.
    assert!(
        log.contains("line 2: COPY") && log.contains("/app:1.0.0 sha256:"),
        "{log}"
    );
    let json: Value = serde_json::from_str(&daemon.cli(&["image", "app", "--json"])).unwrap();
    assert_eq!(json["current_version"], "1.0.0");

    let out = daemon.cli(&["rebuild", "app"]);
    assert!(out.contains("rebuild of app queued"), "{out}");
    // The manual rebuild publishes 1.0.1.
    daemon.wait_version("app", "1.0.1", WAIT);
    assert_eq!(daemon.image("app")["versions"][1]["trigger"], "manual");

    // Errors go to stderr with a non-zero status.
    let out = Command::new(rebased_bin())
        .args(["image", "nosuch", "--api", &daemon.api])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let out = Command::new(rebased_bin())
        .args(["status", "--api", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the API"));
}
