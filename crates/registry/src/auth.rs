//! Where credentials for a registry come from, as Docker, skopeo and crane
//! look for them: `[registries."HOST"]` (`username` + `password_file`), else
//! the Docker client config (`$DOCKER_CONFIG/config.json` or
//! `~/.docker/config.json`): `credHelpers`, `credsStore`, then `auths`.
//! Nothing found means anonymous. Secrets never reach logs: `Credentials`
//! prints its user only.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use rebased_core::config::RegistryConfig;
use serde::Deserialize;

/// A user and a secret (password, token).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub secret: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credentials {{ username: {:?}, secret: <redacted> }}",
            self.username
        )
    }
}

/// The user name Docker's config uses for an identity (refresh) token.
pub const IDENTITY_TOKEN_USER: &str = "<token>";

impl Credentials {
    /// True for an identity (refresh) token from `docker login` with OAuth2.
    pub fn is_identity_token(&self) -> bool {
        self.username == IDENTITY_TOKEN_USER
    }

    /// `user:secret` in base64, as `auth` fields and Basic headers carry it.
    pub fn basic(&self) -> String {
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.username, self.secret))
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The Docker client config file, if any.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(Path::new(&dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker/config.json"))
}

/// `https://index.docker.io/v1/` -> `docker.io`; `https://host:5000/x` -> `host:5000`.
fn key_host(key: &str) -> String {
    let k = key.split("://").nth(1).unwrap_or(key);
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        h => h.to_owned(),
    }
}

/// Credentials for `host` (a registry name as in references, e.g.
/// `docker.io`, `127.0.0.1:5000`). Errors name the file or helper and why.
pub fn credentials(
    host: &str,
    config: Option<&RegistryConfig>,
) -> Result<Option<Credentials>, String> {
    if let Some(cfg) = config {
        if let Some(user) = &cfg.username {
            let Some(file) = &cfg.password_file else {
                return Err(format!(
                    "registries.\"{host}\": username without password_file"
                ));
            };
            let secret = std::fs::read_to_string(file)
                .map_err(|e| {
                    format!(
                        "registries.\"{host}\".password_file {}: {e}",
                        file.display()
                    )
                })?
                .trim_end_matches(['\n', '\r'])
                .to_owned();
            return Ok(Some(Credentials {
                username: user.clone(),
                secret,
            }));
        }
    }
    let Some(path) = docker_config_path() else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let cfg: DockerConfig =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    from_docker_config(host, &cfg, &path)
}

fn from_docker_config(
    host: &str,
    cfg: &DockerConfig,
    path: &Path,
) -> Result<Option<Credentials>, String> {
    // Docker keeps Hub credentials under its v1 index URL.
    let server = if host == "docker.io" {
        "https://index.docker.io/v1/"
    } else {
        host
    };
    if let Some(helper) = cfg
        .cred_helpers
        .iter()
        .find(|(k, _)| key_host(k) == host)
        .map(|(_, v)| v)
    {
        return helper_get(helper, server);
    }
    if let Some(store) = &cfg.creds_store {
        if let Some(c) = helper_get(store, server)? {
            return Ok(Some(c));
        }
    }
    let Some(entry) = cfg
        .auths
        .iter()
        .find(|(k, _)| key_host(k) == host)
        .map(|(_, v)| v)
    else {
        return Ok(None);
    };
    if let Some(token) = &entry.identitytoken {
        return Ok(Some(Credentials {
            username: IDENTITY_TOKEN_USER.to_owned(),
            secret: token.clone(),
        }));
    }
    if let Some(auth) = &entry.auth {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| {
                format!(
                    "{}: auths.\"{host}\".auth is not base64: {e}",
                    path.display()
                )
            })?;
        let text = String::from_utf8(raw)
            .map_err(|_| format!("{}: auths.\"{host}\".auth is not UTF-8", path.display()))?;
        let Some((u, p)) = text.split_once(':') else {
            return Err(format!(
                "{}: auths.\"{host}\".auth is not user:password",
                path.display()
            ));
        };
        return Ok(Some(Credentials {
            username: u.to_owned(),
            secret: p.to_owned(),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) => Ok(Some(Credentials {
            username: u.clone(),
            secret: p.clone(),
        })),
        _ => Ok(None),
    }
}

#[derive(Deserialize)]
struct HelperReply {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// How long a credential helper may take.
const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `docker-credential-NAME get` with the host on stdin.
fn helper_get(name: &str, host: &str) -> Result<Option<Credentials>, String> {
    let program = format!("docker-credential-{name}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("credential helper {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(host.as_bytes());
    }
    // A helper waiting for a keyring or a PIN must not hang the daemon.
    let start = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() < HELPER_TIMEOUT => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "credential helper {program} did not answer within {} s",
                    HELPER_TIMEOUT.as_secs()
                ));
            }
            Err(e) => return Err(format!("credential helper {program}: {e}")),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("credential helper {program}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let msg = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        if msg.to_ascii_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        return Err(format!(
            "credential helper {program} failed ({}): {}",
            out.status,
            msg.trim()
        ));
    }
    let reply: HelperReply = serde_json::from_str(&stdout)
        .map_err(|e| format!("credential helper {program}: bad reply: {e}"))?;
    if reply.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials {
        username: reply.username,
        secret: reply.secret,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> DockerConfig {
        serde_json::from_str(json).expect("valid")
    }

    #[test]
    fn auths_entries_match_like_docker() {
        let c = cfg(r#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNz"},
            "127.0.0.1:5000": {"auth": "Ym90OnMzOmNyZXQ="},
            "ghcr.io": {"identitytoken": "tok"}
        }}"#);
        let p = Path::new("config.json");
        let hub = from_docker_config("docker.io", &c, p)
            .expect("ok")
            .expect("found");
        assert_eq!(
            (hub.username.as_str(), hub.secret.as_str()),
            ("user", "pass")
        );
        let local = from_docker_config("127.0.0.1:5000", &c, p)
            .expect("ok")
            .expect("found");
        assert_eq!(
            (local.username.as_str(), local.secret.as_str()),
            ("bot", "s3:cret")
        );
        assert_eq!(
            from_docker_config("ghcr.io", &c, p)
                .expect("ok")
                .map(|c| c.secret),
            Some("tok".into())
        );
        assert_eq!(from_docker_config("quay.io", &c, p).expect("ok"), None);
        let bad = cfg(r#"{"auths": {"x.io": {"auth": "%%%"}}}"#);
        assert!(from_docker_config("x.io", &bad, p)
            .expect_err("bad")
            .contains("base64"));
    }

    #[test]
    fn secrets_are_not_printed() {
        let c = Credentials {
            username: "bot".into(),
            secret: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.basic(), "Ym90Omh1bnRlcjI=");
    }

    #[test]
    fn config_file_credentials() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").expect("write");
        let rc = RegistryConfig {
            username: Some("bot".into()),
            password_file: Some(file),
            ..RegistryConfig::default()
        };
        let c = credentials("r.io", Some(&rc)).expect("ok").expect("found");
        assert_eq!(c.secret, "s3cret");
        let missing = RegistryConfig {
            username: Some("bot".into()),
            password_file: Some(dir.path().join("nope")),
            ..RegistryConfig::default()
        };
        assert!(credentials("r.io", Some(&missing))
            .expect_err("missing")
            .contains("password_file"));
    }
}
