//! The build context: `.dockerignore`, and the entries one `COPY` or `ADD`
//! puts in a layer.
//!
//! The rules are Docker's (BuildKit's where they differ): a directory source
//! copies its contents, a file source is renamed to the destination unless
//! that ends with `/`, is a directory of the image or there are several
//! sources, the directories missing on the way to the destination are
//! created (given what the image has, [`CopySpec::existing`]), globs match whole path
//! components (`**` spans directories), and `.dockerignore`d paths are
//! invisible. Nothing leaves the context: sources and symlinked parents are
//! resolved and must stay under the root, and symlinks inside copied
//! directories must point inside it too.
//!
//! By concern: `copy.rs` resolves one `COPY`/`ADD` into layer entries,
//! `ignore.rs` is the `.dockerignore` and glob engine, `archive.rs` unpacks
//! the local archives `ADD` is given, `hash.rs` is the content hash a
//! watched context is versioned by, `tar.rs` the context as a remote
//! engine's `/build` takes it.

mod archive;
mod copy;
mod hash;
mod ignore;
mod tar;

use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use ignore::Ignore;

/// An opened build context.
#[derive(Debug, Clone)]
pub struct Context {
    /// The canonical root directory.
    root: PathBuf,
    ignore: Ignore,
}

/// One `COPY`/`ADD`, already variable-substituted by the caller.
#[derive(Debug, Clone)]
pub struct CopySpec {
    /// Sources as written, relative to the context root (a leading '/' means
    /// the context root too); may contain globs `*`, `?`, `[...]`, `**`.
    pub sources: Vec<String>,
    /// Destination inside the image: absolute ('/'-rooted; the caller
    /// already joined a relative dest with WORKDIR). A trailing '/' is
    /// significant.
    pub dest: String,
    /// Owner of every entry created (uid, gid); (0,0) by default.
    pub owner: (u32, u32),
    /// `--chmod` (octal permission bits) applied to every copied file and
    /// directory, if given.
    pub chmod: Option<u32>,
    /// `ADD`: a local source file that is a tar archive (plain or gzip) is
    /// unpacked into dest instead of copied.
    pub extract_archives: bool,
    /// Unpacked archive members keep the archive's owners (`ADD` without
    /// `--chown`, as Docker unpacks); else they get `owner`.
    pub archive_owners: bool,
    /// How much of `dest` the image already has (its base and the layers
    /// before this one). Known, the directories missing on the way to the
    /// destination are created as Docker creates them: mode 0755 (whatever
    /// `--chmod` says), owned by `owner`; what exists gets no entry. `None`:
    /// no entry for the destination or its parents at all.
    pub existing: Option<Existing>,
}

/// What the image has of a `COPY`/`ADD` destination (already resolved
/// through the image's symlinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Existing {
    /// How many leading components of the destination are directories of
    /// the image: all of them when the destination is one.
    pub dirs: usize,
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File(FileData),
    /// A symbolic link with its target text.
    Symlink(String),
}

/// Where a file's contents come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileData {
    /// A file in the context, read when the layer is written.
    Path(PathBuf),
    /// Contents already in memory (unpacked from an archive).
    Bytes(Vec<u8>),
}

/// One entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the image root: no leading '/', '/'-separated, e.g.
    /// `app/bin/run`.
    pub path: String,
    /// Directory, file or symlink.
    pub kind: EntryKind,
    /// Permission bits only, e.g. `0o755`.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// Why a context cannot be opened or a `COPY`/`ADD` cannot be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The context directory cannot be opened.
    #[error("build context {}: {source}", path.display())]
    Open {
        /// The directory given.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Reading something in the context failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path read.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A `.dockerignore` line is not a valid pattern.
    #[error(".dockerignore line {line}: {reason}")]
    Ignore {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A source glob is not a valid pattern.
    #[error("COPY source {source_path}: {reason}")]
    BadPattern {
        /// The source as written.
        source_path: String,
        /// What is wrong.
        reason: String,
    },
    /// A source matches nothing visible in the context.
    #[error("COPY source {0}: no such file or directory in the context")]
    NoSuchFile(String),
    /// A source resolves (lexically or through symlinks) outside the context.
    #[error("COPY source {0} escapes the context")]
    Escapes(String),
    /// A symlink in a copied directory is absolute or points outside the
    /// context.
    #[error("symlink {} -> {target} points outside the context", path.display())]
    SymlinkEscapes {
        /// The link.
        path: PathBuf,
        /// Its target.
        target: String,
    },
    /// A socket, FIFO or device.
    #[error("{}: cannot copy a {kind}", path.display())]
    Unsupported {
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// A file name that is not UTF-8.
    #[error("{}: file name is not valid UTF-8", path.display())]
    NotUtf8 {
        /// The path.
        path: PathBuf,
    },
    /// Several sources and a destination that is not a directory.
    #[error("when using COPY with more than one source file, the destination must be a directory and end with a / (destination {0})")]
    NotADirectory(String),
    /// An archive uses a compression the native backend cannot read.
    #[error("ADD {}: {format} archives are not supported by the native backend", path.display())]
    UnsupportedArchive {
        /// The archive.
        path: PathBuf,
        /// `bzip2`, `xz` or `zstd`.
        format: &'static str,
    },
    /// An archive cannot be unpacked.
    #[error("ADD {}: {reason}", path.display())]
    Archive {
        /// The archive.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl Context {
    /// Opens the context directory, reading `.dockerignore` at its root if
    /// present.
    pub fn open(root: &Path) -> Result<Context, ContextError> {
        let open_err = |source| ContextError::Open {
            path: root.to_owned(),
            source,
        };
        let canonical = fs::canonicalize(root).map_err(open_err)?;
        if !fs::metadata(&canonical).map_err(open_err)?.is_dir() {
            return Err(open_err(io::Error::other("not a directory")));
        }
        let ignore_path = canonical.join(".dockerignore");
        let ignore = match fs::read(&ignore_path) {
            Ok(bytes) => {
                let text = String::from_utf8(bytes).map_err(|_| ContextError::Ignore {
                    line: 0,
                    reason: "the file is not valid UTF-8".to_owned(),
                })?;
                Ignore::parse(&text)?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ignore::default(),
            Err(source) => {
                return Err(ContextError::Io {
                    path: ignore_path,
                    source,
                })
            }
        };
        Ok(Context {
            root: canonical,
            ignore,
        })
    }

    /// The canonical root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The layer entries one COPY/ADD produces, sorted by path, parents
    /// before children, no duplicates (a later source wins over an earlier
    /// one for the same path).
    ///
    /// File contents are not read (`FileData::Path`) except for archives
    /// that `ADD` unpacks (`FileData::Bytes`, at most 8 GiB in total).
    pub fn entries(&self, spec: &CopySpec) -> Result<Vec<Entry>, ContextError> {
        self.entries_limited(spec, archive::MAX_UNPACKED)
    }
}

fn file_kind(ft: &fs::FileType) -> &'static str {
    if ft.is_socket() {
        "socket"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

/// `a` + "/" + `b`, either may be empty.
fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a}/{b}"),
    }
}

/// `path` below `root` as components.
fn rel_segments(root: &Path, path: &Path) -> Result<Vec<String>, ContextError> {
    let rel = path.strip_prefix(root).unwrap_or(Path::new(""));
    rel.iter()
        .map(|c| {
            c.to_str()
                .map(str::to_owned)
                .ok_or_else(|| ContextError::NotUtf8 {
                    path: path.to_owned(),
                })
        })
        .collect()
}

/// Lexically cleans a '/'-separated path relative to a root (a leading '/'
/// is the root too): empty and `.` components dropped, `..` applied. `None`
/// when it climbs above the root.
pub(crate) fn clean(path: &str) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            _ => out.push(c.to_owned()),
        }
    }
    Some(out)
}

/// The destination's components; `..` above the root stays at the root, as
/// `filepath.Join("/", dest)` does.
fn clean_dest(dest: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in dest.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(c.to_owned()),
        }
    }
    out
}

fn has_meta(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

#[cfg(test)]
pub(super) mod fixtures {
    //! Contexts and specs shared by the tests of the submodules.

    use super::*;
    use std::os::unix::fs::PermissionsExt;

    pub(crate) fn write(root: &Path, rel: &str, body: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, body).expect("write");
    }

    pub(crate) fn chmod(root: &Path, rel: &str, mode: u32) {
        fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).expect("chmod");
    }

    pub(crate) fn spec(sources: &[&str], dest: &str) -> CopySpec {
        CopySpec {
            sources: sources.iter().map(|s| s.to_string()).collect(),
            dest: dest.to_owned(),
            owner: (0, 0),
            chmod: None,
            extract_archives: false,
            archive_owners: false,
            existing: None,
        }
    }

    pub(crate) fn paths(entries: &[Entry]) -> Vec<String> {
        entries.iter().map(|e| e.path.clone()).collect()
    }

    pub(crate) fn get<'a>(entries: &'a [Entry], path: &str) -> &'a Entry {
        entries
            .iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("no {path} in {:?}", paths(entries)))
    }

    /// A context with a few files; returns the tempdir.
    pub(crate) fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = dir.path();
        write(r, "app/main.go", "package main");
        write(r, "app/lib/util.go", "package lib");
        write(r, "app/README.md", "readme");
        write(r, "run.sh", "#!/bin/sh");
        chmod(r, "run.sh", 0o750);
        chmod(r, "app/lib", 0o700);
        dir
    }

    pub(crate) fn open(dir: &tempfile::TempDir) -> Context {
        Context::open(dir.path()).expect("open")
    }
}
