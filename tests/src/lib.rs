//! The end-to-end harness: a real `docker-registry` on a free 127.0.0.1
//! port, base images made with buildah from Debian's `busybox-static`, the
//! real `rebased` binary, and `skopeo` to check what was pushed.
//!
//! Everything is started in a temporary directory and stopped on drop.

#![allow(clippy::unwrap_used, missing_docs)] // test harness: a failed step should fail the test loudly

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

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
        let openssl = |args: &[&str]| {
            run(Command::new("openssl").current_dir(d).args(args));
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=rebased test CA",
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

    fn start_inner(extra: Option<String>, tls: bool, keep: Option<TempDir>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
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
        let out = run(Command::new("skopeo").args([
            "list-tags",
            "--tls-verify=false",
            &format!("docker://{}/{repo}", self.host),
        ]));
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
        let out = run(Command::new("skopeo").args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}/{repo_tag}", self.host),
        ]));
        serde_json::from_str(&out).unwrap()
    }

    /// `skopeo inspect` (digest, labels, ...).
    pub fn inspect(&self, repo_tag: &str) -> Value {
        let out = run(Command::new("skopeo").args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{}/{repo_tag}", self.host),
        ]));
        serde_json::from_str(&out).unwrap()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

    fn build_and_push(
        &self,
        registry: &Registry,
        repo_tag: &str,
        marker: &str,
        platform: Option<&str>,
        push_flags: &[&str],
    ) -> String {
        let ctx = self.dir.path().join(format!("ctx-{marker}"));
        fs::create_dir_all(&ctx).unwrap();
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
            .expect("busybox-static must be installed (apt-get install busybox-static)");
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
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY passwd group /etc/\nCOPY marker /marker\nENV PATH=/bin HOME=/root\nCMD [\"/bin/busybox\", \"sh\"]\n",
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

/// The `rebased` binary built by this workspace.
pub fn rebased_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/rebased
    let bin = exe.parent().and_then(Path::parent).unwrap().join("rebased");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        run(Command::new(cargo).args(["build", "-p", "rebased", "--bin", "rebased"]));
    }
    assert!(bin.exists(), "{} missing", bin.display());
    bin
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
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,rebased=debug")
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

    pub fn get(&self, path: &str) -> Value {
        let resp = reqwest::blocking::get(format!("{}{path}", self.api)).unwrap();
        let status = resp.status();
        let body = resp.text().unwrap();
        assert!(status.is_success(), "GET {path}: {status}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// GET, `None` on any error status.
    pub fn try_get(&self, path: &str) -> Option<Value> {
        let resp = reqwest::blocking::get(format!("{}{path}", self.api)).ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().ok()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
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

/// Writes `work/rebased.toml`: `[daemon]` with its state in `work/state`,
/// `listen`, and `daemon_extra` lines; the registry `host` over plain http;
/// then `rest` (image tables, other sections). Returns its path.
pub fn write_config(
    work: &Path,
    listen: &str,
    host: &str,
    daemon_extra: &str,
    rest: &str,
) -> PathBuf {
    let path = work.join("rebased.toml");
    fs::write(
        &path,
        format!(
            "[daemon]\nstate_dir = \"{}\"\nlisten = \"{listen}\"\n{daemon_extra}\n[registries.\"{host}\"]\ninsecure = true\n{rest}",
            work.join("state").display()
        ),
    )
    .unwrap();
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
