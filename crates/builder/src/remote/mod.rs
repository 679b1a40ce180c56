//! The remote backend: a build on a Docker Engine API (Docker Engine, or
//! Podman's Docker-compatible service) through `bollard`.
//!
//! A build is the context as a tar (after `.dockerignore`, see
//! `native::context`) with the pinned Dockerfile added to it, streamed to
//! `/build` with the build args, the provenance as labels and the
//! platform, and the credentials of the bases' registries in
//! `X-Registry-Config`; then `/images/{name}/push` of the engine's own tag
//! (`REPO:rebased-build-ENGINE`, see [`vehicle_tag`]) with the target's
//! credentials in `X-Registry-Auth`, the digest read from the push's
//! stream and checked against that tag's `HEAD`. rebased then writes the
//! same manifest bytes under the version tag itself, so an engine never
//! writes a version: one lost mid-push that finishes late moves only its
//! own tag. For a registry marked `insecure` the build and push requests
//! carry `tlsVerify=false` (Podman's compatible API reads it; Docker
//! Engine ignores it and keeps its own `insecure-registries`).
//!
//! The classic `/build` has no way to carry build secrets (Docker sends
//! them through a BuildKit session): a build with secrets is refused.
//!
//! A failure is told apart from a lost engine ([`BuildError::EngineLost`]):
//! the engine answered with an error (the Dockerfile failed, the push was
//! refused), or it stopped answering (connection refused or dropped,
//! `builder.timeout` passed, the pool saw it go down). Only the first
//! is the image's failure; the daemon runs a lost build again on another
//! engine the pool ([`pool`]) picks.

pub mod pool;
mod ssh;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, PushImageOptionsBuilder, RemoveImageOptionsBuilder,
};
use bollard::Docker;
use bytes::Bytes;
use futures_util::StreamExt;
use rebased_core::config::{EngineAddress, EngineConfig};
use rebased_core::{Digest, ImageRef};
use rebased_registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::native::context::Context;
use crate::{BuildError, BuildOutput, BuildRequest, Target};

/// The pinned Dockerfile's name inside the context tar.
pub const DOCKERFILE: &str = ".rebased.Dockerfile";

/// The client of one engine, made from its config.
pub fn connect(cfg: &EngineConfig, timeout: Duration) -> Result<Docker, String> {
    let secs = timeout.as_secs().max(1);
    let version = bollard::API_DEFAULT_VERSION;
    let address = cfg.address()?;
    let docker = match address {
        EngineAddress::Tcp {
            authority,
            tls: false,
        } => Docker::connect_with_http(&format!("tcp://{authority}"), secs, version),
        EngineAddress::Tcp {
            authority,
            tls: true,
        } => {
            let (Some(ca), Some(cert), Some(key)) = (&cfg.ca_file, &cfg.cert_file, &cfg.key_file)
            else {
                return Err("TLS needs ca_file, cert_file and key_file".to_owned());
            };
            Docker::connect_with_ssl(&format!("tcp://{authority}"), key, cert, ca, secs, version)
        }
        EngineAddress::Unix(path) => {
            Docker::connect_with_unix(&path.display().to_string(), secs, version)
        }
        EngineAddress::Ssh { destination, port } => {
            let target = ssh::Target {
                destination,
                port,
                key: cfg.ssh_key_file.clone(),
                known_hosts: cfg.known_hosts_file.clone(),
            };
            return ssh::connect(target, secs).map_err(|e| format!("{}: {e}", cfg.url));
        }
    };
    docker.map_err(|e| format!("{}: {e}", cfg.url))
}

/// One engine a build runs on: its name and client.
#[derive(Debug, Clone)]
pub struct Remote {
    /// The engine's name (`[[builder.engine]] name`).
    pub name: String,
    /// Its client.
    pub docker: Docker,
    /// Time limit for the whole build and push.
    pub timeout: Duration,
}

/// Whether a bollard error means the engine is gone rather than that it
/// answered with an error.
fn is_lost(e: &bollard::errors::Error) -> bool {
    use bollard::errors::Error as E;
    !matches!(
        e,
        E::DockerResponseServerError { .. }
            | E::DockerStreamError { .. }
            | E::JsonDataError { .. }
            | E::JsonSerdeError { .. }
    )
}

impl Remote {
    /// Builds `req` on this engine and pushes it to `req.target`; returns
    /// the pushed digest (checked against `registry`). `lost` is fired by
    /// the pool when the engine stops answering its health checks.
    pub async fn build(
        &self,
        req: &BuildRequest,
        registry: &Registry,
        cancel: &CancellationToken,
        lost: &CancellationToken,
    ) -> Result<BuildOutput, BuildError> {
        let Target::Registry(target) = &req.target else {
            return Err(BuildError::Unsupported(
                "the remote backend pushes to registries only; use native, buildah or podman for an oci: repository".to_owned(),
            ));
        };
        if !req.secrets.is_empty() {
            let ids: Vec<&str> = req.secrets.keys().map(String::as_str).collect();
            return Err(BuildError::Unsupported(format!(
                "build secrets ({}) cannot be given to a remote engine: the Docker Engine API's /build carries them only through a BuildKit session, which rebased does not open; build this image with buildah or podman",
                ids.join(", ")
            )));
        }
        if req.platforms.len() > 1 {
            return Err(BuildError::Unsupported(
                "the remote backend builds one platform per image; build a multi-platform image with buildah or podman".to_owned(),
            ));
        }
        let deadline = Instant::now() + self.timeout;
        let mut log = format!("# engine {}\n", self.name);
        let tar = req.workdir.join("context.tar");
        write_context(req, &tar).await?;
        let insecure = req
            .insecure_registries
            .iter()
            .any(|h| h == target.registry());
        let docker = if insecure {
            self.docker.clone().with_request_modifier(skip_tls_verify)
        } else {
            self.docker.clone()
        };
        let creds = credentials(req.auth_json.as_deref());
        info!(image = %req.image, job = %req.job, target = %target, engine = %self.name, "remote build");
        let step = async {
            self.run_build(&docker, req, target, &tar, &creds, &mut log)
                .await?;
            info!(image = %req.image, job = %req.job, target = %target, engine = %self.name, "remote push");
            self.run_push(&docker, target, &creds, &mut log).await
        };
        let outcome = tokio::select! {
            r = step => r,
            _ = cancel.cancelled() => Err(Step::Cancelled),
            _ = lost.cancelled() => Err(Step::Lost("it stopped answering its health checks".to_owned())),
            _ = tokio::time::sleep(deadline.saturating_duration_since(Instant::now())) => {
                Err(Step::Lost(format!("no answer within builder.timeout ({} s)", self.timeout.as_secs())))
            }
        };
        let _ = tokio::fs::remove_file(&tar).await;
        // The local image is only a vehicle for the push (best effort:
        // a lost engine keeps it).
        if !matches!(outcome, Err(Step::Lost(_))) {
            let rm = RemoveImageOptionsBuilder::new().force(true).build();
            let removed = tokio::time::timeout(
                Duration::from_secs(10),
                self.docker
                    .remove_image(&self.vehicle(target).to_string(), Some(rm), None),
            )
            .await;
            debug!(engine = %self.name, ok = matches!(removed, Ok(Ok(_))), "remove the built image");
        }
        let pushed = match outcome {
            Ok(d) => d,
            Err(Step::Cancelled) => {
                return Err(BuildError::Cancelled {
                    step: "remote build",
                    log,
                })
            }
            Err(Step::Lost(reason)) => {
                log.push_str(&format!("# engine {} lost: {reason}\n", self.name));
                return Err(BuildError::EngineLost {
                    engine: self.name.clone(),
                    reason,
                    log,
                });
            }
            Err(Step::Failed(step, reason)) => {
                log.push_str(&format!(
                    "# {step} failed on engine {}: {reason}\n",
                    self.name
                ));
                return Err(BuildError::Native {
                    step: format!("{step} on engine {}", self.name),
                    reason,
                    log,
                });
            }
        };
        // The engine pushed its own tag; the version tag is written by
        // rebased, from what the engine pushed, checked against the
        // registry: a lost engine that pushes late only moves its tag.
        let digest = self
            .tag_version(registry, target, pushed, &mut log)
            .await
            .map_err(|reason| BuildError::Native {
                step: "push".to_owned(),
                reason,
                log: log.clone(),
            })?;
        log.push_str(&format!(
            "# pushed {target} {digest} from engine {}\n",
            self.name
        ));
        Ok(BuildOutput {
            digest: Some(digest),
            log,
        })
    }

    /// The engine's own tag in `target`'s repository: what it pushes.
    fn vehicle(&self, target: &ImageRef) -> ImageRef {
        target.with_tag(&vehicle_tag(&self.name))
    }

    /// Reads back what the engine pushed (its tag, `HEAD`, and the
    /// manifest by the digest its stream named) and writes those bytes
    /// under the version tag; returns the digest.
    async fn tag_version(
        &self,
        registry: &Registry,
        target: &ImageRef,
        pushed: Option<Digest>,
        log: &mut String,
    ) -> Result<Digest, String> {
        let vehicle = self.vehicle(target);
        let at_registry = registry
            .lookup(&vehicle)
            .await
            .map_err(|e| format!("{vehicle} after the push of engine {}: {e}", self.name))?;
        let digest = match (pushed, at_registry) {
            (Some(p), Some(r)) if p == r => p,
            (None, Some(r)) => r,
            (Some(p), Some(r)) => {
                return Err(format!(
                    "engine {} pushed {p} but {vehicle} names {r}",
                    self.name
                ))
            }
            (_, None) => {
                return Err(format!(
                    "{vehicle} is missing after the push of engine {}",
                    self.name
                ))
            }
        };
        let manifest = registry
            .manifest(&target.pinned(&digest))
            .await
            .map_err(|e| format!("{target}@{digest}: {e}"))?;
        let written = registry
            .push_manifest(target, manifest.bytes, &manifest.media_type)
            .await
            .map_err(|e| format!("tagging {target}: {e}"))?;
        if written != digest {
            return Err(format!("{target} was written as {written}, not {digest}"));
        }
        log.push_str(&format!("# {target}: {digest} (pushed as {vehicle})\n"));
        Ok(digest)
    }

    async fn run_build(
        &self,
        docker: &Docker,
        req: &BuildRequest,
        target: &ImageRef,
        tar: &std::path::Path,
        creds: &HashMap<String, DockerCredentials>,
        log: &mut String,
    ) -> Result<(), Step> {
        let labels: HashMap<&str, &str> = req
            .annotations
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let args: HashMap<&str, &str> = req
            .build_args
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let tag = self.vehicle(target).to_string();
        let mut options = BuildImageOptionsBuilder::new()
            .dockerfile(DOCKERFILE)
            .t(&tag)
            .rm(true)
            .forcerm(true)
            .labels(&labels)
            .buildargs(&args);
        if let [p] = req.platforms.as_slice() {
            options = options.platform(p);
        }
        let file = tokio::fs::File::open(tar)
            .await
            .map_err(|e| Step::Failed("context", format!("{}: {e}", tar.display())))?;
        let body = bollard::body_try_stream(file_stream(file));
        let mut stream = docker.build_image(
            options.build(),
            (!creds.is_empty()).then(|| creds.clone()),
            Some(body),
        );
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(s) = info.stream.as_deref().or(info.status.as_deref()) {
                        crate::engine::append(log, s);
                        if !s.ends_with('\n') {
                            log.push('\n');
                        }
                    }
                }
                Err(e) if is_lost(&e) => return Err(Step::Lost(format!("build: {e}"))),
                Err(e) => return Err(Step::Failed("build", e.to_string())),
            }
        }
        Ok(())
    }

    async fn run_push(
        &self,
        docker: &Docker,
        target: &ImageRef,
        creds: &HashMap<String, DockerCredentials>,
        log: &mut String,
    ) -> Result<Option<Digest>, Step> {
        let tag = vehicle_tag(&self.name);
        let options = PushImageOptionsBuilder::new().tag(&tag).build();
        let auth = creds.get(target.registry()).cloned();
        let mut stream = docker.push_image(&target.name(), Some(options), auth);
        let mut digest = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(s) = info.status.as_deref() {
                        crate::engine::append(log, s);
                        log.push('\n');
                        digest = crate::engine::pushed_digest(s).or(digest);
                    }
                }
                Err(e) if is_lost(&e) => return Err(Step::Lost(format!("push: {e}"))),
                Err(e) => return Err(Step::Failed("push", e.to_string())),
            }
        }
        Ok(digest)
    }
}

/// The tag engine `name` pushes a build under (`rebased-build-NAME`),
/// in the version's repository; moved by its next build there.
pub fn vehicle_tag(name: &str) -> String {
    let mut tag = format!("rebased-build-{name}");
    tag.truncate(128);
    tag
}

/// Why a remote step did not finish.
enum Step {
    Cancelled,
    Lost(String),
    Failed(&'static str, String),
}

/// Adds `tlsVerify=false` to a request's query (a registry marked
/// insecure; Podman's compatible API reads it).
fn skip_tls_verify(mut req: bollard::BollardRequest) -> bollard::BollardRequest {
    let uri = req.uri().clone();
    let path = uri.path().to_owned();
    if !(path.ends_with("/push") || path.ends_with("/build")) {
        return req;
    }
    let query = match uri.query() {
        Some(q) if !q.is_empty() => format!("{q}&tlsVerify=false"),
        _ => "tlsVerify=false".to_owned(),
    };
    let mut parts = uri.into_parts();
    if let Ok(pq) = format!("{path}?{query}").parse() {
        parts.path_and_query = Some(pq);
        if let Ok(u) = http::Uri::from_parts(parts) {
            *req.uri_mut() = u;
        }
    }
    req
}

/// The registry credentials of `auth_json` (`{"auths": {HOST: {"auth":
/// base64(user:password)} | {"identitytoken": ...}}}`), by host.
fn credentials(auth_json: Option<&str>) -> HashMap<String, DockerCredentials> {
    let mut out = HashMap::new();
    let Some(v) = auth_json.and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok()) else {
        return out;
    };
    let Some(auths) = v.get("auths").and_then(|a| a.as_object()) else {
        return out;
    };
    for (host, entry) in auths {
        let mut c = DockerCredentials {
            serveraddress: Some(host.clone()),
            ..Default::default()
        };
        if let Some(t) = entry.get("identitytoken").and_then(|t| t.as_str()) {
            c.identitytoken = Some(t.to_owned());
        } else if let Some(basic) = entry
            .get("auth")
            .and_then(|a| a.as_str())
            .and_then(|a| base64::engine::general_purpose::STANDARD.decode(a).ok())
            .and_then(|b| String::from_utf8(b).ok())
        {
            if let Some((u, p)) = basic.split_once(':') {
                c.username = Some(u.to_owned());
                c.password = Some(p.to_owned());
            }
        } else {
            continue;
        }
        out.insert(host.clone(), c);
    }
    out
}

/// Writes the context tar with the pinned Dockerfile to `path`.
async fn write_context(req: &BuildRequest, path: &std::path::Path) -> Result<(), BuildError> {
    let workdir = req.workdir.clone();
    let context = req.context.clone();
    let dockerfile = req.dockerfile.clone();
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&workdir).map_err(|source| BuildError::Workspace {
            path: workdir.clone(),
            source,
        })?;
        let ctx = Context::open(&context).map_err(|e| BuildError::Native {
            step: "context".to_owned(),
            reason: e.to_string(),
            log: String::new(),
        })?;
        let file = std::fs::File::create(&path).map_err(|source| BuildError::Workspace {
            path: path.clone(),
            source,
        })?;
        ctx.write_tar(
            std::io::BufWriter::new(file),
            &[(DOCKERFILE, dockerfile.as_bytes())],
        )
        .map_err(|e| BuildError::Native {
            step: "context".to_owned(),
            reason: e.to_string(),
            log: String::new(),
        })
    })
    .await
    .map_err(|e| BuildError::Native {
        step: "context".to_owned(),
        reason: e.to_string(),
        log: String::new(),
    })?
}

/// A file as a stream of chunks.
fn file_stream(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::unfold(Some(file), |file| async move {
        use tokio::io::AsyncReadExt;
        let mut file = file?;
        let mut buf = vec![0u8; 256 << 10];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// The platform an engine reports (`os/arch` of `/version`).
pub fn reported_platform(v: &bollard::models::SystemVersion) -> Option<String> {
    let os = v.os.as_deref()?;
    let arch = v.arch.as_deref()?;
    Some(format!("{os}/{arch}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn credentials_come_from_the_auth_file() {
        let basic = base64::engine::general_purpose::STANDARD.encode("u:p:w");
        let json = format!(
            r#"{{"auths": {{"r.example": {{"auth": "{basic}"}}, "t.example": {{"identitytoken": "tok"}}, "x": {{}}}}}}"#
        );
        let c = credentials(Some(&json));
        assert_eq!(c.len(), 2);
        assert_eq!(c["r.example"].username.as_deref(), Some("u"));
        assert_eq!(c["r.example"].password.as_deref(), Some("p:w"));
        assert_eq!(c["t.example"].identitytoken.as_deref(), Some("tok"));
        assert!(credentials(Some("not json")).is_empty());
        assert!(credentials(None).is_empty());
    }

    #[test]
    fn insecure_pushes_and_builds_ask_to_skip_tls_verification() {
        let req = |uri: &str| {
            http::Request::builder()
                .uri(uri)
                .body(bollard::body_full(Bytes::new()))
                .expect("request")
        };
        let r = skip_tls_verify(req("http://h/v1.47/images/r%2Fapp/push?tag=1.0.0"));
        assert_eq!(r.uri().query(), Some("tag=1.0.0&tlsVerify=false"));
        let r = skip_tls_verify(req("http://h/v1.47/build"));
        assert_eq!(r.uri().query(), Some("tlsVerify=false"));
        let r = skip_tls_verify(req("http://h/v1.47/_ping"));
        assert_eq!(r.uri().query(), None);
    }

    #[test]
    fn errors_tell_a_lost_engine_from_a_failed_build() {
        use bollard::errors::Error as E;
        assert!(!is_lost(&E::DockerStreamError {
            error: "RUN false".to_owned()
        }));
        assert!(!is_lost(&E::DockerResponseServerError {
            status_code: 500,
            message: "no".to_owned()
        }));
        assert!(is_lost(&E::RequestTimeoutError));
        assert!(is_lost(&E::IOError {
            err: std::io::Error::from(std::io::ErrorKind::ConnectionReset)
        }));
    }

    #[tokio::test]
    async fn secrets_and_layouts_are_refused_before_anything_is_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let docker =
            Docker::connect_with_http("tcp://127.0.0.1:9", 1, bollard::API_DEFAULT_VERSION)
                .expect("client");
        let remote = Remote {
            name: "b1".to_owned(),
            docker,
            timeout: Duration::from_secs(5),
        };
        let mut req = crate::engine::tests_request(&["linux/amd64"], dir.path());
        req.secrets = BTreeMap::from([("npm".to_owned(), dir.path().join("s"))]);
        let registry = Registry::new(&BTreeMap::new());
        let e = remote
            .build(
                &req,
                &registry,
                &CancellationToken::new(),
                &CancellationToken::new(),
            )
            .await
            .expect_err("refused");
        assert!(e.to_string().contains("build secrets (npm)"), "{e}");
        req.secrets.clear();
        req.target = Target::Layout {
            path: dir.path().join("l"),
            tag: "1".to_owned(),
        };
        let e = remote
            .build(
                &req,
                &registry,
                &CancellationToken::new(),
                &CancellationToken::new(),
            )
            .await
            .expect_err("refused");
        assert!(e.to_string().contains("registries only"), "{e}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_lost_engine() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("ctx")).expect("mkdir");
        let docker =
            Docker::connect_with_http("tcp://127.0.0.1:9", 2, bollard::API_DEFAULT_VERSION)
                .expect("client");
        let remote = Remote {
            name: "b1".to_owned(),
            docker,
            timeout: Duration::from_secs(5),
        };
        let req = crate::engine::tests_request(&["linux/amd64"], dir.path());
        let registry = Registry::new(&BTreeMap::new());
        let e = remote
            .build(
                &req,
                &registry,
                &CancellationToken::new(),
                &CancellationToken::new(),
            )
            .await
            .expect_err("lost");
        assert!(
            matches!(e, BuildError::EngineLost { ref engine, .. } if engine == "b1"),
            "{e}"
        );
        assert!(e.log().contains("# engine b1"), "{}", e.log());
    }

    #[tokio::test]
    async fn an_engine_that_hangs_past_the_timeout_is_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("ctx")).expect("mkdir");
        // Takes connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                open.push(s);
            }
        });
        let docker =
            Docker::connect_with_http(&format!("tcp://{addr}"), 60, bollard::API_DEFAULT_VERSION)
                .expect("client");
        let remote = Remote {
            name: "stuck".to_owned(),
            docker,
            timeout: Duration::from_secs(2),
        };
        let req = crate::engine::tests_request(&["linux/amd64"], dir.path());
        let registry = Registry::new(&BTreeMap::new());
        let started = Instant::now();
        let e = remote
            .build(
                &req,
                &registry,
                &CancellationToken::new(),
                &CancellationToken::new(),
            )
            .await
            .expect_err("lost");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            matches!(e, BuildError::EngineLost { ref reason, .. } if reason.contains("builder.timeout")),
            "{e}"
        );
        // Down in the pool's eyes: the lease's token ends it at once.
        let lost = CancellationToken::new();
        lost.cancel();
        let remote = Remote {
            timeout: Duration::from_secs(60),
            ..remote
        };
        let e = remote
            .build(&req, &registry, &CancellationToken::new(), &lost)
            .await
            .expect_err("lost");
        assert!(
            matches!(e, BuildError::EngineLost { ref reason, .. } if reason.contains("health checks")),
            "{e}"
        );
        held.abort();
    }
}
