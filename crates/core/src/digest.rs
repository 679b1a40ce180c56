//! Content digests (`algorithm:hex`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// A validated content digest such as `sha256:ee3a…`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {input:?}: {reason}")]
pub struct DigestError {
    /// The rejected input.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Digest {
    /// Parses and validates `algorithm:encoded`.
    ///
    /// `sha256` and `sha512` must carry 64 and 128 lowercase hex digits; other
    /// algorithms follow the OCI grammar (`[a-z0-9]+([+._-][a-z0-9]+)*`, then
    /// `[a-zA-Z0-9=_-]+`).
    pub fn parse(input: &str) -> Result<Self, DigestError> {
        let err = |reason| DigestError {
            input: input.to_owned(),
            reason,
        };
        let (algo, encoded) = input.split_once(':').ok_or_else(|| err("missing ':'"))?;
        if algo.is_empty() || encoded.is_empty() {
            return Err(err("empty algorithm or encoded part"));
        }
        if !algo
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
        {
            return Err(err("algorithm must be lowercase alphanumeric"));
        }
        let want_len = match algo {
            "sha256" => Some(64),
            "sha512" => Some(128),
            _ => None,
        };
        if let Some(len) = want_len {
            if encoded.len() != len {
                return Err(err("wrong length for the algorithm"));
            }
            if !encoded
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(err("encoded part must be lowercase hex"));
            }
        } else if !encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"=_-".contains(&b))
        {
            return Err(err("invalid character in encoded part"));
        }
        Ok(Self(input.to_owned()))
    }

    /// The sha256 digest of `data`.
    pub fn sha256(data: &[u8]) -> Self {
        Self::of_sha256(Sha256::new_with_prefix(data))
    }

    /// The digest of everything fed to `hasher`.
    pub fn of_sha256(hasher: Sha256) -> Self {
        // 64 lowercase hex digits: valid by construction.
        Self(format!("sha256:{}", hex(&hasher.finalize())))
    }

    /// The full `algorithm:encoded` text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The algorithm part, e.g. `sha256`.
    pub fn algorithm(&self) -> &str {
        self.0.split_once(':').map(|(a, _)| a).unwrap_or_default()
    }

    /// The encoded part (the hex for sha256).
    pub fn encoded(&self) -> &str {
        self.0.split_once(':').map(|(_, e)| e).unwrap_or_default()
    }
}

/// `bytes` as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * bytes.len());
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> Self {
        d.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "ee3a7427e984f3d47ef6b31962b8255b59b97c4a79dc6804134da3986c55288a";

    #[test]
    fn sha256_of_known_inputs() {
        // sha256("") and sha256("abc"), as published in FIPS 180-2.
        assert_eq!(
            Digest::sha256(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut h = Sha256::new();
        h.update(b"a");
        h.update(b"bc");
        let d = Digest::of_sha256(h);
        assert_eq!(
            d.as_str(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Digest::parse(d.as_str()), Ok(d));
    }

    #[test]
    fn accepts_sha256() {
        let d = Digest::parse(&format!("sha256:{HEX}")).expect("valid");
        assert_eq!(d.algorithm(), "sha256");
        assert_eq!(d.encoded(), HEX);
    }

    #[test]
    fn rejects_bad_digests() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            ":abc",
            "sha256:abc",
            &format!("sha256:{}", HEX.to_uppercase()),
            &format!("SHA256:{HEX}"),
            &format!("sha256:{HEX}0"),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn serde_round_trip_validates() {
        let json = format!("\"sha256:{HEX}\"");
        let d: Digest = serde_json::from_str(&json).expect("valid");
        assert_eq!(serde_json::to_string(&d).expect("serialise"), json);
        assert!(serde_json::from_str::<Digest>("\"sha256:nothex\"").is_err());
    }
}
