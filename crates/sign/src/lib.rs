//! Cosign signatures and attestations for rebased, with RustCrypto's
//! `p256`/`ecdsa`, `scrypt`, `crypto_secretbox` and `pkcs8` and no
//! client stack: [`key`] loads cosign's encrypted keys and PKCS#8 keys and
//! writes new ones; [`cosign`] builds the simple-signing payload, the
//! `.sig`/`.att` manifests and DSSE envelopes, and checks signatures read
//! back. No IO but reading key files: the binary pushes through the
//! registry crate.

pub mod attest;
pub mod cosign;
pub mod key;

pub use key::{KeyError, Password, PublicKey, SigningKey, VerifyError};
