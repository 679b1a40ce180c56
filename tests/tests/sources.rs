//! The source is an input: a git context's pushed commit publishes the
//! next minor version built from that commit, annotated with it; a base
//! change afterwards a patch with the same revision; the ledger names
//! both commits, and a ledger recovered from the registry alone knows the
//! revision. Real git (`file://` here), real registry, the real binary.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use rebased_e2e::{image_table, rebased_bin, GitRepo, Setup};

const WAIT: Duration = Duration::from_secs(120);

fn revision(s: &Setup, repo_tag: &str) -> String {
    s.registry.raw_manifest(repo_tag)["annotations"]["org.opencontainers.image.revision"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_pushed_commit_publishes_the_next_minor_version_built_from_it() {
    let s = Setup::new();
    let host = s.host().to_owned();
    let repo = GitRepo::new(s.dir(), "web");
    let dockerfile = format!("FROM {host}/base:latest\nCOPY hello /hello\n");
    let first = repo.commit(&[
        ("docker/Dockerfile", &dockerfile),
        ("docker/hello", "one\n"),
        ("README", "not in the context\n"),
    ]);
    let url = format!("{}#main:docker", repo.file_url());
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"0s\"",
        &image_table(
            "web",
            std::path::Path::new(&url),
            &format!("{host}/web"),
            "",
        ),
    );
    let daemon = s.start();
    daemon.wait_version("web", "1.0.0", WAIT);
    assert_eq!(revision(&s, "web:1.0.0"), first);
    let m = s.registry.raw_manifest("web:1.0.0");
    assert_eq!(
        m["annotations"]["org.opencontainers.image.source"],
        repo.file_url()
    );
    assert_eq!(
        s.registry.file_in("web:1.0.0", "hello").as_deref(),
        Some("one\n")
    );

    // A push: the next poll publishes 1.1.0 from that commit.
    let second = repo.commit(&[("docker/hello", "two\n")]);
    daemon.wait_version("web", "1.1.0", WAIT);
    assert_eq!(revision(&s, "web:1.1.0"), second);
    assert_eq!(
        s.registry.file_in("web:1.1.0", "hello").as_deref(),
        Some("two\n")
    );
    let image = daemon.image("web");
    let v100 = image["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == "1.0.0")
        .unwrap()
        .clone();
    assert_eq!(v100["superseded_by"], "1.1.0");
    assert_eq!(
        v100["reason"]["source"]["before"],
        first.as_str(),
        "{v100:#}"
    );
    assert_eq!(
        v100["reason"]["source"]["after"],
        second.as_str(),
        "{v100:#}"
    );
    let log = daemon.log_text();
    assert!(
        log.contains(&format!("source: {} -> {}", &first[..7], &second[..7])),
        "the decision names both commits"
    );

    // A base change: a patch version with the same revision.
    s.bases.push(&s.registry, "base:latest", "v2");
    daemon.wait_version("web", "1.1.1", WAIT);
    assert_eq!(revision(&s, "web:1.1.1"), second);
    assert_eq!(
        s.registry.file_in("web:1.1.1", "hello").as_deref(),
        Some("two\n")
    );

    // A rollback to 1.1.0 and a resume: the revisions stay; the next
    // version (the base moved since 1.1.0, the source did not) is a patch
    // of the highest with the same revision.
    daemon.cli(&["rollback", "web", "--to", "1.1.0"]);
    assert_eq!(daemon.image("web")["current_version"], "1.1.0");
    assert_eq!(
        s.registry.digest("web:latest"),
        s.registry.digest("web:1.1.0")
    );
    daemon.cli(&["resume", "web"]);
    daemon.wait_version("web", "1.1.2", WAIT);
    assert_eq!(revision(&s, "web:1.1.2"), second);

    // The ledger recovered from the registry alone keeps the revisions.
    drop(daemon);
    std::fs::remove_dir_all(s.dir().join("state")).unwrap();
    let daemon = s.start();
    let image = rebased_e2e::wait_for("the ledger read back", WAIT, || {
        let i = daemon.try_get("/v1/images/web")?;
        (i["versions"].as_array()?.len() == 4).then_some(i)
    });
    let revisions: Vec<(String, String)> = image["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_str().unwrap().to_owned(),
                v["revision"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        revisions,
        [
            ("1.0.0".to_owned(), first.clone()),
            ("1.1.0".to_owned(), second.clone()),
            ("1.1.1".to_owned(), second.clone()),
            ("1.1.2".to_owned(), second.clone())
        ]
    );
    // Nothing new is built after the recovery: the image is fresh.
    daemon.wait_poll(WAIT);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(s.registry.versions("web").len(), 4, "no version rebuilt");
}

#[test]
fn push_webhooks_check_the_source_at_once_and_are_authenticated() {
    const TOKEN: &str = "hook-s3cret";
    let s = Setup::new();
    let host = s.host().to_owned();
    let repo = GitRepo::new(s.dir(), "web");
    let dockerfile = format!("FROM {host}/base:latest\nCOPY hello /hello\n");
    let first = repo.commit(&[("Dockerfile", &dockerfile), ("hello", "one\n")]);
    let token_file = s.dir().join("webhook-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let url = format!("{}#main", repo.file_url());
    // Polls once a year: only a webhook makes the daemon look.
    let config = s.write_config(
        "poll = \"0 0 0 1 1 *\"\nsettle = \"0s\"",
        &format!(
            "\n[webhooks]\ntoken_file = \"{}\"\n{}",
            token_file.display(),
            image_table(
                "web",
                std::path::Path::new(&url),
                &format!("{host}/web"),
                ""
            )
        ),
    );
    let daemon = s.start();
    daemon.wait_version("web", "1.0.0", WAIT);
    assert_eq!(revision(&s, "web:1.0.0"), first);

    // generic: {"repository", "ref"}; a commit in the payload is never trusted.
    let second = repo.commit(&[("hello", "two\n")]);
    let body = format!(
        r#"{{"repository": "{}", "ref": "refs/heads/main", "after": "{first}"}}"#,
        repo.file_url()
    );
    let (st, _) = daemon.post_body("/v1/webhooks/generic", &[], body.clone());
    assert_eq!(st, 401, "no token");
    let (st, reply) = daemon.post_body(
        "/v1/webhooks/generic",
        &[("authorization", &format!("Bearer {TOKEN}"))],
        body,
    );
    assert_eq!(
        (st, reply["status"].as_str()),
        (202, Some("accepted")),
        "{reply:#}"
    );
    daemon.wait_version("web", "1.1.0", WAIT);
    assert_eq!(
        revision(&s, "web:1.1.0"),
        second,
        "the ref's commit, not the payload's"
    );

    // A push to another branch or repository is ignored.
    let (st, reply) = daemon.post_body(
        "/v1/webhooks/generic",
        &[("authorization", &format!("Bearer {TOKEN}"))],
        format!(
            r#"{{"repository": "{}", "ref": "refs/heads/other"}}"#,
            repo.file_url()
        ),
    );
    assert_eq!(
        (st, reply["status"].as_str()),
        (202, Some("ignored")),
        "{reply:#}"
    );

    // gitlab: Push Hook with X-Gitlab-Token.
    let third = repo.commit(&[("hello", "three\n")]);
    let gitlab = format!(
        r#"{{"object_kind": "push", "ref": "refs/heads/main", "project": {{"git_http_url": "{}"}}}}"#,
        repo.file_url()
    );
    let (st, _) = daemon.post_body(
        "/v1/webhooks/gitlab",
        &[("x-gitlab-event", "Push Hook"), ("x-gitlab-token", "wrong")],
        gitlab.clone(),
    );
    assert_eq!(st, 401);
    let (st, reply) = daemon.post_body(
        "/v1/webhooks/gitlab",
        &[("x-gitlab-event", "Push Hook"), ("x-gitlab-token", TOKEN)],
        gitlab,
    );
    assert_eq!(
        (st, reply["status"].as_str()),
        (202, Some("accepted")),
        "{reply:#}"
    );
    daemon.wait_version("web", "1.2.0", WAIT);
    assert_eq!(revision(&s, "web:1.2.0"), third);
    assert_eq!(
        s.registry.file_in("web:1.2.0", "hello").as_deref(),
        Some("three\n")
    );

    // gitea: X-Gitea-Signature, HMAC-SHA256 of the body in hex.
    let fourth = repo.commit(&[("hello", "four\n")]);
    let gitea = format!(
        r#"{{"ref": "refs/heads/main", "repository": {{"clone_url": "{}"}}}}"#,
        repo.file_url()
    );
    let sig = rebased_e2e::hmac_sha256_hex(TOKEN, gitea.as_bytes());
    let (st, _) = daemon.post_body(
        "/v1/webhooks/gitea",
        &[
            ("x-gitea-event", "push"),
            ("x-gitea-signature", &"0".repeat(64)),
        ],
        gitea.clone(),
    );
    assert_eq!(st, 401, "wrong signature");
    let (st, reply) = daemon.post_body(
        "/v1/webhooks/gitea",
        &[("x-gitea-event", "push"), ("x-gitea-signature", &sig)],
        gitea,
    );
    assert_eq!(
        (st, reply["status"].as_str()),
        (202, Some("accepted")),
        "{reply:#}"
    );
    daemon.wait_version("web", "1.3.0", WAIT);
    assert_eq!(revision(&s, "web:1.3.0"), fourth);

    // github: a push event signed with X-Hub-Signature-256; a rewritten
    // branch (force push) is a change like any other: a new version.
    rebased_e2e::git(
        &repo.work,
        &["commit", "--quiet", "--amend", "-m", "rewritten"],
    );
    rebased_e2e::git(
        &repo.work,
        &["push", "--quiet", "--force", "origin", "main"],
    );
    let rewritten = rebased_e2e::git(&repo.work, &["rev-parse", "HEAD"]);
    assert_ne!(rewritten, fourth);
    let github = format!(
        r#"{{"ref": "refs/heads/main", "repository": {{"clone_url": "{}", "html_url": "https://example.com/x"}}}}"#,
        repo.file_url()
    );
    let sig = format!(
        "sha256={}",
        rebased_e2e::hmac_sha256_hex(TOKEN, github.as_bytes())
    );
    let (st, reply) = daemon.post_body(
        "/v1/webhooks/github",
        &[("x-github-event", "push"), ("x-hub-signature-256", &sig)],
        github,
    );
    assert_eq!(
        (st, reply["status"].as_str()),
        (202, Some("accepted")),
        "{reply:#}"
    );
    daemon.wait_version("web", "1.4.0", WAIT);
    assert_eq!(revision(&s, "web:1.4.0"), rewritten);
    let (before, fourth) = (fourth, rewritten);

    // GET /v1/sources and the image's view show the source.
    let sources = daemon.get("/v1/sources");
    assert_eq!(sources[0]["url"], repo.file_url(), "{sources:#}");
    assert_eq!(sources[0]["ref"], "main");
    assert_eq!(sources[0]["commit"], fourth.as_str());
    assert_eq!(sources[0]["dependents"], serde_json::json!(["web"]));
    assert_eq!(daemon.image("web")["source"]["commit"], fourth.as_str());
    let out = daemon.cli(&["sources"]);
    assert!(out.contains(&fourth[..12]) && out.contains("web"), "{out}");
    let out = daemon.cli(&["image", "web"]);
    assert!(
        out.contains(&format!("source: {} ref main", repo.file_url()))
            && out.contains(&format!("source {} -> {}", &third[..7], &before[..7]))
            && out.contains(&format!("source {} -> {}", &before[..7], &fourth[..7])),
        "{out}"
    );
    let out = rebased_e2e::run(
        std::process::Command::new(rebased_bin())
            .args(["check-config", "--config"])
            .arg(&config),
    );
    assert!(
        out.contains(&format!("source {} ref main dir .", repo.file_url())),
        "{out}"
    );
}

#[test]
fn two_images_of_one_repository_share_one_lookup_per_cycle_over_git_daemon() {
    let s = Setup::new();
    let host = s.host().to_owned();
    let repo = GitRepo::new(s.dir(), "mono");
    let df = format!("FROM {host}/base:latest\nCOPY hello /hello\n");
    repo.commit(&[
        ("a/Dockerfile", &df),
        ("a/hello", "a\n"),
        ("b/Dockerfile", &df),
        ("b/hello", "b\n"),
    ]);
    let port = rebased_e2e::free_port();
    let log = s.dir().join("git-daemon.log");
    let mut git_daemon = std::process::Command::new("git")
        .args([
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--verbose",
            "--listen=127.0.0.1",
            &format!("--port={port}"),
            &format!("--base-path={}", s.dir().display()),
        ])
        .arg(s.dir())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    rebased_e2e::wait_for("git daemon", WAIT, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let url = |dir: &str| format!("git://127.0.0.1:{port}/mono.git#main:{dir}");
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"0s\"",
        &format!(
            "{}{}",
            image_table(
                "a",
                std::path::Path::new(&url("a")),
                &format!("{host}/a"),
                ""
            ),
            image_table(
                "b",
                std::path::Path::new(&url("b")),
                &format!("{host}/b"),
                ""
            )
        ),
    );
    let daemon = s.start();
    daemon.wait_version("a", "1.0.0", WAIT);
    daemon.wait_version("b", "1.0.0", WAIT);
    assert_eq!(
        s.registry.file_in("a:1.0.0", "hello").as_deref(),
        Some("a\n")
    );
    assert_eq!(
        s.registry.file_in("b:1.0.0", "hello").as_deref(),
        Some("b\n")
    );
    // A few rounds more.
    std::thread::sleep(Duration::from_secs(3));
    let mut daemon = daemon;
    daemon.stop();
    let _ = git_daemon.kill();
    let _ = git_daemon.wait();
    let rounds = daemon.log_text().matches("poll round finished").count();
    let requests = std::fs::read_to_string(&log)
        .unwrap()
        .matches("Request upload-pack")
        .count();
    assert!(rounds >= 3, "{rounds} rounds");
    // One look-up per round, however many images, plus the one fetch of
    // the commit (a shallow fetch by id, shared by both images), plus the
    // look-up of a round the stop may cut short before its line is logged.
    // A look-up per image would be two per round.
    assert!(
        requests <= rounds + 2,
        "{requests} upload-pack requests for {rounds} rounds"
    );
    assert!(
        requests >= rounds.min(3),
        "{requests} requests: the rounds looked"
    );
}

#[test]
fn a_watched_local_context_builds_once_per_content_change_and_not_for_a_touch() {
    let s = Setup::new();
    let host = s.host().to_owned();
    let ctx = s.context(
        "app",
        &format!("FROM {host}/base:latest\nCOPY hello /hello\n"),
    );
    std::fs::write(ctx.join(".dockerignore"), "*.log\n").unwrap();
    s.write_config(
        "poll = \"0 0 0 1 1 *\"\nsettle = \"1s\"",
        &image_table(
            "app",
            &ctx,
            &format!("{host}/app"),
            "watch_context = true\n",
        ),
    );
    let daemon = s.start();
    daemon.wait_version("app", "1.0.0", WAIT);
    let hash = |tag: &str| {
        s.registry.raw_manifest(&format!("app:{tag}"))["annotations"]["io.rebased.context"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let h0 = hash("1.0.0");
    assert!(h0.starts_with("sha256:"), "{h0}");

    // A touch, the same bytes saved again, an ignored file: nothing.
    let hello = ctx.join("hello");
    let same = std::fs::read(&hello).unwrap();
    std::fs::File::options()
        .append(true)
        .open(&hello)
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    std::fs::write(&hello, &same).unwrap();
    std::fs::write(ctx.join("debug.log"), "noise").unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(s.registry.versions("app").len(), 1, "nothing built");

    // A content change: one build after settle, the next minor version.
    std::fs::write(&hello, "changed\n").unwrap();
    std::fs::write(&hello, "changed again\n").unwrap();
    daemon.wait_version("app", "1.1.0", WAIT);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        s.registry.versions("app").len(),
        2,
        "one build for the burst"
    );
    assert_ne!(hash("1.1.0"), h0);
    assert_eq!(
        s.registry.file_in("app:1.1.0", "hello").as_deref(),
        Some("changed again\n")
    );
    assert_eq!(daemon.image("app")["versions"][1]["trigger"], "context");
}

#[test]
fn a_broken_source_is_its_images_error_and_touches_no_other_image() {
    let s = Setup::new();
    let host = s.host().to_owned();
    let repo = GitRepo::new(s.dir(), "web");
    repo.commit(&[("Dockerfile", &format!("FROM {host}/base:latest\n"))]);
    let good = s.context(
        "good",
        &format!("FROM {host}/base:latest\nCOPY hello /hello\n"),
    );
    let secret = "sup3r-s3cret-t0ken";
    let pw = s.dir().join("git-token");
    std::fs::write(&pw, format!("{secret}\n")).unwrap();
    let closed = rebased_e2e::free_port();
    let unreachable = format!("https://x-access-token@127.0.0.1:{closed}/acme/web.git#main");
    let no_dir = format!("{}#main:nodir", repo.file_url());
    let no_ref = format!("{}#nosuchbranch", repo.file_url());
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"0s\"",
        &format!(
            "\n[sources.\"127.0.0.1\"]\nusername = \"x-access-token\"\npassword_file = \"{}\"\n{}{}{}{}",
            pw.display(),
            image_table("good", &good, &format!("{host}/good"), ""),
            image_table("unreachable", std::path::Path::new(&unreachable), &format!("{host}/unreachable"), ""),
            image_table("nodir", std::path::Path::new(&no_dir), &format!("{host}/nodir"), ""),
            image_table("noref", std::path::Path::new(&no_ref), &format!("{host}/noref"), ""),
        ),
    );
    let daemon = s.start();
    daemon.wait_version("good", "1.0.0", WAIT);
    let e = daemon.wait_failing("unreachable", WAIT);
    assert!(e.contains("127.0.0.1") && e.contains("unreachable"), "{e}");
    let e = daemon.wait_failing("nodir", WAIT);
    assert!(e.contains("nodir"), "{e}");
    let e = daemon.wait_failing("noref", WAIT);
    assert!(e.contains("nosuchbranch"), "{e}");
    let sources = daemon.get("/v1/sources");
    let errors: Vec<&str> = sources
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["error"].as_str())
        .collect();
    assert_eq!(errors.len(), 2, "unreachable and missing ref: {sources:#}");
    for name in ["unreachable", "nodir", "noref"] {
        assert_eq!(
            daemon.image(name)["versions"].as_array().map(Vec::len),
            Some(0),
            "{name} built nothing"
        );
        assert!(s.registry.digest(&format!("{name}:1.0.0")).is_none());
    }
    // The credentials appear nowhere.
    std::thread::sleep(Duration::from_secs(2));
    let shown = format!(
        "{}{}{}",
        daemon.log_text(),
        daemon.get("/v1/sources"),
        daemon.get("/v1/images")
    );
    assert!(!shown.contains(secret), "the password leaked");
    assert!(
        !daemon
            .get("/v1/sources")
            .to_string()
            .contains("x-access-token@"),
        "URLs are shown without the user"
    );
}

#[test]
fn once_looks_up_git_sources_and_publishes_from_the_commit() {
    let s = Setup::new();
    let host = s.host().to_owned();
    let repo = GitRepo::new(s.dir(), "web");
    let commit = repo.commit(&[
        (
            "Dockerfile",
            &format!("FROM {host}/base:latest\nCOPY hello /hello\n"),
        ),
        ("hello", "once\n"),
    ]);
    let url = format!("{}#main", repo.file_url());
    let config = s.write_config(
        "",
        &image_table(
            "web",
            std::path::Path::new(&url),
            &format!("{host}/web"),
            "",
        ),
    );
    rebased_e2e::run(
        std::process::Command::new(rebased_bin())
            .args(["once", "--config"])
            .arg(&config),
    );
    assert_eq!(revision(&s, "web:1.0.0"), commit);
    assert_eq!(
        s.registry.file_in("web:1.0.0", "hello").as_deref(),
        Some("once\n")
    );
}
