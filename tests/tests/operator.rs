//! An operator's first hour (issue 22): exit codes that tell the truth,
//! errors that say what to do, logs and metrics an operator reads, and a
//! Dockerfile that appears being picked up without a manual check.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::process::{Command, Output};
use std::time::Duration;

use rebased_e2e::{free_port, image_table, rebased_bin, wait_for, Setup};

const WAIT: Duration = Duration::from_secs(120);

fn once(config: &std::path::Path) -> Output {
    Command::new(rebased_bin())
        .args(["once", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `once` exited 0 when a Dockerfile could not be read or a base could
/// not be checked; now each is an error line and exit 1.
#[test]
fn once_exits_non_zero_when_a_base_or_a_dockerfile_could_not_be_read() {
    let s = Setup::new();
    let host = s.host();
    let ctx = s.context(
        "app",
        &format!("FROM {host}/base:latest\nCOPY hello /hello\n"),
    );
    let missing = s.dir().join("nodf");
    fs::create_dir_all(&missing).unwrap();
    let gone = s.context("gone", &format!("FROM {host}/nosuch:latest\n"));
    let images = format!(
        "{}{}{}",
        image_table("app", &ctx, &format!("{host}/app"), ""),
        image_table("nodf", &missing, &format!("{host}/nodf"), ""),
        image_table("gone", &gone, &format!("{host}/gone"), ""),
    );
    let config = s.write_config("settle = \"0s\"", &images);
    let out = once(&config);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "error: image nodf: cannot read Dockerfile {}",
            missing.join("Dockerfile").display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "error: base {host}/nosuch:latest could not be checked:"
        )),
        "{err}"
    );
    assert!(
        s.registry.digest("app:1.0.0").is_some(),
        "the others are built"
    );

    // Only the good image: exit 0.
    let config = s.write_config(
        "settle = \"0s\"",
        &image_table("app", &ctx, &format!("{host}/app"), ""),
    );
    let out = once(&config);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Under `run`, an image whose Dockerfile did not exist stayed failing
/// after the file was created, and status showed no next poll; one that
/// goes away later makes the image failing again.
#[test]
fn a_dockerfile_that_appears_is_picked_up_by_the_next_round() {
    let s = Setup::new();
    let host = s.host();
    let ctx = s.dir().join("late");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("hello"), "hello\n").unwrap();
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"0s\"",
        &image_table("late", &ctx, &format!("{host}/late"), ""),
    );
    let daemon = s.start();
    let error = daemon.wait_failing("late", WAIT);
    assert!(error.contains("cannot read Dockerfile"), "{error}");
    let status = daemon.cli(&["status"]);
    assert!(!status.contains("next poll: -"), "{status}");
    fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {host}/base:latest\nCOPY hello /hello\n"),
    )
    .unwrap();
    daemon.wait_version("late", "1.0.0", WAIT);
    // Gone again while nothing else moves: a round with no change still
    // looks at every image's Dockerfile and says so.
    fs::remove_file(ctx.join("Dockerfile")).unwrap();
    let error = daemon.wait_failing("late", WAIT);
    assert!(error.contains("cannot read Dockerfile"), "{error}");
}

/// A job that failed before its build started answered its log with a 404.
#[test]
fn the_log_of_a_job_that_failed_before_building_says_why() {
    let s = Setup::new();
    let host = s.host();
    let ctx = s.context(
        "app",
        &format!("FROM {host}/base:latest\nCOPY hello /hello\n"),
    );
    s.write_config(
        "poll = \"0 0 1 1 *\"\nsettle = \"0s\"\n[builder]\nmax_attempts = 1",
        &image_table("app", &ctx, &format!("{host}/app"), ""),
    );
    let daemon = s.start();
    daemon.wait_version("app", "1.0.0", WAIT);
    fs::remove_file(ctx.join("Dockerfile")).unwrap();
    let out = daemon.cli(&["rebuild", "app"]);
    let id = out
        .trim()
        .strip_prefix("rebuild of app queued as job ")
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    let job = wait_for("the job to fail", WAIT, || {
        let j = daemon.get(&format!("/v1/jobs/{id}"));
        (j["state"] == "failed").then_some(j)
    });
    assert_eq!(job["attempts"], 1, "{job:#}");
    let log = daemon.cli(&["log", &id]);
    assert!(
        log.starts_with(&format!("job {id} (app): failed, attempts 1: failed before its build started: cannot read Dockerfile")),
        "{log}"
    );
    let jobs = daemon.cli(&["jobs"]);
    let row: Vec<&str> = jobs
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(row[2..5], ["failed", "manual", "1"], "{jobs}");
}

/// Two daemons on one state directory, one port: each error names the
/// cause once and what to do.
#[test]
fn a_locked_state_dir_and_a_port_in_use_are_named() {
    let s = Setup::new();
    let host = s.host();
    let ctx = s.context("app", &format!("FROM {host}/base:latest\n"));
    let config = s.write_config("", &image_table("app", &ctx, &format!("{host}/app"), ""));
    let daemon = s.start();
    daemon.wait_poll(WAIT);

    // Same state_dir, another port.
    let other = s.dir().join("other.toml");
    let text_cfg = fs::read_to_string(&config)
        .unwrap()
        .replace(&s.listen, &format!("127.0.0.1:{}", free_port()));
    fs::write(&other, text_cfg).unwrap();
    let out = Command::new(rebased_bin())
        .args(["run", "--config"])
        .arg(&other)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let state = s.dir().join("state");
    assert!(
        err.contains(&format!(
            "another rebased is running on state_dir {}",
            state.display()
        )),
        "{err}"
    );
    assert!(!err.contains("WouldBlock"), "{err}");
    assert_eq!(
        err.matches("another rebased").count(),
        1,
        "said once: {err}"
    );

    // Another state_dir, the same port.
    let third = s.dir().join("third.toml");
    let text_cfg = fs::read_to_string(&config).unwrap().replace(
        &state.display().to_string(),
        &s.dir().join("state3").display().to_string(),
    );
    fs::write(&third, text_cfg).unwrap();
    let out = Command::new(rebased_bin())
        .args(["run", "--config"])
        .arg(&third)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("daemon.listen = \"{}\"", s.listen)) && err.contains("in use"),
        "{err}"
    );
    assert_eq!(
        err.matches("Address already in use").count(),
        1,
        "said once: {err}"
    );
}

/// A plain-http registry without `insecure = true` failed with
/// "received corrupt message"; the hint says what to set.
#[test]
fn plain_http_without_insecure_says_to_set_it() {
    let s = Setup::new();
    let host = s.host();
    let ctx = s.context("app", &format!("FROM {host}/base:latest\n"));
    let config = s.dir().join("secure.toml");
    fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"{}\"\nlisten = \"127.0.0.1:{}\"\n{}",
            s.dir().join("state").display(),
            free_port(),
            image_table("app", &ctx, &format!("{host}/app"), "")
        ),
    )
    .unwrap();
    let out = once(&config);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{host} answers plain http: set `insecure = true` under [registries.\"{host}\"]"
        )),
        "{err}"
    );
}

/// The log written to a file: no colours, values as users write them, and
/// the per-round line at DEBUG unless something changed.
#[test]
fn a_log_file_reads_as_plain_text() {
    let s = Setup::new();
    let host = s.host();
    let ctx = s.context(
        "app",
        &format!("FROM {host}/base:latest\nCOPY hello /hello\n"),
    );
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"0s\"",
        &image_table("app", &ctx, &format!("{host}/app"), "tags = [\"latest\"]"),
    );
    let daemon = s.start_with_env(&[("RUST_LOG", "info")]);
    daemon.wait_version("app", "1.0.0", WAIT);
    s.bases.push(&s.registry, "base:latest", "v2");
    daemon.wait_version("app", "1.0.1", WAIT);
    // Quiet rounds: a second per round.
    std::thread::sleep(Duration::from_secs(4));
    let log = daemon.log_text();
    assert!(!log.contains('\u{1b}'), "no ANSI escapes in a file:\n{log}");
    for debug_form in ["Some(", "Version {", "Os {", "Published("] {
        assert!(!log.contains(debug_form), "{debug_form} in:\n{log}");
    }
    assert!(
        log.contains("outcome=published 1.0.1") || log.contains("outcome=\"published 1.0.1\""),
        "{log}"
    );
    assert!(log.contains("from=sha256:"), "a digest as written: {log}");
    let rounds = log.matches("poll round finished").count();
    assert!(
        (1..=3).contains(&rounds),
        "only rounds that saw something at INFO, not one a second: {rounds}\n{log}"
    );
}

/// issue 22: a base that could not be checked showed the image as `stale`
/// with an empty ERROR column, and `rebased image` did not show the bases.
#[test]
fn an_image_whose_base_could_not_be_checked_is_shown_as_such() {
    let s = Setup::new();
    let host = s.host();
    let nowhere = format!("127.0.0.1:{}", free_port());
    let ctx = s.context("app", &format!("FROM {nowhere}/base:latest\n"));
    let good = s.context(
        "good",
        &format!("FROM {host}/base:latest\nCOPY hello /hello\n"),
    );
    s.write_config(
        &format!("settle = \"0s\"\n[registries.\"{nowhere}\"]\ninsecure = true"),
        &format!(
            "{}{}",
            image_table("app", &ctx, &format!("{host}/app"), ""),
            image_table("good", &good, &format!("{host}/good"), "")
        ),
    );
    let daemon = s.start();
    daemon.wait_version("good", "1.0.0", WAIT);
    let image = wait_for("the failed check", WAIT, || {
        let i = daemon.image("app");
        (i["unchecked"] == true).then_some(i)
    });
    assert_eq!(
        image["state"], "stale",
        "the API's state is unchanged: {image:#}"
    );
    let list = daemon.cli(&["images"]);
    let row = list.lines().find(|l| l.starts_with("app ")).unwrap();
    assert!(row.contains(" unchecked "), "{list}");
    assert!(
        row.contains(&format!("base {nowhere}/base:"))
            && row.contains("...")
            && row
                .trim_end()
                .ends_with("Connection refused (os error 111)"),
        "the error keeps its start and its cause: {list}"
    );
    let good_row = list.lines().find(|l| l.starts_with("good ")).unwrap();
    assert!(good_row.contains(" fresh "), "{list}");

    let view = daemon.cli(&["image", "app"]);
    assert!(view.starts_with("app: unchecked"), "{view}");
    assert!(view.contains("bases:\nBASE"), "{view}");
    let base_row = view
        .lines()
        .find(|l| l.starts_with(&format!("{nowhere}/base:latest")))
        .unwrap_or_else(|| panic!("{view}"));
    assert!(base_row.contains("unreachable"), "{view}");
    let view = daemon.cli(&["image", "good"]);
    assert!(
        view.lines()
            .any(|l| l.starts_with(&format!("{host}/base:latest  sha256:"))),
        "digest and last check of a checked base: {view}"
    );

    // Metrics: every request by registry, kind and outcome (the poll, the
    // native build's pushes, the tag moves), and images by state.
    let metrics = daemon.get_text("/metrics");
    let count = |line: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    for kind in [
        "manifest_head",
        "manifest_get",
        "manifest_put",
        "blob_upload",
        "blob_mount",
    ] {
        let series = format!(
            "rebased_registry_requests_total{{registry=\"{host}\",kind=\"{kind}\",outcome=\"ok\"}}"
        );
        assert!(count(&series) >= 1, "{series}\n{metrics}");
    }
    let series = format!(
        "rebased_registry_requests_total{{registry=\"{nowhere}\",kind=\"manifest_head\",outcome=\"unreachable\"}}"
    );
    assert!(count(&series) >= 1, "{series}\n{metrics}");
    assert_eq!(count("rebased_images{state=\"fresh\"}"), 1, "{metrics}");
    assert_eq!(count("rebased_images{state=\"stale\"}"), 1, "{metrics}");
    assert_eq!(count("rebased_images{state=\"failing\"}"), 0, "{metrics}");
    assert!(
        metrics.contains("rebased_images{state=\"held\"} 0"),
        "{metrics}"
    );
    assert_eq!(count("rebased_images_unchecked"), 1, "{metrics}");
    assert_eq!(count("rebased_bases_unchecked"), 1, "{metrics}");

    let out = daemon.cli(&["check", &format!("{host}/base:latest")]);
    assert!(
        out.starts_with(&format!("checking {host}/base:latest")),
        "{out}"
    );
    let out = daemon.cli(&["check"]);
    assert!(out.starts_with("checking every base"), "{out}");
}
