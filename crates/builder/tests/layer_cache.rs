//! The native layer cache through whole builds into an OCI layout (`FROM
//! scratch`, so no registry is involved): unchanged sources are not tarred
//! again, touched but equal ones are not compressed again, and any real
//! change, a rewrite that keeps size and mtime included, gives a new layer
//! holding the new bytes. A blob missing from the target is built again.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use flate2::read::GzDecoder;
use rebased_builder::native::cache::LayerCache;
use rebased_builder::{BuildRequest, Native, Target};
use rebased_registry::layout::Layout;
use rebased_registry::Registry;
use tokio_util::sync::CancellationToken;

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        fs::create_dir_all(ctx.join("files/sub")).unwrap();
        for n in 0..20 {
            fs::write(ctx.join(format!("files/sub/f{n}")), format!("file {n}\n")).unwrap();
        }
        fs::write(ctx.join("files/data"), "aaaa").unwrap();
        Setup { dir }
    }

    fn ctx(&self) -> std::path::PathBuf {
        self.dir.path().join("ctx")
    }

    fn layout(&self) -> std::path::PathBuf {
        self.dir.path().join("layout")
    }

    /// Builds version `tag`; the log and the own layer's digest.
    async fn build(&self, cache: Option<LayerCache>, tag: &str) -> (String, String) {
        let (log, layers) = self
            .build_dockerfile(
                cache,
                tag,
                "FROM scratch\nCOPY files/ /data/\nCMD [\"/data/run\"]\n",
            )
            .await;
        (log, layers[0].clone())
    }

    /// Builds `dockerfile` as version `tag`; the log and the layer digests.
    async fn build_dockerfile(
        &self,
        cache: Option<LayerCache>,
        tag: &str,
        dockerfile: &str,
    ) -> (String, Vec<String>) {
        let req = BuildRequest {
            platform_dockerfiles: Default::default(),
            platform_annotations: Default::default(),
            image: "app".to_owned(),
            job: tag.to_owned(),
            context: self.ctx(),
            dockerfile: dockerfile.to_owned(),
            build_args: BTreeMap::new(),
            target: Target::Layout {
                path: self.layout(),
                tag: tag.to_owned(),
            },
            platforms: Vec::new(),
            source_date_epoch: Some(0),
            annotations: BTreeMap::new(),
            insecure_registries: Vec::new(),
            workdir: self.dir.path().join("work"),
            auth_json: None,
            secrets: BTreeMap::new(),
            ca_files: Vec::new(),
        };
        let native = Native {
            timeout: Duration::from_secs(60),
            layer_cache: cache,
        };
        let registry = Registry::new(&BTreeMap::new());
        let out = native
            .build(&req, &registry, &CancellationToken::new())
            .await
            .unwrap();
        let layout = Layout::open(&self.layout()).unwrap();
        let manifest: serde_json::Value =
            serde_json::from_slice(&layout.manifest(tag).unwrap().bytes).unwrap();
        let layers = manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned())
            .collect();
        (out.log, layers)
    }

    /// The entry names of the layer `digest` in the layout.
    fn names_in_layer(&self, digest: &str) -> Vec<String> {
        let blob = self
            .layout()
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        let mut tar = tar::Archive::new(GzDecoder::new(fs::File::open(blob).unwrap()));
        tar.entries()
            .unwrap()
            .map(|e| {
                let name = e.unwrap().path().unwrap().display().to_string();
                name.trim_end_matches('/').to_owned()
            })
            .collect()
    }

    /// A file of the layer `digest` in the layout.
    fn file_in_layer(&self, digest: &str, path: &str) -> String {
        let blob = self
            .layout()
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        let mut tar = tar::Archive::new(GzDecoder::new(fs::File::open(blob).unwrap()));
        for e in tar.entries().unwrap() {
            let mut e = e.unwrap();
            if e.path().unwrap() == Path::new(path) {
                let mut s = String::new();
                e.read_to_string(&mut s).unwrap();
                return s;
            }
        }
        panic!("{path} not in {digest}");
    }
}

const NOT_REBUILT: &str = "sources unchanged since an earlier build, not rebuilt";
const NOT_RECOMPRESSED: &str = "same contents as an earlier build, not recompressed";

#[tokio::test]
async fn unchanged_sources_are_not_tarred_again() {
    let s = Setup::new();
    let cache = || Some(LayerCache::new(s.dir.path().join("cache")).racy_window(Duration::ZERO));
    let (log1, l1) = s.build(cache(), "1.0.0").await;
    assert!(
        !log1.contains(NOT_REBUILT) && !log1.contains(NOT_RECOMPRESSED),
        "{log1}"
    );
    let (log2, l2) = s.build(cache(), "1.0.1").await;
    assert!(log2.contains(NOT_REBUILT), "{log2}");
    assert_eq!(l1, l2);
    assert_eq!(s.file_in_layer(&l2, "data/data"), "aaaa");
}

#[tokio::test]
async fn fresh_or_touched_sources_are_hashed_not_compressed() {
    let s = Setup::new();
    // The default window: the files were written just now, so their stamp
    // is not trusted and the contents decide.
    let cache = || Some(LayerCache::new(s.dir.path().join("cache")));
    let (_, l1) = s.build(cache(), "1.0.0").await;
    let (log2, l2) = s.build(cache(), "1.0.1").await;
    assert!(log2.contains(NOT_RECOMPRESSED), "{log2}");
    assert_eq!(l1, l2);
    // Touched: another mtime, same bytes.
    let later = std::time::SystemTime::now() - Duration::from_secs(600);
    fs::File::options()
        .write(true)
        .open(s.ctx().join("files/data"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    let trusting = || Some(LayerCache::new(s.dir.path().join("cache")).racy_window(Duration::ZERO));
    let (log3, l3) = s.build(trusting(), "1.0.2").await;
    assert!(log3.contains(NOT_RECOMPRESSED), "{log3}");
    assert_eq!(l1, l3);
}

#[tokio::test]
async fn a_rewrite_keeping_size_and_mtime_gives_a_new_layer() {
    let s = Setup::new();
    let cache = || Some(LayerCache::new(s.dir.path().join("cache")).racy_window(Duration::ZERO));
    let data = s.ctx().join("files/data");
    let mtime = fs::metadata(&data).unwrap().modified().unwrap();
    let (_, l1) = s.build(cache(), "1.0.0").await;
    std::thread::sleep(Duration::from_millis(50));
    fs::write(&data, "bbbb").unwrap();
    fs::File::options()
        .write(true)
        .open(&data)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let (log2, l2) = s.build(cache(), "1.0.1").await;
    assert_ne!(l1, l2, "{log2}");
    assert!(
        !log2.contains(NOT_REBUILT) && !log2.contains(NOT_RECOMPRESSED),
        "{log2}"
    );
    assert_eq!(s.file_in_layer(&l2, "data/data"), "bbbb");
    // And the old version's layer still holds the old bytes.
    assert_eq!(s.file_in_layer(&l1, "data/data"), "aaaa");
}

#[tokio::test]
async fn a_blob_missing_from_the_target_is_built_again() {
    let s = Setup::new();
    let cache = || Some(LayerCache::new(s.dir.path().join("cache")).racy_window(Duration::ZERO));
    let (_, l1) = s.build(cache(), "1.0.0").await;
    let blob = s
        .layout()
        .join("blobs/sha256")
        .join(l1.trim_start_matches("sha256:"));
    fs::remove_file(&blob).unwrap();
    let (log2, l2) = s.build(cache(), "1.0.1").await;
    assert!(
        !log2.contains(NOT_REBUILT) && !log2.contains(NOT_RECOMPRESSED),
        "{log2}"
    );
    assert_eq!(l1, l2);
    assert!(blob.is_file(), "written again");
    assert_eq!(s.file_in_layer(&l2, "data/data"), "aaaa");
}

#[tokio::test]
async fn without_a_cache_every_build_makes_its_layer() {
    let s = Setup::new();
    let (_, l1) = s.build(None, "1.0.0").await;
    let (log2, l2) = s.build(None, "1.0.1").await;
    assert!(
        !log2.contains(NOT_REBUILT) && !log2.contains(NOT_RECOMPRESSED),
        "{log2}"
    );
    assert_eq!(l1, l2);
}

#[tokio::test]
async fn a_broken_cache_never_fails_a_build() {
    let s = Setup::new();
    // The cache directory cannot be made: the build goes on and says so.
    let blocked = s.dir.path().join("blocked");
    fs::write(&blocked, "a file, not a directory").unwrap();
    let (log1, l1) = s.build(Some(LayerCache::new(&blocked)), "1.0.0").await;
    assert!(log1.contains("layer cache: cannot record layer"), "{log1}");
    // Records that are not what the cache wrote are misses.
    let dir = s.dir.path().join("cache");
    let cache = || Some(LayerCache::new(&dir).racy_window(Duration::ZERO));
    s.build(cache(), "1.0.1").await;
    for map in ["meta", "content"] {
        for e in fs::read_dir(dir.join(map)).unwrap() {
            fs::write(e.unwrap().path(), "{\"digest\": [").unwrap();
        }
    }
    let (log3, l3) = s.build(cache(), "1.0.2").await;
    assert!(
        !log3.contains(NOT_REBUILT) && !log3.contains(NOT_RECOMPRESSED),
        "{log3}"
    );
    assert_eq!(l1, l3);
    // And the records written over them serve the next build.
    let (log4, _) = s.build(cache(), "1.0.3").await;
    assert!(log4.contains(NOT_REBUILT), "{log4}");
}

#[tokio::test]
async fn created_directories_are_in_the_layer_and_in_its_cache_key() {
    let s = Setup::new();
    let cache = || Some(LayerCache::new(s.dir.path().join("cache")).racy_window(Duration::ZERO));
    // FROM scratch has no /data: the COPY's layer makes it.
    let plain = "FROM scratch\nCOPY files/ /data/\n";
    let (_, l1) = s.build_dockerfile(cache(), "1.0.0", plain).await;
    assert_eq!(l1.len(), 1);
    assert!(s.names_in_layer(&l1[0]).contains(&"data".to_owned()));
    // After `WORKDIR /data` the directory is the WORKDIR's, and the same
    // sources make another COPY layer: no entry for /data.
    let workdir = "FROM scratch\nWORKDIR /data\nCOPY files/ ./\n";
    let (log2, l2) = s.build_dockerfile(cache(), "1.0.1", workdir).await;
    assert_eq!(l2.len(), 2, "{log2}");
    assert_eq!(s.names_in_layer(&l2[0]), ["data"]);
    assert!(!s.names_in_layer(&l2[1]).contains(&"data".to_owned()));
    assert_ne!(l1[0], l2[1]);
    assert!(
        !log2.contains(NOT_REBUILT),
        "not the first layer's record: {log2}"
    );
    // Over the same tree, each is had from the cache again.
    let (log3, l3) = s.build_dockerfile(cache(), "1.0.2", plain).await;
    assert!(log3.contains(NOT_REBUILT), "{log3}");
    assert_eq!(l1, l3);
    let (log4, l4) = s.build_dockerfile(cache(), "1.0.3", workdir).await;
    assert!(log4.contains(NOT_REBUILT), "{log4}");
    assert_eq!(l2, l4);
}
