//! The context as a tar, as a Docker client sends it to `/build`: every
//! path `.dockerignore` leaves visible, in the walk the content hash
//! makes ([`Context::visit`]), plus files the caller adds (the pinned
//! Dockerfile).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::{Context, ContextError};

/// What [`Context::visit`] shows of one visible path.
pub(crate) enum Visible<'a> {
    /// A directory (its visible contents follow).
    Dir,
    /// A regular file.
    File,
    /// A symlink and its target.
    Symlink(&'a Path),
}

impl Context {
    /// Calls `f` with every visible path below the root (components),
    /// sorted, parents before children, its metadata and full path.
    pub(crate) fn visit(
        &self,
        mut f: impl FnMut(&[String], Visible<'_>, &fs::Metadata, &Path) -> Result<(), ContextError>,
    ) -> Result<(), ContextError> {
        let mut stack: Vec<Vec<String>> = vec![Vec::new()];
        while let Some(rel) = stack.pop() {
            let dir = rel.iter().fold(self.root.clone(), |p, s| p.join(s));
            let io = |source| ContextError::Io {
                path: dir.clone(),
                source,
            };
            let mut names: Vec<String> = fs::read_dir(&dir)
                .map_err(io)?
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            // Children are pushed in reverse so they pop in order.
            let mut subdirs = Vec::new();
            for name in names {
                let mut path = rel.clone();
                path.push(name);
                let segs: Vec<&str> = path.iter().map(String::as_str).collect();
                let excluded = self.ignore.excluded(&segs);
                let full = path.iter().fold(self.root.clone(), |p, s| p.join(s));
                let meta = fs::symlink_metadata(&full).map_err(|source| ContextError::Io {
                    path: full.clone(),
                    source,
                })?;
                if meta.is_dir() {
                    // An excluded directory may still hold re-included paths.
                    if !excluded || self.ignore.has_exceptions() {
                        if !excluded {
                            f(&path, Visible::Dir, &meta, &full)?;
                        }
                        subdirs.push(path);
                    }
                    continue;
                }
                if excluded {
                    continue;
                }
                if meta.file_type().is_symlink() {
                    let target = fs::read_link(&full).map_err(|source| ContextError::Io {
                        path: full.clone(),
                        source,
                    })?;
                    f(&path, Visible::Symlink(&target), &meta, &full)?;
                } else if meta.is_file() {
                    f(&path, Visible::File, &meta, &full)?;
                }
            }
            stack.extend(subdirs.into_iter().rev());
        }
        Ok(())
    }

    /// Writes the visible context as a tar to `out`, then each of `extra`
    /// (path, contents; mode 0644) after it. Owners are 0, times kept.
    pub fn write_tar(&self, out: impl Write, extra: &[(&str, &[u8])]) -> Result<(), ContextError> {
        let mut tar = tar::Builder::new(out);
        tar.follow_symlinks(false);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| ContextError::Io { path, source }
        };
        self.visit(|rel, kind, meta, full| {
            let name = rel.join("/");
            let mut h = tar::Header::new_gnu();
            h.set_mode(meta.permissions().mode() & 0o7777);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(meta.mtime().max(0).unsigned_abs());
            match kind {
                Visible::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    tar.append_data(&mut h, format!("{name}/"), std::io::empty())
                        .map_err(io(full))
                }
                Visible::Symlink(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    tar.append_link(&mut h, &name, target).map_err(io(full))
                }
                Visible::File => {
                    let file = fs::File::open(full).map_err(io(full))?;
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(meta.len());
                    tar.append_data(&mut h, &name, file).map_err(io(full))
                }
            }
        })?;
        for (name, data) in extra {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, name, *data)
                .map_err(io(Path::new(name)))?;
        }
        tar.into_inner()
            .map_err(io(&self.root))?
            .flush()
            .map_err(io(&self.root))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tar_holds_what_dockerignore_leaves_and_the_extra_files() {
        let d = tempfile::tempdir().expect("tempdir");
        fs::write(
            d.path().join(".dockerignore"),
            "secret\nlogs/\n!logs/keep\n",
        )
        .expect("write");
        fs::write(d.path().join("a"), "one").expect("write");
        fs::write(d.path().join("secret"), "no").expect("write");
        fs::create_dir_all(d.path().join("logs")).expect("mkdir");
        fs::write(d.path().join("logs/x"), "no").expect("write");
        fs::write(d.path().join("logs/keep"), "yes").expect("write");
        std::os::unix::fs::symlink("a", d.path().join("link")).expect("symlink");
        let ctx = Context::open(d.path()).expect("open");
        let mut buf = Vec::new();
        ctx.write_tar(&mut buf, &[(".rebased.Dockerfile", b"FROM b@sha256:x\n")])
            .expect("tar");
        let mut names = Vec::new();
        for e in tar::Archive::new(buf.as_slice())
            .entries()
            .expect("entries")
        {
            let mut e = e.expect("entry");
            let name = e.path().expect("path").display().to_string();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut e, &mut text).expect("read");
            names.push((name, text));
        }
        let got: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            got,
            [
                ".dockerignore",
                "a",
                "link",
                "logs/keep",
                ".rebased.Dockerfile"
            ]
        );
        assert_eq!(names[1].1, "one");
        assert_eq!(names[4].1, "FROM b@sha256:x\n");
    }
}
