//! Staleness: whether an image must be built, and as which version.

use std::collections::BTreeMap;

use rebased_core::config::Bump;
use rebased_core::{Digest, Trigger, Version};

/// What an image was last published as.
#[derive(Debug, Clone, Copy)]
pub struct Published<'a> {
    /// The current version.
    pub version: &'a Version,
    /// The base digests it was built from.
    pub bases: &'a BTreeMap<String, Digest>,
}

/// One base's move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The base reference.
    pub reference: String,
    /// The digest the current version was built from (`None`: not a base then).
    pub before: Option<Digest>,
    /// The digest now.
    pub after: Digest,
}

/// The verdict for one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Built from the current digests: nothing to do.
    Fresh,
    /// Build `version`.
    Build {
        /// The version to publish.
        version: Version,
        /// The version it replaces.
        supersedes: Option<Version>,
        /// Why: `Initial` when nothing was published yet, else the trigger given.
        trigger: Trigger,
        /// Every base, before and after (unchanged ones included).
        changes: Vec<Change>,
    },
}

/// Decides whether an image must be built.
///
/// With nothing published, `first` is built. Otherwise the image is stale
/// exactly when the set of bases or any base digest differs from what the
/// current version was built from; then `bump` of the current version is
/// built. A `Manual` trigger builds the next version even when nothing
/// changed. `now` must hold a digest for every base of the image.
pub fn decide(
    published: Option<Published<'_>>,
    first: &Version,
    bump: Bump,
    now: &BTreeMap<String, Digest>,
    trigger: Trigger,
) -> Decision {
    let changes_from = |before: &BTreeMap<String, Digest>| -> Vec<Change> {
        now.iter()
            .map(|(r, d)| Change {
                reference: r.clone(),
                before: before.get(r).cloned(),
                after: d.clone(),
            })
            .collect()
    };
    match published {
        None => Decision::Build {
            version: *first,
            supersedes: None,
            trigger: Trigger::Initial,
            changes: changes_from(&BTreeMap::new()),
        },
        Some(p) if p.bases == now && trigger != Trigger::Manual => Decision::Fresh,
        Some(p) => Decision::Build {
            version: bump.next(p.version),
            supersedes: Some(*p.version),
            trigger,
            changes: changes_from(p.bases),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).expect("valid")
    }

    fn v(s: &str) -> Version {
        Version::parse(s).expect("valid")
    }

    fn bases(pairs: &[(&str, char)]) -> BTreeMap<String, Digest> {
        pairs.iter().map(|(r, c)| (r.to_string(), d(*c))).collect()
    }

    #[test]
    fn nothing_published_builds_first_version() {
        let now = bases(&[("b", '1')]);
        match decide(None, &v("1.0.0"), Bump::Patch, &now, Trigger::Poll) {
            Decision::Build {
                version,
                supersedes,
                trigger,
                changes,
            } => {
                assert_eq!(version, v("1.0.0"));
                assert_eq!(supersedes, None);
                assert_eq!(trigger, Trigger::Initial);
                assert_eq!(changes[0].before, None);
            }
            Decision::Fresh => panic!("must build"),
        }
    }

    #[test]
    fn same_digests_are_fresh() {
        let built = bases(&[("a", '1'), ("b", '2')]);
        let cur = v("1.0.3");
        let p = Published {
            version: &cur,
            bases: &built,
        };
        assert_eq!(
            decide(
                Some(p),
                &v("1.0.0"),
                Bump::Patch,
                &built.clone(),
                Trigger::Poll
            ),
            Decision::Fresh
        );
    }

    #[test]
    fn changed_digest_builds_next_patch_with_before_and_after() {
        let built = bases(&[("a", '1'), ("b", '2')]);
        let now = bases(&[("a", '1'), ("b", '3')]);
        let cur = v("1.0.3");
        let p = Published {
            version: &cur,
            bases: &built,
        };
        let Decision::Build {
            version,
            supersedes,
            trigger,
            changes,
        } = decide(Some(p), &v("1.0.0"), Bump::Patch, &now, Trigger::Webhook)
        else {
            panic!("must build");
        };
        assert_eq!(version, v("1.0.4"));
        assert_eq!(supersedes, Some(v("1.0.3")));
        assert_eq!(trigger, Trigger::Webhook);
        let b = changes
            .iter()
            .find(|c| c.reference == "b")
            .expect("b listed");
        assert_eq!((b.before.clone(), b.after.clone()), (Some(d('2')), d('3')));
    }

    #[test]
    fn manual_builds_even_when_fresh() {
        let built = bases(&[("a", '1')]);
        let cur = v("1.0.3");
        let p = Published {
            version: &cur,
            bases: &built,
        };
        let Decision::Build {
            version, trigger, ..
        } = decide(Some(p), &v("1.0.0"), Bump::Patch, &built, Trigger::Manual)
        else {
            panic!("must build");
        };
        assert_eq!((version, trigger), (v("1.0.4"), Trigger::Manual));
    }

    #[test]
    fn revision_bump() {
        let built = bases(&[("a", '1')]);
        let now = bases(&[("a", '2')]);
        let cur = v("1.4.2");
        let p = Published {
            version: &cur,
            bases: &built,
        };
        let Decision::Build { version, .. } =
            decide(Some(p), &v("1.0.0"), Bump::Revision, &now, Trigger::Poll)
        else {
            panic!("must build");
        };
        assert_eq!(version, v("1.4.2-r1"));
    }

    #[test]
    fn a_new_base_is_a_change() {
        let built = bases(&[("a", '1')]);
        let now = bases(&[("a", '1'), ("c", '5')]);
        let cur = v("2.0.0");
        let p = Published {
            version: &cur,
            bases: &built,
        };
        assert!(matches!(
            decide(Some(p), &v("1.0.0"), Bump::Patch, &now, Trigger::Poll),
            Decision::Build { .. }
        ));
    }
}
