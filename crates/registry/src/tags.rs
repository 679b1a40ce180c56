//! Tag listing: `GET /v2/NAME/tags/list?n=N`, following the `Link:
//! <...>; rel="next"` header the distribution spec defines. Without one,
//! a page longer than `n` is the whole list (distribution 2.8 ignores `n`
//! and `last`); from a registry that caps pages at or below `n` without a
//! `Link`, the list is asked again from its last tag until a page brings
//! no new tag. A tag is listed once, however often pages repeat it.

use rebased_core::ImageRef;
use std::collections::HashSet;

use reqwest::Method;

use crate::error::{error, ErrorKind, RegistryError};
use crate::transport::token::Scopes;
use crate::transport::{query_escape, read_capped, status_error, Request, Transport};

/// Largest tag list page read.
const MAX_PAGE: usize = 8 << 20;
/// Most pages read for one repository (a registry that paginates forever
/// must not keep us listing forever).
const MAX_PAGES: usize = 10_000;

#[derive(serde::Deserialize)]
struct Page {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// The URL of the next page from a `Link` header value, resolved against
/// `base`; `None` without a `rel="next"` link, or when the link points at
/// another host (our credentials go only to the registry itself).
pub(crate) fn next_link(base: &str, link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        let next = params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p.eq_ignore_ascii_case("rel=\"next\"") || p.eq_ignore_ascii_case("rel=next")
        });
        if !next {
            return None;
        }
        if target.starts_with('/') {
            Some(format!("{base}{target}"))
        } else {
            target
                .strip_prefix(base)
                .filter(|rest| rest.starts_with('/'))
                .map(|_| target.to_owned())
        }
    })
}

/// Every tag of `repository`, asking for `page` tags per request. A
/// repository that does not exist has no tags.
pub(crate) async fn list(
    t: &Transport,
    repository: &ImageRef,
    page: usize,
) -> Result<Vec<String>, RegistryError> {
    let base = t.base_url(repository);
    let first = t.url(repository, &format!("tags/list?n={page}"));
    let mut url = Some(first.clone());
    let mut tags: Vec<String> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut pages = 0;
    // A registry that sent a `Link` once ends the list by sending none.
    let mut saw_link = false;
    while let Some(u) = url.take() {
        pages += 1;
        if pages > MAX_PAGES {
            return Err(error(
                repository,
                ErrorKind::Protocol,
                format!("tag list longer than {MAX_PAGES} pages"),
            ));
        }
        let req = Request::new(Method::GET, u, Scopes::pull(repository.repository()));
        let resp = t.send(repository, req).await?;
        if !resp.status().is_success() {
            let e = status_error(
                repository,
                resp,
                !t.has_credentials(repository),
                "no such repository",
            )
            .await;
            if e.kind == ErrorKind::NotFound && tags.is_empty() {
                return Ok(Vec::new());
            }
            return Err(e);
        }
        let link = resp
            .headers()
            .get("link")
            .and_then(|v| v.to_str().ok())
            .and_then(|l| next_link(&base, l));
        let body = read_capped(resp, MAX_PAGE)
            .await
            .map_err(|e| error(repository, ErrorKind::Protocol, format!("tag list: {e}")))?;
        let got: Page = serde_json::from_slice(&body).map_err(|e| {
            error(
                repository,
                ErrorKind::Protocol,
                format!("tag list is not JSON: {e}"),
            )
        })?;
        let got = got.tags.unwrap_or_default();
        let whole = got.len() > page;
        let next = got.last().cloned();
        let before = tags.len();
        for tag in got {
            if seen.insert(tag.clone()) {
                tags.push(tag);
            }
        }
        let new = tags.len() > before;
        url = match (link, next) {
            (Some(link), _) if new => {
                saw_link = true;
                Some(link)
            }
            (None, Some(next)) if new && !whole && !saw_link => {
                Some(format!("{first}&last={}", query_escape(&next)))
            }
            _ => None,
        };
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers() {
        let base = "http://127.0.0.1:5000";
        assert_eq!(
            next_link(base, r#"</v2/a/b/tags/list?last=x&n=2>; rel="next""#).as_deref(),
            Some("http://127.0.0.1:5000/v2/a/b/tags/list?last=x&n=2")
        );
        assert_eq!(
            next_link(
                base,
                r#"<http://127.0.0.1:5000/v2/a/tags/list?last=y>; rel=next"#
            )
            .as_deref(),
            Some("http://127.0.0.1:5000/v2/a/tags/list?last=y")
        );
        assert_eq!(
            next_link(base, r#"<https://elsewhere.io/v2/a/tags/list>; rel="next""#),
            None,
            "never to another host"
        );
        assert_eq!(
            next_link(base, r#"garbage, </v2/a/tags/list?last=z>; rel="next""#).as_deref(),
            Some("http://127.0.0.1:5000/v2/a/tags/list?last=z")
        );
        assert_eq!(next_link(base, r#"</x>; rel="prev""#), None);
        assert_eq!(next_link(base, "garbage"), None);
        assert_eq!(next_link(base, ""), None);
    }
}
