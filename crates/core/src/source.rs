//! Build contexts: a local directory or a git repository at a ref.
//!
//! A `context` is git when it is `user@host:path` (scp-like), a `git://`,
//! `ssh://` or `file://` URL, or an `http(s)://` URL whose path ends in
//! `.git`; each is optionally followed by Docker's `#REF:DIR` (branch, tag
//! or full commit, default the remote's HEAD; a directory inside the
//! repository, default its root). Anything else is a local directory.
//! Credentials never sit in the URL: a password there is refused with a
//! pointer to `[sources."HOST"].password_file`.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// An image's build context.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Context {
    /// A directory on this machine.
    Local(PathBuf),
    /// A git repository at a ref.
    Git(GitContext),
}

/// A git context: `URL#REF:DIR`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GitContext {
    /// The repository's URL as written (never holding a password).
    pub url: String,
    /// Branch, tag or full commit; `None` is the remote's HEAD.
    pub reference: Option<String>,
    /// The directory inside the repository (relative, normalised; empty is the root).
    pub dir: PathBuf,
}

impl Context {
    /// Parses a `context` value.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("context must not be empty".to_owned());
        }
        match GitContext::parse(s)? {
            Some(g) => Ok(Self::Git(g)),
            None => Ok(Self::Local(PathBuf::from(s))),
        }
    }

    /// The local directory, if this is one.
    pub fn local(&self) -> Option<&Path> {
        match self {
            Self::Local(p) => Some(p),
            Self::Git(_) => None,
        }
    }

    /// The git context, if this is one.
    pub fn git(&self) -> Option<&GitContext> {
        match self {
            Self::Git(g) => Some(g),
            Self::Local(_) => None,
        }
    }
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local(p) => write!(f, "{}", p.display()),
            Self::Git(g) => g.fmt(f),
        }
    }
}

impl TryFrom<String> for Context {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Context> for String {
    fn from(c: Context) -> Self {
        c.to_string()
    }
}

/// How a git URL is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitScheme {
    /// `user@host:path`.
    Scp,
    /// `ssh://`.
    Ssh,
    /// `git://`.
    Git,
    /// `file://`.
    File,
    /// `http://` or `https://`.
    Http,
}

impl GitContext {
    /// `Ok(None)` when `s` is not a git context (a local path).
    pub fn parse(s: &str) -> Result<Option<Self>, String> {
        let (url, fragment) = match s.split_once('#') {
            Some((u, f)) => (u, Some(f)),
            None => (s, None),
        };
        let Some(scheme) = scheme_of(url) else {
            return Ok(None);
        };
        if scheme != GitScheme::File && host_of(url).is_none_or(str::is_empty) {
            return Err(format!("git context {url:?} names no host"));
        }
        if userinfo_of(url).is_some_and(|u| u.contains(':')) {
            return Err(format!(
                "git context {:?} holds a password: write the URL without it and put the password in a file named by [sources.\"{}\"] password_file",
                redact(url),
                host_of(url).unwrap_or_default()
            ));
        }
        let (reference, dir) = match fragment {
            None => (None, ""),
            Some(f) => match f.split_once(':') {
                Some((r, d)) => (Some(r), d),
                None => (Some(f), ""),
            },
        };
        let reference = match reference {
            Some(r) if !r.is_empty() => {
                if !valid_ref(r) {
                    return Err(format!(
                        "git context {s:?}: {r:?} is not a branch, tag or commit"
                    ));
                }
                Some(r.to_owned())
            }
            _ => None,
        };
        let dir = normal_dir(dir).ok_or_else(|| {
            format!("git context {s:?}: the directory {dir:?} must be relative and stay inside the repository")
        })?;
        Ok(Some(Self {
            url: url.to_owned(),
            reference,
            dir,
        }))
    }

    /// How the URL is written.
    pub fn scheme(&self) -> GitScheme {
        scheme_of(&self.url).unwrap_or(GitScheme::File)
    }

    /// The host the URL names (without user or port); `None` for `file://`.
    pub fn host(&self) -> Option<&str> {
        host_of(&self.url).filter(|h| !h.is_empty())
    }

    /// The URL without any user name: what provenance and the API show.
    pub fn public_url(&self) -> String {
        match self.scheme() {
            GitScheme::Http => redact(&self.url),
            _ => self.url.clone(),
        }
    }

    /// The ref asked for, as written (`HEAD` when none).
    pub fn reference_or_head(&self) -> &str {
        self.reference.as_deref().unwrap_or("HEAD")
    }

    /// What identifies the source: the repository and the ref (not the
    /// directory: images in several directories of one branch share it).
    pub fn key(&self) -> String {
        format!("{}#{}", self.url, self.reference_or_head())
    }

    /// Whether the ref is a full commit id (then nothing moves it).
    pub fn is_commit(&self) -> bool {
        self.reference.as_deref().is_some_and(is_commit_id)
    }
}

impl fmt::Display for GitContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)?;
        let dir = self.dir.to_string_lossy();
        match (&self.reference, dir.is_empty()) {
            (None, true) => Ok(()),
            (Some(r), true) => write!(f, "#{r}"),
            (r, false) => write!(f, "#{}:{dir}", r.as_deref().unwrap_or_default()),
        }
    }
}

/// Whether `s` is a full commit id (40 or 64 lowercase hex digits).
pub fn is_commit_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn scheme_of(url: &str) -> Option<GitScheme> {
    if let Some((scheme, rest)) = url.split_once("://") {
        return match scheme.to_ascii_lowercase().as_str() {
            "ssh" | "git+ssh" | "ssh+git" => Some(GitScheme::Ssh),
            "git" => Some(GitScheme::Git),
            "file" => Some(GitScheme::File),
            "http" | "https" => {
                let path = rest.split(['?']).next().unwrap_or_default();
                let path = path.trim_end_matches('/');
                path.ends_with(".git").then_some(GitScheme::Http)
            }
            _ => None,
        };
    }
    // scp-like: user@host:path, with no slash before the colon.
    let (before, _) = url.split_once(':')?;
    let (user, host) = before.split_once('@')?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    (ok(user) && ok(host)).then_some(GitScheme::Scp)
}

/// The URL's authority (`user@host:port`), or the scp form's `user@host`.
fn authority_of(url: &str) -> Option<&str> {
    match url.split_once("://") {
        Some((_, rest)) => Some(rest.split('/').next().unwrap_or_default()),
        None => url.split_once(':').map(|(a, _)| a),
    }
}

fn userinfo_of(url: &str) -> Option<&str> {
    authority_of(url)?.rsplit_once('@').map(|(u, _)| u)
}

fn host_of(url: &str) -> Option<&str> {
    let authority = authority_of(url)?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split(']').next();
    }
    Some(host.split(':').next().unwrap_or_default())
}

/// `url` without its user information (`https://x@h/p.git` -> `https://h/p.git`).
fn redact(url: &str) -> String {
    match (url.split_once("://"), userinfo_of(url)) {
        (Some((scheme, rest)), Some(user)) => {
            let rest = rest.strip_prefix(user).unwrap_or(rest);
            format!("{scheme}://{}", rest.trim_start_matches('@'))
        }
        _ => url.to_owned(),
    }
}

/// A ref git would accept as written (no spaces, `..`, control characters,
/// leading `-`).
fn valid_ref(r: &str) -> bool {
    !r.starts_with('-')
        && !r.contains("..")
        && !r.ends_with('/')
        && !r.ends_with(".lock")
        && r.chars()
            .all(|c| !c.is_control() && !" ~^:?*[\\".contains(c))
}

fn normal_dir(dir: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(dir).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(s: &str) -> GitContext {
        match Context::parse(s).expect(s) {
            Context::Git(g) => g,
            Context::Local(p) => panic!("{s} read as local {}", p.display()),
        }
    }

    #[test]
    fn each_git_form_is_recognised() {
        let g = git("https://git.example.com/acme/web.git#main:docker");
        assert_eq!(g.url, "https://git.example.com/acme/web.git");
        assert_eq!(g.reference.as_deref(), Some("main"));
        assert_eq!(g.dir, PathBuf::from("docker"));
        assert_eq!(g.host(), Some("git.example.com"));
        assert_eq!(g.scheme(), GitScheme::Http);

        let g = git("git@github.com:acme/web.git");
        assert_eq!((g.scheme(), g.host()), (GitScheme::Scp, Some("github.com")));
        assert_eq!(g.reference, None);
        assert_eq!(g.reference_or_head(), "HEAD");

        let g = git("ssh://git@127.0.0.1:2222/srv/repo.git#v1.2");
        assert_eq!((g.scheme(), g.host()), (GitScheme::Ssh, Some("127.0.0.1")));
        assert_eq!(g.reference.as_deref(), Some("v1.2"));

        let g = git("git://127.0.0.1:9418/repo#:sub/dir");
        assert_eq!(g.scheme(), GitScheme::Git);
        assert_eq!((g.reference, g.dir), (None, PathBuf::from("sub/dir")));

        let g = git("file:///srv/repo#0123456789abcdef0123456789abcdef01234567");
        assert_eq!((g.scheme(), g.host()), (GitScheme::File, None));
        assert!(g.is_commit());
    }

    #[test]
    fn other_values_are_local_directories() {
        for s in [
            "/srv/web",
            "web",
            "./a#b",
            "https://example.com/tarball.tar.gz",
            "C:dir",
        ] {
            assert_eq!(
                Context::parse(s).expect(s),
                Context::Local(PathBuf::from(s)),
                "{s}"
            );
        }
    }

    #[test]
    fn a_password_in_the_url_is_refused_pointing_at_password_file() {
        let e = Context::parse("https://bot:s3cret@git.example.com/a/b.git").expect_err("password");
        assert!(e.contains("password_file"), "{e}");
        assert!(e.contains("git.example.com"), "{e}");
        assert!(
            !e.contains("s3cret"),
            "the error must not repeat the password: {e}"
        );
        // A user name alone is not a secret; the public URL drops it anyway.
        let g = git("https://x-access-token@git.example.com/a/b.git");
        assert_eq!(g.public_url(), "https://git.example.com/a/b.git");
    }

    #[test]
    fn bad_refs_and_directories_are_refused() {
        assert!(Context::parse("https://h/a.git#ma..in").is_err());
        assert!(Context::parse("https://h/a.git#-x").is_err());
        assert!(Context::parse("https://h/a.git#main:../up").is_err());
        assert!(Context::parse("https://h/a.git#main:/abs").is_err());
        assert!(Context::parse("ssh:///nohost/a.git").is_err());
        assert_eq!(
            git("https://h/a.git#main:./x/./y").dir,
            PathBuf::from("x/y")
        );
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "https://h/a.git",
            "https://h/a.git#main",
            "https://h/a.git#main:docker",
            "https://h/a.git#:docker",
            "git@h:a/b.git#v1",
        ] {
            assert_eq!(Context::parse(s).expect(s).to_string(), s);
        }
    }
}
