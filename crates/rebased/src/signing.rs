//! Cosign signatures of versions in a registry: pushing a version's `.sig`
//! (and `.att`) manifests with their blobs, and checking a signature read
//! back (the audit). The key is given by the caller (`Live` holds it in memory only);
//! nothing here writes it anywhere.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use chrono::Utc;
use rebased_core::{Digest, ImageRef};
use rebased_registry::{ErrorKind, Registry};
use rebased_sign::cosign::{self, Artifact};
use rebased_sign::{PublicKey, SigningKey};
use rebased_state::SignatureRecord;
use tracing::info;

/// Largest signature payload read back.
const MAX_PAYLOAD: u64 = 1 << 20;
/// Most signature layers of one `.sig` tried (a hostile one can list
/// thousands, each a read).
const MAX_CHECKED: usize = 64;

/// Pushes `artifact` under `repo:tag`: blobs first (those the repository
/// lacks), then the manifest. Returns the manifest's digest.
async fn push(
    registry: &Registry,
    repo: &ImageRef,
    tag: &str,
    artifact: &Artifact,
) -> Result<Digest> {
    let blobs = std::iter::once(&artifact.config).chain(artifact.layers.iter().map(|l| &l.blob));
    for blob in blobs {
        if !registry.blob_exists(repo, &blob.digest).await? {
            registry
                .push_blob(repo, blob.bytes.clone().into(), &blob.digest)
                .await?;
        }
    }
    let target = repo.with_tag(tag);
    Ok(registry
        .push_manifest(
            &target,
            artifact.manifest.clone(),
            rebased_core::oci::media_type::OCI_MANIFEST,
        )
        .await?)
}

/// Signs `digest` in `repo` with `key` (and, for an index, each of
/// `children`), pushing the `.sig` manifests; then the attestations
/// (`(predicate type, statement)`), when there are any, as the `.att`
/// manifest. The record of what was pushed. With `Keep::Existing` (a
/// repair) each `.sig` already under its tag is read first and our
/// signature added to what it holds, as cosign adds one; a publish signs a
/// digest that has no `.sig` yet (`Keep::Nothing`: no read).
pub async fn sign(
    registry: &Registry,
    repo: &ImageRef,
    key: &SigningKey,
    digest: &Digest,
    children: &BTreeMap<String, Digest>,
    statements: &[(String, Vec<u8>)],
    keep: Keep,
) -> Result<SignatureRecord> {
    let name = repo.name();
    let mut child_sigs = BTreeMap::new();
    for child in children.values() {
        let tag = cosign::signature_tag(child);
        let sig = push(
            registry,
            repo,
            &tag,
            &artifact(registry, repo, key, child, keep).await?,
        )
        .await
        .with_context(|| format!("pushing the signature {name}:{tag} of child {child}"))?;
        child_sigs.insert(child.clone(), sig);
    }
    let tag = cosign::signature_tag(digest);
    let manifest = push(
        registry,
        repo,
        &tag,
        &artifact(registry, repo, key, digest, keep).await?,
    )
    .await
    .with_context(|| format!("pushing the signature {name}:{tag}"))?;
    let public = key.public();
    info!(%digest, key = %public.fingerprint(), "signed: {name}:{tag}");
    let attestations = if statements.is_empty() {
        None
    } else {
        let tag = cosign::attestation_tag(digest);
        let att = push(registry, repo, &tag, &cosign::attestations(key, statements))
            .await
            .with_context(|| format!("pushing the attestations {name}:{tag}"))?;
        info!(%digest, "attested: {name}:{tag}");
        Some(att)
    };
    Ok(SignatureRecord {
        public_key: public.to_pem(),
        key: public.fingerprint(),
        manifest,
        children: child_sigs,
        attestations,
        at: Utc::now(),
    })
}

/// The `.sig` artifact of `target`: ours alone, or (`Keep::Existing`)
/// ours added to the `.sig` manifest under the tag now.
async fn artifact(
    registry: &Registry,
    repo: &ImageRef,
    key: &SigningKey,
    target: &Digest,
    keep: Keep,
) -> Result<Artifact> {
    let name = repo.name();
    let tag = cosign::signature_tag(target);
    let existing = match keep {
        Keep::Nothing => None,
        Keep::Existing => match registry.manifest(&repo.with_tag(&tag)).await {
            Ok(m) => Some(m.bytes),
            Err(e) if e.kind == ErrorKind::NotFound => None,
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("reading the signature {name}:{tag}"))
                )
            }
        },
    };
    Ok(cosign::signature_added(
        existing.as_deref(),
        key,
        &name,
        target,
    ))
}

/// What becomes of a `.sig` already under the tag when signing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Nothing is read: the digest is new (a publish).
    Nothing,
    /// Its signatures stay and ours is added (a repair).
    Existing,
}

/// What a signature tag holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// A signature by the key over the digest, in this `.sig` manifest.
    Verified(Digest),
    /// No signature tag.
    Missing,
    /// A signature tag whose signatures do not verify (why).
    Invalid(String),
}

/// Checks the `.sig` of `digest` in `repo` against `public`: one manifest
/// read of the tag and one read of each payload it lists.
pub async fn check(
    registry: &Registry,
    repo: &ImageRef,
    digest: &Digest,
    public: &PublicKey,
) -> Result<Check> {
    let tag = cosign::signature_tag(digest);
    let manifest = match registry.manifest(&repo.with_tag(&tag)).await {
        Ok(m) => m,
        Err(e) if e.kind == ErrorKind::NotFound => return Ok(Check::Missing),
        Err(e) => return Err(e.into()),
    };
    let Some(layers) = cosign::layers(&manifest.bytes) else {
        return Ok(Check::Invalid(format!(
            "{tag} is not a cosign signature manifest"
        )));
    };
    // The payload we would sign is checked first: a `.sig` that many
    // signers share costs one payload read, not one per signer; each
    // payload is read once, and at most MAX_CHECKED layers are tried.
    let ours = Digest::sha256(&cosign::simple_signing_payload(&repo.name(), digest));
    let mut candidates: Vec<_> = layers
        .iter()
        .filter(|l| l.media_type == cosign::SIMPLE_SIGNING)
        .collect();
    candidates.sort_by_key(|l| l.digest != ours);
    candidates.truncate(MAX_CHECKED);
    let mut why = Vec::new();
    let mut read: BTreeMap<Digest, Option<Vec<u8>>> = BTreeMap::new();
    for layer in candidates {
        let Some(sig) = layer.annotations.get(cosign::SIGNATURE_ANNOTATION) else {
            why.push(format!("layer {} has no signature", layer.digest));
            continue;
        };
        if !read.contains_key(&layer.digest) {
            let got = match registry.blob(repo, &layer.digest, MAX_PAYLOAD).await {
                Ok(p) => Some(p.to_vec()),
                Err(e) if e.kind == ErrorKind::NotFound => None,
                Err(e) => return Err(e.into()),
            };
            read.insert(layer.digest.clone(), got);
        }
        let Some(Some(payload)) = read.get(&layer.digest) else {
            why.push(format!("payload {} is gone", layer.digest));
            continue;
        };
        match cosign::verify_signature(public, payload, sig, digest) {
            Ok(()) => return Ok(Check::Verified(manifest.digest)),
            Err(e) => why.push(format!("payload {}: {e}", layer.digest)),
        }
    }
    if why.is_empty() {
        why.push("no simple-signing layer".to_owned());
    }
    Ok(Check::Invalid(why.join("; ")))
}
