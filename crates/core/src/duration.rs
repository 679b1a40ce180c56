//! Durations as the config writes them: `500ms`, `30s`, `5m`, `1h`, `1h30m`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A config duration; serialises back to the compact form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConfigDuration(pub Duration);

/// Why a string is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: write e.g. 500ms, 30s, 5m, 1h or 1h30m")]
pub struct DurationError {
    /// The rejected input.
    pub input: String,
}

impl ConfigDuration {
    /// Parses one or more `<number><unit>` pairs, units `ms`, `s`, `m`, `h`, `d`.
    pub fn parse(input: &str) -> Result<Self, DurationError> {
        let err = || DurationError {
            input: input.to_owned(),
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err());
        }
        let mut total = Duration::ZERO;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(err());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| err())?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let part = match unit {
                "ms" => Duration::from_millis(n),
                "s" => Duration::from_secs(n),
                "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(err)?),
                "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(err)?),
                "d" => Duration::from_secs(n.checked_mul(86_400).ok_or_else(err)?),
                _ => return Err(err()),
            };
            total = total.checked_add(part).ok_or_else(err)?;
        }
        Ok(Self(total))
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 != 0 && u64::try_from(ms).is_err() {
            // Too many milliseconds for one number `parse` reads back.
            write!(f, "{}s{}ms", ms / 1000, ms % 1000)
        } else if ms % 1000 != 0 {
            write!(f, "{ms}ms")
        } else if ms % 3_600_000 == 0 && ms > 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms % 60_000 == 0 && ms > 0 {
            write!(f, "{}m", ms / 60_000)
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

impl TryFrom<String> for ConfigDuration {
    type Error = DurationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<ConfigDuration> for String {
    fn from(d: ConfigDuration) -> Self {
        d.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        let p = |s| ConfigDuration::parse(s).expect(s).0;
        assert_eq!(p("500ms"), Duration::from_millis(500));
        assert_eq!(p("30s"), Duration::from_secs(30));
        assert_eq!(p("5m"), Duration::from_secs(300));
        assert_eq!(p("1h30m"), Duration::from_secs(5400));
        assert_eq!(p("0s"), Duration::ZERO);
    }

    #[test]
    fn refuses_garbage() {
        for bad in ["", "30", "s", "5 m", "1y", "-1s", "1.5s"] {
            assert!(ConfigDuration::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// `18446744073709551615s1ms` parsed, but printed as one number of
    /// milliseconds too big for `parse` to read back: a config written out
    /// (serde) did not load again.
    #[test]
    fn display_of_a_huge_duration_parses_back() {
        for s in ["18446744073709551615s1ms", "8092126544273195273s934ms"] {
            let d = ConfigDuration::parse(s).expect(s);
            assert_eq!(d.to_string(), s);
            assert_eq!(ConfigDuration::parse(&d.to_string()), Ok(d));
        }
    }

    #[test]
    fn displays_compactly() {
        for s in ["500ms", "30s", "5m", "1h"] {
            assert_eq!(ConfigDuration::parse(s).expect(s).to_string(), s);
        }
    }
}
