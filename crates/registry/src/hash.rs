//! Content hashes for the digest algorithms we can verify.

use rebased_core::digest::hex;
use rebased_core::Digest;
use sha2::Digest as _;

/// A running content hash for a digest's algorithm.
pub(crate) enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    /// A hasher for `digest`'s algorithm; `None` for algorithms we cannot
    /// compute (anything but sha256 and sha512).
    pub(crate) fn for_digest(digest: &Digest) -> Option<Self> {
        match digest.algorithm() {
            "sha256" => Some(Self::Sha256(sha2::Sha256::new())),
            "sha512" => Some(Self::Sha512(sha2::Sha512::new())),
            _ => None,
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
        }
    }

    /// `algorithm:hex` of everything hashed.
    pub(crate) fn finish(self) -> String {
        match self {
            Self::Sha256(h) => Digest::of_sha256(h).to_string(),
            Self::Sha512(h) => format!("sha512:{}", hex(&h.finalize())),
        }
    }
}
