//! The daemon's life under an operator: reloads (SIGHUP, file edits, bad
//! configs) and stops (SIGTERM during a build).

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rebased_e2e::{image_table, wait_for, Setup};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);

/// A context built FROM `${REG}/base:latest`, with `bulk` bytes of data.
fn context(s: &Setup, name: &str, bulk: usize) -> PathBuf {
    let ctx = s.context(name, "ARG REG\nFROM ${REG}/base:latest\nCOPY . /data\n");
    if bulk > 0 {
        let data: Vec<u8> = (0..bulk as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        fs::write(ctx.join("bulk.bin"), data).unwrap();
    }
    ctx
}

/// Polls every second, builds with buildah, `REG` is the registry.
fn config(s: &Setup, daemon_extra: &str, images: &[(&str, &Path)]) -> String {
    let host = s.host();
    let mut tables = String::new();
    for (name, ctx) in images {
        tables += &image_table(
            name,
            ctx,
            &format!("{host}/{name}"),
            &format!("build_args = {{ REG = \"{host}\" }}\n"),
        );
    }
    s.config_text(
        &format!("poll = \"*/1 * * * * *\"\nsettle = \"0s\"\n{daemon_extra}\n[builder]\n# buildah: a build long enough to be interrupted\nbackend = \"buildah\""),
        &tables,
    )
}

#[test]
fn reload_on_sighup_and_on_edits_keeps_the_old_config_when_the_new_one_is_bad() {
    let s = Setup::new();
    let a = context(&s, "a", 0);
    let b = context(&s, "b", 0);
    let file = &s.config;
    fs::write(file, config(&s, "", &[("a", &a)])).unwrap();
    let daemon = s.start();
    daemon.wait_version("a", "1.0.0", WAIT);
    let loaded = daemon.get("/v1/status")["config_loaded_at"].clone();

    // SIGHUP with a new image: it appears and is built, no restart.
    fs::write(file, config(&s, "", &[("a", &a), ("b", &b)])).unwrap();
    daemon.signal("-HUP");
    // b is built after SIGHUP.
    daemon.wait_version("b", "1.0.0", WAIT);
    let status = daemon.get("/v1/status");
    assert_eq!(status["images"], 2);
    assert_ne!(status["config_loaded_at"], loaded);
    assert_eq!(status["config_error"], Value::Null);

    // A broken config is refused; the old one keeps running; status says why.
    let broken = config(&s, "poll = \"every minute\"\n", &[("a", &a)]);
    fs::write(file, broken.replacen("poll = \"*/1 * * * * *\"\n", "", 1)).unwrap();
    daemon.signal("-HUP");
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
    let tmp = s.dir().join(".rebased.toml.swp");
    fs::write(&tmp, config(&s, "", &[("a", &a)])).unwrap();
    fs::rename(&tmp, file).unwrap();
    wait_for("the edit to load", WAIT, || {
        let s = daemon.get("/v1/status");
        (s["config_error"].is_null() && s["images"] == 1).then_some(())
    });
    // The queue and ledger survived every reload.
    assert_eq!(daemon.fresh_version("a").as_deref(), Some("1.0.0"));
}

fn sigterm_during_build(stop_timeout: &str, expect_finished_before_exit: bool) {
    let s = Setup::new();
    let registry = &s.registry;
    let slow = context(&s, "slow", 48 << 20);
    fs::write(
        &s.config,
        config(
            &s,
            &format!("stop_timeout = \"{stop_timeout}\"\n"),
            &[("slow", &slow)],
        ),
    )
    .unwrap();
    let mut daemon = s.start();
    wait_for("the build to start", WAIT, || {
        let jobs = daemon.get("/v1/jobs");
        jobs.as_array()
            .unwrap()
            .iter()
            .any(|j| j["state"] == "running")
            .then_some(())
    });
    let readyz = || {
        reqwest::blocking::get(format!("{}/readyz", daemon.api))
            .ok()
            .map(|r| r.status().as_u16())
    };
    assert_eq!(readyz(), Some(200), "ready while running");
    daemon.signal("-TERM");
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
        assert_eq!(readyz(), Some(503), "not ready while stopping");
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
    let daemon = s.start();
    daemon.wait_version("slow", "1.0.0", WAIT);
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
    let s = Setup::new();
    let registry = &s.registry;
    let slow = context(&s, "slow", 48 << 20);
    fs::write(
        &s.config,
        config(&s, "stop_timeout = \"600s\"\n", &[("slow", &slow)]),
    )
    .unwrap();
    let mut daemon = s.start();
    wait_for("the build to start", WAIT, || {
        let jobs = daemon.get("/v1/jobs");
        jobs.as_array()
            .unwrap()
            .iter()
            .any(|j| j["state"] == "running")
            .then_some(())
    });
    daemon.signal("-TERM");
    wait_for("the first signal to be taken", WAIT, || {
        daemon
            .log_text()
            .contains("signal received: finishing running builds")
            .then_some(())
    });
    daemon.signal("-TERM");
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
    let again = s.dir().join("again.log");
    let daemon = rebased_e2e::Daemon::start(&s.config, &s.listen, &again);
    wait_for("slow at 1.0.0", WAIT, || {
        (daemon.fresh_version("slow").as_deref() == Some("1.0.0")).then_some(())
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

/// A registry that accepts connections, holds each for `hold` and drops it
/// unanswered: every request to it fails, slowly. Answers `127.0.0.1:PORT`.
fn hanging_registry(hold: Duration) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                std::thread::sleep(hold);
                drop(conn);
            });
        }
    });
    host
}

/// `systemctl reload` (SIGHUP) right after `READY=1`, while the start-up
/// import still waits on a registry that does not answer: the daemon lives
/// on, and reloads once the import is over.
#[test]
fn sighup_during_the_start_up_import_is_answered_after_it() {
    let s = Setup::new();
    let hole = hanging_registry(Duration::from_secs(2));
    let ctx = context(&s, "h", 0);
    let tables = format!(
        "\n[registries.\"{hole}\"]\ninsecure = true\n{}",
        image_table(
            "h",
            &ctx,
            &format!("{hole}/h"),
            &format!("build_args = {{ REG = \"{}\" }}\n", s.host()),
        )
    );
    fs::write(
        &s.config,
        s.config_text("poll = \"0 0 0 1 1 *\"\nsettle = \"0s\"\n", &tables),
    )
    .unwrap();
    let mut daemon = s.start();
    let log = daemon.log_text();
    assert!(
        log.contains("reading ledgers back from the registries")
            && !log.contains("cannot read the ledger back"),
        "the import is under way:\n{log}"
    );
    let loaded = daemon.get("/v1/status")["config_loaded_at"].clone();
    daemon.signal("-HUP");
    std::thread::sleep(Duration::from_secs(1));
    if let Some(status) = daemon.try_wait() {
        panic!(
            "SIGHUP during the import ended the daemon ({status}):\n{}",
            daemon.log_text()
        );
    }
    wait_for("the reload", WAIT, || {
        daemon.log_text().contains("config reloaded").then_some(())
    });
    let log = daemon.log_text();
    let imported = log.find("cannot read the ledger back").unwrap();
    let reloaded = log.find("reloading the config").unwrap();
    assert!(imported < reloaded, "reloaded after the import:\n{log}");
    let line = log[reloaded..].lines().next().unwrap();
    assert!(line.contains("SIGHUP"), "{line}");
    assert_ne!(daemon.get("/v1/status")["config_loaded_at"], loaded);
}
