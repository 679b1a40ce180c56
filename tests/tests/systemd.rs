//! The service under systemd's eyes: the unit files pass `systemd-analyze
//! verify`, the default unit scores 2.5 or lower on `systemd-analyze
//! security --offline=true`, and the daemon speaks sd_notify in order.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rebased_e2e::{free_port, rebased_bin, Daemon};

fn unit_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd")
}

/// The unit with ExecStart pointing at the binary built here (verify checks it exists).
fn unit_text(with_buildah: bool) -> String {
    let mut text = fs::read_to_string(unit_dir().join("rebased.service"))
        .unwrap()
        .replace(
            "/usr/local/bin/rebased",
            &rebased_bin().display().to_string(),
        );
    if with_buildah {
        // A drop-in's settings come after the unit's: appending is equivalent.
        text.push('\n');
        text.push_str(
            &fs::read_to_string(unit_dir().join("rebased.service.d/buildah.conf")).unwrap(),
        );
    }
    text
}

fn analyze(args: &[&str], unit: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect("systemd-analyze (Debian package systemd) must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn units_verify_and_the_default_unit_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    for (name, buildah) in [("default", false), ("buildah", true)] {
        let unit = dir.path().join(name).join("rebased.service");
        fs::create_dir_all(unit.parent().unwrap()).unwrap();
        fs::write(&unit, unit_text(buildah)).unwrap();
        let (ok, text) = analyze(&["verify"], &unit);
        assert!(ok, "{name}: systemd-analyze verify failed:\n{text}");
        assert!(
            !text.contains("rebased.service:"),
            "{name}: verify warned:\n{text}"
        );
        let (_, text) = analyze(&["security", "--offline=true"], &unit);
        let score: f64 = text
            .lines()
            .find_map(|l| {
                l.split("Overall exposure level for rebased.service: ")
                    .nth(1)
            })
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no score in:\n{text}"));
        println!("{name} unit: exposure {score}");
        if !buildah {
            assert!(score <= 2.5, "default unit scores {score}:\n{text}");
        }
    }
}

#[test]
fn sd_notify_ready_status_watchdog_stopping_in_order() {
    let work = tempfile::tempdir().unwrap();
    let socket_path = work.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let config = work.path().join("rebased.toml");
    fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"{}\"\nlisten = \"{listen}\"\npoll = \"0 0 0 1 1 *\"\n",
            work.path().join("state").display()
        ),
    )
    .unwrap();
    let mut daemon = Daemon::start_with_env(
        &config,
        &listen,
        &work.path().join("daemon.log"),
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let mut seen: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    let mut read_until = |seen: &mut Vec<String>, want: &str, limit: Duration| {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(n) = socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = msg.starts_with(want);
                seen.push(msg);
                if done {
                    return;
                }
            }
        }
        panic!("no {want} within {limit:?}; saw {seen:?}");
    };
    read_until(&mut seen, "READY=1", Duration::from_secs(10));
    read_until(&mut seen, "STATUS=", Duration::from_secs(5));
    read_until(&mut seen, "WATCHDOG=1", Duration::from_secs(5));
    daemon.stop();
    read_until(&mut seen, "STOPPING=1", Duration::from_secs(5));
    let pos = |p: &str| seen.iter().position(|m| m.starts_with(p)).unwrap();
    assert!(
        pos("READY=1") < pos("WATCHDOG=1") && pos("WATCHDOG=1") < pos("STOPPING=1"),
        "{seen:?}"
    );
    let status = seen.iter().find(|m| m.starts_with("STATUS=")).unwrap();
    assert!(
        status.contains("0 images") && status.contains("queued"),
        "{status}"
    );
}

#[test]
fn nothing_is_sent_without_notify_socket() {
    // The daemon starts and stops cleanly with no NOTIFY_SOCKET at all.
    let work = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let config = work.path().join("rebased.toml");
    fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"{}\"\nlisten = \"{listen}\"\n",
            work.path().join("state").display()
        ),
    )
    .unwrap();
    let mut daemon = Daemon::start(&config, &listen, &work.path().join("daemon.log"));
    daemon.stop();
    assert!(
        !daemon.log_text().contains("sd_notify"),
        "{}",
        daemon.log_text()
    );
}
