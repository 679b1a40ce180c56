//! Registry webhook payloads, parsed into "these references may have
//! changed". Nothing in a payload is trusted beyond that: digests are
//! ignored, and the daemon checks each named reference itself.
//!
//! Formats, as the registries document them:
//! - `distribution`: CNCF distribution notifications (envelope `{"events":
//!   [...]}`, media types `application/vnd.docker.distribution.events.v1+json`
//!   and `.v2+json`); only `push` events of a manifest with a tag count.
//! - `dockerhub`: `{"push_data": {"tag"}, "repository": {"repo_name"}}`.
//! - `harbor`: default (`{"type": "PUSH_ARTIFACT", "event_data":
//!   {"resources": [{"resource_url"}]}}`) and CloudEvents (`{"specversion",
//!   "type": "harbor.artifact.pushed", "data": {...}}`).
//! - `quay`: `{"docker_url", "updated_tags"}` with `updated_tags` a list of
//!   tags or a map of tag to digest.
//! - `github`: `package` and `registry_package` events (`X-GitHub-Event`),
//!   container packages only; `ping` is accepted and names nothing.
//! - `acr`: `{"action": "push", "target": {"repository", "tag"}, "request":
//!   {"host"}}`.
//! - `generic`: `{"reference": "..."}`.

use rebased_core::oci::media_type;
use serde_json::Value;

/// The sources rebased understands.
pub const SOURCES: &[&str] = &[
    "distribution",
    "dockerhub",
    "harbor",
    "quay",
    "github",
    "acr",
    "generic",
    "gitlab",
    "gitea",
];

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WebhookError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, WebhookError> {
    Err(WebhookError(msg.into()))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for key in path {
        cur = cur.get(key)?;
    }
    cur.as_str().filter(|s| !s.is_empty())
}

/// Parses a payload of `source` into the references it names (as written:
/// the caller normalises and validates them). `event` is GitHub's
/// `X-GitHub-Event` header, if any.
pub fn parse(source: &str, event: Option<&str>, body: &[u8]) -> Result<Vec<String>, WebhookError> {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return err(format!("body is not valid JSON: {e}")),
    };
    if !v.is_object() {
        return err("body must be a JSON object");
    }
    match source {
        "distribution" => distribution(&v),
        "dockerhub" => dockerhub(&v),
        "harbor" => harbor(&v),
        "quay" => quay(&v),
        "github" => github(&v, event),
        "acr" => acr(&v),
        "generic" => match str_at(&v, &["reference"]) {
            Some(r) => Ok(vec![r.to_owned()]),
            None => err("generic payload needs {\"reference\": \"...\"}"),
        },
        other => err(format!("unknown webhook source {other:?}")),
    }
}

const MANIFEST_TYPES: &[&str] = &[
    media_type::OCI_INDEX,
    media_type::DOCKER_MANIFEST_LIST,
    media_type::OCI_MANIFEST,
    media_type::DOCKER_MANIFEST,
    media_type::DOCKER_MANIFEST_V1,
    media_type::DOCKER_MANIFEST_V1_SIGNED,
];

fn distribution(v: &Value) -> Result<Vec<String>, WebhookError> {
    let Some(events) = v.get("events").and_then(Value::as_array) else {
        return err("distribution payload needs an \"events\" array");
    };
    let mut out = Vec::new();
    for e in events {
        if e.get("action").and_then(Value::as_str) != Some("push") {
            continue;
        }
        let media = str_at(e, &["target", "mediaType"]).unwrap_or_default();
        if !MANIFEST_TYPES.contains(&media) {
            continue;
        }
        let (Some(repo), Some(tag)) = (
            str_at(e, &["target", "repository"]),
            str_at(e, &["target", "tag"]),
        ) else {
            continue;
        };
        let host = str_at(e, &["request", "host"])
            .map(str::to_owned)
            .or_else(|| {
                str_at(e, &["target", "url"])
                    .and_then(|u| u.split("://").nth(1))
                    .and_then(|r| r.split('/').next())
                    .map(str::to_owned)
            });
        let Some(host) = host else {
            return err("distribution event names no registry host (request.host or target.url)");
        };
        out.push(format!("{host}/{repo}:{tag}"));
    }
    Ok(out)
}

fn dockerhub(v: &Value) -> Result<Vec<String>, WebhookError> {
    match (
        str_at(v, &["repository", "repo_name"]),
        str_at(v, &["push_data", "tag"]),
    ) {
        (Some(repo), Some(tag)) => Ok(vec![format!("docker.io/{repo}:{tag}")]),
        _ => err("dockerhub payload needs repository.repo_name and push_data.tag"),
    }
}

fn harbor(v: &Value) -> Result<Vec<String>, WebhookError> {
    let (kind, data) = if v.get("specversion").is_some() {
        (str_at(v, &["type"]).unwrap_or_default(), v.get("data"))
    } else {
        (
            str_at(v, &["type"]).unwrap_or_default(),
            v.get("event_data"),
        )
    };
    let Some(data) = data else {
        return err("harbor payload needs event_data (or data, for CloudEvents)");
    };
    let push = matches!(
        kind,
        "PUSH_ARTIFACT" | "pushImage" | "harbor.artifact.pushed"
    );
    if !push {
        return Ok(Vec::new());
    }
    let Some(resources) = data.get("resources").and_then(Value::as_array) else {
        return err("harbor payload needs resources");
    };
    Ok(resources
        .iter()
        .filter(|r| str_at(r, &["tag"]).is_some())
        .filter_map(|r| str_at(r, &["resource_url"]).map(str::to_owned))
        .collect())
}

fn quay(v: &Value) -> Result<Vec<String>, WebhookError> {
    let Some(url) = str_at(v, &["docker_url"]) else {
        return err("quay payload needs docker_url");
    };
    let tags: Vec<String> = match v.get("updated_tags") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect(),
        Some(Value::Object(m)) => m.keys().cloned().collect(),
        _ => return err("quay payload needs updated_tags (a list, or a map of tag to digest)"),
    };
    Ok(tags.into_iter().map(|t| format!("{url}:{t}")).collect())
}

fn github(v: &Value, event: Option<&str>) -> Result<Vec<String>, WebhookError> {
    if event == Some("ping") || v.get("zen").is_some() {
        return Ok(Vec::new());
    }
    let pkg = match (event, v.get("package"), v.get("registry_package")) {
        (Some("package") | None, Some(p), _) => p,
        (Some("registry_package") | None, _, Some(p)) => p,
        _ => return err("github payload needs a package or registry_package object"),
    };
    let kind = str_at(pkg, &["package_type"])
        .unwrap_or_default()
        .to_ascii_lowercase();
    if kind != "container" && kind != "docker" {
        return Ok(Vec::new());
    }
    let version = pkg.get("package_version").unwrap_or(&Value::Null);
    let tag = str_at(version, &["container_metadata", "tag", "name"]);
    let owner = str_at(pkg, &["owner", "login"]).or_else(|| str_at(pkg, &["namespace"]));
    match (owner, str_at(pkg, &["name"]), tag) {
        (Some(o), Some(n), Some(t)) => Ok(vec![format!(
            "ghcr.io/{}/{}:{t}",
            o.to_ascii_lowercase(),
            n.to_ascii_lowercase()
        )]),
        // A tagged package URL is as good, when the parts are missing.
        _ => match str_at(version, &["package_url"]) {
            Some(url)
                if !url.contains('@')
                    && url.rsplit('/').next().is_some_and(|l| l.contains(':')) =>
            {
                Ok(vec![url.to_owned()])
            }
            // An untagged version names no tag anyone builds FROM.
            _ if tag.is_none() => Ok(Vec::new()),
            _ => err("github package payload needs owner.login, name and package_version"),
        },
    }
}

fn acr(v: &Value) -> Result<Vec<String>, WebhookError> {
    if v.get("action").and_then(Value::as_str) != Some("push") {
        return Ok(Vec::new());
    }
    match (
        str_at(v, &["request", "host"]),
        str_at(v, &["target", "repository"]),
        str_at(v, &["target", "tag"]),
    ) {
        (Some(h), Some(r), Some(t)) => Ok(vec![format!("{h}/{r}:{t}")]),
        (Some(_), Some(_), None) => Ok(Vec::new()),
        _ => err("acr payload needs request.host, target.repository and target.tag"),
    }
}

#[cfg(test)]
mod tests;
