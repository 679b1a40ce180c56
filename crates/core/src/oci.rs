//! OCI documents as typed values: descriptors, image manifests, image
//! indexes (and Docker's manifest lists, which have the same shape), image
//! configs, the platform, and the media types. Parsing is tolerant the way
//! registries need it: fields we do not model are kept in `extra` and
//! written back unchanged, missing optional fields default, and a digest is
//! kept as the text the document holds ([`Descriptor::digest`] parses it),
//! so one odd entry does not make a whole index unreadable.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Digest;

/// Media types, once for the workspace.
pub mod media_type {
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// OCI layer, uncompressed.
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    /// OCI layer, gzip.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// OCI layer, zstd.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Docker manifest list (an index).
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker image manifest, schema 2.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker image manifest, schema 1 (webhooks still name it).
    pub const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    /// Docker image manifest, schema 1, signed.
    pub const DOCKER_MANIFEST_V1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Docker layer, gzip.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// Docker foreign (non-distributable) layer, gzip.
    pub const DOCKER_FOREIGN_LAYER_GZIP: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
    /// OCI non-distributable layer, gzip.
    pub const OCI_NONDISTRIBUTABLE_LAYER_GZIP: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";

    /// The manifest media types a registry is asked for, most specific
    /// first: both indexes, then both image manifests.
    pub const MANIFEST_TYPES: &[&str] = &[
        OCI_INDEX,
        DOCKER_MANIFEST_LIST,
        OCI_MANIFEST,
        DOCKER_MANIFEST,
    ];

    /// Whether `media_type` is an index (OCI or Docker).
    pub fn is_index(media_type: &str) -> bool {
        media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
    }
}

/// Fields of a document that we do not model, kept as they were.
pub type Extra = Map<String, Value>;

/// `os/architecture[/variant]`, as an index entry or an image config names it.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Platform {
    /// `architecture`: `amd64`, `arm64`, ...
    #[serde(default)]
    pub architecture: String,
    /// `os`: `linux`.
    #[serde(default)]
    pub os: String,
    /// `variant`: `v8`, `v7`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let make = |os: &str, arch: &str, variant: Option<&str>| Self {
            os: os.to_owned(),
            architecture: arch.to_owned(),
            variant: variant.map(str::to_owned),
        };
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(make(os, arch, None)),
            [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => {
                Ok(make(os, arch, Some(v)))
            }
            _ => Err(format!(
                "bad platform {s:?}: expected os/architecture[/variant]"
            )),
        }
    }

    /// The platform this process runs on, named as Go names it.
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Self {
            os: "linux".to_owned(),
            architecture: architecture.to_owned(),
            variant: None,
        }
    }

    /// This platform when it names both an OS and an architecture (an
    /// empty variant counts as none); `None` otherwise.
    pub fn complete(&self) -> Option<Self> {
        (!self.os.is_empty() && !self.architecture.is_empty()).then(|| Self {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone().filter(|v| !v.is_empty()),
        })
    }

    /// Whether `other` (as found in a base) satisfies this requested
    /// platform: a request without a variant takes any variant.
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A content descriptor: what a manifest, index or layout points at.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// `mediaType`.
    #[serde(default)]
    pub media_type: String,
    /// `digest`, as written (see [`Descriptor::digest`]).
    #[serde(default)]
    pub digest: String,
    /// `size` in bytes.
    #[serde(default)]
    pub size: u64,
    /// `platform`, in an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// `annotations`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
    /// Everything else (`urls`, `artifactType`, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

impl Descriptor {
    /// A descriptor of `size` bytes of `media_type` with `digest`.
    pub fn new(media_type: &str, digest: &Digest, size: u64) -> Self {
        Self {
            media_type: media_type.to_owned(),
            digest: digest.to_string(),
            size,
            ..Self::default()
        }
    }

    /// The digest, when it is a valid one.
    pub fn digest(&self) -> Option<Digest> {
        Digest::parse(&self.digest).ok()
    }
}

/// An image manifest (OCI, or Docker schema 2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// `schemaVersion` (2).
    #[serde(default = "two")]
    pub schema_version: u32,
    /// `mediaType`, when written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The config blob.
    #[serde(default)]
    pub config: Descriptor,
    /// The layers, base first.
    #[serde(default, deserialize_with = "null_as_default")]
    pub layers: Vec<Descriptor>,
    /// `annotations`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
    /// Everything else (`subject`, `artifactType`, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// An image index (OCI), or a Docker manifest list.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    /// `schemaVersion` (2).
    #[serde(default = "two")]
    pub schema_version: u32,
    /// `mediaType`, when written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests it lists (`null` reads as none).
    #[serde(default, deserialize_with = "null_as_default")]
    pub manifests: Vec<Descriptor>,
    /// `annotations`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
    /// Everything else.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ImageIndex {
    /// An empty OCI index.
    pub fn new() -> Self {
        Self {
            schema_version: 2,
            media_type: Some(media_type::OCI_INDEX.to_owned()),
            ..Self::default()
        }
    }
}

/// A manifest or an index, told apart by `mediaType` (else by whether it
/// has `manifests`).
#[derive(Debug, Clone, PartialEq)]
pub enum Manifest {
    /// An index or manifest list.
    Index(ImageIndex),
    /// An image manifest.
    Image(ImageManifest),
}

impl Manifest {
    /// The document's `annotations`.
    pub fn annotations(&self) -> &BTreeMap<String, String> {
        match self {
            Self::Index(i) => &i.annotations,
            Self::Image(m) => &m.annotations,
        }
    }

    /// The media type it declares; without a `mediaType` field, an OCI
    /// index or an OCI image manifest by its shape.
    pub fn media_type(&self) -> &str {
        match self {
            Self::Index(i) => i.media_type.as_deref().unwrap_or(media_type::OCI_INDEX),
            Self::Image(m) => m.media_type.as_deref().unwrap_or(media_type::OCI_MANIFEST),
        }
    }

    /// Parses manifest bytes; `Err` when they are not a JSON object of
    /// either shape.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        if !value.is_object() {
            return Err("not a JSON object".to_owned());
        }
        let index = match value.get("mediaType").and_then(Value::as_str) {
            Some(m) => media_type::is_index(m),
            None => value.get("manifests").is_some(),
        };
        if index {
            serde_json::from_value(value).map(Self::Index)
        } else {
            serde_json::from_value(value).map(Self::Image)
        }
        .map_err(|e| e.to_string())
    }
}

/// The `config` object of an image config: how a container runs. Field
/// names are Docker's, as the OCI spec keeps them; `Healthcheck`, `Shell`,
/// `OnBuild` and `ArgsEscaped` are Docker's extensions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// `User`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `ExposedPorts` (`"8080/tcp": {}`; the values, `{}` as Docker writes
    /// them, are kept as written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Value>>,
    /// `Env` (`KEY=value`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// `Entrypoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`. `Some(None)` is a `"Cmd": null` written on purpose: Docker
    /// writes it when `ENTRYPOINT` resets an inherited `CMD`.
    #[serde(
        default,
        deserialize_with = "null_kept",
        skip_serializing_if = "Option::is_none"
    )]
    pub cmd: Option<Option<Vec<String>>>,
    /// `Healthcheck`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// `ArgsEscaped` (Windows images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_escaped: Option<bool>,
    /// `Volumes` (`"/data": {}`; values kept as written, like `ExposedPorts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, Value>>,
    /// `WorkingDir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `Labels`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// `StopSignal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// `OnBuild` triggers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
    /// `Shell`, for the shell form of later instructions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    /// Everything else (`Hostname`, `Image`, Docker's other legacy fields, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// `Healthcheck`: how a container is checked. Durations are nanoseconds;
/// none is negative as Docker and BuildKit write them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    /// `Test`: `["NONE"]`, `["CMD", args...]` or `["CMD-SHELL", command]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Vec<String>>,
    /// `Interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
    /// `Timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// `StartPeriod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<u64>,
    /// `StartInterval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<u64>,
    /// `Retries`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u64>,
    /// Everything else.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `rootfs`: the layers' uncompressed digests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    /// `type` (`layers`).
    #[serde(rename = "type", default = "layers")]
    pub kind: String,
    /// `diff_ids`, base first.
    #[serde(default, deserialize_with = "null_as_default")]
    pub diff_ids: Vec<String>,
}

impl Default for RootFs {
    fn default() -> Self {
        Self {
            kind: layers(),
            diff_ids: Vec::new(),
        }
    }
}

/// One `history` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// `created`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// `created_by`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// `comment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// `empty_layer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_layer: Option<bool>,
    /// Everything else (`author`).
    #[serde(flatten)]
    pub extra: Extra,
}

/// An image config (OCI, or Docker's, which has the same shape).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `created`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// `author`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// `architecture`.
    #[serde(default)]
    pub architecture: String,
    /// `os`.
    #[serde(default)]
    pub os: String,
    /// `variant`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// `config`: how a container runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    /// `rootfs`.
    #[serde(default)]
    pub rootfs: RootFs,
    /// `history`, when written (`null` reads as not written; an empty list
    /// is written back as one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<History>>,
    /// Everything else (`os.version`, `os.features`, Docker's
    /// `container_config`, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

impl ImageConfig {
    /// The platform the config names.
    pub fn platform(&self) -> Platform {
        Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone(),
        }
    }

    /// `config.Labels`, empty when there are none.
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default()
    }
}

fn two() -> u32 {
    2
}

fn layers() -> String {
    "layers".to_owned()
}

/// A field that is there, `null` included, reads as `Some` (`Some(None)`
/// for `null`); only a missing one (the `default`) is `None`.
fn null_kept<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// `null` reads as the default (Go writes a nil map or slice as `null`).
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_print_and_match() {
        let p = Platform::parse("linux/arm64/v8").expect("valid");
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux//v8").is_err());
        let any = Platform::parse("linux/arm64").expect("valid");
        assert!(any.matches(&p) && !p.matches(&any));
        assert_eq!(
            serde_json::to_value(&any).expect("serialises"),
            serde_json::json!({"architecture": "arm64", "os": "linux"})
        );
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let text = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","x-top":[1],"manifests":[{"mediaType":"m","digest":"sha256:x","size":3,"x-entry":true,"platform":{"os":"linux","architecture":"amd64"}}],"annotations":{"a":"b"}}"#;
        let index: ImageIndex = serde_json::from_str(text).expect("parses");
        assert_eq!(index.manifests[0].extra["x-entry"], true);
        let back: Value = serde_json::to_value(&index).expect("serialises");
        let orig: Value = serde_json::from_str(text).expect("parses");
        assert_eq!(back, orig);
    }

    #[test]
    fn manifests_are_told_apart() {
        let index = br#"{"manifests": []}"#;
        assert!(matches!(Manifest::parse(index), Ok(Manifest::Index(_))));
        let image = br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"c","digest":"d","size":1},"layers":[]}"#;
        assert!(matches!(Manifest::parse(image), Ok(Manifest::Image(_))));
        assert!(Manifest::parse(b"[]").is_err());
        assert!(Manifest::parse(br#"{"manifests": null, "annotations": null}"#).is_ok());
        assert!(Manifest::parse(br#"{"config": {}, "layers": null}"#).is_ok());
    }

    #[test]
    fn configs_keep_what_they_do_not_model() {
        let text = r#"{"architecture":"amd64","os":"linux","os.version":"10.0","config":{"Env":["A=1"],"Hostname":"","Healthcheck":{"Test":["NONE"],"X-Future":1},"x-odd":[1,{"a":null}]},"rootfs":{"type":"layers","diff_ids":["sha256:a"]},"author":"me","container_config":{"Cmd":null}}"#;
        let c: ImageConfig = serde_json::from_str(text).expect("parses");
        let config = c.config.as_ref().expect("config");
        assert_eq!(config.env, Some(vec!["A=1".to_owned()]));
        assert_eq!(
            config.healthcheck.as_ref().and_then(|h| h.test.clone()),
            Some(vec!["NONE".to_owned()])
        );
        assert_eq!(c.author.as_deref(), Some("me"));
        assert_eq!(c.rootfs.diff_ids, ["sha256:a"]);
        assert!(config.extra.contains_key("Hostname") && c.extra.contains_key("os.version"));
        let back: Value = serde_json::to_value(&c).expect("serialises");
        let orig: Value = serde_json::from_str(text).expect("parses");
        assert_eq!(back, orig);
    }

    #[test]
    fn a_null_cmd_and_an_empty_history_are_written_back_as_they_were() {
        for (text, cmd) in [
            (r#"{"config":{"Cmd":null},"history":[]}"#, Some(None)),
            (
                r#"{"config":{"Cmd":["sh"]}}"#,
                Some(Some(vec!["sh".to_owned()])),
            ),
            (r#"{"config":{}}"#, None),
        ] {
            let c: ImageConfig = serde_json::from_str(text).expect("parses");
            assert_eq!(c.config.as_ref().and_then(|c| c.cmd.clone()), cmd, "{text}");
            let back = serde_json::to_value(&c).expect("serialises");
            let orig: Value = serde_json::from_str(text).expect("parses");
            assert_eq!(back["config"], orig["config"], "{text}");
            assert_eq!(back.get("history"), orig.get("history"), "{text}");
        }
        // Go's `null` for no history reads as none.
        let c: ImageConfig = serde_json::from_str(r#"{"history":null}"#).expect("parses");
        assert_eq!(c.history, None);
    }
}
