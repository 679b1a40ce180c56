//! The native backend against the real registry, checked with skopeo: the
//! config, layers and annotations; the files and modes of the layer; a
//! rebuild after a base update that uploads no layer bytes and takes its
//! layer from the layer cache; a two-platform result from a two-platform
//! base; an OCI layout repository; and a `RUN` refused before anything is
//! pushed.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rebased_e2e::{image_table, run, skopeo, Registry, Setup};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);

/// A context with an executable script, a data file in a subdirectory, and
/// an ignored secret.
fn context(dir: &Path, dockerfile: &str) -> std::path::PathBuf {
    let ctx = dir.join("app");
    fs::create_dir_all(ctx.join("app/conf")).unwrap();
    fs::write(ctx.join("app/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(ctx.join("app/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(ctx.join("app/conf/app.conf"), "answer=42\n").unwrap();
    fs::set_permissions(
        ctx.join("app/conf/app.conf"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    fs::write(ctx.join("app/secret.txt"), "do not ship\n").unwrap();
    fs::write(ctx.join(".dockerignore"), "**/secret.txt\n").unwrap();
    fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    ctx
}

/// The tar listing (`tar tvf`, numeric owners) of a blob in an OCI layout.
fn layer_listing(layout: &Path, digest: &str) -> String {
    let blob = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    run(Command::new("tar")
        .arg("--numeric-owner")
        .arg("-tvzf")
        .arg(&blob))
}

#[test]
fn native_build_is_inspectable_and_a_rebuild_uploads_no_layer_bytes() {
    let s = Setup::new();
    let (registry, bases) = (&s.registry, &s.bases);
    let ctx = context(
        s.dir(),
        &format!(
            "FROM {}/base:latest\nWORKDIR /srv\nCOPY --chown=app:staff app/ ./app/\nENV GREETING=hello\nEXPOSE 8080\nUSER app\nCMD [\"/srv/app/run.sh\"]\n",
            registry.host
        ),
    );
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"1s\"",
        &format!(
            "[builder]\nbackend = \"native\"\n{}",
            image_table(
                "app",
                &ctx,
                &format!("{}/app", registry.host),
                "tags = [\"latest\"]"
            )
        ),
    );
    let daemon = s.start();
    daemon.wait_version_never_failing("app", "1.0.0", WAIT);

    // The config, as skopeo reads it.
    let r = format!("docker://{}/app:1.0.0", registry.host);
    let cfg: Value =
        serde_json::from_str(&skopeo(&["inspect", "--tls-verify=false", "--config", &r])).unwrap();
    let c = &cfg["config"];
    let env: Vec<&str> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(env.contains(&"PATH=/bin"), "base env carried over: {env:?}");
    assert!(env.contains(&"GREETING=hello"), "{env:?}");
    assert_eq!(c["Cmd"], serde_json::json!(["/srv/app/run.sh"]));
    assert_eq!(c["WorkingDir"], "/srv");
    assert_eq!(c["User"], "app");
    assert!(c["ExposedPorts"].get("8080/tcp").is_some(), "{c}");
    assert_eq!(c["Labels"]["org.opencontainers.image.version"], "1.0.0");
    let diff_ids = cfg["rootfs"]["diff_ids"].as_array().unwrap();
    let history = cfg["history"].as_array().unwrap();
    let layered = history.iter().filter(|h| h["empty_layer"] != true).count();
    assert_eq!(layered, diff_ids.len(), "history matches layers: {cfg:#}");
    assert!(history.iter().any(|h| h["created_by"]
        .as_str()
        .is_some_and(|s| s.starts_with("COPY --chown=app:staff"))));

    // The manifest: OCI, annotated, base layers first.
    let m = registry.raw_manifest("app:1.0.0");
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(
        m["annotations"]["org.opencontainers.image.version"],
        "1.0.0"
    );
    let base_m = registry.raw_manifest("base:latest");
    let base_layers = base_m["layers"].as_array().unwrap();
    let layers = m["layers"].as_array().unwrap();
    // The base has no /srv: `WORKDIR /srv` makes it in a layer of its own,
    // as Docker does; then the COPY's layer.
    assert_eq!(layers.len(), base_layers.len() + 2);
    for (a, b) in layers.iter().zip(base_layers) {
        assert_eq!(
            a["digest"], b["digest"],
            "base layers are reused as they are"
        );
    }
    let own_v1 = layers.last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned();

    // Files and modes, through `skopeo copy` to a layout.
    let out = s.dir().join("copy");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &r,
        &format!("oci:{}:x", out.display()),
    ]);
    let workdir_layer = layers[base_layers.len()]["digest"].as_str().unwrap();
    let workdir_listing = layer_listing(&out, workdir_layer);
    let rows: Vec<&str> = workdir_listing.lines().collect();
    assert_eq!(rows.len(), 1, "{workdir_listing}");
    assert!(
        rows[0].starts_with("drwxr-xr-x 0/0 ") && rows[0].ends_with(" srv/"),
        "WORKDIR before USER: /srv owned by root: {workdir_listing}"
    );
    let listing = layer_listing(&out, &own_v1);
    let line = |path: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(path))
            .unwrap_or_else(|| panic!("{path} not in the layer:\n{listing}"))
            .to_owned()
    };
    assert!(
        line("srv/app/run.sh").starts_with("-rwxr-xr-x 1000/50 "),
        "{listing}"
    );
    assert!(
        line("srv/app/conf/app.conf").starts_with("-rw-r----- 1000/50 "),
        "{listing}"
    );
    assert!(line("srv/app/conf/").starts_with("drwx"), "{listing}");
    // The missing destination is made for the --chown user, 0755.
    assert!(
        line("srv/app/").starts_with("drwxr-xr-x 1000/50 "),
        "{listing}"
    );
    assert!(
        !listing.lines().any(|l| l.ends_with(" srv/")),
        "/srv is not the COPY's: {listing}"
    );
    assert!(
        line("srv/app/run.sh").contains("1970-01-01"),
        "fixed mtime: {listing}"
    );
    assert!(
        !listing.contains("secret.txt"),
        ".dockerignore honoured: {listing}"
    );
    let unpacked = s.dir().join("unpacked");
    fs::create_dir_all(&unpacked).unwrap();
    let blob = out
        .join("blobs/sha256")
        .join(own_v1.trim_start_matches("sha256:"));
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&blob)
        .arg("-C")
        .arg(&unpacked));
    assert_eq!(
        fs::read_to_string(unpacked.join("srv/app/conf/app.conf")).unwrap(),
        "answer=42\n"
    );

    // buildah takes the image and runs a program from it.
    let storage = s.dir().join("buildah");
    let buildah = |args: &[&str]| {
        run(Command::new("buildah")
            .arg("--root")
            .arg(storage.join("root"))
            .arg("--runroot")
            .arg(storage.join("runroot"))
            .args(["--storage-driver", "vfs"])
            .args(args))
    };
    let ctr = buildah(&["from", "--tls-verify=false", &r]);
    let out = buildah(&[
        "run",
        "--isolation",
        "chroot",
        ctr.trim(),
        "/bin/busybox",
        "cat",
        "/srv/app/conf/app.conf",
    ]);
    assert_eq!(out, "answer=42\n");
    buildah(&["rm", ctr.trim()]);

    // A base update: the rebuild's own layer is identical and only the
    // config is uploaded (besides manifests); base layers are mounted.
    let mark = registry.log_text().len();
    bases.push(registry, "base:latest", "v2");
    let base_pushes = registry.log_text()[mark..]
        .matches("\"PUT /v2/base/blobs/uploads/")
        .count();
    let mark = registry.log_text().len();
    assert!(base_pushes > 0);
    daemon.wait_version_never_failing("app", "1.0.1", WAIT);
    let m2 = registry.raw_manifest("app:1.0.1");
    let own_v2 = m2["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(own_v1, own_v2, "the rebuild's own layer is byte-identical");
    assert_eq!(
        m2["layers"].as_array().unwrap()[m2["layers"].as_array().unwrap().len() - 2]["digest"],
        workdir_layer,
        "so is its WORKDIR layer"
    );
    let log = registry.log_text()[mark..].to_owned();
    let uploads: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"PUT /v2/app/blobs/uploads/"))
        .collect();
    assert_eq!(uploads.len(), 1, "only the config is uploaded:\n{log}");
    assert!(
        uploads[0].contains(
            m2["config"]["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:")
        ),
        "{}",
        uploads[0]
    );
    assert!(log.contains("mount=sha256"), "base layers mounted:\n{log}");
    let job_log = {
        let jobs = daemon.get("/v1/jobs");
        let id = jobs
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_u64().unwrap())
            .max()
            .unwrap();
        daemon.cli(&["log", &id.to_string()])
    };
    assert!(job_log.contains("layer bytes uploaded: 0"), "{job_log}");
    // The layer cache: the sources were neither tarred nor gzipped again
    // (stamps younger than 2 s are checked by content instead).
    assert!(
        job_log.contains("sources unchanged since an earlier build, not rebuilt")
            || job_log.contains("same contents as an earlier build, not recompressed"),
        "{job_log}"
    );
    assert_eq!(registry.digest("app:latest"), registry.digest("app:1.0.1"));
    assert!(
        job_log.contains("reading the file list of base layer"),
        "the new base's tree is read: {job_log}"
    );

    // A rebuild over the same base: its file lists come from the layer
    // cache (no base layer is downloaded) and no layer bytes are uploaded.
    let mark = registry.log_text().len();
    daemon.cli(&["rebuild", "app"]);
    daemon.wait_version_never_failing("app", "1.0.2", WAIT);
    let log = registry.log_text()[mark..].to_owned();
    for l in registry.raw_manifest("base:latest")["layers"]
        .as_array()
        .unwrap()
    {
        let d = l["digest"].as_str().unwrap();
        assert!(
            !log.contains(&format!("GET /v2/base/blobs/{d}")),
            "base layer {d} read again:\n{log}"
        );
    }
    let uploads = log
        .lines()
        .filter(|l| l.contains("\"PUT /v2/app/blobs/uploads/"))
        .count();
    assert_eq!(uploads, 1, "only the config is uploaded:\n{log}");
}

#[test]
fn a_two_platform_base_gives_a_two_platform_result() {
    let s = Setup::empty();
    let (registry, bases) = (&s.registry, &s.bases);
    let amd = bases.push_platform(registry, "base:amd64", "amd", Some("linux/amd64"));
    let arm = bases.push_platform(registry, "base:arm64", "arm", Some("linux/arm64"));
    bases.push_index(registry, "base", &[&amd, &arm], "base:latest");
    let ctx = context(
        s.dir(),
        &format!(
            "FROM {}/base:latest\nCOPY app /app\nCMD [\"/app/run.sh\"]\n",
            registry.host
        ),
    );
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"1s\"",
        &image_table(
            "multi",
            &ctx,
            &format!("{}/multi", registry.host),
            "platforms = [\"linux/amd64\", \"linux/arm64\"]",
        ),
    );
    let daemon = s.start();
    daemon.wait_version_never_failing("multi", "1.0.0", WAIT);
    let index = registry.raw_manifest("multi:1.0.0");
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(
        index["annotations"]["org.opencontainers.image.version"],
        "1.0.0"
    );
    let entries = index["manifests"].as_array().unwrap();
    let mut archs: Vec<&str> = entries
        .iter()
        .map(|e| e["platform"]["architecture"].as_str().unwrap())
        .collect();
    archs.sort();
    assert_eq!(archs, ["amd64", "arm64"]);
    let mut own_layers = Vec::new();
    for (arch, base_child) in [("amd64", &amd), ("arm64", &arm)] {
        let r = format!("docker://{}/multi:1.0.0", registry.host);
        let cfg: Value = serde_json::from_str(&skopeo(&[
            "inspect",
            "--tls-verify=false",
            "--override-arch",
            arch,
            "--config",
            &r,
        ]))
        .unwrap();
        assert_eq!(cfg["architecture"], arch);
        let raw: Value = serde_json::from_str(&skopeo(&[
            "inspect",
            "--tls-verify=false",
            "--override-arch",
            arch,
            "--raw",
            &r,
        ]))
        .unwrap();
        // --raw gives the index; read the child through its digest.
        let child = raw["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["platform"]["architecture"] == arch)
            .unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_owned();
        let m = registry.raw_manifest(&format!("multi@{child}"));
        let base_m = registry.raw_manifest(&format!("base@{base_child}"));
        assert_eq!(
            m["layers"][0]["digest"], base_m["layers"][0]["digest"],
            "{arch} built on its own base"
        );
        own_layers.push(m["layers"].as_array().unwrap().last().unwrap()["digest"].clone());
    }
    assert_eq!(
        own_layers[0], own_layers[1],
        "one layer shared by both platforms"
    );
}

#[test]
fn an_oci_layout_repository_is_readable_by_skopeo() {
    let s = Setup::new();
    let (registry, bases) = (&s.registry, &s.bases);
    let ctx = context(
        s.dir(),
        &format!("FROM {}/base:latest\nCOPY app /app\n", registry.host),
    );
    let layout = s.dir().join("layout");
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"1s\"",
        &image_table(
            "local",
            &ctx,
            &format!("oci:{}", layout.display()),
            "tags = [\"latest\"]",
        ),
    );
    let daemon = s.start();
    daemon.wait_version_never_failing("local", "1.0.0", WAIT);
    let inspect = |tag: &str| -> Value {
        serde_json::from_str(&skopeo(&[
            "inspect",
            &format!("oci:{}:{tag}", layout.display()),
        ]))
        .unwrap()
    };
    let v1 = inspect("1.0.0");
    assert_eq!(v1["Digest"], inspect("latest")["Digest"]);
    assert_eq!(v1["Labels"]["org.opencontainers.image.version"], "1.0.0");
    let out = s.dir().join("out");
    skopeo(&[
        "copy",
        &format!("oci:{}:1.0.0", layout.display()),
        &format!("oci:{}:copied", out.display()),
    ]);
    bases.push(registry, "base:latest", "v2");
    daemon.wait_version_never_failing("local", "1.0.1", WAIT);
    let v2 = inspect("1.0.1");
    assert_eq!(v2["Digest"], inspect("latest")["Digest"], "latest moved");
    assert_eq!(inspect("1.0.0")["Digest"], v1["Digest"], "1.0.0 kept");
    let index: Value =
        serde_json::from_str(&fs::read_to_string(layout.join("index.json")).unwrap()).unwrap();
    let mut names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["1.0.0", "1.0.1", "latest"]);
    let versions = daemon.image("local")["versions"].clone();
    assert_eq!(versions[0]["superseded_by"], "1.0.1");
}

#[test]
fn a_base_on_another_registry_is_streamed_not_mounted() {
    let upstream = Registry::start();
    let s = Setup::empty();
    let (registry, bases) = (&s.registry, &s.bases);
    bases.push(&upstream, "base:latest", "v1");
    let ctx = context(
        s.dir(),
        &format!("FROM {}/base:latest\nCOPY app /app\n", upstream.host),
    );
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"1s\"",
        &format!(
            "[registries.\"{}\"]\ninsecure = true\n{}",
            upstream.host,
            image_table("app", &ctx, &format!("{}/app", registry.host), "")
        ),
    );
    let daemon = s.start();
    daemon.wait_version_never_failing("app", "1.0.0", WAIT);
    let m = registry.raw_manifest("app:1.0.0");
    let base = upstream.raw_manifest("base:latest");
    let log = registry.log_text();
    assert!(
        !log.contains("mount="),
        "no mount across registries:\n{log}"
    );
    for layer in base["layers"].as_array().unwrap() {
        let d = layer["digest"].as_str().unwrap();
        assert!(
            m["layers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["digest"] == d),
            "{d} reused"
        );
        assert!(
            log.contains(&format!(
                "digest=sha256%3A{}",
                d.trim_start_matches("sha256:")
            )),
            "{d} streamed into the target registry:\n{log}"
        );
    }
    // The image is complete in its own registry.
    let out = s.dir().join("copy");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}/app:1.0.0", registry.host),
        &format!("oci:{}:x", out.display()),
    ]);
}

#[test]
fn run_is_refused_by_the_native_backend_before_any_push() {
    let s = Setup::new();
    let registry = &s.registry;
    let ctx = context(
        s.dir(),
        &format!(
            "FROM {}/base:latest\nCOPY app /app\nRUN echo hi\n",
            registry.host
        ),
    );
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"1s\"",
        &format!(
            "[builder]\nbackend = \"native\"\nmax_attempts = 1\n{}",
            image_table("app", &ctx, &format!("{}/app", registry.host), "")
        ),
    );
    let daemon = s.start();
    let error = daemon.wait_failing("app", WAIT);
    assert!(error.contains("line 3"), "{error}");
    assert!(
        error.contains("RUN") && error.contains("buildah"),
        "{error}"
    );
    assert!(registry.digest("app:1.0.0").is_none());
    assert!(
        !registry.log_text().contains("/v2/app/blobs/uploads/"),
        "nothing was uploaded"
    );
}
