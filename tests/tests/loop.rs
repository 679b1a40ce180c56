//! The whole loop, end to end: base v1 -> 1.0.0, base v2 -> 1.0.1 with
//! provenance and floating tags, supersession in the API, and a restart that
//! publishes nothing. Built with buildah here; `native.rs` runs the native
//! backend through the same kind of update.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use rebased_e2e::{image_table, wait_for, Setup};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);

#[test]
fn base_update_publishes_next_patch_and_restart_publishes_nothing() {
    let s = Setup::empty();
    let registry = &s.registry;
    let bases = &s.bases;
    let d1 = bases.push(registry, "base:latest", "v1");

    let ctx = s.context(
        "app",
        &format!(
            "FROM {}/base:latest AS runtime\nCOPY hello /hello\n",
            registry.host
        ),
    );
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"2s\"\n\n[builder]\nbackend = \"buildah\"\n",
        &image_table(
            "app",
            &ctx,
            &format!("{}/app", registry.host),
            "tags = [\"{major}.{minor}\", \"latest\"]\n",
        ),
    );

    let mut daemon = s.start();
    wait_for("1.0.0 to be published", WAIT, || {
        (daemon.current_version("app").as_deref() == Some("1.0.0")).then_some(())
    });
    let v100 = registry.digest("app:1.0.0").expect("1.0.0 pushed");
    // Floating tags move right after the version is recorded.
    wait_for("latest on 1.0.0", WAIT, || {
        (registry.digest("app:latest").as_deref() == Some(v100.as_str())).then_some(())
    });

    // Upstream moves.
    let d2 = bases.push(registry, "base:latest", "v2");
    assert_ne!(d1, d2, "the two bases must differ");
    wait_for("1.0.1 to be published", WAIT, || {
        (daemon.current_version("app").as_deref() == Some("1.0.1")).then_some(())
    });

    // What was pushed, as skopeo sees it.
    let manifest = registry.raw_manifest("app:1.0.1");
    let ann = &manifest["annotations"];
    assert_eq!(
        ann["org.opencontainers.image.base.digest"],
        Value::String(d2.clone())
    );
    assert_eq!(
        ann["org.opencontainers.image.base.name"],
        Value::String(format!("{}/base:latest", registry.host))
    );
    assert_eq!(ann["org.opencontainers.image.version"], "1.0.1");
    assert!(ann["org.opencontainers.image.created"]
        .as_str()
        .is_some_and(|c| c.contains('T')));
    let recorded: Value = serde_json::from_str(ann["io.rebased.bases"].as_str().unwrap()).unwrap();
    assert_eq!(
        recorded[format!("{}/base:latest", registry.host)],
        Value::String(d2.clone())
    );
    let labels = &registry.inspect("app:1.0.1")["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.base.digest"],
        Value::String(d2.clone())
    );

    let v101 = registry.digest("app:1.0.1").unwrap();
    assert_ne!(v100, v101);
    // `latest` is the last floating tag to move.
    wait_for("latest moved to 1.0.1", WAIT, || {
        (registry.digest("app:latest").as_deref() == Some(v101.as_str())).then_some(())
    });
    assert_eq!(
        registry.digest("app:1.0").as_deref(),
        Some(v101.as_str()),
        "1.0 moved"
    );
    assert_eq!(
        registry.digest("app:1.0.0").as_deref(),
        Some(v100.as_str()),
        "1.0.0 untouched"
    );

    // The ledger, through the API.
    let image = daemon.image("app");
    assert_eq!(image["state"], "fresh");
    assert_eq!(image["current_digest"], Value::String(v101.clone()));
    let versions = image["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{image:#}");
    let old = &versions[0];
    assert_eq!(old["version"], "1.0.0");
    assert_eq!(old["digest"], Value::String(v100.clone()));
    assert_eq!(old["superseded_by"], "1.0.1");
    assert!(old["superseded_at"].as_str().is_some());
    let change = &old["reason"]["bases"][0];
    assert_eq!(change["before"], Value::String(d1.clone()));
    assert_eq!(change["after"], Value::String(d2.clone()));
    assert_eq!(old["reason"]["trigger"], "poll");
    assert_eq!(versions[1]["version"], "1.0.1");
    assert_eq!(versions[1]["superseded_by"], Value::Null);
    let listed = daemon.get("/v1/images");
    assert_eq!(listed[0]["name"], "app");
    let status = daemon.get("/v1/status");
    assert_eq!(status["images"], 1);

    // Restart with nothing changed upstream: nothing new is published.
    daemon.stop();
    let daemon = s.start();
    let first = daemon.wait_poll(WAIT);
    wait_for("three more polls", WAIT, || {
        let last = daemon.get("/v1/status")["last_poll"]
            .as_str()
            .map(str::to_owned)?;
        (last.as_str() > first.as_str()).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let tags = registry.tags("app");
    assert!(
        !tags.contains(&"1.0.2".to_owned()),
        "restart published {tags:?}"
    );
    assert_eq!(daemon.current_version("app").as_deref(), Some("1.0.1"));
    assert_eq!(daemon.image("app")["versions"].as_array().unwrap().len(), 2);
}
