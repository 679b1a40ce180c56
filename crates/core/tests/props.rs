//! Properties of the core parsers over arbitrary and near-valid input (the
//! cargo-fuzz targets in `fuzz/` explore the same ground for longer): none
//! panics, and what they accept prints back to the same value.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use rebased_core::config::{CronSpec, ImageName, Repository, TagTemplate};
use rebased_core::dockerfile::{split_words, substitute, Dockerfile};
use rebased_core::duration::ConfigDuration;
use rebased_core::{Digest, ImageRef, Version};

const DIGEST: &str = "sha256:ee3a7427e984f3d47ef6b31962b8255b59b97c4a79dc6804134da3986c55288a";

/// References built from the grammar's pieces, with some wrong ones mixed in.
fn referenceish() -> impl Strategy<Value = String> {
    let host = prop::option::of(prop::sample::select(vec![
        "docker.io/",
        "index.docker.io/",
        "localhost/",
        "localhost:5000/",
        "127.0.0.1:5000/",
        "[::1]:5000/",
        "[::1]/",
        "Reg.Example.com/",
        "a.b:/",
        "x:y/",
    ]));
    let component = "[a-z0-9]{1,6}([._-]{1,2}[a-z0-9]{1,4})?|[A-Z_.-]{1,3}|";
    let path = prop::collection::vec(component, 1..4).prop_map(|v| v.join("/"));
    let tag = prop::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}|[.-][a-z]|");
    let digest = prop::option::of(prop::sample::select(vec![
        DIGEST.to_owned(),
        format!("sha512:{}", "ab".repeat(64)),
        "sha256:abc".to_owned(),
        "md5:Zm9v".to_owned(),
        String::new(),
    ]));
    (host, path, tag, digest).prop_map(|(h, p, t, d)| {
        let mut s = format!("{}{p}", h.unwrap_or_default());
        if let Some(t) = t {
            s = format!("{s}:{t}");
        }
        if let Some(d) = d {
            s = format!("{s}@{d}");
        }
        s
    })
}

/// Dockerfiles of lines that mostly make sense, for `pin`.
fn dockerfile_lines() -> impl Strategy<Value = String> {
    let line = prop::sample::select(vec![
        "ARG TAG=3",
        "ARG REG=127.0.0.1:5000",
        "FROM alpine",
        "FROM alpine:${TAG} AS base",
        "FROM --platform=$BUILDPLATFORM ${REG}/x/y:${TAG:-1} AS b2",
        "from busybox as lower",
        "FROM base",
        "FROM scratch",
        "FROM \\\n  debian:12 \\\n  AS deb",
        "FROM \"quay.io/a/b:c\" AS quoted",
        "COPY --from=busybox:1.36 /bin/busybox /bin/",
        "COPY --chown=1:1 --from=golang:1.22 /go /go",
        "COPY --from=base /x /y",
        "COPY --from=0 /x /y",
        "COPY --from=alpine:3 <<EOF /x\nhello\nEOF",
        "RUN <<EOF\nFROM evil\nEOF",
        "RUN echo \\\n  hi",
        "# comment",
        "",
        "   ",
        "ENV A=1",
        "LABEL a=\"b c\"",
    ]);
    prop::collection::vec(line, 0..12).prop_map(|v| v.join("\n"))
}

proptest! {
    #[test]
    fn near_valid_references_round_trip(text in referenceish()) {
        if let Ok(r) = ImageRef::parse(&text) {
            prop_assert_eq!(ImageRef::parse(&r.to_string()).unwrap(), r.clone());
            prop_assert!(r.tag().is_some() || r.digest().is_some());
        }
        if let Ok(r) = ImageRef::parse_repository(&text) {
            prop_assert_eq!(ImageRef::parse_repository(&r.name()).unwrap(), r);
        }
    }

    #[test]
    fn any_reference_text_is_answered(text in "\\PC{0,80}") {
        if let Ok(r) = ImageRef::parse(&text) {
            prop_assert_eq!(ImageRef::parse(&r.to_string()).unwrap(), r);
        }
        let _ = ImageRef::parse_repository(&text);
    }

    #[test]
    fn digests_round_trip(algo in "sha256|sha512|[a-z0-9+._-]{0,8}", encoded in "[0-9a-f]{0,130}|[A-Za-z0-9=_-]{0,20}|\\PC{0,10}") {
        let text = format!("{algo}:{encoded}");
        if let Ok(d) = Digest::parse(&text) {
            prop_assert_eq!(d.to_string(), text.clone());
            prop_assert_eq!(Digest::parse(&d.to_string()).unwrap(), d.clone());
            prop_assert_eq!(format!("{}:{}", d.algorithm(), d.encoded()), text);
        }
    }

    #[test]
    fn versions_round_trip_and_bumps_never_go_back(
        major in any::<u64>(), minor in any::<u64>(),
        patch in prop_oneof![any::<u64>(), Just(u64::MAX), Just(0)],
        revision in prop::option::of(prop_oneof![any::<u64>(), Just(u64::MAX)]),
    ) {
        let v = Version { major, minor, patch, revision };
        prop_assert_eq!(Version::parse(&v.to_string()).unwrap(), v);
        prop_assert!(v.next_patch() >= v);
        prop_assert!(v.next_revision() >= v);
    }

    #[test]
    fn version_text_never_panics(text in "[0-9.r-]{0,30}|\\PC{0,20}") {
        if let Ok(v) = Version::parse(&text) {
            prop_assert_eq!(Version::parse(&v.to_string()).unwrap(), v);
        }
    }

    #[test]
    fn pin_keeps_lines_and_keywords(text in dockerfile_lines()) {
        let Ok(df) = Dockerfile::parse(&text, &BTreeMap::new()) else {
            return Ok(());
        };
        let digest = Digest::parse(DIGEST).unwrap();
        let pins = df.bases().into_iter().map(|b| (b, digest.clone())).collect();
        let pinned = df.pin(&text, &pins);
        prop_assert_eq!(pinned.lines().count(), text.lines().count());
        let again = Dockerfile::parse(&pinned, &BTreeMap::new()).unwrap();
        let keywords = |d: &Dockerfile| {
            d.instructions.iter().map(|i| (i.line, i.keyword.clone())).collect::<Vec<_>>()
        };
        prop_assert_eq!(keywords(&again), keywords(&df));
        for b in again.bases() {
            prop_assert_eq!(b.digest(), Some(&digest));
        }
    }

    #[test]
    fn shell_words_and_substitution_never_panic(
        text in "([a-zA-Z_ \"'\\\\`$={}:+-]|\\$\\{|:-|:\\+){0,40}",
        escape in prop::sample::select(vec!['\\', '`']),
    ) {
        let vars: HashMap<String, String> =
            [("A".to_owned(), "x".to_owned()), ("E".to_owned(), String::new())].into();
        let _ = split_words(&text, escape);
        let _ = substitute(&text, &vars, escape);
    }

    #[test]
    fn config_values_never_panic(text in "[0-9*/,?LW#A-Za-z -]{0,30}|\\PC{0,20}") {
        let _ = CronSpec::parse(&text);
        let _ = TagTemplate::try_from(text.clone());
        let _ = ImageName::try_from(text.clone());
        let _ = Repository::try_from(text.clone());
    }

    #[test]
    fn durations_round_trip(text in "([0-9]{1,20}(ms|s|m|h|d|x)?){1,3}|\\PC{0,10}") {
        if let Ok(d) = ConfigDuration::parse(&text) {
            prop_assert_eq!(ConfigDuration::parse(&d.to_string()).unwrap(), d);
        }
    }
}
