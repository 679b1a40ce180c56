//! `ssh://` engines, as `docker -H ssh://` reaches them: each connection
//! is the ssh client running `docker system dial-stdio` on the host
//! (`ssh -- HOST docker system dial-stdio`), and HTTP/1.1 is spoken over
//! its stdin and stdout. bollard takes it as a custom transport; ssh's
//! own configuration (keys, known hosts, agent) applies unless the engine
//! names `ssh_key_file` and `known_hosts_file`, and `BatchMode=yes` keeps
//! it from ever asking for a password.

use std::process::Stdio;

use bollard::{BollardRequest, Docker};
use tokio::process::Command;

/// How ssh reaches one engine.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// `USER@HOST` or `HOST`.
    pub destination: String,
    /// The port, when not ssh's default.
    pub port: Option<u16>,
    /// `-i`, with `IdentitiesOnly=yes`.
    pub key: Option<std::path::PathBuf>,
    /// `UserKnownHostsFile`, with `StrictHostKeyChecking=yes`.
    pub known_hosts: Option<std::path::PathBuf>,
}

/// A client whose every request goes through a new `ssh` connection.
pub(super) fn connect(target: Target, timeout_secs: u64) -> Result<Docker, bollard::errors::Error> {
    Docker::connect_with_custom_transport(
        move |req: BollardRequest| {
            let target = target.clone();
            Box::pin(async move { request(&target, req).await })
                as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>
        },
        Some("http://docker"),
        timeout_secs,
        bollard::API_DEFAULT_VERSION,
    )
}

/// The ssh command line for `target`.
fn command(target: &Target) -> Command {
    let mut c = Command::new("ssh");
    c.args(["-o", "BatchMode=yes"]);
    if let Some(p) = target.port {
        c.arg("-p").arg(p.to_string());
    }
    if let Some(key) = &target.key {
        c.arg("-i").arg(key).args(["-o", "IdentitiesOnly=yes"]);
    }
    if let Some(known) = &target.known_hosts {
        let mut opt = std::ffi::OsString::from("UserKnownHostsFile=");
        opt.push(known);
        c.arg("-o")
            .arg(opt)
            .args(["-o", "StrictHostKeyChecking=yes"]);
    }
    c.arg("--")
        .arg(&target.destination)
        .args(["docker", "system", "dial-stdio"]);
    c
}

async fn request(
    target: &Target,
    mut req: BollardRequest,
) -> Result<http::Response<hyper::body::Incoming>, bollard::errors::Error> {
    let mut child = command(target)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(std::io::Error::other("ssh without pipes").into());
    };
    let io = hyper_util::rt::TokioIo::new(tokio::io::join(stdout, stdin));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
        // The connection is over: so is this ssh.
        let _ = child.kill().await;
    });
    // Origin-form over the pipe, as a Docker client sends it.
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    if let Ok(uri) = path.parse() {
        *req.uri_mut() = uri;
    }
    req.headers_mut()
        .insert(http::header::HOST, http::HeaderValue::from_static("docker"));
    Ok(sender.send_request(req).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_runs_dial_stdio_after_the_end_of_options() {
        let c = command(&Target {
            destination: "build@h.example".to_owned(),
            port: Some(2222),
            key: Some("/k".into()),
            known_hosts: Some("/kh".into()),
        });
        let args: Vec<String> = c
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "-o",
                "BatchMode=yes",
                "-p",
                "2222",
                "-i",
                "/k",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "UserKnownHostsFile=/kh",
                "-o",
                "StrictHostKeyChecking=yes",
                "--",
                "build@h.example",
                "docker",
                "system",
                "dial-stdio"
            ]
        );
    }
}
