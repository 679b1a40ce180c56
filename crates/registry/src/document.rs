//! OCI documents as bytes: a manifest as stored ([`RawManifest`]), the
//! media type its bytes declare, and the platforms of an index. No IO.

use std::collections::BTreeMap;

use rebased_core::Digest;

/// Manifest media types we accept, most specific first.
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

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
    /// The manifest's `annotations`, empty when there are none.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        serde_json::from_slice::<serde_json::Value>(&self.bytes)
            .ok()
            .and_then(|v| v.get("annotations").cloned())
            .and_then(|a| serde_json::from_value(a).ok())
            .unwrap_or_default()
    }
}

/// The platform -> child digest map of an index's bytes (empty if the bytes
/// are not an index). Entries without a platform or a valid digest, and
/// attestation entries (`unknown/unknown`), are skipped.
pub fn index_platforms(bytes: &[u8]) -> BTreeMap<String, Digest> {
    let mut out = BTreeMap::new();
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return out;
    };
    let Some(manifests) = value.get("manifests").and_then(|m| m.as_array()) else {
        return out;
    };
    for m in manifests {
        let Some(p) = m.get("platform") else { continue };
        let field = |k: &str| p.get(k).and_then(|v| v.as_str()).unwrap_or_default();
        let (os, arch, variant) = (field("os"), field("architecture"), field("variant"));
        if os.is_empty() || arch.is_empty() || os == "unknown" || arch == "unknown" {
            continue;
        }
        let key = if variant.is_empty() {
            format!("{os}/{arch}")
        } else {
            format!("{os}/{arch}/{variant}")
        };
        if let Some(d) = m
            .get("digest")
            .and_then(|d| d.as_str())
            .and_then(|d| Digest::parse(d).ok())
        {
            out.entry(key).or_insert(d);
        }
    }
    out
}

/// The media type a manifest's bytes declare; without a `mediaType` field,
/// an index when it has `manifests`, else an OCI image manifest. `None` when
/// the bytes are not a JSON object.
pub(crate) fn declared_media_type(bytes: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let object = value.as_object()?;
    Some(match object.get("mediaType").and_then(|m| m.as_str()) {
        Some(m) => m.to_owned(),
        None if object.contains_key("manifests") => MANIFEST_MEDIA_TYPES[0].to_owned(),
        None => MANIFEST_MEDIA_TYPES[2].to_owned(),
    })
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
