//! `--chown` by name: resolving users and groups against the base's
//! `/etc/passwd` and `/etc/group`.
//!
//! The rules are BuildKit's: `user`, `user:group`, `uid`, `uid:gid`, names
//! and numbers mixed. A named user without a group takes its primary group
//! from `/etc/passwd`; a numeric user without a group gets the same number as
//! its gid (numbers are never looked up).

/// Resolves a `--chown` value against the contents of the base's
/// `/etc/passwd` and `/etc/group` (`None` when the base has no such file).
///
/// Malformed lines in either file are skipped; the first line naming a user
/// or group wins. Unknown names are an error naming the name and the file.
pub fn resolve_chown(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<(u32, u32), String> {
    let (user, grp) = split(spec);
    if user.is_empty() {
        return Err(format!("invalid --chown value {spec:?}: no user"));
    }
    if grp == Some("") {
        return Err(format!("invalid --chown value {spec:?}: empty group"));
    }
    let (uid, primary_gid) = if is_numeric(user) {
        let uid = number(user)?;
        (uid, uid)
    } else {
        let text = passwd
            .ok_or_else(|| format!("unknown user {user:?}: the base image has no /etc/passwd"))?;
        lookup_user(text, user)
            .ok_or_else(|| format!("unknown user {user:?}: not in /etc/passwd"))?
    };
    let gid = match grp {
        None => primary_gid,
        Some(g) if is_numeric(g) => number(g)?,
        Some(g) => {
            let text = group
                .ok_or_else(|| format!("unknown group {g:?}: the base image has no /etc/group"))?;
            lookup_group(text, g)
                .ok_or_else(|| format!("unknown group {g:?}: not in /etc/group"))?
        }
    };
    Ok((uid, gid))
}

/// True when resolving `spec` needs the base's files (a non-numeric user or
/// group).
pub fn needs_lookup(spec: &str) -> bool {
    let (user, grp) = split(spec);
    let named = |s: &str| !s.is_empty() && !is_numeric(s);
    named(user) || grp.is_some_and(named)
}

fn split(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    }
}

/// Only ASCII digits: `u32::from_str` would also take a leading `+`.
fn is_numeric(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn number(s: &str) -> Result<u32, String> {
    s.parse::<u32>()
        .map_err(|_| format!("id {s} is out of range (at most {})", u32::MAX))
}

/// `name:password:uid:gid:gecos:home:shell` -> (uid, gid).
fn lookup_user(text: &str, name: &str) -> Option<(u32, u32)> {
    records(text).find_map(|fields| {
        if fields.first() != Some(&name) {
            return None;
        }
        let uid = parse_id(fields.get(2)?)?;
        let gid = parse_id(fields.get(3)?)?;
        Some((uid, gid))
    })
}

/// `name:password:gid:members` -> gid.
fn lookup_group(text: &str, name: &str) -> Option<u32> {
    records(text).find_map(|fields| {
        if fields.first() != Some(&name) {
            return None;
        }
        parse_id(fields.get(2)?)
    })
}

/// The lines of a passwd-style file, split on ':', without comments, blank
/// lines and lines whose id fields are unusable (checked by the caller).
fn records(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 3)
}

fn parse_id(s: &str) -> Option<u32> {
    if is_numeric(s) {
        s.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
# comment
root:x:0:0:root:/root:/bin/sh

broken line
half:x:12
badid:x:abc:5:::
app:x:1000:1001:App:/home/app:/bin/sh
app:x:2000:2000:shadowed duplicate:/:/bin/false
nogroupfield:x:7
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
";
    const GROUP: &str = "\
root:x:0:
bad:x:notanumber:
staff:x:50:app,www-data
app:x:1001:
";

    fn resolve(spec: &str) -> Result<(u32, u32), String> {
        resolve_chown(spec, Some(PASSWD), Some(GROUP))
    }

    #[test]
    fn numeric_user_alone_uses_uid_as_gid() {
        assert_eq!(resolve("1234"), Ok((1234, 1234)));
        assert_eq!(resolve_chown("0", None, None), Ok((0, 0)));
    }

    #[test]
    fn numeric_user_and_group() {
        assert_eq!(resolve_chown("10:20", None, None), Ok((10, 20)));
    }

    #[test]
    fn named_user_takes_primary_group() {
        assert_eq!(resolve("app"), Ok((1000, 1001)));
        assert_eq!(resolve("www-data"), Ok((33, 33)));
    }

    #[test]
    fn first_entry_wins() {
        assert_eq!(resolve("app"), Ok((1000, 1001)));
    }

    #[test]
    fn named_user_and_group() {
        assert_eq!(resolve("app:staff"), Ok((1000, 50)));
    }

    #[test]
    fn mixed_names_and_numbers() {
        assert_eq!(resolve("app:7"), Ok((1000, 7)));
        assert_eq!(resolve("5:staff"), Ok((5, 50)));
    }

    #[test]
    fn malformed_lines_are_skipped() {
        for name in ["broken line", "half", "badid", "nogroupfield"] {
            let err = resolve(name).expect_err(name);
            assert!(err.contains("not in /etc/passwd"), "{err}");
        }
        let err = resolve("0:bad").expect_err("bad group");
        assert!(err.contains("not in /etc/group"), "{err}");
    }

    #[test]
    fn unknown_names_name_the_file() {
        let err = resolve("nobody").expect_err("unknown");
        assert!(
            err.contains("\"nobody\"") && err.contains("/etc/passwd"),
            "{err}"
        );
        let err = resolve("app:wheel").expect_err("unknown");
        assert!(
            err.contains("\"wheel\"") && err.contains("/etc/group"),
            "{err}"
        );
    }

    #[test]
    fn missing_files() {
        let err = resolve_chown("app", None, Some(GROUP)).expect_err("no passwd");
        assert!(err.contains("no /etc/passwd"), "{err}");
        let err = resolve_chown("app:staff", Some(PASSWD), None).expect_err("no group");
        assert!(err.contains("no /etc/group"), "{err}");
        // numbers need neither file
        assert_eq!(resolve_chown("1:2", None, None), Ok((1, 2)));
    }

    #[test]
    fn malformed_specs() {
        for bad in [
            "",
            ":",
            ":5",
            "5:",
            "app:",
            "+5",
            "-1",
            "99999999999",
            "1:4294967296",
        ] {
            assert!(resolve(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(resolve("4294967295"), Ok((u32::MAX, u32::MAX)));
    }

    #[test]
    fn lookup_needed_only_for_names() {
        assert!(!needs_lookup("0"));
        assert!(!needs_lookup("10:20"));
        assert!(needs_lookup("app"));
        assert!(needs_lookup("10:staff"));
        assert!(needs_lookup("app:10"));
        assert!(!needs_lookup(""));
        assert!(!needs_lookup(":"));
    }

    #[test]
    fn no_panics_on_tricky_input() {
        let specs = [
            "",
            ":",
            "::",
            "a:b:c",
            "é",
            "ü:ö",
            "\0",
            "0:\0",
            " ",
            " 0",
            "0 ",
            "\n",
            "a\nb",
            "root:x:0:0",
            "18446744073709551616",
            "0x10",
            "1e3",
            "٣",
            "-",
            "+",
            "a:",
        ];
        let files = [
            "",
            ":",
            "::::",
            "\n\n",
            "a",
            "a:",
            "a:b",
            "a:b:",
            "a:b::",
            "é:x:1:2",
            "root:x:0:0\r\n",
            "\0:\0:\0:\0",
            "a:x:99999999999:1",
            "a:x:1:99999999999",
            ":x:0:0",
        ];
        for spec in specs {
            let _ = needs_lookup(spec);
            for p in files {
                for g in files {
                    let _ = resolve_chown(spec, Some(p), Some(g));
                }
                let _ = resolve_chown(spec, Some(p), None);
                let _ = resolve_chown(spec, None, Some(p));
            }
        }
        // A CRLF file still resolves.
        assert_eq!(
            resolve_chown("root", Some("root:x:0:0\r\n"), None),
            Ok((0, 0))
        );
    }
}
