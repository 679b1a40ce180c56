//! Webhook payloads near the real ones: each fixture with one value replaced
//! by another JSON shape, or cut short, or with its bytes flipped. No source
//! may panic on any of them.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;

use proptest::prelude::*;
use rebased_watcher::webhook::{parse, SOURCES};
use serde_json::Value;

/// Every fixture with the source it is for.
fn fixtures() -> Vec<(&'static str, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/webhooks");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let prefix = name.split('-').next().unwrap_or_default();
        let source = SOURCES
            .iter()
            .copied()
            .find(|s| *s == prefix)
            .unwrap_or("generic");
        let value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        out.push((source, value));
    }
    out.sort_by_key(|(s, _)| *s);
    out
}

fn replacement() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        Value::Null,
        Value::from(5),
        Value::from(-1.5),
        Value::from(""),
        Value::from("push"),
        Value::from("a/b:c@d"),
        Value::from("::::"),
        Value::from("ütf-8 ✓"),
        serde_json::json!([]),
        serde_json::json!({}),
        serde_json::json!([1, "a", null, {}]),
        serde_json::json!({"tag": 1, "name": [], "login": {}}),
    ])
}

/// Replaces the `pick`-th value met walking `v` (depth first) by `with`.
fn replace_nth(v: &mut Value, pick: &mut usize, with: &Value) -> bool {
    if *pick == 0 {
        *v = with.clone();
        return true;
    }
    *pick -= 1;
    match v {
        Value::Object(m) => m.values_mut().any(|c| replace_nth(c, pick, with)),
        Value::Array(a) => a.iter_mut().any(|c| replace_nth(c, pick, with)),
        _ => false,
    }
}

const EVENTS: &[Option<&str>] = &[
    None,
    Some("package"),
    Some("registry_package"),
    Some("ping"),
];

proptest! {
    #[test]
    fn fixtures_with_one_value_replaced_never_panic(
        which in any::<prop::sample::Index>(),
        pick in 0usize..64,
        with in replacement(),
        event in prop::sample::select(EVENTS.to_vec()),
    ) {
        let all = fixtures();
        let (source, mut value) = all[which.index(all.len())].clone();
        let mut n = pick;
        replace_nth(&mut value, &mut n, &with);
        let body = serde_json::to_vec(&value).unwrap();
        for s in SOURCES {
            let _ = parse(s, event, &body);
        }
        if let Ok(refs) = parse(source, event, &body) {
            prop_assert!(refs.iter().all(|r| !r.is_empty()));
        }
    }

    #[test]
    fn fixtures_cut_or_flipped_never_panic(
        which in any::<prop::sample::Index>(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let all = fixtures();
        let (source, value) = &all[which.index(all.len())];
        let mut body = serde_json::to_vec(value).unwrap();
        let at = flip.index(body.len());
        body[at] = byte;
        let _ = parse(source, None, &body);
        body.truncate(cut.index(body.len()));
        let _ = parse(source, None, &body);
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow(depth in 100usize..4000) {
        let body = format!("{{\"events\":{}{}}}", "[".repeat(depth), "]".repeat(depth));
        for s in SOURCES {
            let _ = parse(s, None, body.as_bytes());
        }
    }
}
