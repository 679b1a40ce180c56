//! The offline commands of the CLI: `bases` and `check-config`, and how they
//! report bad input.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::process::{Command, Output};

fn rebased(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rebased"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn bases_prints_normalised_references_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let df = dir.path().join("Dockerfile");
    fs::write(
        &df,
        "ARG TAG=3.19\nFROM alpine:${TAG} AS build\nFROM build\nCOPY --from=build /a /a\nFROM scratch\nCOPY --from=ghcr.io/acme/tool:1 /t /t\nFROM alpine:${TAG}\n",
    )
    .unwrap();
    let out = rebased(&["bases", df.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "docker.io/library/alpine:3.19\nghcr.io/acme/tool:1\n"
    );

    let out = rebased(&["bases", df.to_str().unwrap(), "--build-arg", "TAG=3.20"]);
    assert_eq!(
        text(&out.stdout),
        "docker.io/library/alpine:3.20\nghcr.io/acme/tool:1\n"
    );
}

#[test]
fn bases_are_those_of_one_target_platform() {
    let dir = tempfile::tempdir().unwrap();
    let df = dir.path().join("Dockerfile");
    // TARGETARCH and TARGETOS are predefined: no ARG needed.
    fs::write(
        &df,
        "FROM scratch AS out-linux\nFROM out-$TARGETOS AS out\nFROM busybox:1-${TARGETARCH}\nCOPY --from=out / /\n",
    )
    .unwrap();
    let f = df.to_str().unwrap();
    let out = rebased(&["bases", f, "--platform", "linux/arm64"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "docker.io/library/busybox:1-arm64\n");
    // Default: the host's platform.
    let host = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let out = rebased(&["bases", f]);
    assert_eq!(
        text(&out.stdout),
        format!("docker.io/library/busybox:1-{host}\n")
    );
    let out = rebased(&["bases", f, "--platform", "arm64"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("os/architecture"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bad_dockerfile_names_the_line_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let df = dir.path().join("Dockerfile");
    fs::write(&df, "FROM alpine\n\nFROM Not/Valid\n").unwrap();
    let out = rebased(&["bases", df.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("{}:3:", df.display())), "{err}");
    assert!(err.contains("lowercase"), "{err}");

    let out = rebased(&["bases", dir.path().join("missing").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read Dockerfile"));
}

#[test]
fn bad_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("rebased.toml");
    fs::write(
        &cfg,
        "[daemon]\nlisten = \"127.0.0.1:1\"\npoll = \"every minute\"\n",
    )
    .unwrap();
    for cmd in ["check-config", "run", "once"] {
        let out = rebased(&[cmd, "--config", cfg.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("{}:3:", cfg.display())),
            "{cmd}: {err}"
        );
        assert!(err.contains("key daemon.poll"), "{cmd}: {err}");
    }
}

#[test]
fn check_config_prints_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("app");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        "FROM 127.0.0.1:5000/base\nCOPY . /\n",
    )
    .unwrap();
    let cfg = dir.path().join("rebased.toml");
    fs::write(
        &cfg,
        format!(
            "[[image]]\nname = \"app\"\ncontext = \"{}\"\nrepository = \"127.0.0.1:5000/app\"\nversion = \"1.0.0\"\n",
            ctx.display()
        ),
    )
    .unwrap();
    let out = rebased(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plan = text(&out.stdout);
    assert!(plan.contains("app -> 127.0.0.1:5000/app"), "{plan}");
    assert!(plan.contains("FROM 127.0.0.1:5000/base:latest"), "{plan}");
}

fn write_images(dir: &std::path::Path, images: &[(&str, &str)]) -> std::path::PathBuf {
    let mut cfg = String::new();
    for (name, from) in images {
        let ctx = dir.join(name);
        fs::create_dir_all(&ctx).unwrap();
        fs::write(ctx.join("Dockerfile"), format!("FROM {from}\n")).unwrap();
        cfg += &format!(
            "[[image]]\nname = \"{name}\"\ncontext = \"{}\"\nrepository = \"127.0.0.1:5000/{name}\"\nversion = \"1.0.0\"\n\n",
            ctx.display()
        );
    }
    let path = dir.join("rebased.toml");
    fs::write(&path, cfg).unwrap();
    path
}

#[test]
fn check_config_prints_the_build_order() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_images(
        dir.path(),
        &[
            ("app", "127.0.0.1:5000/runtime:latest"),
            ("runtime", "127.0.0.1:5000/os:1"),
            ("os", "debian:12"),
        ],
    );
    let out = rebased(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("build order: os, runtime, app"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_dependency_cycle_is_refused_and_spelled_out() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_images(
        dir.path(),
        &[
            ("a", "127.0.0.1:5000/b:latest"),
            ("b", "127.0.0.1:5000/a:1.0"),
            ("c", "alpine"),
        ],
    );
    for cmd in ["check-config", "run"] {
        let out = rebased(&[cmd, "--config", cfg.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = text(&out.stderr);
        assert!(
            err.contains("dependency cycle: a -> b -> a")
                || err.contains("dependency cycle: b -> a -> b"),
            "{err}"
        );
        assert!(err.contains(&cfg.display().to_string()), "{err}");
    }
}

#[test]
fn an_open_tcp_listener_without_a_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("rebased.toml");
    fs::write(
        &cfg,
        format!(
            "[daemon]\nstate_dir = \"{}\"\nlisten = \"0.0.0.0:0\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let out = rebased(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("reachable from other hosts") && err.contains("api_token_file"),
        "{err}"
    );
}

#[test]
fn the_api_listens_on_a_unix_socket_with_mode_0660() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let cfg = dir.path().join("rebased.toml");
    fs::write(
        &cfg,
        format!(
            "[daemon]\nstate_dir = \"{}\"\nlisten = \"unix:{}\"\n",
            dir.path().join("state").display(),
            sock.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rebased"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !sock.exists() && start.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mode = fs::metadata(&sock).map(|m| m.permissions().mode() & 0o777);
    let out = Command::new("curl")
        .args([
            "-s",
            "--unix-socket",
            sock.to_str().unwrap(),
            "http://localhost/v1/status",
        ])
        .output()
        .unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert_eq!(mode.ok(), Some(0o660));
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["images"], 0);
    assert!(status.success());
    assert!(!sock.exists(), "socket removed on exit");
}

/// issue 22: `check-config` printed "valid" and then the error of a
/// Dockerfile that does not exist; a misspelt context was reported as an
/// unreadable Dockerfile.
#[test]
fn check_config_says_valid_only_when_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_images(dir.path(), &[("app", "alpine")]);
    let out = rebased(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).ends_with(&format!("config {} is valid\n", cfg.display())),
        "{}",
        text(&out.stdout)
    );

    fs::remove_file(dir.path().join("app/Dockerfile")).unwrap();
    let out = rebased(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!stdout.contains("is valid"), "{stdout}");
    assert!(stdout.contains("cannot read Dockerfile"), "{stdout}");
    assert!(
        stderr.contains("is not valid: 1 image cannot be built as configured"),
        "{stderr}"
    );

    fs::remove_dir_all(dir.path().join("app")).unwrap();
    let out = rebased(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "image app: context directory {} does not exist",
            dir.path().join("app").display()
        )) && !stdout.contains("cannot read Dockerfile"),
        "{stdout}"
    );
}

/// issue 22: without --config the default path was read, and neither the
/// README nor the error said so.
#[test]
fn a_missing_config_names_the_default_path_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    for cmd in ["check-config", "once", "run"] {
        let out = rebased(&[cmd, "--config", missing.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = text(&out.stderr);
        assert_eq!(
            err,
            format!(
                "error: config file {} does not exist (without --config, rebased reads /etc/rebased/rebased.toml): pass --config FILE\n",
                missing.display()
            ),
            "{cmd}"
        );
    }
}

/// A cron expression is refused in the user's own terms, once, on one line.
#[test]
fn a_bad_cron_is_refused_in_the_users_terms() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("rebased.toml");
    for (poll, want) in [
        ("61 * * * *", "minute 61 is out of range 0-59"),
        ("0 0 31 2 *", "never fires"),
    ] {
        fs::write(&cfg, format!("[daemon]\npoll = \"{poll}\"\n")).unwrap();
        let out = rebased(&["check-config", "--config", cfg.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2));
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("cron \"{poll}\"")) && err.contains(want),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    fs::write(&cfg, "[daemon]\npoll = \"@hourly\"\n").unwrap();
    let out = rebased(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("poll: @hourly"));
}
