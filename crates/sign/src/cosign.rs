//! Cosign's registry formats: the simple-signing payload, the `.sig` and
//! `.att` manifests (an OCI image manifest whose config is an empty image
//! config and whose layers are the payloads, each signature in a layer
//! annotation), the tag they are pushed under, and DSSE envelopes with
//! their pre-authentication encoding. No IO: callers push the blobs.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rebased_core::oci::{
    media_type, ContainerConfig, Descriptor, History, ImageConfig, ImageManifest, RootFs,
};
use rebased_core::Digest;
use serde::{Deserialize, Serialize};

use crate::key::{PublicKey, SigningKey, VerifyError};

/// Media type of a simple-signing payload layer.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Media type of a DSSE envelope layer (an attestation).
pub const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";
/// The layer annotation holding a signature (base64 DER).
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The layer annotation naming an attestation's predicate type.
pub const PREDICATE_TYPE_ANNOTATION: &str = "predicateType";
/// DSSE payload type of an in-toto statement.
pub const IN_TOTO: &str = "application/vnd.in-toto+json";
/// The `type` of a cosign simple-signing payload.
pub const SIGNATURE_TYPE: &str = "cosign container image signature";

/// The tag cosign keeps `digest`'s signatures under: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &Digest) -> String {
    format!("{}-{}.sig", digest.algorithm(), digest.encoded())
}

/// The tag cosign keeps `digest`'s attestations under: `sha256-<hex>.att`.
pub fn attestation_tag(digest: &Digest) -> String {
    format!("{}-{}.att", digest.algorithm(), digest.encoded())
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Payload {
    critical: Critical,
    optional: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Critical {
    identity: Identity,
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// The simple-signing payload cosign signs for `digest` in `repository`
/// (a repository name without tag, such as `127.0.0.1:5000/team/web`).
pub fn simple_signing_payload(repository: &str, digest: &Digest) -> Vec<u8> {
    let payload = Payload {
        critical: Critical {
            identity: Identity {
                docker_reference: repository.to_owned(),
            },
            image: Image {
                docker_manifest_digest: digest.to_string(),
            },
            kind: SIGNATURE_TYPE.to_owned(),
        },
        optional: None,
    };
    // Plain structs of strings always serialise.
    serde_json::to_vec(&payload).unwrap_or_default()
}

/// The manifest digest a simple-signing payload names, `None` when the
/// bytes are no such payload.
pub fn payload_digest(payload: &[u8]) -> Option<String> {
    let p: Payload = serde_json::from_slice(payload).ok()?;
    (p.critical.kind == SIGNATURE_TYPE).then_some(p.critical.image.docker_manifest_digest)
}

/// A blob to push, with its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Their sha256.
    pub digest: Digest,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Self {
        let digest = Digest::sha256(&bytes);
        Self { bytes, digest }
    }
}

/// One layer of a cosign manifest: a payload, its media type and its
/// annotations.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The payload.
    pub blob: Blob,
    /// Its media type.
    pub media_type: String,
    /// Its annotations (the signature, a predicate type).
    pub annotations: BTreeMap<String, String>,
}

/// A `.sig` or `.att` manifest and the blobs it names, to push blobs first.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The config blob.
    pub config: Blob,
    /// The layers.
    pub layers: Vec<Layer>,
    /// The manifest bytes (`application/vnd.oci.image.manifest.v1+json`).
    pub manifest: Vec<u8>,
}

fn size(b: &[u8]) -> u64 {
    u64::try_from(b.len()).unwrap_or(u64::MAX)
}

/// The manifest cosign writes for `layers`: an OCI image manifest, its
/// config an image config with empty architecture and os and the layers'
/// digests as diff ids (as cosign's `static` layers have it).
pub fn artifact(layers: Vec<Layer>) -> Artifact {
    let descriptors = layers.iter().map(descriptor).collect();
    with_layers(descriptors, layers)
}

/// The manifest naming `descriptors` (with its config), and `layers`,
/// the blobs of them to push.
fn with_layers(descriptors: Vec<Descriptor>, layers: Vec<Layer>) -> Artifact {
    let epoch = "0001-01-01T00:00:00Z".to_owned();
    let config = ImageConfig {
        created: Some(epoch.clone()),
        history: Some(vec![History {
            created: Some(epoch),
            ..History::default()
        }]),
        config: Some(ContainerConfig::default()),
        rootfs: RootFs {
            diff_ids: descriptors.iter().map(|d| d.digest.clone()).collect(),
            ..RootFs::default()
        },
        ..ImageConfig::default()
    };
    let config = Blob::new(serde_json::to_vec(&config).unwrap_or_default());
    let doc = ImageManifest {
        schema_version: 2,
        media_type: Some(media_type::OCI_MANIFEST.to_owned()),
        config: Descriptor::new(media_type::OCI_CONFIG, &config.digest, size(&config.bytes)),
        layers: descriptors,
        ..ImageManifest::default()
    };
    let manifest = serde_json::to_vec(&doc).unwrap_or_default();
    Artifact {
        config,
        layers,
        manifest,
    }
}

/// The `.sig` artifact of `digest` in `repository`, signed with `key`.
pub fn signature(key: &SigningKey, repository: &str, digest: &Digest) -> Artifact {
    artifact(vec![signature_layer(key, repository, digest)])
}

fn signature_layer(key: &SigningKey, repository: &str, digest: &Digest) -> Layer {
    let payload = simple_signing_payload(repository, digest);
    let sig = key.sign_base64(&payload);
    Layer {
        blob: Blob::new(payload),
        media_type: SIMPLE_SIGNING.to_owned(),
        annotations: BTreeMap::from([(SIGNATURE_ANNOTATION.to_owned(), sig)]),
    }
}

/// The `.sig` artifact of `digest` signed with `key`, added to the
/// signature manifest `existing` already under the tag, as cosign adds a
/// signature: every layer it holds stays (another signer's, an older
/// key's, one that no longer verifies), ours after them, unless one with
/// the same payload and signature is there already. `layers` of the
/// answer are the blobs to push (ours); the manifest names all of them.
/// `existing` bytes that are no image manifest are ignored (replaced).
pub fn signature_added(
    existing: Option<&[u8]>,
    key: &SigningKey,
    repository: &str,
    digest: &Digest,
) -> Artifact {
    let ours = signature_layer(key, repository, digest);
    let Some(doc) = existing.and_then(|b| serde_json::from_slice::<ImageManifest>(b).ok()) else {
        return artifact(vec![ours]);
    };
    let same = |d: &Descriptor| {
        d.digest == ours.blob.digest.as_str()
            && d.annotations.get(SIGNATURE_ANNOTATION) == ours.annotations.get(SIGNATURE_ANNOTATION)
    };
    let mut kept: Vec<Descriptor> = doc.layers;
    let push = if kept.iter().any(same) {
        Vec::new()
    } else {
        kept.push(descriptor(&ours));
        vec![ours]
    };
    with_layers(kept, push)
}

fn descriptor(l: &Layer) -> Descriptor {
    Descriptor {
        annotations: l.annotations.clone(),
        ..Descriptor::new(&l.media_type, &l.blob.digest, size(&l.blob.bytes))
    }
}

/// A layer of a cosign manifest as read back: its digest, media type and
/// annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    /// The layer's digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
}

/// The layers of a cosign manifest's bytes; `None` when the bytes are no
/// image manifest or a digest is invalid.
pub fn layers(manifest: &[u8]) -> Option<Vec<LayerRef>> {
    let doc: ImageManifest = serde_json::from_slice(manifest).ok()?;
    doc.layers
        .into_iter()
        .map(|d| {
            Some(LayerRef {
                digest: Digest::parse(&d.digest).ok()?,
                media_type: d.media_type,
                annotations: d.annotations,
            })
        })
        .collect()
}

/// Whether a simple-signing `payload` with `signature` (the layer's
/// annotation) is `key`'s signature of `digest`.
pub fn verify_signature(
    key: &PublicKey,
    payload: &[u8],
    signature: &str,
    digest: &Digest,
) -> Result<(), VerifyError> {
    key.verify_base64(payload, signature)?;
    match payload_digest(payload) {
        Some(d) if d == digest.as_str() => Ok(()),
        _ => Err(VerifyError::Mismatch),
    }
}

/// DSSE's pre-authentication encoding of `payload` of `payload_type`:
/// `DSSEv1 <len> <type> <len> <payload>`, what a DSSE signature signs.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// A DSSE envelope.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// The payload's type.
    pub payload_type: String,
    /// The payload, base64.
    pub payload: String,
    /// The signatures.
    pub signatures: Vec<EnvelopeSignature>,
}

/// One signature of a DSSE envelope.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnvelopeSignature {
    /// The key id (cosign leaves it empty).
    pub keyid: String,
    /// The signature of the PAE, base64 DER.
    pub sig: String,
}

/// An in-toto `statement` (JSON) in a DSSE envelope signed with `key`.
pub fn envelope(key: &SigningKey, statement: &[u8]) -> Envelope {
    Envelope {
        payload_type: IN_TOTO.to_owned(),
        payload: B64.encode(statement),
        signatures: vec![EnvelopeSignature {
            keyid: String::new(),
            sig: key.sign_base64(&pae(IN_TOTO, statement)),
        }],
    }
}

/// The `.att` artifact of the in-toto statements, each as
/// `(predicate type, statement JSON)`, each in its own signed envelope.
pub fn attestations(key: &SigningKey, statements: &[(String, Vec<u8>)]) -> Artifact {
    artifact(
        statements
            .iter()
            .map(|(predicate, statement)| {
                let env = serde_json::to_vec(&envelope(key, statement)).unwrap_or_default();
                Layer {
                    blob: Blob::new(env),
                    media_type: DSSE_ENVELOPE.to_owned(),
                    // cosign writes the signature annotation on an
                    // attestation layer too, empty (the signature is in
                    // the envelope); its readers ask for the key.
                    annotations: BTreeMap::from([
                        (PREDICATE_TYPE_ANNOTATION.to_owned(), predicate.clone()),
                        (SIGNATURE_ANNOTATION.to_owned(), String::new()),
                    ]),
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> Digest {
        Digest::sha256(b"manifest")
    }

    #[test]
    fn payload_is_cosigns() {
        let p = simple_signing_payload("127.0.0.1:5000/team/web", &digest());
        let want = format!(
            "{{\"critical\":{{\"identity\":{{\"docker-reference\":\"127.0.0.1:5000/team/web\"}},\"image\":{{\"docker-manifest-digest\":\"{}\"}},\"type\":\"cosign container image signature\"}},\"optional\":null}}",
            digest()
        );
        assert_eq!(String::from_utf8_lossy(&p), want);
        assert_eq!(payload_digest(&p).as_deref(), Some(digest().as_str()));
        assert_eq!(
            signature_tag(&digest()),
            format!("sha256-{}.sig", digest().encoded())
        );
    }

    #[test]
    fn signature_artifact_verifies_and_tampering_does_not() {
        let key = SigningKey::generate().expect("key");
        let a = signature(&key, "r/web", &digest());
        let layers = layers(&a.manifest).expect("layers");
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0].media_type, SIMPLE_SIGNING);
        assert_eq!(layers[0].digest, a.layers[0].blob.digest);
        let sig = &layers[0].annotations[SIGNATURE_ANNOTATION];
        let public = key.public();
        let payload = &a.layers[0].blob.bytes;
        assert_eq!(verify_signature(&public, payload, sig, &digest()), Ok(()));
        let other = Digest::sha256(b"other");
        assert!(verify_signature(&public, payload, sig, &other).is_err());
        let tampered = simple_signing_payload("r/web", &other);
        assert!(verify_signature(&public, &tampered, sig, &other).is_err());
        let m: serde_json::Value = serde_json::from_slice(&a.manifest).expect("json");
        assert_eq!(m["config"]["mediaType"], media_type::OCI_CONFIG);
        assert_eq!(m["config"]["digest"], a.config.digest.as_str());
        // Signing is deterministic (RFC 6979): a re-sign is the same manifest.
        assert_eq!(signature(&key, "r/web", &digest()).manifest, a.manifest);
    }

    #[test]
    fn a_signature_added_keeps_what_the_tag_held() {
        let (ours, theirs) = (
            SigningKey::generate().expect("key"),
            SigningKey::generate().expect("key"),
        );
        let existing = signature(&theirs, "r/web", &digest());
        let added = signature_added(Some(&existing.manifest), &ours, "r/web", &digest());
        let l = layers(&added.manifest).expect("layers");
        assert_eq!(l.len(), 2, "theirs kept, ours added");
        let payload = &added.layers[0].blob.bytes;
        for (layer, key) in l.iter().zip([&theirs, &ours]) {
            let sig = &layer.annotations[SIGNATURE_ANNOTATION];
            assert_eq!(
                verify_signature(&key.public(), payload, sig, &digest()),
                Ok(())
            );
        }
        let m: serde_json::Value = serde_json::from_slice(&added.manifest).expect("json");
        assert_eq!(m["config"]["digest"], added.config.digest.as_str());
        let config: serde_json::Value =
            serde_json::from_slice(&added.config.bytes).expect("config");
        assert_eq!(
            config["rootfs"]["diff_ids"].as_array().map(Vec::len),
            Some(2)
        );
        // Adding the same signature again changes nothing.
        let again = signature_added(Some(&added.manifest), &ours, "r/web", &digest());
        assert_eq!(again.manifest, added.manifest);
        assert!(again.layers.is_empty());
        // Nothing there (or no manifest): our signature alone.
        assert_eq!(
            signature_added(None, &ours, "r/web", &digest()).manifest,
            signature(&ours, "r/web", &digest()).manifest
        );
        assert_eq!(
            signature_added(Some(b"not json"), &ours, "r/web", &digest()).manifest,
            signature(&ours, "r/web", &digest()).manifest
        );
    }

    #[test]
    fn dsse_pae_and_envelope() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        let key = SigningKey::generate().expect("key");
        let env = envelope(&key, b"{}");
        assert_eq!(env.payload_type, IN_TOTO);
        assert_eq!(
            key.public()
                .verify_base64(&pae(IN_TOTO, b"{}"), &env.signatures[0].sig),
            Ok(())
        );
        let a = attestations(
            &key,
            &[("https://slsa.dev/provenance/v1".into(), b"{}".to_vec())],
        );
        let l = layers(&a.manifest).expect("layers");
        assert_eq!(l[0].media_type, DSSE_ENVELOPE);
        assert_eq!(
            l[0].annotations[PREDICATE_TYPE_ANNOTATION],
            "https://slsa.dev/provenance/v1"
        );
        assert_eq!(
            l[0].annotations
                .get(SIGNATURE_ANNOTATION)
                .map(String::as_str),
            Some(""),
            "cosign's attestation layers carry an empty signature annotation"
        );
    }
}
