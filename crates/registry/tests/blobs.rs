//! Blob and manifest operations against Debian's real `docker-registry`
//! (skipped, with a note, when `/usr/bin/docker-registry` is missing): push
//! and existence, cross-repository mounts, streamed copies within and
//! between registries, streamed uploads of a file, bounded reads,
//! streaming into an OCI layout, and
//! manifest pushes whose digest the registry reports back.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rebased_core::config::RegistryConfig;
use rebased_core::{Digest, ImageRef};
use rebased_registry::{ErrorKind, Layout, Registry};
use sha2::Digest as _;

const BINARY: &str = "/usr/bin/docker-registry";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// A `docker-registry` on a free 127.0.0.1 port, storing in a temp dir,
/// killed on drop.
struct LocalRegistry {
    host: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl LocalRegistry {
    /// The registry, running (`scripts/test.sh` installs it: a missing
    /// binary fails the test rather than skipping it).
    fn start() -> Self {
        assert!(
            Path::new(BINARY).exists(),
            "{BINARY} is not installed (scripts/test.sh installs docker-registry)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(BINARY)
            .arg("serve")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let reg = Self {
            host,
            child,
            _dir: dir,
        };
        let start = Instant::now();
        while !reg.answers() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "docker-registry did not answer on {}",
                reg.host
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(&self.host) else {
            return false;
        };
        let req = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.host);
        let mut resp = String::new();
        s.write_all(req.as_bytes()).is_ok()
            && s.read_to_string(&mut resp).is_ok()
            && resp.split_whitespace().nth(1) == Some("200")
    }

    fn repo(&self, name: &str) -> ImageRef {
        ImageRef::parse_repository(&format!("{}/{name}", self.host)).unwrap()
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client(registries: &[&LocalRegistry]) -> Registry {
    let config = registries
        .iter()
        .map(|r| {
            let c = RegistryConfig {
                insecure: true,
                ..RegistryConfig::default()
            };
            (r.host.clone(), c)
        })
        .collect::<BTreeMap<_, _>>();
    Registry::with_timeout(&config, Duration::from_secs(10))
}

fn sha256(data: &[u8]) -> Digest {
    let hex: String = sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Digest::parse(&format!("sha256:{hex}")).unwrap()
}

/// `n` bytes that do not repeat in 4 MiB pieces.
fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| ((i as u64 * 2_654_435_761) >> 13) as u8 ^ seed)
        .collect()
}

#[tokio::test]
async fn push_blob_then_blob_exists() {
    let reg = LocalRegistry::start();
    let r = client(&[&reg]);
    let repo = reg.repo("acme/one");
    let blob = data(1000, 1);
    let digest = sha256(&blob);
    assert!(!r.blob_exists(&repo, &digest).await.unwrap());
    r.push_blob(&repo, Bytes::from(blob.clone()), &digest)
        .await
        .unwrap();
    assert!(r.blob_exists(&repo, &digest).await.unwrap());
    assert!(!r
        .blob_exists(&reg.repo("acme/other"), &digest)
        .await
        .unwrap());

    // Data that does not match its digest is refused before anything is sent.
    let wrong = sha256(b"something else");
    let e = r
        .push_blob(&repo, Bytes::from(blob), &wrong)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Protocol, "{e}");
    assert!(e.reference.contains(wrong.as_str()), "{e}");
    assert!(!r.blob_exists(&repo, &wrong).await.unwrap());

    // An empty blob is a blob too.
    let empty = sha256(b"");
    r.push_blob(&repo, Bytes::new(), &empty).await.unwrap();
    assert!(r.blob_exists(&repo, &empty).await.unwrap());
}

#[tokio::test]
async fn mount_blob_across_repositories() {
    let reg = LocalRegistry::start();
    let r = client(&[&reg]);
    let (from, to) = (reg.repo("acme/base"), reg.repo("acme/app"));
    let blob = data(5000, 2);
    let digest = sha256(&blob);
    r.push_blob(&from, Bytes::from(blob), &digest)
        .await
        .unwrap();
    assert!(!r.blob_exists(&to, &digest).await.unwrap());
    assert!(r.mount_blob(&to, &from, &digest).await.unwrap());
    assert!(r.blob_exists(&to, &digest).await.unwrap());

    // A blob the source does not hold: the registry starts an upload (202).
    let missing = sha256(b"not there");
    assert!(!r.mount_blob(&to, &from, &missing).await.unwrap());
    assert!(!r.blob_exists(&to, &missing).await.unwrap());
    // Another registry cannot be mounted from.
    let elsewhere = ImageRef::parse_repository("127.0.0.1:1/acme/base").unwrap();
    assert!(!r.mount_blob(&to, &elsewhere, &digest).await.unwrap());
}

#[tokio::test]
async fn copy_blob_within_and_between_registries() {
    let (one, two) = (LocalRegistry::start(), LocalRegistry::start());
    let r = client(&[&one, &two]);
    // Larger than two upload pieces, so the stream is re-cut.
    let blob = data((9 << 20) + 12_345, 3);
    let digest = sha256(&blob);
    let source = one.repo("acme/src");
    r.push_blob(&source, Bytes::from(blob.clone()), &digest)
        .await
        .unwrap();

    let same = one.repo("acme/dst");
    let n = r.copy_blob(&source, &same, &digest).await.unwrap();
    assert_eq!(n, blob.len() as u64);
    assert!(r.blob_exists(&same, &digest).await.unwrap());

    let other = two.repo("mirror/dst");
    let n = r.copy_blob(&source, &other, &digest).await.unwrap();
    assert_eq!(n, blob.len() as u64);
    let back = r.blob(&other, &digest, 16 << 20).await.unwrap();
    assert!(back == blob, "the copy differs");

    // A blob the source lacks: an error naming the source.
    let missing = sha256(b"missing");
    let e = r.copy_blob(&source, &other, &missing).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert_eq!(e.registry, one.host);
    assert!(!r.blob_exists(&other, &missing).await.unwrap());
}

#[tokio::test]
async fn push_blob_file_streams_a_file_and_refuses_a_wrong_digest() {
    let reg = LocalRegistry::start();
    let r = client(&[&reg]);
    let repo = reg.repo("acme/file");
    // Larger than one 4 MiB piece, not a multiple of it.
    let blob = data(9 << 20 | 123, 7);
    let digest = sha256(&blob);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layer");
    std::fs::write(&path, &blob).unwrap();
    let n = r.push_blob_file(&repo, &path, &digest).await.unwrap();
    assert_eq!(n, blob.len() as u64);
    assert_eq!(r.blob(&repo, &digest, 16 << 20).await.unwrap(), blob);
    // The file does not hold what its digest says: nothing is committed.
    let other = sha256(b"something else");
    let e = r.push_blob_file(&repo, &path, &other).await.unwrap_err();
    assert!(!r.blob_exists(&repo, &other).await.unwrap(), "{e}");
    let e = r
        .push_blob_file(&repo, &dir.path().join("missing"), &digest)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
}

#[tokio::test]
async fn blob_reads_are_bounded_and_verified() {
    let reg = LocalRegistry::start();
    let r = client(&[&reg]);
    let repo = reg.repo("acme/read");
    let blob = data(70_000, 4);
    let digest = sha256(&blob);
    r.push_blob(&repo, Bytes::from(blob.clone()), &digest)
        .await
        .unwrap();
    assert_eq!(r.blob(&repo, &digest, 70_000).await.unwrap(), blob);
    let e = r.blob(&repo, &digest, 69_999).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Protocol, "{e}");
    assert!(e.detail.contains("limit"), "{e}");
    let e = r.blob(&repo, &sha256(b"absent"), 100).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
}

#[tokio::test]
async fn blob_to_writer_fills_a_layout() {
    let reg = LocalRegistry::start();
    let r = client(&[&reg]);
    let repo = reg.repo("acme/layout");
    let blob = data(300_000, 5);
    let digest = sha256(&blob);
    r.push_blob(&repo, Bytes::from(blob.clone()), &digest)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open(dir.path()).unwrap();
    let mut w = layout.blob_writer(&digest).unwrap();
    let n = r.blob_to_writer(&repo, &digest, &mut w).await.unwrap();
    assert_eq!(n, blob.len() as u64);
    assert_eq!(w.commit().await.unwrap(), n);
    assert!(layout.has_blob(&digest));
    assert_eq!(layout.blob(&digest, 1 << 20).unwrap(), blob);
}

#[tokio::test]
async fn push_manifest_returns_the_registry_digest() {
    let reg = LocalRegistry::start();
    let r = client(&[&reg]);
    let repo = reg.repo("acme/image");
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = sha256(config);
    r.push_blob(&repo, Bytes::from_static(config), &config_digest)
        .await
        .unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest.as_str(), "size": config.len()},
        "layers": []
    })
    .to_string()
    .into_bytes();
    let tagged = repo.with_tag("v1");
    let digest = r
        .push_manifest(&tagged, manifest.clone(), MANIFEST_TYPE)
        .await
        .unwrap();
    assert_eq!(digest, sha256(&manifest));
    assert_eq!(r.resolve(&tagged).await.unwrap(), digest);
    let read = r.manifest(&tagged).await.unwrap();
    assert_eq!(read.bytes, manifest);
    assert_eq!(read.media_type, MANIFEST_TYPE);

    // By digest (as an index's children are pushed).
    let child = reg.repo("acme/child");
    r.push_blob(&child, Bytes::from_static(config), &config_digest)
        .await
        .unwrap();
    let pinned = child.pinned(&digest);
    assert_eq!(
        r.push_manifest(&pinned, manifest.clone(), MANIFEST_TYPE)
            .await
            .unwrap(),
        digest
    );
    assert_eq!(r.resolve(&pinned).await.unwrap(), digest);

    // A digest reference the bytes do not match is refused.
    let wrong = child.pinned(&sha256(b"other"));
    let e = r
        .push_manifest(&wrong, manifest, MANIFEST_TYPE)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Protocol, "{e}");

    // A manifest naming a blob the repository lacks is the registry's refusal.
    let dangling = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(b"nope").as_str(), "size": 4},
        "layers": []
    })
    .to_string()
    .into_bytes();
    let e = r
        .push_manifest(&repo.with_tag("dangling"), dangling, MANIFEST_TYPE)
        .await
        .unwrap_err();
    assert_ne!(e.kind, ErrorKind::Unreachable, "{e}");
}
