//! Scheduling end to end: cascades in dependency order, and jobs that
//! survive `kill -9`.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::time::Duration;

use rebased_e2e::{free_port, wait_for, BaseMaker, Daemon, Registry};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(180);

fn context(dir: &Path, name: &str, dockerfile: &str) -> String {
    let ctx = dir.join(name);
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("hello"), format!("hello from {name}\n")).unwrap();
    fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    ctx.display().to_string()
}

fn image(name: &str, ctx: &str, repo: &str) -> String {
    format!("\n[[image]]\nname = \"{name}\"\ncontext = \"{ctx}\"\nrepository = \"{repo}\"\nversion = \"1.0.0\"\ntags = [\"latest\"]\n")
}

fn daemon_section(work: &Path, listen: &str, host: &str, extra: &str) -> String {
    format!(
        "[daemon]\nstate_dir = \"{}\"\nlisten = \"{listen}\"\npoll = \"*/1 * * * * *\"\nsettle = \"0s\"\n{extra}\n[registries.\"{host}\"]\ninsecure = true\n",
        work.join("state").display()
    )
}

/// The current version, once the image is fresh (its job done).
fn current(d: &Daemon, name: &str) -> Option<String> {
    let image = d.get(&format!("/v1/images/{name}"));
    if image["state"] != "fresh" {
        return None;
    }
    image["current_version"].as_str().map(str::to_owned)
}

fn jobs_of(d: &Daemon, name: &str) -> Vec<Value> {
    d.get("/v1/jobs")
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["image"] == name)
        .cloned()
        .collect()
}

#[test]
fn a_base_update_cascades_to_images_built_from_managed_images() {
    let registry = Registry::start();
    let host = registry.host.clone();
    let bases = BaseMaker::new();
    bases.push(&registry, "base:latest", "v1");
    let work = tempfile::tempdir().unwrap();
    // b comes first in the config but is built FROM a's repository.
    let b = context(
        work.path(),
        "b",
        &format!("FROM {host}/a:latest\nCOPY hello /hello-b\n"),
    );
    let a = context(
        work.path(),
        "a",
        &format!("FROM {host}/base:latest\nCOPY hello /hello-a\n"),
    );
    let listen = format!("127.0.0.1:{}", free_port());
    let cfg = daemon_section(work.path(), &listen, &host, "")
        + &image("b", &b, &format!("{host}/b"))
        + &image("a", &a, &format!("{host}/a"));
    let config = work.path().join("rebased.toml");
    fs::write(&config, cfg).unwrap();

    let daemon = Daemon::start(&config, &listen, &work.path().join("daemon.log"));
    wait_for("a and b at 1.0.0", WAIT, || {
        (current(&daemon, "a").as_deref() == Some("1.0.0")
            && current(&daemon, "b").as_deref() == Some("1.0.0"))
        .then_some(())
    });

    let d2 = bases.push(&registry, "base:latest", "v2");
    wait_for("b at 1.0.1", WAIT, || {
        (current(&daemon, "b").as_deref() == Some("1.0.1")).then_some(())
    });
    assert_eq!(current(&daemon, "a").as_deref(), Some("1.0.1"));

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
    let a_job = jobs_of(&daemon, "a")
        .into_iter()
        .find(|j| j["published"] == "1.0.1")
        .unwrap();
    let b_job = jobs_of(&daemon, "b")
        .into_iter()
        .find(|j| j["published"] == "1.0.1")
        .unwrap();
    assert!(
        b_job["started_at"].as_str().unwrap() >= a_job["finished_at"].as_str().unwrap(),
        "b started before a finished: {a_job:#} {b_job:#}"
    );
    let b_img = daemon.get("/v1/images/b");
    let old = &b_img["versions"][0];
    assert_eq!(old["superseded_by"], "1.0.1");
    assert_eq!(old["reason"]["trigger"], "cascade");
    assert_eq!(old["reason"]["bases"][0]["after"], Value::String(a101));

    // Exactly one new version each.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!registry.tags("a").contains(&"1.0.2".to_owned()));
    assert!(!registry.tags("b").contains(&"1.0.2".to_owned()));
    let bases_view = daemon.get("/v1/bases");
    let base = bases_view
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["reference"] == format!("{host}/base:latest"))
        .unwrap();
    assert_eq!(base["dependents"], serde_json::json!(["a"]));
}

#[test]
fn a_queued_job_survives_kill_9_and_runs_once() {
    let registry = Registry::start();
    let host = registry.host.clone();
    let bases = BaseMaker::new();
    bases.push(&registry, "base:latest", "v1");
    let work = tempfile::tempdir().unwrap();
    let mut cfg = String::new();
    let listen = format!("127.0.0.1:{}", free_port());
    cfg += &daemon_section(work.path(), &listen, &host, "max_concurrent_builds = 1\n");
    for name in ["x", "y"] {
        let ctx = context(
            work.path(),
            name,
            &format!("FROM {host}/base:latest\nCOPY . /data\n"),
        );
        // Some bulk so that a build takes a moment.
        let bulk: Vec<u8> = (0..8_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        fs::write(Path::new(&ctx).join("bulk.bin"), bulk).unwrap();
        cfg += &image(name, &ctx, &format!("{host}/{name}"));
    }
    let config = work.path().join("rebased.toml");
    fs::write(&config, cfg).unwrap();
    let log = work.path().join("daemon.log");

    let mut daemon = Daemon::start(&config, &listen, &log);
    wait_for("x and y at 1.0.0", WAIT, || {
        (current(&daemon, "x").as_deref() == Some("1.0.0")
            && current(&daemon, "y").as_deref() == Some("1.0.0"))
        .then_some(())
    });
    // New bulk, so that the rebuilds make their layer again (the native
    // layer cache would reuse an unchanged one in a moment, and the
    // running-and-queued window below could pass between two looks).
    for name in ["x", "y"] {
        let bulk: Vec<u8> = (0..8_000_000u32)
            .map(|i| (i.wrapping_mul(2_246_822_519) >> 13) as u8)
            .collect();
        fs::write(work.path().join(name).join("bulk.bin"), bulk).unwrap();
    }
    bases.push(&registry, "base:latest", "v2");
    // Crash while one job runs and the other waits.
    wait_for("one job running and one queued", WAIT, || {
        let jobs = daemon.get("/v1/jobs");
        let jobs = jobs.as_array().unwrap();
        let running = jobs.iter().filter(|j| j["state"] == "running").count();
        let queued = jobs.iter().filter(|j| j["state"] == "queued").count();
        (running == 1 && queued == 1).then_some(())
    });
    daemon.kill_hard();

    let daemon = Daemon::start(&config, &listen, &log);
    wait_for("x and y at 1.0.1 after restart", WAIT, || {
        (current(&daemon, "x").as_deref() == Some("1.0.1")
            && current(&daemon, "y").as_deref() == Some("1.0.1"))
        .then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    for name in ["x", "y"] {
        let tags = registry.tags(name);
        assert!(!tags.contains(&"1.0.2".to_owned()), "{name}: {tags:?}");
        let published: Vec<Value> = jobs_of(&daemon, name)
            .into_iter()
            .filter(|j| j["published"] == "1.0.1")
            .collect();
        assert_eq!(
            published.len(),
            1,
            "{name}: one job published 1.0.1: {published:#?}"
        );
        assert_eq!(
            daemon.get(&format!("/v1/images/{name}"))["versions"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
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
