//! Payloads shaped as the registries document them (fixtures/webhooks).

use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/fixtures/webhooks/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn refs(source: &str, event: Option<&str>, name: &str) -> Vec<String> {
    parse(source, event, &fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn distribution_counts_only_tagged_manifest_pushes() {
    assert_eq!(
        refs("distribution", None, "distribution.json"),
        [
            "registrycluster.local/library/test:latest",
            "registry.example.com:5000/acme/base:3.20"
        ]
    );
}

#[test]
fn dockerhub() {
    assert_eq!(
        refs("dockerhub", None, "dockerhub.json"),
        ["docker.io/svendowideit/testhook:latest"]
    );
}

#[test]
fn harbor_default_and_cloudevents() {
    assert_eq!(
        refs("harbor", None, "harbor-tagged.json"),
        ["hub.harbor.com/test-webhook/debian:latest"]
    );
    assert_eq!(
        refs("harbor", None, "harbor-cloudevents.json"),
        ["harbor.dev/library/busybox:v1.0"]
    );
    // A digest-only push names the digest reference (which no one watches by tag).
    assert_eq!(refs("harbor", None, "harbor.json").len(), 1);
    let pull = br#"{"type": "PULL_ARTIFACT", "event_data": {"resources": []}}"#;
    assert!(parse("harbor", None, pull).expect("valid").is_empty());
}

#[test]
fn quay_both_shapes() {
    assert_eq!(
        refs("quay", None, "quay-list.json"),
        [
            "quay.io/mynamespace/repository:latest",
            "quay.io/mynamespace/repository:1.2"
        ]
    );
    assert_eq!(
        refs("quay", None, "quay-map.json"),
        ["quay.io/mynamespace/repository:latest"]
    );
}

#[test]
fn github_package_and_registry_package() {
    assert_eq!(
        refs("github", Some("package"), "github-package.json"),
        ["ghcr.io/acme/web:1.4"]
    );
    assert_eq!(
        refs(
            "github",
            Some("registry_package"),
            "github-registry-package.json"
        ),
        ["ghcr.io/acme/runtime:latest"]
    );
    assert!(
        parse("github", Some("ping"), br#"{"zen": "Design for failure."}"#)
            .expect("ping")
            .is_empty()
    );
    let npm = br#"{"action": "published", "package": {"name": "x", "package_type": "npm", "owner": {"login": "a"}}}"#;
    assert!(parse("github", Some("package"), npm)
        .expect("valid")
        .is_empty());
}

#[test]
fn acr() {
    assert_eq!(
        refs("acr", None, "acr.json"),
        ["myregistry.azurecr.io/hello-world:v1"]
    );
    let delete = br#"{"action": "delete", "target": {"repository": "x"}}"#;
    assert!(parse("acr", None, delete).expect("valid").is_empty());
}

#[test]
fn generic() {
    assert_eq!(
        refs("generic", None, "generic.json"),
        ["127.0.0.1:5000/base:latest"]
    );
}

#[test]
fn malformed_payloads_say_why() {
    for source in SOURCES {
        let e = parse(source, None, b"{\"events\": [").expect_err("truncated");
        assert!(e.0.contains("not valid JSON"), "{source}: {e}");
        assert!(
            parse(source, None, b"[1, 2]").is_err(),
            "{source}: arrays refused"
        );
        assert!(parse(source, None, b"").is_err(), "{source}: empty refused");
    }
    assert!(parse("generic", None, br#"{"ref": "x"}"#)
        .expect_err("no reference")
        .0
        .contains("reference"));
    assert!(parse("dockerhub", None, br#"{"push_data": {}}"#).is_err());
    assert!(parse(
        "quay",
        None,
        br#"{"docker_url": "quay.io/a/b", "updated_tags": 5}"#
    )
    .is_err());
    assert!(parse("distribution", None, br#"{"events": 5}"#).is_err());
    assert!(parse("nosuch", None, b"{}").is_err());
}

mod properties {
    use super::super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, .. ProptestConfig::default() })]

        #[test]
        fn any_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512), source in prop::sample::select(SOURCES.to_vec())) {
            let _ = parse(source, Some("package"), &body);
        }

        #[test]
        fn any_json_shape_never_panics(
            key in prop::sample::select(vec!["events", "push_data", "repository", "event_data", "data", "updated_tags", "package", "registry_package", "target", "reference", "action"]),
            value in prop::sample::select(vec!["null", "1", "\"s\"", "[]", "{}", "[{}]", "[1,\"a\"]", "{\"tag\": 5}", "[{\"action\":\"push\",\"target\":{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"tag\":1}}]"]),
            source in prop::sample::select(SOURCES.to_vec()),
        ) {
            let body = format!("{{\"{key}\": {value}, \"specversion\": \"1.0\", \"type\": \"harbor.artifact.pushed\"}}");
            let _ = parse(source, None, body.as_bytes());
        }
    }
}
