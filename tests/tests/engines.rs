//! The podman and docker backends with a Dockerfile that has a `RUN`. No
//! Docker engine runs here, so the docker backend's command lines are run by
//! podman under the name `docker` (its CLI is docker-compatible), with the
//! storage and insecure-registry settings a docker daemon would hold given
//! through podman's environment.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::time::Duration;

use rebased_e2e::{image_table, skopeo, wait_for, Daemon, Registry, Setup};

const WAIT: Duration = Duration::from_secs(180);

/// Builds 1.0.0 with `backend`; returns the daemon.
fn publishes_with(backend: &str, env: &[(&str, &str)], s: &Setup) -> Daemon {
    let registry = &s.registry;
    let ctx = s.context(
        "app",
        &format!(
            "FROM {}/base:latest\nCOPY hello /hello\nRUN [\"/bin/busybox\", \"cp\", \"/hello\", \"/copied\"]\n",
            registry.host
        ),
    );
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"1s\"",
        &format!(
            "[builder]\nbackend = \"{backend}\"\nmax_attempts = 1\n{}",
            image_table(
                "app",
                &ctx,
                &format!("{}/app", registry.host),
                "tags = [\"latest\"]"
            )
        ),
    );
    let daemon = s.start_with_env(env);
    // Built by `backend`.
    daemon.wait_version_never_failing("app", "1.0.0", WAIT);
    let pushed = registry.digest("app:1.0.0").expect("pushed");
    let recorded = daemon.image("app")["current_digest"].clone();
    assert_eq!(
        recorded,
        pushed.as_str(),
        "the ledger records what the registry holds"
    );
    let labels = &registry.inspect("app:1.0.0")["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], "1.0.0");
    assert_eq!(
        registry.digest("app:latest").as_deref(),
        Some(pushed.as_str())
    );
    let jobs = daemon.get("/v1/jobs");
    let id = jobs[0]["id"].as_u64().unwrap();
    let log = daemon.cli(&["log", &id.to_string()]);
    assert!(log.contains("$ "), "the engine's output is captured: {log}");
    daemon
}

#[test]
fn podman_backend_builds_a_run_step() {
    let s = Setup::new();
    let _ = publishes_with("podman", &[], &s);
}

#[test]
fn docker_backend_command_lines_run_through_podman() {
    let s = Setup::new();
    let registry = &s.registry;
    // What a docker daemon would hold: its storage and insecure registries.
    let env = s.docker_through_podman();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut daemon = publishes_with("docker", &env, &s);
    // docker writes labels, not manifest annotations: a crash right after
    // the version push is still recovered by adopting the pushed tag (its
    // labels say which bases it was built from).
    daemon.stop();
    let mut with_failpoint = env.to_vec();
    with_failpoint.push(("REBASED_FAILPOINT", "after-version-push"));
    let mut daemon = s.start_with_env(&with_failpoint);
    s.bases.push(registry, "base:latest", "v2");
    let status = daemon.wait_exit(WAIT);
    assert!(!status.success(), "aborted at the failpoint");
    let pushed = registry
        .digest("app:1.0.1")
        .expect("1.0.1 pushed before the crash");
    let daemon = s.start_with_env(&env);
    wait_for("1.0.1 adopted", WAIT, || {
        let i = daemon.image("app");
        if i["state"] == "failing" {
            panic!("not adopted: {}", i["last_error"]);
        }
        (i["current_version"] == "1.0.1").then(|| i["current_digest"].clone())
    });
    assert_eq!(
        daemon.image("app")["current_digest"],
        pushed.as_str(),
        "the pushed tag was adopted, not rebuilt"
    );
}

/// Everything in an image, as bytes: its config, history and the unpacked
/// contents of every layer (read through `skopeo copy` to a layout).
fn image_bytes(registry: &Registry, repo_tag: &str, dir: &Path) -> Vec<u8> {
    let layout = dir.join("layout");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}/{repo_tag}", registry.host),
        &format!("oci:{}:x", layout.display()),
    ]);
    let mut all = Vec::new();
    for blob in fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let path = blob.unwrap().path();
        let bytes = fs::read(&path).unwrap();
        if bytes.starts_with(&[0x1f, 0x8b]) {
            let out = rebased_e2e::run(
                std::process::Command::new("busybox")
                    .args(["zcat"])
                    .arg(&path),
            );
            all.extend(out.into_bytes());
        } else {
            all.extend(bytes);
        }
    }
    all
}

#[test]
fn build_secrets_reach_run_steps_and_nothing_else() {
    const SECRET: &str = "s3cret-TOKEN-9f8e7d";
    let s = Setup::new();
    let registry = &s.registry;
    let secret_file = s.dir().join("token");
    fs::write(&secret_file, SECRET).unwrap();
    let ctx = s.context(
        "app",
        &format!(
            "FROM {}/base:latest\nRUN --mount=type=secret,id=token [\"/bin/busybox\", \"sha256sum\", \"/run/secrets/token\"]\n",
            registry.host
        ),
    );
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"1s\"",
        &format!(
            "[builder]\nmax_attempts = 1\n{}",
            image_table(
                "app",
                &ctx,
                &format!("{}/app", registry.host),
                &format!("secrets = {{ token = \"{}\" }}", secret_file.display())
            )
        ),
    );
    let daemon = s.start();
    // Built with the secret.
    daemon.wait_version_never_failing("app", "1.0.0", WAIT);
    let jobs = daemon.get("/v1/jobs");
    let id = jobs[0]["id"].as_u64().unwrap();
    let log = daemon.cli(&["log", &id.to_string()]);
    // The RUN step read it: its hash is in the build output...
    let digest = rebased_e2e::run(
        std::process::Command::new("busybox")
            .arg("sha256sum")
            .arg(&secret_file),
    );
    let hash = digest.split_whitespace().next().unwrap();
    assert!(log.contains(hash), "the RUN step saw the secret: {log}");
    // ...but the secret itself is nowhere: not in the image (config,
    // history, layers), not in the logs, not in the API.
    let image = image_bytes(registry, "app:1.0.0", s.dir());
    assert!(!image.is_empty());
    let found = image.windows(SECRET.len()).any(|w| w == SECRET.as_bytes());
    assert!(!found, "the secret leaked into the image");
    assert!(!log.contains(SECRET), "the secret leaked into the job log");
    assert!(
        !daemon.log_text().contains(SECRET),
        "the secret leaked into the daemon log"
    );
    let api = format!("{}{}", daemon.image("app"), daemon.get("/v1/jobs"));
    assert!(!api.contains(SECRET), "the secret leaked into the API");
    let history = registry.inspect("app:1.0.0").to_string();
    assert!(!history.contains(SECRET));
}
