//! The build context: `.dockerignore`, and the entries one `COPY` or `ADD`
//! puts in a layer.
//!
//! The rules are Docker's (BuildKit's where they differ): a directory source
//! copies its contents, a file source is renamed to the destination unless
//! that ends with `/` or there are several sources, globs match whole path
//! components (`**` spans directories), and `.dockerignore`d paths are
//! invisible. Nothing leaves the context: sources and symlinked parents are
//! resolved and must stay under the root, and symlinks inside copied
//! directories must point inside it too.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

/// The most an `ADD` may unpack from one context's archives in total.
const MAX_UNPACKED: u64 = 8 << 30;

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
        self.entries_limited(spec, MAX_UNPACKED)
    }

    fn entries_limited(&self, spec: &CopySpec, limit: u64) -> Result<Vec<Entry>, ContextError> {
        let dest_segs = clean_dest(&spec.dest);
        let dest = dest_segs.join("/");
        let dest_is_dir = dest.is_empty()
            || spec.dest.ends_with('/')
            || spec.dest.ends_with("/.")
            || spec.dest == ".";
        let mut sources = Vec::new();
        for source in &spec.sources {
            let found = self.expand(source)?;
            if found.is_empty() {
                return Err(ContextError::NoSuchFile(source.clone()));
            }
            sources.extend(found);
        }
        let several = sources.len() > 1;
        if several && !dest_is_dir {
            return Err(ContextError::NotADirectory(spec.dest.clone()));
        }
        let dir_mode = spec.chmod.unwrap_or(0o755) & 0o7777;
        let mut out = Entries {
            map: BTreeMap::new(),
            dest: dest.clone(),
            owner: spec.owner,
            dir_mode,
        };
        let mut unpacked = 0u64;
        for source in sources {
            match source.kind {
                SourceKind::Dir => {
                    self.copy_dir(&mut out, &source, spec)?;
                }
                SourceKind::File { mode } => {
                    if spec.extract_archives {
                        if let Some(gzip) = sniff_archive(&source.real)? {
                            unpack(&mut out, &source.real, gzip, limit, &mut unpacked)?;
                            continue;
                        }
                    }
                    let path = if several || dest_is_dir {
                        let base = source.name.last().map(String::as_str).unwrap_or_default();
                        join(&dest, base)
                    } else {
                        dest.clone()
                    };
                    out.put(Entry {
                        path,
                        kind: EntryKind::File(FileData::Path(source.real.clone())),
                        mode: spec.chmod.unwrap_or(mode) & 0o7777,
                        uid: spec.owner.0,
                        gid: spec.owner.1,
                    });
                }
            }
        }
        Ok(out.map.into_values().collect())
    }

    /// The visible paths one source names, in order.
    fn expand(&self, source: &str) -> Result<Vec<Source>, ContextError> {
        let segs = clean(source).ok_or_else(|| ContextError::Escapes(source.to_owned()))?;
        // Set when a directory the glob had to list resolves outside.
        let mut escaped = false;
        let candidates: Vec<Vec<String>> = if has_meta(source) {
            let pattern = Pattern::compile(&segs).map_err(|reason| ContextError::BadPattern {
                source_path: source.to_owned(),
                reason,
            })?;
            self.glob(&pattern, &mut escaped)?.into_iter().collect()
        } else {
            vec![segs]
        };
        let mut found = Vec::new();
        for name in candidates {
            let refs: Vec<&str> = name.iter().map(String::as_str).collect();
            if !refs.is_empty() && self.ignore.excluded(&refs) {
                // Still visible when `!` rules bring back something below.
                let abs = self.root.join(name.join("/"));
                let is_dir = fs::symlink_metadata(&abs).is_ok_and(|m| m.is_dir());
                if !(is_dir && self.ignore.may_include_below(&refs)) {
                    continue;
                }
            }
            if let Some(s) = self.resolve(name, source)? {
                found.push(s);
            }
        }
        if found.is_empty() && escaped {
            return Err(ContextError::Escapes(source.to_owned()));
        }
        Ok(found)
    }

    /// Follows `name` (a cleaned relative path) to what it really is, which
    /// must be inside the root. `None` when it does not exist.
    fn resolve(&self, name: Vec<String>, source: &str) -> Result<Option<Source>, ContextError> {
        let abs = self.root.join(name.join("/"));
        let real = match fs::canonicalize(&abs) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => return Ok(None),
            Err(source) => return Err(ContextError::Io { path: abs, source }),
        };
        if !real.starts_with(&self.root) {
            return Err(ContextError::Escapes(source.to_owned()));
        }
        let meta = fs::metadata(&real).map_err(|source| ContextError::Io {
            path: real.clone(),
            source,
        })?;
        let kind = if meta.is_dir() {
            SourceKind::Dir
        } else if meta.is_file() {
            SourceKind::File {
                mode: meta.permissions().mode() & 0o7777,
            }
        } else {
            return Err(ContextError::Unsupported {
                path: real,
                kind: file_kind(&meta.file_type()),
            });
        };
        let real_rel = rel_segments(&self.root, &real)?;
        Ok(Some(Source {
            name,
            real,
            real_rel,
            kind,
        }))
    }

    /// Every path in the context matching `pattern`, without following
    /// symlinks for `**` and without entering ignored directories. A
    /// directory resolving outside the root is not listed but noted in
    /// `escaped`.
    fn glob(
        &self,
        pattern: &Pattern,
        escaped: &mut bool,
    ) -> Result<BTreeSet<Vec<String>>, ContextError> {
        let mut current: BTreeSet<Vec<String>> = BTreeSet::from([Vec::new()]);
        let last = pattern.segments.len().saturating_sub(1);
        for (i, seg) in pattern.segments.iter().enumerate() {
            let mut next = BTreeSet::new();
            for cand in &current {
                match seg {
                    Segment::Name(tokens) => {
                        if let Some(lit) = literal(tokens) {
                            let mut c = cand.clone();
                            c.push(lit);
                            next.insert(c);
                            continue;
                        }
                        for (name, _) in self.list(cand, escaped)? {
                            if match_name(tokens, &name) {
                                let mut c = cand.clone();
                                c.push(name);
                                next.insert(c);
                            }
                        }
                    }
                    Segment::AnyDirs => {
                        // Trailing `**` needs at least one component.
                        if i != last {
                            next.insert(cand.clone());
                        }
                        self.descendants(cand, escaped, &mut next)?;
                    }
                }
            }
            current = next;
        }
        Ok(current)
    }

    /// Adds every visible path below `dir` (not following symlinks).
    fn descendants(
        &self,
        dir: &[String],
        escaped: &mut bool,
        out: &mut BTreeSet<Vec<String>>,
    ) -> Result<(), ContextError> {
        let mut stack = vec![dir.to_vec()];
        while let Some(d) = stack.pop() {
            for (name, is_dir) in self.list(&d, escaped)? {
                let mut c = d.clone();
                c.push(name);
                let refs: Vec<&str> = c.iter().map(String::as_str).collect();
                let excluded = self.ignore.excluded(&refs);
                if is_dir && (!excluded || self.ignore.may_include_below(&refs)) {
                    stack.push(c.clone());
                }
                if !excluded || is_dir {
                    out.insert(c);
                }
            }
        }
        Ok(())
    }

    /// The entries of directory `dir` (names, and whether each is a real
    /// directory); empty if it is missing, not a directory, or resolves
    /// outside the root (which sets `escaped`).
    fn list(
        &self,
        dir: &[String],
        escaped: &mut bool,
    ) -> Result<Vec<(String, bool)>, ContextError> {
        let abs = self.root.join(dir.join("/"));
        let real = match fs::canonicalize(&abs) {
            Ok(r) => r,
            Err(_) => return Ok(Vec::new()),
        };
        if !real.starts_with(&self.root) {
            *escaped = true;
            return Ok(Vec::new());
        }
        let rd = match fs::read_dir(&real) {
            Ok(rd) => rd,
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.kind() == io::ErrorKind::NotADirectory =>
            {
                return Ok(Vec::new())
            }
            Err(source) => return Err(ContextError::Io { path: real, source }),
        };
        let mut names = Vec::new();
        for item in rd {
            let item = item.map_err(|source| ContextError::Io {
                path: real.clone(),
                source,
            })?;
            let name = item
                .file_name()
                .into_string()
                .map_err(|_| ContextError::NotUtf8 { path: item.path() })?;
            let is_dir = item.file_type().is_ok_and(|t| t.is_dir());
            names.push((name, is_dir));
        }
        names.sort();
        Ok(names)
    }

    /// Copies the contents of a directory source into `out.dest`.
    fn copy_dir(
        &self,
        out: &mut Entries,
        source: &Source,
        spec: &CopySpec,
    ) -> Result<(), ContextError> {
        // Directories that are ignored but walked for `!` rules: emitted only
        // if something below them is.
        let mut pending: Vec<Entry> = Vec::new();
        let mut stack: Vec<(PathBuf, Vec<String>, String)> = vec![(
            source.real.clone(),
            source.real_rel.clone(),
            out.dest.clone(),
        )];
        while let Some((abs, rel, dest)) = stack.pop() {
            let rd = fs::read_dir(&abs).map_err(|source| ContextError::Io {
                path: abs.clone(),
                source,
            })?;
            let mut names = Vec::new();
            for item in rd {
                let item = item.map_err(|source| ContextError::Io {
                    path: abs.clone(),
                    source,
                })?;
                let name = item
                    .file_name()
                    .into_string()
                    .map_err(|_| ContextError::NotUtf8 { path: item.path() })?;
                names.push(name);
            }
            names.sort();
            for name in names {
                let child_abs = abs.join(&name);
                let mut child_rel = rel.clone();
                child_rel.push(name.clone());
                let child_dest = join(&dest, &name);
                let refs: Vec<&str> = child_rel.iter().map(String::as_str).collect();
                let excluded = self.ignore.excluded(&refs);
                let meta = fs::symlink_metadata(&child_abs).map_err(|source| ContextError::Io {
                    path: child_abs.clone(),
                    source,
                })?;
                let ft = meta.file_type();
                let perm = meta.permissions().mode() & 0o7777;
                let (uid, gid) = spec.owner;
                if ft.is_dir() {
                    if excluded && !self.ignore.may_include_below(&refs) {
                        continue;
                    }
                    let entry = Entry {
                        path: child_dest.clone(),
                        kind: EntryKind::Dir,
                        mode: spec.chmod.unwrap_or(perm) & 0o7777,
                        uid,
                        gid,
                    };
                    if excluded {
                        pending.push(entry);
                    } else {
                        out.put(entry);
                    }
                    stack.push((child_abs, child_rel, child_dest));
                } else if excluded {
                    continue;
                } else if ft.is_file() {
                    out.put(Entry {
                        path: child_dest,
                        kind: EntryKind::File(FileData::Path(child_abs)),
                        mode: spec.chmod.unwrap_or(perm) & 0o7777,
                        uid,
                        gid,
                    });
                } else if ft.is_symlink() {
                    let target = self.check_link(&child_abs, &rel)?;
                    out.put(Entry {
                        path: child_dest,
                        kind: EntryKind::Symlink(target),
                        mode: 0o777,
                        uid,
                        gid,
                    });
                } else {
                    return Err(ContextError::Unsupported {
                        path: child_abs,
                        kind: file_kind(&ft),
                    });
                }
            }
        }
        // Parents first, so a pending parent replaces the implicit directory
        // its children made before its own children's entries are looked at.
        pending.sort_by(|a, b| a.path.cmp(&b.path));
        for entry in pending {
            if out.map.contains_key(&entry.path) {
                out.map.insert(entry.path.clone(), entry);
            }
        }
        Ok(())
    }

    /// The target of the symlink `link` (in directory `dir_rel`), which must
    /// be relative and stay inside the context.
    fn check_link(&self, link: &Path, dir_rel: &[String]) -> Result<String, ContextError> {
        let target = fs::read_link(link).map_err(|source| ContextError::Io {
            path: link.to_owned(),
            source,
        })?;
        let target = target
            .into_os_string()
            .into_string()
            .map_err(|_| ContextError::NotUtf8 {
                path: link.to_owned(),
            })?;
        let escapes = || ContextError::SymlinkEscapes {
            path: link.to_owned(),
            target: target.clone(),
        };
        if target.starts_with('/') || target.is_empty() {
            return Err(escapes());
        }
        let joined = format!("{}/{}", dir_rel.join("/"), target);
        if clean(&joined).is_none() {
            return Err(escapes());
        }
        // Through other symlinks, the real location must be inside too.
        if let Ok(real) = fs::canonicalize(link) {
            if !real.starts_with(&self.root) {
                return Err(escapes());
            }
        }
        Ok(target)
    }
}

/// A path one source names, resolved.
#[derive(Debug)]
struct Source {
    /// The path as named (cleaned, relative to the root).
    name: Vec<String>,
    /// The canonical absolute path.
    real: PathBuf,
    /// The canonical path relative to the root.
    real_rel: Vec<String>,
    kind: SourceKind,
}

#[derive(Debug)]
enum SourceKind {
    Dir,
    File { mode: u32 },
}

/// The entries of one COPY, keyed by path.
struct Entries {
    map: BTreeMap<String, Entry>,
    /// The destination, relative to the image root ("" for the root).
    dest: String,
    owner: (u32, u32),
    /// Mode of the destination and of directories created under it.
    dir_mode: u32,
}

impl Entries {
    /// Inserts `entry`, replacing an entry at the same path and whatever was
    /// below it if it is not a directory, and making its parents
    /// directories.
    fn put(&mut self, entry: Entry) {
        for (i, _) in entry.path.match_indices('/') {
            self.ensure_dir(&entry.path[..i]);
        }
        if entry.kind != EntryKind::Dir {
            let prefix = format!("{}/", entry.path);
            let below: Vec<String> = self
                .map
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, _)| k.clone())
                .collect();
            for k in below {
                self.map.remove(&k);
            }
        }
        self.map.insert(entry.path.clone(), entry);
    }

    /// A directory below the destination that no source entry names (the
    /// parents of unpacked archive members). The destination and its
    /// ancestors get no entry: they belong to the base (or are created by
    /// the runtime when it unpacks the layer), and an entry would overwrite
    /// the base's mode, owner or symlink (`/bin -> usr/bin`, `/tmp` 1777).
    fn ensure_dir(&mut self, path: &str) {
        let at_or_above_dest = self.dest == path
            || self
                .dest
                .strip_prefix(path)
                .is_some_and(|rest| rest.starts_with('/'));
        if at_or_above_dest || self.map.get(path).is_some_and(|e| e.kind == EntryKind::Dir) {
            return;
        }
        self.map.insert(
            path.to_owned(),
            Entry {
                path: path.to_owned(),
                kind: EntryKind::Dir,
                mode: self.dir_mode,
                uid: self.owner.0,
                gid: self.owner.1,
            },
        );
    }
}

/// Whether a file is an archive `ADD` unpacks: `Some(true)` for gzip,
/// `Some(false)` for a plain tar.
fn sniff_archive(path: &Path) -> Result<Option<bool>, ContextError> {
    let io_err = |source| ContextError::Io {
        path: path.to_owned(),
        source,
    };
    let mut head = Vec::new();
    File::open(path)
        .map_err(io_err)?
        .take(512)
        .read_to_end(&mut head)
        .map_err(io_err)?;
    let unsupported = |format| ContextError::UnsupportedArchive {
        path: path.to_owned(),
        format,
    };
    if head.starts_with(&[0x1f, 0x8b]) {
        // Only a gzipped tar is unpacked; any other gzip file is copied.
        let mut inner = Vec::new();
        let file = File::open(path).map_err(io_err)?;
        let ok = GzDecoder::new(BufReader::new(file))
            .take(512)
            .read_to_end(&mut inner)
            .is_ok();
        return Ok((ok && is_tar_header(&inner)).then_some(true));
    }
    if head.len() >= 10
        && head.starts_with(b"BZh")
        && (b'1'..=b'9').contains(&head[3])
        && (head[4..10] == [0x31, 0x41, 0x59, 0x26, 0x53, 0x59]
            || head[4..10] == [0x17, 0x72, 0x45, 0x38, 0x50, 0x90])
    {
        return Err(unsupported("bzip2"));
    }
    if head.starts_with(&[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]) {
        return Err(unsupported("xz"));
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(unsupported("zstd"));
    }
    Ok(is_tar_header(&head).then_some(false))
}

/// A ustar or GNU tar header: "ustar" at offset 257.
fn is_tar_header(block: &[u8]) -> bool {
    block.get(257..262) == Some(b"ustar".as_slice())
}

/// Unpacks a tar (gzip-compressed or not) into `out.dest`, with the
/// archive's modes and `out.owner`.
fn unpack(
    out: &mut Entries,
    path: &Path,
    gzip: bool,
    limit: u64,
    total: &mut u64,
) -> Result<(), ContextError> {
    let fail = |reason: String| ContextError::Archive {
        path: path.to_owned(),
        reason,
    };
    let file = File::open(path).map_err(|source| ContextError::Io {
        path: path.to_owned(),
        source,
    })?;
    let reader: Box<dyn Read> = if gzip {
        Box::new(GzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    let mut archive = tar::Archive::new(reader);
    let members = archive.entries().map_err(|e| fail(e.to_string()))?;
    let (uid, gid) = out.owner;
    for member in members {
        let mut member = member.map_err(|e| fail(e.to_string()))?;
        let raw = String::from_utf8(member.path_bytes().into_owned())
            .map_err(|_| fail("a member name is not valid UTF-8".to_owned()))?;
        if raw.starts_with('/') {
            return Err(fail(format!("member {raw:?} has an absolute path")));
        }
        let segs =
            clean(&raw).ok_or_else(|| fail(format!("member {raw:?} escapes the destination")))?;
        if segs.is_empty() {
            continue;
        }
        let dest = join(&out.dest, &segs.join("/"));
        let header = member.header();
        let kind = header.entry_type();
        if matches!(
            kind,
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo
        ) {
            return Err(fail(format!("member {raw:?} is a device or FIFO")));
        }
        let mode = header
            .mode()
            .map_err(|e| fail(format!("member {raw:?}: {e}")))?
            & 0o7777;
        let link = member
            .link_name_bytes()
            .map(|b| String::from_utf8(b.into_owned()))
            .transpose()
            .map_err(|_| fail(format!("member {raw:?}: link target is not valid UTF-8")))?;
        let entry = |kind| Entry {
            path: dest.clone(),
            kind,
            mode,
            uid,
            gid,
        };
        use tar::EntryType as T;
        match kind {
            T::Directory => out.put(entry(EntryKind::Dir)),
            T::Regular | T::Continuous | T::GNUSparse => {
                let remaining = limit.saturating_sub(*total);
                let mut data = Vec::new();
                (&mut member)
                    .take(remaining.saturating_add(1))
                    .read_to_end(&mut data)
                    .map_err(|e| fail(format!("member {raw:?}: {e}")))?;
                if data.len() as u64 > remaining {
                    return Err(fail(format!("unpacks to more than {limit} bytes")));
                }
                *total += data.len() as u64;
                out.put(entry(EntryKind::File(FileData::Bytes(data))));
            }
            T::Symlink => {
                let target = link.ok_or_else(|| fail(format!("symlink {raw:?} has no target")))?;
                out.put(entry(EntryKind::Symlink(target)));
            }
            T::Link => {
                let target =
                    link.ok_or_else(|| fail(format!("hard link {raw:?} has no target")))?;
                let target_segs = clean(&target)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| fail(format!("hard link {raw:?} escapes the destination")))?;
                let target_path = join(&out.dest, &target_segs.join("/"));
                let data = match out.map.get(&target_path).map(|e| &e.kind) {
                    Some(EntryKind::File(FileData::Bytes(b))) => b.clone(),
                    _ => {
                        return Err(fail(format!(
                            "hard link {raw:?} -> {target:?}: no such file earlier in the archive"
                        )))
                    }
                };
                *total = total.saturating_add(data.len() as u64);
                if *total > limit {
                    return Err(fail(format!("unpacks to more than {limit} bytes")));
                }
                out.put(entry(EntryKind::File(FileData::Bytes(data))));
            }
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => {}
            other => {
                return Err(fail(format!(
                    "member {raw:?} has an unsupported type {:?}",
                    other.as_byte() as char
                )))
            }
        }
    }
    Ok(())
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

/// `.dockerignore` rules, in order; the last matching rule wins.
#[derive(Debug, Clone, Default)]
struct Ignore {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    /// `!pattern`: includes again.
    include: bool,
    pattern: Pattern,
}

impl Ignore {
    fn parse(text: &str) -> Result<Ignore, ContextError> {
        let mut rules = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let err = |reason: String| ContextError::Ignore {
                line: i + 1,
                reason,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (include, body) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            if body.is_empty() {
                return Err(err(format!("illegal exclusion pattern {line:?}")));
            }
            // Lexical cleaning as filepath.Clean; a pattern climbing above
            // the root can never match.
            let Some(segs) = clean(body) else {
                continue;
            };
            if segs.is_empty() {
                continue;
            }
            let pattern = Pattern::compile(&segs).map_err(|r| err(format!("{body:?}: {r}")))?;
            rules.push(Rule { include, pattern });
        }
        Ok(Ignore { rules })
    }

    /// Whether `path` (non-empty, relative to the root) is excluded: a rule
    /// matches a path or any of its parents.
    fn excluded(&self, path: &[&str]) -> bool {
        let mut excluded = false;
        for rule in &self.rules {
            if (1..=path.len()).any(|k| rule.pattern.matches(&path[..k])) {
                excluded = !rule.include;
            }
        }
        excluded
    }

    /// Whether some `!` rule may bring back a path below directory `dir`.
    fn may_include_below(&self, dir: &[&str]) -> bool {
        self.rules
            .iter()
            .any(|r| r.include && r.pattern.may_match_below(dir))
    }
}

/// A glob over '/'-separated paths, component by component as Go's
/// `filepath.Match`, where a `**` component spans any number of directories
/// (at least one when it ends the pattern).
#[derive(Debug, Clone)]
struct Pattern {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone)]
enum Segment {
    AnyDirs,
    Name(Vec<Token>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Char(char),
    Any,
    Star,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Token {
    fn matches_one(&self, c: char) -> bool {
        match self {
            Token::Char(x) => *x == c,
            Token::Any => true,
            Token::Star => false,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
            }
        }
    }
}

impl Pattern {
    fn compile(segs: &[String]) -> Result<Pattern, String> {
        if segs.is_empty() {
            return Err("empty pattern".to_owned());
        }
        let segments = segs
            .iter()
            .map(|s| {
                if s == "**" {
                    Ok(Segment::AnyDirs)
                } else {
                    compile_name(s).map(Segment::Name)
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Pattern { segments })
    }

    /// Whether the whole of `path` matches.
    fn matches(&self, path: &[&str]) -> bool {
        self.table(path, false)
    }

    /// Whether some path strictly below directory `dir` may match
    /// (conservative: true when unsure).
    fn may_match_below(&self, dir: &[&str]) -> bool {
        self.table(dir, true)
    }

    /// m[i][j]: segments[i..] matches path[j..] (dynamic programming, so
    /// many `**` stay polynomial). With `below`, path is a prefix of the
    /// path to match: running out of path with pattern left is a match.
    fn table(&self, path: &[&str], below: bool) -> bool {
        let (p, n) = (self.segments.len(), path.len());
        let mut m = vec![vec![false; n + 1]; p + 1];
        for i in (0..=p).rev() {
            for j in (0..=n).rev() {
                m[i][j] = if i == p {
                    j == n && !below
                } else if j == n && below {
                    true
                } else {
                    match &self.segments[i] {
                        Segment::AnyDirs if i + 1 == p => j < n,
                        Segment::AnyDirs => m[i + 1][j] || (j < n && m[i][j + 1]),
                        Segment::Name(t) => j < n && match_name(t, path[j]) && m[i + 1][j + 1],
                    }
                };
            }
        }
        m[0][0]
    }
}

/// The literal text of a name pattern without wildcards.
fn literal(tokens: &[Token]) -> Option<String> {
    tokens
        .iter()
        .map(|t| match t {
            Token::Char(c) => Some(*c),
            _ => None,
        })
        .collect()
}

fn compile_name(s: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => {
                if tokens.last() != Some(&Token::Star) {
                    tokens.push(Token::Star);
                }
            }
            '?' => tokens.push(Token::Any),
            '\\' => {
                let e = chars
                    .next()
                    .ok_or_else(|| format!("{s:?}: trailing backslash"))?;
                tokens.push(Token::Char(e));
            }
            '[' => {
                let negated = chars.next_if_eq(&'^').is_some();
                let mut ranges = Vec::new();
                loop {
                    if !ranges.is_empty() && chars.next_if_eq(&']').is_some() {
                        break;
                    }
                    let lo = class_char(&mut chars, s)?;
                    let hi = if chars.next_if_eq(&'-').is_some() {
                        class_char(&mut chars, s)?
                    } else {
                        lo
                    };
                    if hi < lo {
                        return Err(format!("{s:?}: bad range {lo}-{hi}"));
                    }
                    ranges.push((lo, hi));
                }
                tokens.push(Token::Class { negated, ranges });
            }
            c => tokens.push(Token::Char(c)),
        }
    }
    Ok(tokens)
}

/// One character of a `[...]` class, as Go's `getEsc`.
fn class_char(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    s: &str,
) -> Result<char, String> {
    match chars.next() {
        None => Err(format!("{s:?}: unterminated [")),
        Some('-') | Some(']') => Err(format!("{s:?}: bad character class")),
        Some('\\') => chars.next().ok_or_else(|| format!("{s:?}: unterminated [")),
        Some(c) => Ok(c),
    }
}

/// Matches one path component against a name pattern (`*` with one
/// backtracking point: linear in practice, quadratic at worst).
fn match_name(tokens: &[Token], name: &str) -> bool {
    let name: Vec<char> = name.chars().collect();
    let (mut t, mut n) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match tokens.get(t) {
            Some(Token::Star) => {
                star = Some((t, n));
                t += 1;
                continue;
            }
            Some(tok) if tok.matches_one(name[n]) => {
                t += 1;
                n += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((st, sn)) => {
                t = st + 1;
                n = sn + 1;
                star = Some((st, sn + 1));
            }
            None => return false,
        }
    }
    tokens.iter().skip(t).all(|tk| *tk == Token::Star)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::symlink;

    fn write(root: &Path, rel: &str, body: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, body).expect("write");
    }

    fn chmod(root: &Path, rel: &str, mode: u32) {
        fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn spec(sources: &[&str], dest: &str) -> CopySpec {
        CopySpec {
            sources: sources.iter().map(|s| s.to_string()).collect(),
            dest: dest.to_owned(),
            owner: (0, 0),
            chmod: None,
            extract_archives: false,
        }
    }

    fn paths(entries: &[Entry]) -> Vec<String> {
        entries.iter().map(|e| e.path.clone()).collect()
    }

    fn get<'a>(entries: &'a [Entry], path: &str) -> &'a Entry {
        entries
            .iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("no {path} in {:?}", paths(entries)))
    }

    /// A context with a few files; returns the tempdir.
    fn fixture() -> tempfile::TempDir {
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

    fn open(dir: &tempfile::TempDir) -> Context {
        Context::open(dir.path()).expect("open")
    }

    #[test]
    fn directory_source_copies_its_contents() {
        let dir = fixture();
        let e = open(&dir)
            .entries(&spec(&["app"], "/srv/"))
            .expect("entries");
        assert_eq!(
            paths(&e),
            ["srv/README.md", "srv/lib", "srv/lib/util.go", "srv/main.go"]
        );
        // The destination itself is left to the base (no entry).
        assert_eq!(get(&e, "srv/lib").mode, 0o700);
        assert_eq!(
            get(&e, "srv/main.go").kind,
            EntryKind::File(FileData::Path(open(&dir).root().join("app/main.go")))
        );
        // Without the trailing slash a directory source behaves the same.
        let e2 = open(&dir)
            .entries(&spec(&["app"], "/srv"))
            .expect("entries");
        assert_eq!(e, e2);
    }

    #[test]
    fn whole_context_into_root() {
        let dir = fixture();
        let e = open(&dir).entries(&spec(&["."], "/")).expect("entries");
        assert_eq!(
            paths(&e),
            [
                "app",
                "app/README.md",
                "app/lib",
                "app/lib/util.go",
                "app/main.go",
                "run.sh"
            ]
        );
    }

    #[test]
    fn file_is_renamed_to_dest() {
        let dir = fixture();
        let e = open(&dir)
            .entries(&spec(&["run.sh"], "/usr/local/bin/start"))
            .expect("entries");
        assert_eq!(paths(&e), ["usr/local/bin/start"]);
        let f = get(&e, "usr/local/bin/start");
        assert_eq!(f.mode, 0o750);
        // No parent entries: they would overwrite the base's (a symlinked
        // /bin, a 1777 /tmp, an owner).
    }

    #[test]
    fn copy_into_system_directories_writes_no_entry_for_them() {
        // Regression: entries for /bin, /tmp or /etc would replace a
        // symlinked /bin (usr-merge), the 1777 of /tmp, or the owner of /etc.
        let dir = fixture();
        let mut s = spec(&["run.sh"], "/bin/tool");
        s.owner = (1000, 1000);
        s.chmod = Some(0o644);
        let e = open(&dir).entries(&s).expect("entries");
        assert_eq!(paths(&e), ["bin/tool"]);
        let e = open(&dir)
            .entries(&spec(&["run.sh"], "/tmp/"))
            .expect("entries");
        assert_eq!(paths(&e), ["tmp/run.sh"]);
        let mut s = spec(&["app"], "/etc/");
        s.owner = (1000, 1000);
        let e = open(&dir).entries(&s).expect("entries");
        assert!(!paths(&e).contains(&"etc".to_owned()), "{:?}", paths(&e));
    }

    #[test]
    fn trailing_slash_keeps_the_basename() {
        let dir = fixture();
        let mut s = spec(&["/run.sh"], "/opt/app/");
        s.owner = (1000, 1001);
        s.chmod = Some(0o700);
        let e = open(&dir).entries(&s).expect("entries");
        assert_eq!(paths(&e), ["opt/app/run.sh"]);
        let f = get(&e, "opt/app/run.sh");
        assert_eq!((f.mode, f.uid, f.gid), (0o700, 1000, 1001));
    }

    #[test]
    fn owner_and_chmod_apply_to_copied_directories() {
        let dir = fixture();
        let mut s = spec(&["app"], "/srv/");
        s.owner = (5, 6);
        s.chmod = Some(0o640);
        let e = open(&dir).entries(&s).expect("entries");
        for entry in &e {
            assert_eq!(
                (entry.mode, entry.uid, entry.gid),
                (0o640, 5, 6),
                "{}",
                entry.path
            );
        }
    }

    #[test]
    fn globs_match_components() {
        let dir = fixture();
        let ctx = open(&dir);
        let e = ctx.entries(&spec(&["app/*.go"], "/x/")).expect("entries");
        assert_eq!(paths(&e), ["x/main.go"]);
        let e = ctx
            .entries(&spec(&["app/?ain.g[a-z]"], "/x/"))
            .expect("entries");
        assert_eq!(paths(&e), ["x/main.go"]);
        let e = ctx
            .entries(&spec(&["*.sh"], "/x"))
            .expect("one match renames");
        assert_eq!(paths(&e), ["x"]);
        // `*` does not cross '/'.
        let err = ctx.entries(&spec(&["*.go"], "/x/")).expect_err("no match");
        assert!(
            matches!(err, ContextError::NoSuchFile(ref s) if s == "*.go"),
            "{err}"
        );
    }

    #[test]
    fn double_star_spans_directories() {
        let dir = fixture();
        let e = open(&dir)
            .entries(&spec(&["**/*.go"], "/src/"))
            .expect("entries");
        assert_eq!(paths(&e), ["src/main.go", "src/util.go"]);
        let e = open(&dir)
            .entries(&spec(&["app/**/util.go"], "/src/"))
            .expect("entries");
        assert_eq!(paths(&e), ["src/util.go"]);
    }

    #[test]
    fn several_sources_need_a_directory_dest() {
        let dir = fixture();
        let ctx = open(&dir);
        let err = ctx
            .entries(&spec(&["run.sh", "app/main.go"], "/x"))
            .expect_err("not a dir");
        assert!(matches!(err, ContextError::NotADirectory(_)), "{err}");
        assert!(err
            .to_string()
            .contains("must be a directory and end with a /"));
        let err = ctx
            .entries(&spec(&["app/*.*"], "/x"))
            .expect_err("glob with two");
        assert!(matches!(err, ContextError::NotADirectory(_)), "{err}");
        let e = ctx
            .entries(&spec(&["run.sh", "app/main.go"], "/x/"))
            .expect("entries");
        assert_eq!(paths(&e), ["x/main.go", "x/run.sh"]);
    }

    #[test]
    fn later_source_wins() {
        let dir = fixture();
        write(dir.path(), "other/main.go", "other");
        let e = open(&dir)
            .entries(&spec(&["app", "other"], "/x/"))
            .expect("entries");
        let EntryKind::File(FileData::Path(p)) = &get(&e, "x/main.go").kind else {
            panic!("not a file");
        };
        assert!(p.ends_with("other/main.go"), "{}", p.display());
        assert_eq!(e.iter().filter(|x| x.path == "x/main.go").count(), 1);
    }

    #[test]
    fn file_replacing_a_directory_drops_its_contents() {
        let dir = fixture();
        write(dir.path(), "f/lib", "now a file");
        let e = open(&dir)
            .entries(&spec(&["app", "f"], "/x/"))
            .expect("entries");
        assert_eq!(paths(&e), ["x/README.md", "x/lib", "x/main.go"]);
    }

    #[test]
    fn no_match_is_an_error() {
        let dir = fixture();
        let err = open(&dir)
            .entries(&spec(&["missing.txt"], "/x"))
            .expect_err("missing");
        assert_eq!(
            err.to_string(),
            "COPY source missing.txt: no such file or directory in the context"
        );
    }

    #[test]
    fn dockerignore_hides_files() {
        let dir = fixture();
        write(
            dir.path(),
            ".dockerignore",
            "# comment\n\n  /app/README.md  \n*.sh\n",
        );
        let ctx = open(&dir);
        let e = ctx.entries(&spec(&["."], "/")).expect("entries");
        assert_eq!(
            paths(&e),
            [
                ".dockerignore",
                "app",
                "app/lib",
                "app/lib/util.go",
                "app/main.go"
            ]
        );
        let err = ctx.entries(&spec(&["run.sh"], "/x")).expect_err("ignored");
        assert!(matches!(err, ContextError::NoSuchFile(_)), "{err}");
        let err = ctx.entries(&spec(&["*.sh"], "/x")).expect_err("ignored");
        assert!(matches!(err, ContextError::NoSuchFile(_)), "{err}");
    }

    #[test]
    fn dockerignore_directory_excludes_below() {
        let dir = fixture();
        write(dir.path(), ".dockerignore", "app/lib\n");
        let ctx = open(&dir);
        let e = ctx.entries(&spec(&["app"], "/x/")).expect("entries");
        assert_eq!(paths(&e), ["x/README.md", "x/main.go"]);
        let err = ctx
            .entries(&spec(&["app/lib/util.go"], "/x"))
            .expect_err("ignored");
        assert!(matches!(err, ContextError::NoSuchFile(_)), "{err}");
        let err = ctx.entries(&spec(&["app/lib"], "/x")).expect_err("ignored");
        assert!(matches!(err, ContextError::NoSuchFile(_)), "{err}");
    }

    #[test]
    fn dockerignore_exclamation_includes_again() {
        let dir = fixture();
        write(dir.path(), "app/lib/other.go", "x");
        write(
            dir.path(),
            ".dockerignore",
            "app\n!app/lib/util.go\n**/*.md\n!app/README.md\n",
        );
        let ctx = open(&dir);
        let e = ctx.entries(&spec(&["."], "/")).expect("entries");
        assert_eq!(
            paths(&e),
            [
                ".dockerignore",
                "app",
                "app/README.md",
                "app/lib",
                "app/lib/util.go",
                "run.sh"
            ]
        );
        // The walked-into directories keep their own modes.
        assert_eq!(get(&e, "app/lib").mode, 0o700);
        // The excluded directory is visible as a source through what is
        // included again.
        let e = ctx.entries(&spec(&["app"], "/x/")).expect("entries");
        assert_eq!(paths(&e), ["x/README.md", "x/lib", "x/lib/util.go"]);
        // Last rule wins.
        write(dir.path(), ".dockerignore", "!run.sh\nrun.sh\n");
        let err = open(&dir)
            .entries(&spec(&["run.sh"], "/x"))
            .expect_err("ignored");
        assert!(matches!(err, ContextError::NoSuchFile(_)), "{err}");
    }

    #[test]
    fn dockerignore_double_star() {
        let dir = fixture();
        write(dir.path(), ".dockerignore", "**/*.go\n");
        let e = open(&dir).entries(&spec(&["."], "/")).expect("entries");
        assert_eq!(
            paths(&e),
            [".dockerignore", "app", "app/README.md", "app/lib", "run.sh"]
        );
    }

    #[test]
    fn bad_dockerignore_pattern() {
        let dir = fixture();
        write(dir.path(), ".dockerignore", "ok\n[z-a]\n");
        let err = Context::open(dir.path()).expect_err("bad");
        assert!(matches!(err, ContextError::Ignore { line: 2, .. }), "{err}");
        write(dir.path(), ".dockerignore", "!\n");
        assert!(Context::open(dir.path()).is_err());
    }

    #[test]
    fn dot_dot_escaping_the_root_is_refused() {
        let dir = fixture();
        let ctx = open(&dir);
        for src in ["../etc/passwd", "app/../../x", "/../x", "app/../.."] {
            let err = ctx.entries(&spec(&[src], "/x")).expect_err(src);
            assert!(matches!(err, ContextError::Escapes(_)), "{src}: {err}");
            assert!(err.to_string().contains("escapes the context"));
        }
        // Staying inside is fine.
        let e = ctx
            .entries(&spec(&["app/../run.sh"], "/x"))
            .expect("inside");
        assert_eq!(paths(&e), ["x"]);
    }

    #[test]
    fn symlinks_inside_are_copied_as_links() {
        let dir = fixture();
        symlink("lib/util.go", dir.path().join("app/link")).expect("symlink");
        let e = open(&dir).entries(&spec(&["app"], "/x/")).expect("entries");
        let l = get(&e, "x/link");
        assert_eq!(l.kind, EntryKind::Symlink("lib/util.go".to_owned()));
        assert_eq!(l.mode, 0o777);
    }

    #[test]
    fn absolute_symlink_is_refused() {
        let dir = fixture();
        symlink("/etc/passwd", dir.path().join("app/abs")).expect("symlink");
        let err = open(&dir)
            .entries(&spec(&["app"], "/x/"))
            .expect_err("absolute");
        assert!(matches!(err, ContextError::SymlinkEscapes { .. }), "{err}");
    }

    #[test]
    fn symlink_escaping_the_root_is_refused() {
        let dir = fixture();
        symlink("../../outside", dir.path().join("app/up")).expect("symlink");
        let err = open(&dir)
            .entries(&spec(&["app"], "/x/"))
            .expect_err("escapes");
        assert!(matches!(err, ContextError::SymlinkEscapes { .. }), "{err}");
    }

    #[test]
    fn source_symlink_is_followed_inside_only() {
        let dir = fixture();
        let outside = tempfile::tempdir().expect("tempdir");
        write(outside.path(), "secret", "s");
        symlink("run.sh", dir.path().join("alias")).expect("symlink");
        symlink(outside.path().join("secret"), dir.path().join("leak")).expect("symlink");
        let ctx = open(&dir);
        let e = ctx.entries(&spec(&["alias"], "/bin/")).expect("inside");
        assert_eq!(paths(&e), ["bin/alias"]);
        assert_eq!(get(&e, "bin/alias").mode, 0o750);
        let err = ctx.entries(&spec(&["leak"], "/x")).expect_err("outside");
        assert!(matches!(err, ContextError::Escapes(_)), "{err}");
    }

    #[test]
    fn symlinked_parent_outside_is_refused() {
        let dir = fixture();
        let outside = tempfile::tempdir().expect("tempdir");
        write(outside.path(), "secret", "s");
        symlink(outside.path(), dir.path().join("out")).expect("symlink");
        let ctx = open(&dir);
        for src in ["out/secret", "out", "out/*"] {
            let err = ctx.entries(&spec(&[src], "/x/")).expect_err(src);
            assert!(matches!(err, ContextError::Escapes(_)), "{src}: {err}");
        }
        // `**` does not follow the link, but names the path through it.
        let e = ctx.entries(&spec(&["**/secret"], "/x/"));
        assert!(matches!(e, Err(ContextError::Escapes(_))), "{e:?}");
        let e = ctx.entries(&spec(&["*/secret"], "/x/"));
        assert!(matches!(e, Err(ContextError::Escapes(_))), "{e:?}");
        // A glob over the other directories passes the link by.
        let e = ctx.entries(&spec(&["*/*.go"], "/x/")).expect("entries");
        assert_eq!(paths(&e), ["x/main.go"]);
    }

    #[test]
    fn special_files_are_refused() {
        let dir = fixture();
        let sock = dir.path().join("app/sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let err = open(&dir)
            .entries(&spec(&["app"], "/x/"))
            .expect_err("socket");
        assert!(
            matches!(err, ContextError::Unsupported { kind: "socket", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("sock"));
    }

    fn tar_gz(members: &[(&str, &[u8], u32)], gzip: bool) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data, mode) in members {
            let mut h = tar::Header::new_gnu();
            if path.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
            } else {
                h.set_size(data.len() as u64);
            }
            h.set_mode(*mode);
            b.append_data(&mut h, path, *data).expect("append");
        }
        let tar = b.into_inner().expect("tar");
        if !gzip {
            return tar;
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).expect("gz");
        gz.finish().expect("gz")
    }

    #[test]
    fn add_unpacks_gzip_tar() {
        let dir = fixture();
        let blob = tar_gz(
            &[
                ("./bin/", b"", 0o711),
                ("bin/tool", b"#!tool", 0o755),
                ("etc/conf", b"c", 0o600),
            ],
            true,
        );
        fs::write(dir.path().join("rootfs.tar.gz"), blob).expect("write");
        let mut s = spec(&["rootfs.tar.gz"], "/opt");
        s.extract_archives = true;
        s.owner = (7, 8);
        let e = open(&dir).entries(&s).expect("entries");
        assert_eq!(
            paths(&e),
            ["opt/bin", "opt/bin/tool", "opt/etc", "opt/etc/conf"]
        );
        assert_eq!(get(&e, "opt/bin").mode, 0o711);
        let tool = get(&e, "opt/bin/tool");
        assert_eq!(
            tool.kind,
            EntryKind::File(FileData::Bytes(b"#!tool".to_vec()))
        );
        assert_eq!((tool.mode, tool.uid, tool.gid), (0o755, 7, 8));
        assert_eq!(get(&e, "opt/etc/conf").mode, 0o600);
        // COPY copies it as is.
        s.extract_archives = false;
        let e = open(&dir).entries(&s).expect("entries");
        assert_eq!(paths(&e), ["opt"]);
    }

    #[test]
    fn add_unpacks_plain_tar_and_copies_other_files() {
        let dir = fixture();
        fs::write(
            dir.path().join("a.tar"),
            tar_gz(&[("f", b"x", 0o644)], false),
        )
        .expect("w");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"not a tar").expect("gz");
        fs::write(dir.path().join("notes.gz"), gz.finish().expect("gz")).expect("w");
        let mut s = spec(&["a.tar", "notes.gz", "run.sh"], "/d/");
        s.extract_archives = true;
        let e = open(&dir).entries(&s).expect("entries");
        assert_eq!(paths(&e), ["d/f", "d/notes.gz", "d/run.sh"]);
    }

    #[test]
    fn add_refuses_escaping_members_and_devices() {
        let dir = fixture();
        let ctx_with = |name: &str, blob: Vec<u8>| {
            fs::write(dir.path().join(name), blob).expect("write");
            let mut s = spec(&[name], "/d");
            s.extract_archives = true;
            open(&dir).entries(&s)
        };
        // `tar` refuses to write these names, so patch the header bytes.
        for (name, reason) in [
            (b"../../x".as_slice(), "escapes the destination"),
            (b"a/../../x", "escapes the destination"),
            (b"/etc/passwd", "absolute path"),
        ] {
            let mut blob = tar_gz(&[("placeholder", b"x", 0o644)], false);
            let mut h = tar::Header::from_byte_slice(&blob[..512]).clone();
            h.as_old_mut().name = [0; 100];
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            blob[..512].copy_from_slice(h.as_bytes());
            let err = ctx_with("bad.tar", blob).expect_err("refused");
            assert!(err.to_string().contains(reason), "{err}");
        }

        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Char);
        h.set_mode(0o666);
        h.set_size(0);
        b.append_data(&mut h, "dev/null", io::empty())
            .expect("append");
        let err = ctx_with("dev.tar", b.into_inner().expect("tar")).expect_err("device");
        assert!(err.to_string().contains("device"), "{err}");
    }

    #[test]
    fn add_limits_unpacked_size() {
        let dir = fixture();
        fs::write(
            dir.path().join("big.tar"),
            tar_gz(&[("f", &[0u8; 100], 0o644)], false),
        )
        .expect("write");
        let mut s = spec(&["big.tar"], "/d");
        s.extract_archives = true;
        let err = open(&dir).entries_limited(&s, 99).expect_err("too big");
        assert!(err.to_string().contains("more than 99 bytes"), "{err}");
        assert!(open(&dir).entries_limited(&s, 100).is_ok());
    }

    #[test]
    fn add_refuses_other_compressions() {
        let dir = fixture();
        let mut bz = b"BZh91AY&SY".to_vec();
        bz.extend_from_slice(&[0; 20]);
        fs::write(dir.path().join("a.tar.bz2"), bz).expect("write");
        fs::write(
            dir.path().join("a.tar.xz"),
            [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, 1, 2],
        )
        .expect("write");
        for (name, format) in [("a.tar.bz2", "bzip2"), ("a.tar.xz", "xz")] {
            let mut s = spec(&[name], "/d");
            s.extract_archives = true;
            let err = open(&dir).entries(&s).expect_err(name);
            assert!(
                matches!(err, ContextError::UnsupportedArchive { format: f, .. } if f == format),
                "{err}"
            );
            assert!(err
                .to_string()
                .contains("not supported by the native backend"));
        }
    }

    #[test]
    fn patterns_follow_filepath_match() {
        let m = |pat: &str, path: &str| {
            let segs = clean(pat).expect("clean");
            let p = Pattern::compile(&segs).expect("compile");
            let parts: Vec<&str> = path.split('/').collect();
            p.matches(&parts)
        };
        assert!(m("*", ".hidden"));
        assert!(m("a/*/c", "a/b/c"));
        assert!(!m("a/*", "a/b/c"));
        assert!(m("**/c", "c"));
        assert!(m("**/c", "a/b/c"));
        assert!(m("a/**/c", "a/c"));
        assert!(m("a/**", "a/b/c"));
        assert!(!m("a/**", "a"));
        assert!(m("[^a]b", "cb"));
        assert!(!m("[^a]b", "ab"));
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "x"));
        assert!(m("a*b*c", "aXbYbZc"));
        assert!(!m("a*b*c", "aXbYbZ"));
        for bad in ["[", "[]", "[a-", "a\\", "[z-a]"] {
            assert!(Pattern::compile(&[bad.to_owned()]).is_err(), "{bad}");
        }
        // Many `**` stay fast.
        let segs: Vec<String> = std::iter::repeat_n("**".to_owned(), 40).collect();
        let p = Pattern::compile(&segs).expect("compile");
        let long: Vec<&str> = std::iter::repeat_n("x", 200).collect();
        assert!(p.matches(&long));
    }
}
