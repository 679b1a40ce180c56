//! Git sources: what a ref points at now, and a work tree of one commit.
//!
//! [`Sources`] drives the real `git` program, never through a shell: the
//! remote lookup of a ref (`git ls-remote`), a shallow fetch of exactly
//! one commit by its id into a bare clone kept under the state directory
//! (`state_dir/sources/<repository>/repo.git`, shared by every image of
//! that repository), and a checkout of that commit into its own work tree
//! (`.../trees/<commit>`, made once, then reused). A branch name is only
//! ever looked up; what is fetched and checked out is the commit id
//! decided on, so a push during a build cannot leak into it.
//!
//! Each git process runs in its own process group and is killed whole
//! after the timeout. Credentials reach git through `GIT_ASKPASS` (a
//! script that prints the user name or reads the password file; the
//! password is never on a command line, in the environment or in an
//! error) and `GIT_SSH_COMMAND` (the deploy key, `StrictHostKeyChecking=yes`
//! and the configured known hosts only); without a `[sources."HOST"]`
//! entry git's own configuration applies. Terminal prompts are off.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rebased_core::config::SourceConfig;
use rebased_core::source::{is_commit_id, GitContext};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tracing::debug;

/// Why a source could not be looked up or checked out. Every message names
/// the repository by its public URL (never a credential).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The repository could not be reached (DNS, refused, no such repository).
    #[error("{url}: repository unreachable: {detail}")]
    Unreachable {
        /// The repository.
        url: String,
        /// What git said.
        detail: String,
    },
    /// The remote refused our credentials, or the host key is not trusted.
    #[error("{url}: authentication failed: {detail}")]
    Auth {
        /// The repository.
        url: String,
        /// What git said.
        detail: String,
    },
    /// The ref does not exist on the remote.
    #[error("{url}: no ref {reference:?}")]
    MissingRef {
        /// The repository.
        url: String,
        /// The ref asked for.
        reference: String,
    },
    /// The commit holds no such directory.
    #[error("{url}: commit {commit} has no directory {dir:?}")]
    MissingDir {
        /// The repository.
        url: String,
        /// The commit.
        commit: String,
        /// The directory.
        dir: String,
    },
    /// git ran longer than the timeout and was killed.
    #[error("{url}: git {what} killed after {secs}s")]
    Timeout {
        /// The repository.
        url: String,
        /// What git was doing.
        what: &'static str,
        /// The timeout.
        secs: u64,
    },
    /// git failed otherwise.
    #[error("{url}: git {what} failed: {detail}")]
    Git {
        /// The repository.
        url: String,
        /// What git was doing.
        what: &'static str,
        /// What git said.
        detail: String,
    },
    /// A local file or directory could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A credential setting git cannot be given safely.
    #[error("{0}")]
    Config(String),
}

impl SourceError {
    /// A short outcome label for metrics: `unreachable`, `auth`,
    /// `missing_ref`, `missing_dir`, `timeout` or `error`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "unreachable",
            Self::Auth { .. } => "auth",
            Self::MissingRef { .. } => "missing_ref",
            Self::MissingDir { .. } => "missing_dir",
            Self::Timeout { .. } => "timeout",
            _ => "error",
        }
    }
}

/// Git sources under one directory.
#[derive(Debug, Clone)]
pub struct Sources {
    root: PathBuf,
    timeout: Duration,
    program: PathBuf,
}

/// A checked-out commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    /// The commit.
    pub commit: String,
    /// The whole work tree.
    pub tree: PathBuf,
    /// The context's directory inside it.
    pub dir: PathBuf,
}

impl Sources {
    /// Sources kept under `root` (`state_dir/sources`); each git process is
    /// killed after `timeout`.
    pub fn new(root: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            root: root.into(),
            timeout,
            program: PathBuf::from("git"),
        }
    }

    /// The directory of one repository's clone and work trees.
    pub fn repository_dir(&self, url: &str) -> PathBuf {
        let hash = Sha256::digest(url.as_bytes());
        let hex: String = hash.iter().take(12).map(|b| format!("{b:02x}")).collect();
        self.root.join(hex)
    }

    /// The commit `ctx`'s ref points at on the remote now (a full commit id
    /// as ref is its own answer). For an annotated tag, the commit it tags.
    pub async fn resolve(
        &self,
        ctx: &GitContext,
        creds: Option<&SourceConfig>,
    ) -> Result<String, SourceError> {
        let url = ctx.public_url();
        if let Some(r) = ctx.reference.as_deref().filter(|r| is_commit_id(r)) {
            return Ok(r.to_owned());
        }
        let reference = ctx.reference_or_head();
        let mut args: Vec<String> = vec!["ls-remote".into(), "--".into(), ctx.url.clone()];
        args.push(reference.to_owned());
        args.push(format!("{reference}^{{}}"));
        let out = self.git(&args, None, creds, ctx, "ls-remote").await?;
        pick(&out, reference).ok_or(SourceError::MissingRef {
            url,
            reference: reference.to_owned(),
        })
    }

    /// A work tree of `commit` of `ctx`'s repository: fetched shallow by its
    /// id into the shared clone and checked out once; later calls reuse it.
    pub async fn checkout(
        &self,
        ctx: &GitContext,
        creds: Option<&SourceConfig>,
        commit: &str,
    ) -> Result<Checkout, SourceError> {
        let url = ctx.public_url();
        if !is_commit_id(commit) {
            return Err(SourceError::Config(format!(
                "{url}: {commit:?} is not a commit id"
            )));
        }
        let repo_dir = self.repository_dir(&ctx.url);
        // One fetch or checkout per clone at a time (the poll loop and a
        // job may ask together; git's shallow.lock would refuse the second).
        let lock = repository_lock(&repo_dir);
        let _held = lock.lock().await;
        let trees = repo_dir.join("trees");
        let tree = trees.join(commit);
        let marker = tree.join(".rebased-complete");
        if marker.exists() {
            // Used now: [`Sources::prune`] leaves it alone for a while.
            write(&marker, commit.as_bytes()).await?;
        } else {
            let bare = repo_dir.join("repo.git");
            mkdir(&trees).await?;
            if !bare.join("HEAD").exists() {
                let mut a: Vec<String> = ["init", "--bare", "--quiet"].map(String::from).to_vec();
                a.push(bare.to_string_lossy().into_owned());
                self.git(&a, None, None, ctx, "init").await?;
            }
            let has = |git: Sources, bare: PathBuf| async move {
                let args = ["cat-file", "-e", &format!("{commit}^{{commit}}")].map(String::from);
                git.git(&args, Some(&bare), None, ctx, "cat-file")
                    .await
                    .is_ok()
            };
            if !has(self.clone(), bare.clone()).await {
                let args = [
                    "fetch",
                    "--quiet",
                    "--no-tags",
                    "--depth=1",
                    "--",
                    &ctx.url,
                    commit,
                ]
                .map(String::from);
                self.git(&args, Some(&bare), creds, ctx, "fetch").await?;
                if !has(self.clone(), bare.clone()).await {
                    return Err(SourceError::Git {
                        url,
                        what: "fetch",
                        detail: format!("commit {commit} not fetched"),
                    });
                }
            }
            let tmp = trees.join(format!(".{commit}.{}", std::process::id()));
            let _ = tokio::fs::remove_dir_all(&tmp).await;
            mkdir(&tmp).await?;
            let index = trees.join(format!(".{commit}.{}.index", std::process::id()));
            let args = [
                format!("--work-tree={}", tmp.display()),
                "read-tree".into(),
                "--reset".into(),
                "-u".into(),
                commit.to_owned(),
            ];
            let done = self
                .git_env(
                    &args,
                    Some(&bare),
                    None,
                    ctx,
                    "checkout",
                    &[("GIT_INDEX_FILE", &index)],
                )
                .await;
            let _ = tokio::fs::remove_file(&index).await;
            done?;
            write(&tmp.join(".rebased-complete"), commit.as_bytes()).await?;
            let _ = tokio::fs::remove_dir_all(&tree).await;
            tokio::fs::rename(&tmp, &tree)
                .await
                .map_err(|source| SourceError::Io {
                    path: tree.clone(),
                    source,
                })?;
        }
        let dir = tree.join(&ctx.dir);
        if !tokio::fs::metadata(&dir).await.is_ok_and(|m| m.is_dir()) {
            return Err(SourceError::MissingDir {
                url,
                commit: commit.to_owned(),
                dir: ctx.dir.display().to_string(),
            });
        }
        Ok(Checkout {
            commit: commit.to_owned(),
            tree,
            dir,
        })
    }

    /// Removes the work trees of `url`'s repository other than `keep`
    /// that no checkout has asked for within `idle` (a build reading one
    /// must outlive it: give at least the build timeout).
    pub async fn prune(&self, url: &str, keep: &[&str], idle: Duration) {
        let trees = self.repository_dir(url).join("trees");
        let Ok(mut rd) = tokio::fs::read_dir(&trees).await else {
            return;
        };
        while let Ok(Some(e)) = rd.next_entry().await {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || keep.contains(&name.as_str()) {
                continue;
            }
            let used = tokio::fs::metadata(e.path().join(".rebased-complete"))
                .await
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            // A tree without its marker is an interrupted checkout.
            if used.is_none_or(|u| u >= idle) {
                let _ = tokio::fs::remove_dir_all(e.path()).await;
            }
        }
    }

    async fn git(
        &self,
        args: &[String],
        git_dir: Option<&Path>,
        creds: Option<&SourceConfig>,
        ctx: &GitContext,
        what: &'static str,
    ) -> Result<String, SourceError> {
        self.git_env(args, git_dir, creds, ctx, what, &[]).await
    }

    /// Runs git with `args`; its stdout on success.
    async fn git_env(
        &self,
        args: &[String],
        git_dir: Option<&Path>,
        creds: Option<&SourceConfig>,
        ctx: &GitContext,
        what: &'static str,
        env: &[(&str, &Path)],
    ) -> Result<String, SourceError> {
        let url = ctx.public_url();
        let mut c = Command::new(&self.program);
        if creds.is_some_and(|c| c.password_file.is_some()) {
            // Only our answer counts: no stored credentials are tried
            // (`credential.helper=` as git's environment-given config,
            // git 2.31 and later).
            c.env("GIT_CONFIG_COUNT", "1")
                .env("GIT_CONFIG_KEY_0", "credential.helper")
                .env("GIT_CONFIG_VALUE_0", "");
        }
        if let Some(d) = git_dir {
            c.arg(format!("--git-dir={}", d.display()));
        }
        c.args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            .env_remove("GIT_ASKPASS")
            .env_remove("SSH_ASKPASS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        for (k, v) in env {
            c.env(k, v);
        }
        if let Some(creds) = creds {
            self.credentials(&mut c, creds).await?;
        }
        debug!(repository = %url, what, "running git");
        let mut child = c.spawn().map_err(|source| SourceError::Io {
            path: self.program.clone(),
            source,
        })?;
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let run = async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let read_out = async {
                if let Some(s) = stdout.as_mut() {
                    let _ = s.take(16 << 20).read_to_end(&mut out).await;
                }
            };
            let read_err = async {
                if let Some(s) = stderr.as_mut() {
                    let _ = s.take(64 << 10).read_to_end(&mut err).await;
                }
            };
            tokio::join!(read_out, read_err);
            let status = child.wait().await;
            (status, out, err)
        };
        let (status, out, err) = match tokio::time::timeout(self.timeout, run).await {
            Ok(r) => r,
            Err(_) => {
                kill_group(&mut child).await;
                return Err(SourceError::Timeout {
                    url,
                    what,
                    secs: self.timeout.as_secs(),
                });
            }
        };
        let status = status.map_err(|source| SourceError::Io {
            path: self.program.clone(),
            source,
        })?;
        if status.success() {
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        Err(classify(&url, what, &String::from_utf8_lossy(&err)))
    }

    /// Gives git the credentials of `creds`: `GIT_ASKPASS` for a user name
    /// and password file, `GIT_SSH_COMMAND` for a deploy key.
    async fn credentials(&self, c: &mut Command, creds: &SourceConfig) -> Result<(), SourceError> {
        if let Some(pw) = &creds.password_file {
            let askpass = self.askpass().await?;
            c.env("GIT_ASKPASS", askpass)
                .env(
                    "REBASED_GIT_USERNAME",
                    creds.username.as_deref().unwrap_or(""),
                )
                .env("REBASED_GIT_PASSWORD_FILE", pw);
        }
        if let Some(key) = &creds.ssh_key_file {
            let known = creds.known_hosts_file.as_ref().ok_or_else(|| {
                SourceError::Config("ssh_key_file needs known_hosts_file".to_owned())
            })?;
            let ssh = format!(
                "ssh -i {} -o IdentitiesOnly=yes -o IdentityAgent=none -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null",
                quote(key)?,
                quote(known)?
            );
            c.env("GIT_SSH_COMMAND", ssh).env("GIT_SSH_VARIANT", "ssh");
        }
        Ok(())
    }

    /// The askpass script (no secret in it: it reads the password file
    /// named in its environment).
    async fn askpass(&self) -> Result<PathBuf, SourceError> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.root.join("askpass.sh");
        let script = "#!/bin/sh\ncase \"$1\" in\n  [Uu]sername*) printf '%s\\n' \"$REBASED_GIT_USERNAME\" ;;\n  *) head -n 1 -- \"$REBASED_GIT_PASSWORD_FILE\" ;;\nesac\n";
        if tokio::fs::read_to_string(&path).await.ok().as_deref() != Some(script) {
            mkdir(&self.root).await?;
            write(&path, script.as_bytes()).await?;
            tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
                .await
                .map_err(|source| SourceError::Io {
                    path: path.clone(),
                    source,
                })?;
        }
        Ok(path)
    }
}

/// The in-process lock of one clone directory.
fn repository_lock(dir: &Path) -> std::sync::Arc<tokio::sync::Mutex<()>> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    Arc::clone(locks.entry(dir.to_owned()).or_default())
}

/// A path single-quoted for the shell git runs `GIT_SSH_COMMAND` with.
fn quote(p: &Path) -> Result<String, SourceError> {
    let s = p.to_string_lossy();
    if s.contains('\'') {
        return Err(SourceError::Config(format!(
            "{s:?}: a path holding a single quote cannot be given to ssh"
        )));
    }
    Ok(format!("'{s}'"))
}

/// The commit for `reference` in `git ls-remote` output: a peeled tag
/// first, then `refs/heads/R`, `refs/tags/R`, then the ref written in full.
fn pick(out: &str, reference: &str) -> Option<String> {
    let refs: Vec<(&str, &str)> = out
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(id, _)| is_commit_id(id))
        .collect();
    let find = |name: &str| {
        refs.iter()
            .find(|(_, r)| *r == name)
            .map(|(id, _)| (*id).to_owned())
    };
    if reference == "HEAD" {
        return find("HEAD");
    }
    find(&format!("refs/tags/{reference}^{{}}"))
        .or_else(|| find(&format!("refs/heads/{reference}")))
        .or_else(|| find(&format!("refs/tags/{reference}")))
        .or_else(|| find(&format!("{reference}^{{}}")))
        .or_else(|| find(reference))
}

/// git's stderr as one of our errors (the last lines only).
fn classify(url: &str, what: &'static str, stderr: &str) -> SourceError {
    let detail: String = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .rev()
        .take(3)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("; ");
    let detail: String = detail.chars().take(400).collect();
    let has = |s: &str| stderr.contains(s);
    let url = url.to_owned();
    if has("Authentication failed")
        || has("Permission denied")
        || has("Host key verification failed")
        || has("could not read Username")
        || has("could not read Password")
        || has("terminal prompts disabled")
        || has("HTTP Basic: Access denied")
        || has("returned error: 401")
        || has("returned error: 403")
    {
        return SourceError::Auth { url, detail };
    }
    if has("Could not resolve host")
        || has("Connection refused")
        || has("unable to connect")
        || has("does not appear to be a git repository")
        || has("Could not read from remote repository")
        || has("not found")
        || has("No route to host")
        || has("Connection timed out")
        || has("Failed to connect")
        || has("Couldn't connect to server")
        || has("Could not resolve proxy")
    {
        return SourceError::Unreachable { url, detail };
    }
    SourceError::Git { url, what, detail }
}

/// Kills `child` and everything in its process group.
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

async fn mkdir(p: &Path) -> Result<(), SourceError> {
    tokio::fs::create_dir_all(p)
        .await
        .map_err(|source| SourceError::Io {
            path: p.to_owned(),
            source,
        })
}

async fn write(p: &Path, data: &[u8]) -> Result<(), SourceError> {
    tokio::fs::write(p, data)
        .await
        .map_err(|source| SourceError::Io {
            path: p.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const C: &str = "3333333333333333333333333333333333333333";

    #[test]
    fn ls_remote_output_is_read_as_git_does() {
        let out = format!(
            "{A}\tHEAD\n{A}\trefs/heads/main\n{B}\trefs/tags/v1\n{C}\trefs/tags/v1^{{}}\n{B}\trefs/heads/feature/main\n"
        );
        assert_eq!(pick(&out, "HEAD").as_deref(), Some(A));
        assert_eq!(
            pick(&out, "main").as_deref(),
            Some(A),
            "refs/heads/main, not feature/main"
        );
        assert_eq!(
            pick(&out, "v1").as_deref(),
            Some(C),
            "an annotated tag is peeled"
        );
        assert_eq!(pick(&out, "refs/heads/main").as_deref(), Some(A));
        assert_eq!(pick(&out, "nope"), None);
    }

    #[test]
    fn errors_are_classified_and_short() {
        let e = classify(
            "u",
            "ls-remote",
            "fatal: Authentication failed for 'https://h/a.git/'\n",
        );
        assert_eq!(e.kind(), "auth");
        let e = classify("u", "ls-remote", "fatal: unable to connect to 127.0.0.1:\n127.0.0.1[0: 127.0.0.1]: errno=Connection refused\n");
        assert_eq!(e.kind(), "unreachable");
        let e = classify("u", "ls-remote", "fatal: unable to access 'https://127.0.0.1:1/a.git/': Failed to connect to 127.0.0.1 port 1 after 0 ms: Couldn't connect to server\n");
        assert_eq!(e.kind(), "unreachable");
        let long = "x".repeat(10_000);
        assert!(classify("u", "fetch", &long).to_string().len() < 500);
    }

    #[test]
    fn ssh_paths_with_quotes_are_refused() {
        assert!(quote(Path::new("/a/b")).is_ok());
        assert!(quote(Path::new("/a/'b")).is_err());
    }
}
