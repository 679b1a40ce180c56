//! What registries send, arbitrary or nearly right: `WWW-Authenticate`,
//! `Retry-After`, `ratelimit-remaining`, token responses, indexes and
//! manifest annotations, and an OCI layout's `index.json`. None may panic.

#![allow(clippy::unwrap_used, missing_docs)]

use proptest::prelude::*;
use rebased_core::Digest;
use rebased_registry::{
    index_platforms, parse_challenge, parse_rate_limit, parse_retry_after, parse_token_response,
    Challenge, Layout, RawManifest,
};

const DIGEST: &str = "sha256:ee3a7427e984f3d47ef6b31962b8255b59b97c4a79dc6804134da3986c55288a";

/// `WWW-Authenticate` values made of the pieces real ones have.
fn challengeish() -> impl Strategy<Value = String> {
    let scheme = prop::sample::select(vec!["Bearer", "bearer", "Basic", "Negotiate", ""]);
    let key = prop::sample::select(vec!["realm", "service", "scope", "error", "", " Realm "]);
    let value = prop::sample::select(vec![
        "\"https://auth.example/token\"",
        "\"repository:a/b:pull,push\"",
        "plain",
        "\"unterminated",
        "\"\"",
        "=",
        ",",
        "\"é\"",
    ]);
    let sep = prop::sample::select(vec![",", ", ", " ", ",,", ""]);
    (scheme, prop::collection::vec((key, value, sep), 0..5)).prop_map(|(s, params)| {
        let mut out = format!("{s} ");
        for (k, v, sep) in params {
            out.push_str(&format!("{k}={v}{sep}"));
        }
        out
    })
}

/// Index JSON with entries that are right, half right, or wrong.
fn indexish() -> impl Strategy<Value = Vec<u8>> {
    let entry = prop::sample::select(vec![
        serde_json::json!({"digest": DIGEST, "platform": {"os": "linux", "architecture": "amd64"}}),
        serde_json::json!({"digest": DIGEST, "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}}),
        serde_json::json!({"digest": DIGEST, "platform": {"os": "unknown", "architecture": "unknown"}}),
        serde_json::json!({"digest": "sha256:short", "platform": {"os": "linux", "architecture": "amd64"}}),
        serde_json::json!({"digest": 5, "platform": "linux/amd64"}),
        serde_json::json!({"platform": {"os": 1, "architecture": []}}),
        serde_json::json!(null),
        serde_json::json!([]),
        serde_json::json!({"digest": DIGEST, "annotations": {"org.opencontainers.image.ref.name": "latest"}}),
    ]);
    let annotations = prop::sample::select(vec![
        serde_json::json!({"a": "b"}),
        serde_json::json!({"a": 1}),
        serde_json::json!([]),
        serde_json::json!(null),
    ]);
    (prop::collection::vec(entry, 0..5), annotations).prop_map(|(m, a)| {
        serde_json::to_vec(
            &serde_json::json!({"schemaVersion": 2, "manifests": m, "annotations": a}),
        )
        .unwrap()
    })
}

proptest! {
    #[test]
    fn near_valid_challenges_never_panic(header in challengeish()) {
        if let Some(Challenge::Bearer { realm, .. }) = parse_challenge(&header) {
            prop_assert!(!header.trim().is_empty());
            let _ = realm;
        }
    }

    #[test]
    fn any_header_text_never_panics(text in "\\PC{0,80}") {
        let _ = parse_challenge(&text);
        let _ = parse_retry_after(&text);
        let _ = parse_rate_limit(&text);
    }

    #[test]
    fn retry_after_takes_any_number_of_seconds(secs in any::<u64>()) {
        prop_assert_eq!(
            parse_retry_after(&secs.to_string()),
            Some(std::time::Duration::from_secs(secs))
        );
    }

    #[test]
    fn token_responses_are_bounded(
        token in prop::option::of("[a-z]{0,5}"),
        expires in prop::option::of(prop_oneof![any::<u64>().prop_map(serde_json::Value::from), Just(serde_json::json!(-1)), Just(serde_json::json!("60"))]),
    ) {
        let mut body = serde_json::Map::new();
        if let Some(t) = &token {
            body.insert("token".into(), t.clone().into());
        }
        if let Some(e) = expires {
            body.insert("expires_in".into(), e);
        }
        let bytes = serde_json::to_vec(&body).unwrap();
        match parse_token_response(&bytes) {
            Ok((t, ttl)) => {
                prop_assert_eq!(Some(t), token);
                prop_assert!(ttl <= std::time::Duration::from_secs(3600));
            }
            Err(_) => prop_assert!(token.is_none_or(|t| t.is_empty())),
        }
    }

    #[test]
    fn indexes_and_annotations_never_panic(bytes in prop_oneof![indexish(), prop::collection::vec(any::<u8>(), 0..200)]) {
        for (platform, digest) in index_platforms(&bytes) {
            prop_assert!(platform.split('/').count() >= 2);
            prop_assert_eq!(digest.as_str(), DIGEST);
        }
        let m = RawManifest { bytes, digest: Digest::parse(DIGEST).unwrap(), media_type: String::new() };
        let _ = m.annotations();
    }
}

proptest! {
    // Each case writes files: fewer of them.
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn layout_index_json_never_panics(index in prop_oneof![indexish(), prop::collection::vec(any::<u8>(), 0..64)]) {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        let blob = layout.put_blob(&index).unwrap();
        std::fs::write(dir.path().join("index.json"), &index).unwrap();
        if let Ok(layout) = Layout::open(dir.path()) {
            for tag in layout.list_tags().unwrap_or_default() {
                let _ = layout.lookup(&tag);
                let _ = layout.manifest(&tag);
            }
            let _ = layout.manifest(blob.as_str());
            if layout.tag(&blob, "t").is_ok() {
                prop_assert_eq!(layout.lookup("t").unwrap(), Some(blob));
            }
        }
    }
}
