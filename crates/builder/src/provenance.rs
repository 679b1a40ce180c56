//! The provenance annotations every published image carries.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use rebased_core::{Digest, ImageRef, Trigger, Version};
use serde_json::Value;

/// `org.opencontainers.image.version`.
pub const VERSION: &str = "org.opencontainers.image.version";
/// `org.opencontainers.image.created`.
pub const CREATED: &str = "org.opencontainers.image.created";
/// `org.opencontainers.image.base.name`.
pub const BASE_NAME: &str = "org.opencontainers.image.base.name";
/// `org.opencontainers.image.base.digest`.
pub const BASE_DIGEST: &str = "org.opencontainers.image.base.digest";
/// `io.rebased.bases`: JSON map of every base reference to its digest.
pub const BASES: &str = "io.rebased.bases";
/// `io.rebased.supersedes`: the version this one replaces.
pub const SUPERSEDES: &str = "io.rebased.supersedes";
/// `io.rebased.trigger`: what caused the build.
pub const TRIGGER: &str = "io.rebased.trigger";
/// `io.rebased.platforms`: for index bases, base -> platform -> child digest.
pub const PLATFORMS: &str = "io.rebased.platforms";
/// `org.opencontainers.image.source`: a git context's URL (without credentials).
pub const SOURCE: &str = "org.opencontainers.image.source";
/// `org.opencontainers.image.revision`: a git context's commit.
pub const REVISION: &str = "org.opencontainers.image.revision";
/// `io.rebased.context`: a local context's content hash (after `.dockerignore`).
pub const CONTEXT: &str = "io.rebased.context";

/// What a version was built from besides its bases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'a> {
    /// A git repository's commit.
    Git {
        /// The URL without credentials.
        url: &'a str,
        /// The commit.
        commit: &'a str,
    },
    /// A local context's content hash.
    Local {
        /// `sha256:...`.
        hash: &'a str,
    },
}

/// Everything a version is annotated with.
#[derive(Debug, Clone)]
pub struct Provenance<'a> {
    /// The version.
    pub version: &'a Version,
    /// Build time.
    pub created: DateTime<Utc>,
    /// The base of the final stage.
    pub primary: Option<(&'a ImageRef, &'a Digest)>,
    /// Every base and its digest.
    pub bases: &'a BTreeMap<ImageRef, Digest>,
    /// Child digests of index bases, for the image's platforms.
    pub platforms: &'a BTreeMap<String, BTreeMap<String, Digest>>,
    /// The version replaced.
    pub supersedes: Option<&'a Version>,
    /// What caused the build.
    pub trigger: Trigger,
    /// The source, when known.
    pub source: Option<Source<'a>>,
}

impl Provenance<'_> {
    /// The annotation map.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        let mut a = annotations(
            self.version,
            self.created,
            self.primary,
            self.bases,
            self.supersedes,
        );
        a.insert(TRIGGER.to_owned(), self.trigger.to_string());
        match self.source {
            Some(Source::Git { url, commit }) => {
                a.insert(SOURCE.to_owned(), url.to_owned());
                a.insert(REVISION.to_owned(), commit.to_owned());
            }
            Some(Source::Local { hash }) => {
                a.insert(CONTEXT.to_owned(), hash.to_owned());
            }
            None => {}
        }
        if !self.platforms.is_empty() {
            let platforms = self.platforms.iter().map(|(base, children)| {
                let children = children
                    .iter()
                    .map(|(p, d)| (p.clone(), Value::String(d.to_string())));
                (base.clone(), Value::Object(children.collect()))
            });
            a.insert(
                PLATFORMS.to_owned(),
                Value::Object(platforms.collect()).to_string(),
            );
        }
        a
    }
}

/// What the registry alone says about a version (from its annotations).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// `io.rebased.bases`, when present and well-formed.
    pub bases: Option<BTreeMap<String, Digest>>,
    /// `io.rebased.platforms`.
    pub platforms: BTreeMap<String, BTreeMap<String, Digest>>,
    /// `org.opencontainers.image.created`.
    pub created: Option<DateTime<Utc>>,
    /// `io.rebased.supersedes`.
    pub supersedes: Option<Version>,
    /// `io.rebased.trigger`.
    pub trigger: Option<Trigger>,
    /// The source revision: `org.opencontainers.image.revision`, else
    /// `io.rebased.context`.
    pub source: Option<String>,
}

/// Reads the annotations back; anything malformed is treated as absent.
pub fn recorded(annotations: &BTreeMap<String, String>) -> Recorded {
    Recorded {
        bases: bases_from(annotations),
        platforms: annotations
            .get(PLATFORMS)
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or_default(),
        created: annotations
            .get(CREATED)
            .and_then(|c| DateTime::parse_from_rfc3339(c).ok())
            .map(|c| c.with_timezone(&Utc)),
        supersedes: annotations
            .get(SUPERSEDES)
            .and_then(|v| Version::parse(v).ok()),
        trigger: annotations
            .get(TRIGGER)
            .and_then(|t| serde_json::from_value(Value::String(t.clone())).ok()),
        source: annotations
            .get(REVISION)
            .or_else(|| annotations.get(CONTEXT))
            .filter(|r| !r.is_empty() && r.len() <= 128)
            .cloned(),
    }
}

/// Builds the annotation map. `primary` is the base of the final stage
/// (`base.name`/`base.digest`); `bases` holds every base and its digest.
pub fn annotations(
    version: &Version,
    created: DateTime<Utc>,
    primary: Option<(&ImageRef, &Digest)>,
    bases: &BTreeMap<ImageRef, Digest>,
    supersedes: Option<&Version>,
) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert(VERSION.to_owned(), version.to_string());
    a.insert(
        CREATED.to_owned(),
        created.to_rfc3339_opts(SecondsFormat::Secs, true),
    );
    if let Some((name, digest)) = primary {
        a.insert(BASE_NAME.to_owned(), name.to_string());
        a.insert(BASE_DIGEST.to_owned(), digest.to_string());
    }
    // A JSON object written as `Value` (whose text cannot fail), keys in
    // the map's order.
    let map: serde_json::Map<String, Value> = bases
        .iter()
        .map(|(r, d)| (r.to_string(), Value::String(d.to_string())))
        .collect();
    a.insert(BASES.to_owned(), Value::Object(map).to_string());
    if let Some(prev) = supersedes {
        a.insert(SUPERSEDES.to_owned(), prev.to_string());
    }
    a
}

/// Reads `io.rebased.bases` back; `None` when absent or not a map of digests.
pub fn bases_from(annotations: &BTreeMap<String, String>) -> Option<BTreeMap<String, Digest>> {
    serde_json::from_str(annotations.get(BASES)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_bases() {
        let r = ImageRef::parse("127.0.0.1:5000/base").expect("valid");
        let d = Digest::parse(&format!("sha256:{}", "a".repeat(64))).expect("valid");
        let bases = BTreeMap::from([(r.clone(), d.clone())]);
        let v = Version::parse("1.0.1").expect("valid");
        let prev = Version::parse("1.0.0").expect("valid");
        let a = annotations(&v, Utc::now(), Some((&r, &d)), &bases, Some(&prev));
        assert_eq!(a[VERSION], "1.0.1");
        assert_eq!(a[BASE_NAME], "127.0.0.1:5000/base:latest");
        assert_eq!(a[BASE_DIGEST], d.to_string());
        assert_eq!(a[SUPERSEDES], "1.0.0");
        assert!(a[CREATED].ends_with('Z'));
        let back = bases_from(&a).expect("decodes");
        assert_eq!(back.get("127.0.0.1:5000/base:latest"), Some(&d));
    }

    #[test]
    fn recorded_reads_everything_back() {
        let r = ImageRef::parse("127.0.0.1:5000/base").expect("valid");
        let d = Digest::parse(&format!("sha256:{}", "a".repeat(64))).expect("valid");
        let bases = BTreeMap::from([(r.clone(), d.clone())]);
        let platforms = BTreeMap::from([(
            r.to_string(),
            BTreeMap::from([("linux/amd64".to_owned(), d.clone())]),
        )]);
        let v = Version::parse("1.0.1").expect("valid");
        let prev = Version::parse("1.0.0").expect("valid");
        let p = Provenance {
            version: &v,
            created: Utc::now(),
            primary: Some((&r, &d)),
            bases: &bases,
            platforms: &platforms,
            supersedes: Some(&prev),
            trigger: Trigger::Cascade,
            source: Some(Source::Git {
                url: "https://git.example.com/a.git",
                commit: "0123456789abcdef0123456789abcdef01234567",
            }),
        };
        // The exact text earlier versions wrote (compact, keys sorted):
        // ledger recovery reads these back from images already pushed.
        let a = p.annotations();
        let hex = "a".repeat(64);
        assert_eq!(
            a[BASES],
            format!(r#"{{"127.0.0.1:5000/base:latest":"sha256:{hex}"}}"#)
        );
        assert_eq!(
            a[PLATFORMS],
            format!(r#"{{"127.0.0.1:5000/base:latest":{{"linux/amd64":"sha256:{hex}"}}}}"#)
        );
        assert_eq!(
            a[BASES],
            serde_json::to_string(&BTreeMap::from([(r.to_string(), d.to_string())]))
                .unwrap_or_default()
        );
        let back = recorded(&a);
        assert_eq!(back.supersedes, Some(prev));
        assert_eq!(back.trigger, Some(Trigger::Cascade));
        assert_eq!(back.platforms, platforms);
        assert_eq!(a[SOURCE], "https://git.example.com/a.git");
        assert_eq!(
            back.source.as_deref(),
            Some("0123456789abcdef0123456789abcdef01234567")
        );
        assert!(back.created.is_some());
        assert_eq!(back.bases.map(|b| b.len()), Some(1));
        // foreign images: nothing
        assert_eq!(recorded(&BTreeMap::new()), Recorded::default());
        let junk = BTreeMap::from([
            (BASES.to_owned(), "{not json".to_owned()),
            (SUPERSEDES.to_owned(), "x".to_owned()),
        ]);
        assert_eq!(recorded(&junk), Recorded::default());
    }
}
