//! OCI documents as bytes: a manifest as stored ([`RawManifest`]), the
//! media type its bytes declare, and the platforms of an index. No IO.

use std::collections::BTreeMap;

use rebased_core::oci::{media_type, Manifest};
use rebased_core::Digest;

/// Manifest media types we accept, most specific first.
pub const MANIFEST_MEDIA_TYPES: &[&str] = media_type::MANIFEST_TYPES;

/// A manifest as stored, with what is needed to copy it.
#[derive(Debug, Clone)]
pub struct RawManifest {
    /// The exact bytes.
    pub bytes: Vec<u8>,
    /// Its digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
}

impl RawManifest {
    /// The manifest's `annotations`, empty when there are none (or the
    /// bytes are no manifest).
    pub fn annotations(&self) -> BTreeMap<String, String> {
        Manifest::parse(&self.bytes)
            .map(|m| m.annotations().clone())
            .unwrap_or_default()
    }
}

/// The platform -> child digest map of an index's bytes (empty if the bytes
/// are not an index). Entries without a platform or a valid digest, and
/// attestation entries (`unknown/unknown`), are skipped.
pub fn index_platforms(bytes: &[u8]) -> BTreeMap<String, Digest> {
    let mut out = BTreeMap::new();
    let Ok(Manifest::Index(index)) = Manifest::parse(bytes) else {
        return out;
    };
    for entry in &index.manifests {
        let Some(platform) = entry.platform.as_ref().and_then(|p| p.complete()) else {
            continue;
        };
        if platform.os == "unknown" || platform.architecture == "unknown" {
            continue;
        }
        if let Some(d) = entry.digest() {
            out.entry(platform.to_string()).or_insert(d);
        }
    }
    out
}

/// The media type a manifest's bytes declare; without a `mediaType` field,
/// an index when it has `manifests`, else an OCI image manifest. `None` when
/// the bytes are not a manifest or an index.
pub(crate) fn declared_media_type(bytes: &[u8]) -> Option<String> {
    Manifest::parse(bytes)
        .ok()
        .map(|m| m.media_type().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_platforms_reads_children() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let c = format!("sha256:{}", "c".repeat(64));
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"digest": a, "platform": {"os": "linux", "architecture": "amd64"}},
                {"digest": b, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"digest": c, "platform": {"os": "unknown", "architecture": "unknown"}},
                {"digest": "not-a-digest", "platform": {"os": "linux", "architecture": "s390x"}},
                {"digest": c}
            ]
        });
        let p = index_platforms(index.to_string().as_bytes());
        assert_eq!(p.len(), 2);
        assert_eq!(p["linux/amd64"].as_str(), a);
        assert_eq!(p["linux/arm64/v8"].as_str(), b);
        assert!(index_platforms(b"{\"layers\": []}").is_empty());
        assert!(index_platforms(b"garbage").is_empty());
    }
}
