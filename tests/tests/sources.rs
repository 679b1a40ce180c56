//! The source is an input: a git context's pushed commit publishes the
//! next minor version built from that commit, annotated with it; a base
//! change afterwards a patch with the same revision; the ledger names
//! both commits, and a ledger recovered from the registry alone knows the
//! revision. Real git (`file://` here), real registry, the real binary.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use rebased_e2e::{image_table, GitRepo, Setup};

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

    // The ledger recovered from the registry alone keeps the revisions.
    drop(daemon);
    std::fs::remove_dir_all(s.dir().join("state")).unwrap();
    let daemon = s.start();
    let image = rebased_e2e::wait_for("the ledger read back", WAIT, || {
        let i = daemon.try_get("/v1/images/web")?;
        (i["versions"].as_array()?.len() == 3).then_some(i)
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
            ("1.1.1".to_owned(), second.clone())
        ]
    );
    // Nothing new is built after the recovery: the image is fresh.
    daemon.wait_poll(WAIT);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(s.registry.versions("web").len(), 3, "no version rebuilt");
}
