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

/// issue 19: the paged lists (limit, cursor, state, q, view=summary), the
/// ETag and 304, gzip; the answer without a query as it always was.
#[test]
fn paged_lists_with_cursor_filters_etag_and_gzip() {
    let s = Setup::new();
    let dockerfile = format!("FROM {}/base:latest\nCOPY hello /hello\n", s.host());
    let mut tables = String::new();
    for name in ["web-a", "web-b", "worker"] {
        let ctx = s.context(name, &dockerfile);
        tables.push_str(&image_table(
            name,
            &ctx,
            &format!("{}/{name}", s.host()),
            "",
        ));
    }
    s.write_config("poll = \"0 0 0 1 1 *\"\nsettle = \"0s\"", &tables);
    let daemon = s.start();
    for name in ["web-a", "web-b", "worker"] {
        daemon.wait_version(name, "1.0.0", WAIT);
    }

    // Without a query: the array of full views, as before.
    let every = daemon.get("/v1/images");
    let every = every.as_array().unwrap();
    assert_eq!(every.len(), 3);
    assert_eq!(every[0]["versions"][0]["version"], "1.0.0");

    // Pages of two, in name order, the cursor opaque but followed.
    let first = daemon.get("/v1/images?limit=2&view=summary");
    let names = |p: &Value| -> Vec<String> {
        p["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&first), ["web-a", "web-b"]);
    assert_eq!(first["total"], 3);
    assert_eq!(first["counts"]["fresh"], 3);
    assert_eq!(first["counts"]["failing"], 0);
    let item = &first["items"][0];
    assert!(
        item.get("versions").is_none(),
        "a summary has no history: {item}"
    );
    assert_eq!(item["current_version"], "1.0.0");
    assert!(item["current_built_at"].is_string(), "{item}");
    assert_eq!(item["last_job"]["state"], "succeeded");
    assert!(item["bases"][0]["last_changed"].is_string(), "{item}");
    let next = first["next"].as_str().unwrap();
    let second = daemon.get(&format!("/v1/images?limit=2&view=summary&cursor={next}"));
    assert_eq!(names(&second), ["worker"]);
    assert!(second.get("next").is_none(), "{second}");

    // Filters: a name search and a state; the full form has versions.
    let web = daemon.get("/v1/images?q=WEB");
    assert_eq!(names(&web), ["web-a", "web-b"]);
    assert_eq!(web["items"][0]["versions"][0]["version"], "1.0.0");
    let failing = daemon.get("/v1/images?state=failing&view=summary");
    assert_eq!(failing["total"], 0);
    assert_eq!(failing["counts"]["fresh"], 3);

    // Bad parameters are 400s that say why.
    let client = reqwest::blocking::Client::new();
    for q in [
        "limit=0",
        "limit=5000",
        "state=sleepy",
        "cursor=nonsense",
        "limit=x",
    ] {
        let r = client
            .get(format!("{}/v1/images?{q}", daemon.api))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{q}");
        let body: Value = r.json().unwrap();
        assert!(body["error"].is_string(), "{q}: {body}");
    }

    // Jobs: newest first, paged, filtered by image.
    let jobs = daemon.get("/v1/jobs?limit=1&q=web");
    assert_eq!(jobs["total"], 2);
    assert_eq!(jobs["items"].as_array().unwrap().len(), 1);
    let newest = jobs["items"][0]["id"].as_u64().unwrap();
    let next = jobs["next"].as_str().unwrap();
    let older = daemon.get(&format!("/v1/jobs?limit=1&q=web&cursor={next}"));
    assert!(older["items"][0]["id"].as_u64().unwrap() < newest);
    assert!(older.get("next").is_none(), "{older}");
    assert!(
        daemon.get("/v1/jobs").is_array(),
        "without a query: the array"
    );

    // ETag and If-None-Match: 304 while nothing changed, 200 after.
    for path in [
        "/v1/images?limit=100&view=summary",
        "/v1/images",
        "/v1/jobs",
    ] {
        let r = client.get(format!("{}{path}", daemon.api)).send().unwrap();
        let tag = r.headers()["etag"].to_str().unwrap().to_owned();
        let again = client
            .get(format!("{}{path}", daemon.api))
            .header("if-none-match", &tag)
            .send()
            .unwrap();
        assert_eq!(again.status().as_u16(), 304, "{path}");
        assert!(again.bytes().unwrap().is_empty());
        let stale = client
            .get(format!("{}{path}", daemon.api))
            .header("if-none-match", "W/\"0000\"")
            .send()
            .unwrap();
        assert_eq!(stale.status().as_u16(), 200, "{path}");
    }

    // gzip when asked for, the same JSON inside.
    let r = client
        .get(format!("{}/v1/images", daemon.api))
        .header("accept-encoding", "gzip")
        .send()
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&r.bytes().unwrap()[..]),
        &mut text,
    )
    .unwrap();
    let unzipped: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(unzipped.as_array().unwrap().len(), 3);

    // The CLI reads the pages.
    let table = daemon.cli(&["images"]);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(
        rows[0].starts_with("web-a ") && rows[0].contains("fresh"),
        "{table}"
    );
}

/// The full list answers the same bytes and tag while nothing it shows
/// moved (that they are one rendering is the read model's unit tests'
/// to show), and follows at once a job, a store write (a rollback's
/// hold) and, within a second and a half, a Dockerfile's edit.
#[test]
fn the_full_list_follows_every_change() {
    let (s, daemon) = start();
    let client = reqwest::blocking::Client::new();
    let list = || {
        let r = client
            .get(format!("{}/v1/images", daemon.api))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let tag = r.headers()["etag"].to_str().unwrap().to_owned();
        let body: Value = r.json().unwrap();
        (tag, body)
    };
    // The first build's job may still be finishing after its version is
    // recorded.
    let (tag, first) = rebased_e2e::wait_for("a fresh image", WAIT, || {
        let (t, l) = list();
        (l[0]["state"] == "fresh").then_some((t, l))
    });
    let (again, same) = list();
    assert_eq!((&again, &same), (&tag, &first));

    // A job: the list shows it, then the new version.
    assert_eq!(daemon.post("/v1/images/app/rebuild", None), 202);
    let (_, queued) = list();
    // The job, or already its version: never the list from before it.
    assert!(
        ["queued", "building"].contains(&queued[0]["state"].as_str().unwrap())
            || queued[0]["current_version"] == "1.0.1",
        "{queued}"
    );
    daemon.wait_version("app", "1.0.1", WAIT);
    let (built_tag, built) = list();
    assert_ne!(built_tag, tag);
    assert_eq!(built[0]["current_version"], "1.0.1", "{built}");
    assert_eq!(built[0]["versions"].as_array().unwrap().len(), 2);

    // A rollback writes the store: the very next list shows the hold.
    let (code, answer) = daemon.post_body(
        "/v1/images/app/rollback",
        &[("content-type", "application/json")],
        r#"{"to": "1.0.0"}"#,
    );
    assert_eq!(code, 200, "{answer}");
    let (held_tag, held) = list();
    assert_ne!(held_tag, built_tag);
    assert_eq!(held[0]["state"], "held", "{held}");
    assert_eq!(held[0]["current_version"], "1.0.0", "{held}");

    // A Dockerfile's edit is no store write; the list shows the new base
    // once the Dockerfile is looked at again (within a second and a half).
    let other = format!("{}/other:latest", s.host());
    std::fs::write(
        s.dir().join("app/Dockerfile"),
        format!("FROM {other}\nCOPY hello /hello\n"),
    )
    .unwrap();
    let moved = rebased_e2e::wait_for(
        "the edited base in the list",
        Duration::from_secs(10),
        || {
            let (t, l) = list();
            (l[0]["bases"][0]["reference"] == other.as_str()).then_some(t)
        },
    );
    assert_ne!(moved, held_tag);
}
