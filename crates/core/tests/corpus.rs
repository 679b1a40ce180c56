//! Data-driven: every `tests/dockerfiles/NAME.Dockerfile` next to a
//! `NAME.bases` holding the expected bases, one a line, or `error line N[: reason]`.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;

use rebased_core::dockerfile::Dockerfile;

#[test]
fn corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dockerfiles");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("Dockerfile") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let want = std::fs::read_to_string(path.with_extension("bases")).unwrap();
        let got = match Dockerfile::parse(&text, &BTreeMap::new()) {
            Ok(df) => df
                .bases()
                .iter()
                .map(|b| format!("{b}\n"))
                .collect::<String>(),
            Err(e) => format!("error line {}: {}\n", e.line, e.reason),
        };
        if let Some(expected) = want.strip_prefix("error line ") {
            let (line, reason) = expected
                .trim()
                .split_once(": ")
                .unwrap_or((expected.trim(), ""));
            assert!(
                got.starts_with(&format!("error line {line}:")),
                "{}: got {got}",
                path.display()
            );
            assert!(got.contains(reason), "{}: got {got}", path.display());
        } else {
            assert_eq!(got, want, "{}", path.display());
        }
        checked += 1;
    }
    assert!(checked >= 9, "only {checked} corpus files");
}
