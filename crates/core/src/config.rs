//! The config schema (TOML) and its validation.
//!
//! Every check that can be made on the text alone happens while
//! deserialising, so a bad value is reported with its line, column and key.
//! Reading the file is the caller's business ([`Config::parse`] takes text).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::duration::ConfigDuration;
use crate::reference::{validate_tag, ImageRef};
use crate::source::Context;
use crate::version::Version;

/// The whole config file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[daemon]`.
    #[serde(default)]
    pub daemon: DaemonConfig,
    /// `[builder]`.
    #[serde(default)]
    pub builder: BuilderConfig,
    /// `[registries."HOST"]`.
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryConfig>,
    /// `[sources."HOST"]`: credentials per git host.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// `[webhooks]`.
    #[serde(default)]
    pub webhooks: WebhooksConfig,
    /// `[signing]`: cosign signatures and attestations of every version.
    #[serde(default)]
    pub signing: SigningConfig,
    /// `[[image]]`.
    #[serde(default)]
    pub image: Vec<ImageConfig>,
    /// `[[notify]]`.
    #[serde(default)]
    pub notify: Vec<crate::notify::NotifyConfig>,
}

/// `[daemon]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// sled database, build workspaces, logs.
    pub state_dir: PathBuf,
    /// `127.0.0.1:8780` or `unix:/path`.
    pub listen: String,
    /// Bearer token required on every POST except webhooks.
    pub api_token_file: Option<PathBuf>,
    /// Poll schedule for bases.
    pub poll: CronSpec,
    /// Time zone of cron schedules.
    pub timezone: String,
    /// How long a changed digest must hold before a build starts.
    pub settle: ConfigDuration,
    /// Builds running at once.
    pub max_concurrent_builds: usize,
    /// On SIGTERM, how long running builds may finish.
    pub stop_timeout: ConfigDuration,
    /// `RUST_LOG`-style filter.
    pub log: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Cron for the immutability audit (none: only on request).
    pub audit: Option<CronSpec>,
    /// The audit repairs what it can (never deleting anything).
    pub audit_repair: bool,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/rebased"),
            listen: "127.0.0.1:8780".to_owned(),
            api_token_file: None,
            // A literal that parses (the default_config test reads it).
            poll: CronSpec::parse("*/15 * * * *").expect("the default schedule parses"),
            timezone: "UTC".to_owned(),
            settle: ConfigDuration(std::time::Duration::from_secs(30)),
            max_concurrent_builds: 2,
            stop_timeout: ConfigDuration(std::time::Duration::from_secs(60)),
            log: "info".to_owned(),
            log_format: LogFormat::Auto,
            audit: None,
            audit_repair: false,
        }
    }
}

/// `daemon.log_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `journald` under the journal, `text` otherwise.
    #[default]
    Auto,
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
    /// Native journald fields.
    Journald,
}

/// `[builder]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuilderConfig {
    /// Which engine builds.
    pub backend: Backend,
    /// A build running longer is cancelled.
    pub timeout: ConfigDuration,
    /// Attempts before an image is `failing`.
    pub max_attempts: u32,
    /// Where the kernel's `binfmt_misc` handlers are looked for before an
    /// engine builds a foreign platform's `RUN` steps.
    pub binfmt_dir: PathBuf,
    /// `[[builder.engine]]`: remote build engines (Docker Engine API).
    #[serde(rename = "engine")]
    pub engines: Vec<EngineConfig>,
}

impl Default for BuilderConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Auto,
            timeout: ConfigDuration(std::time::Duration::from_secs(30 * 60)),
            max_attempts: 5,
            binfmt_dir: PathBuf::from("/proc/sys/fs/binfmt_misc"),
            engines: Vec::new(),
        }
    }
}

/// `builder.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// `native` without `RUN`, else the first installed engine.
    #[default]
    Auto,
    /// Pure Rust.
    Native,
    /// `buildah bud`.
    Buildah,
    /// `podman build`.
    Podman,
    /// `docker build`.
    Docker,
    /// The `[[builder.engine]]` pool (Docker Engine API).
    Remote,
}

/// `[[builder.engine]]`: a remote build engine, Docker Engine or Podman's
/// Docker-compatible service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Its name, unique: logs, job logs, `GET /v1/engines`.
    pub name: String,
    /// `tcp://HOST:PORT`, `unix:///PATH` or `ssh://[USER@]HOST[:PORT]`.
    pub url: String,
    /// `tcp://` without TLS: allowed for a loopback address, else only with
    /// this set.
    #[serde(default)]
    pub insecure: bool,
    /// CA that signed the engine's certificate (TLS).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (TLS).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Client key (TLS).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// `ssh://`: the key ssh authenticates with (else ssh's own
    /// configuration decides).
    #[serde(default)]
    pub ssh_key_file: Option<PathBuf>,
    /// `ssh://`: the host keys trusted (`StrictHostKeyChecking=yes`); needed
    /// with `ssh_key_file`.
    #[serde(default)]
    pub known_hosts_file: Option<PathBuf>,
    /// Builds at once on this engine.
    #[serde(default = "default_max_builds")]
    pub max_builds: usize,
    /// What it can build (`os/arch[/variant]`); empty: what it reports.
    #[serde(default)]
    pub platforms: Vec<String>,
}

fn default_max_builds() -> usize {
    2
}

/// How rebased reaches an engine, from [`EngineConfig::url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineAddress {
    /// `tcp://HOST:PORT`; `tls` unless insecure (or plain loopback).
    Tcp {
        /// `HOST:PORT`.
        authority: String,
        /// Over TLS with the engine's `ca_file`, `cert_file`, `key_file`.
        tls: bool,
    },
    /// `unix:///PATH`.
    Unix(PathBuf),
    /// `ssh://[USER@]HOST[:PORT]`: through the ssh client running
    /// `docker system dial-stdio` on the host.
    Ssh {
        /// `USER@HOST` or `HOST`.
        destination: String,
        /// The port, when not 22.
        port: Option<u16>,
    },
}

impl EngineConfig {
    /// The address its `url` names, or why it is not one.
    pub fn address(&self) -> Result<EngineAddress, String> {
        let url = self.url.as_str();
        if let Some(rest) = url.strip_prefix("unix://") {
            if !rest.starts_with('/') {
                return Err(format!("{url:?}: a unix socket needs an absolute path (unix:///run/podman/podman.sock)"));
            }
            return Ok(EngineAddress::Unix(PathBuf::from(rest)));
        }
        if let Some(rest) = url.strip_prefix("ssh://") {
            let rest = rest.trim_end_matches('/');
            let (user, hostport) = match rest.rsplit_once('@') {
                Some((u, h)) => (Some(u), h),
                None => (None, rest),
            };
            let (host, port) = split_port(hostport)
                .ok_or_else(|| format!("{url:?}: not ssh://[USER@]HOST[:PORT]"))?;
            if host.is_empty()
                || user.is_some_and(|u| u.is_empty() || u.contains(':'))
                || host.starts_with('-')
            {
                return Err(format!(
                    "{url:?}: not ssh://[USER@]HOST[:PORT] (no password in the URL)"
                ));
            }
            let destination = match user {
                Some(u) => format!("{u}@{host}"),
                None => host.to_owned(),
            };
            return Ok(EngineAddress::Ssh { destination, port });
        }
        let Some(rest) = url.strip_prefix("tcp://") else {
            return Err(format!(
                "{url:?}: the url is tcp://HOST:PORT, unix:///PATH or ssh://USER@HOST"
            ));
        };
        let authority = rest.trim_end_matches('/');
        let (host, port) = split_port(authority)
            .filter(|(h, p)| !h.is_empty() && p.is_some())
            .ok_or_else(|| format!("{url:?}: not tcp://HOST:PORT"))?;
        let certs = [&self.ca_file, &self.cert_file, &self.key_file];
        let given = certs.iter().filter(|c| c.is_some()).count();
        if given == 3 {
            return Ok(EngineAddress::Tcp {
                authority: authority.to_owned(),
                tls: true,
            });
        }
        if given > 0 {
            return Err(format!(
                "{url:?}: TLS needs all of ca_file, cert_file and key_file"
            ));
        }
        let loopback = host == "localhost"
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let _ = port;
        if self.insecure || loopback {
            Ok(EngineAddress::Tcp {
                authority: authority.to_owned(),
                tls: false,
            })
        } else {
            Err(format!("{url:?}: plain TCP to a host that is not loopback: give ca_file, cert_file and key_file for TLS, or set insecure = true"))
        }
    }
}

/// `HOST[:PORT]` (an IPv6 host in brackets): the host and the port.
fn split_port(s: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(p) => Some((host, Some(p.parse().ok()?))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h, Some(p.parse().ok()?))),
        Some(_) => None,
        None => Some((s, None)),
    }
}

/// `[registries."HOST"]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Plain http.
    pub insecure: bool,
    /// Basic-auth user.
    pub username: Option<String>,
    /// File holding the password or token.
    pub password_file: Option<PathBuf>,
    /// Extra trusted CA.
    pub ca_file: Option<PathBuf>,
    /// Requests in flight to this registry.
    pub concurrency: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            insecure: false,
            username: None,
            password_file: None,
            ca_file: None,
            concurrency: 8,
        }
    }
}

/// `[sources."HOST"]`: how git reaches a host (otherwise git's own
/// configuration does).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// The user name for https.
    pub username: Option<String>,
    /// File holding the password or token (https).
    pub password_file: Option<PathBuf>,
    /// The deploy key (ssh).
    pub ssh_key_file: Option<PathBuf>,
    /// The host keys trusted for ssh; required with `ssh_key_file`.
    pub known_hosts_file: Option<PathBuf>,
}

/// `[webhooks]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Token accepted as bearer, `?token=` or HMAC key.
    pub token_file: Option<PathBuf>,
}

/// `[signing]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigningConfig {
    /// cosign's encrypted private key, or a PKCS#8 P-256 PEM; none: versions
    /// are not signed.
    pub key_file: Option<PathBuf>,
    /// The password of an encrypted key (its first line).
    pub password_file: Option<PathBuf>,
    /// Attestations pushed with each version.
    pub attest: Vec<Attestation>,
}

/// One kind of attestation in `signing.attest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attestation {
    /// SLSA provenance v1.
    Slsa,
    /// An SPDX 2.3 SBOM of the operating-system packages.
    Sbom,
}

/// One `[[image]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// Unique id used in the API and CLI.
    pub name: ImageName,
    /// Build context: a directory, or a git repository `URL#REF:DIR`.
    pub context: Context,
    /// Dockerfile, relative to `context` (to DIR for git).
    #[serde(default = "default_dockerfile")]
    pub dockerfile: PathBuf,
    /// Where versions are pushed.
    pub repository: Repository,
    /// First version, when the repository holds no semver tag.
    pub version: Version,
    /// How the next version is made after a base change.
    #[serde(default)]
    pub bump: Bump,
    /// How the next version is made after a source change.
    #[serde(default)]
    pub source_bump: SourceBump,
    /// Floating tags moved to each new version.
    #[serde(default = "default_tags")]
    pub tags: Vec<TagTemplate>,
    /// Platforms built.
    #[serde(default = "default_platforms")]
    pub platforms: Vec<String>,
    /// `--build-arg`s.
    #[serde(default)]
    pub build_args: BTreeMap<String, String>,
    /// Build secrets by id.
    #[serde(default)]
    pub secrets: BTreeMap<String, PathBuf>,
    /// Overrides `daemon.poll` for this image's bases.
    #[serde(default)]
    pub poll: Option<CronSpec>,
    /// A content change under a local `context` triggers a build.
    #[serde(default)]
    pub watch_context: bool,
}

impl ImageConfig {
    /// The Dockerfile's path for a local context (`context` joined with
    /// `dockerfile`); a git context's is inside its checkout.
    pub fn dockerfile_path(&self) -> Option<PathBuf> {
        self.context.local().map(|c| c.join(&self.dockerfile))
    }
}

fn default_dockerfile() -> PathBuf {
    PathBuf::from("Dockerfile")
}

fn default_tags() -> Vec<TagTemplate> {
    ["{major}.{minor}", "{major}", "latest"]
        .into_iter()
        .map(|t| TagTemplate(t.to_owned()))
        .collect()
}

fn default_platforms() -> Vec<String> {
    vec!["linux/amd64".to_owned()]
}

/// `bump`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bump {
    /// 1.4.2 -> 1.4.3.
    #[default]
    Patch,
    /// 1.4.2 -> 1.4.2-r1.
    Revision,
}

impl Bump {
    /// The version after `v`.
    pub fn next(self, v: &Version) -> Version {
        match self {
            Self::Patch => v.next_patch(),
            Self::Revision => v.next_revision(),
        }
    }
}

/// `source_bump`: the next version after a source change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceBump {
    /// 1.4.2 -> 1.4.2-r1.
    Revision,
    /// 1.4.2 -> 1.4.3.
    Patch,
    /// 1.4.2 -> 1.5.0.
    #[default]
    Minor,
}

impl SourceBump {
    /// The version after `v`.
    pub fn next(self, v: &Version) -> Version {
        match self {
            Self::Minor => v.next_minor(),
            Self::Patch => v.next_patch(),
            Self::Revision => v.next_revision(),
        }
    }
}

impl From<Bump> for SourceBump {
    fn from(b: Bump) -> Self {
        match b {
            Bump::Patch => Self::Patch,
            Bump::Revision => Self::Revision,
        }
    }
}

/// An image's unique name: letters, digits, `.`, `_`, `-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageName(String);

impl ImageName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ImageName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.is_empty() || s.len() > 128 {
            return Err(format!("image name {s:?} must be 1 to 128 characters"));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(format!(
                "image name {s:?} may only hold letters, digits, '.', '_' and '-'"
            ));
        }
        Ok(Self(s))
    }
}

impl From<ImageName> for String {
    fn from(n: ImageName) -> Self {
        n.0
    }
}

/// Where versions are pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Repository {
    /// A registry repository (no tag, no digest).
    Registry(ImageRef),
    /// `oci:PATH`, an OCI image layout directory.
    OciLayout(PathBuf),
}

impl TryFrom<String> for Repository {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if let Some(path) = s.strip_prefix("oci:") {
            if path.is_empty() {
                return Err("oci: needs a directory path".to_owned());
            }
            return Ok(Self::OciLayout(PathBuf::from(path)));
        }
        ImageRef::parse_repository(&s)
            .map(Self::Registry)
            .map_err(|e| e.to_string())
    }
}

impl From<Repository> for String {
    fn from(r: Repository) -> Self {
        r.to_string()
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Registry(r) => f.write_str(&r.name()),
            Self::OciLayout(p) => write!(f, "oci:{}", p.display()),
        }
    }
}

/// A floating tag template: `{major}`, `{minor}`, `{patch}` and literal text
/// that, rendered, is a valid tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TagTemplate(String);

impl TagTemplate {
    /// The tag for `v`.
    pub fn render(&self, v: &Version) -> String {
        v.render(&self.0)
    }

    /// The template text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TagTemplate {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        // A literal semver (every template test renders it).
        let sample = Version::parse("10.20.30").expect("a literal version parses");
        let rendered = sample.render(&s);
        if rendered.contains(['{', '}']) {
            return Err(format!(
                "tag template {s:?}: only {{major}}, {{minor}} and {{patch}} may be substituted"
            ));
        }
        validate_tag(&rendered).map_err(|e| format!("tag template {s:?}: {e}"))?;
        if Version::parse(&rendered).is_ok() {
            return Err(format!(
                "tag template {s:?} renders a full version: floating tags must not look like version tags"
            ));
        }
        Ok(Self(s))
    }
}

impl From<TagTemplate> for String {
    fn from(t: TagTemplate) -> Self {
        t.0
    }
}

/// A cron expression: 5 fields (minute resolution) or 6/7 with seconds.
///
/// Five fields read as standard (Vixie) cron: day of week `0`-`7` with `0`
/// and `7` both Sunday, and when both day of month and day of week are
/// restricted, either matching fires. Six or seven fields read as the `cron`
/// crate does: a leading seconds field (and an optional trailing year), day
/// of week `1`-`7` from Sunday, and both day fields must match.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CronSpec {
    text: String,
    schedules: Vec<cron::Schedule>,
}

impl CronSpec {
    /// Parses and validates.
    pub fn parse(text: &str) -> Result<Self, String> {
        let expanded = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            t if t.starts_with('@') => {
                return Err(format!(
                    "cron {text:?}: unknown shortcut; use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly"
                ))
            }
            t => t,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        // The `cron` crate's own messages show its internal 6-field form
        // and wrong bounds ("must be less than 59"): check the user's
        // fields first, in the user's terms.
        check_bounds(text, &fields)?;
        let bad = |e: &dyn fmt::Display| {
            let e = e.to_string();
            let first = e.lines().next().unwrap_or_default().trim().to_owned();
            format!("cron {text:?}: {first}")
        };
        let exprs: Vec<String> = match fields.len() {
            5 => {
                let dow = standard_dow(fields[4]).map_err(|e| bad(&e))?;
                let (min, hour, dom, mon) = (fields[0], fields[1], fields[2], fields[3]);
                let restricted = |f: &str| f != "*" && f != "?";
                if restricted(dom) && restricted(fields[4]) {
                    // Standard cron: either day field matching fires.
                    vec![
                        format!("0 {min} {hour} {dom} {mon} *"),
                        format!("0 {min} {hour} * {mon} {dow}"),
                    ]
                } else {
                    vec![format!("0 {min} {hour} {dom} {mon} {dow}")]
                }
            }
            6 | 7 => vec![expanded.to_owned()],
            n => return Err(format!("cron {text:?} has {n} fields: expected 5 (minute hour day-of-month month day-of-week), 6 or 7 (with seconds first, and a year), or a shortcut such as @hourly")),
        };
        let schedules = exprs
            .iter()
            .map(|e| cron::Schedule::from_str(e).map_err(|err| bad(&err)))
            .collect::<Result<Vec<_>, _>>()?;
        if schedules
            .iter()
            .all(|s| s.upcoming(chrono::Utc).next().is_none())
        {
            return Err(format!("cron {text:?} never fires: no date matches it"));
        }
        Ok(Self {
            text: text.to_owned(),
            schedules,
        })
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The schedules it stands for (two for standard cron's day-of-month
    /// or day-of-week); it fires at the earliest of them.
    pub fn schedules(&self) -> &[cron::Schedule] {
        &self.schedules
    }
}

/// Checks the numbers of each field against its bounds, naming the field
/// as the user wrote it: 5 fields are standard cron, 6 or 7 start with
/// seconds (and may end with a year).
fn check_bounds(text: &str, fields: &[&str]) -> Result<(), String> {
    const STANDARD: &[(&str, u32, u32)] = &[
        ("minute", 0, 59),
        ("hour", 0, 23),
        ("day of month", 1, 31),
        ("month", 1, 12),
        ("day of week", 0, 7),
    ];
    const SECONDS: &[(&str, u32, u32)] = &[
        ("second", 0, 59),
        ("minute", 0, 59),
        ("hour", 0, 23),
        ("day of month", 1, 31),
        ("month", 1, 12),
        ("day of week", 1, 7),
        ("year", 1970, 2099),
    ];
    let bounds = match fields.len() {
        5 => STANDARD,
        6 | 7 => SECONDS,
        _ => return Ok(()),
    };
    for (field, (name, lo, hi)) in fields.iter().zip(bounds) {
        for item in field.split(',') {
            let (range, step) = match item.split_once('/') {
                Some((r, s)) => (r, Some(s)),
                None => (item, None),
            };
            if let Some(s) = step {
                if s.parse::<u32>().map_or(true, |n| n == 0) {
                    return Err(format!(
                        "cron {text:?}: {name} step {s:?} must be a number from 1"
                    ));
                }
            }
            for n in range.split('-') {
                // Names (MON, JAN), `*`, `?` are the crate's to read.
                let Ok(n) = n.parse::<u32>() else { continue };
                if n < *lo || n > *hi {
                    return Err(format!(
                        "cron {text:?}: {name} {n} is out of range {lo}-{hi}"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Standard cron's day-of-week field (0-7, 0 and 7 Sunday) in day names,
/// which the `cron` crate reads unambiguously.
fn standard_dow(field: &str) -> Result<String, String> {
    const NAMES: [&str; 8] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"];
    let day = |s: &str| -> Result<String, String> {
        if s.chars().all(|c| c.is_ascii_alphabetic()) {
            return Ok(s.to_ascii_uppercase());
        }
        s.parse::<usize>()
            .ok()
            .and_then(|n| NAMES.get(n))
            .map(|n| (*n).to_owned())
            .ok_or_else(|| format!("day of week {s:?} is not 0-7 or a name"))
    };
    let mut out = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        let mapped = match range {
            "*" | "?" => range.to_owned(),
            r => {
                match r.split_once('-') {
                    Some((a, b)) => {
                        let (a, b) = (day(a)?, day(b)?);
                        if b == "SUN" && a != "SUN" {
                            // 7 (Sunday) closing a range: SUN sorts first for the crate.
                            if step.is_some() {
                                return Err(format!("day of week {item:?}: write the range with names, e.g. MON-SAT"));
                            }
                            out.push(format!("{a}-SAT"));
                            out.push("SUN".to_owned());
                            continue;
                        }
                        format!("{a}-{b}")
                    }
                    None => day(r)?,
                }
            }
        };
        out.push(match step {
            Some(s) => format!("{mapped}/{s}"),
            None => mapped,
        });
    }
    Ok(out.join(","))
}

impl PartialEq for CronSpec {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl TryFrom<String> for CronSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<CronSpec> for String {
    fn from(c: CronSpec) -> Self {
        c.text
    }
}

/// A config error: where (line, column, key) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}{}: {message}", key.as_ref().map(|k| format!(", key {k}")).unwrap_or_default())]
pub struct ConfigError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The dotted key at fault, when known (`daemon.poll`, `image[1].name`).
    pub key: Option<String>,
    /// Why.
    pub message: String,
}

impl Config {
    /// Makes every relative path of the config relative to `dir` (the
    /// directory of the config file), as users of such files expect.
    pub fn resolve_paths(&mut self, dir: &std::path::Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        fix(&mut self.daemon.state_dir);
        fix(&mut self.builder.binfmt_dir);
        for e in &mut self.builder.engines {
            e.ca_file.iter_mut().for_each(fix);
            e.cert_file.iter_mut().for_each(fix);
            e.key_file.iter_mut().for_each(fix);
            e.ssh_key_file.iter_mut().for_each(fix);
            e.known_hosts_file.iter_mut().for_each(fix);
        }
        self.daemon.api_token_file.iter_mut().for_each(fix);
        self.webhooks.token_file.iter_mut().for_each(fix);
        self.signing.key_file.iter_mut().for_each(fix);
        self.signing.password_file.iter_mut().for_each(fix);
        for r in self.registries.values_mut() {
            r.password_file.iter_mut().for_each(fix);
            r.ca_file.iter_mut().for_each(fix);
        }
        for s in self.sources.values_mut() {
            s.password_file.iter_mut().for_each(fix);
            s.ssh_key_file.iter_mut().for_each(fix);
            s.known_hosts_file.iter_mut().for_each(fix);
        }
        for n in &mut self.notify {
            n.url_file.iter_mut().for_each(fix);
            n.secret_file.iter_mut().for_each(fix);
            n.password_file.iter_mut().for_each(fix);
            n.ca_file.iter_mut().for_each(fix);
        }
        for i in &mut self.image {
            if let Context::Local(c) = &mut i.context {
                fix(c);
            }
            i.secrets.values_mut().for_each(fix);
            if let Repository::OciLayout(p) = &mut i.repository {
                fix(p);
            }
        }
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            located(text, offset, e.message().trim().to_owned())
        })?;
        config.validate(text)?;
        Ok(config)
    }

    fn validate(&self, text: &str) -> Result<(), ConfigError> {
        if self.signing.key_file.is_none() && !self.signing.attest.is_empty() {
            let offset = text.find("attest").unwrap_or(0);
            let mut e = located(
                text,
                offset,
                "attestations are signed: set signing.key_file".to_owned(),
            );
            e.key = Some("signing.attest".to_owned());
            return Err(e);
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, image) in self.image.iter().enumerate() {
            if let Some(first) = seen.insert(image.name.as_str(), i) {
                let offset = nth_key_offset(text, "name", image.name.as_str(), 1).unwrap_or(0);
                let mut e = located(
                    text,
                    offset,
                    format!(
                        "image name {:?} is already used by image[{first}]",
                        image.name.as_str()
                    ),
                );
                e.key = Some(format!("image[{i}].name"));
                return Err(e);
            }
        }
        let mut repos: BTreeMap<String, usize> = BTreeMap::new();
        for (i, image) in self.image.iter().enumerate() {
            let repo = image.repository.to_string();
            if let Some(first) = repos.insert(repo.clone(), i) {
                let offset = nth_key_offset(text, "repository", &repo, 1).unwrap_or(0);
                let mut e = located(
                    text,
                    offset,
                    format!("repository {repo} is already used by image[{first}]: two images cannot publish to one repository"),
                );
                e.key = Some(format!("image[{i}].repository"));
                return Err(e);
            }
        }
        for (i, image) in self.image.iter().enumerate() {
            let bad = image.platforms.iter().find(|p| {
                let parts: Vec<&str> = p.split('/').collect();
                !(2..=3).contains(&parts.len())
                    || parts.iter().any(|part| {
                        part.is_empty()
                            || !part
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
                    })
            });
            if let Some(p) = bad {
                let offset = nth_key_offset(text, "platforms", p, 0).unwrap_or(0);
                let mut e = located(
                    text,
                    offset,
                    format!("platform {p:?} is not os/architecture[/variant], e.g. linux/arm64"),
                );
                e.key = Some(format!("image[{i}].platforms"));
                return Err(e);
            }
        }
        for (i, image) in self.image.iter().enumerate() {
            if image.watch_context && image.context.git().is_some() {
                let offset = nth_key_offset(text, "watch_context", "true", 0).unwrap_or(0);
                let mut e = located(
                    text,
                    offset,
                    "watch_context is for a local directory: a git context is watched by polling its ref".to_owned(),
                );
                e.key = Some(format!("image[{i}].watch_context"));
                return Err(e);
            }
        }
        for (host, s) in &self.sources {
            if s.ssh_key_file.is_some() && s.known_hosts_file.is_none() {
                return Err(key_error(
                    text,
                    &format!("sources.\"{host}\""),
                    "ssh_key_file",
                    "ssh_key_file needs known_hosts_file: host keys are never trusted on first use",
                ));
            }
            if s.password_file.is_some() && s.username.is_none() {
                return Err(key_error(
                    text,
                    &format!("sources.\"{host}\""),
                    "password_file",
                    "password_file needs username (e.g. x-access-token, oauth2)",
                ));
            }
        }
        if self.daemon.timezone.parse::<chrono_tz::Tz>().is_err() {
            return Err(key_error(
                text,
                "daemon",
                "timezone",
                &format!(
                    "unknown time zone {:?}: use an IANA name such as UTC or Europe/Berlin",
                    self.daemon.timezone
                ),
            ));
        }
        if self.daemon.max_concurrent_builds == 0 {
            return Err(key_error(
                text,
                "daemon",
                "max_concurrent_builds",
                "must be at least 1",
            ));
        }
        crate::notify::validate(&self.notify, text)?;
        self.validate_engines(text)?;
        if self.builder.max_attempts == 0 {
            return Err(key_error(
                text,
                "builder",
                "max_attempts",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

impl Config {
    fn validate_engines(&self, text: &str) -> Result<(), ConfigError> {
        let at = |i: usize, key: &str, value: &str, message: String| {
            // The i-th [[builder.engine]] table, then the key in it.
            let start = nth_table_offset(text, "builder.engine", i).unwrap_or(0);
            let offset = nth_key_offset(&text[start..], key, value, 0).map_or(start, |o| start + o);
            let mut e = located(text, offset, message);
            e.key = Some(format!("builder.engine[{i}].{key}"));
            e
        };
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, e) in self.builder.engines.iter().enumerate() {
            let ok = !e.name.is_empty()
                && e.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                return Err(at(
                    i,
                    "name",
                    "",
                    format!(
                        "engine name {:?}: letters, digits, '-', '_' and '.' only",
                        e.name
                    ),
                ));
            }
            if let Some(first) = names.insert(e.name.as_str(), i) {
                return Err(at(
                    i,
                    "name",
                    "",
                    format!(
                        "engine name {:?} is already used by builder.engine[{first}]",
                        e.name
                    ),
                ));
            }
            let address = e.address().map_err(|m| at(i, "url", "", m))?;
            let ssh = matches!(address, EngineAddress::Ssh { .. });
            for (key, given) in [
                ("ssh_key_file", e.ssh_key_file.is_some()),
                ("known_hosts_file", e.known_hosts_file.is_some()),
            ] {
                if given && !ssh {
                    return Err(at(i, key, "", format!("{key} is for an ssh:// engine")));
                }
            }
            if e.ssh_key_file.is_some() && e.known_hosts_file.is_none() {
                return Err(at(
                    i,
                    "ssh_key_file",
                    "",
                    "ssh_key_file needs known_hosts_file: host keys are never trusted on first use"
                        .to_owned(),
                ));
            }
            if e.max_builds == 0 {
                return Err(at(i, "max_builds", "", "must be at least 1".to_owned()));
            }
            if let Some(p) = e.platforms.iter().find(|p| !valid_platform(p)) {
                return Err(at(
                    i,
                    "platforms",
                    p,
                    format!("platform {p:?} is not os/architecture[/variant], e.g. linux/arm64"),
                ));
            }
        }
        if self.builder.backend == Backend::Remote && self.builder.engines.is_empty() {
            return Err(key_error(
                text,
                "builder",
                "backend",
                "backend = \"remote\" needs at least one [[builder.engine]]",
            ));
        }
        Ok(())
    }
}

/// `os/architecture[/variant]`.
fn valid_platform(p: &str) -> bool {
    let parts: Vec<&str> = p.split('/').collect();
    (2..=3).contains(&parts.len())
        && parts.iter().all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        })
}

/// Byte offset of the `n`-th (0-based) `[[table]]` header in `text`.
fn nth_table_offset(text: &str, table: &str, n: usize) -> Option<usize> {
    let mut offset = 0;
    let mut count = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.strip_prefix("[[")
            .and_then(|r| r.split(']').next())
            .is_some_and(|name| name.trim() == table)
        {
            if count == n {
                return Some(offset);
            }
            count += 1;
        }
        offset += line.len();
    }
    None
}

fn key_error(text: &str, table: &str, key: &str, message: &str) -> ConfigError {
    let offset = nth_key_offset(text, key, "", 0).unwrap_or(0);
    let mut e = located(text, offset, message.to_owned());
    e.key = Some(format!("{table}.{key}"));
    e
}

/// Byte offset of the `n`-th (0-based) line `key = …value…` in `text`.
fn nth_key_offset(text: &str, key: &str, value: &str, n: usize) -> Option<usize> {
    let mut offset = 0;
    let mut count = 0;
    for line in text.split_inclusive('\n') {
        if let Some((k, v)) = line.split_once('=') {
            if k.trim() == key && v.contains(value) {
                if count == n {
                    return Some(offset + (line.len() - line.trim_start().len()));
                }
                count += 1;
            }
        }
        offset += line.len();
    }
    None
}

/// Turns a byte offset into line, column and the dotted key written there.
pub(crate) fn located(text: &str, offset: usize, message: String) -> ConfigError {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |p| p + 1);
    let column = before[line_start..].chars().count() + 1;
    let line_text = text[line_start..].lines().next().unwrap_or_default();
    let mut table: Option<String> = None;
    let mut array_index: BTreeMap<String, usize> = BTreeMap::new();
    for l in text[..line_start].lines() {
        let t = l.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split(']').next()) {
            let name = name.trim().to_owned();
            let n = array_index
                .entry(name.clone())
                .and_modify(|n| *n += 1)
                .or_insert(0);
            table = Some(format!("{name}[{n}]"));
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = Some(name.trim().to_owned());
        }
    }
    let key = line_text
        .split_once('=')
        .map(|(k, _)| k.trim().to_owned())
        .filter(|k| !k.is_empty() && !k.starts_with('['))
        .map(|k| match &table {
            Some(t) => format!("{t}.{k}"),
            None => k,
        })
        .or_else(|| {
            let t = line_text.trim();
            t.starts_with('[')
                .then(|| t.trim_matches(['[', ']']).trim().to_owned())
        });
    ConfigError {
        line,
        column,
        key,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[image]]
name = "app"
context = "/srv/app"
repository = "127.0.0.1:5000/app"
version = "1.0.0"
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL).expect("valid");
        assert_eq!(c.daemon.listen, "127.0.0.1:8780");
        assert_eq!(c.daemon.poll.as_str(), "*/15 * * * *");
        let img = &c.image[0];
        assert_eq!(
            img.dockerfile_path(),
            Some(PathBuf::from("/srv/app/Dockerfile"))
        );
        assert_eq!(img.source_bump, SourceBump::Minor);
        let tags: Vec<_> = img.tags.iter().map(|t| t.render(&img.version)).collect();
        assert_eq!(tags, ["1.0", "1", "latest"]);
        assert_eq!(img.platforms, ["linux/amd64"]);
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_directory() {
        let mut c = Config::parse(
            r#"
[daemon]
state_dir = "state"
[registries."r.io"]
password_file = "/abs/pw"
ca_file = "ca.pem"
[[image]]
name = "app"
context = "app"
repository = "oci:images/app"
version = "1.0.0"
secrets = { npm = "npm-token" }
"#,
        )
        .expect("valid");
        c.resolve_paths(std::path::Path::new("/etc/rebased"));
        assert_eq!(c.daemon.state_dir, PathBuf::from("/etc/rebased/state"));
        let r = &c.registries["r.io"];
        assert_eq!(
            r.password_file.as_deref(),
            Some(std::path::Path::new("/abs/pw"))
        );
        assert_eq!(
            r.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/rebased/ca.pem"))
        );
        let i = &c.image[0];
        assert_eq!(i.context, Context::Local(PathBuf::from("/etc/rebased/app")));
        assert_eq!(i.secrets["npm"], PathBuf::from("/etc/rebased/npm-token"));
        assert_eq!(
            i.repository,
            Repository::OciLayout(PathBuf::from("/etc/rebased/images/app"))
        );
    }

    #[test]
    fn full_design_example_parses() {
        let text = r#"
[daemon]
state_dir = "/var/lib/rebased"
listen = "127.0.0.1:8780"
api_token_file = "/etc/rebased/api-token"
poll = "*/15 * * * *"
timezone = "UTC"
settle = "30s"
max_concurrent_builds = 2
stop_timeout = "60s"
log = "info"
log_format = "auto"

[builder]
backend = "auto"
timeout = "30m"
max_attempts = 5

[registries."127.0.0.1:5000"]
insecure = true
[registries."ghcr.io"]
username = "bot"
password_file = "/etc/rebased/ghcr-token"
ca_file = "/etc/rebased/ghcr-ca.pem"
concurrency = 8

[webhooks]
token_file = "/etc/rebased/webhook-token"

[[image]]
name = "web"
context = "/srv/web"
dockerfile = "Dockerfile"
repository = "ghcr.io/acme/web"
version = "1.4.2"
bump = "patch"
tags = ["{major}.{minor}", "{major}", "latest"]
platforms = ["linux/amd64"]
build_args = { APP_ENV = "prod" }
secrets = { npm = "/etc/rebased/npm-token" }
poll = "0 * * * *"
watch_context = false
"#;
        let c = Config::parse(text).expect("valid");
        assert!(c.registries["127.0.0.1:5000"].insecure);
        assert_eq!(c.image[0].build_args["APP_ENV"], "prod");
        assert_eq!(c.daemon.settle.0, std::time::Duration::from_secs(30));
    }

    #[test]
    fn standard_cron_days() {
        use chrono::{Datelike, TimeZone, Utc};
        let next = |expr: &str| {
            let c = CronSpec::parse(expr).expect(expr);
            // 2026-01-01 is a Thursday.
            let t0 = Utc
                .with_ymd_and_hms(2026, 1, 1, 12, 0, 0)
                .single()
                .expect("valid");
            c.schedules()
                .iter()
                .filter_map(|s| s.after(&t0).next())
                .min()
                .expect("fires")
        };
        assert_eq!(
            next("0 3 * * 1-5").weekday(),
            chrono::Weekday::Fri,
            "1-5 is Monday to Friday"
        );
        assert_eq!(next("0 3 * * 0").weekday(), chrono::Weekday::Sun);
        assert_eq!(next("0 3 * * 7").weekday(), chrono::Weekday::Sun);
        assert_eq!(next("0 3 * * 6-7").weekday(), chrono::Weekday::Sat);
        // day of month 15 OR Monday: the Monday (Jan 5) comes first
        let t = next("0 3 15 * 1");
        assert_eq!((t.day(), t.weekday()), (5, chrono::Weekday::Mon));
        assert!(CronSpec::parse("0 3 * * 8").is_err());
    }

    /// issue 22: the messages showed the crate's internal 6-field form
    /// and wrong bounds, `@hourly` had "1 fields", and a schedule that
    /// never fires was accepted.
    #[test]
    fn cron_errors_speak_the_users_expression() {
        let e = CronSpec::parse("61 * * * *").expect_err("out of range");
        assert_eq!(e, "cron \"61 * * * *\": minute 61 is out of range 0-59");
        let e = CronSpec::parse("0 24 * * *").expect_err("out of range");
        assert_eq!(e, "cron \"0 24 * * *\": hour 24 is out of range 0-23");
        let e = CronSpec::parse("0 0 0 * *").expect_err("out of range");
        assert!(e.contains("day of month 0 is out of range 1-31"), "{e}");
        let e = CronSpec::parse("0 0 * * 8").expect_err("out of range");
        assert!(e.contains("day of week 8 is out of range 0-7"), "{e}");
        let e = CronSpec::parse("*/0 * * * *").expect_err("zero step");
        assert!(e.contains("minute step \"0\""), "{e}");
        let e = CronSpec::parse("0 0 31 2 *").expect_err("never fires");
        assert_eq!(e, "cron \"0 0 31 2 *\" never fires: no date matches it");
        assert!(
            CronSpec::parse("59 23 31 12 7").is_ok(),
            "the upper bounds are in range"
        );
        for s in [
            "@hourly",
            "@daily",
            "@midnight",
            "@weekly",
            "@monthly",
            "@yearly",
            "@annually",
        ] {
            let spec = CronSpec::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(spec.as_str(), s, "kept as written");
        }
        let e = CronSpec::parse("@often").expect_err("unknown");
        assert!(e.contains("@hourly"), "{e}");
        let e = CronSpec::parse("* *").expect_err("fields");
        assert!(e.contains("has 2 fields") && e.contains("@hourly"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn seconds_cron_accepted() {
        let text = format!("[daemon]\npoll = \"*/2 * * * * *\"\n{MINIMAL}");
        assert!(Config::parse(&text).is_ok());
    }

    fn err(text: &str) -> ConfigError {
        Config::parse(text).expect_err("should fail")
    }

    #[test]
    fn errors_carry_line_and_key() {
        let e = err("[daemon]\nlisten = \"x\"\npoll = \"not a cron\"\n");
        assert_eq!((e.line, e.key.as_deref()), (3, Some("daemon.poll")), "{e}");
        assert!(e.message.contains("not a cron"), "{e}");

        let e = err("[daemon]\nbogus = 1\n");
        assert_eq!((e.line, e.key.as_deref()), (2, Some("daemon.bogus")), "{e}");
        assert!(e.message.contains("unknown field"), "{e}");

        let e = err(&MINIMAL.replace("1.0.0", "1.0"));
        assert_eq!(
            (e.line, e.key.as_deref()),
            (6, Some("image[0].version")),
            "{e}"
        );

        let e = err(&MINIMAL.replace("127.0.0.1:5000/app", "127.0.0.1:5000/App"));
        assert_eq!(e.key.as_deref(), Some("image[0].repository"), "{e}");
        assert!(e.message.contains("lowercase"), "{e}");

        let e = err(&format!("{MINIMAL}tags = [\"{{major}}\", \"bad tag\"]\n"));
        assert_eq!(e.key.as_deref(), Some("image[0].tags"), "{e}");

        let e = err(&MINIMAL.replace("context = \"/srv/app\"\n", ""));
        assert!(e.message.contains("context"), "{e}");
    }

    #[test]
    fn time_zone_checked() {
        let e = err(&format!("[daemon]\ntimezone = \"Mars/Olympus\"\n{MINIMAL}"));
        assert_eq!(
            (e.line, e.key.as_deref()),
            (2, Some("daemon.timezone")),
            "{e}"
        );
        assert!(Config::parse(&format!(
            "[daemon]\ntimezone = \"Europe/Berlin\"\n{MINIMAL}"
        ))
        .is_ok());
    }

    #[test]
    fn duplicate_repositories_refused() {
        let second = MINIMAL.replace("name = \"app\"", "name = \"other\"");
        let e = err(&format!("{MINIMAL}{second}"));
        assert_eq!(e.key.as_deref(), Some("image[1].repository"), "{e}");
        assert_eq!(e.line, 11, "{e}");
    }

    #[test]
    fn platforms_must_be_os_and_architecture() {
        let e = err(&format!(
            "{MINIMAL}platforms = [\"linux/amd64\", \"arm64\"]\n"
        ));
        assert_eq!(e.key.as_deref(), Some("image[0].platforms"), "{e}");
        assert!(e.message.contains("\"arm64\""), "{e}");
        assert!(err(&format!("{MINIMAL}platforms = [\"linux//v8\"]\n"))
            .message
            .contains("linux//v8"));
        assert!(Config::parse(&format!("{MINIMAL}platforms = [\"linux/arm64/v8\"]\n")).is_ok());
    }

    #[test]
    fn duplicate_names_refused() {
        let e = err(&format!("{MINIMAL}{MINIMAL}"));
        assert_eq!(
            (e.line, e.key.as_deref()),
            (9, Some("image[1].name")),
            "{e}"
        );
    }

    #[test]
    fn git_contexts_and_sources_parse() {
        let text = r#"
[sources."git.example.com"]
username = "x-access-token"
password_file = "git-token"
[sources."ssh.example.com"]
ssh_key_file = "/etc/rebased/deploy_key"
known_hosts_file = "/etc/rebased/known_hosts"

[[image]]
name = "web"
context = "https://git.example.com/acme/web.git#main:docker"
dockerfile = "Dockerfile"
repository = "127.0.0.1:5000/web"
version = "1.0.0"
source_bump = "patch"
"#;
        let mut c = Config::parse(text).expect("valid");
        c.resolve_paths(std::path::Path::new("/etc/rebased"));
        let g = c.image[0].context.git().expect("git");
        assert_eq!(g.host(), Some("git.example.com"));
        assert_eq!(c.image[0].dockerfile_path(), None);
        assert_eq!(c.image[0].source_bump, SourceBump::Patch);
        assert_eq!(
            c.sources["git.example.com"].password_file.as_deref(),
            Some(std::path::Path::new("/etc/rebased/git-token"))
        );
    }

    #[test]
    fn bad_sources_are_refused_with_line_and_key() {
        let e = err(&MINIMAL.replace("/srv/app", "https://bot:hunter2@git.example.com/a/b.git"));
        assert_eq!(
            (e.line, e.key.as_deref()),
            (4, Some("image[0].context")),
            "{e}"
        );
        assert!(e.message.contains("password_file"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");

        let e = err(&format!(
            "[sources.\"h\"]\nssh_key_file = \"/k\"\n{MINIMAL}"
        ));
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("known_hosts_file"), "{e}");

        let e = err(&format!(
            "{}watch_context = true\n",
            MINIMAL.replace("/srv/app", "https://h/a.git")
        ));
        assert_eq!(e.key.as_deref(), Some("image[0].watch_context"), "{e}");

        let e = err(&format!("{MINIMAL}source_bump = \"major\"\n"));
        assert_eq!(e.key.as_deref(), Some("image[0].source_bump"), "{e}");
    }

    #[test]
    fn engines_are_validated_with_their_line_and_key() {
        let ok = Config::parse(&format!(
            "[builder]\nbackend = \"remote\"\n\n[[builder.engine]]\nname = \"b1\"\nurl = \"tcp://10.0.0.5:2375\"\ninsecure = true\nmax_builds = 3\nplatforms = [\"linux/amd64\"]\n\n[[builder.engine]]\nname = \"b2\"\nurl = \"unix:///run/podman/podman.sock\"\n\n[[builder.engine]]\nname = \"b3\"\nurl = \"ssh://build@h.example:2222\"\n{MINIMAL}"
        ))
        .expect("valid");
        let e = &ok.builder.engines;
        assert_eq!(ok.builder.backend, Backend::Remote);
        assert_eq!((e[0].max_builds, e[1].max_builds), (3, 2));
        assert_eq!(
            e[0].address(),
            Ok(EngineAddress::Tcp {
                authority: "10.0.0.5:2375".to_owned(),
                tls: false
            })
        );
        assert_eq!(
            e[1].address(),
            Ok(EngineAddress::Unix(PathBuf::from(
                "/run/podman/podman.sock"
            )))
        );
        assert_eq!(
            e[2].address(),
            Ok(EngineAddress::Ssh {
                destination: "build@h.example".to_owned(),
                port: Some(2222)
            })
        );
        // Loopback may be plain; TLS needs all three files.
        let one = |body: &str| format!("[[builder.engine]]\nname = \"x\"\n{body}{MINIMAL}");
        assert!(Config::parse(&one("url = \"tcp://127.0.0.1:2375\"\n")).is_ok());
        let tls = Config::parse(&one(
            "url = \"tcp://h:2376\"\nca_file = \"ca\"\ncert_file = \"c\"\nkey_file = \"k\"\n",
        ))
        .expect("tls");
        assert!(matches!(
            tls.builder.engines[0].address(),
            Ok(EngineAddress::Tcp { tls: true, .. })
        ));

        let e = err(&format!(
            "[[builder.engine]]\nname = \"x\"\nurl = \"tcp://10.0.0.5:2375\"\n{MINIMAL}"
        ));
        assert_eq!(
            (e.line, e.key.as_deref()),
            (3, Some("builder.engine[0].url")),
            "{e}"
        );
        assert!(e.message.contains("insecure = true"), "{e}");
        let e = err(&one("url = \"tcp://h:2376\"\nca_file = \"ca\"\n"));
        assert!(e.message.contains("key_file"), "{e}");
        let e = err(&one("url = \"http://h:2376\"\n"));
        assert_eq!(e.key.as_deref(), Some("builder.engine[0].url"), "{e}");
        let e = err(&format!(
            "[[builder.engine]]\nname = \"a\"\nurl = \"unix:///s\"\n\n[[builder.engine]]\nname = \"a\"\nurl = \"unix:///t\"\nmax_builds = 0\n{MINIMAL}"
        ));
        assert_eq!(
            (e.line, e.key.as_deref()),
            (6, Some("builder.engine[1].name")),
            "{e}"
        );
        let e = err(&one("url = \"unix:///s\"\nmax_builds = 0\n"));
        assert_eq!(
            (e.line, e.key.as_deref()),
            (4, Some("builder.engine[0].max_builds")),
            "{e}"
        );
        let e = err(&one("url = \"unix:///s\"\nplatforms = [\"amd64\"]\n"));
        assert_eq!(e.key.as_deref(), Some("builder.engine[0].platforms"), "{e}");
        let e = err(&one("url = \"ssh://-oProxyCommand=x\"\n"));
        assert_eq!(e.key.as_deref(), Some("builder.engine[0].url"), "{e}");
        let e = err(&format!("[builder]\nbackend = \"remote\"\n{MINIMAL}"));
        assert_eq!(
            (e.line, e.key.as_deref()),
            (2, Some("builder.backend")),
            "{e}"
        );
    }

    #[test]
    fn tag_templates_validated() {
        assert!(TagTemplate::try_from("{major}.{minor}".to_owned()).is_ok());
        assert!(TagTemplate::try_from("stable".to_owned()).is_ok());
        assert!(TagTemplate::try_from("{foo}".to_owned()).is_err());
        assert!(TagTemplate::try_from("{major}.{minor}.{patch}".to_owned()).is_err());
    }
}
