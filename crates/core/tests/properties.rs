//! Properties over arbitrary input: the parsers of outside input never
//! panic, and what they accept prints back to something they accept the same.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use rebased_core::config::Config;
use rebased_core::dockerfile::Dockerfile;
use rebased_core::{Digest, ImageRef, Version};

/// Dockerfile-ish text: instructions, flags, variables, quotes, escapes,
/// continuations and heredoc markers in random order.
fn dockerfileish() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "FROM ",
        "from ",
        "ARG ",
        "COPY ",
        "RUN ",
        "AS ",
        "--platform=",
        "--from=",
        "${",
        "}",
        "$",
        ":-",
        ":+",
        "\"",
        "'",
        "\\\n",
        "`\n",
        "\n",
        "# escape=`\n",
        "# comment\n",
        "<<EOF\n",
        "EOF\n",
        "<<-X\n",
        "\tX\n",
        "alpine",
        "a:b",
        "@sha256:",
        "scratch",
        "=",
        " ",
        "/",
        ":",
        "0",
        "é",
        "\u{0}",
    ]);
    prop::collection::vec(atoms, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn dockerfile_parser_never_panics(text in dockerfileish()) {
        if let Ok(df) = Dockerfile::parse(&text, &BTreeMap::new()) {
            // Pinning what was found keeps it parseable.
            let d = Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
            let pins = df.bases().into_iter().map(|b| (b, d.clone())).collect();
            let pinned = df.pin(&text, &pins);
            let _ = Dockerfile::parse(&pinned, &BTreeMap::new());
        }
    }

    #[test]
    fn dockerfile_parser_survives_any_bytes(text in ".{0,300}") {
        let _ = Dockerfile::parse(&text, &BTreeMap::new());
    }

    #[test]
    fn references_round_trip(text in "[a-zA-Z0-9./:_@-]{0,80}") {
        if let Ok(r) = ImageRef::parse(&text) {
            let again = ImageRef::parse(&r.to_string()).unwrap();
            prop_assert_eq!(again, r);
        }
    }

    #[test]
    fn versions_round_trip(text in "[0-9.r-]{0,20}") {
        if let Ok(v) = Version::parse(&text) {
            prop_assert_eq!(Version::parse(&v.to_string()).unwrap(), v);
        }
    }

    #[test]
    fn config_parser_never_panics(text in ".{0,400}") {
        let _ = Config::parse(&text);
    }

    #[test]
    fn config_parser_never_panics_on_tomlish(lines in prop::collection::vec(prop::sample::select(vec![
        "[daemon]", "[[image]]", "[registries.\"x\"]", "poll = \"* * * * *\"", "poll = 5", "name = \"a\"",
        "context = \"/\"", "repository = \"r/x\"", "version = \"1.0.0\"", "tags = [\"{major}\"]", "bogus = 1",
        "timezone = \"Nope/Zone\"", "settle = \"1x\"", "max_concurrent_builds = 0", "name = \"a\"",
    ]), 0..20)) {
        let _ = Config::parse(&lines.join("\n"));
    }
}
