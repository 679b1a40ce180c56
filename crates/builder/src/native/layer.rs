//! Reproducible layer blobs, and reading one file out of a base layer.
//!
//! A layer written here depends only on its entries and the given mtime:
//! entries in the order given, every mtime the same, numeric owners only
//! (empty user and group names), no atime or ctime, and gzip without a
//! timestamp or file name. The same context therefore gives the same digest
//! on every build, whatever the files' own timestamps.

use std::cell::Cell;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use flate2::{Compression, GzBuilder};
use rebased_core::Digest;
use sha2::{Digest as _, Sha256};

use super::context::{clean, Entry, EntryKind, FileData};

/// The largest file [`find_file`] returns.
const MAX_FOUND: u64 = 1 << 20;

/// How many hard links [`find_file`] follows.
const MAX_LINK_HOPS: usize = 4;

/// A written layer.
#[derive(Clone)]
pub struct Layer {
    /// The gzip-compressed tar.
    pub blob: Vec<u8>,
    /// sha256 of `blob`.
    pub digest: Digest,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// How many regular files the layer holds (directories and symlinks not
    /// counted).
    pub files: usize,
}

impl fmt::Debug for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layer")
            .field("blob", &format_args!("<{} bytes>", self.blob.len()))
            .field("digest", &self.digest)
            .field("diff_id", &self.diff_id)
            .field("files", &self.files)
            .finish()
    }
}

/// What [`find_file`] found in a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The layer holds the file: its contents.
    Found(Vec<u8>),
    /// The layer deletes the file (or hides it from lower layers): a
    /// whiteout of it or of a parent directory, or an opaque whiteout in a
    /// parent directory.
    Whiteout,
    /// The layer says nothing about the file.
    Absent,
}

/// Why a layer cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// An entry's path is not a clean relative path.
    #[error("layer entry {path:?}: {reason}")]
    BadPath {
        /// The path.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A file of the context cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Writing the tar or the gzip stream failed.
    #[error("writing layer entry {path:?}: {source}")]
    Write {
        /// The entry being written ("" at the end of the archive).
        path: String,
        /// The cause.
        source: io::Error,
    },
    /// The layer blob cannot be read.
    #[error(transparent)]
    Unreadable(#[from] ReadError),
    /// The file looked for is larger than [`find_file`] returns.
    #[error("{path} in the layer is {size} bytes, more than {max}")]
    FileTooLarge {
        /// The path looked for.
        path: String,
        /// Its size.
        size: u64,
        /// The most returned.
        max: u64,
    },
    /// The path looked for is not a regular file in the layer.
    #[error("{path} in the layer is a {kind}, not a regular file")]
    NotAFile {
        /// The path looked for.
        path: String,
        /// What it is.
        kind: String,
    },
}

/// Why a layer blob cannot be read: the one error of every reader of
/// layers (the file lists of `tree.rs`, [`find_file`] here).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// A layer blob cannot be decompressed or is not a valid tar.
    #[error("reading layer: {0}")]
    Corrupt(String),
    /// The layer uses a compression this backend cannot read.
    #[error("reading layer: {0} compression is not supported")]
    Unsupported(&'static str),
    /// Reading the layer would decompress more than the limit.
    #[error("reading layer: decompresses to more than {limit} bytes")]
    TooBig {
        /// The limit given.
        limit: u64,
    },
}

/// How many decompressed bytes the reads of one layer may still take;
/// several passes over a blob may share one.
pub struct Budget {
    limit: u64,
    left: Cell<u64>,
    exceeded: Cell<bool>,
}

impl Budget {
    /// `limit` bytes in all.
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            left: Cell::new(limit),
            exceeded: Cell::new(false),
        }
    }

    /// What a failure to read under this budget means: the limit reached,
    /// else a corrupt layer.
    pub fn error(&self, e: &io::Error) -> ReadError {
        if self.exceeded.get() {
            ReadError::TooBig { limit: self.limit }
        } else {
            ReadError::Corrupt(e.to_string())
        }
    }

    /// `result` of reading under this budget: a limit reached is the
    /// error even when the reader swallowed it.
    pub fn check<T>(&self, result: io::Result<T>) -> Result<T, ReadError> {
        match result {
            _ if self.exceeded.get() => Err(ReadError::TooBig { limit: self.limit }),
            Ok(v) => Ok(v),
            Err(e) => Err(self.error(&e)),
        }
    }
}

/// A layer blob as a tar stream: gzip decompressed, a plain tar as it is,
/// zstd refused; every byte read drawn from `budget`, a read past it an
/// error ([`Budget::error`] says which).
pub fn open_layer<'a>(blob: &'a [u8], budget: &'a Budget) -> Result<impl Read + 'a, ReadError> {
    let inner: Box<dyn Read + 'a> = if blob.starts_with(&[0x1f, 0x8b]) {
        Box::new(MultiGzDecoder::new(blob))
    } else if blob.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(ReadError::Unsupported("zstd"));
    } else {
        Box::new(blob)
    };
    Ok(Budgeted { inner, budget })
}

/// A reader drawing on a [`Budget`].
struct Budgeted<'a, R> {
    inner: R,
    budget: &'a Budget,
}

impl<R: Read> Read for Budgeted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let left = self.budget.left.get();
        if n as u64 > left {
            self.budget.left.set(0);
            self.budget.exceeded.set(true);
            return Err(io::Error::other("decompressed size limit exceeded"));
        }
        self.budget.left.set(left - n as u64);
        Ok(n)
    }
}

/// Writes entries as a tar (sorted as given; parents must precede
/// children), every mtime = `mtime` (seconds since epoch), numeric owners
/// only (empty uname/gname), no atime/ctime, gzip without timestamp or file
/// name, default compression level.
///
/// Directories are named with a trailing '/'. Long paths and link targets
/// use GNU long-name records. A file that changes size while it is read is
/// an error.
pub fn build(entries: &[Entry], mtime: u64) -> Result<Layer, LayerError> {
    let gz = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::default());
    let (gz, diff, files) = write_tar(entries, mtime, gz)?;
    let blob = gz.finish().map_err(end_err)?;
    let digest = Digest::sha256(&blob);
    let diff_id = Digest::of_sha256(diff);
    Ok(Layer {
        blob,
        digest,
        diff_id,
        files,
    })
}

/// The diff_id [`build`] would give these entries, without compressing or
/// keeping anything: the files are read and hashed once.
pub fn diff_id(entries: &[Entry], mtime: u64) -> Result<Digest, LayerError> {
    let (_, diff, _) = write_tar(entries, mtime, io::sink())?;
    Ok(Digest::of_sha256(diff))
}

fn end_err(source: io::Error) -> LayerError {
    LayerError::Write {
        path: String::new(),
        source,
    }
}

/// Writes the tar of `entries` into `out`: what is left of `out`, the
/// hasher of the tar, and how many regular files it holds.
fn write_tar<W: Write>(
    entries: &[Entry],
    mtime: u64,
    out: W,
) -> Result<(W, Sha256, usize), LayerError> {
    let mut tar = tar::Builder::new(Hashing::new(out));
    let mut files = 0;
    for entry in entries {
        append(&mut tar, entry, mtime)?;
        if matches!(entry.kind, EntryKind::File(_)) {
            files += 1;
        }
    }
    let (out, diff) = tar.into_inner().map_err(end_err)?.finish();
    Ok((out, diff, files))
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    entry: &Entry,
    mtime: u64,
) -> Result<(), LayerError> {
    check_path(&entry.path)?;
    let write_err = |source| LayerError::Write {
        path: entry.path.clone(),
        source,
    };
    let mut h = tar::Header::new_gnu();
    h.set_mode(entry.mode & 0o7777);
    h.set_uid(u64::from(entry.uid));
    h.set_gid(u64::from(entry.gid));
    h.set_mtime(mtime);
    match &entry.kind {
        EntryKind::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            tar.append_data(&mut h, format!("{}/", entry.path), io::empty())
                .map_err(write_err)
        }
        EntryKind::Symlink(target) => {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            tar.append_link(&mut h, &entry.path, target)
                .map_err(write_err)
        }
        EntryKind::File(FileData::Bytes(data)) => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(data.len() as u64);
            tar.append_data(&mut h, &entry.path, data.as_slice())
                .map_err(write_err)
        }
        EntryKind::File(FileData::Path(path)) => {
            let read_err = |source| LayerError::Read {
                path: path.clone(),
                source,
            };
            let file = File::open(path).map_err(read_err)?;
            let size = file.metadata().map_err(read_err)?.len();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(size);
            let mut exact = Exact {
                inner: file,
                left: size,
                path,
            };
            tar.append_data(&mut h, &entry.path, &mut exact)
                .map_err(|source| {
                    if exact.failed() {
                        read_err(source)
                    } else {
                        write_err(source)
                    }
                })?;
            exact.check_end().map_err(read_err)
        }
    }
}

/// A relative, clean, '/'-separated path.
fn check_path(path: &str) -> Result<(), LayerError> {
    let bad = |reason| LayerError::BadPath {
        path: path.to_owned(),
        reason,
    };
    if path.is_empty() {
        return Err(bad("empty path"));
    }
    if path.contains('\0') {
        return Err(bad("NUL in path"));
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad("not a clean relative path"));
    }
    Ok(())
}

/// Reads exactly `left` bytes of a file: an early end is an error rather
/// than a short (and so corrupt) tar entry.
struct Exact<'a> {
    inner: File,
    left: u64,
    path: &'a Path,
}

impl Exact<'_> {
    fn failed(&self) -> bool {
        self.left > 0
    }

    /// The file must end where its size said.
    fn check_end(&mut self) -> io::Result<()> {
        let mut one = [0u8; 1];
        if self.inner.read(&mut one)? > 0 {
            return Err(io::Error::other(format!(
                "{} grew while it was read",
                self.path.display()
            )));
        }
        Ok(())
    }
}

impl Read for Exact<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let cap = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..cap])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while it was read", self.path.display()),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
        }
    }

    fn finish(self) -> (W, Sha256) {
        (self.inner, self.hasher)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(buf.get(..n).unwrap_or(buf));
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Finds `path` (e.g. `etc/passwd`) in a gzip-compressed (or plain) layer
/// tar read from `blob`.
///
/// Returns `Found(contents)`, `Whiteout` (the layer deletes it: an entry
/// `etc/.wh.passwd`, a whiteout of a parent directory, or an opaque whiteout
/// `etc/.wh..wh..opq` in a parent directory), or `Absent`. A file present in
/// the layer is `Found` even when its directory is opaque. A hard link is
/// followed within the layer (each pass over the layer draws on the same
/// `limit`); a symlink or directory at `path` is an error.
///
/// Refuses to decompress more than `limit` bytes in total, and a file
/// bigger than 1 MiB.
pub fn find_file(blob: &[u8], path: &str, limit: u64) -> Result<Lookup, LayerError> {
    let target = clean(path)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| LayerError::BadPath {
            path: path.to_owned(),
            reason: "not a path inside the layer",
        })?;
    let budget = Budget::new(limit);
    let (hit, whiteout) = scan(blob, &target, true, &budget)?;
    let mut link = match hit {
        Some(Hit::Data(data)) => return Ok(Lookup::Found(data)),
        Some(Hit::Link(to)) => to,
        None if whiteout => return Ok(Lookup::Whiteout),
        None => return Ok(Lookup::Absent),
    };
    for _ in 0..MAX_LINK_HOPS {
        match scan(blob, &link, false, &budget)?.0 {
            Some(Hit::Data(data)) => return Ok(Lookup::Found(data)),
            Some(Hit::Link(to)) => link = to,
            None => {
                return Err(ReadError::Corrupt(format!(
                    "{path} is a hard link to {}, which the layer does not hold",
                    link.join("/")
                ))
                .into())
            }
        }
    }
    Err(ReadError::Corrupt(format!("{path}: more than {MAX_LINK_HOPS} hard links")).into())
}

/// What a scan found at the path.
enum Hit {
    Data(Vec<u8>),
    /// A hard link to this path.
    Link(Vec<String>),
}

/// One pass over the layer: what is at `want`, and (with `whiteouts`)
/// whether the layer hides it.
fn scan(
    blob: &[u8],
    want: &[String],
    whiteouts: bool,
    budget: &Budget,
) -> Result<(Option<Hit>, bool), LayerError> {
    let reader = open_layer(blob, budget)?;
    let err = |e: io::Error| LayerError::from(budget.error(&e));
    let hiders = if whiteouts { hiders(want) } else { Vec::new() };
    let shown = want.join("/");
    let mut hidden = false;
    let mut archive = tar::Archive::new(reader);
    for member in archive.entries().map_err(err)? {
        let mut member = member.map_err(err)?;
        let raw = member.path_bytes();
        let Some(segs) = clean(&String::from_utf8_lossy(&raw)) else {
            continue;
        };
        if segs.as_slice() != want {
            if !hidden && hiders.contains(&segs) {
                hidden = true;
            }
            continue;
        }
        let kind = member.header().entry_type();
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = member.size();
                if size > MAX_FOUND {
                    return Err(LayerError::FileTooLarge {
                        path: shown,
                        size,
                        max: MAX_FOUND,
                    });
                }
                let mut data = Vec::new();
                (&mut member)
                    .take(MAX_FOUND + 1)
                    .read_to_end(&mut data)
                    .map_err(err)?;
                return Ok((Some(Hit::Data(data)), hidden));
            }
            tar::EntryType::Link => {
                let to = member
                    .link_name_bytes()
                    .and_then(|b| clean(&String::from_utf8_lossy(&b)))
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        ReadError::Corrupt(format!("{shown} is a hard link without a valid target"))
                    })?;
                return Ok((Some(Hit::Link(to)), hidden));
            }
            other => {
                let kind = match other {
                    tar::EntryType::Symlink => "symlink".to_owned(),
                    tar::EntryType::Directory => "directory".to_owned(),
                    other => format!("tar entry of type {:?}", char::from(other.as_byte())),
                };
                return Err(LayerError::NotAFile { path: shown, kind });
            }
        }
    }
    Ok((None, hidden))
}

/// The entries that hide `path` from lower layers: a whiteout of it or of a
/// parent, an opaque whiteout in a parent.
fn hiders(path: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for k in 0..path.len() {
        let mut wh = path[..k].to_vec();
        wh.push(format!(".wh.{}", path[k]));
        out.push(wh);
        let mut opq = path[..k].to_vec();
        opq.push(".wh..wh..opq".to_owned());
        out.push(opq);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::context::{Context, CopySpec};
    use flate2::read::GzDecoder;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn entry(path: &str, kind: EntryKind, mode: u32) -> Entry {
        Entry {
            path: path.to_owned(),
            kind,
            mode,
            uid: 0,
            gid: 0,
        }
    }

    fn file(path: &str, data: &[u8]) -> Entry {
        entry(path, EntryKind::File(FileData::Bytes(data.to_vec())), 0o644)
    }

    fn dir(path: &str) -> Entry {
        entry(path, EntryKind::Dir, 0o755)
    }

    fn gunzip(blob: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        GzDecoder::new(blob).read_to_end(&mut out).expect("gunzip");
        out
    }

    /// (path, type, mode, uid, gid, mtime, uname, gname, link)
    type Row = (
        String,
        char,
        u32,
        u64,
        u64,
        u64,
        Vec<u8>,
        Vec<u8>,
        Option<String>,
    );

    fn rows(tar_bytes: &[u8]) -> Vec<Row> {
        let mut ar = tar::Archive::new(tar_bytes);
        ar.entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                let h = e.header();
                (
                    String::from_utf8(e.path_bytes().into_owned()).expect("utf8"),
                    char::from(h.entry_type().as_byte()),
                    h.mode().expect("mode"),
                    h.uid().expect("uid"),
                    h.gid().expect("gid"),
                    h.mtime().expect("mtime"),
                    h.username_bytes().unwrap_or_default().to_vec(),
                    h.groupname_bytes().unwrap_or_default().to_vec(),
                    e.link_name_bytes()
                        .map(|b| String::from_utf8(b.into_owned()).expect("utf8")),
                )
            })
            .collect()
    }

    fn context() -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(d.path().join("app/bin")).expect("mkdir");
        fs::write(d.path().join("app/bin/run"), "#!/bin/sh\necho hi\n").expect("write");
        fs::write(d.path().join("app/config.toml"), "x = 1\n").expect("write");
        symlink("bin/run", d.path().join("app/start")).expect("symlink");
        d
    }

    fn copy_app(ctx: &Context) -> Vec<Entry> {
        ctx.entries(&CopySpec {
            sources: vec!["app".to_owned()],
            dest: "/opt/app/".to_owned(),
            owner: (1000, 1001),
            chmod: None,
            extract_archives: false,
            archive_owners: false,
            existing: None,
        })
        .expect("entries")
    }

    #[test]
    fn same_context_same_digest_after_touching_files() {
        let d = context();
        let ctx = Context::open(d.path()).expect("open");
        let first = build(&copy_app(&ctx), 1_700_000_000).expect("build");
        // Rewrite with identical content and move the mtime.
        let run = d.path().join("app/bin/run");
        fs::write(&run, "#!/bin/sh\necho hi\n").expect("write");
        let f = fs::File::options().write(true).open(&run).expect("open");
        f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(12345))
            .expect("set_modified");
        drop(f);
        let second = build(&copy_app(&ctx), 1_700_000_000).expect("build");
        assert_eq!(first.digest, second.digest);
        assert_eq!(first.diff_id, second.diff_id);
        assert_eq!(first.blob, second.blob);
        // A content change changes it.
        fs::write(&run, "#!/bin/sh\necho bye\n").expect("write");
        let third = build(&copy_app(&ctx), 1_700_000_000).expect("build");
        assert_ne!(first.digest, third.digest);
    }

    #[test]
    fn tar_holds_paths_modes_owners_and_links() {
        let d = context();
        let ctx = Context::open(d.path()).expect("open");
        let layer = build(&copy_app(&ctx), 42).expect("build");
        assert_eq!(layer.files, 2);
        let tar_bytes = gunzip(&layer.blob);
        let rows = rows(&tar_bytes);
        let summary: Vec<(String, char, u32, u64, u64)> = rows
            .iter()
            .map(|r| (r.0.clone(), r.1, r.2, r.3, r.4))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("opt/app/bin/".to_owned(), '5', 0o755, 1000, 1001),
                ("opt/app/bin/run".to_owned(), '0', 0o644, 1000, 1001),
                ("opt/app/config.toml".to_owned(), '0', 0o644, 1000, 1001),
                ("opt/app/start".to_owned(), '2', 0o777, 1000, 1001),
            ]
        );
        for r in &rows {
            assert_eq!(r.5, 42, "mtime of {}", r.0);
            assert!(r.6.is_empty() && r.7.is_empty(), "names of {}", r.0);
        }
        assert_eq!(rows[3].8.as_deref(), Some("bin/run"));
        // No atime/ctime in the GNU header.
        let mut ar = tar::Archive::new(tar_bytes.as_slice());
        for e in ar.entries().expect("entries") {
            let e = e.expect("entry");
            let gnu = e.header().as_gnu().expect("gnu header");
            assert_eq!(gnu.atime, [0; 12]);
            assert_eq!(gnu.ctime, [0; 12]);
        }
        // The contents come from the files.
        assert_eq!(
            find_file(&layer.blob, "opt/app/bin/run", 1 << 20).expect("find"),
            Lookup::Found(b"#!/bin/sh\necho hi\n".to_vec())
        );
    }

    #[test]
    fn digests_are_of_blob_and_tar() {
        let layer = build(
            &[dir("etc"), file("etc/hosts", b"127.0.0.1 localhost\n")],
            0,
        )
        .expect("build");
        let tar_bytes = gunzip(&layer.blob);
        assert_eq!(layer.diff_id, Digest::sha256(&tar_bytes));
        assert_eq!(layer.digest, Digest::sha256(&layer.blob));
        assert_ne!(layer.digest, layer.diff_id);
        // gzip header: no mtime, no file name.
        assert_eq!(&layer.blob[4..8], &[0, 0, 0, 0]);
        assert_eq!(layer.blob[3] & 0x08, 0, "FNAME flag set");
    }

    #[test]
    fn mtime_is_honoured() {
        let a = build(&[file("f", b"x")], 1).expect("build");
        let b = build(&[file("f", b"x")], 2).expect("build");
        assert_ne!(a.digest, b.digest);
        assert_eq!(rows(&gunzip(&b.blob))[0].5, 2);
    }

    #[test]
    fn long_paths_and_targets() {
        let long = format!("{}/file", "d".repeat(150));
        let target = "t/".repeat(80);
        let layer = build(
            &[
                dir(&"d".repeat(150)),
                file(&long, b"x"),
                entry("link", EntryKind::Symlink(target.clone()), 0o777),
            ],
            0,
        )
        .expect("build");
        let rows = rows(&gunzip(&layer.blob));
        assert_eq!(rows[1].0, long);
        assert_eq!(rows[2].8.as_deref(), Some(target.as_str()));
    }

    #[test]
    fn bad_paths_are_refused() {
        for p in ["", "/abs", "a/../b", "a//b", "./a", "a/"] {
            let err = build(&[file(p, b"x")], 0).expect_err(p);
            assert!(matches!(err, LayerError::BadPath { .. }), "{p}: {err}");
        }
    }

    #[test]
    fn missing_context_file_names_the_path() {
        let err = build(
            &[entry(
                "f",
                EntryKind::File(FileData::Path("/nonexistent/x".into())),
                0o644,
            )],
            0,
        )
        .expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/x"), "{err}");
    }

    fn blob_of(entries: &[Entry]) -> Vec<u8> {
        build(entries, 0).expect("build").blob
    }

    #[test]
    fn find_file_found_absent_whiteout() {
        let passwd = b"root:x:0:0::/root:/bin/sh\n";
        let found = blob_of(&[dir("etc"), file("etc/passwd", passwd)]);
        assert_eq!(
            find_file(&found, "etc/passwd", 1 << 20).expect("find"),
            Lookup::Found(passwd.to_vec())
        );
        assert_eq!(
            find_file(&found, "/etc/passwd", 1 << 20).expect("find"),
            Lookup::Found(passwd.to_vec())
        );
        assert_eq!(
            find_file(&found, "etc/group", 1 << 20).expect("find"),
            Lookup::Absent
        );

        let wh = blob_of(&[dir("etc"), file("etc/.wh.passwd", b"")]);
        assert_eq!(
            find_file(&wh, "etc/passwd", 1 << 20).expect("find"),
            Lookup::Whiteout
        );
        assert_eq!(
            find_file(&wh, "etc/group", 1 << 20).expect("find"),
            Lookup::Absent
        );

        let parent = blob_of(&[file(".wh.etc", b"")]);
        assert_eq!(
            find_file(&parent, "etc/passwd", 1 << 20).expect("find"),
            Lookup::Whiteout
        );
    }

    #[test]
    fn find_file_opaque_directory() {
        let opaque = blob_of(&[dir("etc"), file("etc/.wh..wh..opq", b"")]);
        assert_eq!(
            find_file(&opaque, "etc/passwd", 1 << 20).expect("find"),
            Lookup::Whiteout
        );
        let both = blob_of(&[
            dir("etc"),
            file("etc/.wh..wh..opq", b""),
            file("etc/passwd", b"p"),
        ]);
        assert_eq!(
            find_file(&both, "etc/passwd", 1 << 20).expect("find"),
            Lookup::Found(b"p".to_vec())
        );
        // An opaque sibling directory does not hide it.
        let other = blob_of(&[dir("usr"), file("usr/.wh..wh..opq", b"")]);
        assert_eq!(
            find_file(&other, "etc/passwd", 1 << 20).expect("find"),
            Lookup::Absent
        );
    }

    #[test]
    fn find_file_reads_plain_tar() {
        let blob = blob_of(&[dir("etc"), file("etc/passwd", b"p")]);
        let plain = gunzip(&blob);
        assert_eq!(
            find_file(&plain, "etc/passwd", 1 << 20).expect("find"),
            Lookup::Found(b"p".to_vec())
        );
    }

    #[test]
    fn find_file_follows_hard_links() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        b.append_data(&mut h, "usr/share/passwd", b"p".as_slice())
            .expect("append");
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        b.append_link(&mut h, "etc/passwd", "usr/share/passwd")
            .expect("append");
        let blob = b.into_inner().expect("tar");
        assert_eq!(
            find_file(&blob, "etc/passwd", 1 << 20).expect("find"),
            Lookup::Found(b"p".to_vec())
        );
    }

    #[test]
    fn find_file_limits() {
        let big = vec![b'x'; (MAX_FOUND + 1) as usize];
        let blob = blob_of(&[file("etc/passwd", &big)]);
        let err = find_file(&blob, "etc/passwd", 1 << 30).expect_err("too large");
        assert!(matches!(err, LayerError::FileTooLarge { .. }), "{err}");

        let blob = blob_of(&[file("filler", &[0; 10_000]), file("etc/passwd", b"p")]);
        let err = find_file(&blob, "etc/passwd", 5_000).expect_err("limit");
        assert!(
            matches!(
                err,
                LayerError::Unreadable(ReadError::TooBig { limit: 5_000 })
            ),
            "{err}"
        );
        assert!(find_file(&blob, "etc/passwd", 1 << 20).is_ok());
    }

    #[test]
    fn find_file_refuses_links_and_dirs() {
        let blob = blob_of(&[entry("etc/passwd", EntryKind::Symlink("x".into()), 0o777)]);
        let err = find_file(&blob, "etc/passwd", 1 << 20).expect_err("symlink");
        assert!(matches!(err, LayerError::NotAFile { .. }), "{err}");
    }

    #[test]
    fn find_file_survives_garbage() {
        let good = blob_of(&[dir("etc"), file("etc/passwd", b"p")]);
        let mut inputs: Vec<Vec<u8>> = vec![
            Vec::new(),
            vec![0x1f, 0x8b],
            vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3],
            vec![0xff; 1024],
            b"ustar".to_vec(),
            good[..good.len() / 2].to_vec(),
        ];
        let plain = gunzip(&good);
        inputs.push(plain[..700].to_vec());
        let mut flipped = plain.clone();
        flipped[100] ^= 0xff;
        inputs.push(flipped);
        for input in &inputs {
            for path in ["etc/passwd", "", "..", "/"] {
                let _ = find_file(input, path, 1 << 20);
            }
        }
        assert!(find_file(&good, "..", 1 << 20).is_err());
        assert!(find_file(&[0x28, 0xb5, 0x2f, 0xfd], "etc/passwd", 1 << 20).is_err());
    }
}
