//! The content hash of a context: what a watched local context is
//! versioned by (`io.rebased.context`).
//!
//! Every path `.dockerignore` leaves visible, sorted, with its kind, its
//! permission bits and its bytes (a symlink's target); times, owners and
//! inodes are not part of it, so touching a file or saving the same bytes
//! again gives the same hash.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::tar::Visible;
use super::{Context, ContextError};

impl Context {
    /// `sha256:` and the hex digest of the context's visible content.
    pub fn content_hash(&self) -> Result<String, ContextError> {
        let mut h = Sha256::new();
        self.visit(|path, kind, meta, full| {
            match kind {
                Visible::Dir => entry(&mut h, path, b'd', meta.permissions().mode()),
                Visible::Symlink(target) => {
                    entry(&mut h, path, b'l', 0);
                    h.update(target.to_string_lossy().as_bytes());
                    h.update([0]);
                }
                Visible::File => {
                    entry(&mut h, path, b'f', meta.permissions().mode());
                    file(&mut h, full)?;
                }
            }
            Ok(())
        })?;
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok(format!("sha256:{hex}"))
    }
}

fn entry(h: &mut Sha256, path: &[String], kind: u8, mode: u32) {
    h.update([kind]);
    h.update(path.join("/").as_bytes());
    h.update([0]);
    h.update((mode & 0o7777).to_be_bytes());
}

fn file(h: &mut Sha256, path: &Path) -> Result<(), ContextError> {
    let io = |source| ContextError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    h.update(len.to_be_bytes());
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(dir: &Path) -> String {
        Context::open(dir)
            .and_then(|c| c.content_hash())
            .expect("hash")
    }

    #[test]
    fn content_counts_and_times_and_ignored_paths_do_not() {
        let d = tempfile::tempdir().expect("tempdir");
        fs::write(d.path().join("a"), "one").expect("write");
        fs::create_dir(d.path().join("sub")).expect("mkdir");
        fs::write(d.path().join("sub/b"), "two").expect("write");
        fs::write(d.path().join(".dockerignore"), "*.log\nbuild\n").expect("write");
        let h0 = hash(d.path());
        // Same bytes saved again, a touch: the same.
        fs::write(d.path().join("a"), "one").expect("write");
        let f = fs::File::options()
            .append(true)
            .open(d.path().join("a"))
            .expect("open");
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(60))
            .expect("touch");
        assert_eq!(hash(d.path()), h0);
        // Ignored paths: the same.
        fs::write(d.path().join("x.log"), "noise").expect("write");
        fs::create_dir(d.path().join("build")).expect("mkdir");
        fs::write(d.path().join("build/out"), "noise").expect("write");
        assert_eq!(hash(d.path()), h0);
        // A byte, a mode, a new file, a rename: different.
        fs::write(d.path().join("sub/b"), "twO").expect("write");
        let h1 = hash(d.path());
        assert_ne!(h1, h0);
        fs::set_permissions(d.path().join("a"), fs::Permissions::from_mode(0o755)).expect("chmod");
        let h2 = hash(d.path());
        assert_ne!(h2, h1);
        fs::rename(d.path().join("sub/b"), d.path().join("sub/c")).expect("mv");
        assert_ne!(hash(d.path()), h2);
    }
}
