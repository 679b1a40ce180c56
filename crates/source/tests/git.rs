//! Sources against real git: a bare repository reached through `file://`
//! and served by `git daemon` on a free 127.0.0.1 port; commits are made
//! and pushed with `git` here.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rebased_core::source::{Context, GitContext};
use rebased_source::{SourceError, Sources};

mod common;
use common::git;

/// A bare repository and a clone to commit in.
struct Repo {
    _tmp: tempfile::TempDir,
    bare: PathBuf,
    work: PathBuf,
}

impl Repo {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let bare = tmp.path().join("repo.git");
        let work = tmp.path().join("work");
        std::fs::create_dir_all(&work).expect("mkdir");
        git(
            tmp.path(),
            &["init", "--bare", "--quiet", "-b", "main", "repo.git"],
        );
        git(&work, &["init", "--quiet", "-b", "main"]);
        git(&work, &["remote", "add", "origin", &bare.to_string_lossy()]);
        Self {
            _tmp: tmp,
            bare,
            work,
        }
    }

    /// Writes `files`, commits and pushes `main`; the commit id.
    fn commit(&self, files: &[(&str, &str)]) -> String {
        for (name, body) in files {
            let p = self.work.join(name);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, body).expect("write");
        }
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "--quiet", "-m", "change"]);
        git(
            &self.work,
            &["push", "--quiet", "origin", "main", "--tags", "--force"],
        );
        git(&self.work, &["rev-parse", "HEAD"])
    }

    fn file_url(&self) -> String {
        format!("file://{}", self.bare.display())
    }
}

fn ctx(s: &str) -> GitContext {
    match Context::parse(s).expect(s) {
        Context::Git(g) => g,
        Context::Local(_) => panic!("{s} is not git"),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

struct Daemon(Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `git daemon` serving `base` on a free port.
fn daemon(base: &Path) -> (Daemon, u16) {
    let port = free_port();
    let child = Command::new("git")
        .args([
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--listen=127.0.0.1",
            &format!("--port={port}"),
            &format!("--base-path={}", base.display()),
        ])
        .arg(base)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("git daemon runs");
    let d = Daemon(child);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (d, port);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("git daemon did not listen on {port}");
}

#[tokio::test]
async fn a_pushed_commit_is_resolved_and_checked_out_by_id_over_file_and_git_daemon() {
    let repo = Repo::new();
    let first = repo.commit(&[("docker/Dockerfile", "FROM scratch\n"), ("docker/a", "one")]);
    let (_d, port) = daemon(repo.bare.parent().expect("parent"));
    let state = tempfile::tempdir().expect("tempdir");
    let sources = Sources::new(state.path().join("sources"), Duration::from_secs(20));
    for url in [
        format!("{}#main:docker", repo.file_url()),
        format!("git://127.0.0.1:{port}/repo.git#main:docker"),
    ] {
        let c = ctx(&url);
        assert_eq!(
            sources.resolve(&c, None).await.expect("resolve"),
            first,
            "{url}"
        );
        let out = sources.checkout(&c, None, &first).await.expect("checkout");
        assert_eq!(
            std::fs::read_to_string(out.dir.join("a")).expect("a"),
            "one"
        );
        assert!(out.dir.join("Dockerfile").exists());
    }

    // A push: the ref moves; the old commit's tree stays what it was.
    let second = repo.commit(&[("docker/a", "two")]);
    let c = ctx(&format!("git://127.0.0.1:{port}/repo.git#main:docker"));
    assert_eq!(sources.resolve(&c, None).await.expect("resolve"), second);
    let old = sources.checkout(&c, None, &first).await.expect("old");
    let new = sources.checkout(&c, None, &second).await.expect("new");
    assert_eq!(
        std::fs::read_to_string(old.dir.join("a")).expect("a"),
        "one"
    );
    assert_eq!(
        std::fs::read_to_string(new.dir.join("a")).expect("a"),
        "two"
    );

    // HEAD, a tag (annotated: the tagged commit), a full commit id.
    assert_eq!(
        sources
            .resolve(&ctx(&repo.file_url()), None)
            .await
            .expect("HEAD"),
        second
    );
    git(&repo.work, &["tag", "-a", "-m", "v1", "v1", &first]);
    git(&repo.work, &["push", "--quiet", "origin", "v1"]);
    assert_eq!(
        sources
            .resolve(&ctx(&format!("{}#v1", repo.file_url())), None)
            .await
            .expect("tag"),
        first
    );
    // A moved tag is noticed.
    git(&repo.work, &["tag", "-f", "-a", "-m", "v1", "v1", &second]);
    git(&repo.work, &["push", "--quiet", "--force", "origin", "v1"]);
    assert_eq!(
        sources
            .resolve(&ctx(&format!("{}#v1", repo.file_url())), None)
            .await
            .expect("tag"),
        second
    );
    // Both images of one repository share one clone.
    let dirs: Vec<_> = std::fs::read_dir(state.path().join("sources"))
        .expect("sources")
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .collect();
    assert_eq!(dirs.len(), 2, "one clone per repository URL");
}

#[tokio::test]
async fn a_force_push_gives_the_new_commit_and_the_old_one_still_checks_out_from_the_cache() {
    let repo = Repo::new();
    let first = repo.commit(&[("a", "one")]);
    let state = tempfile::tempdir().expect("tempdir");
    let sources = Sources::new(state.path(), Duration::from_secs(20));
    let c = ctx(&format!("{}#main", repo.file_url()));
    sources.checkout(&c, None, &first).await.expect("first");
    git(
        &repo.work,
        &["commit", "--quiet", "--amend", "-m", "rewritten"],
    );
    git(
        &repo.work,
        &["push", "--quiet", "--force", "origin", "main"],
    );
    let rewritten = git(&repo.work, &["rev-parse", "HEAD"]);
    assert_ne!(rewritten, first);
    assert_eq!(sources.resolve(&c, None).await.expect("resolve"), rewritten);
    sources
        .checkout(&c, None, &rewritten)
        .await
        .expect("rewritten");
    // A tree used recently (a build may read it) is kept; an idle one goes.
    let trees = sources.repository_dir(&c.url).join("trees");
    sources
        .prune(&c.url, &[&rewritten], Duration::from_secs(3600))
        .await;
    assert!(trees.join(&first).exists());
    sources.prune(&c.url, &[&rewritten], Duration::ZERO).await;
    assert!(!trees.join(&first).exists());
    assert!(trees.join(&rewritten).exists());
}

#[tokio::test]
async fn faults_are_per_source_errors() {
    let repo = Repo::new();
    let commit = repo.commit(&[("a", "one")]);
    let state = tempfile::tempdir().expect("tempdir");
    let sources = Sources::new(state.path(), Duration::from_secs(20));

    let e = sources
        .resolve(&ctx(&format!("{}#nope", repo.file_url())), None)
        .await
        .expect_err("missing ref");
    assert!(matches!(e, SourceError::MissingRef { .. }), "{e}");

    let e = sources
        .checkout(
            &ctx(&format!("{}#main:nodir", repo.file_url())),
            None,
            &commit,
        )
        .await
        .expect_err("missing dir");
    assert!(matches!(e, SourceError::MissingDir { .. }), "{e}");

    let port = free_port();
    let e = sources
        .resolve(&ctx(&format!("git://127.0.0.1:{port}/none.git")), None)
        .await
        .expect_err("unreachable");
    assert_eq!(e.kind(), "unreachable", "{e}");

    let e = sources
        .resolve(&ctx("file:///nonexistent/repo.git"), None)
        .await
        .expect_err("no repository");
    assert_eq!(e.kind(), "unreachable", "{e}");
}

#[tokio::test]
async fn a_hung_git_is_killed_after_the_timeout() {
    // A server that accepts and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let held = std::thread::spawn(move || {
        let conn = listener.accept();
        std::thread::sleep(Duration::from_secs(5));
        drop(conn);
    });
    let state = tempfile::tempdir().expect("tempdir");
    let sources = Sources::new(state.path(), Duration::from_millis(700));
    let started = std::time::Instant::now();
    let e = sources
        .resolve(&ctx(&format!("git://127.0.0.1:{port}/hung.git")), None)
        .await
        .expect_err("hangs");
    assert!(matches!(e, SourceError::Timeout { .. }), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    drop(held);
}
