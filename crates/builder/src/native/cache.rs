//! What the native backend's own layers came to last time, so a rebuild
//! whose sources have not changed neither tars nor gzips them again.
//!
//! Two maps, one small JSON file per entry under the cache directory:
//!
//! - `meta/<key>`: the key hashes the entries as the layer writes them
//!   (path, kind, permission bits, owner, link target), each source file's
//!   identity and times (device, inode, size, mtime and ctime in
//!   nanoseconds), the layer mtime and the cache format. A hit costs one
//!   `stat` per file.
//! - `content/<diff_id>`: the digest and size of a gzip of that tar (not
//!   the blob itself). It is used when the metadata changed but the
//!   contents did not (a fresh checkout, a `touch`), after the files are
//!   read and hashed once, which is much cheaper than compressing them.
//!
//! - `files/<layer digest>`: what a base layer changes, its file list
//!   without contents ([`super::tree::Changes`]), so a build over a base
//!   it has met already does not download the layer again to know which
//!   directories the base has. Layers are content-addressed: such a record
//!   never goes stale. Lists of more than [`MAX_LISTED`] entries are not
//!   kept, and the map keeps at most [`MAX_FILE_LISTS`] records.
//!
//! - `users/<layer digest>`: what a base layer holds at `/etc/passwd` and
//!   `/etc/group` (contents, a whiteout, nothing, or why it cannot be
//!   read), for `--chown` and `USER` by name; at most [`MAX_FILE_LISTS`]
//!   records.
//!
//! A metadata hit whose files changed less than [`RACY_NS`] before the
//! `stat`s that made the entry is not trusted (git calls such files "racily
//! clean"): a write within the same timestamp tick would not show. Those
//! layers are checked by content instead. The window compares the host's
//! clock with the file system's timestamps, so it assumes the two agree
//! within it (a network file system whose server clock lags further, or
//! one without a real ctime, can hide a same-size rewrite that restores
//! the mtime).
//!
//! The cache keeps no blob bytes: the caller uses a hit only when the blob
//! is already where it publishes to. The cache is an optimisation: an entry
//! that cannot be read is a miss, and one that cannot be written is logged
//! by the caller and the build goes on.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rebased_core::digest::hex;
use rebased_core::Digest;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::context::{Entry, EntryKind, FileData};
use super::tree::Changes;

/// Changes to the files this close to the `stat`s of an entry make the
/// entry untrusted (covers filesystems with coarse timestamps), in
/// nanoseconds.
pub const RACY_NS: i128 = 2_000_000_000;

/// How many entries each map keeps; the least recently written or used go
/// first.
const MAX_ENTRIES: usize = 4096;

/// The most base-layer file lists kept (each at most [`MAX_LISTED`]
/// entries, a few MB of JSON).
pub const MAX_FILE_LISTS: usize = 64;

/// A base layer listing more entries is read again each time rather than
/// kept.
pub const MAX_LISTED: usize = 100_000;

/// A temporary file older than this was left by a crash.
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(3600);

/// Bumped when what a key covers, or the layer format, changes.
const FORMAT: &str = "rebased native layer cache v1";

/// A layer known from an earlier build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// sha256 of the gzip blob.
    pub digest: Digest,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// Size of the blob in bytes.
    pub size: u64,
    /// Regular files in the layer.
    pub files: usize,
}

/// The identity of a layer's sources as seen now.
#[derive(Debug, Clone)]
pub struct Stamp {
    key: String,
    /// When the `stat`s began, nanoseconds since the epoch.
    taken_ns: i128,
    /// The newest mtime or ctime among the files.
    newest_ns: i128,
}

#[derive(Serialize, Deserialize)]
struct Record {
    digest: String,
    diff_id: String,
    size: u64,
    files: usize,
    /// The [`Stamp`] time of the build that wrote this record.
    taken_ns: i128,
    /// The newest mtime or ctime among the files then.
    newest_ns: i128,
}

/// The cache in one directory (created on first write).
#[derive(Debug, Clone)]
pub struct LayerCache {
    dir: PathBuf,
    racy_ns: i128,
    max_entries: usize,
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// Feeds one length-prefixed field, so fields cannot run into each other.
fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// Stamps the sources of `entries` (one `stat` per file, following
/// symlinks as the layer's reads do) for a layer written with `mtime`.
pub fn stamp(entries: &[Entry], mtime: u64) -> io::Result<Stamp> {
    let taken_ns = now_ns();
    let mut h = Sha256::new();
    field(&mut h, FORMAT.as_bytes());
    field(&mut h, &mtime.to_le_bytes());
    let mut newest: i128 = 0;
    for e in entries {
        field(&mut h, e.path.as_bytes());
        field(&mut h, &e.mode.to_le_bytes());
        field(&mut h, &e.uid.to_le_bytes());
        field(&mut h, &e.gid.to_le_bytes());
        match &e.kind {
            EntryKind::Dir => field(&mut h, b"dir"),
            EntryKind::Symlink(target) => {
                field(&mut h, b"symlink");
                field(&mut h, target.as_bytes());
            }
            EntryKind::File(FileData::Bytes(data)) => {
                field(&mut h, b"bytes");
                field(&mut h, &Sha256::digest(data));
            }
            EntryKind::File(FileData::Path(path)) => {
                let m = fs::metadata(path)?;
                let mtime_ns = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
                let ctime_ns = i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec());
                newest = newest.max(mtime_ns).max(ctime_ns);
                field(&mut h, b"file");
                field(&mut h, path.as_os_str().as_encoded_bytes());
                for n in [m.dev(), m.ino(), m.size()] {
                    field(&mut h, &n.to_le_bytes());
                }
                for n in [mtime_ns, ctime_ns] {
                    field(&mut h, &n.to_le_bytes());
                }
            }
        }
    }
    let key = hex(&h.finalize());
    Ok(Stamp {
        key,
        taken_ns,
        newest_ns: newest,
    })
}

impl LayerCache {
    /// The cache kept in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> LayerCache {
        LayerCache {
            dir: dir.into(),
            racy_ns: RACY_NS,
            max_entries: MAX_ENTRIES,
        }
    }

    /// The same cache trusting files changed at least `window` before an
    /// entry's `stat`s (default [`RACY_NS`]; shorter only where timestamps
    /// are known to be fine-grained, as in tests).
    pub fn racy_window(self, window: std::time::Duration) -> LayerCache {
        LayerCache {
            racy_ns: window.as_nanos() as i128,
            ..self
        }
    }

    /// The layer last built from sources with this stamp, unless they
    /// changed too close to that build to be sure.
    pub fn by_stamp(&self, stamp: &Stamp) -> Option<Known> {
        let path = self.dir.join("meta").join(&stamp.key);
        let r = read(&path)?;
        if r.newest_ns.saturating_add(self.racy_ns) > r.taken_ns {
            return None;
        }
        let known = r.known()?;
        used(&path);
        Some(known)
    }

    /// A layer with this diff_id built earlier.
    pub fn by_diff_id(&self, diff_id: &Digest) -> Option<Known> {
        let path = self.dir.join("content").join(content_name(diff_id));
        let known = read(&path)?.known().filter(|k| &k.diff_id == diff_id)?;
        used(&path);
        Some(known)
    }

    /// Records `known` as what its contents give, and what sources with
    /// `stamp` give (if they could be stamped).
    pub fn remember(&self, stamp: Option<&Stamp>, known: &Known) -> io::Result<()> {
        let record = Record::of(known, now_ns(), 0);
        self.write("content", &content_name(&known.diff_id), &record)?;
        match stamp {
            Some(s) => self.remember_stamp(s, known),
            None => Ok(()),
        }
    }

    /// Records `known` as what sources with `stamp` give (its contents are
    /// known already).
    pub fn remember_stamp(&self, stamp: &Stamp, known: &Known) -> io::Result<()> {
        let record = Record::of(known, stamp.taken_ns, stamp.newest_ns);
        self.write("meta", &stamp.key, &record)
    }
}

/// What a base layer holds at one of `/etc/passwd` and `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserFile {
    /// The file's contents.
    Found(String),
    /// The layer deletes it (or hides it from the layers below).
    Whiteout,
    /// The layer says nothing about it.
    Absent,
    /// It cannot be read from the layer, and why.
    Unreadable(String),
}

/// `users/` records.
#[derive(Serialize, Deserialize)]
struct UserFiles {
    layer: String,
    passwd: UserFile,
    group: UserFile,
}

/// A base layer's file list as kept in `files/`.
#[derive(Serialize, Deserialize)]
struct FileList {
    layer: String,
    changes: Changes,
}

impl LayerCache {
    /// What base layer `layer` holds at `/etc/passwd` and `/etc/group`,
    /// read before.
    pub fn user_files(&self, layer: &Digest) -> Option<(UserFile, UserFile)> {
        let path = self.dir.join("users").join(content_name(layer));
        let bytes = fs::read(&path).ok()?;
        let r: UserFiles = serde_json::from_slice(&bytes).ok()?;
        if r.layer != layer.as_str() {
            return None;
        }
        used(&path);
        Some((r.passwd, r.group))
    }

    /// Keeps what base layer `layer` holds at `/etc/passwd` and
    /// `/etc/group`.
    pub fn remember_user_files(
        &self,
        layer: &Digest,
        passwd: &UserFile,
        group: &UserFile,
    ) -> io::Result<()> {
        let r = UserFiles {
            layer: layer.to_string(),
            passwd: passwd.clone(),
            group: group.clone(),
        };
        let bytes = serde_json::to_vec(&r).map_err(io::Error::other)?;
        self.write_bytes("users", &content_name(layer), &bytes, MAX_FILE_LISTS)
    }

    /// The file list of base layer `layer`, read before.
    pub fn file_list(&self, layer: &Digest) -> Option<Changes> {
        let path = self.dir.join("files").join(content_name(layer));
        let bytes = fs::read(&path).ok()?;
        let list: FileList = serde_json::from_slice(&bytes).ok()?;
        if list.layer != layer.as_str() {
            return None;
        }
        used(&path);
        Some(list.changes)
    }

    /// Keeps the file list of base layer `layer` (not when it is longer
    /// than [`MAX_LISTED`]).
    pub fn remember_file_list(&self, layer: &Digest, changes: &Changes) -> io::Result<()> {
        if changes.entries.len() + changes.deleted.len() + changes.opaque.len() > MAX_LISTED {
            return Ok(());
        }
        let list = FileList {
            layer: layer.to_string(),
            changes: changes.clone(),
        };
        let bytes = serde_json::to_vec(&list).map_err(io::Error::other)?;
        self.write_bytes("files", &content_name(layer), &bytes, MAX_FILE_LISTS)
    }
}

impl Record {
    fn of(known: &Known, taken_ns: i128, newest_ns: i128) -> Record {
        Record {
            digest: known.digest.to_string(),
            diff_id: known.diff_id.to_string(),
            size: known.size,
            files: known.files,
            taken_ns,
            newest_ns,
        }
    }

    fn known(&self) -> Option<Known> {
        Some(Known {
            digest: Digest::parse(&self.digest).ok()?,
            diff_id: Digest::parse(&self.diff_id).ok()?,
            size: self.size,
            files: self.files,
        })
    }
}

/// `sha256-<hex>`: a file name for a digest.
fn content_name(d: &Digest) -> String {
    format!("{}-{}", d.algorithm(), d.encoded())
}

/// Marks a record as just used, so trimming (oldest first) keeps the
/// records that hit.
fn used(path: &Path) {
    if let Ok(f) = fs::File::options().append(true).open(path) {
        // Only an eviction order: failing to update it changes nothing else.
        let _ = f.set_modified(SystemTime::now());
    }
}

fn read(path: &Path) -> Option<Record> {
    let bytes = fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

impl LayerCache {
    /// Writes `name` in the map `map` whole (a temporary file renamed over
    /// it; a record torn by a crash reads as a miss), then trims the map.
    fn write(&self, map: &str, name: &str, record: &Record) -> io::Result<()> {
        let bytes = serde_json::to_vec(record).map_err(io::Error::other)?;
        self.write_bytes(map, name, &bytes, self.max_entries)
    }

    fn write_bytes(&self, map: &str, name: &str, bytes: &[u8], max: usize) -> io::Result<()> {
        let dir = self.dir.join(map);
        fs::create_dir_all(&dir)?;
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}.{seq}.tmp", std::process::id()));
        fs::write(&tmp, bytes)?;
        fs::rename(&tmp, dir.join(name))?;
        self.trim(&dir, max)
    }

    /// Keeps at most `max` records in `dir`: past that, the least recently
    /// written or used go until a quarter of the room is free again.
    /// Temporary files left by a crash go too.
    fn trim(&self, dir: &Path, max: usize) -> io::Result<()> {
        let stale = SystemTime::now() - STALE_TEMP;
        let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
        // Names only: records are `stat`ed just when there are too many.
        let mut records = Vec::new();
        for e in fs::read_dir(dir)?.filter_map(Result::ok) {
            let path = e.path();
            if e.file_name().to_string_lossy().starts_with('.') {
                // A temporary file, left by a crash if it is old.
                if modified(&path).is_some_and(|m| m < stale) {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            records.push(path);
        }
        if records.len() <= max {
            return Ok(());
        }
        let mut by_age: Vec<(SystemTime, PathBuf)> = records
            .into_iter()
            .filter_map(|p| Some((modified(&p)?, p)))
            .collect();
        by_age.sort();
        let excess = by_age.len().saturating_sub(max * 3 / 4);
        for (_, path) in by_age.into_iter().take(excess) {
            // Another build may have removed it already.
            let _ = fs::remove_file(path);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::time::Duration;

    fn file(path: &Path, mode: u32, uid: u32) -> Entry {
        Entry {
            path: "app/data".to_owned(),
            kind: EntryKind::File(FileData::Path(path.to_owned())),
            mode,
            uid,
            gid: 0,
        }
    }

    fn known(n: u8) -> Known {
        let d = |c: u8| Digest::parse(&format!("sha256:{}", hex(&[c; 32]))).unwrap();
        Known {
            digest: d(n),
            diff_id: d(n.wrapping_add(100)),
            size: 10 + u64::from(n),
            files: 1,
        }
    }

    fn key(entries: &[Entry], mtime: u64) -> String {
        stamp(entries, mtime).unwrap().key
    }

    #[test]
    fn the_key_follows_what_the_layer_depends_on() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("data");
        fs::write(&f, "aaaa").unwrap();
        let base = key(&[file(&f, 0o644, 0)], 0);
        assert_eq!(base, key(&[file(&f, 0o644, 0)], 0), "stable");
        assert_ne!(base, key(&[file(&f, 0o600, 0)], 0), "mode");
        assert_ne!(base, key(&[file(&f, 0o644, 1000)], 0), "owner");
        let mut group = file(&f, 0o644, 0);
        group.gid = 50;
        assert_ne!(base, key(&[group], 0), "group");
        assert_ne!(base, key(&[file(&f, 0o644, 0)], 1), "layer mtime");
        let mut renamed = file(&f, 0o644, 0);
        renamed.path = "app/other".to_owned();
        assert_ne!(base, key(&[renamed], 0), "path in the layer");
        let link = |t: &str| Entry {
            path: "l".to_owned(),
            kind: EntryKind::Symlink(t.to_owned()),
            mode: 0o777,
            uid: 0,
            gid: 0,
        };
        assert_ne!(key(&[link("a")], 0), key(&[link("b")], 0), "link target");
        let bytes = |b: &[u8]| Entry {
            path: "x".to_owned(),
            kind: EntryKind::File(FileData::Bytes(b.to_vec())),
            mode: 0o644,
            uid: 0,
            gid: 0,
        };
        assert_ne!(key(&[bytes(b"a")], 0), key(&[bytes(b"b")], 0), "bytes");
    }

    #[test]
    fn a_rewrite_that_keeps_size_and_mtime_changes_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("data");
        fs::write(&f, "aaaa").unwrap();
        let mtime = fs::metadata(&f).unwrap().modified().unwrap();
        let before = key(&[file(&f, 0o644, 0)], 0);
        // Past the kernel's timestamp tick, then as `cp -p` would: same
        // size, mtime put back. Only the ctime tells.
        std::thread::sleep(Duration::from_millis(50));
        fs::write(&f, "bbbb").unwrap();
        fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(fs::metadata(&f).unwrap().modified().unwrap(), mtime);
        assert_ne!(before, key(&[file(&f, 0o644, 0)], 0));
    }

    #[test]
    fn fresh_files_are_not_trusted_by_their_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("data");
        fs::write(&f, "aaaa").unwrap();
        let entries = [file(&f, 0o644, 0)];
        let cache = LayerCache::new(dir.path().join("cache"));
        let s = stamp(&entries, 0).unwrap();
        cache.remember(Some(&s), &known(1)).unwrap();
        assert_eq!(cache.by_stamp(&s), None, "changed within the window");
        assert_eq!(cache.by_diff_id(&known(1).diff_id), Some(known(1)));
        let trusting = cache.racy_window(Duration::ZERO);
        assert_eq!(trusting.by_stamp(&s), Some(known(1)));
        let other = stamp(&[file(&f, 0o600, 0)], 0).unwrap();
        assert_eq!(trusting.by_stamp(&other), None);
    }

    #[test]
    fn a_record_for_another_diff_id_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LayerCache::new(dir.path());
        cache.remember(None, &known(3)).unwrap();
        // known(4)'s file holds known(3)'s record, as a copied or corrupt
        // file might.
        fs::rename(
            dir.path()
                .join("content")
                .join(content_name(&known(3).diff_id)),
            dir.path()
                .join("content")
                .join(content_name(&known(4).diff_id)),
        )
        .unwrap();
        assert_eq!(cache.by_diff_id(&known(4).diff_id), None);
    }

    #[test]
    fn a_huge_newest_time_does_not_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LayerCache::new(dir.path()).racy_window(Duration::from_secs(2));
        let mut s = stamp(&[], 0).unwrap();
        s.newest_ns = i128::MAX;
        cache.remember(Some(&s), &known(5)).unwrap();
        assert_eq!(cache.by_stamp(&s), None);
    }

    #[test]
    fn unreadable_records_are_misses() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LayerCache::new(dir.path());
        cache.remember(None, &known(2)).unwrap();
        let name = content_name(&known(2).diff_id);
        fs::write(dir.path().join("content").join(&name), "{\"digest\": 3").unwrap();
        assert_eq!(cache.by_diff_id(&known(2).diff_id), None);
        fs::write(
            dir.path().join("content").join(&name),
            r#"{"digest":"md5:x","diff_id":"sha256:00","size":1,"files":1,"taken_ns":0,"newest_ns":0}"#,
        )
        .unwrap();
        assert_eq!(cache.by_diff_id(&known(2).diff_id), None);
    }

    #[test]
    fn base_layer_user_files_are_kept_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LayerCache::new(dir.path());
        let layer = known(9).digest;
        assert_eq!(cache.user_files(&layer), None);
        let passwd = UserFile::Found("root:x:0:0::/root:/bin/sh\n".into());
        let group = UserFile::Unreadable("a symlink".into());
        cache.remember_user_files(&layer, &passwd, &group).unwrap();
        assert_eq!(cache.user_files(&layer), Some((passwd, group)));
        let other = known(10).digest;
        fs::copy(
            dir.path().join("users").join(content_name(&layer)),
            dir.path().join("users").join(content_name(&other)),
        )
        .unwrap();
        assert_eq!(cache.user_files(&other), None);
    }

    #[test]
    fn base_layer_file_lists_are_kept_by_digest() {
        use crate::native::tree::{Kind, Node};
        let dir = tempfile::tempdir().unwrap();
        let cache = LayerCache::new(dir.path());
        let layer = known(7).digest;
        assert_eq!(cache.file_list(&layer), None);
        let changes = Changes {
            opaque: vec!["etc".into()],
            deleted: vec!["tmp/x".into()],
            entries: vec![(
                "bin".into(),
                Node {
                    kind: Kind::Symlink("usr/bin".into()),
                    mode: 0o777,
                    uid: 0,
                    gid: 0,
                },
            )],
        };
        cache.remember_file_list(&layer, &changes).unwrap();
        assert_eq!(cache.file_list(&layer), Some(changes.clone()));
        // Another layer's record under this name is a miss.
        let other = known(8).digest;
        fs::copy(
            dir.path().join("files").join(content_name(&layer)),
            dir.path().join("files").join(content_name(&other)),
        )
        .unwrap();
        assert_eq!(cache.file_list(&other), None);
        // A list too long to keep is not kept.
        let long = Changes {
            deleted: vec!["x".into(); MAX_LISTED + 1],
            ..Changes::default()
        };
        cache.remember_file_list(&other, &long).unwrap();
        assert_eq!(cache.file_list(&other), None);
    }

    #[test]
    fn each_map_is_trimmed_to_its_bound_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LayerCache {
            max_entries: 8,
            ..LayerCache::new(dir.path())
        };
        for n in 0..8 {
            cache.remember(None, &known(n)).unwrap();
            // Distinct mtimes, so "oldest" is well defined.
            std::thread::sleep(Duration::from_millis(15));
        }
        // A hit counts as a use: the first record is kept.
        assert_eq!(cache.by_diff_id(&known(0).diff_id), Some(known(0)));
        std::thread::sleep(Duration::from_millis(15));
        cache.remember(None, &known(8)).unwrap();
        let left = fs::read_dir(dir.path().join("content")).unwrap().count();
        assert_eq!(left, 6);
        for gone in 1..=3 {
            assert_eq!(cache.by_diff_id(&known(gone).diff_id), None, "{gone}");
        }
        assert_eq!(cache.by_diff_id(&known(0).diff_id), Some(known(0)));
        assert_eq!(cache.by_diff_id(&known(8).diff_id), Some(known(8)));
    }
}
