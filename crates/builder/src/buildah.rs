//! The `buildah` backend: `buildah bud` with vfs storage and chroot isolation,
//! then `buildah push --digestfile`. No shell is involved: every argument is
//! passed as is.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rebased_core::Digest;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::{BuildError, BuildOutput, BuildRequest};

/// Keep at most this much of a log (the tail) in memory.
const MAX_LOG: usize = 1 << 20;

/// How to run buildah.
#[derive(Debug, Clone)]
pub struct Buildah {
    /// The program (`buildah`).
    pub program: PathBuf,
    /// Container storage root (`--root`).
    pub root: PathBuf,
    /// Runtime state (`--runroot`).
    pub runroot: PathBuf,
    /// Time limit for the whole build and push.
    pub timeout: Duration,
}

impl Buildah {
    /// Storage under `dir` (`dir/root`, `dir/runroot`).
    pub fn with_storage(dir: &Path, timeout: Duration) -> Self {
        Self {
            program: PathBuf::from("buildah"),
            root: dir.join("root"),
            runroot: dir.join("runroot"),
            timeout,
        }
    }

    fn command(&self, registries_conf: &Path) -> Command {
        let mut c = Command::new(&self.program);
        c.arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .arg("--storage-driver")
            .arg("vfs")
            .env("CONTAINERS_REGISTRIES_CONF", registries_conf)
            .env("BUILDAH_ISOLATION", "chroot")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so cancelling kills the build steps too.
            .process_group(0)
            .kill_on_drop(true);
        c
    }

    /// Builds and pushes `req.target`; returns the pushed digest.
    pub async fn build(
        &self,
        req: &BuildRequest,
        cancel: &CancellationToken,
    ) -> Result<BuildOutput, BuildError> {
        let deadline = Instant::now() + self.timeout;
        let ws = |path: &Path| {
            let path = path.to_owned();
            move |source| BuildError::Workspace { path, source }
        };
        tokio::fs::create_dir_all(&req.workdir)
            .await
            .map_err(ws(&req.workdir))?;
        let dockerfile = req.workdir.join("Dockerfile");
        tokio::fs::write(&dockerfile, &req.dockerfile)
            .await
            .map_err(ws(&dockerfile))?;
        let registries_conf = req.workdir.join("registries.conf");
        tokio::fs::write(
            &registries_conf,
            registries_conf_text(&req.insecure_registries),
        )
        .await
        .map_err(ws(&registries_conf))?;
        // Credentials and CAs for this build only.
        let mut extra: Vec<std::ffi::OsString> = Vec::new();
        if let Some(json) = &req.auth_json {
            let path = req.workdir.join("auth.json");
            write_private(&path, json.as_bytes())
                .await
                .map_err(ws(&path))?;
            extra.push("--authfile".into());
            extra.push(path.into_os_string());
        }
        if !req.ca_files.is_empty() {
            let dir = req.workdir.join("certs");
            tokio::fs::create_dir_all(&dir).await.map_err(ws(&dir))?;
            for (i, ca) in req.ca_files.iter().enumerate() {
                let to = dir.join(format!("ca-{i}.crt"));
                tokio::fs::copy(ca, &to).await.map_err(ws(ca))?;
            }
            extra.push("--cert-dir".into());
            extra.push(dir.into_os_string());
        }
        let digest_file = req.workdir.join("digest");
        let _ = tokio::fs::remove_file(&digest_file).await;
        let local = format!("localhost/rebased-build/job-{}:latest", sanitize(&req.job));

        let mut log = String::new();
        let mut bud = self.command(&registries_conf);
        bud.arg("bud")
            .args(&extra)
            .arg("--isolation")
            .arg("chroot")
            .arg("--layers=false")
            .arg("-f")
            .arg(&dockerfile)
            .arg("-t")
            .arg(&local);
        for (k, v) in &req.annotations {
            bud.arg("--annotation").arg(format!("{k}={v}"));
            bud.arg("--label").arg(format!("{k}={v}"));
        }
        for (k, v) in &req.build_args {
            bud.arg("--build-arg").arg(format!("{k}={v}"));
        }
        bud.arg(&req.context);
        info!(image = %req.image, job = %req.job, target = %req.target, "buildah bud");
        let built = self.run("build", bud, deadline, cancel, &mut log).await;

        let pushed = match built {
            Ok(()) => {
                let mut push = self.command(&registries_conf);
                push.arg("push")
                    .args(&extra)
                    .arg("--digestfile")
                    .arg(&digest_file)
                    .arg(&local)
                    .arg(format!("docker://{}", req.target));
                info!(image = %req.image, job = %req.job, target = %req.target, "buildah push");
                self.run("push", push, deadline, cancel, &mut log).await
            }
            Err(e) => Err(e),
        };
        // The local image is only a vehicle for the push.
        let mut rmi = self.command(&registries_conf);
        rmi.arg("rmi").arg("-f").arg(&local);
        if let Ok(out) = rmi.output().await {
            debug!(status = %out.status, "buildah rmi");
        }
        pushed?;
        let text = tokio::fs::read_to_string(&digest_file)
            .await
            .map_err(ws(&digest_file))?;
        let digest = Digest::parse(text.trim())
            .map_err(|_| BuildError::BadDigest(text.trim().to_owned()))?;
        Ok(BuildOutput { digest, log })
    }

    async fn run(
        &self,
        step: &'static str,
        mut cmd: Command,
        deadline: Instant,
        cancel: &CancellationToken,
        log: &mut String,
    ) -> Result<(), BuildError> {
        let program = self.program.display().to_string();
        log.push_str(&format!("$ {} {step}\n", program));
        let mut child = cmd.spawn().map_err(|source| BuildError::Spawn {
            program: program.clone(),
            source,
        })?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let out_task = tokio::spawn(read_all(stdout));
        let err_task = tokio::spawn(read_all(stderr));
        // Output readers may outlive a killed engine (its children hold the
        // pipes): wait for them only briefly.
        let collect = |log: &mut String, out: String, err: String| {
            append(log, &out);
            append(log, &err);
        };
        async fn join(task: tokio::task::JoinHandle<String>) -> String {
            match tokio::time::timeout(std::time::Duration::from_secs(5), task).await {
                Ok(Ok(s)) => s,
                _ => "[output reader did not finish]\n".to_owned(),
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let status = tokio::select! {
            s = child.wait() => Some(s),
            _ = tokio::time::sleep(remaining) => None,
            _ = cancel.cancelled() => {
                kill_group(&mut child).await;
                let (out, err) = (join(out_task).await, join(err_task).await);
                collect(log, out, err);
                return Err(BuildError::Cancelled { step, log: log.clone() });
            }
        };
        let Some(status) = status else {
            kill_group(&mut child).await;
            let (out, err) = (join(out_task).await, join(err_task).await);
            collect(log, out, err);
            return Err(BuildError::Timeout {
                step,
                seconds: self.timeout.as_secs(),
                log: log.clone(),
            });
        };
        let (out, err) = (join(out_task).await, join(err_task).await);
        collect(log, out, err);
        let status = status.map_err(|source| BuildError::Spawn { program, source })?;
        if status.success() {
            Ok(())
        } else {
            Err(BuildError::Failed {
                step,
                status: status.to_string(),
                tail: tail(log, 600),
                log: log.clone(),
            })
        }
    }
}

/// Kills the engine and everything in its process group.
async fn kill_group(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        // `--` matters: without it procps' kill reads `-PID` as an option.
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--"])
            .arg(format!("-{pid}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
    let _ = child.kill().await;
}

/// Writes a file readable by its owner only.
async fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = path.to_owned();
    let data = data.to_vec();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(&data)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Lowercase alphanumerics and `-` only: safe inside a local image name.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

async fn read_all<R: AsyncRead + Unpin>(r: Option<R>) -> String {
    let mut buf = Vec::new();
    if let Some(mut r) = r {
        let _ = r.read_to_end(&mut buf).await;
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn append(log: &mut String, text: &str) {
    log.push_str(text);
    if log.len() > MAX_LOG {
        let cut = log.len() - MAX_LOG;
        let cut = (cut..log.len())
            .find(|i| log.is_char_boundary(*i))
            .unwrap_or(log.len());
        log.replace_range(..cut, "[earlier output cut]\n");
    }
}

fn tail(log: &str, n: usize) -> String {
    let start = log.len().saturating_sub(n);
    let start = (start..log.len())
        .find(|i| log.is_char_boundary(*i))
        .unwrap_or(log.len());
    log[start..].trim().to_owned()
}

/// A registries.conf that marks `insecure` hosts as plain http; every other
/// registry keeps TLS verification.
pub fn registries_conf_text(insecure: &[String]) -> String {
    let mut s =
        String::from("# written by rebased for one build\nunqualified-search-registries = []\n");
    for host in insecure {
        s.push_str(&format!(
            "\n[[registry]]\nlocation = {host:?}\ninsecure = true\n"
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_conf_lists_insecure_hosts() {
        let text = registries_conf_text(&["127.0.0.1:5000".to_owned()]);
        assert!(text.contains("location = \"127.0.0.1:5000\"\ninsecure = true"));
        assert!(registries_conf_text(&[]).contains("unqualified-search-registries = []"));
    }

    #[test]
    fn log_is_bounded_to_its_tail() {
        let mut log = String::new();
        append(&mut log, &"a".repeat(MAX_LOG));
        append(&mut log, "the end");
        assert!(log.len() <= MAX_LOG + 40);
        assert!(log.starts_with("[earlier output cut]"));
        assert!(log.ends_with("the end"));
    }
}
