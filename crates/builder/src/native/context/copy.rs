//! One `COPY`/`ADD`: its sources expanded (globs, `.dockerignore`),
//! resolved inside the context, and turned into layer entries.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::archive::{sniff_archive, unpack};
use super::ignore::{literal, match_name, Pattern, Segment};
use super::{
    clean, clean_dest, file_kind, has_meta, join, rel_segments, Context, ContextError, CopySpec,
    Entry, EntryKind, FileData,
};

impl Context {
    pub(super) fn entries_limited(
        &self,
        spec: &CopySpec,
        limit: u64,
    ) -> Result<Vec<Entry>, ContextError> {
        let dest_segs = clean_dest(&spec.dest);
        let dest = dest_segs.join("/");
        let written_as_dir = dest.is_empty()
            || spec.dest.ends_with('/')
            || spec.dest.ends_with("/.")
            || spec.dest == ".";
        // An existing directory takes a file source by its name, as a
        // trailing '/' does.
        let dest_is_dir =
            written_as_dir || spec.existing.is_some_and(|e| e.dirs >= dest_segs.len());
        let mut sources = Vec::new();
        for source in &spec.sources {
            let found = self.expand(source)?;
            if found.is_empty() {
                return Err(ContextError::NoSuchFile(source.clone()));
            }
            sources.extend(found);
        }
        let several = sources.len() > 1;
        if several && !written_as_dir {
            return Err(ContextError::NotADirectory(spec.dest.clone()));
        }
        let dir_mode = spec.chmod.unwrap_or(0o755) & 0o7777;
        let mut out = Entries {
            map: BTreeMap::new(),
            dest: dest.clone(),
            owner: spec.owner,
            archive_owners: spec.archive_owners,
            dir_mode,
        };
        let mut unpacked = 0u64;
        // Whether the destination itself must be a directory (else only
        // its parent must).
        let mut into_dest = dest_is_dir;
        for source in sources {
            match source.kind {
                SourceKind::Dir => {
                    into_dest = true;
                    self.copy_dir(&mut out, &source, spec)?;
                }
                SourceKind::File { mode } => {
                    if spec.extract_archives {
                        if let Some(gzip) = sniff_archive(&source.real)? {
                            into_dest = true;
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
        if let Some(existing) = spec.existing {
            let upto = if into_dest {
                dest_segs.len()
            } else {
                dest_segs.len().saturating_sub(1)
            };
            for k in existing.dirs..upto {
                let path = dest_segs[..=k].join("/");
                out.map.entry(path.clone()).or_insert(Entry {
                    path,
                    kind: EntryKind::Dir,
                    mode: 0o755,
                    uid: spec.owner.0,
                    gid: spec.owner.1,
                });
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
pub(super) struct Entries {
    pub(super) map: BTreeMap<String, Entry>,
    /// The destination, relative to the image root ("" for the root).
    pub(super) dest: String,
    pub(super) owner: (u32, u32),
    /// Unpacked members keep the archive's owners.
    pub(super) archive_owners: bool,
    /// Mode of the destination and of directories created under it.
    dir_mode: u32,
}

impl Entries {
    /// Inserts `entry`, replacing an entry at the same path and whatever was
    /// below it if it is not a directory, and making its parents
    /// directories.
    pub(super) fn put(&mut self, entry: Entry) {
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
    /// ancestors are not made here: those the image lacks are added from
    /// [`CopySpec::existing`], and an entry for one it has would overwrite
    /// its mode, owner or symlink (`/bin -> usr/bin`, `/tmp` 1777).
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::Existing;
    use super::*;
    use std::os::unix::fs::symlink;

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
    fn missing_destination_directories_are_created_owned_by_the_chown_user() {
        let dir = fixture();
        let ctx = open(&dir);
        let with = |sources: &[&str], dest: &str, dirs: usize| {
            let mut s = spec(sources, dest);
            s.owner = (1000, 1001);
            s.chmod = Some(0o600);
            s.existing = Some(Existing { dirs });
            ctx.entries(&s).expect("entries")
        };
        let shape = |e: &[Entry]| -> Vec<(String, bool, u32, u32)> {
            e.iter()
                .map(|e| (e.path.clone(), e.kind == EntryKind::Dir, e.mode, e.uid))
                .collect()
        };
        // `COPY --chown=app a.txt /home/app/` over a base with /home only:
        // /home stays, /home/app is made 0755 (not the --chmod) for app.
        let e = with(&["run.sh"], "/home/app/", 1);
        assert_eq!(
            shape(&e),
            [
                ("home/app".to_owned(), true, 0o755, 1000),
                ("home/app/run.sh".to_owned(), false, 0o600, 1000),
            ]
        );
        assert_eq!(get(&e, "home/app").gid, 1001);
        // A file renamed to the destination: only its parents.
        let e = with(&["run.sh"], "/opt/tools/start", 0);
        assert_eq!(paths(&e), ["opt", "opt/tools", "opt/tools/start"]);
        // A directory source makes the destination itself.
        let e = with(&["app"], "/srv/app", 1);
        assert_eq!(get(&e, "srv/app").mode, 0o755);
        assert!(!paths(&e).contains(&"srv".to_owned()), "{:?}", paths(&e));
        // Everything there already: no entry above the copied files.
        let e = with(&["app"], "/srv/app", 2);
        assert!(!paths(&e).contains(&"srv/app".to_owned()));
        // An existing directory without a trailing '/' takes the file by
        // its name, as Docker does.
        let e = with(&["run.sh"], "/etc/app", 2);
        assert_eq!(paths(&e), ["etc/app/run.sh"]);
        // Several sources still need the '/'.
        let mut s = spec(&["run.sh", "app/main.go"], "/etc/app");
        s.existing = Some(Existing { dirs: 2 });
        assert!(matches!(
            ctx.entries(&s),
            Err(ContextError::NotADirectory(_))
        ));
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
}
