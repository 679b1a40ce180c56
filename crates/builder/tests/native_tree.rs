//! What the native backend decides from the image's file system, through
//! whole builds into an OCI layout (`FROM scratch`, so no registry is
//! involved): what Docker refuses to copy over the image is refused with
//! its line, and `WORKDIR` under a `USER` the image does not know is
//! refused rather than made for root.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use rebased_builder::{BuildError, BuildRequest, Native, Target};
use rebased_registry::Registry;
use tokio_util::sync::CancellationToken;

async fn build(dockerfile: &str) -> (Result<String, BuildError>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    fs::create_dir_all(ctx.join("dir/sub")).unwrap();
    fs::write(ctx.join("dir/sub/f"), "f\n").unwrap();
    fs::write(ctx.join("a.txt"), "a\n").unwrap();
    fs::create_dir_all(ctx.join("other")).unwrap();
    fs::write(ctx.join("other/sub"), "a file named as dir/'s directory\n").unwrap();
    let req = BuildRequest {
        platform_dockerfiles: Default::default(),
        platform_annotations: Default::default(),
        image: "app".to_owned(),
        job: "1".to_owned(),
        context: ctx,
        dockerfile: dockerfile.to_owned(),
        build_args: BTreeMap::new(),
        target: Target::Layout {
            path: dir.path().join("layout"),
            tag: "1.0.0".to_owned(),
        },
        platforms: Vec::new(),
        source_date_epoch: Some(0),
        annotations: BTreeMap::new(),
        insecure_registries: Vec::new(),
        workdir: dir.path().join("work"),
        auth_json: None,
        secrets: BTreeMap::new(),
        ca_files: Vec::new(),
    };
    let native = Native {
        timeout: Duration::from_secs(60),
        layer_cache: None,
    };
    let out = native
        .build(
            &req,
            &Registry::new(&BTreeMap::new()),
            &CancellationToken::new(),
        )
        .await
        .map(|o| o.log);
    (out, dir)
}

fn refused(r: Result<String, BuildError>) -> (usize, String) {
    match r {
        Err(BuildError::Refused { line, reason, .. }) => (line, reason),
        other => panic!("not refused: {other:?}"),
    }
}

#[tokio::test]
async fn a_directory_over_a_file_or_a_file_over_a_directory_is_refused() {
    let (r, _d) = build("FROM scratch\nCOPY a.txt /x\nCOPY dir/ /x/\n").await;
    let (line, reason) = refused(r);
    assert_eq!(line, 3);
    assert!(reason.contains("/x, a file in the image"), "{reason}");

    let (r, _d) = build("FROM scratch\nCOPY dir/ /x/\nCOPY other/ /x/\n").await;
    let (line, reason) = refused(r);
    assert_eq!(line, 3);
    assert!(
        reason.contains("cannot replace the directory /x/sub"),
        "{reason}"
    );

    // A file to an existing directory goes into it, as in Docker.
    let (r, _d) = build("FROM scratch\nCOPY dir/ /x/\nCOPY a.txt /x/sub\n").await;
    assert!(r.is_ok(), "{r:?}");

    // Through a file on the way: not a directory.
    let (r, _d) = build("FROM scratch\nCOPY a.txt /x\nCOPY a.txt /x/y/\n").await;
    let (line, reason) = refused(r);
    assert_eq!(line, 3);
    assert!(reason.contains("/x is not a directory"), "{reason}");
}

#[tokio::test]
async fn workdir_on_a_file_or_under_an_unknown_user_is_refused() {
    let (r, _d) = build("FROM scratch\nCOPY a.txt /w\nWORKDIR /w\n").await;
    let (line, reason) = refused(r);
    assert_eq!(line, 3);
    assert!(reason.contains("is not a directory"), "{reason}");

    let (r, _d) = build("FROM scratch\nUSER app\nWORKDIR /home/app\n").await;
    let (line, reason) = refused(r);
    assert_eq!(line, 3);
    assert!(
        reason.contains("USER app") && reason.contains("no /etc/passwd"),
        "{reason}"
    );

    // A numeric USER needs no lookup; an existing directory no layer.
    let (r, _d) = build("FROM scratch\nUSER 10:20\nWORKDIR /w\nWORKDIR /w\nWORKDIR /\n").await;
    let log = r.unwrap();
    assert_eq!(log.matches("WORKDIR /w -> layer").count(), 1, "{log}");
    assert!(log.contains("owner 10:20"), "{log}");
}
