//! The provenance annotations every published image carries.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use rebased_core::{Digest, ImageRef, Version};

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
    let map: BTreeMap<String, String> = bases
        .iter()
        .map(|(r, d)| (r.to_string(), d.to_string()))
        .collect();
    a.insert(
        BASES.to_owned(),
        serde_json::to_string(&map)
            .unwrap_or_else(|_| unreachable!("a map of strings always serialises")),
    );
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
}
