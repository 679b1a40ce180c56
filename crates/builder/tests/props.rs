//! The native backend's parsers over arbitrary and near-valid input: a
//! Dockerfile through `Plan::new` and every `Stage::apply`, `--chown`
//! against passwd files, `find_file` over layer bytes and over real tars
//! with odd entries, image file trees merged from such tars and paths
//! resolved in them, and provenance read back from annotations. None may
//! panic.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::io::Write;

use proptest::prelude::*;
use rebased_builder::native::image::{Platform, Stage};
use rebased_builder::native::layer::{find_file, Lookup};
use rebased_builder::native::passwd::{needs_lookup, resolve_chown};
use rebased_builder::native::plan::{copy_args, Plan};
use rebased_builder::native::tree::{read_layer, Tree};
use rebased_builder::provenance;
use rebased_core::dockerfile::Dockerfile;

/// Lines the native backend accepts, or nearly does.
fn native_dockerfile() -> impl Strategy<Value = String> {
    let from = prop::sample::select(vec![
        "FROM busybox",
        "FROM scratch",
        "ARG T=1\nFROM busybox:${T}",
        "FROM --platform=$TARGETPLATFORM alpine",
    ]);
    let step = prop::sample::select(vec![
        "ENV A=1 B=\"two words\" C=${A:-x}",
        "ENV LEGACY value with spaces",
        "ENV =x",
        "ENV ${EMPTY}=x",
        "LABEL a=b \"c d\"=e",
        "LABEL bare",
        "WORKDIR app",
        "WORKDIR ../../..",
        "WORKDIR $HOME/x",
        "USER ${USER:-app}:app",
        "ARG USER",
        "ARG X=${Y:+z}",
        "COPY --chown=app:app --chmod=0644 a b /dst/",
        "COPY --chmod=99999 a /b",
        "COPY --chmod=${M} a /b",
        "COPY --link [\"x y\", \"/z/\"]",
        "COPY [\"broken\" /z",
        "ADD a.tar /",
        "EXPOSE 80 443/tcp 8000-8002/udp",
        "EXPOSE 65535-0",
        "EXPOSE 1-65535",
        "EXPOSE 80/quic",
        "VOLUME [\"/data\", \"\"]",
        "VOLUME /a /b",
        "STOPSIGNAL SIGTERM",
        "SHELL [\"/bin/ash\", \"-c\"]",
        "SHELL []",
        "SHELL /bin/sh",
        "HEALTHCHECK --interval=1m30s --timeout=500ms --retries=3 CMD wget -q localhost",
        "HEALTHCHECK --interval=99999999999h CMD x",
        "HEALTHCHECK --interval=1.5.5s CMD x",
        "HEALTHCHECK --interval=µs CMD x",
        "HEALTHCHECK NONE",
        "HEALTHCHECK NONE x",
        "HEALTHCHECK --retries CMD x",
        "ONBUILD COPY . /",
        "MAINTAINER someone",
        "ENTRYPOINT [\"/bin/app\"]",
        "ENTRYPOINT run it",
        "CMD --help",
        "CMD [\"a\", 1]",
    ]);
    (from, prop::collection::vec(step, 0..10))
        .prop_map(|(f, steps)| format!("{f}\n{}\n", steps.join("\n")))
}

fn apply_all(text: &str, base: &serde_json::Value) {
    // A base config that is no image config is refused when it is read (the
    // native backend never gets that far); what parses goes into the stage.
    let Ok(base) = serde_json::from_value::<rebased_core::oci::ImageConfig>(base.clone()) else {
        return;
    };
    let base = &base;
    let build_args: BTreeMap<String, String> = [("USER".to_owned(), "app".to_owned())].into();
    let Ok(df) = Dockerfile::parse(text, &build_args) else {
        return;
    };
    let Ok(plan) = Plan::new(&df, &build_args) else {
        return;
    };
    let platform = Platform::parse("linux/arm/v7").unwrap();
    let mut stage = Stage::new(
        plan.base.as_ref().map(|_| base),
        &platform,
        &plan.globals,
        plan.escape,
        "1970-01-01T00:00:00Z".to_owned(),
    );
    for step in &plan.steps {
        if matches!(step.keyword.as_str(), "COPY" | "ADD") {
            let _ = copy_args(&step.args, plan.escape);
        }
        match stage.apply(step, &build_args) {
            Ok(Some(copy)) => stage.add_layer("sha256:00", copy.created_by),
            Ok(None) => {}
            Err(_) => return,
        }
    }
    let _ = stage.finish(&BTreeMap::from([("k".to_owned(), "v".to_owned())]));
}

fn base_config() -> impl Strategy<Value = serde_json::Value> {
    prop::sample::select(vec![
        serde_json::json!({"config": {"Env": ["PATH=/bin", "HOME=/root"], "WorkingDir": "/srv", "Cmd": ["sh"]}}),
        serde_json::json!({"config": {"Env": [1, "NOEQUALS", null], "WorkingDir": 5, "Shell": "sh", "Labels": []}}),
        serde_json::json!({"config": null, "rootfs": [], "history": {}}),
        serde_json::json!({"config": [], "rootfs": {"diff_ids": "x"}}),
        serde_json::json!([]),
        serde_json::json!(null),
    ])
}

/// A tar (maybe gzipped) of entries with odd names, kinds and links.
fn layerish() -> impl Strategy<Value = Vec<u8>> {
    let name = prop::sample::select(vec![
        "etc/passwd",
        "./etc/passwd",
        "/etc/passwd",
        "etc/../etc/passwd",
        "etc/.wh.passwd",
        "etc/.wh..wh..opq",
        ".wh.etc",
        "etc",
        "usr/passwd",
        "",
    ]);
    let kind = prop::sample::select(vec![b'0', b'1', b'2', b'5', b'7', b'x']);
    let link = prop::sample::select(vec![
        "usr/passwd",
        "etc/passwd",
        "../../x",
        "",
        "/usr/passwd",
    ]);
    let entry = (name, kind, link, prop::collection::vec(any::<u8>(), 0..40));
    (
        prop::collection::vec(entry, 0..6),
        any::<bool>(),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(entries, gzip, cut)| {
            let mut b = tar::Builder::new(Vec::new());
            for (name, kind, link, data) in entries {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::new(kind));
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                let _ = h.set_path(name);
                let _ = h.set_link_name(link);
                h.set_cksum();
                let _ = b.append(&h, data.as_slice());
            }
            let mut tar = b.into_inner().unwrap_or_default();
            // Cut the archive short now and then.
            if cut.index(4) == 0 {
                let at = cut.index(tar.len() + 1);
                tar.truncate(at);
            }
            if gzip {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&tar).unwrap();
                gz.finish().unwrap()
            } else {
                tar
            }
        })
}

proptest! {
    #[test]
    fn native_plans_and_stages_never_panic(text in native_dockerfile(), base in base_config()) {
        apply_all(&text, &base);
    }

    #[test]
    fn arbitrary_dockerfiles_through_the_native_backend_never_panic(text in "\\PC{0,200}") {
        apply_all(&text, &serde_json::json!({}));
    }

    #[test]
    fn chown_resolution_never_panics(
        spec in "[a-z0-9:+-]{0,12}|\\PC{0,10}",
        passwd in prop::option::of("([a-z0-9:#x -]{0,30}\n){0,5}"),
        group in prop::option::of("([a-z0-9:#x,-]{0,20}\n){0,5}"),
    ) {
        let resolved = resolve_chown(&spec, passwd.as_deref(), group.as_deref());
        if !needs_lookup(&spec) {
            prop_assert_eq!(resolve_chown(&spec, None, None), resolved);
        }
    }

    #[test]
    fn find_file_never_panics_on_bytes(blob in prop::collection::vec(any::<u8>(), 0..2048), gz in any::<bool>()) {
        let mut blob = blob;
        if gz && blob.len() >= 2 {
            blob[0] = 0x1f;
            blob[1] = 0x8b;
        }
        let _ = find_file(&blob, "etc/passwd", 1 << 16);
    }

    #[test]
    fn find_file_never_panics_on_odd_tars(blob in layerish(), path in prop::sample::select(vec!["etc/passwd", "etc", "/etc/./passwd", "..", ""])) {
        if let Ok(Lookup::Found(data)) = find_file(&blob, path, 1 << 16) {
            prop_assert!(data.len() <= 1 << 16);
        }
    }

    #[test]
    fn file_trees_never_panic_and_resolve_inside(
        layers in prop::collection::vec(layerish(), 0..4),
        path in prop::sample::select(vec!["/etc/passwd", "etc", "/usr/passwd/x", "../..", "/", "etc/../usr/./passwd/"]),
    ) {
        let mut tree = Tree::default();
        for blob in &layers {
            if let Ok(changes) = read_layer(blob, 1 << 16) {
                let _ = tree.apply(&changes);
            }
        }
        if let Ok(r) = tree.resolve(path) {
            prop_assert!(r.dirs <= r.segs.len());
            prop_assert!(r.segs.iter().all(|s| !s.is_empty() && s != "." && s != ".."));
            for k in 0..r.dirs {
                let p = r.segs[..=k].join("/");
                prop_assert!(tree.get(&p).is_some(), "{} counted as a directory", p);
            }
        }
    }

    #[test]
    fn provenance_reads_anything_back(
        values in prop::collection::vec(prop::sample::select(vec![
            "{}", "{\"docker.io/library/a:1\":\"sha256:ee3a7427e984f3d47ef6b31962b8255b59b97c4a79dc6804134da3986c55288a\"}",
            "{\"a\":\"sha256:bad\"}", "[]", "null", "not json", "2024-05-01T10:00:00Z", "2024-13-01T99:00:00+25:00",
            "1.2.3", "1.2.18446744073709551615-r18446744073709551615", "manual", "base", "{\"linux/amd64\":{}}",
        ]), 5),
    ) {
        let keys = [provenance::BASES, provenance::PLATFORMS, provenance::CREATED, provenance::SUPERSEDES, provenance::TRIGGER];
        let map: BTreeMap<String, String> =
            keys.iter().zip(values).map(|(k, v)| ((*k).to_owned(), v.to_owned())).collect();
        let recorded = provenance::recorded(&map);
        if let Some(v) = recorded.supersedes {
            prop_assert!(v.next_patch() >= v);
        }
        let _ = provenance::bases_from(&map);
    }
}
