//! Git hosts' push webhooks, parsed into "this repository may have moved
//! at this ref". Nothing in a payload is trusted beyond that: the commit it
//! names is ignored, and the daemon looks the ref up itself.
//!
//! Formats, as the hosts document them:
//! - `github`: `push` events (`X-GitHub-Event: push`): `ref`,
//!   `repository.{clone_url, ssh_url, git_url, html_url}`.
//! - `gitlab`: `Push Hook` and `Tag Push Hook` (`X-Gitlab-Event`): `ref`,
//!   `project.{git_http_url, git_ssh_url, web_url}` (older payloads:
//!   `repository.{git_http_url, git_ssh_url, url}`).
//! - `gitea`: Gitea's and Forgejo's push (`X-Gitea-Event` or
//!   `X-Forgejo-Event: push`): `ref`, `repository.{clone_url, ssh_url,
//!   html_url}`.
//! - `generic`: `{"repository": "URL", "ref": "refs/heads/main"}`.

use serde_json::Value;

use crate::webhook::WebhookError;

/// One push: the repository (every URL the payload gives for it) and the
/// ref that moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The repository's URLs (https, ssh, web).
    pub repositories: Vec<String>,
    /// The full ref (`refs/heads/main`), when named.
    pub reference: Option<String>,
}

/// Whether a delivery of `source` with `event` (the host's event header)
/// and `body` is a push to parse with [`parse`] (and not a registry event).
pub fn is_push(source: &str, event: Option<&str>, body: &[u8]) -> bool {
    match source {
        "github" => event == Some("push"),
        "gitlab" | "gitea" => true,
        "generic" => serde_json::from_slice::<Value>(body)
            .ok()
            .is_some_and(|v| v.get("repository").is_some_and(Value::is_string)),
        _ => false,
    }
}

/// Parses a push of `source`; `Ok(None)` for an event that is no push
/// (GitLab's other hooks, a `ping`).
pub fn parse(source: &str, event: Option<&str>, body: &[u8]) -> Result<Option<Push>, WebhookError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| WebhookError(format!("body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(WebhookError("body must be a JSON object".to_owned()));
    }
    let urls = |obj: Option<&Value>, keys: &[&str]| -> Vec<String> {
        keys.iter()
            .filter_map(|k| obj?.get(*k)?.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let reference = v.get("ref").and_then(Value::as_str).map(str::to_owned);
    let repositories = match source {
        "github" => {
            if event != Some("push") {
                return Ok(None);
            }
            urls(
                v.get("repository"),
                &["clone_url", "ssh_url", "git_url", "html_url"],
            )
        }
        "gitlab" => {
            if !matches!(event, Some("Push Hook" | "Tag Push Hook") | None) {
                return Ok(None);
            }
            let mut u = urls(
                v.get("project"),
                &["git_http_url", "git_ssh_url", "web_url"],
            );
            u.extend(urls(
                v.get("repository"),
                &["git_http_url", "git_ssh_url", "url"],
            ));
            u
        }
        "gitea" => {
            if !matches!(event, Some("push") | None) {
                return Ok(None);
            }
            urls(v.get("repository"), &["clone_url", "ssh_url", "html_url"])
        }
        "generic" => match v.get("repository").and_then(Value::as_str) {
            Some(r) if !r.is_empty() => vec![r.to_owned()],
            _ => return Err(WebhookError(
                "generic push payload needs {\"repository\": \"URL\", \"ref\": \"refs/heads/...\"}"
                    .to_owned(),
            )),
        },
        other => return Err(WebhookError(format!("{other} sends no push events"))),
    };
    if repositories.is_empty() {
        return Err(WebhookError(format!(
            "{source} push names no repository URL"
        )));
    }
    Ok(Some(Push {
        repositories,
        reference,
    }))
}

/// A repository URL reduced to `host/path` (lowercase host, no scheme,
/// user, port, `.git` or trailing `/`), so the https, ssh and web URLs of
/// one repository compare equal; `file://` URLs keep their path.
pub fn canonical(url: &str) -> String {
    let (rest, scheme) = match url.split_once("://") {
        Some((s, r)) => (r, Some(s)),
        None => (url, None),
    };
    let (authority, path) = match scheme {
        Some("file") => ("", rest),
        Some(_) => rest.split_once('/').unwrap_or((rest, "")),
        // scp-like `user@host:path`
        None => rest.split_once(':').unwrap_or(("", rest)),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = host
        .split(':')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let path = path
        .trim_matches('/')
        .trim_end_matches(".git")
        .trim_end_matches('/');
    format!("{host}/{path}")
}

/// Whether a push of `pushed` (a full ref) moves a source at `wanted` (as
/// written in the config: a branch, a tag, a full ref, `HEAD`). A push
/// naming no ref, and a source following `HEAD`, match any push.
pub fn ref_matches(wanted: &str, pushed: Option<&str>) -> bool {
    let Some(pushed) = pushed else {
        return true;
    };
    wanted == "HEAD"
        || wanted == pushed
        || pushed.strip_prefix("refs/heads/") == Some(wanted)
        || pushed.strip_prefix("refs/tags/") == Some(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/fixtures/push/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn push(source: &str, event: Option<&str>, name: &str) -> Push {
        parse(source, event, &fixture(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .unwrap_or_else(|| panic!("{name}: not a push"))
    }

    #[test]
    fn each_host_names_the_repository_and_ref() {
        let p = push("github", Some("push"), "github-push.json");
        assert_eq!(p.reference.as_deref(), Some("refs/heads/main"));
        assert!(p
            .repositories
            .contains(&"https://github.com/acme/web.git".to_owned()));
        assert!(p
            .repositories
            .contains(&"git@github.com:acme/web.git".to_owned()));

        let p = push("gitlab", Some("Push Hook"), "gitlab-push.json");
        assert_eq!(p.reference.as_deref(), Some("refs/heads/master"));
        assert!(p
            .repositories
            .contains(&"http://example.com/mike/diaspora.git".to_owned()));
        let p = push("gitlab", Some("Tag Push Hook"), "gitlab-tag-push.json");
        assert_eq!(p.reference.as_deref(), Some("refs/tags/v1.0.0"));

        let p = push("gitea", Some("push"), "gitea-push.json");
        assert_eq!(p.reference.as_deref(), Some("refs/heads/develop"));
        assert!(p
            .repositories
            .contains(&"http://localhost:3000/gitea/webhooks.git".to_owned()));

        let p = push("generic", None, "generic-push.json");
        assert_eq!(p.repositories, ["https://git.example.com/acme/web.git"]);
        assert!(is_push("generic", None, &fixture("generic-push.json")));
        assert!(!is_push("generic", None, br#"{"reference": "alpine:3"}"#));
    }

    #[test]
    fn other_events_are_no_push() {
        assert_eq!(parse("github", Some("ping"), b"{}"), Ok(None));
        assert_eq!(parse("gitlab", Some("Merge Request Hook"), b"{}"), Ok(None));
        assert!(
            parse("gitea", Some("push"), b"{}").is_err(),
            "no repository"
        );
        assert!(parse("generic", None, b"[1]").is_err());
    }

    #[test]
    fn urls_of_one_repository_compare_equal() {
        let c = canonical("https://GitHub.com/acme/web.git");
        assert_eq!(c, "github.com/acme/web");
        assert_eq!(canonical("git@github.com:acme/web.git"), c);
        assert_eq!(canonical("ssh://git@github.com:22/acme/web.git"), c);
        assert_eq!(canonical("https://x-access-token@github.com/acme/web/"), c);
        assert_eq!(canonical("file:///srv/repo.git"), "/srv/repo");
        assert_ne!(canonical("https://github.com/acme/web2.git"), c);
    }

    #[test]
    fn refs_match_as_git_names_them() {
        assert!(ref_matches("main", Some("refs/heads/main")));
        assert!(ref_matches("v1", Some("refs/tags/v1")));
        assert!(ref_matches("HEAD", Some("refs/heads/anything")));
        assert!(ref_matches("refs/heads/main", Some("refs/heads/main")));
        assert!(!ref_matches("main", Some("refs/heads/mainline")));
        assert!(!ref_matches("main", Some("refs/heads/feature/main")));
        assert!(ref_matches("main", None));
    }
}
