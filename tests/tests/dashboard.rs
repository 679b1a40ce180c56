//! issue 19: the dashboard in a real browser. The real daemon, a real
//! registry and a real base update; `tests/browser/dashboard.js` drives
//! Debian's chromium headless through Playwright and checks each view with
//! axe-core; this side moves the base when the script says the fleet shows
//! 1.0.0, and checks the registry with skopeo after the rollback.
//! Screenshots of each view go to `target/tmp/dashboard-shots`.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rebased_e2e::{image_table, Setup};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);
const TOKEN: &str = "dashboard-test-token";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

#[test]
fn dashboard_in_chromium_follows_a_base_update_and_rolls_back_with_the_token() {
    assert!(
        browser_dir().join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules is missing: run `npm ci` in tests/browser (scripts/test.sh does)"
    );
    let s = Setup::new();
    let base_v1 = s
        .registry
        .digest("base:latest")
        .expect("base:latest pushed");
    let token = s.dir().join("api-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let ctx = s.context(
        "app",
        &format!("FROM {}/base:latest\nCOPY hello /hello\n", s.host()),
    );
    // `child` is built FROM app: the cascade graph's second layer.
    let child = s.context(
        "child",
        &format!("FROM {}/app:latest\nCOPY hello /child\n", s.host()),
    );
    s.write_config(
        &format!(
            "api_token_file = \"{}\"\npoll = \"0 0 0 1 1 *\"\nsettle = \"0s\"",
            token.display()
        ),
        &format!(
            "{}{}",
            image_table("app", &ctx, &format!("{}/app", s.host()), ""),
            image_table("child", &child, &format!("{}/child", s.host()), "")
        ),
    );
    let daemon = s.start();
    daemon.wait_version("app", "1.0.0", WAIT);
    daemon.wait_version("child", "1.0.0", WAIT);

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-shots");
    let _ = std::fs::remove_dir_all(&shots);
    let mut node = Command::new("node")
        .arg(browser_dir().join("dashboard.js"))
        .current_dir(browser_dir())
        .env("REBASED_URL", &daemon.api)
        .env("REBASED_TOKEN", TOKEN)
        .env("REBASED_IMAGE", "app")
        .env("REBASED_CHILD", "child")
        .env("SHOTS_DIR", &shots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node must be installed (scripts/test.sh installs nodejs)");
    let mut stdin = node.stdin.take().unwrap();
    let stdout = node.stdout.take().unwrap();
    let stderr = node.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let start = Instant::now();
    let mut result: Option<Value> = None;
    let mut base_v2 = None;
    let mut out = String::new();
    while result.is_none() && start.elapsed() < Duration::from_secs(600) {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) else {
            if node.try_wait().unwrap().is_some() && rx.try_recv().is_err() {
                break;
            }
            continue;
        };
        out.push_str(&line);
        out.push('\n');
        if line == "STEP fleet-1.0.0" {
            // The base moves; a check finds it (the poll is yearly).
            base_v2 = Some(s.bases.push(&s.registry, "base:latest", "v2"));
            assert_eq!(daemon.post("/v1/check", Some(TOKEN)), 202);
            writeln!(stdin, "GO").unwrap();
        } else if let Some(json) = line.strip_prefix("RESULT ") {
            result = Some(serde_json::from_str(json).unwrap());
        }
    }
    let status = node.wait().unwrap();
    let err = err_thread.join().unwrap();
    let r = result.unwrap_or_else(|| panic!("no result from the browser test:\n{out}\n{err}"));
    assert!(
        status.success() && r.get("error").is_none(),
        "browser test failed: {}\n{err}\n{r:#}",
        r["error"]
    );
    let base_v2 = base_v2.expect("the script asked for the base update");
    let c = &r["checks"];

    // The fleet at 1.0.0, then 1.0.1 without a reload.
    assert_eq!(c["fleet_shows_1_0_0"], true, "{r:#}");
    assert_eq!(c["fleet_turns_1_0_1_without_reload"], true, "{r:#}");
    // The image page: 1.0.0 superseded by 1.0.1, with both base digests.
    assert_eq!(
        c["timeline_versions"],
        serde_json::json!(["1.0.1", "1.0.0"])
    );
    assert!(
        c["superseded_text"]
            .as_str()
            .unwrap()
            .contains("superseded by 1.0.1"),
        "{r:#}"
    );
    let digests: Vec<&str> = c["supersession_digests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        digests.contains(&base_v1.as_str()) && digests.contains(&base_v2.as_str()),
        "before {base_v1} and after {base_v2} in {digests:?}"
    );
    // A wrong token is refused, and the page says so.
    assert!(
        c["wrong_token_message"]
            .as_str()
            .unwrap()
            .contains("Wrong token"),
        "{r:#}"
    );
    assert!(
        c["wrong_token_notice"].as_str().unwrap().contains("wrong"),
        "{r:#}"
    );
    // The rollback's confirmation names the tag that moves; the token is
    // kept in sessionStorage, no cookie is set.
    let confirm = c["confirm_text"].as_str().unwrap();
    assert!(
        confirm.contains("latest") && confirm.contains("1.0.0"),
        "{confirm}"
    );
    assert_eq!(c["held_shown"], true);
    assert_eq!(c["token_in_session_storage"], TOKEN);
    assert_eq!(c["no_cookies"], true);
    assert_eq!(c["no_cookies_main"], true);
    assert!(c["job_log_chars"].as_u64().unwrap() > 0, "{r:#}");
    // Two layers: app, then child right of it, one edge between.
    assert_eq!(c["graph_nodes"], 2, "{r:#}");
    assert_eq!(c["graph_edges"], 1, "{r:#}");
    assert_eq!(c["graph_child_right_of_app"], true, "{r:#}");
    assert_eq!(c["keyboard_reaches_jobs"], true, "{r:#}");

    // The event stream (a stand-in until the daemon has the route): the
    // page followed it and read the fleet again on its message; when the
    // response ended (a drop) the EventSource stayed CONNECTING (0) and
    // opened the stream again, which by the EventSource standard sends
    // `Last-Event-ID` (the interception cannot show that header), and the
    // next event came through.
    let streams = c["event_streams"].as_array().unwrap();
    assert!(streams.len() >= 2, "no reconnect: {r:#}");
    let seen: Vec<&str> = c["events_seen"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        seen.starts_with(&["open", "published 41", "error 0", "open", "published 42"]),
        "{seen:?}"
    );
    assert!(
        c["fleet_reads_with_events"].as_u64().unwrap() >= 2,
        "the fleet was not read again on a message: {r:#}"
    );

    // The rollback: held, and `latest` is 1.0.0's digest in the registry.
    assert_eq!(daemon.image("app")["state"], "held");
    let versions = s.registry.versions("app");
    let latest = s.registry.inspect("app:latest");
    assert_eq!(
        latest["Digest"].as_str(),
        versions.get("1.0.0").map(String::as_str),
        "latest after the rollback"
    );
    assert_ne!(versions.get("1.0.0"), versions.get("1.0.1"));

    // No page logged a console error (the browser's own log line of each
    // 401 the token checks provoke is counted apart, and only those).
    assert_eq!(
        r["console_errors"],
        serde_json::json!([]),
        "console errors: {r:#}"
    );
    // axe: no serious or critical violation in any view.
    let axe = r["axe"].as_object().unwrap();
    for view in [
        "fleet",
        "fleet (dark)",
        "image",
        "token dialog",
        "jobs",
        "job",
        "bases",
        "graph",
    ] {
        assert_eq!(
            axe.get(view),
            Some(&serde_json::json!([])),
            "axe, {view}: {:#}",
            axe.get(view).unwrap_or(&Value::Null)
        );
    }
    // A screenshot of each view.
    for name in [
        "fleet",
        "fleet-1.0.1",
        "fleet-dark",
        "image",
        "token-wrong",
        "rollback-confirm",
        "image-held",
        "jobs",
        "job",
        "bases",
        "graph",
    ] {
        let file = shots.join(format!("{name}.png"));
        let len = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        assert!(len > 1000, "{} missing or empty", file.display());
    }
}
