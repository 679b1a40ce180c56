//! The native backend against buildah, on a corpus of `RUN`-less
//! Dockerfiles over one base with the awkward parts of a real one (a
//! usr-merged `/bin -> usr/bin`, a 1777 `/tmp`, an `/etc` owned by a
//! group, users in `/etc/passwd`).
//!
//! Each case is built by buildah (vfs storage, chroot isolation, the OCI
//! format rebased's buildah backend uses) and by the native backend
//! (`rebased once`), both into OCI layouts; then the image configs (Env,
//! Cmd, Entrypoint, WorkingDir, User, ExposedPorts, Volumes, Labels,
//! StopSignal, Healthcheck, Shell) and the merged file systems (path,
//! type, mode, owner, content sha256, link target; not mtimes) are
//! compared. Where buildah departs from Docker, Docker's documented
//! behaviour decides: such a difference is listed in the case as an
//! expected one, with both sides' values and the reason, and the test
//! fails if it does not show exactly so (or if any other difference
//! shows).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use rebased_e2e::{free_port, image_table, rebased_bin, run, write_config, Registry};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// A difference buildah shows where Docker does what the native backend
/// does.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Diff {
    /// A config field: buildah's value, the native value (JSON text).
    Config {
        field: &'static str,
        buildah: String,
        native: String,
    },
    /// A path of the merged file system: what each has there.
    Path {
        path: String,
        buildah: Option<String>,
        native: Option<String>,
    },
}

struct Case {
    name: &'static str,
    /// The Dockerfile after `FROM <base>`.
    dockerfile: &'static str,
    /// Context files: path, contents, mode.
    files: &'static [(&'static str, &'static str, u32)],
    /// Differences that must show, each with why Docker sides with the
    /// native backend.
    expected: Vec<(Diff, &'static str)>,
}

fn config_diff(field: &'static str, buildah: &str, native: &str) -> Diff {
    Diff::Config {
        field,
        buildah: buildah.to_owned(),
        native: native.to_owned(),
    }
}

/// Docker (BuildKit) writes `HEALTHCHECK` into the config (Dockerfile
/// reference, HEALTHCHECK); buildah drops it from OCI-format images
/// ("HEALTHCHECK is not supported for OCI image format").
const WHY_HEALTHCHECK: &str =
    "Docker keeps HEALTHCHECK in the image config; buildah drops it in the OCI format";
/// Docker's `SHELL` is recorded in the config and used for later
/// shell-form `CMD`/`ENTRYPOINT`/`HEALTHCHECK` (Dockerfile reference,
/// SHELL); buildah's OCI format ignores it and keeps `/bin/sh -c`.
const WHY_SHELL: &str = "Docker records SHELL and uses it for shell-form CMD and ENTRYPOINT; buildah's OCI format ignores it";
/// Docker unpacks an `ADD` archive into a destination it has just made
/// (0755, the `--chown` user, else root) and skips the archive's `.`
/// member there (`pkg/archive`: an existing directory named `.` is left
/// as it is); buildah gives the destination the `.` member's owner.
const WHY_ARCHIVE_ROOT: &str = "Docker leaves the destination of an ADD archive as it made it; buildah applies the archive's `.` member to it";
/// BuildKit's `ENV` replaces a variable the config already has in place
/// (its `addEnv`); buildah removes it and appends it. Same variables,
/// another order.
const WHY_ENV_ORDER: &str =
    "Docker replaces an existing variable in place; buildah moves it to the end";
/// Docker expands a port range into one `ExposedPorts` key per port
/// (`nat.ParsePortSpecs`); buildah keeps the range as one key.
const WHY_PORT_RANGE: &str =
    "Docker records a port range as one key per port; buildah keeps the range as one key";

fn corpus() -> Vec<Case> {
    vec![
        Case {
            name: "workdir-after-user",
            dockerfile: "USER app\nWORKDIR /home/app/work\nCOPY a.txt ./\nWORKDIR logs\n",
            files: &[("a.txt", "a\n", 0o644)],
            expected: vec![],
        },
        Case {
            name: "workdir-numeric-user-and-existing",
            dockerfile: "WORKDIR /tmp\nUSER 1234:2345\nWORKDIR /srv/data\nWORKDIR /etc\nCOPY a.txt .\n",
            files: &[("a.txt", "a\n", 0o600)],
            expected: vec![],
        },
        Case {
            name: "copy-chown-into-missing-dirs",
            dockerfile: "COPY --chown=app:app a.txt /home/app/\nCOPY --chown=1000 dir /home/app/dir\nCOPY b.txt /opt/tools/renamed\n",
            files: &[
                ("a.txt", "a\n", 0o644),
                ("b.txt", "b\n", 0o755),
                ("dir/x", "x\n", 0o640),
                ("dir/sub/y", "y\n", 0o644),
            ],
            expected: vec![],
        },
        Case {
            name: "env-label-arg",
            dockerfile: "ARG VERSION=1.2\nARG FLAVOUR\nENV APP_HOME=/opt/app PATH=$PATH:/opt/app/bin\nENV LEGACY with spaces\nLABEL version=$VERSION home=\"$APP_HOME\" flavour=${FLAVOUR:-plain}\nCOPY a.txt $APP_HOME/\n",
            files: &[("a.txt", "a\n", 0o644)],
            expected: vec![(
                config_diff(
                    "Env",
                    r#"["HOME=/root","APP_HOME=/opt/app","PATH=/usr/local/bin:/usr/bin:/bin:/opt/app/bin","LEGACY=with spaces"]"#,
                    r#"["PATH=/usr/local/bin:/usr/bin:/bin:/opt/app/bin","HOME=/root","APP_HOME=/opt/app","LEGACY=with spaces"]"#,
                ),
                WHY_ENV_ORDER,
            )],
        },
        Case {
            name: "env-label-quotes",
            dockerfile: "ENV S='$HOME x' D=\"$HOME \\\"q\\\" \\n\" U=$HOME\\ y E=a\\$b\nENV LEGACY \"quoted $HOME\"\nLABEL 'single'='${HOME}' mixed=pre'$HOME'\"$HOME\"post\n",
            files: &[],
            expected: vec![],
        },
        Case {
            name: "expose-volume-stopsignal",
            dockerfile: "EXPOSE 80 53/udp 8000-8002\nVOLUME [\"/data\", \"/cache\"]\nVOLUME /logs\nSTOPSIGNAL SIGINT\n",
            files: &[],
            expected: vec![(
                config_diff(
                    "ExposedPorts",
                    r#"{"53/udp":{},"80/tcp":{},"8000-8002/tcp":{}}"#,
                    r#"{"53/udp":{},"80/tcp":{},"8000/tcp":{},"8001/tcp":{},"8002/tcp":{}}"#,
                ),
                WHY_PORT_RANGE,
            )],
        },
        Case {
            name: "cmd-entrypoint-exec",
            dockerfile: "ENTRYPOINT [\"/usr/bin/busybox\"]\nCMD [\"echo\", \"hi\"]\n",
            files: &[],
            expected: vec![],
        },
        Case {
            name: "cmd-entrypoint-shell",
            dockerfile: "CMD echo inherited\nENTRYPOINT busybox echo $HOME\n",
            files: &[],
            expected: vec![],
        },
        Case {
            name: "shell",
            dockerfile: "SHELL [\"/usr/bin/busybox\", \"sh\", \"-c\"]\nCMD echo hi\n",
            files: &[],
            expected: vec![
                (
                    config_diff("Shell", "null", r#"["/usr/bin/busybox","sh","-c"]"#),
                    WHY_SHELL,
                ),
                (
                    config_diff(
                        "Cmd",
                        r#"["/bin/sh","-c","echo hi"]"#,
                        r#"["/usr/bin/busybox","sh","-c","echo hi"]"#,
                    ),
                    WHY_SHELL,
                ),
            ],
        },
        Case {
            name: "healthcheck",
            dockerfile: "HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD [\"/usr/bin/busybox\", \"true\"]\n",
            files: &[],
            expected: vec![(
                config_diff(
                    "Healthcheck",
                    "null",
                    r#"{"Interval":30000000000,"Retries":3,"Test":["CMD","/usr/bin/busybox","true"],"Timeout":5000000000}"#,
                ),
                WHY_HEALTHCHECK,
            )],
        },
        Case {
            name: "add-local-tar",
            dockerfile: "ADD files.tar.gz /opt/unpacked/\nADD plain.tar /\n",
            files: &[],
            // The archive's members are 1234:1234, `.` included.
            expected: vec![(
                Diff::Path {
                    path: "opt/unpacked".to_owned(),
                    buildah: Some("dir 0755 1234:1234".to_owned()),
                    native: Some("dir 0755 0:0".to_owned()),
                },
                WHY_ARCHIVE_ROOT,
            )],
        },
        Case {
            name: "dockerignore",
            dockerfile: "COPY . /src/\n",
            files: &[
                (".dockerignore", "*.log\n!keep.log\nsecret/\n**/*.tmp\n", 0o644),
                ("app.txt", "app\n", 0o644),
                ("drop.log", "x\n", 0o644),
                ("keep.log", "k\n", 0o644),
                ("secret/key", "s\n", 0o600),
                ("deep/er/x.tmp", "t\n", 0o644),
                ("deep/er/y.txt", "y\n", 0o644),
            ],
            expected: vec![],
        },
        Case {
            name: "globs",
            dockerfile: "COPY *.txt conf/*.conf /etc/app/\nCOPY [\"conf/b.conf\", \"/etc/\"]\n",
            files: &[
                ("a.txt", "a\n", 0o644),
                ("b.txt", "b\n", 0o600),
                ("conf/a.conf", "a=1\n", 0o644),
                ("conf/b.conf", "b=2\n", 0o640),
                ("conf/c.ini", "no\n", 0o644),
            ],
            expected: vec![],
        },
        Case {
            name: "chmod-and-system-dirs",
            dockerfile: "COPY --chmod=0750 run.sh /usr/local/bin/\nCOPY --chmod=640 --chown=1000:1001 a.txt /srv/data/\nCOPY a.txt /bin/\nCOPY a.txt /tmp/\nCOPY a.txt /etc/a.txt\n",
            files: &[("run.sh", "#!/bin/sh\n", 0o644), ("a.txt", "a\n", 0o644)],
            expected: vec![],
        },
    ]
}

/// buildah with its own storage.
struct Buildah {
    dir: PathBuf,
}

impl Buildah {
    fn cmd(&self) -> Command {
        let mut c = Command::new("buildah");
        c.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .args(["--storage-driver", "vfs"]);
        c
    }

    fn run(&self, args: &[&str]) -> String {
        run(self.cmd().args(args)).trim().to_owned()
    }
}

/// The base: busybox in /usr/bin, `/bin -> usr/bin`, a 1777 /tmp, /etc
/// owned by group 50, users root, app (1000:1001) and www-data, a /home.
fn push_base(b: &Buildah, registry: &Registry) -> String {
    let ctr = b.run(&["from", "scratch"]);
    let root = PathBuf::from(b.run(&["mount", &ctr]));
    let mkdir = |p: &str, mode: u32, uid: u32, gid: u32| {
        let path = root.join(p);
        fs::create_dir_all(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
    };
    mkdir("usr", 0o755, 0, 0);
    mkdir("usr/bin", 0o755, 0, 0);
    mkdir("tmp", 0o1777, 0, 0);
    mkdir("etc", 0o755, 0, 50);
    mkdir("home", 0o755, 0, 0);
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("busybox-static must be installed");
    fs::copy(busybox, root.join("usr/bin/busybox")).unwrap();
    symlink("usr/bin", root.join("bin")).unwrap();
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\nwww-data:x:33:33::/var/www:/bin/false\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/group"),
        "root:x:0:\napp:x:1001:\nstaff:x:50:app\n",
    )
    .unwrap();
    b.run(&["umount", &ctr]);
    b.run(&[
        "config",
        "--env",
        "PATH=/usr/local/bin:/usr/bin:/bin",
        "--env",
        "HOME=/root",
        "--label",
        "base=differential",
        &ctr,
    ]);
    b.run(&["commit", "--quiet", &ctr, "localhost/diff-base"]);
    let base = format!("{}/diff-base:latest", registry.host);
    b.run(&[
        "push",
        "--tls-verify=false",
        "localhost/diff-base",
        &format!("docker://{base}"),
    ]);
    base
}

/// A tar made by GNU tar from `dir`, every member owned by `owner`.
fn tar_of(dir: &Path, out: &Path, gzip: bool, owner: &str) {
    let mut c = Command::new("tar");
    c.arg("--numeric-owner")
        .arg(format!("--owner={owner}"))
        .arg(format!("--group={owner}"))
        .arg("-C")
        .arg(dir)
        .arg(if gzip { "-czf" } else { "-cf" })
        .arg(out)
        .arg(".");
    run(&mut c);
}

fn write_case(ctx: &Path, base: &str, case: &Case) {
    fs::create_dir_all(ctx).unwrap();
    for (path, contents, mode) in case.files {
        let p = ctx.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, contents).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).unwrap();
    }
    if case.name == "add-local-tar" {
        let src = ctx.parent().unwrap().join("tar-src");
        fs::create_dir_all(src.join("bin")).unwrap();
        fs::write(src.join("bin/tool"), "#!tool\n").unwrap();
        fs::set_permissions(src.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(src.join("bin"), fs::Permissions::from_mode(0o711)).unwrap();
        fs::write(src.join("conf"), "c\n").unwrap();
        fs::set_permissions(src.join("conf"), fs::Permissions::from_mode(0o600)).unwrap();
        symlink("bin/tool", src.join("link")).unwrap();
        tar_of(&src, &ctx.join("files.tar.gz"), true, "1234");
        let plain = ctx.parent().unwrap().join("plain-src");
        fs::create_dir_all(plain.join("opt/plain")).unwrap();
        fs::write(plain.join("opt/plain/p"), "p\n").unwrap();
        tar_of(&plain, &ctx.join("plain.tar"), false, "0");
    }
    fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {base}\n{}", case.dockerfile),
    )
    .unwrap();
}

/// An OCI layout's manifest for `tag`: its config and layer blobs.
fn read_layout(layout: &Path, tag: &str) -> (Value, Vec<Vec<u8>>) {
    let blob = |d: &str| {
        fs::read(
            layout
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no {tag} in {}: {index}", layout.display()));
    let manifest: Value = serde_json::from_slice(&blob(entry["digest"].as_str().unwrap())).unwrap();
    let config: Value =
        serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    let layers = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| blob(l["digest"].as_str().unwrap()))
        .collect();
    (config, layers)
}

/// The merged file system of `layers`, as containerd applies them (an
/// implementation of its own, not the native backend's): whiteouts and
/// opaque directories hide what is below, a parent that is a symlink is
/// followed. Each path rendered as `dir 0755 0:0`, `file 0644 0:0
/// <sha256>` or `link 0:0 -> target`.
fn merged(layers: &[Vec<u8>]) -> BTreeMap<String, String> {
    let mut fs: BTreeMap<String, String> = BTreeMap::new();
    for blob in layers {
        let mut tar_bytes = Vec::new();
        flate2::read::MultiGzDecoder::new(blob.as_slice())
            .read_to_end(&mut tar_bytes)
            .unwrap();
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        let mut entries = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            let path = path
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .collect::<Vec<_>>()
                .join("/");
            if path.is_empty() {
                continue;
            }
            let h = e.header().clone();
            let owner = format!("{}:{}", h.uid().unwrap(), h.gid().unwrap());
            let mode = h.mode().unwrap() & 0o7777;
            let link = e
                .link_name_bytes()
                .map(|b| String::from_utf8(b.into_owned()).unwrap());
            let node = match h.entry_type() {
                tar::EntryType::Directory => format!("dir {mode:04o} {owner}"),
                tar::EntryType::Symlink => format!("link {owner} -> {}", link.unwrap()),
                tar::EntryType::Link => format!("hardlink -> {}", link.unwrap()),
                _ => {
                    let mut data = Vec::new();
                    e.read_to_end(&mut data).unwrap();
                    let sum = Sha256::digest(&data);
                    let hex: String = sum.iter().take(8).map(|b| format!("{b:02x}")).collect();
                    format!("file {mode:04o} {owner} {hex}")
                }
            };
            entries.push((path, node));
        }
        // Whiteouts first: they hide lower layers only.
        for (path, _) in &entries {
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
            if name == ".wh..wh..opq" {
                remove_below(&mut fs, parent);
            } else if let Some(hidden) = name.strip_prefix(".wh.") {
                let gone = if parent.is_empty() {
                    hidden.to_owned()
                } else {
                    format!("{parent}/{hidden}")
                };
                fs.remove(&gone);
                remove_below(&mut fs, &gone);
            }
        }
        for (path, node) in entries {
            if path.rsplit('/').next().unwrap().starts_with(".wh.") {
                continue;
            }
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", &path));
            let real_parent = resolve(&fs, parent);
            let full = if real_parent.is_empty() {
                name.to_owned()
            } else {
                format!("{real_parent}/{name}")
            };
            if !node.starts_with("dir ") {
                remove_below(&mut fs, &full);
            }
            fs.insert(full, node);
        }
    }
    fs
}

fn remove_below(fs: &mut BTreeMap<String, String>, dir: &str) {
    if dir.is_empty() {
        fs.clear();
        return;
    }
    let prefix = format!("{dir}/");
    fs.retain(|k, _| !k.starts_with(&prefix));
}

/// `path` with symlinked directories followed inside the root.
fn resolve(fs: &BTreeMap<String, String>, path: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut pending: Vec<String> = path.split('/').rev().map(str::to_owned).collect();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                out.pop();
                continue;
            }
            _ => out.push(c),
        }
        if let Some(target) = fs
            .get(&out.join("/"))
            .and_then(|n| n.split_once(" -> "))
            .filter(|(kind, _)| kind.starts_with("link "))
            .map(|(_, t)| t.to_owned())
        {
            hops += 1;
            assert!(hops < 40, "symlink loop at {path}");
            out.pop();
            if target.starts_with('/') {
                out.clear();
            }
            pending.extend(target.split('/').rev().map(str::to_owned));
        }
    }
    out.join("/")
}

/// The config fields compared; labels without the provenance rebased
/// adds and buildah's version label.
fn config_fields(config: &Value) -> BTreeMap<&'static str, Value> {
    let c = &config["config"];
    let mut out = BTreeMap::new();
    for field in [
        "Env",
        "Cmd",
        "Entrypoint",
        "WorkingDir",
        "User",
        "ExposedPorts",
        "Volumes",
        "StopSignal",
        "Healthcheck",
        "Shell",
    ] {
        let v = match c.get(field) {
            None => Value::Null,
            // An empty value is no value (buildah writes "" for no USER).
            Some(Value::String(s)) if s.is_empty() => Value::Null,
            Some(v) => v.clone(),
        };
        out.insert(field, v);
    }
    let labels: serde_json::Map<String, Value> = c["Labels"]
        .as_object()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| {
            !k.starts_with("org.opencontainers.image.")
                && !k.starts_with("io.rebased.")
                && k != "io.buildah.version"
        })
        .collect();
    out.insert("Labels", Value::Object(labels));
    out
}

fn differences(buildah: &(Value, Vec<Vec<u8>>), native: &(Value, Vec<Vec<u8>>)) -> Vec<Diff> {
    let mut out = Vec::new();
    let (bc, nc) = (config_fields(&buildah.0), config_fields(&native.0));
    for (field, b) in &bc {
        let n = &nc[field];
        if b != n {
            out.push(Diff::Config {
                field,
                buildah: b.to_string(),
                native: n.to_string(),
            });
        }
    }
    let (bf, nf) = (merged(&buildah.1), merged(&native.1));
    let paths: std::collections::BTreeSet<&String> = bf.keys().chain(nf.keys()).collect();
    for path in paths {
        let (b, n) = (bf.get(path), nf.get(path));
        if b != n {
            out.push(Diff::Path {
                path: path.clone(),
                buildah: b.cloned(),
                native: n.cloned(),
            });
        }
    }
    out
}

#[test]
fn native_images_match_buildahs_except_where_docker_sides_with_native() {
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let b = Buildah {
        dir: work.path().join("buildah"),
    };
    let base = push_base(&b, &registry);
    let cases = corpus();
    let mut images = String::new();
    for case in &cases {
        let ctx = work.path().join("cases").join(case.name).join("ctx");
        write_case(&ctx, &base, case);
        let layout = work.path().join("native").join(case.name);
        images.push_str(&image_table(
            case.name,
            &ctx,
            &format!("oci:{}", layout.display()),
            "tags = [\"latest\"]",
        ));
        let local = format!("localhost/diff-{}", case.name);
        b.run(&[
            "bud",
            "--isolation",
            "chroot",
            "--layers=false",
            "--tls-verify=false",
            "--quiet",
            "-t",
            &local,
            ctx.to_str().unwrap(),
        ]);
        let out = work.path().join("buildah-out").join(case.name);
        fs::create_dir_all(out.parent().unwrap()).unwrap();
        b.run(&["push", &local, &format!("oci:{}:latest", out.display())]);
    }
    let listen = format!("127.0.0.1:{}", free_port());
    let config = write_config(
        work.path(),
        &listen,
        &registry.host,
        "",
        &format!("[builder]\nbackend = \"native\"\n{images}"),
    );
    let once = Command::new(rebased_bin())
        .args(["once", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        once.status.success(),
        "rebased once failed:\n{}",
        String::from_utf8_lossy(&once.stderr)
    );

    // What Docker does, asserted on the native images themselves, so an
    // agreement cannot hide a shared mistake.
    let native_fs =
        |name: &str| merged(&read_layout(&work.path().join("native").join(name), "latest").1);
    let fs = native_fs("workdir-after-user");
    for (path, want) in [
        ("home", "dir 0755 0:0"),
        ("home/app", "dir 0755 1000:1001"),
        ("home/app/work", "dir 0755 1000:1001"),
        ("home/app/work/logs", "dir 0755 1000:1001"),
    ] {
        assert_eq!(
            fs.get(path).map(String::as_str),
            Some(want),
            "{path}: {fs:#?}"
        );
    }
    let fs = native_fs("copy-chown-into-missing-dirs");
    assert_eq!(fs["home/app"], "dir 0755 1000:1001");
    assert_eq!(
        fs["home/app/dir"], "dir 0755 1000:1000",
        "--chown=1000: gid 1000"
    );
    assert_eq!(fs["opt"], "dir 0755 0:0");
    assert!(fs["opt/tools/renamed"].starts_with("file 0755 0:0 "));
    let fs = native_fs("chmod-and-system-dirs");
    for (path, want) in [
        ("bin", "link 0:0 -> usr/bin"),
        ("tmp", "dir 1777 0:0"),
        ("etc", "dir 0755 0:50"),
        ("usr/local", "dir 0755 0:0"),
        ("srv/data", "dir 0755 1000:1001"),
    ] {
        assert_eq!(
            fs.get(path).map(String::as_str),
            Some(want),
            "{path}: {fs:#?}"
        );
    }
    assert!(
        fs["usr/bin/a.txt"].starts_with("file 0644 0:0 "),
        "through /bin"
    );
    assert!(fs["srv/data/a.txt"].starts_with("file 0640 1000:1001 "));
    let (quotes, _) = read_layout(
        &work.path().join("native").join("env-label-quotes"),
        "latest",
    );
    let env = quotes["config"]["Env"].as_array().unwrap();
    assert!(
        env.contains(&Value::from("S=$HOME x")),
        "single quotes: {env:?}"
    );
    assert!(env.contains(&Value::from("LEGACY=quoted /root")), "{env:?}");
    assert_eq!(quotes["config"]["Labels"]["single"], "${HOME}");
    let fs = native_fs("add-local-tar");
    assert_eq!(
        fs["opt/unpacked/bin"], "dir 0711 1234:1234",
        "the archive's owner"
    );
    assert_eq!(fs["opt/unpacked/link"], "link 1234:1234 -> bin/tool");

    let mut report = String::new();
    for case in &cases {
        let buildah = read_layout(&work.path().join("buildah-out").join(case.name), "latest");
        let native = read_layout(&work.path().join("native").join(case.name), "latest");
        let mut got = differences(&buildah, &native);
        got.sort();
        let mut want: Vec<Diff> = case.expected.iter().map(|(d, _)| d.clone()).collect();
        want.sort();
        if got != want {
            report.push_str(&format!(
                "\n== {}\nunexpected: {:#?}\nexpected but not seen: {:#?}\n",
                case.name,
                got.iter().filter(|d| !want.contains(d)).collect::<Vec<_>>(),
                case.expected
                    .iter()
                    .filter(|(d, _)| !got.contains(d))
                    .collect::<Vec<_>>(),
            ));
        }
    }
    assert!(report.is_empty(), "native and buildah differ:{report}");
}
