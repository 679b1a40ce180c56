//! Versions are never lost or overwritten: foreign tags, crashes at the
//! worst moments, rollback and hold, and a lost state directory.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::time::Duration;

use rebased_e2e::{image_table, Daemon, Setup};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(180);

/// `app` from `base:latest` v1, floating tags `1.0`, `1`, `latest`, one
/// attempt per build.
fn setup(extra_daemon: &str) -> Setup {
    let s = Setup::new();
    let host = s.host();
    let ctx = s.context(
        "app",
        &format!("FROM {host}/base:latest\nCOPY hello /hello\n"),
    );
    s.write_config(
        &format!("poll = \"*/1 * * * * *\"\nsettle = \"0s\"\n{extra_daemon}\n[builder]\nmax_attempts = 1"),
        &image_table(
            "app",
            &ctx,
            &format!("{host}/app"),
            "tags = [\"{major}.{minor}\", \"{major}\", \"latest\"]\n",
        ),
    );
    s
}

fn image(d: &Daemon) -> Value {
    d.image("app")
}

fn floating_on(s: &Setup, digest: &str) -> bool {
    ["1.0", "1", "latest"]
        .iter()
        .all(|t| s.registry.digest(&format!("app:{t}")).as_deref() == Some(digest))
}

#[test]
fn a_foreign_image_at_the_next_version_is_never_overwritten() {
    let s = setup("");
    let daemon = s.start();
    daemon.wait_version("app", "1.0.0", WAIT);
    // Someone pushes something else as 1.0.1 by hand.
    let foreign = s.bases.push(&s.registry, "app:1.0.1", "foreign");
    s.bases.push(&s.registry, "base:latest", "v2");
    let err = daemon.wait_failing("app", WAIT);
    assert!(
        err.contains(&format!("{}/app:1.0.1", s.registry.host))
            && err.contains("refusing to overwrite"),
        "{err}"
    );
    assert_eq!(
        s.registry.digest("app:1.0.1").as_deref(),
        Some(foreign.as_str()),
        "1.0.1 untouched"
    );
    let v100 = s.registry.digest("app:1.0.0").unwrap();
    assert!(floating_on(&s, &v100), "floating tags stay on 1.0.0");
    assert_eq!(image(&daemon)["current_version"], "1.0.0");
}

fn crash_at(failpoint: &str) {
    let s = setup("");
    let daemon = s.start();
    daemon.wait_version("app", "1.0.0", WAIT);
    drop(daemon);
    // Run with the failpoint armed: the base moves, the daemon dies mid-publish.
    let mut daemon = s.start_with_env(&[("REBASED_FAILPOINT", failpoint)]);
    s.bases.push(&s.registry, "base:latest", "v2");
    let status = daemon.wait_exit(WAIT);
    assert!(!status.success(), "the failpoint aborts the daemon");
    assert!(
        s.registry.digest("app:1.0.1").is_some(),
        "1.0.1 was pushed before the crash"
    );

    let daemon = s.start();
    daemon.wait_version("app", "1.0.1", WAIT);
    std::thread::sleep(Duration::from_secs(3));
    let v101 = s.registry.digest("app:1.0.1").unwrap();
    assert!(
        floating_on(&s, &v101),
        "floating tags end on the newest version"
    );
    let tags = s.registry.tags("app");
    assert!(!tags.contains(&"1.0.2".to_owned()), "{tags:?}");
    let img = image(&daemon);
    let versions = img["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{img:#}");
    assert_eq!(
        versions[1]["digest"],
        Value::String(v101.clone()),
        "the ledger agrees with the registry"
    );
    assert_eq!(versions[0]["superseded_by"], "1.0.1");
    let jobs = daemon.get("/v1/jobs");
    let published = jobs
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["published"] == "1.0.1")
        .count();
    assert_eq!(published, 1, "one job published 1.0.1");
}

#[test]
fn a_crash_after_the_version_push_is_adopted_after_restart() {
    crash_at("after-version-push");
}

#[test]
fn a_crash_after_the_first_floating_tag_is_finished_after_restart() {
    crash_at("after-first-floating-tag");
}

#[test]
fn rollback_holds_until_resume_then_the_next_version_supersedes_the_held_one() {
    let s = setup("");
    let daemon = s.start();
    daemon.wait_version("app", "1.0.0", WAIT);
    let v100 = s.registry.digest("app:1.0.0").unwrap();
    s.bases.push(&s.registry, "base:latest", "v2");
    daemon.wait_version("app", "1.0.1", WAIT);

    let out = daemon.cli(&["rollback", "app", "--to", "1.0.0"]);
    assert!(out.contains("rolled back from 1.0.1 to 1.0.0"), "{out}");
    assert!(floating_on(&s, &v100), "floating tags back on 1.0.0");
    assert_eq!(image(&daemon)["state"], "held");

    // Held: a base update builds nothing.
    s.bases.push(&s.registry, "base:latest", "v3");
    std::thread::sleep(Duration::from_secs(4));
    assert!(!s.registry.tags("app").contains(&"1.0.2".to_owned()));
    assert_eq!(image(&daemon)["state"], "held");
    assert!(floating_on(&s, &v100));

    // A rebuild of a held image is refused, saying how to go on.
    let (code, _, err) = daemon.cli_output(&["rebuild", "app"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("409")
            && err.contains("app is held (rolled back to 1.0.0)")
            && err.contains("`rebased resume app`")
            && err.contains("--force"),
        "{err}"
    );
    assert_eq!(image(&daemon)["state"], "held");

    let table = daemon.cli(&["image", "app"]);
    assert!(table.contains("app: held, current 1.0.0"), "{table}");
    assert!(
        table.contains("rollbacks:") && table.contains("1.0.1  1.0.0"),
        "{table}"
    );

    let out = daemon.cli(&["resume", "app"]);
    let queued = out
        .split("queued as job ")
        .nth(1)
        .unwrap_or_else(|| panic!("resume names the job it queued: {out}"))
        .trim()
        .to_owned();
    daemon.wait_version("app", "1.0.2", WAIT);
    let job = daemon.get(&format!("/v1/jobs/{queued}"));
    assert_eq!(job["published"], "1.0.2", "{job:#}");
    assert_eq!(job["attempts"], 1, "attempts count from 1: {job:#}");
    let v102 = s.registry.digest("app:1.0.2").unwrap();
    assert!(floating_on(&s, &v102));
    let img = image(&daemon);
    let versions = img["versions"].as_array().unwrap();
    let v = |name: &str| {
        versions
            .iter()
            .find(|v| v["version"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        v("1.0.2")["supersedes"],
        "1.0.0",
        "the new version supersedes the held one"
    );
    assert_eq!(v("1.0.0")["superseded_by"], "1.0.2");
    assert_eq!(v("1.0.1")["superseded_by"], "1.0.0");
    assert_eq!(v("1.0.1")["reason"]["trigger"], "rollback");
    // The ledger is append-only: 1.0.0's first supersession (by 1.0.1,
    // after a base update) stays beside the one by 1.0.2.
    let history = |name: &str| -> Vec<(String, String)> {
        v(name)["supersessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["by"].as_str().unwrap().to_owned(),
                    s["reason"]["trigger"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(
        history("1.0.0"),
        [pair("1.0.1", "poll"), pair("1.0.2", "poll")],
        "{img:#}"
    );
    assert_eq!(
        v("1.0.0")["supersessions"][0]["reason"]["bases"][0]["before"],
        v("1.0.0")["bases"][format!("{}/base:latest", s.host())],
        "with the base change of the time"
    );
    assert_eq!(history("1.0.1"), [pair("1.0.0", "rollback")]);
    let table = daemon.cli(&["image", "app"]);
    assert!(
        table.contains("superseded more than once:") && table.contains("1.0.0    1.0.1"),
        "{table}"
    );
    assert_eq!(
        s.registry.raw_manifest("app:1.0.2")["annotations"]["io.rebased.supersedes"],
        "1.0.0"
    );
    assert_eq!(img["rollbacks"].as_array().unwrap().len(), 1);

    // Held again: --force builds anyway and says so; the hold stays.
    daemon.cli(&["rollback", "app", "--to", "1.0.1"]);
    let out = daemon.cli(&["rebuild", "app", "--force"]);
    assert!(
        out.contains("rebuild of app queued as job ") && out.contains("forced: app is held"),
        "{out}"
    );
    rebased_e2e::wait_for("the forced build", WAIT, || {
        (image(&daemon)["current_version"] == "1.0.3").then_some(())
    });
    assert_eq!(image(&daemon)["state"], "held", "the hold stays");
    let v103 = rebased_e2e::wait_for("the tags", WAIT, || s.registry.digest("app:1.0.3"));
    rebased_e2e::wait_for("the floating tags on 1.0.3", WAIT, || {
        floating_on(&s, &v103).then_some(())
    });
    let out = daemon.cli(&["resume", "app"]);
    assert!(out.contains("app builds automatically again"), "{out}");
    let out = daemon.cli(&["rebuild", "app"]);
    let id = out
        .trim()
        .strip_prefix("rebuild of app queued as job ")
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    let job = rebased_e2e::wait_for("the rebuild to end", WAIT, || {
        let j = daemon.get(&format!("/v1/jobs/{id}"));
        (j["state"] != "queued" && j["state"] != "running").then_some(j)
    });
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let published = job["published"].as_str().unwrap().to_owned();
    assert_eq!(published, "1.0.4", "a manual rebuild builds: {job:#}");
    let (code, _, err) = daemon.cli_output(&["log", "999"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("404"), "a job that does not exist: {err}");
}

#[test]
fn a_lost_state_directory_is_rebuilt_from_the_registry() {
    let s = setup("");
    let mut daemon = s.start();
    daemon.wait_version("app", "1.0.0", WAIT);
    s.bases.push(&s.registry, "base:latest", "v2");
    daemon.wait_version("app", "1.0.1", WAIT);
    let before = image(&daemon);
    daemon.stop();

    fs::remove_dir_all(s.work.path().join("state")).unwrap();
    let daemon = s.start();
    daemon.wait_poll(WAIT);
    std::thread::sleep(Duration::from_secs(3));
    let after = image(&daemon);
    assert_eq!(after["current_version"], "1.0.1");
    assert_eq!(after["state"], "fresh", "{after:#}");
    let strip = |v: &Value| -> Vec<(Value, Value, Value, Value)> {
        v["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                (
                    x["version"].clone(),
                    x["digest"].clone(),
                    x["bases"].clone(),
                    x["superseded_by"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(
        strip(&after),
        strip(&before),
        "the ledger comes back from tags and annotations"
    );
    assert_eq!(after["versions"][1]["trigger"], "poll");
    assert_eq!(
        after["versions"][0]["reason"]["bases"][0]["after"],
        before["versions"][0]["reason"]["bases"][0]["after"]
    );
    let tags = s.registry.tags("app");
    assert!(
        !tags.contains(&"1.0.2".to_owned()),
        "nothing rebuilt: {tags:?}"
    );
    assert!(
        daemon.get("/v1/jobs").as_array().unwrap().is_empty(),
        "no job at all"
    );
}
