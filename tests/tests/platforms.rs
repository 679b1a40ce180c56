//! Multi-arch bases: an image is stale only when the child digest of a
//! platform it builds changed.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use rebased_e2e::{image_table, wait_for, Setup};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(180);

#[test]
fn only_a_change_of_the_built_platform_rebuilds() {
    let s = Setup::empty();
    let (registry, maker, host) = (&s.registry, &s.bases, s.host());
    let amd1 = maker.push_platform(registry, "parts:amd64-v1", "amd64-v1", Some("linux/amd64"));
    let arm1 = maker.push_platform(registry, "parts:arm64-v1", "arm64-v1", Some("linux/arm64"));
    let index1 = maker.push_index(registry, "parts", &[&amd1, &arm1], "base:latest");

    let ctx = s.context(
        "app",
        &format!("FROM {host}/base:latest\nCOPY hello /hello\n"),
    );
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"1s\"",
        &image_table(
            "app",
            &ctx,
            &format!("{host}/app"),
            "platforms = [\"linux/amd64\"]\n",
        ),
    );
    let daemon = s.start();
    let current = || daemon.current_version("app");
    wait_for("1.0.0", WAIT, || {
        (current().as_deref() == Some("1.0.0")).then_some(())
    });
    let base_ref = format!("{host}/base:latest");
    let base = |d: &rebased_e2e::Daemon| d.base(&base_ref);
    let b = base(&daemon);
    assert_eq!(b["digest"], Value::String(index1.clone()));
    assert_eq!(b["platforms"]["linux/arm64"], Value::String(arm1.clone()));
    assert_eq!(b["platforms"]["linux/amd64"], Value::String(amd1.clone()));
    let v = &daemon.image("app")["versions"][0];
    assert_eq!(
        v["bases"][format!("{host}/base:latest")],
        Value::String(index1.clone())
    );

    // Only arm64 moves upstream: recorded, nothing built.
    let arm2 = maker.push_platform(registry, "parts:arm64-v2", "arm64-v2", Some("linux/arm64"));
    let index2 = maker.push_index(registry, "parts", &[&amd1, &arm2], "base:latest");
    assert_ne!(index1, index2);
    wait_for("the new index to settle", WAIT, || {
        let b = base(&daemon);
        (b["digest"] == Value::String(index2.clone()) && b["pending"].is_null()).then_some(())
    });
    assert_eq!(
        base(&daemon)["platforms"]["linux/arm64"],
        Value::String(arm2.clone())
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        current().as_deref(),
        Some("1.0.0"),
        "an arm64-only change must not rebuild an amd64 image"
    );
    assert!(!registry.tags("app").contains(&"1.0.1".to_owned()));
    assert_eq!(daemon.image("app")["state"], "fresh");

    // amd64 moves: rebuilt, pinned to the new index.
    let amd2 = maker.push_platform(registry, "parts:amd64-v2", "amd64-v2", Some("linux/amd64"));
    let index3 = maker.push_index(registry, "parts", &[&amd2, &arm2], "base:latest");
    wait_for("1.0.1", WAIT, || {
        (current().as_deref() == Some("1.0.1")).then_some(())
    });
    let ann = &registry.raw_manifest("app:1.0.1")["annotations"];
    assert_eq!(
        ann["org.opencontainers.image.base.digest"],
        Value::String(index3)
    );
}
