//! The file system an image has so far, without its contents: the base's
//! layers' file lists merged as a runtime unpacks them (whiteouts and
//! opaque directories applied), then each native layer as it is made.
//!
//! The native backend needs it for what Docker decides from the image's
//! file system: which directories `WORKDIR` and `COPY` must create (and
//! which they must leave alone, so a base's `/bin -> usr/bin`, a 1777
//! `/tmp` or the owner of `/etc` stays), where a destination really is
//! when it passes through a symlink, and whether a destination without a
//! trailing `/` is an existing directory.
//!
//! Paths are relative to the image root, '/'-separated, without a leading
//! `/` (`usr/bin`); the root itself is always a directory.

use std::collections::BTreeMap;
use std::io::{self, Read};

use serde::{Deserialize, Serialize};

use super::context::{clean, Entry, EntryKind};
use super::layer::{open_layer, Budget, ReadError};

/// The most entries a tree (and one layer's list) holds.
pub const MAX_NODES: usize = 500_000;

/// The most symlinks followed resolving one path (Linux's `MAXSYMLINKS`
/// is 40; continuity, which BuildKit uses, allows 255).
const MAX_HOPS: usize = 255;

/// What a path is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A symbolic link and its target.
    Symlink(String),
    /// A regular file, hard link, device or FIFO.
    Other,
}

/// One path of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// What it is.
    pub kind: Kind,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// What one layer changes, read from its tar: the paths it deletes from
/// the layers below and the entries it holds, in the tar's order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    /// Directories whose lower contents are hidden (`.wh..wh..opq`).
    pub opaque: Vec<String>,
    /// Paths deleted with what is below them (`.wh.NAME`).
    pub deleted: Vec<String>,
    /// The layer's own entries.
    pub entries: Vec<(String, Node)>,
}

/// Why a layer cannot be read or a path cannot be resolved.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The layer blob cannot be read.
    #[error(transparent)]
    Unreadable(#[from] ReadError),
    /// More entries than [`MAX_NODES`].
    #[error("the image has more than {MAX_NODES} files")]
    TooMany,
    /// A path goes through something that is not a directory.
    #[error("/{path} is not a directory in the image")]
    NotADirectory {
        /// The part that is not a directory.
        path: String,
    },
    /// Too many symlinks on the way.
    #[error("/{path}: more than {MAX_HOPS} symlinks on the way")]
    Loop {
        /// The path being resolved.
        path: String,
    },
}

/// A path resolved in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Its components with every symlink followed (the part that does not
    /// exist is taken as written).
    pub segs: Vec<String>,
    /// How many leading components are directories of the image; all of
    /// them when the whole path is a directory.
    pub dirs: usize,
    /// The whole path exists (as anything).
    pub exists: bool,
}

impl Resolved {
    /// The resolved path, relative to the root (`""` for the root).
    pub fn path(&self) -> String {
        self.segs.join("/")
    }

    /// The whole path is a directory of the image.
    pub fn is_dir(&self) -> bool {
        self.dirs == self.segs.len()
    }
}

/// The merged file system.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    /// How many paths the tree holds.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether it holds nothing but the root.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// What is at `path` (not following a final symlink).
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    fn is_dir(&self, path: &str) -> bool {
        path.is_empty() || self.nodes.get(path).is_some_and(|n| n.kind == Kind::Dir)
    }

    /// Applies a layer on top: its whiteouts delete from what is below,
    /// then its entries are added (a parent that passes through a symlink
    /// is followed, as runtimes unpack; a missing parent becomes a
    /// directory, 0755 root).
    pub fn apply(&mut self, changes: &Changes) -> Result<(), TreeError> {
        for dir in &changes.opaque {
            self.remove_below(dir);
        }
        for path in &changes.deleted {
            self.nodes.remove(path);
            self.remove_below(path);
        }
        for (path, node) in &changes.entries {
            let segs: Vec<String> = path.split('/').map(str::to_owned).collect();
            let Some((name, parent)) = segs.split_last() else {
                continue;
            };
            let parent = self.resolve_segs(parent.to_vec(), path)?;
            let mut full = parent.segs.clone();
            full.push(name.clone());
            self.ensure_parents(&full);
            self.put(full.join("/"), node.clone())?;
        }
        Ok(())
    }

    /// Adds the entries of a native layer (paths already resolved).
    pub fn add(&mut self, entries: &[Entry]) -> Result<(), TreeError> {
        for e in entries {
            let kind = match &e.kind {
                EntryKind::Dir => Kind::Dir,
                EntryKind::Symlink(t) => Kind::Symlink(t.clone()),
                EntryKind::File(_) => Kind::Other,
            };
            let segs: Vec<String> = e.path.split('/').map(str::to_owned).collect();
            self.ensure_parents(&segs);
            self.put(
                e.path.clone(),
                Node {
                    kind,
                    mode: e.mode,
                    uid: e.uid,
                    gid: e.gid,
                },
            )?;
        }
        Ok(())
    }

    fn put(&mut self, path: String, node: Node) -> Result<(), TreeError> {
        if node.kind != Kind::Dir {
            self.remove_below(&path);
        }
        self.nodes.insert(path, node);
        if self.nodes.len() > MAX_NODES {
            return Err(TreeError::TooMany);
        }
        Ok(())
    }

    /// Implicit parents of an entry: directories, 0755 root, as a runtime
    /// creates them.
    fn ensure_parents(&mut self, segs: &[String]) {
        for k in 1..segs.len() {
            let p = segs[..k].join("/");
            self.nodes.entry(p).or_insert(Node {
                kind: Kind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
            });
        }
    }

    fn remove_below(&mut self, dir: &str) {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let below: Vec<String> = self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in below {
            self.nodes.remove(&k);
        }
    }

    /// Resolves `path` (absolute, or relative to the root) as a chroot
    /// would: every symlink followed, an absolute target from the root,
    /// `..` never above it. Going through something that is not a
    /// directory is an error.
    pub fn resolve(&self, path: &str) -> Result<Resolved, TreeError> {
        let segs = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .map(str::to_owned)
            .collect();
        self.resolve_segs(segs, path)
    }

    fn resolve_segs(&self, segs: Vec<String>, shown: &str) -> Result<Resolved, TreeError> {
        let mut pending: std::collections::VecDeque<String> = segs.into();
        let mut out: Vec<String> = Vec::new();
        let mut hops = 0;
        // Once a component is missing, nothing below it exists either.
        let mut missing = false;
        while let Some(c) = pending.pop_front() {
            match c.as_str() {
                "" | "." => continue,
                ".." => {
                    out.pop();
                    missing = !self.is_dir(&out.join("/"));
                    continue;
                }
                _ => {}
            }
            out.push(c);
            if missing {
                continue;
            }
            let here = out.join("/");
            match self.nodes.get(&here).map(|n| &n.kind) {
                None => missing = true,
                Some(Kind::Dir) => {}
                Some(Kind::Symlink(target)) => {
                    hops += 1;
                    if hops > MAX_HOPS {
                        return Err(TreeError::Loop {
                            path: shown.trim_start_matches('/').to_owned(),
                        });
                    }
                    out.pop();
                    if target.starts_with('/') {
                        out.clear();
                    }
                    for t in target.split('/').rev() {
                        pending.push_front(t.to_owned());
                    }
                }
                Some(Kind::Other) => {
                    if pending.iter().any(|p| !p.is_empty() && p != ".") {
                        return Err(TreeError::NotADirectory { path: here });
                    }
                }
            }
        }
        let mut dirs = 0;
        while dirs < out.len() && self.is_dir(&out[..=dirs].join("/")) {
            dirs += 1;
        }
        let exists = out.is_empty() || self.nodes.contains_key(&out.join("/"));
        Ok(Resolved {
            segs: out,
            dirs,
            exists,
        })
    }
}

/// Reads what a layer blob (gzip-compressed or plain tar) changes,
/// decompressing at most `limit` bytes and listing at most [`MAX_NODES`]
/// entries. File contents are skipped, not kept.
pub fn read_layer(blob: &[u8], limit: u64) -> Result<Changes, TreeError> {
    let budget = Budget::new(limit);
    let reader = open_layer(blob, &budget)?;
    Ok(budget.check(list(reader))?)
}

fn list<R: Read>(reader: R) -> io::Result<Changes> {
    let mut changes = Changes::default();
    let mut archive = tar::Archive::new(reader);
    for member in archive.entries()? {
        let member = member?;
        let raw = member.path_bytes();
        let Some(mut segs) = clean(&String::from_utf8_lossy(&raw)) else {
            continue;
        };
        let Some(name) = segs.pop() else {
            continue;
        };
        let parent = segs.join("/");
        let at = |n: &str| {
            if parent.is_empty() {
                n.to_owned()
            } else {
                format!("{parent}/{n}")
            }
        };
        if name == ".wh..wh..opq" {
            changes.opaque.push(parent);
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            changes.deleted.push(at(hidden));
            continue;
        }
        let h = member.header();
        let kind = match h.entry_type() {
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => Kind::Symlink(
                member
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default(),
            ),
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => continue,
            _ => Kind::Other,
        };
        let id = |v: io::Result<u64>| v.ok().and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
        changes.entries.push((
            at(&name),
            Node {
                kind,
                mode: h.mode().unwrap_or(0) & 0o7777,
                uid: id(h.uid()),
                gid: id(h.gid()),
            },
        ));
        if changes.entries.len() > MAX_NODES {
            return Err(io::Error::other(format!(
                "more than {MAX_NODES} entries in one layer"
            )));
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::context::FileData;

    fn node(kind: Kind, mode: u32, uid: u32) -> Node {
        Node {
            kind,
            mode,
            uid,
            gid: uid,
        }
    }

    /// A tar of (path, kind, mode, uid).
    fn tar_of(members: &[(&str, Kind, u32, u32)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, mode, uid) in members {
            let mut h = tar::Header::new_gnu();
            h.set_mode(*mode);
            h.set_uid(u64::from(*uid));
            h.set_gid(u64::from(*uid));
            h.set_size(0);
            match kind {
                Kind::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    b.append_data(&mut h, path, io::empty()).expect("dir");
                }
                Kind::Symlink(t) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    b.append_link(&mut h, path, t).expect("link");
                }
                Kind::Other => {
                    h.set_entry_type(tar::EntryType::Regular);
                    b.append_data(&mut h, path, io::empty()).expect("file");
                }
            }
        }
        b.into_inner().expect("tar")
    }

    fn usr_merged() -> Tree {
        let mut t = Tree::default();
        let base = tar_of(&[
            ("usr/", Kind::Dir, 0o755, 0),
            ("usr/bin/", Kind::Dir, 0o755, 0),
            ("usr/bin/sh", Kind::Other, 0o755, 0),
            ("bin", Kind::Symlink("usr/bin".into()), 0o777, 0),
            ("tmp/", Kind::Dir, 0o1777, 0),
            ("etc/", Kind::Dir, 0o755, 7),
            ("etc/passwd", Kind::Other, 0o644, 0),
            ("home/", Kind::Dir, 0o755, 0),
            ("abs", Kind::Symlink("/usr/bin".into()), 0o777, 0),
            ("loop", Kind::Symlink("loop".into()), 0o777, 0),
        ]);
        t.apply(&read_layer(&base, 1 << 20).expect("read"))
            .expect("apply");
        t
    }

    #[test]
    fn symlinks_are_followed_inside_the_root() {
        let t = usr_merged();
        let r = t.resolve("/bin/tool").expect("resolve");
        assert_eq!(r.path(), "usr/bin/tool");
        assert_eq!((r.dirs, r.exists), (2, false));
        let r = t.resolve("/abs/../../../etc").expect("resolve");
        assert_eq!(r.path(), "etc");
        assert!(r.is_dir());
        let r = t.resolve("/bin").expect("resolve");
        assert!(r.is_dir() && r.exists);
        let r = t.resolve("/").expect("root");
        assert!(r.is_dir() && r.exists && r.segs.is_empty());
        let r = t.resolve("/home/app/work").expect("resolve");
        assert_eq!((r.path().as_str(), r.dirs), ("home/app/work", 1));
        assert!(matches!(
            t.resolve("/etc/passwd/x"),
            Err(TreeError::NotADirectory { ref path }) if path == "etc/passwd"
        ));
        assert!(matches!(t.resolve("/loop/x"), Err(TreeError::Loop { .. })));
        let r = t.resolve("/etc/passwd").expect("a file at the end");
        assert_eq!((r.dirs, r.exists), (1, true));
    }

    #[test]
    fn whiteouts_and_opaque_directories_hide_what_is_below() {
        let mut t = usr_merged();
        let upper = tar_of(&[
            ("etc/.wh..wh..opq", Kind::Other, 0, 0),
            ("etc/hosts", Kind::Other, 0o644, 0),
            (".wh.home", Kind::Other, 0, 0),
            ("bin/tool", Kind::Other, 0o700, 0),
            ("tmp", Kind::Other, 0o644, 0),
        ]);
        let changes = read_layer(&upper, 1 << 20).expect("read");
        assert_eq!(changes.opaque, ["etc"]);
        assert_eq!(changes.deleted, ["home"]);
        t.apply(&changes).expect("apply");
        assert!(t.get("etc/passwd").is_none());
        assert!(t.get("etc/hosts").is_some());
        assert_eq!(t.get("etc").map(|n| n.uid), Some(7), "the dir itself stays");
        assert!(t.get("home").is_none());
        // An entry through a symlinked parent lands where it points.
        assert_eq!(t.get("usr/bin/tool").map(|n| n.mode), Some(0o700));
        assert!(t.get("bin/tool").is_none());
        assert!(t.get("usr/bin/sh").is_some());
        // A file replaces a directory.
        assert_eq!(t.get("tmp").map(|n| n.kind.clone()), Some(Kind::Other));
    }

    #[test]
    fn a_file_over_a_directory_drops_its_contents_and_parents_are_implied() {
        let mut t = Tree::default();
        let l = tar_of(&[("a/b/c", Kind::Other, 0o600, 5)]);
        t.apply(&read_layer(&l, 1 << 20).expect("read"))
            .expect("apply");
        assert_eq!(
            t.get("a").map(|n| (&n.kind, n.mode)),
            Some((&Kind::Dir, 0o755))
        );
        let l = tar_of(&[("a/b", Kind::Other, 0o644, 0)]);
        t.apply(&read_layer(&l, 1 << 20).expect("read"))
            .expect("apply");
        assert!(t.get("a/b/c").is_none());
        t.add(&[Entry {
            path: "x/y".into(),
            kind: EntryKind::File(FileData::Bytes(Vec::new())),
            mode: 0o644,
            uid: 1,
            gid: 1,
        }])
        .expect("add");
        assert_eq!(t.get("x").map(|n| n.kind.clone()), Some(Kind::Dir));
        assert_eq!(t.get("x/y"), Some(&node(Kind::Other, 0o644, 1)));
    }

    #[test]
    fn layers_are_read_within_their_limits() {
        let l = tar_of(&[("f", Kind::Other, 0o644, 0)]);
        assert!(matches!(
            read_layer(&l, 100),
            Err(TreeError::Unreadable(ReadError::TooBig { limit: 100 }))
        ));
        assert!(matches!(
            read_layer(&[0x28, 0xb5, 0x2f, 0xfd, 0], 1 << 20),
            Err(TreeError::Unreadable(ReadError::Unsupported("zstd")))
        ));
        for garbage in [&[0xffu8; 1024][..], &[0x1f, 0x8b, 8, 0][..]] {
            assert!(read_layer(garbage, 1 << 20).is_err());
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        io::Write::write_all(&mut gz, &l).expect("gz");
        let changes = read_layer(&gz.finish().expect("gz"), 1 << 20).expect("gzip");
        assert_eq!(changes.entries.len(), 1);
    }
}
