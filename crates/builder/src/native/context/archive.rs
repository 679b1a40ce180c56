//! The local archives `ADD` unpacks: plain and gzip tars, sniffed by
//! content; other compressions refused.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use flate2::read::GzDecoder;

use super::copy::Entries;
use super::{clean, join, ContextError, Entry, EntryKind, FileData};

/// The most an `ADD` may unpack from one context's archives in total.
pub(super) const MAX_UNPACKED: u64 = 8 << 30;

/// Whether a file is an archive `ADD` unpacks: `Some(true)` for gzip,
/// `Some(false)` for a plain tar.
pub(super) fn sniff_archive(path: &Path) -> Result<Option<bool>, ContextError> {
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
/// archive's modes, and its owners (`out.archive_owners`) or `out.owner`.
pub(super) fn unpack(
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
        let (uid, gid) = if out.archive_owners {
            let id = |v: std::io::Result<u64>| {
                v.ok()
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(|| fail(format!("member {raw:?}: owner out of range")))
            };
            (id(header.uid())?, id(header.gid())?)
        } else {
            out.owner
        };
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use std::fs;
    use std::io::{self, Write};

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
    fn add_without_chown_keeps_the_archive_owners() {
        let dir = fixture();
        let mut b = tar::Builder::new(Vec::new());
        for (path, uid) in [("bin/", 1234u64), ("bin/tool", 1234), ("conf", 0)] {
            let mut h = tar::Header::new_gnu();
            if path.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
            }
            h.set_size(0);
            h.set_mode(0o755);
            h.set_uid(uid);
            h.set_gid(uid + 1);
            b.append_data(&mut h, path, io::empty()).expect("append");
        }
        fs::write(dir.path().join("o.tar"), b.into_inner().expect("tar")).expect("write");
        let mut s = spec(&["o.tar"], "/opt/");
        s.extract_archives = true;
        s.archive_owners = true;
        s.owner = (7, 8);
        let e = open(&dir).entries(&s).expect("entries");
        let owners: Vec<(String, u32, u32)> =
            e.iter().map(|e| (e.path.clone(), e.uid, e.gid)).collect();
        assert_eq!(
            owners,
            [
                ("opt/bin".to_owned(), 1234, 1235),
                ("opt/bin/tool".to_owned(), 1234, 1235),
                ("opt/conf".to_owned(), 0, 1),
            ]
        );
        // With --chown the owner wins.
        s.archive_owners = false;
        let e = open(&dir).entries(&s).expect("entries");
        assert!(e.iter().all(|e| (e.uid, e.gid) == (7, 8)), "{e:?}");
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
}
