//! The end-to-end harness: a real `docker-registry` on a free 127.0.0.1
//! port, base images made with buildah from Debian's `busybox-static`, the
//! real `rebased` binary, and `skopeo` to check what was pushed.
//!
//! Everything is started in a temporary directory and stopped on drop.

#![allow(clippy::unwrap_used, missing_docs)] // test harness: a failed step should fail the test loudly

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// The lower-case hex HMAC-SHA256 of `body` under `key` (webhook
/// senders' and rebased's notifiers' signatures).
pub fn hmac_sha256_hex(key: &str, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 250 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Runs a command, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `skopeo` with `args`; returns its output.
pub fn skopeo(args: &[&str]) -> String {
    run(Command::new("skopeo").args(args))
}

/// A CA (common name `ca_name`) and a certificate for 127.0.0.1 signed by
/// it, made with openssl in `d`: `(ca.pem, cert.pem, key.pem)`.
pub fn loopback_certificate(d: &Path, ca_name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        run(Command::new("openssl").current_dir(d).args(args));
    };
    let subject = format!("/CN={ca_name}");
    openssl(&[
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", &subject,
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "req.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "req.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (d.join("ca.pem"), d.join("cert.pem"), d.join("key.pem"))
}

/// Debian's `docker-registry` on a free port with its own storage.
pub struct Registry {
    pub host: String,
    child: Child,
    _dir: TempDir,
    _keep: Option<TempDir>,
}

impl Registry {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// A registry whose notifications go to `url` with a bearer `token`.
    pub fn start_notifying(url: &str, token: &str) -> Self {
        Self::start_with(Some(format!(
            "notifications:\n  endpoints:\n    - name: rebased\n      url: {url}\n      headers:\n        Authorization: [\"Bearer {token}\"]\n      timeout: 2s\n      threshold: 3\n      backoff: 1s\n"
        )))
    }

    /// A registry over TLS (certificate signed by a CA made here) that wants
    /// `user`/`password` (htpasswd, bcrypt). Returns it and the CA's PEM path.
    pub fn start_secure(user: &str, password: &str) -> (Self, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        loopback_certificate(d, "rebased test CA");
        let htpasswd = run(Command::new("htpasswd").args(["-Bbn", user, password]));
        fs::write(d.join("htpasswd"), htpasswd).unwrap();
        let extra = format!(
            "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: rebased-test\n    path: {}\n",
            d.join("cert.pem").display(),
            d.join("key.pem").display(),
            d.join("htpasswd").display()
        );
        let ca = d.join("ca.pem");
        let reg = Self::start_inner(Some(extra), true, Some(dir));
        (reg, ca)
    }

    /// Stops the registry (SIGKILL) and starts it again on the same port
    /// with the same storage: a registry restart in the middle of whatever
    /// it was doing.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = self._dir.path();
        let log = fs::OpenOptions::new()
            .append(true)
            .open(dir.join("registry.log"))
            .unwrap();
        self.child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let url = format!("http://{}/v2/", self.host);
        wait_for(
            "the registry to answer again",
            Duration::from_secs(20),
            || {
                reqwest::blocking::get(&url)
                    .ok()
                    .filter(|r| r.status().is_success())
            },
        );
    }

    /// The registry's own log (with its access log).
    pub fn log_text(&self) -> String {
        fs::read_to_string(self._dir.path().join("registry.log")).unwrap_or_default()
    }

    fn start_with(extra: Option<String>) -> Self {
        Self::start_inner(extra, false, None)
    }

    /// A registry listening on `ip` (an address the test gave an interface
    /// it made, e.g. a bridge that network namespaces reach).
    pub fn start_on(ip: &str) -> Self {
        Self::start_at(ip, None, false, None)
    }

    fn start_inner(extra: Option<String>, tls: bool, keep: Option<TempDir>) -> Self {
        Self::start_at("127.0.0.1", extra, tls, keep)
    }

    fn start_at(ip: &str, extra: Option<String>, tls: bool, keep: Option<TempDir>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let host = format!("{ip}:{port}");
        let config = dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n{}",
                dir.path().join("data").display(),
                extra.unwrap_or_default()
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry must be installed (apt-get install docker-registry)");
        if tls {
            wait_for("the registry to listen", Duration::from_secs(20), || {
                std::net::TcpStream::connect(&host).ok()
            });
        } else {
            // 401: a registry with `auth: token` answers, but wants a token.
            let url = format!("http://{host}/v2/");
            wait_for("the registry to answer", Duration::from_secs(20), || {
                reqwest::blocking::get(&url).ok().filter(|r| {
                    r.status().is_success() || r.status() == reqwest::StatusCode::UNAUTHORIZED
                })
            });
        }
        Self {
            host,
            child,
            _dir: dir,
            _keep: keep,
        }
    }

    /// The digest `repo:tag` points at, or `None` if the tag does not exist.
    pub fn digest(&self, repo_tag: &str) -> Option<String> {
        let (repo, tag) = repo_tag.rsplit_once(':').unwrap();
        let resp = reqwest::blocking::Client::new()
            .head(format!("http://{}/v2/{repo}/manifests/{tag}", self.host))
            .header(
                "Accept",
                "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json",
            )
            .send()
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.headers()
            .get("Docker-Content-Digest")
            .map(|v| v.to_str().unwrap().to_owned())
    }

    /// `skopeo list-tags`.
    pub fn tags(&self, repo: &str) -> Vec<String> {
        let out = skopeo(&[
            "list-tags",
            "--tls-verify=false",
            &format!("docker://{}/{repo}", self.host),
        ]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v["Tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect()
    }

    /// `skopeo inspect --raw` (the manifest).
    pub fn raw_manifest(&self, repo_tag: &str) -> Value {
        let out = skopeo(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}/{repo_tag}", self.host),
        ]);
        serde_json::from_str(&out).unwrap()
    }

    /// `skopeo inspect` (digest, labels, ...).
    pub fn inspect(&self, repo_tag: &str) -> Value {
        let out = skopeo(&[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{}/{repo_tag}", self.host),
        ]);
        serde_json::from_str(&out).unwrap()
    }

    /// The semver tags of `repo` (`1.0.2`, not `1.0` or `latest`) and the
    /// digest each points at, as the registry holds them.
    pub fn versions(&self, repo: &str) -> BTreeMap<String, String> {
        self.tags(repo)
            .into_iter()
            .filter(|t| t.split('.').count() == 3)
            .map(|t| {
                let d = self.digest(&format!("{repo}:{t}")).unwrap();
                (t, d)
            })
            .collect()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An arm64 busybox: Debian's `busybox-static:arm64` (`apt-get download`,
/// `dpkg-deb -x`; `scripts/test.sh` adds the arm64 architecture), fetched
/// once into the system's temporary directory and kept there.
pub fn arm64_busybox() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let cache = std::env::temp_dir().join("rebased-e2e-busybox-arm64");
        let busybox = cache.join("bin/busybox");
        if busybox.is_file() {
            return busybox;
        }
        let work = tempfile::tempdir().unwrap();
        let out = Command::new("apt-get")
            .args(["download", "busybox-static:arm64"])
            .current_dir(work.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "apt-get download busybox-static:arm64 (dpkg --add-architecture arm64 && apt-get update first; scripts/test.sh does): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deb = fs::read_dir(work.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .expect("the downloaded .deb");
        let x = work.path().join("x");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x));
        // Another test process may be here too: the rename is atomic.
        let staged = std::env::temp_dir().join(format!(
            "rebased-e2e-busybox-arm64.{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&staged);
        fs::create_dir_all(staged.join("bin")).unwrap();
        fs::copy(x.join("bin/busybox"), staged.join("bin/busybox")).unwrap();
        if fs::rename(&staged, &cache).is_err() {
            let _ = fs::remove_dir_all(&staged);
        }
        assert!(busybox.is_file(), "{} after the download", busybox.display());
        busybox
    })
    .clone()
}

/// Panics unless the kernel runs arm64 binaries through an enabled
/// `qemu-aarch64` binfmt handler (`scripts/test.sh` installs
/// qemu-user-static and binfmt-support, and enables it).
pub fn require_arm64_emulation() {
    let handler = Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64");
    let enabled =
        |h: &Path| fs::read_to_string(h).is_ok_and(|t| t.lines().next() == Some("enabled"));
    if !enabled(handler) {
        let _ = Command::new("update-binfmts")
            .args(["--enable", "qemu-aarch64"])
            .status();
    }
    assert!(
        enabled(handler),
        "no enabled qemu-aarch64 binfmt handler: apt-get install qemu-user-static binfmt-support; update-binfmts --enable qemu-aarch64 (scripts/test.sh does)"
    );
}

/// Makes and pushes test base images: busybox plus a marker file.
pub struct BaseMaker {
    dir: TempDir,
}

impl Default for BaseMaker {
    fn default() -> Self {
        Self::new()
    }
}

impl BaseMaker {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn buildah(&self) -> Command {
        let mut c = Command::new("buildah");
        c.arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("runroot"))
            .arg("--storage-driver")
            .arg("vfs");
        c
    }

    /// Builds `FROM scratch` + busybox + `/marker` containing `marker`,
    /// pushes it to `registry/repo_tag`, returns the pushed digest.
    pub fn push(&self, registry: &Registry, repo_tag: &str, marker: &str) -> String {
        self.push_platform(registry, repo_tag, marker, None)
    }

    /// Makes an index (`buildah manifest`) of already pushed manifests of
    /// `repo` (by digest), pushes it as `repo_tag`, returns the index digest.
    pub fn push_index(
        &self,
        registry: &Registry,
        repo: &str,
        children: &[&str],
        repo_tag: &str,
    ) -> String {
        let list = format!(
            "localhost/test-index-{}",
            children
                .join("-")
                .replace("sha256:", "")
                .chars()
                .take(24)
                .collect::<String>()
        );
        let _ = self.buildah().args(["manifest", "rm", &list]).output();
        run(self.buildah().args(["manifest", "create", &list]));
        for child in children {
            run(self.buildah().args([
                "manifest",
                "add",
                "--tls-verify=false",
                &list,
                &format!("docker://{}/{repo}@{child}", registry.host),
            ]));
        }
        let digest_file = self.dir.path().join("index-digest");
        run(self
            .buildah()
            .args([
                "manifest",
                "push",
                "--all",
                "--tls-verify=false",
                "--digestfile",
            ])
            .arg(&digest_file)
            .arg(&list)
            .arg(format!("docker://{}/{repo_tag}", registry.host)));
        fs::read_to_string(digest_file).unwrap().trim().to_owned()
    }

    /// Like [`BaseMaker::push`], for one platform (`linux/arm64`).
    pub fn push_platform(
        &self,
        registry: &Registry,
        repo_tag: &str,
        marker: &str,
        platform: Option<&str>,
    ) -> String {
        self.build_and_push(
            registry,
            repo_tag,
            marker,
            platform,
            &["--tls-verify=false"],
        )
    }

    /// Like [`BaseMaker::push_platform`], with `busybox` as the base's only
    /// program (an arm64 one for a `linux/arm64` base that runs: see
    /// [`arm64_busybox`]).
    pub fn push_platform_with(
        &self,
        registry: &Registry,
        repo_tag: &str,
        marker: &str,
        platform: &str,
        busybox: &Path,
    ) -> String {
        self.build_from(
            registry,
            repo_tag,
            marker,
            Some(platform),
            &["--tls-verify=false"],
            busybox,
        )
    }

    /// Like [`BaseMaker::push`], over plain http with credentials
    /// (`user:password`), as a token-auth registry wants them.
    pub fn push_with_creds(
        &self,
        registry: &Registry,
        repo_tag: &str,
        marker: &str,
        creds: &str,
    ) -> String {
        self.build_and_push(
            registry,
            repo_tag,
            marker,
            None,
            &["--tls-verify=false", "--creds", creds],
        )
    }

    /// Like [`BaseMaker::push`], to a registry over TLS that wants credentials.
    pub fn push_secure(
        &self,
        registry: &Registry,
        repo_tag: &str,
        marker: &str,
        ca: &Path,
        creds: &str,
    ) -> String {
        let certs = self.dir.path().join("certs");
        fs::create_dir_all(&certs).unwrap();
        fs::copy(ca, certs.join("ca.crt")).unwrap();
        let certs = certs.display().to_string();
        self.build_and_push(
            registry,
            repo_tag,
            marker,
            None,
            &["--cert-dir", &certs, "--creds", creds],
        )
    }

    /// Like [`BaseMaker::push`], with `files` (path in the image, text)
    /// copied into the base's last layer (a package database, say).
    pub fn push_with_files(
        &self,
        registry: &Registry,
        repo_tag: &str,
        marker: &str,
        files: &[(&str, &str)],
    ) -> String {
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
            .expect("busybox-static must be installed (apt-get install busybox-static)");
        self.build_from_with(
            registry,
            repo_tag,
            marker,
            None,
            &["--tls-verify=false"],
            busybox,
            files,
        )
    }

    fn build_and_push(
        &self,
        registry: &Registry,
        repo_tag: &str,
        marker: &str,
        platform: Option<&str>,
        push_flags: &[&str],
    ) -> String {
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
            .expect("busybox-static must be installed (apt-get install busybox-static)");
        self.build_from(registry, repo_tag, marker, platform, push_flags, busybox)
    }

    fn build_from(
        &self,
        registry: &Registry,
        repo_tag: &str,
        marker: &str,
        platform: Option<&str>,
        push_flags: &[&str],
        busybox: &Path,
    ) -> String {
        self.build_from_with(
            registry,
            repo_tag,
            marker,
            platform,
            push_flags,
            busybox,
            &[],
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn build_from_with(
        &self,
        registry: &Registry,
        repo_tag: &str,
        marker: &str,
        platform: Option<&str>,
        push_flags: &[&str],
        busybox: &Path,
        files: &[(&str, &str)],
    ) -> String {
        let ctx = self.dir.path().join(format!("ctx-{marker}"));
        let mut extra = String::new();
        if !files.is_empty() {
            for (path, text) in files {
                let at = ctx.join("extra").join(path.trim_start_matches('/'));
                fs::create_dir_all(at.parent().unwrap()).unwrap();
                fs::write(at, text).unwrap();
            }
            extra.push_str("COPY extra/ /\n");
        }
        fs::create_dir_all(&ctx).unwrap();
        fs::copy(busybox, ctx.join("busybox")).unwrap();
        fs::write(ctx.join("marker"), marker).unwrap();
        fs::write(
            ctx.join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            ctx.join("group"),
            "root:x:0:\napp:x:1001:\nstaff:x:50:app\n",
        )
        .unwrap();
        fs::write(
            ctx.join("Dockerfile"),
            format!("FROM scratch\nCOPY busybox /bin/busybox\nCOPY passwd group /etc/\nCOPY marker /marker\n{extra}ENV PATH=/bin HOME=/root\nCMD [\"/bin/busybox\", \"sh\"]\n"),
        )
        .unwrap();
        let local = format!("localhost/test-base:{marker}");
        let mut bud = self.buildah();
        bud.args(["bud", "--isolation", "chroot", "-t", &local]);
        if let Some(p) = platform {
            bud.args(["--platform", p]);
        }
        run(bud.arg(&ctx));
        let digest_file = self.dir.path().join("digest");
        run(self
            .buildah()
            .arg("push")
            .args(push_flags)
            .arg("--digestfile")
            .arg(&digest_file)
            .arg(&local)
            .arg(format!("docker://{}/{repo_tag}", registry.host)));
        fs::read_to_string(digest_file).unwrap().trim().to_owned()
    }
}

/// The `rebased` binary built by this workspace. `cargo test -p
/// rebased-e2e` alone does not rebuild another package's binary, so a
/// binary older than the sources it is built from is refused: an e2e test
/// of a stale binary would test old code (`cargo test --workspace`, or
/// `cargo build -p rebased` first, brings it up to date).
pub fn rebased_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/rebased
    let bin = exe.parent().and_then(Path::parent).unwrap().join("rebased");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        run(Command::new(cargo).args(["build", "-p", "rebased", "--bin", "rebased"]));
    }
    assert!(bin.exists(), "{} missing", bin.display());
    static CHECKED: std::sync::Once = std::sync::Once::new();
    CHECKED.call_once(|| refuse_stale(&bin));
    bin
}

/// Panics when a source file of the binary (the `src` of it and of the
/// workspace crates it links) is newer than the binary.
fn refuse_stale(bin: &Path) {
    let built = fs::metadata(bin).and_then(|m| m.modified()).unwrap();
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates");
    let linked = [
        "rebased",
        "core",
        "registry",
        "watcher",
        "scheduler",
        "builder",
        "state",
        "api",
        "notify",
    ];
    let newest = linked
        .iter()
        .flat_map(|c| rust_sources(&crates.join(c).join("src")))
        .filter_map(|(p, _)| Some((fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max();
    if let Some((newer, path)) = newest.filter(|(t, _)| *t > built) {
        panic!(
            "{} is older than {} (by {:?}): run `cargo build -p rebased` first",
            bin.display(),
            path.display(),
            newer.duration_since(built).unwrap_or_default()
        );
    }
}

/// A running `rebased run` daemon.
pub struct Daemon {
    child: Option<Child>,
    pub api: String,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `rebased run --config config`, whose `daemon.listen` is `listen`,
    /// and waits for the API.
    pub fn start(config: &Path, listen: &str, log: &Path) -> Self {
        Self::start_with_env(config, listen, log, &[])
    }

    /// Like [`Daemon::start`], with extra environment variables.
    pub fn start_with_env(config: &Path, listen: &str, log: &Path, env: &[(&str, &str)]) -> Self {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(rebased_bin())
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info,rebased=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut d = Self {
            child: Some(child),
            api: format!("http://{listen}"),
            config: config.to_owned(),
            log: log.to_owned(),
        };
        let url = format!("{}/healthz", d.api);
        wait_for("the daemon's API", Duration::from_secs(30), || {
            if let Some(status) = d.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited early ({status}); log:\n{}", d.log_text());
            }
            reqwest::blocking::get(&url)
                .ok()
                .filter(|r| r.status().is_success())
        });
        d
    }

    /// GET, as JSON; the status must be a success.
    pub fn get(&self, path: &str) -> Value {
        serde_json::from_str(&self.get_text(path)).unwrap()
    }

    /// GET, `None` on any error status.
    pub fn try_get(&self, path: &str) -> Option<Value> {
        let resp = reqwest::blocking::get(format!("{}{path}", self.api)).ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().ok()
    }

    /// GET, the body as text (`/metrics`, a job's log).
    pub fn get_text(&self, path: &str) -> String {
        let resp = reqwest::blocking::get(format!("{}{path}", self.api)).unwrap();
        let status = resp.status();
        let body = resp.text().unwrap();
        assert!(status.is_success(), "GET {path}: {status}: {body}");
        body
    }

    /// `GET /v1/images/{name}`.
    pub fn image(&self, name: &str) -> Value {
        self.get(&format!("/v1/images/{name}"))
    }

    /// The image's current version, whatever its state.
    pub fn current_version(&self, name: &str) -> Option<String> {
        self.image(name)["current_version"]
            .as_str()
            .map(str::to_owned)
    }

    /// The image's current version once it is `fresh` (its job done);
    /// `None` before, and while the config in force has no such image.
    pub fn fresh_version(&self, name: &str) -> Option<String> {
        let path = format!("/v1/images/{name}");
        let resp = reqwest::blocking::get(format!("{}{path}", self.api)).unwrap();
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        let status = resp.status();
        let body = resp.text().unwrap();
        assert!(status.is_success(), "GET {path}: {status}: {body}");
        let image: Value = serde_json::from_str(&body).unwrap();
        if image["state"] != "fresh" {
            return None;
        }
        image["current_version"].as_str().map(str::to_owned)
    }

    /// Waits until `name` is fresh at `version`.
    pub fn wait_version(&self, name: &str, version: &str, timeout: Duration) {
        wait_for(&format!("{name} fresh at {version}"), timeout, || {
            (self.fresh_version(name).as_deref() == Some(version)).then_some(())
        });
    }

    /// Like [`Daemon::wait_version`] for a build that must not fail: a
    /// `failing` image fails the test at once, with its error and the
    /// daemon's log.
    pub fn wait_version_never_failing(&self, name: &str, version: &str, timeout: Duration) {
        wait_for(&format!("{name} fresh at {version}"), timeout, || {
            let i = self.image(name);
            if i["state"] == "failing" {
                panic!("{name} failing: {}\n{}", i["last_error"], self.log_text());
            }
            (i["state"] == "fresh" && i["current_version"] == version).then_some(())
        });
    }

    /// Waits until `name` is `failing`; returns its last error.
    pub fn wait_failing(&self, name: &str, timeout: Duration) -> String {
        wait_for(&format!("{name} failing"), timeout, || {
            let i = self.image(name);
            (i["state"] == "failing")
                .then(|| i["last_error"].as_str().unwrap_or_default().to_owned())
        })
    }

    /// The jobs of one image, in the order `/v1/jobs` lists them.
    pub fn jobs_of(&self, name: &str) -> Vec<Value> {
        self.get("/v1/jobs")
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["image"] == name)
            .cloned()
            .collect()
    }

    /// The `/v1/bases` entry of `reference`.
    pub fn base(&self, reference: &str) -> Value {
        let bases = self.get("/v1/bases");
        bases
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["reference"] == reference)
            .cloned()
            .unwrap_or_else(|| panic!("{reference} not in /v1/bases: {bases:#}"))
    }

    /// The ledger of `name` through the API: version -> digest.
    pub fn ledger(&self, name: &str) -> BTreeMap<String, String> {
        self.image(name)["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["version"].as_str().unwrap().to_owned(),
                    v["digest"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// Waits for the end of a poll cycle; returns its `last_poll`.
    pub fn wait_poll(&self, timeout: Duration) -> String {
        wait_for("a poll cycle", timeout, || {
            self.get("/v1/status")["last_poll"]
                .as_str()
                .map(str::to_owned)
        })
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `sig` (`-HUP`, `-TERM`) with `kill`.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid();
        assert!(Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success());
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The daemon's exit status if it has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().expect("running").try_wait().unwrap()
    }

    /// Waits for the daemon to exit by itself (e.g. at a failpoint).
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                panic!(
                    "daemon did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs a CLI client command against this daemon, whatever its exit:
    /// the exit code, stdout and stderr.
    pub fn cli_output(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = Command::new(rebased_bin())
            .args(args)
            .arg("--api")
            .arg(&self.api)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs a CLI client command against this daemon; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(rebased_bin())
            .args(args)
            .arg("--api")
            .arg(&self.api)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rebased {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SIGKILL: a crash at whatever point the daemon is at.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// POST `body` with `headers`: the status, and the answer as JSON (an
    /// answer that is not JSON as a JSON string).
    pub fn post_body(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::blocking::Body>,
    ) -> (u16, Value) {
        let mut req = reqwest::blocking::Client::new()
            .post(format!("{}{path}", self.api))
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// POST with an empty body; returns the status code.
    pub fn post(&self, path: &str, token: Option<&str>) -> u16 {
        let mut req = reqwest::blocking::Client::new().post(format!("{}{path}", self.api));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().unwrap().status().as_u16()
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let start = Instant::now();
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(
                        status.success(),
                        "daemon exited with {status}; log:\n{}",
                        self.log_text()
                    );
                    return;
                }
                if start.elapsed() > Duration::from_secs(30) {
                    let _ = child.kill();
                    panic!("daemon did not stop within 30 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A build context `dir/name` holding a `hello` file and `dockerfile`.
pub fn app_context(dir: &Path, name: &str, dockerfile: &str) -> PathBuf {
    let ctx = dir.join(name);
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("hello"), format!("hello from {name}\n")).unwrap();
    fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    ctx
}

/// An `[[image]]` table with version 1.0.0 and `extra` lines.
pub fn image_table(name: &str, ctx: &Path, repository: &str, extra: &str) -> String {
    format!(
        "\n[[image]]\nname = \"{name}\"\ncontext = \"{}\"\nrepository = \"{repository}\"\nversion = \"1.0.0\"\n{extra}",
        ctx.display()
    )
}

/// A config: `[daemon]` with its state in `work/state`, `listen`, and
/// `daemon_extra` lines; the registry `host` over plain http; then `rest`
/// (image tables, other sections).
pub fn config_text(
    work: &Path,
    listen: &str,
    host: &str,
    daemon_extra: &str,
    rest: &str,
) -> String {
    format!(
        "[daemon]\nstate_dir = \"{}\"\nlisten = \"{listen}\"\n{daemon_extra}\n[registries.\"{host}\"]\ninsecure = true\n{rest}",
        work.join("state").display()
    )
}

/// Writes [`config_text`] to `work/rebased.toml`. Returns its path.
pub fn write_config(
    work: &Path,
    listen: &str,
    host: &str,
    daemon_extra: &str,
    rest: &str,
) -> PathBuf {
    let path = work.join("rebased.toml");
    fs::write(&path, config_text(work, listen, host, daemon_extra, rest)).unwrap();
    path
}

/// Debian's `docker-registry` with `auth: token`, as Docker Hub, GHCR,
/// Harbor, Quay and GitLab run theirs, and the token issuer it trusts
/// (`tests/token-issuer/issuer.py`, python3 with `cryptography`): basic
/// credentials `user`/`password` at the issuer, tokens granting exactly the
/// scopes asked for. Both are stopped on drop.
pub struct TokenRegistry {
    pub registry: Registry,
    issuer: Child,
    dir: TempDir,
}

/// The service and issuer names the registry and the token issuer agree on.
const TOKEN_SERVICE: &str = "rebased-test-registry";
const TOKEN_ISSUER: &str = "rebased-test-issuer";

impl TokenRegistry {
    pub fn start(user: &str, password: &str) -> Self {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("token-issuer/issuer.py");
        let mut issuer = Command::new("python3")
            .arg(&script)
            .arg(dir.path())
            .arg(format!("{user}:{password}"))
            .args([TOKEN_ISSUER, TOKEN_SERVICE])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(dir.path().join("issuer.log")).unwrap())
            .spawn()
            .expect("python3 must be installed (apt-get install python3-cryptography)");
        let mut line = String::new();
        let read = std::io::BufReader::new(issuer.stdout.take().unwrap()).read_line(&mut line);
        let Some(port) = line
            .trim()
            .strip_prefix("PORT ")
            .filter(|_| read.is_ok())
            .map(str::to_owned)
        else {
            let _ = issuer.kill();
            let _ = issuer.wait();
            panic!(
                "the token issuer did not start: {}",
                fs::read_to_string(dir.path().join("issuer.log")).unwrap_or_default()
            );
        };
        let extra = format!(
            "auth:\n  token:\n    realm: http://127.0.0.1:{port}/token\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
            dir.path().join("cert.pem").display()
        );
        let registry = Registry::start_inner(Some(extra), false, None);
        Self {
            registry,
            issuer,
            dir,
        }
    }

    /// The scopes of every token request the issuer granted, in order.
    pub fn granted_scopes(&self) -> Vec<Vec<String>> {
        fs::read_to_string(self.dir.path().join("tokens.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["status"] == 200)
            .map(|v| {
                v["scopes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().to_owned())
                    .collect()
            })
            .collect()
    }

    /// The registry's access log lines (`"METHOD URI HTTP/1.1" STATUS`).
    pub fn access_log(&self) -> Vec<String> {
        self.registry
            .log_text()
            .lines()
            .filter(|l| l.contains(" HTTP/1.1\" "))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for TokenRegistry {
    fn drop(&mut self) {
        let _ = self.issuer.kill();
        let _ = self.issuer.wait();
    }
}

/// What most end-to-end tests start from: a registry, a maker of base
/// images, a work directory and a free listen address for the daemon, whose
/// config is `work/rebased.toml` and log `work/daemon.log`.
pub struct Setup {
    pub registry: Registry,
    pub bases: BaseMaker,
    pub work: TempDir,
    pub listen: String,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Default for Setup {
    fn default() -> Self {
        Self::new()
    }
}

impl Setup {
    /// A fresh registry holding `base:latest` (busybox, marker `v1`).
    pub fn new() -> Self {
        let s = Self::empty();
        s.bases.push(&s.registry, "base:latest", "v1");
        s
    }

    /// A fresh registry holding nothing.
    pub fn empty() -> Self {
        Self::with(Registry::start(), format!("127.0.0.1:{}", free_port()))
    }

    /// Around `registry` and `listen`, nothing pushed.
    pub fn with(registry: Registry, listen: String) -> Self {
        let work = tempfile::tempdir().unwrap();
        let config = work.path().join("rebased.toml");
        let log = work.path().join("daemon.log");
        Self {
            registry,
            bases: BaseMaker::new(),
            work,
            listen,
            config,
            log,
        }
    }

    /// The environment under which the docker backend's command lines run
    /// through podman: `docker` on `PATH` is podman, with the vfs storage
    /// (under the work directory) and this registry marked insecure, as a
    /// docker daemon would hold them.
    pub fn docker_through_podman(&self) -> Vec<(String, String)> {
        let work = self.dir();
        let shim = work.join("bin");
        fs::create_dir_all(&shim).unwrap();
        let _ = std::os::unix::fs::symlink("/usr/bin/podman", shim.join("docker"));
        let storage = work.join("storage.conf");
        fs::write(
            &storage,
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                work.join("docker-root").display(),
                work.join("docker-run").display()
            ),
        )
        .unwrap();
        let registries = work.join("registries.conf");
        fs::write(
            &registries,
            format!(
                "[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
                self.host()
            ),
        )
        .unwrap();
        let path = format!(
            "{}:{}",
            shim.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        vec![
            ("PATH".to_owned(), path),
            (
                "CONTAINERS_STORAGE_CONF".to_owned(),
                storage.display().to_string(),
            ),
            (
                "CONTAINERS_REGISTRIES_CONF".to_owned(),
                registries.display().to_string(),
            ),
            ("BUILDAH_ISOLATION".to_owned(), "chroot".to_owned()),
        ]
    }

    /// The registry's `127.0.0.1:PORT`.
    pub fn host(&self) -> &str {
        &self.registry.host
    }

    /// The work directory.
    pub fn dir(&self) -> &Path {
        self.work.path()
    }

    /// [`app_context`] `name` in the work directory.
    pub fn context(&self, name: &str, dockerfile: &str) -> PathBuf {
        app_context(self.dir(), name, dockerfile)
    }

    /// [`write_config`] for this registry and listen address.
    pub fn write_config(&self, daemon_extra: &str, rest: &str) -> PathBuf {
        write_config(self.dir(), &self.listen, self.host(), daemon_extra, rest)
    }

    /// [`config_text`] for this registry and listen address.
    pub fn config_text(&self, daemon_extra: &str, rest: &str) -> String {
        config_text(self.dir(), &self.listen, self.host(), daemon_extra, rest)
    }

    /// `rebased run` on the config, logging to the log.
    pub fn start(&self) -> Daemon {
        Daemon::start(&self.config, &self.listen, &self.log)
    }

    /// Like [`Setup::start`], with extra environment variables.
    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_with_env(&self.config, &self.listen, &self.log, env)
    }
}

/// Every `.rs` file under `dir` with its text, skipping `target`.
pub fn rust_sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                if !p.ends_with("target") {
                    dirs.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = fs::read_to_string(&p).unwrap();
                out.push((p, text));
            }
        }
    }
    out.sort();
    out
}

/// A bare git repository `dir/NAME.git` and a clone of it to commit in;
/// commits are made and pushed with the real `git`.
pub struct GitRepo {
    pub bare: PathBuf,
    pub work: PathBuf,
}

/// Runs `git args` in `dir` with a fixed identity; its trimmed output.
pub fn git(dir: &Path, args: &[&str]) -> String {
    run(Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com"))
    .trim()
    .to_owned()
}

impl GitRepo {
    /// An empty repository with branch `main`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let bare = dir.join(format!("{name}.git"));
        let work = dir.join(format!("{name}-work"));
        fs::create_dir_all(&work).unwrap();
        git(
            dir,
            &[
                "init",
                "--bare",
                "--quiet",
                "-b",
                "main",
                &bare.to_string_lossy(),
            ],
        );
        git(&work, &["init", "--quiet", "-b", "main"]);
        git(&work, &["remote", "add", "origin", &bare.to_string_lossy()]);
        Self { bare, work }
    }

    /// Writes `files` (path, contents), commits, pushes `main`; the commit.
    pub fn commit(&self, files: &[(&str, &str)]) -> String {
        for (name, body) in files {
            let p = self.work.join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, body).unwrap();
        }
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &["commit", "--quiet", "--allow-empty", "-m", "change"],
        );
        git(
            &self.work,
            &["push", "--quiet", "--force", "origin", "main"],
        );
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// `file://` URL of the bare repository.
    pub fn file_url(&self) -> String {
        format!("file://{}", self.bare.display())
    }
}

impl Registry {
    /// The contents of `path` (no leading `/`) in the image `repo_tag`,
    /// read from its layers, newest first.
    pub fn file_in(&self, repo_tag: &str, path: &str) -> Option<String> {
        use std::io::Read;
        let (repo, _) = repo_tag.rsplit_once(':').unwrap();
        let m = self.raw_manifest(repo_tag);
        for layer in m["layers"].as_array()?.iter().rev() {
            let digest = layer["digest"].as_str()?;
            let bytes =
                reqwest::blocking::get(format!("http://{}/v2/{repo}/blobs/{digest}", self.host))
                    .ok()?
                    .bytes()
                    .ok()?;
            let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
            for entry in archive.entries().ok()? {
                let mut entry = entry.ok()?;
                let name = entry.path().ok()?.to_string_lossy().into_owned();
                if name.trim_start_matches("./") == path {
                    let mut s = String::new();
                    entry.read_to_string(&mut s).ok()?;
                    return Some(s);
                }
            }
        }
        None
    }
}
