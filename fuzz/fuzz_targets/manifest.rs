//! Manifests, indexes and image configs as a registry serves them:
//! `index_platforms`, `RawManifest::annotations`, the provenance read back
//! from those annotations, platforms, and a base config carried into a new
//! image by the native backend.

#![no_main]

use std::collections::{BTreeMap, HashMap};

use libfuzzer_sys::fuzz_target;
use rebased_builder::native::image::{Platform, Stage};
use rebased_builder::native::plan::Step;
use rebased_builder::provenance;
use rebased_core::Digest;
use rebased_registry::{index_platforms, RawManifest};

const DIGEST: &str = "sha256:ee3a7427e984f3d47ef6b31962b8255b59b97c4a79dc6804134da3986c55288a";

fuzz_target!(|data: &[u8]| {
    let _ = index_platforms(data);
    let manifest = RawManifest {
        bytes: data.to_vec(),
        digest: Digest::parse(DIGEST).expect("valid digest"),
        media_type: String::new(),
    };
    let annotations = manifest.annotations();
    let _ = provenance::recorded(&annotations);
    let _ = provenance::bases_from(&annotations);
    // Every annotation value as each provenance field.
    for value in annotations.values().take(4) {
        let one: BTreeMap<String, String> = [
            provenance::BASES,
            provenance::PLATFORMS,
            provenance::CREATED,
            provenance::SUPERSEDES,
            provenance::TRIGGER,
        ]
        .into_iter()
        .map(|k| (k.to_owned(), value.clone()))
        .collect();
        let _ = provenance::recorded(&one);
    }
    // The bytes as a base image config.
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = Platform::parse(s);
    }
    let Ok(config) = serde_json::from_slice::<rebased_core::oci::ImageConfig>(data) else {
        return;
    };
    let _ = config.platform().complete();
    let platform = Platform::parse("linux/arm64/v8").expect("valid platform");
    let mut stage = Stage::new(
        Some(&config),
        &platform,
        &HashMap::new(),
        '\\',
        "1970-01-01T00:00:00Z".to_owned(),
    );
    let steps = [
        ("ENV", "PATH=$PATH:/x HOME=${HOME:-/root}"),
        ("WORKDIR", "sub"),
        ("LABEL", "a=b"),
        ("ENTRYPOINT", "[\"/x\"]"),
        ("CMD", "run"),
        ("EXPOSE", "80/udp"),
        ("VOLUME", "/data"),
        ("COPY", "--chown=$USER a b/"),
    ];
    for (line, (keyword, args)) in steps.into_iter().enumerate() {
        let step = Step {
            line: line + 2,
            keyword: keyword.to_owned(),
            args: args.to_owned(),
        };
        if let Ok(Some(copy)) = stage.apply(&step, &BTreeMap::new()) {
            stage.add_layer(DIGEST, copy.created_by);
        }
    }
    let _ = stage.env();
    let _ = stage.finish(&BTreeMap::new());
});
