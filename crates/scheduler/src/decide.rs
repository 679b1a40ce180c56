//! Staleness: whether an image must be built, and as which version.

use std::collections::BTreeMap;

use rebased_core::config::{Bump, SourceBump};
use rebased_core::{Digest, Trigger, Version};

/// An image's inputs: each base's digest and, for a base that is an index,
/// the child digests of the platforms the image builds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// Base reference -> digest (the index digest for an index).
    pub digests: BTreeMap<String, Digest>,
    /// Base reference -> platform -> child digest (only the image's platforms).
    pub platforms: BTreeMap<String, BTreeMap<String, Digest>>,
    /// The source's revision: the commit of a git context, the content
    /// hash of a watched local one; `None` for a local context not watched.
    pub source: Option<String>,
}

impl Inputs {
    /// Inputs without platform detail.
    pub fn from_digests(digests: BTreeMap<String, Digest>) -> Self {
        Self {
            digests,
            platforms: BTreeMap::new(),
            source: None,
        }
    }

    /// Whether an image built from `self` is still fresh with `now`: the
    /// same source and the same bases ([`Inputs::same_bases_as`]).
    pub fn same_as(&self, now: &Inputs) -> bool {
        self.source == now.source && self.same_bases_as(now)
    }

    /// The same bases, and for each, the same child digests of the image's
    /// platforms when both sides know them, else the same digest.
    pub fn same_bases_as(&self, now: &Inputs) -> bool {
        if self.digests.len() != now.digests.len() {
            return false;
        }
        now.digests.iter().all(|(base, digest)| {
            let Some(before) = self.digests.get(base) else {
                return false;
            };
            match (self.platforms.get(base), now.platforms.get(base)) {
                (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() => a == b,
                _ => before == digest,
            }
        })
    }
}

/// Keeps the entries of `all` (platform -> digest) that `wanted` platforms
/// select: `linux/arm64` selects `linux/arm64` and `linux/arm64/v8`.
pub fn select_platforms(
    all: &BTreeMap<String, Digest>,
    wanted: &[String],
) -> BTreeMap<String, Digest> {
    all.iter()
        .filter(|(k, _)| {
            wanted.iter().any(|w| {
                *k == w
                    || k.strip_prefix(w.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The platforms whose child digest differs between `before` and `now`
/// (both known), as `platform: before -> after`; a platform new in `now`
/// reads `platform: (none) -> after`.
fn moved_children(
    before: Option<&BTreeMap<String, Digest>>,
    now: Option<&BTreeMap<String, Digest>>,
) -> Vec<String> {
    let (Some(before), Some(now)) = (before, now) else {
        return Vec::new();
    };
    if before.is_empty() {
        return Vec::new();
    }
    now.iter()
        .filter(|(p, d)| before.get(*p) != Some(*d))
        .map(|(p, d)| match before.get(p) {
            Some(b) => format!("{p}: {b} -> {d}"),
            None => format!("{p}: (none) -> {d}"),
        })
        .collect()
}

/// What an image was last published as.
#[derive(Debug, Clone, Copy)]
pub struct Published<'a> {
    /// The current version (what the floating tags point at).
    pub version: &'a Version,
    /// What it was built from.
    pub inputs: &'a Inputs,
    /// The highest version ever published (above `version` after a
    /// rollback): the next version is bumped from it, so no version is reused.
    pub highest: &'a Version,
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
    /// For an index base: the platforms (of the image's) whose child
    /// digest moved, `linux/arm64: sha256:... -> sha256:...`.
    pub moved: Vec<String>,
}

/// The source's move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceChange {
    /// The revision the current version was built from (`None`: none recorded).
    pub before: Option<String>,
    /// The revision now.
    pub after: String,
}

/// How the next version is made: `base` after a base change, `source`
/// after a source change, the larger of the two when both changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bumps {
    /// `bump`.
    pub base: Bump,
    /// `source_bump`.
    pub source: SourceBump,
}

impl From<Bump> for Bumps {
    fn from(base: Bump) -> Self {
        Self {
            base,
            source: SourceBump::default(),
        }
    }
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
        /// The source, before and after, when the image has one
        /// (unchanged included).
        source: Option<SourceChange>,
    },
}

/// Decides whether an image must be built.
///
/// With nothing published, `first` is built. Otherwise the image is stale
/// exactly when the set of bases or any base digest differs from what the
/// current version was built from; then `bump` of the current version is
/// built. A `Manual` trigger builds the next version even when nothing
/// changed. `now` must hold a digest for every base of the image.
///
/// A changed source bumps by `bumps.source`, a changed base by
/// `bumps.base`, both at once by the larger.
pub fn decide(
    published: Option<Published<'_>>,
    first: &Version,
    bumps: impl Into<Bumps>,
    now: &Inputs,
    trigger: Trigger,
) -> Decision {
    let bumps = bumps.into();
    let source_from = |before: Option<&String>| {
        now.source.as_ref().map(|after| SourceChange {
            before: before.cloned(),
            after: after.clone(),
        })
    };
    let changes_from = |before: &Inputs| -> Vec<Change> {
        now.digests
            .iter()
            .map(|(r, d)| Change {
                reference: r.clone(),
                before: before.digests.get(r).cloned(),
                after: d.clone(),
                moved: moved_children(before.platforms.get(r), now.platforms.get(r)),
            })
            .collect()
    };
    match published {
        None => Decision::Build {
            version: *first,
            supersedes: None,
            trigger: Trigger::Initial,
            changes: changes_from(&Inputs::default()),
            source: source_from(None),
        },
        Some(p) if p.inputs.same_as(now) && trigger != Trigger::Manual => Decision::Fresh,
        Some(p) => {
            let from = p.highest.max(p.version);
            let source_moved = p.inputs.source != now.source;
            let bases_moved = !p.inputs.same_bases_as(now);
            let version = match (source_moved, bases_moved) {
                (true, false) => bumps.source.next(from),
                (true, true) => bumps.source.max(bumps.base.into()).next(from),
                (false, _) => bumps.base.next(from),
            };
            Decision::Build {
                version,
                supersedes: Some(*p.version),
                trigger,
                changes: changes_from(p.inputs),
                source: source_from(p.inputs.source.as_ref()),
            }
        }
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

    fn bases(pairs: &[(&str, char)]) -> Inputs {
        Inputs::from_digests(pairs.iter().map(|(r, c)| (r.to_string(), d(*c))).collect())
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
                ..
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
            inputs: &built,
            highest: &cur,
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
            inputs: &built,
            highest: &cur,
        };
        let Decision::Build {
            version,
            supersedes,
            trigger,
            changes,
            ..
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
            inputs: &built,
            highest: &cur,
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
    fn only_the_image_platforms_count_for_an_index() {
        let plat = |amd: char, arm: char| -> BTreeMap<String, Digest> {
            BTreeMap::from([
                ("linux/amd64".to_owned(), d(amd)),
                ("linux/arm64/v8".to_owned(), d(arm)),
            ])
        };
        let wanted = vec!["linux/amd64".to_owned()];
        let inputs = |index: char, amd: char, arm: char| Inputs {
            digests: BTreeMap::from([("b".to_owned(), d(index))]),
            platforms: BTreeMap::from([(
                "b".to_owned(),
                select_platforms(&plat(amd, arm), &wanted),
            )]),
            source: None,
        };
        let built = inputs('1', 'a', 'c');
        let cur = v("1.0.0");
        let p = Published {
            version: &cur,
            inputs: &built,
            highest: &cur,
        };
        // arm64 moved, index digest moved: still fresh for an amd64-only image
        assert_eq!(
            decide(
                Some(p),
                &cur,
                Bump::Patch,
                &inputs('2', 'a', 'e'),
                Trigger::Poll
            ),
            Decision::Fresh
        );
        // amd64 moved: stale
        assert!(matches!(
            decide(
                Some(p),
                &cur,
                Bump::Patch,
                &inputs('3', 'b', 'e'),
                Trigger::Poll
            ),
            Decision::Build { .. }
        ));
        // a variant is selected by its platform
        let sel = select_platforms(&plat('a', 'c'), &["linux/arm64".to_owned()]);
        assert_eq!(sel.keys().collect::<Vec<_>>(), ["linux/arm64/v8"]);
    }

    #[test]
    fn a_moved_child_is_named_in_the_change() {
        let wanted = vec!["linux/amd64".to_owned(), "linux/arm64".to_owned()];
        let inputs = |index: char, amd: char, arm: char| Inputs {
            digests: BTreeMap::from([("b".to_owned(), d(index))]),
            platforms: BTreeMap::from([(
                "b".to_owned(),
                select_platforms(
                    &BTreeMap::from([
                        ("linux/amd64".to_owned(), d(amd)),
                        ("linux/arm64".to_owned(), d(arm)),
                        ("linux/s390x".to_owned(), d(index)),
                    ]),
                    &wanted,
                ),
            )]),
            source: None,
        };
        let built = inputs('1', 'a', 'c');
        let cur = v("1.0.0");
        let p = Published {
            version: &cur,
            inputs: &built,
            highest: &cur,
        };
        let Decision::Build { changes, .. } = decide(
            Some(p),
            &cur,
            Bump::Patch,
            &inputs('2', 'a', 'e'),
            Trigger::Poll,
        ) else {
            panic!("the arm64 child moved: stale");
        };
        assert_eq!(
            changes[0].moved,
            [format!("linux/arm64: {} -> {}", d('c'), d('e'))]
        );
        // A platform the image does not build moved (and the index): fresh.
        assert_eq!(
            decide(
                Some(p),
                &cur,
                Bump::Patch,
                &inputs('3', 'a', 'c'),
                Trigger::Poll
            ),
            Decision::Fresh
        );
        // The first version names no move.
        let Decision::Build { changes, .. } =
            decide(None, &cur, Bump::Patch, &built, Trigger::Poll)
        else {
            panic!("first build");
        };
        assert!(changes[0].moved.is_empty());
    }

    #[test]
    fn after_a_rollback_the_next_version_follows_the_highest() {
        let built = bases(&[("a", '1')]);
        let now = bases(&[("a", '2')]);
        let cur = v("1.0.0");
        let highest = v("1.0.5");
        let p = Published {
            version: &cur,
            inputs: &built,
            highest: &highest,
        };
        let Decision::Build {
            version,
            supersedes,
            ..
        } = decide(Some(p), &v("1.0.0"), Bump::Patch, &now, Trigger::Poll)
        else {
            panic!("must build");
        };
        assert_eq!((version, supersedes), (v("1.0.6"), Some(v("1.0.0"))));
    }

    #[test]
    fn revision_bump() {
        let built = bases(&[("a", '1')]);
        let now = bases(&[("a", '2')]);
        let cur = v("1.4.2");
        let p = Published {
            version: &cur,
            inputs: &built,
            highest: &cur,
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
            inputs: &built,
            highest: &cur,
        };
        assert!(matches!(
            decide(Some(p), &v("1.0.0"), Bump::Patch, &now, Trigger::Poll),
            Decision::Build { .. }
        ));
    }

    #[test]
    fn a_source_change_bumps_source_bump_and_both_bump_the_larger() {
        let with = |base: char, rev: &str| Inputs {
            source: Some(rev.to_owned()),
            ..bases(&[("a", base)])
        };
        let built = with('1', "c1");
        let cur = v("1.4.2");
        let p = Published {
            version: &cur,
            inputs: &built,
            highest: &cur,
        };
        let bumps = |base, source| Bumps { base, source };
        let version = |now: &Inputs, b: Bumps| match decide(Some(p), &cur, b, now, Trigger::Poll) {
            Decision::Build {
                version, source, ..
            } => (version, source),
            Decision::Fresh => panic!("must build"),
        };
        assert_eq!(
            decide(Some(p), &cur, Bump::Patch, &with('1', "c1"), Trigger::Poll),
            Decision::Fresh
        );
        let (ver, source) = version(&with('1', "c2"), bumps(Bump::Patch, SourceBump::Minor));
        assert_eq!(ver, v("1.5.0"));
        assert_eq!(
            source,
            Some(SourceChange {
                before: Some("c1".to_owned()),
                after: "c2".to_owned()
            })
        );
        assert_eq!(
            version(&with('2', "c1"), bumps(Bump::Patch, SourceBump::Minor)).0,
            v("1.4.3")
        );
        assert_eq!(
            version(&with('2', "c2"), bumps(Bump::Revision, SourceBump::Minor)).0,
            v("1.5.0")
        );
        assert_eq!(
            version(&with('2', "c2"), bumps(Bump::Patch, SourceBump::Revision)).0,
            v("1.4.3")
        );
        assert_eq!(
            version(&with('1', "c2"), bumps(Bump::Patch, SourceBump::Revision)).0,
            v("1.4.2-r1")
        );
    }
}
