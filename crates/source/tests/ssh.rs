//! `ssh://` sources against a real `sshd` (Debian's openssh-server) on a
//! free 127.0.0.1 port, with its own host key, config and authorized keys:
//! the deploy key and the configured known hosts let git in; a known_hosts
//! file holding another host key is refused (no trust on first use).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rebased_core::config::SourceConfig;
use rebased_core::source::{Context, GitContext};
use rebased_source::Sources;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

mod common;
use common::git;

fn keygen(path: &Path) -> String {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(path));
    std::fs::read_to_string(path.with_extension("pub")).expect("public key")
}

struct Sshd(Child);
impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// sshd on a free port, letting in `authorized` (a public key) as the
/// current user; the host's public key.
fn sshd(dir: &Path, authorized: &str) -> (Sshd, u16, String) {
    let host_key = dir.join("host_key");
    let host_pub = keygen(&host_key);
    let keys = dir.join("authorized_keys");
    std::fs::write(&keys, authorized).expect("authorized_keys");
    let port = free_port();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nStrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n",
            host_key.display(),
            keys.display(),
            dir.join("sshd.pid").display()
        ),
    )
    .expect("sshd_config");
    // sshd wants its privilege separation directory.
    let _ = std::fs::create_dir_all("/run/sshd");
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sshd runs (apt-get install openssh-server)");
    let d = Sshd(child);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (d, port, host_pub);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("sshd did not listen on {port}");
}

fn ctx(s: &str) -> GitContext {
    match Context::parse(s).expect(s) {
        Context::Git(g) => g,
        Context::Local(_) => panic!("{s} is not git"),
    }
}

fn user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| run(Command::new("id").arg("-un")))
}

#[tokio::test]
async fn a_deploy_key_and_known_hosts_reach_the_repository_and_a_wrong_host_key_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    // The repository.
    let bare: PathBuf = dir.join("repo.git");
    git(
        dir,
        &["init", "--bare", "--quiet", "-b", "main", "repo.git"],
    );
    let work = dir.join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    git(&work, &["init", "--quiet", "-b", "main"]);
    std::fs::write(work.join("Dockerfile"), "FROM scratch\n").expect("write");
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "--quiet", "-m", "one"]);
    git(&work, &["push", "--quiet", &bare.to_string_lossy(), "main"]);
    let commit = git(&work, &["rev-parse", "HEAD"]);

    let deploy = dir.join("deploy_key");
    let deploy_pub = keygen(&deploy);
    let (_sshd, port, host_pub) = sshd(dir, &deploy_pub);
    let known = dir.join("known_hosts");
    std::fs::write(&known, format!("[127.0.0.1]:{port} {host_pub}")).expect("known_hosts");

    let state = tempfile::tempdir().expect("tempdir");
    let sources = Sources::new(state.path(), Duration::from_secs(30));
    let c = ctx(&format!(
        "ssh://{}@127.0.0.1:{port}{}#main",
        user(),
        bare.display()
    ));
    let creds = SourceConfig {
        ssh_key_file: Some(deploy.clone()),
        known_hosts_file: Some(known.clone()),
        ..SourceConfig::default()
    };
    assert_eq!(
        sources.resolve(&c, Some(&creds)).await.expect("resolve"),
        commit
    );
    let out = sources
        .checkout(&c, Some(&creds), &commit)
        .await
        .expect("checkout");
    assert!(out.dir.join("Dockerfile").exists());

    // Another host key in known_hosts: refused, never trusted on first use.
    let other = keygen(&dir.join("other_host_key"));
    let wrong = dir.join("wrong_known_hosts");
    std::fs::write(&wrong, format!("[127.0.0.1]:{port} {other}")).expect("write");
    let bad = SourceConfig {
        known_hosts_file: Some(wrong),
        ..creds.clone()
    };
    let e = sources
        .resolve(&c, Some(&bad))
        .await
        .expect_err("wrong host key");
    assert_eq!(e.kind(), "auth", "{e}");
    // An empty known_hosts: refused too.
    let empty = dir.join("empty_known_hosts");
    std::fs::write(&empty, "").expect("write");
    let none = SourceConfig {
        known_hosts_file: Some(empty),
        ..creds.clone()
    };
    let e = sources
        .resolve(&c, Some(&none))
        .await
        .expect_err("unknown host");
    assert_eq!(e.kind(), "auth", "{e}");
    // A key sshd does not know: refused.
    let stranger = dir.join("stranger_key");
    keygen(&stranger);
    let e = sources
        .resolve(
            &c,
            Some(&SourceConfig {
                ssh_key_file: Some(stranger),
                ..creds
            }),
        )
        .await
        .expect_err("unknown key");
    assert_eq!(e.kind(), "auth", "{e}");
}
