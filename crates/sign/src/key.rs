//! Signing keys: cosign's encrypted private key (`ENCRYPTED SIGSTORE
//! PRIVATE KEY` / `ENCRYPTED COSIGN PRIVATE KEY`: a JSON envelope with an
//! scrypt KDF and a nacl/secretbox cipher around the key's PKCS#8 DER) and a
//! plain PKCS#8 `PRIVATE KEY` PEM; both must hold an ECDSA P-256 key.
//!
//! Neither the key nor the password is ever printed: [`SigningKey`] and
//! [`Password`] show only that they are there, and no error carries either.

use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::{Key, Nonce, XSalsa20Poly1305};
use p256::ecdsa::signature::{Signer, Verifier};
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use pkcs8::AssociatedOid;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// PEM label of cosign's encrypted keys since sigstore's rename.
pub const SIGSTORE_LABEL: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
/// PEM label of cosign's older encrypted keys.
pub const COSIGN_LABEL: &str = "ENCRYPTED COSIGN PRIVATE KEY";
/// PEM label of a plain PKCS#8 private key.
pub const PKCS8_LABEL: &str = "PRIVATE KEY";

/// scrypt's cost as cosign writes it: N = 2^15, r = 8, p = 1.
const SCRYPT_LOG_N: u8 = 15;
const SCRYPT_R: u32 = 8;
const SCRYPT_P: u32 = 1;
/// Largest scrypt N accepted from a key file (2^20: cosign's strongest
/// preset is 2^17), so a hostile file cannot ask for unbounded memory.
const MAX_LOG_N: u32 = 20;
/// Largest key file read.
const MAX_KEY_FILE: u64 = 64 << 10;

/// Why a key cannot be used. No variant carries key material or a password.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file cannot be read.
    #[error("cannot read the key file {path}: {cause}")]
    Read {
        /// The file.
        path: String,
        /// The IO error.
        cause: String,
    },
    /// Not a PEM this crate knows, or its contents are malformed.
    #[error("unreadable key{at}: {reason}", at = at(.path))]
    Unreadable {
        /// The file, when the key came from one.
        path: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// The password does not open the key.
    #[error("wrong password for the encrypted key{at}", at = at(.path))]
    WrongPassword {
        /// The file, when the key came from one.
        path: Option<String>,
    },
    /// An encrypted key and no password.
    #[error("the key{at} is encrypted and no password was given (signing.password_file)", at = at(.path))]
    NoPassword {
        /// The file, when the key came from one.
        path: Option<String>,
    },
    /// A key of another algorithm or curve.
    #[error("the key{at} is not an ECDSA P-256 key ({found})", at = at(.path))]
    NotP256 {
        /// The file, when the key came from one.
        path: Option<String>,
        /// The algorithm found.
        found: String,
    },
    /// No randomness for a new key.
    #[error("cannot generate a key: {0}")]
    Random(String),
}

fn at(path: &Option<String>) -> String {
    path.as_ref().map(|p| format!(" {p}")).unwrap_or_default()
}

impl KeyError {
    fn with_path(self, p: &Path) -> Self {
        let path = Some(p.display().to_string());
        match self {
            Self::Unreadable { reason, .. } => Self::Unreadable { path, reason },
            Self::WrongPassword { .. } => Self::WrongPassword { path },
            Self::NoPassword { .. } => Self::NoPassword { path },
            Self::NotP256 { found, .. } => Self::NotP256 { path, found },
            e => e,
        }
    }
}

fn unreadable(reason: impl Into<String>) -> KeyError {
    KeyError::Unreadable {
        path: None,
        reason: reason.into(),
    }
}

/// A password, wiped from memory when dropped and never shown.
#[derive(Clone)]
pub struct Password(Zeroizing<String>);

impl Password {
    /// A password from its text.
    pub fn new(text: String) -> Self {
        Self(Zeroizing::new(text))
    }

    /// The password in a password file: its first line, without the line
    /// end (as `cosign` reads `COSIGN_PASSWORD` text).
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text = Zeroizing::new(read_bounded(path)?);
        let line = text.lines().next().unwrap_or_default();
        Ok(Self::new(line.to_owned()))
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Whether `other` is the same password (a prompt's confirmation).
    pub fn same_as(&self, other: &Password) -> bool {
        self.0 == other.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

fn read_bounded(path: &Path) -> Result<String, KeyError> {
    let err = |cause: String| KeyError::Read {
        path: path.display().to_string(),
        cause,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > MAX_KEY_FILE {
        return Err(err(format!("larger than {MAX_KEY_FILE} bytes")));
    }
    std::fs::read_to_string(path).map_err(|e| err(e.to_string()))
}

/// An ECDSA P-256 signing key. Its `Debug` shows the public key's
/// fingerprint only.
#[derive(Clone)]
pub struct SigningKey {
    key: p256::ecdsa::SigningKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("public", &self.public().fingerprint())
            .finish()
    }
}

/// The cosign envelope of an encrypted key.
#[derive(Serialize, Deserialize)]
struct Envelope {
    kdf: Kdf,
    cipher: Cipher,
    ciphertext: String,
}

#[derive(Serialize, Deserialize)]
struct Kdf {
    name: String,
    params: KdfParams,
    salt: String,
}

#[derive(Serialize, Deserialize)]
struct KdfParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(Serialize, Deserialize)]
struct Cipher {
    name: String,
    nonce: String,
}

fn scrypt_key(
    password: &Password,
    salt: &[u8],
    log_n: u8,
    r: u32,
    p: u32,
) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let params = scrypt::Params::new(log_n, r, p, 32)
        .map_err(|e| unreadable(format!("bad scrypt parameters: {e}")))?;
    let mut out = Zeroizing::new([0u8; 32]);
    scrypt::scrypt(password.bytes(), salt, &params, out.as_mut())
        .map_err(|e| unreadable(format!("scrypt: {e}")))?;
    Ok(out)
}

impl SigningKey {
    /// A new random key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        loop {
            OsRng
                .try_fill_bytes(seed.as_mut())
                .map_err(|e| KeyError::Random(e.to_string()))?;
            // A seed outside the curve's order is vanishingly rare; draw again.
            if let Ok(key) = p256::ecdsa::SigningKey::from_slice(seed.as_ref()) {
                return Ok(Self { key });
            }
        }
    }

    /// Reads the key in `path`, opening an encrypted one with `password`.
    pub fn load(path: &Path, password: Option<&Password>) -> Result<Self, KeyError> {
        let text = Zeroizing::new(read_bounded(path)?);
        Self::from_pem(&text, password).map_err(|e| e.with_path(path))
    }

    /// The key in PEM `text`: cosign's encrypted format (opened with
    /// `password`) or a PKCS#8 `PRIVATE KEY`.
    pub fn from_pem(text: &str, password: Option<&Password>) -> Result<Self, KeyError> {
        let (label, body) = pem_block(text)?;
        match label.as_str() {
            SIGSTORE_LABEL | COSIGN_LABEL => {
                let password = password.ok_or(KeyError::NoPassword { path: None })?;
                let der = decrypt(&body, password)?;
                Self::from_pkcs8_der(&der)
            }
            PKCS8_LABEL => Self::from_pkcs8_der(&body),
            other => Err(unreadable(format!(
                "PEM label {other:?}: expected {SIGSTORE_LABEL:?}, {COSIGN_LABEL:?} or {PKCS8_LABEL:?}"
            ))),
        }
    }

    fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        match p256::SecretKey::from_pkcs8_der(der) {
            Ok(secret) => Ok(Self {
                key: p256::ecdsa::SigningKey::from(secret),
            }),
            Err(e) => match pkcs8::PrivateKeyInfo::try_from(der) {
                Ok(info) => {
                    let params = info
                        .algorithm
                        .parameters_oid()
                        .map(|o| format!(", parameters {o}"))
                        .unwrap_or_default();
                    let ec = info.algorithm.oid
                        == pkcs8::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
                    if ec && params.contains(&p256::NistP256::OID.to_string()) {
                        Err(unreadable(format!("malformed P-256 key: {e}")))
                    } else {
                        Err(KeyError::NotP256 {
                            path: None,
                            found: format!("algorithm {}{params}", info.algorithm.oid),
                        })
                    }
                }
                Err(e) => Err(unreadable(format!("not a PKCS#8 private key: {e}"))),
            },
        }
    }

    /// This key as cosign writes `cosign.key`: PKCS#8 encrypted under
    /// `password` (scrypt N=32768 r=8 p=1, nacl/secretbox), PEM labelled
    /// `ENCRYPTED SIGSTORE PRIVATE KEY`.
    pub fn to_encrypted_pem(&self, password: &Password) -> Result<String, KeyError> {
        let der = self
            .key
            .to_pkcs8_der()
            .map_err(|e| unreadable(format!("encoding the key: {e}")))?;
        let mut salt = [0u8; 32];
        let mut nonce = [0u8; 24];
        OsRng
            .try_fill_bytes(&mut salt)
            .and_then(|()| OsRng.try_fill_bytes(&mut nonce))
            .map_err(|e| KeyError::Random(e.to_string()))?;
        let k = scrypt_key(password, &salt, SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P)?;
        let cipher = XSalsa20Poly1305::new(Key::from_slice(k.as_ref()));
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), der.as_bytes())
            .map_err(|_| unreadable("secretbox refused to seal"))?;
        let envelope = Envelope {
            kdf: Kdf {
                name: "scrypt".into(),
                params: KdfParams {
                    n: 1 << SCRYPT_LOG_N,
                    r: SCRYPT_R,
                    p: SCRYPT_P,
                },
                salt: B64.encode(salt),
            },
            cipher: Cipher {
                name: "nacl/secretbox".into(),
                nonce: B64.encode(nonce),
            },
            ciphertext: B64.encode(sealed),
        };
        let json = serde_json::to_vec(&envelope).map_err(|e| unreadable(e.to_string()))?;
        pem_rfc7468::encode_string(SIGSTORE_LABEL, pem_rfc7468::LineEnding::LF, &json)
            .map_err(|e| unreadable(format!("PEM: {e}")))
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            key: *self.key.verifying_key(),
        }
    }

    /// The ECDSA P-256 / SHA-256 signature of `message`, DER-encoded.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let sig: p256::ecdsa::Signature = self.key.sign(message);
        sig.to_der().as_bytes().to_vec()
    }

    /// [`SigningKey::sign`], base64 (cosign's annotation and DSSE's `sig`).
    pub fn sign_base64(&self, message: &[u8]) -> String {
        B64.encode(self.sign(message))
    }
}

/// The first PEM block of `text`: its label and decoded body. Lines of
/// any length are accepted (Go's `encoding/pem`, which cosign uses, reads
/// them so; RFC 7468's strict 64 columns would refuse keys other tools
/// wrapped at 76), as are headers before the base64.
fn pem_block(text: &str) -> Result<(String, Zeroizing<Vec<u8>>), KeyError> {
    let mut lines = text.lines().map(str::trim);
    let label = lines
        .by_ref()
        .find_map(|l| l.strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .ok_or_else(|| unreadable("not a PEM key: no BEGIN line"))?
        .to_owned();
    let end = format!("-----END {label}-----");
    let mut b64 = Zeroizing::new(String::new());
    let mut ended = false;
    for line in lines {
        if line == end {
            ended = true;
            break;
        }
        if line.contains(':') {
            continue;
        }
        b64.push_str(line);
    }
    if !ended {
        return Err(unreadable(format!("not a PEM key: no {end:?} line")));
    }
    let body = B64
        .decode(b64.as_bytes())
        .map_err(|e| unreadable(format!("not a PEM key: its base64 does not decode: {e}")))?;
    Ok((label, Zeroizing::new(body)))
}

fn decrypt(json: &[u8], password: &Password) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let env: Envelope = serde_json::from_slice(json)
        .map_err(|e| unreadable(format!("encrypted key envelope: {e}")))?;
    if env.kdf.name != "scrypt" {
        return Err(unreadable(format!("unsupported kdf {:?}", env.kdf.name)));
    }
    if env.cipher.name != "nacl/secretbox" {
        return Err(unreadable(format!(
            "unsupported cipher {:?}",
            env.cipher.name
        )));
    }
    let n = env.kdf.params.n;
    if !n.is_power_of_two() || n < 2 || n.trailing_zeros() > MAX_LOG_N {
        return Err(unreadable(format!(
            "scrypt N={n} is not a power of two up to 2^{MAX_LOG_N}"
        )));
    }
    let decode = |what: &str, s: &str| {
        B64.decode(s)
            .map_err(|e| unreadable(format!("{what} is not base64: {e}")))
    };
    let salt = decode("salt", &env.kdf.salt)?;
    let nonce = decode("nonce", &env.cipher.nonce)?;
    let ciphertext = decode("ciphertext", &env.ciphertext)?;
    if nonce.len() != 24 {
        return Err(unreadable("the secretbox nonce is not 24 bytes"));
    }
    // n is a power of two of at most 2^20: its log fits a u8.
    let log_n = u8::try_from(n.trailing_zeros()).unwrap_or(u8::MAX);
    let k = scrypt_key(password, &salt, log_n, env.kdf.params.r, env.kdf.params.p)?;
    let cipher = XSalsa20Poly1305::new(Key::from_slice(k.as_ref()));
    cipher
        .decrypt(Nonce::from_slice(&nonce), ciphertext.as_slice())
        .map(Zeroizing::new)
        .map_err(|_| KeyError::WrongPassword { path: None })
}

/// An ECDSA P-256 public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    key: p256::ecdsa::VerifyingKey,
}

/// A signature that does not verify, or a public key that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The public key is not a P-256 PKIX PEM.
    #[error("unreadable public key: {0}")]
    PublicKey(String),
    /// The signature is not base64 DER.
    #[error("malformed signature: {0}")]
    Malformed(String),
    /// The signature is not this key's over this message.
    #[error("the signature does not verify")]
    Mismatch,
}

impl PublicKey {
    /// A PKIX `PUBLIC KEY` PEM (`cosign.pub`).
    pub fn from_pem(text: &str) -> Result<Self, VerifyError> {
        p256::ecdsa::VerifyingKey::from_public_key_pem(text.trim())
            .map(|key| Self { key })
            .map_err(|e| VerifyError::PublicKey(e.to_string()))
    }

    /// As `cosign.pub`: PKIX `PUBLIC KEY` PEM.
    pub fn to_pem(&self) -> String {
        // Encoding a valid P-256 point as SPKI cannot fail.
        self.key
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_default()
    }

    /// `sha256:` of the key's SPKI DER, to name a key in logs and records.
    pub fn fingerprint(&self) -> String {
        let der = self
            .key
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default();
        rebased_core::Digest::sha256(&der).to_string()
    }

    /// Whether `signature` (base64 DER, as cosign writes it) is this key's
    /// over `message`.
    pub fn verify_base64(&self, message: &[u8], signature: &str) -> Result<(), VerifyError> {
        let der = B64
            .decode(signature.trim())
            .map_err(|e| VerifyError::Malformed(e.to_string()))?;
        let sig = p256::ecdsa::Signature::from_der(&der)
            .map_err(|e| VerifyError::Malformed(e.to_string()))?;
        self.key
            .verify(message, &sig)
            .map_err(|_| VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_round_trip_and_wrong_password() {
        let key = SigningKey::generate().expect("key");
        let pw = Password::new("correct horse".into());
        let pem = key.to_encrypted_pem(&pw).expect("encrypt");
        assert!(pem.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----"));
        let back = SigningKey::from_pem(&pem, Some(&pw)).expect("decrypt");
        assert_eq!(back.public(), key.public());
        let wrong = SigningKey::from_pem(&pem, Some(&Password::new("nope".into())));
        assert!(
            matches!(wrong, Err(KeyError::WrongPassword { .. })),
            "{wrong:?}"
        );
        let none = SigningKey::from_pem(&pem, None);
        assert!(matches!(none, Err(KeyError::NoPassword { .. })));
        // Wrapped at 76 columns (Python's base64.encodebytes): read too.
        let (_, body) = pem_block(&pem).expect("pem");
        let wide = format!(
            "-----BEGIN {SIGSTORE_LABEL}-----\n{}-----END {SIGSTORE_LABEL}-----\n",
            B64.encode(body.as_slice())
                .as_bytes()
                .chunks(76)
                .map(|c| format!("{}\n", String::from_utf8_lossy(c)))
                .collect::<String>()
        );
        assert!(SigningKey::from_pem(&wide, Some(&pw)).is_ok());
        // The older label is the same format.
        let old = pem.replace(SIGSTORE_LABEL, COSIGN_LABEL);
        assert!(SigningKey::from_pem(&old, Some(&pw)).is_ok());
    }

    #[test]
    fn plain_pkcs8_signs_and_verifies() {
        let key = SigningKey::generate().expect("key");
        let pem = key.key.to_pkcs8_pem(LineEnding::LF).expect("pem");
        let back = SigningKey::from_pem(&pem, None).expect("plain");
        let sig = back.sign_base64(b"payload");
        let public = PublicKey::from_pem(&key.public().to_pem()).expect("pub");
        assert_eq!(public.verify_base64(b"payload", &sig), Ok(()));
        assert_eq!(
            public.verify_base64(b"payloaD", &sig),
            Err(VerifyError::Mismatch)
        );
        assert!(matches!(
            public.verify_base64(b"payload", "!!"),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn refusals_are_typed_and_keep_secrets_out() {
        assert!(matches!(
            SigningKey::from_pem("garbage", None),
            Err(KeyError::Unreadable { .. })
        ));
        // An Ed25519 PKCS#8 key (RFC 8410's example).
        let ed = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let e = SigningKey::from_pem(ed, None);
        assert!(matches!(e, Err(KeyError::NotP256 { .. })), "{e:?}");
        let other = "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        assert!(matches!(
            SigningKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n", None),
            Err(KeyError::Unreadable { .. })
        ));
        assert!(matches!(
            SigningKey::from_pem(other, None),
            Err(KeyError::Unreadable { .. })
        ));
        let key = SigningKey::generate().expect("key");
        let pw = Password::new("s3cret-pass".into());
        let pem = key.to_encrypted_pem(&pw).expect("encrypt");
        let shown = format!("{key:?} {pw:?}");
        assert!(!shown.contains("s3cret-pass"));
        assert!(shown.contains("sha256:"));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cosign.key");
        std::fs::write(&path, &pem).expect("write");
        let e = SigningKey::load(&path, Some(&Password::new("wrong".into()))).expect_err("wrong");
        let text = e.to_string();
        assert!(
            text.contains("cosign.key") && text.contains("wrong password"),
            "{text}"
        );
        assert!(!text.contains("wrong\""));
        let missing = SigningKey::load(&dir.path().join("none"), None).expect_err("missing");
        assert!(matches!(missing, KeyError::Read { .. }));
    }
}
