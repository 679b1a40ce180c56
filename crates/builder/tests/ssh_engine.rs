//! An `ssh://` engine against a real `sshd` (Debian's openssh-server) on
//! a free loopback port: the ssh client runs `docker system dial-stdio`
//! there, as `docker -H ssh://` does. No Docker engine runs here, so
//! sshd's `ForceCommand` runs Podman's own `system dial-stdio` to a
//! Podman service on a unix socket in its place (podman stands in for
//! docker as in the engine tests). The deploy key and known hosts are the
//! engine's `ssh_key_file` and `known_hosts_file`.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rebased_builder::remote::connect;
use rebased_builder::remote::pool::{EngineState, Pool};
use rebased_core::config::EngineConfig;

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn keygen(path: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen");
    std::fs::read_to_string(path.with_extension("pub")).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn user() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn engine(url: String, key: &Path, known: &Path) -> EngineConfig {
    EngineConfig {
        name: "over-ssh".to_owned(),
        url,
        insecure: false,
        ca_file: None,
        cert_file: None,
        key_file: None,
        ssh_key_file: Some(key.to_owned()),
        known_hosts_file: Some(known.to_owned()),
        max_builds: 1,
        platforms: Vec::new(),
    }
}

#[tokio::test]
async fn an_ssh_engine_answers_through_dial_stdio_and_a_wrong_host_key_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let sock = dir.join("podman.sock");
    let _service = Killed(
        Command::new("podman")
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--runroot")
            .arg(dir.join("runroot"))
            .args(["--storage-driver", "vfs", "system", "service", "--time=0"])
            .arg(format!("unix://{}", sock.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("podman"),
    );
    let key = dir.join("id");
    let authorized = keygen(&key);
    let host_key = dir.join("host_key");
    let host_pub = keygen(&host_key);
    std::fs::write(dir.join("authorized_keys"), authorized).unwrap();
    let port = free_port();
    std::fs::write(
        dir.join("sshd_config"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nStrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\nForceCommand /usr/bin/podman --url unix://{} system dial-stdio\n",
            host_key.display(),
            dir.join("authorized_keys").display(),
            dir.join("sshd.pid").display(),
            sock.display()
        ),
    )
    .unwrap();
    let _ = std::fs::create_dir_all("/run/sshd");
    let _sshd = Killed(
        Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sshd runs (apt-get install openssh-server)"),
    );
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && sock.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let known = dir.join("known_hosts");
    std::fs::write(&known, format!("[127.0.0.1]:{port} {host_pub}")).unwrap();
    let url = format!("ssh://{}@127.0.0.1:{port}", user());

    let docker = connect(&engine(url.clone(), &key, &known), Duration::from_secs(20)).unwrap();
    assert_eq!(docker.ping().await.expect("ping over ssh"), "OK");
    let version = docker.version().await.expect("version over ssh");
    assert!(version.os.as_deref() == Some("linux"), "{version:?}");

    // The pool checks it over ssh too: up, with the platform it reports.
    let pool = Arc::new(Pool::default());
    pool.configure(
        &[engine(url.clone(), &key, &known)],
        Duration::from_secs(20),
    );
    pool.check_all().await;
    let v = &pool.views()[0];
    assert_eq!(v.state, EngineState::Up, "{v:?}");
    assert_eq!(v.platforms.len(), 1, "{v:?}");

    // Another host key in known_hosts: ssh refuses, the engine is down.
    let other = keygen(&dir.join("other_host_key"));
    std::fs::write(&known, format!("[127.0.0.1]:{port} {other}")).unwrap();
    let pool = Arc::new(Pool::default());
    pool.configure(&[engine(url, &key, &known)], Duration::from_secs(20));
    pool.check_all().await;
    let v = &pool.views()[0];
    assert_eq!(v.state, EngineState::Down, "{v:?}");
}
