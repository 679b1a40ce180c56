//! The pieces every scenario uses: Debian's `docker-registry` on a free
//! loopback port (its access log counts requests, its storage directory
//! counts uploaded bytes), images pushed over the distribution API from
//! here (no build engine needed to make a base), the real `rebased` binary
//! and what `/proc` says about it.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// The media type of the manifests pushed here.
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Polls `f` every `every` until it returns `Some`, or fails after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

/// A temporary directory, kept after the run when `REBASED_BENCH_KEEP` is
/// set (to read the registry's and the daemon's logs).
pub fn tempdir() -> Result<tempfile::TempDir> {
    let mut dir = tempfile::Builder::new()
        .prefix("rebased-bench-")
        .tempdir()?;
    if std::env::var_os("REBASED_BENCH_KEEP").is_some() {
        dir.disable_cleanup(true);
        eprintln!("keeping {}", dir.path().display());
    }
    Ok(dir)
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Debian's `docker-registry`, its storage and log in a temporary directory.
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub host: String,
    child: Child,
    dir: tempfile::TempDir,
    http: reqwest::blocking::Client,
}

impl Registry {
    /// Starts a registry; with `notify`, its notifications go to that URL
    /// with that bearer token.
    pub fn start(notify: Option<(&str, &str)>) -> Result<Self> {
        let dir = tempdir()?;
        let host = format!("127.0.0.1:{}", free_port()?);
        let notifications = notify.map_or(String::new(), |(url, token)| {
            format!(
                "notifications:\n  endpoints:\n    - name: rebased\n      url: {url}\n      headers:\n        Authorization: [\"Bearer {token}\"]\n      timeout: 2s\n      threshold: 3\n      backoff: 1s\n"
            )
        });
        let config = dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n{notifications}",
                dir.path().join("data").display()
            ),
        )?;
        let log = fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("docker-registry must be installed (apt-get install docker-registry)")?;
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let reg = Self {
            host,
            child,
            dir,
            http,
        };
        let url = format!("http://{}/v2/", reg.host);
        wait_for(
            "the registry to answer",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || {
                Ok(reg
                    .http
                    .get(&url)
                    .send()
                    .ok()
                    .filter(|r| r.status().is_success()))
            },
        )?;
        Ok(reg)
    }

    /// Length of the log so far: a mark to count requests from.
    pub fn log_mark(&self) -> u64 {
        fs::metadata(self.dir.path().join("registry.log")).map_or(0, |m| m.len())
    }

    /// The access-log lines (`"METHOD PATH HTTP/1.1" STATUS SIZE "" "AGENT"`)
    /// written since `mark`.
    pub fn access_since(&self, mark: u64) -> Result<Vec<String>> {
        let mut f = fs::File::open(self.dir.path().join("registry.log"))?;
        f.seek(SeekFrom::Start(mark))?;
        let mut text = String::new();
        f.read_to_string(&mut text)?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with("time=") && l.contains(" HTTP/1.1\" "))
            .map(str::to_owned)
            .collect())
    }

    /// Every blob the registry stores: digest -> size.
    pub fn blobs(&self) -> BTreeMap<String, u64> {
        let root = self.dir.path().join("data/docker/registry/v2/blobs/sha256");
        let mut out = BTreeMap::new();
        let Ok(prefixes) = fs::read_dir(&root) else {
            return out;
        };
        for prefix in prefixes.flatten() {
            let Ok(entries) = fs::read_dir(prefix.path()) else {
                continue;
            };
            for e in entries.flatten() {
                if let Ok(m) = fs::metadata(e.path().join("data")) {
                    out.insert(
                        format!("sha256:{}", e.file_name().to_string_lossy()),
                        m.len(),
                    );
                }
            }
        }
        out
    }

    fn blob_upload(&self, repo: &str, bytes: &[u8]) -> Result<String> {
        let digest = sha256(bytes);
        let base = format!("http://{}", self.host);
        let head = self
            .http
            .head(format!("{base}/v2/{repo}/blobs/{digest}"))
            .send()?;
        if head.status().is_success() {
            return Ok(digest);
        }
        let start = self
            .http
            .post(format!("{base}/v2/{repo}/blobs/uploads/"))
            .send()?;
        if start.status().as_u16() != 202 {
            bail!("starting an upload to {repo}: {}", start.status());
        }
        let location = start
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| anyhow!("upload to {repo}: no Location"))?;
        let location = if location.starts_with("http") {
            location.to_owned()
        } else {
            format!("{base}{location}")
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = self
            .http
            .put(format!("{location}{sep}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()?;
        if put.status().as_u16() != 201 {
            bail!("uploading {digest} to {repo}: {}", put.status());
        }
        Ok(digest)
    }

    /// Pushes a one-layer image holding `files` (path, bytes) as
    /// `repo:tag`; returns the manifest's digest.
    pub fn push_image(&self, repo: &str, tag: &str, files: &[(&str, &[u8])]) -> Result<String> {
        let image = TinyImage::new(files)?;
        self.blob_upload(repo, &image.layer)?;
        self.blob_upload(repo, &image.config)?;
        let put = self
            .http
            .put(format!("http://{}/v2/{repo}/manifests/{tag}", self.host))
            .header("content-type", OCI_MANIFEST)
            .body(image.manifest.clone())
            .send()?;
        if put.status().as_u16() != 201 {
            bail!(
                "pushing {repo}:{tag}: {}: {}",
                put.status(),
                put.text().unwrap_or_default()
            );
        }
        Ok(sha256(&image.manifest))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A one-layer OCI image made here: gzip'd tar of some files, a config,
/// a manifest (optionally annotated).
pub struct TinyImage {
    /// The layer (tar+gzip).
    pub layer: Vec<u8>,
    /// The config JSON.
    pub config: Vec<u8>,
    /// The manifest JSON.
    pub manifest: Vec<u8>,
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

impl TinyImage {
    /// An image of `files`, without annotations.
    pub fn new(files: &[(&str, &[u8])]) -> Result<Self> {
        Self::annotated(files, &BTreeMap::new())
    }

    /// An image of `files` whose manifest carries `annotations`.
    pub fn annotated(
        files: &[(&str, &[u8])],
        annotations: &BTreeMap<String, String>,
    ) -> Result<Self> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, bytes) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o755);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, path, *bytes)?;
        }
        let tar = tar.into_inner()?;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar)?;
        let layer = gz.finish()?;
        let config = serde_json::to_vec(&json!({
            "architecture": host_arch(),
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256(&tar)]},
            "history": [{"created_by": "rebased-bench"}],
        }))?;
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(&config),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": sha256(&layer),
                "size": layer.len(),
            }],
        });
        if !annotations.is_empty() {
            manifest["annotations"] = json!(annotations);
        }
        Ok(Self {
            manifest: serde_json::to_vec(&manifest)?,
            layer,
            config,
        })
    }

    /// Writes this image into an OCI image layout at `dir`, tagged `tag`.
    pub fn write_layout(&self, dir: &Path, tag: &str) -> Result<()> {
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs)?;
        for bytes in [&self.layer, &self.config, &self.manifest] {
            let d = sha256(bytes);
            fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes)?;
        }
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": OCI_MANIFEST,
                "digest": sha256(&self.manifest),
                "size": self.manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }],
        });
        fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
        Ok(())
    }
}

/// The `rebased` release binary: `$REBASED_BIN`, else `target/release/rebased`
/// beside this harness.
pub fn rebased_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("REBASED_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no directory", exe.display()))?;
    // target/release/rebased-bench, or target/<profile>/deps/<test>.
    for candidate in [dir.join("rebased"), dir.join("../rebased")] {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!(
        "no rebased binary beside {}: run `cargo build --release -p rebased` or set REBASED_BIN",
        exe.display()
    )
}

/// The daemon's config file: `[daemon]` (state in `work/state`), the
/// registry over plain http, then `rest`.
pub fn write_config(
    work: &Path,
    listen: &str,
    host: &str,
    daemon_extra: &str,
    rest: &str,
) -> Result<PathBuf> {
    let path = work.join("rebased.toml");
    fs::write(
        &path,
        format!(
            "[daemon]\nstate_dir = \"{}\"\nlisten = \"{listen}\"\nlog_format = \"json\"\n{daemon_extra}\n[registries.\"{host}\"]\ninsecure = true\n{rest}",
            work.join("state").display()
        ),
    )?;
    Ok(path)
}

/// An `[[image]]` table.
pub fn image_table(name: &str, ctx: &Path, repository: &str) -> String {
    format!(
        "\n[[image]]\nname = \"{name}\"\ncontext = \"{}\"\nrepository = \"{repository}\"\nversion = \"1.0.0\"\n",
        ctx.display()
    )
}

/// A running `rebased run`.
pub struct Daemon {
    child: Option<Child>,
    /// `http://LISTEN`.
    pub api: String,
    /// Its log (JSON lines).
    pub log: PathBuf,
    http: reqwest::blocking::Client,
    read: u64,
}

/// One JSON log line of the daemon.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// When.
    pub at: chrono::DateTime<chrono::Utc>,
    /// The message.
    pub message: String,
    /// Every field.
    pub fields: Value,
}

impl Daemon {
    /// Starts `rebased run --config config` (API on `listen`) and waits
    /// for `/healthz`.
    pub fn start(config: &Path, listen: &str, log: &Path) -> Result<Self> {
        Self::start_with_env(config, listen, log, &[])
    }

    /// Like [`Daemon::start`], with `env` set for the daemon.
    pub fn start_with_env(
        config: &Path,
        listen: &str,
        log: &Path,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let out = fs::File::create(log)?;
        let child = Command::new(rebased_bin()?)
            .arg("run")
            .arg("--config")
            .arg(config)
            .envs(env.iter().copied())
            .env(
                "RUST_LOG",
                // Every round's line: a quiet round logs it at debug.
                std::env::var("REBASED_BENCH_RUST_LOG")
                    .unwrap_or_else(|_| "info,rebased::poll=debug".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting rebased")?;
        let mut d = Self {
            child: Some(child),
            api: format!("http://{listen}"),
            log: log.to_owned(),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(300))
                .build()?,
            read: 0,
        };
        let url = format!("{}/healthz", d.api);
        let http = d.http.clone();
        let log_path = d.log.clone();
        let mut child = d.child.take();
        let ready = wait_for(
            "the daemon's API",
            Duration::from_secs(60),
            Duration::from_millis(20),
            || {
                if let Some(c) = child.as_mut() {
                    if let Some(status) = c.try_wait()? {
                        bail!(
                            "rebased exited early ({status}); log:\n{}",
                            fs::read_to_string(&log_path).unwrap_or_default()
                        );
                    }
                }
                Ok(http
                    .get(&url)
                    .send()
                    .ok()
                    .filter(|r| r.status().is_success()))
            },
        );
        d.child = child;
        ready?;
        Ok(d)
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// GET `path` as JSON.
    pub fn get(&self, path: &str) -> Result<Value> {
        let resp = self.http.get(format!("{}{path}", self.api)).send()?;
        let status = resp.status();
        let text = resp.text()?;
        if !status.is_success() {
            bail!("GET {path}: {status}: {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// POST with an empty body; fails unless 2xx.
    pub fn post(&self, path: &str) -> Result<()> {
        let resp = self.http.post(format!("{}{path}", self.api)).send()?;
        if !resp.status().is_success() {
            bail!("POST {path}: {}", resp.status());
        }
        Ok(())
    }

    /// Log lines not yet returned by this method.
    pub fn new_log_lines(&mut self) -> Result<Vec<LogLine>> {
        let mut f = fs::File::open(&self.log)?;
        f.seek(SeekFrom::Start(self.read))?;
        let mut text = String::new();
        f.read_to_string(&mut text)?;
        // Only whole lines; a partial last line is read next time.
        let whole = text.rfind('\n').map_or(0, |i| i + 1);
        self.read += whole as u64;
        Ok(text[..whole].lines().filter_map(parse_log_line).collect())
    }

    /// Waits for a log line with `message` (among lines not yet read).
    pub fn wait_log(&mut self, message: &str, timeout: Duration) -> Result<LogLine> {
        let start = Instant::now();
        loop {
            if let Some(l) = self
                .new_log_lines()?
                .into_iter()
                .find(|l| l.message == message)
            {
                return Ok(l);
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!("rebased exited ({status}) while waiting for {message:?}");
                }
            }
            if start.elapsed() > timeout {
                bail!("timed out after {timeout:?} waiting for log line {message:?}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The last `n` lines of the log, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGTERM, then wait for the exit; how long it took and how it ended
    /// (`None`: still running after 120 s, then killed).
    pub fn stop_timed(&mut self) -> Result<(Duration, Option<std::process::ExitStatus>)> {
        let Some(mut child) = self.child.take() else {
            bail!("rebased is not running");
        };
        let start = Instant::now();
        Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()?;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok((start.elapsed(), Some(status)));
            }
            if start.elapsed() > Duration::from_secs(120) {
                let waited = start.elapsed();
                let _ = child.kill();
                let _ = child.wait();
                return Ok((waited, None));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then wait for the exit.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status()?;
            let start = Instant::now();
            loop {
                if child.try_wait()?.is_some() {
                    return Ok(());
                }
                if start.elapsed() > Duration::from_secs(60) {
                    let _ = child.kill();
                    bail!("rebased did not stop within 60 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
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

/// Every JSON line of a daemon log.
pub fn log_lines(path: &Path) -> Result<Vec<LogLine>> {
    Ok(fs::read_to_string(path)?
        .lines()
        .filter_map(parse_log_line)
        .collect())
}

fn parse_log_line(line: &str) -> Option<LogLine> {
    let v: Value = serde_json::from_str(line).ok()?;
    let at = chrono::DateTime::parse_from_rfc3339(v.get("timestamp")?.as_str()?)
        .ok()?
        .with_timezone(&chrono::Utc);
    let fields = v.get("fields").cloned().unwrap_or(Value::Null);
    let message = fields
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Some(LogLine {
        at,
        message,
        fields,
    })
}

/// What `/proc` says about a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcStat {
    /// user + system CPU time, seconds.
    pub cpu_s: f64,
    /// User CPU time, seconds.
    pub user_s: f64,
    /// System CPU time, seconds.
    pub sys_s: f64,
    /// Minor page faults so far.
    pub minflt: u64,
    /// Resident set now, KiB.
    pub rss_kib: u64,
    /// Peak resident set, KiB.
    pub hwm_kib: u64,
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 if it cannot be asked.
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Reads `/proc/PID/stat` and `/proc/PID/status`.
pub fn proc_stat(pid: u32, ticks: f64) -> Result<ProcStat> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("odd /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: f64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let stime: f64 = f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    // minflt is field 10.
    let minflt: u64 = f.get(7).and_then(|s| s.parse().ok()).unwrap_or(0);
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(ProcStat {
        cpu_s: (utime + stime) / ticks,
        user_s: utime / ticks,
        sys_s: stime / ticks,
        minflt,
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
    })
}

/// The system's load average over one minute.
pub fn load_average() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// The machine, for the report.
pub fn machine() -> Value {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let mem_kib: u64 = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    json!({
        "nproc": std::thread::available_parallelism().map_or(0, usize::from),
        "memory_gib": (mem_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "cpu": cpu,
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "load_average_at_start": load_average(),
    })
}

/// The request path of an access-log line (`"GET /v2/x/manifests/y HTTP/1.1"`).
pub fn access_method_path(line: &str) -> Option<(&str, &str)> {
    let quoted = line.split('"').nth(1)?;
    let mut parts = quoted.split_whitespace();
    Some((parts.next()?, parts.next()?))
}

/// Percentile `p` (0-100) of sorted `values` (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
