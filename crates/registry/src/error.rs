//! The one error type of the crate: which registry, which reference, what
//! class of failure and the cause.

use rebased_core::ImageRef;

/// What went wrong talking to a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// 401/403, or the token flow failed.
    Unauthorized,
    /// The repository, tag or manifest does not exist.
    NotFound,
    /// Too many requests (429).
    RateLimited,
    /// Connection refused, DNS, TLS, timeouts.
    Unreachable,
    /// The registry answered with something we cannot use.
    Protocol,
}

/// A registry error naming the registry, the reference and the cause.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reference} (registry {registry}): {kind_text}: {detail}", kind_text = kind_text(.kind))]
pub struct RegistryError {
    /// The registry host.
    pub registry: String,
    /// The reference being accessed.
    pub reference: String,
    /// Class of the failure.
    pub kind: ErrorKind,
    /// The underlying cause.
    pub detail: String,
}

fn kind_text(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Unauthorized => "unauthorized",
        ErrorKind::NotFound => "not found",
        ErrorKind::RateLimited => "rate limited",
        ErrorKind::Unreachable => "unreachable",
        ErrorKind::Protocol => "protocol error",
    }
}

/// A [`RegistryError`] about `r`.
pub(crate) fn error(r: &ImageRef, kind: ErrorKind, detail: impl Into<String>) -> RegistryError {
    RegistryError {
        registry: r.registry().to_owned(),
        reference: r.to_string(),
        kind,
        detail: detail.into(),
    }
}

/// An error and its sources, joined with `: `.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}
