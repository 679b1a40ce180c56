//! Scheduling end to end: cascades in dependency order, and jobs that
//! survive `kill -9`.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::time::Duration;

use rebased_e2e::{image_table, wait_for, Setup};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(180);

/// An `[[image]]` of `repo` with the floating tag `latest`.
fn image(name: &str, ctx: &std::path::Path, repo: &str) -> String {
    image_table(name, ctx, repo, "tags = [\"latest\"]\n")
}

/// Polls every second, no settle time.
const DAEMON: &str = "poll = \"*/1 * * * * *\"\nsettle = \"0s\"\n";

#[test]
fn a_base_update_cascades_to_images_built_from_managed_images() {
    let s = Setup::new();
    let (registry, bases, host) = (&s.registry, &s.bases, s.host());
    // b comes first in the config but is built FROM a's repository.
    let b = s.context("b", &format!("FROM {host}/a:latest\nCOPY hello /hello-b\n"));
    let a = s.context(
        "a",
        &format!("FROM {host}/base:latest\nCOPY hello /hello-a\n"),
    );
    s.write_config(
        DAEMON,
        &(image("b", &b, &format!("{host}/b")) + &image("a", &a, &format!("{host}/a"))),
    );

    let daemon = s.start();
    wait_for("a and b at 1.0.0", WAIT, || {
        (daemon.fresh_version("a").as_deref() == Some("1.0.0")
            && daemon.fresh_version("b").as_deref() == Some("1.0.0"))
        .then_some(())
    });

    let d2 = bases.push(registry, "base:latest", "v2");
    wait_for("b at 1.0.1", WAIT, || {
        (daemon.fresh_version("b").as_deref() == Some("1.0.1")).then_some(())
    });
    assert_eq!(daemon.fresh_version("a").as_deref(), Some("1.0.1"));

    // a was built from the new base, b from a's new version.
    let a101 = registry.digest("a:1.0.1").unwrap();
    assert_eq!(
        registry.raw_manifest("a:1.0.1")["annotations"]["org.opencontainers.image.base.digest"],
        Value::String(d2)
    );
    let b_ann = &registry.raw_manifest("b:1.0.1")["annotations"];
    assert_eq!(
        b_ann["org.opencontainers.image.base.digest"],
        Value::String(a101.clone())
    );
    assert_eq!(
        b_ann["org.opencontainers.image.base.name"],
        Value::String(format!("{host}/a:latest"))
    );

    // In that order, and b's new version says why.
    let a_job = daemon
        .jobs_of("a")
        .into_iter()
        .find(|j| j["published"] == "1.0.1")
        .unwrap();
    let b_job = daemon
        .jobs_of("b")
        .into_iter()
        .find(|j| j["published"] == "1.0.1")
        .unwrap();
    assert!(
        b_job["started_at"].as_str().unwrap() >= a_job["finished_at"].as_str().unwrap(),
        "b started before a finished: {a_job:#} {b_job:#}"
    );
    let b_img = daemon.image("b");
    let old = &b_img["versions"][0];
    assert_eq!(old["superseded_by"], "1.0.1");
    assert_eq!(old["reason"]["trigger"], "cascade");
    assert_eq!(old["reason"]["bases"][0]["after"], Value::String(a101));

    // Exactly one new version each.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!registry.tags("a").contains(&"1.0.2".to_owned()));
    assert!(!registry.tags("b").contains(&"1.0.2".to_owned()));
    let base = daemon.base(&format!("{host}/base:latest"));
    assert_eq!(base["dependents"], serde_json::json!(["a"]));
}

#[test]
fn a_queued_job_survives_kill_9_and_runs_once() {
    let s = Setup::new();
    let (registry, bases, host) = (&s.registry, &s.bases, s.host());
    let mut images = String::new();
    for name in ["x", "y"] {
        let ctx = s.context(name, &format!("FROM {host}/base:latest\nCOPY . /data\n"));
        // Some bulk so that a build takes a moment.
        let bulk: Vec<u8> = (0..8_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        fs::write(ctx.join("bulk.bin"), bulk).unwrap();
        images += &image(name, &ctx, &format!("{host}/{name}"));
    }
    s.write_config(&format!("{DAEMON}max_concurrent_builds = 1\n"), &images);

    let mut daemon = s.start();
    wait_for("x and y at 1.0.0", WAIT, || {
        (daemon.fresh_version("x").as_deref() == Some("1.0.0")
            && daemon.fresh_version("y").as_deref() == Some("1.0.0"))
        .then_some(())
    });
    // New bulk, so that the rebuilds make their layer again (the native
    // layer cache would reuse an unchanged one in a moment, and the
    // running-and-queued window below could pass between two looks).
    for name in ["x", "y"] {
        let bulk: Vec<u8> = (0..8_000_000u32)
            .map(|i| (i.wrapping_mul(2_246_822_519) >> 13) as u8)
            .collect();
        fs::write(s.dir().join(name).join("bulk.bin"), bulk).unwrap();
    }
    bases.push(registry, "base:latest", "v2");
    // Crash while one job runs and the other waits.
    wait_for("one job running and one queued", WAIT, || {
        let jobs = daemon.get("/v1/jobs");
        let jobs = jobs.as_array().unwrap();
        let running = jobs.iter().filter(|j| j["state"] == "running").count();
        let queued = jobs.iter().filter(|j| j["state"] == "queued").count();
        (running == 1 && queued == 1).then_some(())
    });
    daemon.kill_hard();

    let daemon = s.start();
    wait_for("x and y at 1.0.1 after restart", WAIT, || {
        (daemon.fresh_version("x").as_deref() == Some("1.0.1")
            && daemon.fresh_version("y").as_deref() == Some("1.0.1"))
        .then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    for name in ["x", "y"] {
        let tags = registry.tags(name);
        assert!(!tags.contains(&"1.0.2".to_owned()), "{name}: {tags:?}");
        let published: Vec<Value> = daemon
            .jobs_of(name)
            .into_iter()
            .filter(|j| j["published"] == "1.0.1")
            .collect();
        assert_eq!(
            published.len(),
            1,
            "{name}: one job published 1.0.1: {published:#?}"
        );
        assert_eq!(daemon.image(name)["versions"].as_array().unwrap().len(), 2);
    }
    let jobs = daemon.get("/v1/jobs");
    assert!(
        jobs.as_array()
            .unwrap()
            .iter()
            .all(|j| j["state"] == "succeeded"),
        "no job lost or left behind: {jobs:#}"
    );
}
