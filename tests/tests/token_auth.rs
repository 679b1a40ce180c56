//! Every kind of registry request against Debian's `docker-registry` with
//! `auth: token` and a real token issuer that grants exactly the scopes
//! asked for (as Docker Hub, GHCR, Harbor, Quay and GitLab run theirs):
//! manifest HEAD/GET/PUT, tags and tag lists, blob HEAD/GET/upload and
//! streamed copies, a cross-repository mount that the registry accepts
//! (its token carries push on the target and pull on the source), and the
//! native backend publishing an image whose base lives in another
//! repository of that registry by mounting, not streaming, its layers.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use rebased_core::config::RegistryConfig;
use rebased_core::{Digest, ImageRef};
use rebased_e2e::{free_port, image_table, BaseMaker, Daemon, TokenRegistry};
use rebased_registry::{ErrorKind, Registry};

const USER: &str = "bot";
const PASSWORD: &str = "s3cret-token-pw";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn client(host: &str, dir: &Path, password: &str) -> Registry {
    let file = dir.join(format!("password-{password}"));
    fs::write(&file, password).unwrap();
    let cfg = RegistryConfig {
        insecure: true,
        username: Some(USER.to_owned()),
        password_file: Some(file),
        ..RegistryConfig::default()
    };
    Registry::with_timeout(
        &BTreeMap::from([(host.to_owned(), cfg)]),
        Duration::from_secs(10),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn every_request_goes_through_token_auth() {
    let reg = TokenRegistry::start(USER, PASSWORD);
    let host = reg.registry.host.clone();
    let work = tempfile::tempdir().unwrap();
    let r = client(&host, work.path(), PASSWORD);
    let repo = |name: &str| ImageRef::parse_repository(&format!("{host}/{name}")).unwrap();
    let (base, app) = (repo("upstream/base"), repo("team/app"));

    runtime().block_on(async {
        // Blob upload, HEAD and GET.
        let layer: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let layer_digest = Digest::sha256(&layer);
        let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config_digest = Digest::sha256(config);
        assert!(!r.blob_exists(&base, &layer_digest).await.unwrap());
        r.push_blob(&base, Bytes::from(layer.clone()), &layer_digest)
            .await
            .unwrap();
        r.push_blob(&base, Bytes::from_static(config), &config_digest)
            .await
            .unwrap();
        assert!(r.blob_exists(&base, &layer_digest).await.unwrap());
        assert_eq!(
            r.blob(&base, &layer_digest, 1 << 20).await.unwrap(),
            layer
        );

        // Manifest PUT, HEAD and GET.
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]}}"#,
            config.len(),
            layer.len()
        );
        let digest = r
            .push_manifest(&base.with_tag("1"), manifest.clone().into_bytes(), MANIFEST)
            .await
            .unwrap();
        assert_eq!(r.resolve(&base.with_tag("1")).await.unwrap(), digest);
        let read = r.manifest(&base.with_tag("1")).await.unwrap();
        assert_eq!(read.bytes, manifest.as_bytes());
        assert_eq!(read.media_type, MANIFEST);

        // A cross-repository mount the registry accepts, then a manifest
        // push into the target.
        assert!(r.mount_blob(&app, &base, &layer_digest).await.unwrap());
        assert!(r.mount_blob(&app, &base, &config_digest).await.unwrap());
        assert!(r.blob_exists(&app, &layer_digest).await.unwrap());
        let pushed = r
            .push_manifest(&app.with_tag("1.0.0"), manifest.clone().into_bytes(), MANIFEST)
            .await
            .unwrap();
        assert_eq!(pushed, digest);

        // Tag moves and tag lists (the registry ignores `n`: every tag once).
        for t in ["latest", "1", "1.0", "a", "b"] {
            r.tag(&app, &digest, t).await.unwrap();
        }
        assert_eq!(r.resolve(&app.with_tag("latest")).await.unwrap(), digest);
        // A second version, pushed by digest, then `latest` moved onto it.
        let second = manifest.replace(
            r#""layers":"#,
            r#""annotations":{"org.opencontainers.image.version":"1.0.1"},"layers":"#,
        );
        let second_digest = Digest::sha256(second.as_bytes());
        r.push_manifest(&app.pinned(&second_digest), second.into_bytes(), MANIFEST)
            .await
            .unwrap();
        r.tag(&app, &second_digest, "latest").await.unwrap();
        assert_eq!(
            r.resolve(&app.with_tag("latest")).await.unwrap(),
            second_digest
        );
        assert_eq!(r.resolve(&app.with_tag("1.0")).await.unwrap(), digest);
        let read = r.manifest(&app.with_tag("latest")).await.unwrap();
        assert_eq!(read.annotations()["org.opencontainers.image.version"], "1.0.1");
        let mut tags = r.list_tags_in_pages(&app, 2).await.unwrap();
        tags.sort();
        assert_eq!(tags, ["1", "1.0", "1.0.0", "a", "b", "latest"]);
        assert!(r.list_tags(&repo("no/such")).await.unwrap().is_empty());

        // A streamed copy into a third repository.
        let other = repo("mirror/copy");
        assert_eq!(
            r.copy_blob(&base, &other, &layer_digest).await.unwrap(),
            layer.len() as u64
        );
        assert!(r.blob_exists(&other, &layer_digest).await.unwrap());

        // Wrong credentials: the issuer refuses, and the error says so.
        let wrong = client(&host, work.path(), "wrong");
        let e = wrong.resolve(&base.with_tag("1")).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unauthorized, "{e}");
        assert!(e.detail.contains("token endpoint"), "{e}");
    });

    // The mount's token asked for both scopes in one request ...
    let mount_scopes = vec![
        "repository:team/app:pull,push".to_owned(),
        "repository:upstream/base:pull".to_owned(),
    ];
    let granted = reg.granted_scopes();
    assert!(
        granted.iter().any(|s| {
            let mut s = s.clone();
            s.sort();
            s == mount_scopes
        }),
        "{granted:?}"
    );
    // ... the registry answered the mounts 201 ...
    let log = reg.access_log();
    let mounts: Vec<&String> = log
        .iter()
        .filter(|l| {
            l.contains("POST /v2/team/app/blobs/uploads/?mount=")
                && l.contains("&from=upstream/base")
        })
        .collect();
    assert!(!mounts.is_empty(), "{log:#?}");
    assert!(
        mounts.iter().any(|l| l.contains("HTTP/1.1\" 201 ")),
        "{mounts:#?}"
    );
    // ... and no layer bytes were uploaded to the target.
    assert!(
        !log.iter()
            .any(|l| l.contains("PATCH /v2/team/app/") || l.contains("PUT /v2/team/app/blobs/")),
        "{log:#?}"
    );
    // The streamed copy did PATCH (so the check above can fail).
    assert!(
        log.iter()
            .any(|l| l.contains("PATCH /v2/mirror/copy/blobs/uploads/")),
        "{log:#?}"
    );
}

#[test]
fn native_publish_mounts_base_layers_from_another_repository() {
    let reg = TokenRegistry::start(USER, PASSWORD);
    let host = reg.registry.host.clone();
    let bases = BaseMaker::new();
    bases.push_with_creds(
        &reg.registry,
        "upstream/base:latest",
        "v1",
        &format!("{USER}:{PASSWORD}"),
    );
    let work = tempfile::tempdir().unwrap();
    let ctx = rebased_e2e::app_context(
        work.path(),
        "app",
        &format!("FROM {host}/upstream/base:latest\nCOPY hello /hello\n"),
    );
    let password = work.path().join("password");
    fs::write(&password, PASSWORD).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let config = work.path().join("rebased.toml");
    fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"{}\"\nlisten = \"{listen}\"\n\n[registries.\"{host}\"]\ninsecure = true\nusername = \"{USER}\"\npassword_file = \"{}\"\n\n[builder]\nbackend = \"native\"\n{}",
            work.path().join("state").display(),
            password.display(),
            image_table("app", &ctx, &format!("{host}/team/app"), "tags = [\"latest\"]")
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&config, &listen, &work.path().join("daemon.log"));
    daemon.wait_version_never_failing("app", "1.0.0", Duration::from_secs(120));

    // The base's layers, read through the token flow.
    let base_layers: Vec<String> = runtime().block_on(async {
        let r = client(&host, work.path(), PASSWORD);
        let m = r
            .manifest(&ImageRef::parse(&format!("{host}/upstream/base:latest")).unwrap())
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap();
        v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned())
            .collect()
    });
    assert!(!base_layers.is_empty());
    let log = reg.access_log();
    for layer in &base_layers {
        assert!(
            log.iter().any(
                |l| l.contains(&format!("?mount={layer}&from=upstream/base"))
                    && l.contains("HTTP/1.1\" 201 ")
            ),
            "base layer {layer} not mounted: {log:#?}\n{}",
            daemon.log_text()
        );
        let encoded = layer.replace(':', "%3A");
        assert!(
            !log.iter().any(|l| l.contains("PUT /v2/team/app/")
                && (l.contains(&format!("digest={layer}"))
                    || l.contains(&format!("digest={encoded}")))),
            "base layer {layer} uploaded: {log:#?}"
        );
    }
    let mounted: Vec<&String> = log
        .iter()
        .filter(|l| {
            l.contains("POST /v2/team/app/blobs/uploads/?mount=")
                && l.contains("&from=upstream/base")
                && l.contains("HTTP/1.1\" 201 ")
        })
        .collect();
    assert!(!mounted.is_empty(), "no mount was accepted: {log:#?}");
    // Only the app's own layer and config are uploaded: no base layer is
    // streamed (a streamed copy PATCHes; the app's own blobs are PUT whole).
    assert!(
        !log.iter().any(|l| l.contains("PATCH /v2/team/app/")),
        "a base layer was streamed: {log:#?}"
    );
    assert!(
        !daemon.log_text().contains("mount refused"),
        "{}",
        daemon.log_text()
    );
}
