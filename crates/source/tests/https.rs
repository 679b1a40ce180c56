//! `http(s)://` sources with credentials: git's smart HTTP (`git
//! http-backend` behind basic auth, `tests/git-http.py`, plain http on
//! 127.0.0.1) reached with `[sources."HOST"]` `username` and
//! `password_file`, given to git through `GIT_ASKPASS`; a wrong password
//! is an authentication error that does not repeat it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rebased_core::config::SourceConfig;
use rebased_core::source::{Context, GitContext};
use rebased_source::Sources;

mod common;
use common::git;

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ctx(s: &str) -> GitContext {
    match Context::parse(s).expect(s) {
        Context::Git(g) => g,
        Context::Local(_) => panic!("{s} is not git"),
    }
}

#[tokio::test]
async fn a_password_file_logs_in_through_askpass_and_a_wrong_one_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    git(dir, &["init", "--bare", "--quiet", "-b", "main", "web.git"]);
    let work = dir.join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    git(&work, &["init", "--quiet", "-b", "main"]);
    std::fs::write(work.join("Dockerfile"), "FROM scratch\n").expect("write");
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "--quiet", "-m", "one"]);
    git(
        &work,
        &[
            "push",
            "--quiet",
            &dir.join("web.git").to_string_lossy(),
            "main",
        ],
    );
    let commit = git(&work, &["rev-parse", "HEAD"]);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/git-http.py");
    let server = Server(
        Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(dir)
            .args(["bot", "s3cret-t0ken"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs"),
    );
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let state = tempfile::tempdir().expect("tempdir");
    let sources = Sources::new(state.path(), Duration::from_secs(30));
    let c = ctx(&format!("http://127.0.0.1:{port}/web.git#main"));
    let pw = dir.join("token");
    std::fs::write(&pw, "s3cret-t0ken\n").expect("write");
    let creds = SourceConfig {
        username: Some("bot".to_owned()),
        password_file: Some(pw),
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

    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "not-the-t0ken\n").expect("write");
    let bad = SourceConfig {
        password_file: Some(wrong),
        ..creds
    };
    let e = sources
        .resolve(&c, Some(&bad))
        .await
        .expect_err("wrong password");
    assert_eq!(e.kind(), "auth", "{e}");
    assert!(!e.to_string().contains("not-the-t0ken"), "{e}");
    // Without credentials: no prompt (none could be answered), refused.
    let e = sources.resolve(&c, None).await.expect_err("anonymous");
    assert_eq!(e.kind(), "auth", "{e}");
    drop(server);
}
