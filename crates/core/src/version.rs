//! Semantic versions of published images and floating tag templates.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A published version: `MAJOR.MINOR.PATCH`, optionally `-rN` (`bump = "revision"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Version {
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
    /// Patch number.
    pub patch: u64,
    /// Revision (`-rN`); `None` sorts before any revision.
    pub revision: Option<u64>,
}

/// Why a string is not a version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid version {input:?}: expected MAJOR.MINOR.PATCH or MAJOR.MINOR.PATCH-rN")]
pub struct VersionError {
    /// The rejected input.
    pub input: String,
}

impl Version {
    /// Parses `1.4.2` or `1.4.2-r3`. Leading zeros and other suffixes are refused.
    pub fn parse(input: &str) -> Result<Self, VersionError> {
        let err = || VersionError {
            input: input.to_owned(),
        };
        let num = |s: &str| -> Result<u64, VersionError> {
            if s.is_empty()
                || !s.bytes().all(|b| b.is_ascii_digit())
                || (s.len() > 1 && s.starts_with('0'))
            {
                return Err(err());
            }
            s.parse().map_err(|_| err())
        };
        let (core, revision) = match input.split_once('-') {
            Some((core, rev)) => (core, Some(num(rev.strip_prefix('r').ok_or_else(err)?)?)),
            None => (input, None),
        };
        let mut parts = core.split('.');
        let (Some(a), Some(b), Some(c), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err());
        };
        Ok(Self {
            major: num(a)?,
            minor: num(b)?,
            patch: num(c)?,
            revision,
        })
    }

    /// `1.4.2` -> `1.4.3` (any revision dropped).
    ///
    /// A patch of `u64::MAX` (a tag anyone may push) does not overflow: the
    /// version stays as it is, whose tag exists, so the build is refused
    /// instead of publishing a lower version.
    pub fn next_patch(&self) -> Self {
        match self.patch.checked_add(1) {
            Some(patch) => Self {
                patch,
                revision: None,
                ..*self
            },
            None => *self,
        }
    }

    /// `1.4.2` -> `1.5.0` (any revision dropped; saturating, as
    /// [`Version::next_patch`]).
    pub fn next_minor(&self) -> Self {
        match self.minor.checked_add(1) {
            Some(minor) => Self {
                minor,
                patch: 0,
                revision: None,
                ..*self
            },
            None => *self,
        }
    }

    /// `1.4.2` -> `1.4.2-r1` -> `1.4.2-r2` (saturating, as
    /// [`Version::next_patch`]).
    pub fn next_revision(&self) -> Self {
        Self {
            revision: Some(self.revision.map_or(1, |r| r.saturating_add(1))),
            ..*self
        }
    }

    /// Renders a floating tag template: `{major}`, `{minor}`, `{patch}` are
    /// replaced by this version's numbers; anything else is literal.
    pub fn render(&self, template: &str) -> String {
        template
            .replace("{major}", &self.major.to_string())
            .replace("{minor}", &self.minor.to_string())
            .replace("{patch}", &self.patch.to_string())
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if let Some(r) = self.revision {
            write!(f, "-r{r}")?;
        }
        Ok(())
    }
}

impl FromStr for Version {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Version {
    type Error = VersionError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Version> for String {
    fn from(v: Version) -> Self {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).expect(s)
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!(v("1.4.2").to_string(), "1.4.2");
        assert_eq!(v("1.4.2-r7").to_string(), "1.4.2-r7");
        assert_eq!(v("0.0.0").patch, 0);
    }

    #[test]
    fn refuses_non_versions() {
        for bad in [
            "",
            "1",
            "1.2",
            "1.2.3.4",
            "v1.2.3",
            "01.2.3",
            "1.2.3-rc1",
            "1.2.3-r",
            "1.2.x",
            "latest",
        ] {
            assert!(Version::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn bumps() {
        assert_eq!(v("1.4.2").next_patch(), v("1.4.3"));
        assert_eq!(v("1.4.2-r3").next_patch(), v("1.4.3"));
        assert_eq!(v("1.4.2").next_revision(), v("1.4.2-r1"));
        assert_eq!(v("1.4.2-r1").next_revision(), v("1.4.2-r2"));
    }

    /// `0.0.18446744073709551615`, a tag anyone can push, made the bump
    /// overflow: a panic in debug builds, a wrap to `0.0.0` in release.
    #[test]
    fn next_version_does_not_overflow_at_u64_max() {
        let max = u64::MAX;
        let top = v(&format!("1.2.{max}"));
        assert_eq!(top.next_patch(), top);
        // Dropping the revision would go back: 1.2.MAX < 1.2.MAX-r3.
        let top = v(&format!("1.2.{max}-r3"));
        assert_eq!(top.next_patch(), top);
        let top = v(&format!("1.2.3-r{max}"));
        assert_eq!(top.next_revision(), top);
    }

    #[test]
    fn orders_numerically() {
        assert!(v("1.10.0") > v("1.9.9"));
        assert!(v("1.4.2-r1") > v("1.4.2"));
        assert!(v("1.4.3") > v("1.4.2-r9"));
    }

    #[test]
    fn renders_templates() {
        let x = v("1.4.2");
        assert_eq!(x.render("{major}.{minor}"), "1.4");
        assert_eq!(x.render("{major}"), "1");
        assert_eq!(x.render("v{major}.{minor}.{patch}-stable"), "v1.4.2-stable");
        assert_eq!(x.render("latest"), "latest");
    }
}
