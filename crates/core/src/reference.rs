//! Image references and their normalisation, as `distribution/reference`
//! (and so Docker, skopeo and crane) understands them.
//!
//! `alpine` is `docker.io/library/alpine:latest`; `index.docker.io` is
//! `docker.io`; a first path component with a `.` or `:`, or `localhost`, is a
//! registry host; `name:tag@digest` keeps both.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that serves Docker Hub's distribution API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A normalised image reference: registry, repository, and tag and/or digest.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ReferenceError {
    /// The rejected input.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ImageRef {
    /// Parses and normalises a reference. A reference with neither tag nor
    /// digest gets the tag `latest`.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let mut r = Self::parse_name_only(input)?;
        if r.tag.is_none() && r.digest.is_none() {
            r.tag = Some("latest".to_owned());
        }
        Ok(r)
    }

    /// Parses a repository name such as `127.0.0.1:5000/acme/web` (a tag or
    /// digest is refused): the form `[[image]].repository` takes.
    pub fn parse_repository(input: &str) -> Result<Self, ReferenceError> {
        let r = Self::parse_name_only(input)?;
        if r.tag.is_some() || r.digest.is_some() {
            return Err(ReferenceError {
                input: input.to_owned(),
                reason: "a repository takes no tag or digest".to_owned(),
            });
        }
        Ok(r)
    }

    fn parse_name_only(input: &str) -> Result<Self, ReferenceError> {
        let err = |reason: &str| ReferenceError {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        if input.is_empty() {
            return Err(err("empty reference"));
        }
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("contains whitespace or control characters"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => (
                rest,
                Some(Digest::parse(d).map_err(|e| err(&format!("bad digest: {}", e.reason)))?),
            ),
            None => (input, None),
        };
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag).map_err(|reason| err(&reason))?;
        }
        if name.is_empty() {
            return Err(err("empty name"));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (first.to_owned(), path.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        validate_domain(&registry).map_err(|reason| err(&reason))?;
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_owned()
        } else {
            registry
        };
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(err("repository name must be lowercase"));
        }
        for component in path.split('/') {
            validate_path_component(component).map_err(|reason| err(&reason))?;
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        // Measured on the normalised name, as `distribution/reference` does:
        // `alpine` is `docker.io/library/alpine`, and what is printed must
        // parse again.
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(err("name longer than 255 characters"));
        }
        Ok(Self {
            registry,
            repository,
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// The registry name as users write it (`docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host serving the registry's API (`registry-1.docker.io` for Docker Hub).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }

    /// The repository path within the registry (`library/alpine`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository with this tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Self {
        Self {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: Some(tag.to_owned()),
            digest: None,
        }
    }

    /// `name@digest`: the form a pinned build uses.
    pub fn pinned(&self, digest: &Digest) -> Self {
        Self {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest.clone()),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for ImageRef {
    type Error = ReferenceError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<ImageRef> for String {
    fn from(r: ImageRef) -> Self {
        r.to_string()
    }
}

/// Checks a tag against the distribution grammar `[\w][\w.-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = tag.chars();
    match chars.next() {
        None => return Err("empty tag".to_owned()),
        Some(c) if !word(c) => {
            return Err(format!(
                "tag {tag:?} must start with a letter, digit or '_'"
            ))
        }
        Some(_) => {}
    }
    if chars.any(|c| !(word(c) || c == '.' || c == '-')) {
        return Err(format!(
            "tag {tag:?} may only hold letters, digits, '_', '.' and '-'"
        ));
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(format!("tag {tag:?} is longer than 128 characters"));
    }
    Ok(())
}

fn validate_path_component(c: &str) -> Result<(), String> {
    // [a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bad = || Err(format!("invalid path component {c:?}"));
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return bad();
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return bad();
        }
    }
    Ok(())
}

fn validate_domain(domain: &str) -> Result<(), String> {
    let bad = || Err(format!("invalid registry host {domain:?}"));
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        // IPv6 literal
        let Some((addr, after)) = rest.split_once(']') else {
            return bad();
        };
        if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return bad();
        }
        match after {
            "" => return Ok(()),
            p => match p.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return bad(),
            },
        }
    } else {
        match domain.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (domain, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return bad();
        }
    }
    if domain.starts_with('[') {
        return Ok(());
    }
    for label in host.split('.') {
        let b = label.as_bytes();
        if b.is_empty()
            || !b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
            || b[0] == b'-'
            || b[b.len() - 1] == b'-'
        {
            return bad();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:ee3a7427e984f3d47ef6b31962b8255b59b97c4a79dc6804134da3986c55288a";

    fn norm(s: &str) -> String {
        ImageRef::parse(s).expect(s).to_string()
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(norm("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(norm("alpine:3.19"), "docker.io/library/alpine:3.19");
        assert_eq!(norm("library/alpine"), "docker.io/library/alpine:latest");
        assert_eq!(norm("acme/web"), "docker.io/acme/web:latest");
        assert_eq!(
            norm("index.docker.io/alpine"),
            "docker.io/library/alpine:latest"
        );
        assert_eq!(norm("docker.io/alpine"), "docker.io/library/alpine:latest");
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        assert_eq!(norm("localhost:5000/app:1"), "localhost:5000/app:1");
        assert_eq!(norm("127.0.0.1:5000/a/b/c:v"), "127.0.0.1:5000/a/b/c:v");
        assert_eq!(norm("ghcr.io/acme/web"), "ghcr.io/acme/web:latest");
        assert_eq!(norm("[::1]:5000/app"), "[::1]:5000/app:latest");
    }

    #[test]
    fn keeps_tag_and_digest() {
        let r = ImageRef::parse(&format!("alpine:3@{D}")).expect("valid");
        assert_eq!(r.tag(), Some("3"));
        assert_eq!(r.digest().map(Digest::as_str), Some(D));
        assert_eq!(r.to_string(), format!("docker.io/library/alpine:3@{D}"));
        let r = ImageRef::parse(&format!("alpine@{D}")).expect("valid");
        assert_eq!(r.tag(), None);
        assert_eq!(r.to_string(), format!("docker.io/library/alpine@{D}"));
    }

    #[test]
    fn api_host_for_docker_hub() {
        assert_eq!(
            ImageRef::parse("alpine").expect("valid").api_host(),
            "registry-1.docker.io"
        );
        assert_eq!(
            ImageRef::parse("quay.io/a/b").expect("valid").api_host(),
            "quay.io"
        );
    }

    /// The 255-character limit was measured on the name as written, so a
    /// 250-character `a-...-0` parsed, printed as
    /// `docker.io/library/a-...-0` (268 characters), and that did not parse
    /// again. Found by the `reference` fuzz target.
    #[test]
    fn name_length_is_measured_after_normalisation() {
        let long = "a".repeat(250);
        assert!(
            ImageRef::parse(&long).is_err(),
            "docker.io/library/ + 250 > 255"
        );
        let fits = "a".repeat(255 - "docker.io/library/".len());
        let r = ImageRef::parse(&fits).expect("fits");
        assert_eq!(ImageRef::parse(&r.to_string()), Ok(r));
        // `index.docker.io/` is shortened to `docker.io/`.
        let path = format!("x/{}", "a".repeat(255 - "docker.io/x/".len()));
        let r = ImageRef::parse(&format!("index.docker.io/{path}")).expect("fits once normalised");
        assert_eq!(ImageRef::parse(&r.to_string()), Ok(r));
    }

    #[test]
    fn refuses_invalid() {
        for bad in [
            "",
            "Alpine",
            "acme/Web",
            "alpine:",
            "alpine:-x",
            "alpine:a b",
            "a//b",
            "-a",
            "a-",
            "a..b",
            "host:port/a",
            "alpine@sha256:short",
            &format!("alpine:{}", "x".repeat(129)),
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn repository_form_takes_no_tag() {
        let r = ImageRef::parse_repository("127.0.0.1:5000/app").expect("valid");
        assert_eq!(r.name(), "127.0.0.1:5000/app");
        assert!(ImageRef::parse_repository("127.0.0.1:5000/app:1").is_err());
    }

    #[test]
    fn tag_grammar() {
        assert!(validate_tag("1.4.2-r1").is_ok());
        assert!(validate_tag("_x").is_ok());
        assert!(validate_tag(".x").is_err());
    }
}
