//! An OCI image layout directory (image-spec `image-layout.md`): the
//! `oci-layout` marker, `index.json`, and content-addressed
//! `blobs/<algorithm>/<hex>`. Tags are `index.json` entries annotated with
//! `org.opencontainers.image.ref.name`, which is what `skopeo copy
//! oci:DIR:TAG ...` reads.
//!
//! Every file is written to a temporary file beside its destination and
//! renamed into place, so a reader never sees half a file. Changes to
//! `index.json` (read, modify, rename) are serialised within the process by a
//! lock per canonical directory, so concurrent taggers never lose an entry;
//! writers in *other* processes are not serialised. Entries and fields of an
//! existing `index.json` that this module does not know are kept.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

pub use rebased_core::oci::Platform;
use rebased_core::oci::{media_type, Descriptor, ImageIndex};
use rebased_core::Digest;
use sha2::Digest as _;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::document::{declared_media_type, RawManifest};
use crate::hash::Hasher;

/// The media type of `index.json`.
pub const INDEX_MEDIA_TYPE: &str = media_type::OCI_INDEX;
/// The annotation that names a tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Largest `index.json` or manifest read (or written), in bytes.
pub const MAX_JSON: u64 = 4 << 20;

const LAYOUT_FILE: &str = "oci-layout";
const INDEX_FILE: &str = "index.json";
const LAYOUT_VERSION: &str = "1.0.0";

/// What went wrong with a layout; every variant names the file or directory.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// Reading or writing a file failed.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// The directory exists, holds files, and has no `oci-layout`.
    #[error("{}: not an OCI image layout (the directory is not empty and has no oci-layout file)", path.display())]
    NotLayout {
        /// The directory.
        path: PathBuf,
    },
    /// `oci-layout`, `index.json` or a manifest is not what the spec says.
    #[error("{}: malformed: {detail}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A JSON file larger than [`MAX_JSON`].
    #[error("{}: larger than {limit} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// Content that does not hash to the digest it is stored or named under.
    #[error("{}: content hashes to {actual}, not {expected}", path.display())]
    DigestMismatch {
        /// The blob (or the temporary file it was written to).
        path: PathBuf,
        /// The digest it should have.
        expected: Digest,
        /// What it hashes to.
        actual: String,
    },
    /// A tag or blob the layout does not hold.
    #[error("{}: no {what}", path.display())]
    NotFound {
        /// The layout directory.
        path: PathBuf,
        /// What is missing (`tag "v1"`, `blob sha256:...`).
        what: String,
    },
    /// A digest algorithm this module cannot store, or an unusable tag.
    #[error("{}: {detail}", path.display())]
    Unsupported {
        /// The layout directory.
        path: PathBuf,
        /// What was refused.
        detail: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError + '_ {
    move |error| LayoutError::Io {
        path: path.to_owned(),
        error,
    }
}

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    /// Serialises `index.json` changes within the process.
    lock: Arc<Mutex<()>>,
}

/// The process-wide `index.json` lock of the layout at canonical path `root`.
fn lock_for(root: &Path) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    Arc::clone(locks.entry(root.to_owned()).or_default())
}

/// A temporary file that is removed unless it is renamed into place.
#[derive(Debug)]
struct TempFile {
    path: Option<PathBuf>,
}

impl TempFile {
    /// Creates a fresh, uniquely named file in `dir`.
    fn create(dir: &Path) -> Result<(Self, fs::File), LayoutError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(".tmp-{}-{n}-{nanos}", std::process::id()));
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(f) => return Ok((Self { path: Some(path) }, f)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_error(dir)(e)),
            }
        }
    }

    fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Renames the file to `dest` (replacing it).
    fn persist(mut self, dest: &Path) -> Result<(), LayoutError> {
        let Some(path) = self.path.take() else {
            return Ok(());
        };
        fs::rename(&path, dest).map_err(|e| {
            let _ = fs::remove_file(&path);
            io_error(dest)(e)
        })
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// Writes `data` to `dest` atomically (temporary file, fsync, rename).
fn write_atomic(dest: &Path, data: &[u8]) -> Result<(), LayoutError> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let (temp, mut file) = TempFile::create(dir)?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(io_error(temp.path()))?;
    drop(file);
    temp.persist(dest)?;
    // Make the rename durable; some filesystems refuse a directory fsync.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads `path` whole, refusing more than `limit` bytes.
fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, LayoutError> {
    let file = fs::File::open(path).map_err(io_error(path))?;
    let mut buf = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(io_error(path))?;
    if buf.len() as u64 > limit {
        return Err(LayoutError::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    Ok(buf)
}

/// The tag an `index.json` entry carries, if any.
fn ref_name(entry: &Descriptor) -> Option<&str> {
    entry.annotations.get(REF_NAME).map(String::as_str)
}

/// The `oci-layout` file.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutMarker {
    image_layout_version: Option<String>,
}

impl Layout {
    /// Opens the layout at `path`, creating it (the directory, `oci-layout`,
    /// an empty `index.json`, `blobs/sha256`) where missing. A directory that
    /// holds files but no `oci-layout` is refused, as is an `oci-layout` or
    /// `index.json` that is not what the spec says.
    pub fn open(path: &Path) -> Result<Layout, LayoutError> {
        match fs::metadata(path) {
            Ok(m) if !m.is_dir() => {
                return Err(LayoutError::NotLayout {
                    path: path.to_owned(),
                })
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(path).map_err(io_error(path))?;
            }
            Err(e) => return Err(io_error(path)(e)),
        }
        let root = fs::canonicalize(path).map_err(io_error(path))?;
        let layout = Layout {
            lock: lock_for(&root),
            root,
        };
        {
            // Held so another thread initialising the same directory does not
            // see our temporary files and take the directory for a stranger.
            let _guard = layout.lock.lock().unwrap_or_else(|p| p.into_inner());
            let marker = layout.root.join(LAYOUT_FILE);
            if marker.exists() {
                layout.check_marker(&marker)?;
            } else {
                let mut entries = fs::read_dir(&layout.root).map_err(io_error(&layout.root))?;
                if entries.next().is_some() {
                    return Err(LayoutError::NotLayout { path: layout.root });
                }
                let marker_text = LayoutMarker {
                    image_layout_version: Some(LAYOUT_VERSION.to_owned()),
                };
                let text =
                    serde_json::to_vec(&marker_text).map_err(|e| LayoutError::Malformed {
                        path: marker.clone(),
                        detail: e.to_string(),
                    })?;
                write_atomic(&marker, &text)?;
            }
            let index = layout.index_path();
            if !index.exists() {
                let empty =
                    serde_json::to_vec(&ImageIndex::new()).map_err(|e| LayoutError::Malformed {
                        path: index.clone(),
                        detail: e.to_string(),
                    })?;
                write_atomic(&index, &empty)?;
            }
        }
        let blobs = layout.root.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(io_error(&blobs))?;
        // A malformed index.json is reported now rather than at first use.
        layout.read_index()?;
        Ok(layout)
    }

    fn check_marker(&self, marker: &Path) -> Result<(), LayoutError> {
        let bytes = read_bounded(marker, 4096)?;
        let malformed = |detail: &str| LayoutError::Malformed {
            path: marker.to_owned(),
            detail: detail.to_owned(),
        };
        let value: LayoutMarker =
            serde_json::from_slice(&bytes).map_err(|e| malformed(&format!("not JSON: {e}")))?;
        match value.image_layout_version.as_deref() {
            Some(v) if v.starts_with("1.") => Ok(()),
            Some(v) => Err(malformed(&format!("unsupported imageLayoutVersion {v:?}"))),
            None => Err(malformed("no imageLayoutVersion")),
        }
    }

    /// The layout's directory (canonical).
    pub fn path(&self) -> &Path {
        &self.root
    }

    fn index_path(&self) -> PathBuf {
        self.root.join(INDEX_FILE)
    }

    /// Where blob `digest` is (or would be) stored. Only sha256 and sha512
    /// digests have a place.
    pub fn blob_path(&self, digest: &Digest) -> Result<PathBuf, LayoutError> {
        match digest.algorithm() {
            // Digest::parse checked the hex, so the name stays in the directory.
            a @ ("sha256" | "sha512") => Ok(self.root.join("blobs").join(a).join(digest.encoded())),
            a => Err(LayoutError::Unsupported {
                path: self.root.clone(),
                detail: format!("cannot store a blob with digest algorithm {a:?}"),
            }),
        }
    }

    /// Whether the layout holds blob `digest`.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// Stores `data` as a blob (nothing is written if it is already there)
    /// and returns its sha256 digest.
    pub fn put_blob(&self, data: &[u8]) -> Result<Digest, LayoutError> {
        let digest = Digest::sha256(data);
        let dest = self.blob_path(&digest)?;
        if dest.is_file() {
            return Ok(digest);
        }
        write_atomic(&dest, data)?;
        Ok(digest)
    }

    /// Reads blob `digest` whole, refusing more than `limit` bytes, and
    /// checks it hashes to `digest`.
    pub fn blob(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, LayoutError> {
        let path = self.blob_path(digest)?;
        if !path.is_file() {
            return Err(LayoutError::NotFound {
                path: self.root.clone(),
                what: format!("blob {digest}"),
            });
        }
        let bytes = read_bounded(&path, limit)?;
        let mut hasher = Hasher::for_digest(digest).ok_or_else(|| LayoutError::Unsupported {
            path: path.clone(),
            detail: format!("cannot verify {digest}"),
        })?;
        hasher.update(&bytes);
        let actual = hasher.finish();
        if actual != digest.as_str() {
            return Err(LayoutError::DigestMismatch {
                path,
                expected: digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// A writer for blob `expected` (sha256) that streams into a temporary
    /// file in `blobs/sha256`; [`BlobWriter::commit`] checks the digest and
    /// renames it into place. Dropped uncommitted, the file is removed.
    ///
    /// ```no_run
    /// # async fn f(r: &rebased_registry::Registry, l: &rebased_registry::Layout,
    /// #   repo: &rebased_core::ImageRef, d: &rebased_core::Digest) -> Result<(), Box<dyn std::error::Error>> {
    /// if !l.has_blob(d) {
    ///     let mut w = l.blob_writer(d)?;
    ///     r.blob_to_writer(repo, d, &mut w).await?;
    ///     w.commit().await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn blob_writer(&self, expected: &Digest) -> Result<BlobWriter, LayoutError> {
        if expected.algorithm() != "sha256" {
            return Err(LayoutError::Unsupported {
                path: self.root.clone(),
                detail: format!("blob_writer stores sha256 blobs only, not {expected}"),
            });
        }
        let dest = self.blob_path(expected)?;
        let dir = dest.parent().unwrap_or(&self.root).to_owned();
        let (temp, file) = TempFile::create(&dir)?;
        Ok(BlobWriter {
            file: tokio::fs::File::from_std(file),
            temp,
            hasher: sha2::Sha256::new(),
            size: 0,
            expected: expected.clone(),
            dest,
        })
    }

    /// Stores manifest `bytes` (of `media_type`) as a blob and points `tag`
    /// at it, replacing any entry with the same tag. Returns its digest.
    pub fn put_manifest(
        &self,
        bytes: &[u8],
        media_type: &str,
        tag: &str,
    ) -> Result<Digest, LayoutError> {
        self.put_manifest_with_platform(bytes, media_type, tag, None)
    }

    /// [`Layout::put_manifest`] with the platform an image manifest is for,
    /// recorded in its descriptor.
    pub fn put_manifest_with_platform(
        &self,
        bytes: &[u8],
        media_type: &str,
        tag: &str,
        platform: Option<&Platform>,
    ) -> Result<Digest, LayoutError> {
        self.check_tag(tag)?;
        if bytes.len() as u64 > MAX_JSON {
            return Err(LayoutError::Unsupported {
                path: self.root.clone(),
                detail: format!(
                    "a manifest of {} bytes is larger than {MAX_JSON} bytes",
                    bytes.len()
                ),
            });
        }
        let digest = self.put_blob(bytes)?;
        let mut descriptor = Descriptor::new(media_type, &digest, bytes.len() as u64);
        descriptor.platform = platform.cloned();
        self.set_tag(descriptor, tag)?;
        Ok(digest)
    }

    /// Points `tag` at manifest `digest`, which must be in the layout: its
    /// media type, size and platform come from an `index.json` entry for it,
    /// or else from the blob itself.
    pub fn tag(&self, digest: &Digest, tag: &str) -> Result<(), LayoutError> {
        self.check_tag(tag)?;
        let index = self.read_index()?;
        let known = index.manifests.iter().find(|e| e.digest == digest.as_str());
        let descriptor = if let Some(entry) = known {
            Descriptor {
                media_type: entry.media_type.clone(),
                digest: entry.digest.clone(),
                size: entry.size,
                platform: entry.platform.clone(),
                ..Descriptor::default()
            }
        } else {
            let bytes = self.blob(digest, MAX_JSON)?;
            let media_type = declared_media_type(&bytes).ok_or_else(|| LayoutError::Malformed {
                path: self.blob_path(digest).unwrap_or_default(),
                detail: "manifest is not a JSON object".to_owned(),
            })?;
            Descriptor::new(&media_type, digest, bytes.len() as u64)
        };
        self.set_tag(descriptor, tag)
    }

    /// The manifest digest `tag` points at, if the tag exists.
    pub fn lookup(&self, tag: &str) -> Result<Option<Digest>, LayoutError> {
        let index = self.read_index()?;
        let Some(entry) = index.manifests.iter().find(|e| ref_name(e) == Some(tag)) else {
            return Ok(None);
        };
        self.parse_entry_digest(entry).map(Some)
    }

    /// The manifest named by a tag or a digest (`sha256:...`), its bytes
    /// verified. The media type is the one its `index.json` entry records,
    /// else the one the bytes declare.
    pub fn manifest(&self, tag_or_digest: &str) -> Result<RawManifest, LayoutError> {
        let index = self.read_index()?;
        let entries = &index.manifests;
        let (digest, entry) = match Digest::parse(tag_or_digest) {
            Ok(d) => {
                let e = entries.iter().find(|e| e.digest == d.as_str());
                (d, e)
            }
            Err(_) => {
                let e = entries
                    .iter()
                    .find(|e| ref_name(e) == Some(tag_or_digest))
                    .ok_or_else(|| LayoutError::NotFound {
                        path: self.root.clone(),
                        what: format!("tag {tag_or_digest:?}"),
                    })?;
                (self.parse_entry_digest(e)?, Some(e))
            }
        };
        let bytes = self.blob(&digest, MAX_JSON)?;
        let recorded = entry
            .map(|e| e.media_type.clone())
            .filter(|m| !m.is_empty());
        let media_type = match recorded.or_else(|| declared_media_type(&bytes)) {
            Some(m) => m,
            None => {
                return Err(LayoutError::Malformed {
                    path: self.blob_path(&digest)?,
                    detail: "manifest is not a JSON object".to_owned(),
                })
            }
        };
        Ok(RawManifest {
            bytes,
            digest,
            media_type,
        })
    }

    /// Every tag in `index.json`, in its order.
    pub fn list_tags(&self) -> Result<Vec<String>, LayoutError> {
        let index = self.read_index()?;
        Ok(index
            .manifests
            .iter()
            .filter_map(ref_name)
            .map(str::to_owned)
            .collect())
    }

    fn check_tag(&self, tag: &str) -> Result<(), LayoutError> {
        if tag.is_empty() || tag.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(LayoutError::Unsupported {
                path: self.root.clone(),
                detail: format!("unusable tag {tag:?}"),
            });
        }
        Ok(())
    }

    fn parse_entry_digest(&self, entry: &Descriptor) -> Result<Digest, LayoutError> {
        Digest::parse(&entry.digest).map_err(|e| LayoutError::Malformed {
            path: self.index_path(),
            detail: e.to_string(),
        })
    }

    /// `index.json`, checked to be an index (schema version 2) whose
    /// `manifests` (when present) are descriptors.
    fn read_index(&self) -> Result<ImageIndex, LayoutError> {
        let path = self.index_path();
        let bytes = read_bounded(&path, MAX_JSON)?;
        let malformed = |detail: String| LayoutError::Malformed {
            path: path.clone(),
            detail,
        };
        let index: ImageIndex = serde_json::from_slice(&bytes)
            .map_err(|e| malformed(format!("not an image index: {e}")))?;
        if index.schema_version != 2 {
            return Err(malformed(format!(
                "schemaVersion is {}, not 2",
                index.schema_version
            )));
        }
        Ok(index)
    }

    /// Replaces every entry tagged `tag` with `descriptor` annotated `tag`,
    /// under the lock, keeping everything else.
    fn set_tag(&self, descriptor: Descriptor, tag: &str) -> Result<(), LayoutError> {
        let mut descriptor = descriptor;
        descriptor.annotations = [(REF_NAME.to_owned(), tag.to_owned())].into();
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut index = self.read_index()?;
        if index.media_type.is_none() {
            index.media_type = Some(INDEX_MEDIA_TYPE.to_owned());
        }
        index.manifests.retain(|e| ref_name(e) != Some(tag));
        index.manifests.push(descriptor);
        let bytes = serde_json::to_vec(&index).map_err(|e| LayoutError::Malformed {
            path: self.index_path(),
            detail: e.to_string(),
        })?;
        write_atomic(&self.index_path(), &bytes)
    }
}

/// Streams one blob into a layout; see [`Layout::blob_writer`].
#[derive(Debug)]
pub struct BlobWriter {
    file: tokio::fs::File,
    temp: TempFile,
    hasher: sha2::Sha256,
    size: u64,
    expected: Digest,
    dest: PathBuf,
}

impl BlobWriter {
    /// Flushes and syncs what was written, checks it hashes to the expected
    /// digest, and renames it into place (keeping an existing copy). Returns
    /// the size.
    pub async fn commit(mut self) -> Result<u64, LayoutError> {
        let temp_path = self.temp.path().to_owned();
        self.file.flush().await.map_err(io_error(&temp_path))?;
        self.file.sync_all().await.map_err(io_error(&temp_path))?;
        let actual = Digest::of_sha256(self.hasher).to_string();
        if actual != self.expected.as_str() {
            return Err(LayoutError::DigestMismatch {
                path: temp_path,
                expected: self.expected,
                actual,
            });
        }
        drop(self.file);
        if self.dest.is_file() {
            return Ok(self.size); // the temporary file goes with `self.temp`
        }
        let (temp, dest) = (self.temp, self.dest);
        tokio::task::spawn_blocking(move || temp.persist(&dest))
            .await
            .map_err(|e| LayoutError::Io {
                path: temp_path,
                error: std::io::Error::other(e.to_string()),
            })??;
        Ok(self.size)
    }
}

impl AsyncWrite for BlobWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.file).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                let written = buf.get(..n).unwrap_or(buf);
                this.hasher.update(written);
                this.size += written.len() as u64;
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::{json, Value};

    const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

    fn manifest_bytes(n: usize) -> Vec<u8> {
        json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": Digest::sha256(n.to_string().as_bytes()).as_str(), "size": 1},
            "layers": []
        })
        .to_string()
        .into_bytes()
    }

    fn index_json(layout: &Layout) -> Value {
        serde_json::from_slice(&fs::read(layout.path().join(INDEX_FILE)).unwrap()).unwrap()
    }

    #[test]
    fn open_creates_a_layout_and_reopens_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b");
        let layout = Layout::open(&path).unwrap();
        let marker: Value =
            serde_json::from_slice(&fs::read(path.join("oci-layout")).unwrap()).unwrap();
        assert_eq!(marker, json!({"imageLayoutVersion": "1.0.0"}));
        let index = index_json(&layout);
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["mediaType"], INDEX_MEDIA_TYPE);
        assert_eq!(index["manifests"], json!([]));
        assert!(path.join("blobs/sha256").is_dir());
        assert!(layout.list_tags().unwrap().is_empty());
        assert_eq!(layout.lookup("missing").unwrap(), None);
        assert!(matches!(
            layout.manifest("missing"),
            Err(LayoutError::NotFound { .. })
        ));
        // An empty existing directory is fine too, and reopening is.
        let empty = dir.path().join("empty");
        fs::create_dir(&empty).unwrap();
        Layout::open(&empty).unwrap();
        Layout::open(&path).unwrap();
    }

    #[test]
    fn open_refuses_what_is_not_a_layout() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("stranger.txt"), "hello").unwrap();
        let e = Layout::open(dir.path()).unwrap_err();
        assert!(matches!(e, LayoutError::NotLayout { .. }), "{e}");
        assert!(e.to_string().contains("no oci-layout"), "{e}");
        let file = dir.path().join("stranger.txt");
        assert!(matches!(
            Layout::open(&file),
            Err(LayoutError::NotLayout { .. })
        ));
        let bad = dir.path().join("bad");
        fs::create_dir(&bad).unwrap();
        fs::write(bad.join("oci-layout"), "{}").unwrap();
        assert!(matches!(
            Layout::open(&bad),
            Err(LayoutError::Malformed { .. })
        ));
    }

    #[test]
    fn put_tag_lookup_and_retag() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        let blob = layout.put_blob(b"config").unwrap();
        assert_eq!(blob, Digest::sha256(b"config"));
        assert!(layout.has_blob(&blob));
        assert_eq!(layout.put_blob(b"config").unwrap(), blob);
        assert_eq!(layout.blob(&blob, 100).unwrap(), b"config");
        assert!(matches!(
            layout.blob(&blob, 3),
            Err(LayoutError::TooLarge { .. })
        ));

        let one = manifest_bytes(1);
        let platform = Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        };
        let d1 = layout
            .put_manifest_with_platform(&one, MANIFEST_TYPE, "v1", Some(&platform))
            .unwrap();
        assert_eq!(d1, Digest::sha256(&one));
        assert_eq!(layout.lookup("v1").unwrap(), Some(d1.clone()));
        let m = layout.manifest("v1").unwrap();
        assert_eq!((m.bytes.as_slice(), &m.digest), (one.as_slice(), &d1));
        assert_eq!(m.media_type, MANIFEST_TYPE);
        assert_eq!(layout.manifest(d1.as_str()).unwrap().bytes, one);
        let entry = &index_json(&layout)["manifests"][0];
        assert_eq!(entry["size"], one.len());
        assert_eq!(
            entry["platform"],
            json!({"os": "linux", "architecture": "arm64", "variant": "v8"})
        );
        assert_eq!(entry["annotations"][REF_NAME], "v1");

        // Tagging an existing manifest copies its descriptor.
        layout.tag(&d1, "latest").unwrap();
        assert_eq!(layout.list_tags().unwrap(), ["v1", "latest"]);
        let latest = &index_json(&layout)["manifests"][1];
        assert_eq!(latest["platform"]["architecture"], "arm64");
        assert_eq!(latest["mediaType"], MANIFEST_TYPE);

        // Retagging replaces the entry.
        let two = manifest_bytes(2);
        let d2 = layout.put_manifest(&two, MANIFEST_TYPE, "latest").unwrap();
        assert_eq!(layout.list_tags().unwrap(), ["v1", "latest"]);
        assert_eq!(layout.lookup("latest").unwrap(), Some(d2.clone()));
        assert_eq!(layout.lookup("v1").unwrap(), Some(d1));
        assert_eq!(
            index_json(&layout)["manifests"].as_array().unwrap().len(),
            2
        );

        // A blob not in index.json can be tagged: its media type is read.
        let three = manifest_bytes(3);
        let d3 = layout.put_blob(&three).unwrap();
        layout.tag(&d3, "v3").unwrap();
        assert_eq!(layout.manifest("v3").unwrap().media_type, MANIFEST_TYPE);
        let missing = Digest::sha256(b"nothing");
        assert!(matches!(
            layout.tag(&missing, "x"),
            Err(LayoutError::NotFound { .. })
        ));
        assert!(layout.put_manifest(&two, MANIFEST_TYPE, "").is_err());
    }

    #[test]
    fn unknown_fields_and_entries_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        let other = format!("sha256:{}", "a".repeat(64));
        let index = json!({
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "annotations": {"keep": "me"},
            "x-extra": [1, 2],
            "manifests": [
                {"mediaType": MANIFEST_TYPE, "digest": other, "size": 7, "x-field": true},
                {"mediaType": MANIFEST_TYPE, "digest": other, "size": 7,
                 "annotations": {REF_NAME: "old", "other": "kept"}}
            ]
        });
        fs::write(dir.path().join(INDEX_FILE), index.to_string()).unwrap();
        layout
            .put_manifest(&manifest_bytes(1), MANIFEST_TYPE, "new")
            .unwrap();
        let after = index_json(&layout);
        assert_eq!(after["annotations"], json!({"keep": "me"}));
        assert_eq!(after["x-extra"], json!([1, 2]));
        let entries = after["manifests"].as_array().unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0]["x-field"], true);
        assert_eq!(entries[1]["annotations"]["other"], "kept");
        assert_eq!(layout.list_tags().unwrap(), ["old", "new"]);
    }

    #[test]
    fn malformed_or_huge_index_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        let index = dir.path().join(INDEX_FILE);
        for bad in [
            "not json",
            "[]",
            r#"{"schemaVersion": 1, "manifests": []}"#,
            r#"{"schemaVersion": 2, "manifests": "x"}"#,
            r#"{"schemaVersion": 2, "manifests": [1]}"#,
        ] {
            fs::write(&index, bad).unwrap();
            let e = layout.lookup("v1").unwrap_err();
            assert!(matches!(e, LayoutError::Malformed { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("index.json"), "{e}");
            assert!(layout.put_manifest(b"{}", MANIFEST_TYPE, "v1").is_err());
            assert!(Layout::open(dir.path()).is_err());
        }
        fs::write(&index, " ".repeat(MAX_JSON as usize + 1)).unwrap();
        let e = layout.list_tags().unwrap_err();
        assert!(matches!(e, LayoutError::TooLarge { .. }), "{e}");
        // A bad digest in a tagged entry is malformed too.
        fs::write(
            &index,
            json!({"schemaVersion": 2, "manifests": [{"digest": "nope", "annotations": {REF_NAME: "t"}}]})
                .to_string(),
        )
        .unwrap();
        assert!(matches!(
            layout.lookup("t"),
            Err(LayoutError::Malformed { .. })
        ));
    }

    #[test]
    fn concurrent_tagging_keeps_every_entry() {
        let dir = tempfile::tempdir().unwrap();
        Layout::open(dir.path()).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let path = dir.path().to_owned();
                std::thread::spawn(move || {
                    // Each thread opens its own handle, as separate callers do.
                    let layout = Layout::open(&path).unwrap();
                    for i in 0..10 {
                        let n = t * 100 + i;
                        layout
                            .put_manifest(&manifest_bytes(n), MANIFEST_TYPE, &format!("t{n}"))
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let layout = Layout::open(dir.path()).unwrap();
        let mut tags = layout.list_tags().unwrap();
        tags.sort();
        let mut want: Vec<String> = (0..8)
            .flat_map(|t| (0..10).map(move |i| format!("t{}", t * 100 + i)))
            .collect();
        want.sort();
        assert_eq!(tags, want);
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[tokio::test]
    async fn blob_writer_streams_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let digest = Digest::sha256(&data);
        let mut w = layout.blob_writer(&digest).unwrap();
        for piece in data.chunks(10_000) {
            w.write_all(piece).await.unwrap();
        }
        assert_eq!(w.commit().await.unwrap(), data.len() as u64);
        assert!(layout.has_blob(&digest));
        assert_eq!(layout.blob(&digest, 1 << 20).unwrap(), data);

        let wrong = Digest::sha256(b"other");
        let mut w = layout.blob_writer(&wrong).unwrap();
        w.write_all(&data).await.unwrap();
        let e = w.commit().await.unwrap_err();
        assert!(matches!(e, LayoutError::DigestMismatch { .. }), "{e}");
        assert!(!layout.has_blob(&wrong));
        let names: Vec<String> = fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [digest.encoded()], "temporary files are removed");
        let sha512 = Digest::parse(&format!("sha512:{}", "0".repeat(128))).unwrap();
        assert!(layout.blob_writer(&sha512).is_err());
    }

    /// A gzip member holding `data` in one stored (uncompressed) deflate block.
    fn gzip_stored(data: &[u8]) -> Vec<u8> {
        let mut crc_table = [0u32; 256];
        for (i, slot) in crc_table.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        let crc = !data.iter().fold(!0u32, |c, &b| {
            crc_table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
        });
        let len = u16::try_from(data.len()).unwrap();
        let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff, 1];
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    #[test]
    fn skopeo_reads_the_layout() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(&dir.path().join("oci")).unwrap();
        let tar = vec![0u8; 1024]; // an empty tar: two zero blocks
        let layer = gzip_stored(&tar);
        let layer_digest = layout.put_blob(&layer).unwrap();
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [Digest::sha256(&tar).as_str()]},
            "history": [{"created_by": "rebased test"}]
        })
        .to_string();
        let config_digest = layout.put_blob(config.as_bytes()).unwrap();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest.as_str(), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": layer_digest.as_str(), "size": layer.len()}]
        })
        .to_string();
        let platform = Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        };
        let digest = layout
            .put_manifest_with_platform(manifest.as_bytes(), MANIFEST_TYPE, "v1", Some(&platform))
            .unwrap();
        layout.tag(&digest, "latest").unwrap();

        // scripts/test.sh installs skopeo: a missing one fails the test.
        let out = std::process::Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci:{}:v1", layout.path().display()))
            .output()
            .expect("skopeo runs (scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let inspected: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(inspected["Digest"], digest.as_str());
        assert_eq!(inspected["Architecture"], "amd64");
        assert_eq!(inspected["Layers"], json!([layer_digest.as_str()]));

        // A full copy reads and verifies every blob.
        let copy = dir.path().join("copy");
        let out = std::process::Command::new("skopeo")
            .arg("copy")
            .arg(format!("oci:{}:latest", layout.path().display()))
            .arg(format!("oci:{}:copied", copy.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let copied = Layout::open(&copy).unwrap();
        assert_eq!(copied.lookup("copied").unwrap(), Some(digest));
    }
}
