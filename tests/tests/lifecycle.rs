//! The daemon's life under an operator: reloads (SIGHUP, file edits, bad
//! configs) and stops (SIGTERM during a build).

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rebased_e2e::{free_port, wait_for, BaseMaker, Daemon, Registry};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);

fn context(dir: &Path, name: &str, bulk: usize) -> String {
    let ctx = dir.join(name);
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("hello"), format!("hello from {name}\n")).unwrap();
    if bulk > 0 {
        let data: Vec<u8> = (0..bulk as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        fs::write(ctx.join("bulk.bin"), data).unwrap();
    }
    fs::write(
        ctx.join("Dockerfile"),
        "ARG REG\nFROM ${REG}/base:latest\nCOPY . /data\n",
    )
    .unwrap();
    ctx.display().to_string()
}

fn config(
    work: &Path,
    listen: &str,
    host: &str,
    daemon_extra: &str,
    images: &[(&str, &str)],
) -> String {
    let mut cfg = format!(
        "[daemon]\nstate_dir = \"{}\"\nlisten = \"{listen}\"\npoll = \"*/1 * * * * *\"\nsettle = \"0s\"\n{daemon_extra}\n[builder]\n# buildah: a build long enough to be interrupted\nbackend = \"buildah\"\n[registries.\"{host}\"]\ninsecure = true\n",
        work.join("state").display()
    );
    for (name, ctx) in images {
        cfg += &format!(
            "\n[[image]]\nname = \"{name}\"\ncontext = \"{ctx}\"\nrepository = \"{host}/{name}\"\nversion = \"1.0.0\"\nbuild_args = {{ REG = \"{host}\" }}\n"
        );
    }
    cfg
}

fn signal(d: &Daemon, sig: &str) {
    let pid = d.pid();
    assert!(Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

fn fresh(d: &Daemon, name: &str) -> Option<String> {
    let i = d.try_get(&format!("/v1/images/{name}"))?;
    (i["state"] == "fresh")
        .then(|| i["current_version"].as_str().map(str::to_owned))
        .flatten()
}

#[test]
fn reload_on_sighup_and_on_edits_keeps_the_old_config_when_the_new_one_is_bad() {
    let registry = Registry::start();
    let host = registry.host.clone();
    BaseMaker::new().push(&registry, "base:latest", "v1");
    let work = tempfile::tempdir().unwrap();
    let a = context(work.path(), "a", 0);
    let b = context(work.path(), "b", 0);
    let listen = format!("127.0.0.1:{}", free_port());
    let file = work.path().join("rebased.toml");
    fs::write(&file, config(work.path(), &listen, &host, "", &[("a", &a)])).unwrap();
    let daemon = Daemon::start(&file, &listen, &work.path().join("daemon.log"));
    wait_for("a at 1.0.0", WAIT, || {
        (fresh(&daemon, "a").as_deref() == Some("1.0.0")).then_some(())
    });
    let loaded = daemon.get("/v1/status")["config_loaded_at"].clone();

    // SIGHUP with a new image: it appears and is built, no restart.
    fs::write(
        &file,
        config(work.path(), &listen, &host, "", &[("a", &a), ("b", &b)]),
    )
    .unwrap();
    signal(&daemon, "-HUP");
    wait_for("b built after SIGHUP", WAIT, || {
        (fresh(&daemon, "b").as_deref() == Some("1.0.0")).then_some(())
    });
    let status = daemon.get("/v1/status");
    assert_eq!(status["images"], 2);
    assert_ne!(status["config_loaded_at"], loaded);
    assert_eq!(status["config_error"], Value::Null);

    // A broken config is refused; the old one keeps running; status says why.
    let broken = config(
        work.path(),
        &listen,
        &host,
        "poll = \"every minute\"\n",
        &[("a", &a)],
    );
    fs::write(&file, broken.replacen("poll = \"*/1 * * * * *\"\n", "", 1)).unwrap();
    signal(&daemon, "-HUP");
    let err = wait_for("the reload error", WAIT, || {
        daemon.get("/v1/status")["config_error"]
            .as_str()
            .map(str::to_owned)
    });
    assert!(
        err.contains("rebased.toml:") && err.contains("key daemon.poll"),
        "{err}"
    );
    let images = daemon.get("/v1/images");
    assert_eq!(
        images.as_array().unwrap().len(),
        2,
        "old config still in force"
    );

    // An editor-style save (write aside, rename over) is picked up without a signal.
    let tmp = work.path().join(".rebased.toml.swp");
    fs::write(&tmp, config(work.path(), &listen, &host, "", &[("a", &a)])).unwrap();
    fs::rename(&tmp, &file).unwrap();
    wait_for("the edit to load", WAIT, || {
        let s = daemon.get("/v1/status");
        (s["config_error"].is_null() && s["images"] == 1).then_some(())
    });
    // The queue and ledger survived every reload.
    assert_eq!(fresh(&daemon, "a").as_deref(), Some("1.0.0"));
}

fn sigterm_during_build(stop_timeout: &str, expect_finished_before_exit: bool) {
    let registry = Registry::start();
    let host = registry.host.clone();
    BaseMaker::new().push(&registry, "base:latest", "v1");
    let work = tempfile::tempdir().unwrap();
    let slow = context(work.path(), "slow", 48 << 20);
    let listen = format!("127.0.0.1:{}", free_port());
    let file = work.path().join("rebased.toml");
    fs::write(
        &file,
        config(
            work.path(),
            &listen,
            &host,
            &format!("stop_timeout = \"{stop_timeout}\"\n"),
            &[("slow", &slow)],
        ),
    )
    .unwrap();
    let log = work.path().join("daemon.log");
    let mut daemon = Daemon::start(&file, &listen, &log);
    wait_for("the build to start", WAIT, || {
        let jobs = daemon.get("/v1/jobs");
        jobs.as_array()
            .unwrap()
            .iter()
            .any(|j| j["state"] == "running")
            .then_some(())
    });
    signal(&daemon, "-TERM");
    if expect_finished_before_exit {
        // While the build finishes, new work is refused.
        let code = wait_for("the API to refuse new work", WAIT, || {
            let c = reqwest::blocking::Client::new()
                .post(format!("{}/v1/check", daemon.api))
                .send()
                .ok()?
                .status()
                .as_u16();
            (c == 503).then_some(c)
        });
        assert_eq!(code, 503);
    }
    let status = daemon.wait_exit(WAIT);
    assert!(
        status.success(),
        "exit status 0 after SIGTERM, got {status}:\n{}",
        daemon.log_text()
    );
    let pushed = registry.digest("slow:1.0.0").is_some();
    if expect_finished_before_exit {
        assert!(
            pushed,
            "the running build finished before exit:\n{}",
            daemon.log_text()
        );
    }
    let daemon = Daemon::start(&file, &listen, &log);
    wait_for("slow at 1.0.0", WAIT, || {
        (fresh(&daemon, "slow").as_deref() == Some("1.0.0")).then_some(())
    });
    let jobs = daemon.get("/v1/jobs");
    let jobs = jobs.as_array().unwrap();
    assert_eq!(jobs.len(), 1, "no job lost or duplicated: {jobs:#?}");
    assert_eq!(jobs[0]["state"], "succeeded");
    assert_eq!(jobs[0]["published"], "1.0.0");
    assert!(!registry.tags("slow").contains(&"1.0.1".to_owned()));
}

#[test]
fn sigterm_lets_a_running_build_finish() {
    sigterm_during_build("60s", true);
}

#[test]
fn sigterm_cancels_a_build_at_the_deadline_and_it_runs_after_restart() {
    sigterm_during_build("0s", false);
}

/// A second signal does not wait for `stop_timeout`: the running build is
/// cancelled (the engine killed), the daemon exits 0, and the interrupted
/// job is stored queued by the daemon itself, not left `running` for the
/// next start to repair; that start runs it.
#[test]
fn a_second_sigterm_cancels_the_build_and_its_job_is_stored_queued() {
    let registry = Registry::start();
    let host = registry.host.clone();
    BaseMaker::new().push(&registry, "base:latest", "v1");
    let work = tempfile::tempdir().unwrap();
    let slow = context(work.path(), "slow", 48 << 20);
    let listen = format!("127.0.0.1:{}", free_port());
    let file = work.path().join("rebased.toml");
    fs::write(
        &file,
        config(
            work.path(),
            &listen,
            &host,
            "stop_timeout = \"600s\"\n",
            &[("slow", &slow)],
        ),
    )
    .unwrap();
    let log = work.path().join("daemon.log");
    let mut daemon = Daemon::start(&file, &listen, &log);
    wait_for("the build to start", WAIT, || {
        let jobs = daemon.get("/v1/jobs");
        jobs.as_array()
            .unwrap()
            .iter()
            .any(|j| j["state"] == "running")
            .then_some(())
    });
    signal(&daemon, "-TERM");
    wait_for("the first signal to be taken", WAIT, || {
        daemon
            .log_text()
            .contains("signal received: finishing running builds")
            .then_some(())
    });
    signal(&daemon, "-TERM");
    // Within WAIT, far below the 600 s stop_timeout.
    let status = daemon.wait_exit(WAIT);
    let text = daemon.log_text();
    assert!(status.success(), "exit status 0, got {status}:\n{text}");
    assert!(
        text.contains("job interrupted; queued again"),
        "the daemon stored the job queued itself:\n{text}"
    );
    assert!(
        registry.digest("slow:1.0.0").is_none(),
        "the cancelled build pushed nothing"
    );
    let again = work.path().join("again.log");
    let daemon = Daemon::start(&file, &listen, &again);
    wait_for("slow at 1.0.0", WAIT, || {
        (fresh(&daemon, "slow").as_deref() == Some("1.0.0")).then_some(())
    });
    let text = daemon.log_text();
    assert!(
        !text.contains("jobs left running by an unclean stop"),
        "no job was left running:\n{text}"
    );
    let jobs = daemon.get("/v1/jobs");
    let jobs = jobs.as_array().unwrap();
    assert_eq!(jobs.len(), 1, "no job lost or duplicated: {jobs:#?}");
    assert_eq!(jobs[0]["state"], "succeeded");
    assert_eq!(jobs[0]["published"], "1.0.0");
}
