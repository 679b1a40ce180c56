//! Multi-arch bases: an image is stale only when the child digest of a
//! platform it builds changed. And multi-platform builds by the engines:
//! a `RUN` built for linux/amd64 and, emulated through the kernel's
//! qemu-aarch64 binfmt handler, linux/arm64, published as one index; the
//! check for a missing handler.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use rebased_e2e::{
    arm64_busybox, image_table, rebased_bin, require_arm64_emulation, skopeo, wait_for, Registry,
    Setup,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(180);

#[test]
fn only_a_change_of_the_built_platform_rebuilds() {
    let s = Setup::empty();
    let (registry, maker, host) = (&s.registry, &s.bases, s.host());
    let amd1 = maker.push_platform(registry, "parts:amd64-v1", "amd64-v1", Some("linux/amd64"));
    let arm1 = maker.push_platform(registry, "parts:arm64-v1", "arm64-v1", Some("linux/arm64"));
    let index1 = maker.push_index(registry, "parts", &[&amd1, &arm1], "base:latest");

    let ctx = s.context(
        "app",
        &format!("FROM {host}/base:latest\nCOPY hello /hello\n"),
    );
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"1s\"",
        &image_table(
            "app",
            &ctx,
            &format!("{host}/app"),
            "platforms = [\"linux/amd64\"]\n",
        ),
    );
    let daemon = s.start();
    let current = || daemon.current_version("app");
    wait_for("1.0.0", WAIT, || {
        (current().as_deref() == Some("1.0.0")).then_some(())
    });
    let base_ref = format!("{host}/base:latest");
    let base = |d: &rebased_e2e::Daemon| d.base(&base_ref);
    let b = base(&daemon);
    assert_eq!(b["digest"], Value::String(index1.clone()));
    assert_eq!(b["platforms"]["linux/arm64"], Value::String(arm1.clone()));
    assert_eq!(b["platforms"]["linux/amd64"], Value::String(amd1.clone()));
    let v = &daemon.image("app")["versions"][0];
    assert_eq!(
        v["bases"][format!("{host}/base:latest")],
        Value::String(index1.clone())
    );

    // Only arm64 moves upstream: recorded, nothing built.
    let arm2 = maker.push_platform(registry, "parts:arm64-v2", "arm64-v2", Some("linux/arm64"));
    let index2 = maker.push_index(registry, "parts", &[&amd1, &arm2], "base:latest");
    assert_ne!(index1, index2);
    wait_for("the new index to settle", WAIT, || {
        let b = base(&daemon);
        (b["digest"] == Value::String(index2.clone()) && b["pending"].is_null()).then_some(())
    });
    assert_eq!(
        base(&daemon)["platforms"]["linux/arm64"],
        Value::String(arm2.clone())
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        current().as_deref(),
        Some("1.0.0"),
        "an arm64-only change must not rebuild an amd64 image"
    );
    assert!(!registry.tags("app").contains(&"1.0.1".to_owned()));
    assert_eq!(daemon.image("app")["state"], "fresh");

    // amd64 moves: rebuilt, pinned to the new index.
    let amd2 = maker.push_platform(registry, "parts:amd64-v2", "amd64-v2", Some("linux/amd64"));
    let index3 = maker.push_index(registry, "parts", &[&amd2, &arm2], "base:latest");
    wait_for("1.0.1", WAIT, || {
        (current().as_deref() == Some("1.0.1")).then_some(())
    });
    let ann = &registry.raw_manifest("app:1.0.1")["annotations"];
    assert_eq!(
        ann["org.opencontainers.image.base.digest"],
        Value::String(index3)
    );
}

/// The `/arch` file of the image `repo@digest`, read from its layers (the
/// image copied to a layout with skopeo, each layer unpacked in memory).
fn arch_file(registry: &Registry, repo_digest: &str, dir: &Path) -> String {
    let layout = dir.join(repo_digest.replace([':', '@', '/'], "-"));
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}/{repo_digest}", registry.host),
        &format!("oci:{}:x", layout.display()),
    ]);
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: Value = serde_json::from_slice(
        &fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let mut found = Vec::new();
    for layer in manifest["layers"].as_array().unwrap() {
        let bytes = fs::read(blob(layer["digest"].as_str().unwrap())).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            if path.trim_start_matches("./").trim_start_matches('/') == "arch" {
                let mut text = String::new();
                entry.read_to_string(&mut text).unwrap();
                found.push(text);
            }
        }
    }
    assert_eq!(found.len(), 1, "one /arch in {repo_digest}: {found:?}");
    found.remove(0).trim().to_owned()
}

/// A two-platform busybox base, `base:latest`: an amd64 child (the host's
/// busybox) and an arm64 one (Debian's busybox-static:arm64), each with
/// `/marker`. Returns (amd64 child, arm64 child, index).
fn two_platform_base(s: &Setup, amd: &str, arm: &str) -> (String, String, String) {
    let (registry, maker) = (&s.registry, &s.bases);
    let amd = maker.push_platform(registry, &format!("parts:{amd}"), amd, Some("linux/amd64"));
    let arm = maker.push_platform_with(
        registry,
        &format!("parts:{arm}"),
        arm,
        "linux/arm64",
        &arm64_busybox(),
    );
    let index = maker.push_index(registry, "parts", &[&amd, &arm], "base:latest");
    (amd, arm, index)
}

/// The children of an index: architecture -> digest.
fn children(index: &Value) -> std::collections::BTreeMap<String, String> {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["platform"]["architecture"].as_str().unwrap().to_owned(),
                e["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `RUN uname -m > /arch` for linux/amd64 and linux/arm64 with `backend`:
/// one index of two children whose `/arch` say x86_64 and aarch64, the
/// provenance on the index and the children, the ledger's children; an
/// arm64-only change of the base publishes 1.0.1 (the job log and the
/// reason name the arm64 child); a platform added to the base publishes
/// nothing.
fn builds_two_platforms_with_run(backend: &str) {
    let _ = builds_two_platforms_with_run_in(backend, |s| s.start());
}

/// [`builds_two_platforms_with_run`] with the daemon started by `start`.
fn builds_two_platforms_with_run_in(
    backend: &str,
    start: impl Fn(&Setup) -> rebased_e2e::Daemon,
) -> Setup {
    require_arm64_emulation();
    let s = Setup::empty();
    let (registry, host) = (&s.registry, s.host());
    let (amd1, arm1, index1) = two_platform_base(&s, "amd64-v1", "arm64-v1");
    let ctx = s.context(
        "app",
        &format!(
            "FROM {host}/base:latest\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox uname -m > /arch\"]\n"
        ),
    );
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"1s\"",
        &format!(
            "[builder]\nbackend = \"{backend}\"\nmax_attempts = 1\n{}",
            image_table(
                "app",
                &ctx,
                &format!("{host}/app"),
                "tags = [\"latest\"]\nplatforms = [\"linux/amd64\", \"linux/arm64\"]",
            )
        ),
    );
    let daemon = start(&s);
    daemon.wait_version_never_failing("app", "1.0.0", WAIT);

    // One index, two children, each built on its own base child.
    let index = registry.raw_manifest("app:1.0.0");
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let kids = children(&index);
    assert_eq!(kids.keys().collect::<Vec<_>>(), ["amd64", "arm64"]);
    let pushed = registry.digest("app:1.0.0").unwrap();
    assert_eq!(daemon.image("app")["current_digest"], pushed.as_str());
    assert_eq!(
        registry.digest("app:latest").as_deref(),
        Some(pushed.as_str())
    );
    let ann = &index["annotations"];
    assert_eq!(ann["org.opencontainers.image.version"], "1.0.0");
    assert_eq!(
        ann["org.opencontainers.image.base.digest"],
        Value::String(index1.clone()),
        "pinned to the base's index"
    );
    let bases: Value = serde_json::from_str(ann["io.rebased.bases"].as_str().unwrap()).unwrap();
    assert_eq!(
        bases[format!("{host}/base:latest")],
        Value::String(index1.clone())
    );
    let dir = tempfile::tempdir().unwrap();
    for (arch, expected, base_child) in [("amd64", "x86_64", &amd1), ("arm64", "aarch64", &arm1)] {
        let child = &kids[arch];
        assert_eq!(
            arch_file(registry, &format!("app@{child}"), dir.path()),
            expected,
            "{arch}'s RUN ran as {arch}"
        );
        let m = registry.raw_manifest(&format!("app@{child}"));
        let base_m = registry.raw_manifest(&format!("parts@{base_child}"));
        assert_eq!(
            m["layers"][0]["digest"], base_m["layers"][0]["digest"],
            "{arch} built on its own base child"
        );
        let cfg: Value = serde_json::from_str(&skopeo(&[
            "inspect",
            "--tls-verify=false",
            "--config",
            &format!("docker://{host}/app@{child}"),
        ]))
        .unwrap();
        assert_eq!(cfg["architecture"], arch);
        assert_eq!(
            cfg["config"]["Labels"]["org.opencontainers.image.version"], "1.0.0",
            "the {arch} child carries the provenance labels"
        );
    }
    let version = &daemon.image("app")["versions"][0];
    assert_eq!(
        version["children"]["linux/amd64"],
        Value::String(kids["amd64"].clone())
    );
    assert_eq!(
        version["children"]["linux/arm64"],
        Value::String(kids["arm64"].clone())
    );

    // Only the arm64 child of the base moves: the next version, both
    // platforms rebuilt as one new index.
    let (registry, maker) = (&s.registry, &s.bases);
    let arm2 = maker.push_platform_with(
        registry,
        "parts:arm64-v2",
        "arm64-v2",
        "linux/arm64",
        &arm64_busybox(),
    );
    let index2 = maker.push_index(registry, "parts", &[&amd1, &arm2], "base:latest");
    daemon.wait_version_never_failing("app", "1.0.1", WAIT);
    let index_2 = registry.raw_manifest("app:1.0.1");
    let kids2 = children(&index_2);
    assert_eq!(kids2.keys().collect::<Vec<_>>(), ["amd64", "arm64"]);
    assert_ne!(kids2["arm64"], kids["arm64"]);
    assert_eq!(
        index_2["annotations"]["org.opencontainers.image.base.digest"],
        Value::String(index2.clone())
    );
    assert_eq!(
        arch_file(registry, &format!("app@{}", kids2["arm64"]), dir.path()),
        "aarch64"
    );
    let image = daemon.image("app");
    let old = image["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == "1.0.0")
        .unwrap();
    let moved = old["reason"]["bases"][0]["moved"].as_array().unwrap();
    assert_eq!(moved.len(), 1, "{moved:?}");
    let moved = moved[0].as_str().unwrap();
    assert!(
        moved.starts_with("linux/arm64: ") && moved.contains(&arm1) && moved.contains(&arm2),
        "the reason names the arm64 child: {moved}"
    );
    let job = daemon
        .jobs_of("app")
        .into_iter()
        .find(|j| j["published"] == "1.0.1")
        .expect("the job that published 1.0.1");
    let log = daemon.cli(&["log", &job["id"].as_u64().unwrap().to_string()]);
    assert!(
        log.contains(&format!("child linux/arm64: {arm1} -> {arm2}")),
        "the job log names the arm64 child: {log}"
    );

    // A platform added to the base that the image does not build: nothing.
    let s390 = maker.push_platform(registry, "parts:s390x", "s390x", Some("linux/s390x"));
    let index3 = maker.push_index(registry, "parts", &[&amd1, &arm2, &s390], "base:latest");
    let base_ref = format!("{host}/base:latest");
    wait_for("the three-platform index to settle", WAIT, || {
        let b = daemon.base(&base_ref);
        (b["digest"] == Value::String(index3.clone()) && b["pending"].is_null()).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(daemon.current_version("app").as_deref(), Some("1.0.1"));
    assert!(!registry.tags("app").contains(&"1.0.2".to_owned()));
    assert_eq!(daemon.image("app")["state"], "fresh");
    drop(daemon);
    s
}

#[test]
fn buildah_builds_run_for_two_platforms_as_one_index() {
    builds_two_platforms_with_run("buildah");
}

#[test]
fn podman_builds_run_for_two_platforms_as_one_index() {
    builds_two_platforms_with_run("podman");
}

/// docker's command lines, run by podman (see `engines.rs`): each platform
/// built and pushed under a temporary tag, the index written by rebased.
#[test]
fn docker_builds_run_for_two_platforms_as_one_index() {
    let s = builds_two_platforms_with_run_in("docker", |s| {
        let env = s.docker_through_podman();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        s.start_with_env(&env)
    });
    // Each platform's child stays under its temporary tag, overwritten by
    // the next build: one per platform, whatever the number of versions.
    let mut tags = s.registry.tags("app");
    tags.sort();
    assert_eq!(
        tags,
        [
            "1.0.0",
            "1.0.1",
            "latest",
            "rebased-build-app-linux-amd64",
            "rebased-build-app-linux-arm64"
        ]
    );
}

#[test]
fn a_missing_binfmt_handler_fails_the_job_and_pushes_nothing() {
    let s = Setup::empty();
    let (registry, host) = (&s.registry, s.host());
    let maker = &s.bases;
    let amd = maker.push_platform(registry, "parts:amd", "amd", Some("linux/amd64"));
    let arm = maker.push_platform(registry, "parts:arm", "arm", Some("linux/arm64"));
    maker.push_index(registry, "parts", &[&amd, &arm], "base:latest");
    let ctx = s.context(
        "app",
        &format!("FROM {host}/base:latest\nRUN [\"/bin/busybox\", \"true\"]\n"),
    );
    let empty = s.dir().join("no-binfmt");
    fs::create_dir_all(&empty).unwrap();
    let config = s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"1s\"",
        &format!(
            "[builder]\nbackend = \"buildah\"\nmax_attempts = 1\nbinfmt_dir = \"{}\"\n{}",
            empty.display(),
            image_table(
                "app",
                &ctx,
                &format!("{host}/app"),
                "platforms = [\"linux/amd64\", \"linux/arm64\"]",
            )
        ),
    );
    // check-config warns (and the config is still valid).
    let out = std::process::Command::new(rebased_bin())
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("warning:")
            && text.contains("linux/arm64")
            && text.contains("qemu-user-static"),
        "{text}"
    );
    let daemon = s.start();
    let error = daemon.wait_failing("app", WAIT);
    assert!(
        error.contains("linux/arm64")
            && error.contains("qemu-user-static")
            && error.contains("qemu-aarch64"),
        "{error}"
    );
    assert_eq!(registry.digest("app:1.0.0"), None, "nothing pushed");
    assert_no_write(registry, "app");
    let log = daemon.log_text();
    assert!(!log.contains("pushed "), "nothing pushed: {log}");
}

/// The version's annotation `key`, and its `io.rebased.bases` entry for `base`.
fn pinned(registry: &Registry, repo_tag: &str, base: &str) -> (Value, Value) {
    let ann = registry.raw_manifest(repo_tag)["annotations"].clone();
    let bases: Value = serde_json::from_str(ann["io.rebased.bases"].as_str().unwrap()).unwrap();
    (
        ann["org.opencontainers.image.base.digest"].clone(),
        bases[base].clone(),
    )
}

/// `FROM base-${TARGETARCH}`: one base per platform, each watched, pinned
/// in its platform's build and recorded; an image built FROM the result
/// (a cascade) is pinned to its index digest, and rebuilt when one
/// platform's base moves.
#[test]
fn a_base_per_platform_and_a_cascade_of_the_index() {
    require_arm64_emulation();
    let s = Setup::empty();
    let (registry, maker, host) = (&s.registry, &s.bases, s.host());
    let amd = maker.push_platform(registry, "base-amd64:latest", "amd", Some("linux/amd64"));
    let arm1 = maker.push_platform_with(
        registry,
        "base-arm64:latest",
        "arm-v1",
        "linux/arm64",
        &arm64_busybox(),
    );
    let app = s.context(
        "app",
        &format!(
            "FROM {host}/base-${{TARGETARCH}}:latest\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox uname -m > /arch\"]\n"
        ),
    );
    let child = s.context(
        "child",
        &format!("FROM {host}/app:latest\nCOPY hello /hello\n"),
    );
    let platforms = "tags = [\"latest\"]\nplatforms = [\"linux/amd64\", \"linux/arm64\"]";
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"1s\"",
        &format!(
            "[builder]\nbackend = \"buildah\"\nmax_attempts = 1\n{}{}",
            image_table("app", &app, &format!("{host}/app"), platforms),
            image_table("child", &child, &format!("{host}/child"), platforms),
        ),
    );
    let daemon = s.start();
    daemon.wait_version_never_failing("app", "1.0.0", WAIT);
    daemon.wait_version_never_failing("child", "1.0.0", WAIT);

    // Both bases are watched and recorded; each platform built on its own.
    let (amd_ref, arm_ref) = (
        format!("{host}/base-amd64:latest"),
        format!("{host}/base-arm64:latest"),
    );
    assert_eq!(daemon.base(&amd_ref)["digest"], Value::String(amd.clone()));
    assert_eq!(daemon.base(&arm_ref)["digest"], Value::String(arm1.clone()));
    let v = &daemon.image("app")["versions"][0];
    assert_eq!(v["bases"][&amd_ref], Value::String(amd.clone()));
    assert_eq!(v["bases"][&arm_ref], Value::String(arm1.clone()));
    let kids = children(&registry.raw_manifest("app:1.0.0"));
    let dir = tempfile::tempdir().unwrap();
    for (arch, expected, repo, base_child) in [
        ("amd64", "x86_64", "base-amd64", &amd),
        ("arm64", "aarch64", "base-arm64", &arm1),
    ] {
        let m = registry.raw_manifest(&format!("app@{}", kids[arch]));
        let base_m = registry.raw_manifest(&format!("{repo}@{base_child}"));
        assert_eq!(
            m["layers"][0]["digest"], base_m["layers"][0]["digest"],
            "{arch} built on {repo}"
        );
        assert_eq!(
            arch_file(registry, &format!("app@{}", kids[arch]), dir.path()),
            expected
        );
        // Each child names its own base.
        let cfg: Value = serde_json::from_str(&skopeo(&[
            "inspect",
            "--tls-verify=false",
            "--config",
            &format!("docker://{host}/app@{}", kids[arch]),
        ]))
        .unwrap();
        let labels = &cfg["config"]["Labels"];
        assert_eq!(
            labels["org.opencontainers.image.base.name"],
            Value::String(format!("{host}/{repo}:latest"))
        );
        assert_eq!(
            labels["org.opencontainers.image.base.digest"],
            Value::String(base_child.to_string())
        );
        assert_eq!(
            m["annotations"]["org.opencontainers.image.base.digest"],
            Value::String(base_child.to_string())
        );
    }

    // The cascade: child is pinned to app's index digest.
    let app1 = registry.digest("app:1.0.0").unwrap();
    let app_ref = format!("{host}/app:latest");
    let (base_digest, recorded) = pinned(registry, "child:1.0.0", &app_ref);
    assert_eq!(base_digest, Value::String(app1.clone()));
    assert_eq!(recorded, Value::String(app1.clone()));
    assert_eq!(children(&registry.raw_manifest("child:1.0.0")).len(), 2);

    // Only the arm64 base moves: app and, after it, child rebuild.
    let arm2 = maker.push_platform_with(
        registry,
        "base-arm64:latest",
        "arm-v2",
        "linux/arm64",
        &arm64_busybox(),
    );
    daemon.wait_version_never_failing("app", "1.0.1", WAIT);
    daemon.wait_version_never_failing("child", "1.0.1", WAIT);
    let v = daemon.image("app")["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == "1.0.1")
        .unwrap()
        .clone();
    assert_eq!(v["bases"][&arm_ref], Value::String(arm2));
    assert_eq!(v["bases"][&amd_ref], Value::String(amd));
    let app2 = registry.digest("app:1.0.1").unwrap();
    let (base_digest, recorded) = pinned(registry, "child:1.0.1", &app_ref);
    assert_eq!(base_digest, Value::String(app2.clone()));
    assert_eq!(recorded, Value::String(app2));
}

/// An `oci:` repository gets the engine's index: two children, the index
/// annotated, every blob in the layout (readable by skopeo per platform).
#[test]
fn an_oci_layout_gets_the_engines_two_platform_index() {
    require_arm64_emulation();
    let s = Setup::empty();
    let host = s.host();
    two_platform_base(&s, "amd64-l", "arm64-l");
    let ctx = s.context(
        "app",
        &format!(
            "FROM {host}/base:latest\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox uname -m > /arch\"]\n"
        ),
    );
    let layout = s.dir().join("layout");
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"1s\"",
        &format!(
            "[builder]\nbackend = \"podman\"\nmax_attempts = 1\n{}",
            image_table(
                "app",
                &ctx,
                &format!("oci:{}", layout.display()),
                "tags = [\"latest\"]\nplatforms = [\"linux/amd64\", \"linux/arm64\"]",
            )
        ),
    );
    let daemon = s.start();
    daemon.wait_version_never_failing("app", "1.0.0", WAIT);
    let index = skopeo(&[
        "inspect",
        "--raw",
        &format!("oci:{}:1.0.0", layout.display()),
    ]);
    let index: Value = serde_json::from_str(&index).unwrap();
    assert_eq!(
        index["annotations"]["org.opencontainers.image.version"],
        "1.0.0"
    );
    assert_eq!(children(&index).len(), 2);
    for arch in ["amd64", "arm64"] {
        let cfg: Value = serde_json::from_str(&skopeo(&[
            "inspect",
            "--override-arch",
            arch,
            "--config",
            &format!("oci:{}:latest", layout.display()),
        ]))
        .unwrap();
        assert_eq!(cfg["architecture"], arch);
    }
}

/// One platform's `RUN` fails (only arm64's): the job fails and nothing
/// reaches the repository, not even the platform that built.
#[test]
fn a_platform_that_fails_to_build_pushes_nothing() {
    require_arm64_emulation();
    let s = Setup::empty();
    let (registry, host) = (&s.registry, s.host());
    two_platform_base(&s, "amd64-f", "arm64-f");
    let ctx = s.context(
        "app",
        &format!(
            "FROM {host}/base:latest\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"test $(/bin/busybox uname -m) = x86_64\"]\n"
        ),
    );
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"1s\"",
        &format!(
            "[builder]\nbackend = \"buildah\"\nmax_attempts = 1\n{}",
            image_table(
                "app",
                &ctx,
                &format!("{host}/app"),
                "platforms = [\"linux/amd64\", \"linux/arm64\"]",
            )
        ),
    );
    let daemon = s.start();
    let error = daemon.wait_failing("app", WAIT);
    assert!(error.contains("build failed"), "{error}");
    let log = daemon.cli(&[
        "log",
        &daemon.jobs_of("app")[0]["id"].as_u64().unwrap().to_string(),
    ]);
    assert!(log.contains("# platform linux/arm64"), "{log}");
    let listed = std::process::Command::new("skopeo")
        .args(["list-tags", "--tls-verify=false"])
        .arg(format!("docker://{host}/app"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&listed.stdout);
    assert!(
        !listed.status.success() || !out.contains("1.0.0"),
        "nothing pushed: {out}"
    );
    assert_eq!(registry.digest("app:1.0.0"), None);
    assert_no_write(registry, "app");
}

/// The registry's access log shows no upload or manifest push to `repo`
/// (and does show the bases' pushes to `parts`, so it is the right log).
fn assert_no_write(registry: &Registry, repo: &str) {
    let log = registry.log_text();
    let writes: Vec<&str> = log
        .lines()
        .filter(|l| {
            ["PUT", "POST", "PATCH"]
                .iter()
                .any(|m| l.contains(&format!("\"{m} /v2/{repo}/")))
        })
        .collect();
    assert!(writes.is_empty(), "no write to {repo}: {writes:?}");
    assert!(
        log.contains("\"PUT /v2/parts/"),
        "the registry's access log is read"
    );
}

/// One platform, not the host's: built for it (`--platform`, emulated), as
/// a plain image manifest.
#[test]
fn one_foreign_platform_is_built_for_that_platform() {
    require_arm64_emulation();
    let s = Setup::empty();
    let (registry, host) = (&s.registry, s.host());
    two_platform_base(&s, "amd64-o", "arm64-o");
    let ctx = s.context(
        "app",
        &format!(
            "FROM {host}/base:latest\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox uname -m > /arch\"]\n"
        ),
    );
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"1s\"",
        &format!(
            "[builder]\nbackend = \"buildah\"\nmax_attempts = 1\n{}",
            image_table(
                "app",
                &ctx,
                &format!("{host}/app"),
                "platforms = [\"linux/arm64\"]",
            )
        ),
    );
    let daemon = s.start();
    daemon.wait_version_never_failing("app", "1.0.0", WAIT);
    let digest = registry.digest("app:1.0.0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        arch_file(registry, &format!("app@{digest}"), dir.path()),
        "aarch64"
    );
    assert_eq!(registry.inspect("app:1.0.0")["Architecture"], "arm64");
}
