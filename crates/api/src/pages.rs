//! The paged forms of `GET /v1/images` and `GET /v1/jobs`, and their
//! `ETag`s.
//!
//! Without a query the two routes answer the whole list, as they always
//! did. With any of `limit`, `cursor`, `state`, `q` (or `view` for images)
//! they answer one page in an envelope with the cursor of the next page.
//! Images are paged in name order, jobs newest first; a cursor names the
//! last entry of its page (hex, opaque to clients), so a page boundary
//! stays put when entries come and go before it.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rebased_core::{Digest, ImageState, Version};
use serde::{Deserialize, Serialize};

use crate::{ApiError, ImageBaseView, ImageSourceView, ImageView, JobView};

/// The default page size of the paged forms.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest page.
pub const MAX_LIMIT: usize = 1000;

/// Which form of each image a page holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImagesForm {
    /// The whole [`ImageView`], with every version.
    #[default]
    Full,
    /// An [`ImageSummaryView`]: no version histories.
    Summary,
}

/// The query of `GET /v1/images`. Any of these gives the paged answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImagesQuery {
    /// Most images in the page (1 to 1000; 100 when not given).
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    pub cursor: Option<String>,
    /// Only images in this state (`fresh`, `stale`, `queued`, `building`,
    /// `failing`, `held`).
    pub state: Option<String>,
    /// Only images whose name contains this (case-insensitive).
    pub q: Option<String>,
    /// `full` (the default) or `summary` (no version histories).
    #[param(value_type = Option<ImagesForm>)]
    pub view: Option<ImagesForm>,
}

impl ImagesQuery {
    /// Whether any parameter asks for the paged form.
    pub fn is_paged(&self) -> bool {
        self.limit.is_some()
            || self.cursor.is_some()
            || self.state.is_some()
            || self.q.is_some()
            || self.view.is_some()
    }
}

/// The query of `GET /v1/jobs`. Any of these gives the paged answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobsQuery {
    /// Most jobs in the page (1 to 1000; 100 when not given).
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    pub cursor: Option<String>,
    /// Only jobs in this state (`queued`, `running`, `succeeded`, `failed`,
    /// `cancelled`).
    pub state: Option<String>,
    /// Only jobs whose image's name contains this (case-insensitive).
    pub q: Option<String>,
}

impl JobsQuery {
    /// Whether any parameter asks for the paged form.
    pub fn is_paged(&self) -> bool {
        self.limit.is_some() || self.cursor.is_some() || self.state.is_some() || self.q.is_some()
    }
}

/// A base of an image in the summary: as [`ImageBaseView`], with when its
/// digest last changed.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SummaryBaseView {
    /// Normalised reference.
    pub reference: String,
    /// Its digest at the last check.
    #[schema(value_type = Option<String>)]
    pub digest: Option<Digest>,
    /// The error of the last check.
    pub error: Option<String>,
    /// When it was last checked.
    pub last_checked: Option<DateTime<Utc>>,
    /// When its digest last changed.
    pub last_changed: Option<DateTime<Utc>>,
}

impl From<&ImageBaseView> for SummaryBaseView {
    fn from(b: &ImageBaseView) -> Self {
        Self {
            reference: b.reference.clone(),
            digest: b.digest.clone(),
            error: b.error.clone(),
            last_checked: b.last_checked,
            last_changed: None,
        }
    }
}

/// The latest job of an image, in the summary.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LastJobView {
    /// The job's id.
    pub id: u64,
    /// Its state.
    pub state: String,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Its latest error.
    pub error: Option<String>,
    /// The version it published.
    #[schema(value_type = Option<String>)]
    pub published: Option<Version>,
}

/// An image without its version history: `GET /v1/images?view=summary`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageSummaryView {
    /// The image's name.
    pub name: String,
    /// Where it stands.
    #[schema(value_type = String)]
    pub state: ImageState,
    /// The last check of one of its bases failed.
    pub unchecked: bool,
    /// Where versions are pushed.
    pub repository: String,
    /// Current version.
    #[schema(value_type = Option<String>)]
    pub current_version: Option<Version>,
    /// Its digest.
    #[schema(value_type = Option<String>)]
    pub current_digest: Option<Digest>,
    /// When the current version was built.
    pub current_built_at: Option<DateTime<Utc>>,
    /// Its bases now.
    pub bases: Vec<SummaryBaseView>,
    /// Why the last build failed.
    pub last_error: Option<String>,
    /// Its latest job, when the daemon still knows one.
    pub last_job: Option<LastJobView>,
    /// Its git source, for a git context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ImageSourceView>,
    /// Findings of its last immutability audit left unrepaired (a
    /// version tag, floating tag or signature not as the ledger says).
    #[serde(default)]
    pub drift: usize,
}

impl From<&ImageView> for ImageSummaryView {
    fn from(v: &ImageView) -> Self {
        let current_built_at = v
            .current_version
            .and_then(|c| v.versions.iter().find(|x| x.version == c))
            .map(|x| x.built_at);
        Self {
            name: v.name.clone(),
            state: v.state,
            unchecked: v.unchecked,
            repository: v.repository.clone(),
            current_version: v.current_version,
            current_digest: v.current_digest.clone(),
            current_built_at,
            bases: v.bases.iter().map(SummaryBaseView::from).collect(),
            last_error: v.last_error.clone(),
            last_job: None,
            source: v.source.clone(),
            drift: v.audit.as_ref().map_or(0, |a| {
                a.findings.iter().filter(|f| f.repaired.is_none()).count()
            }),
        }
    }
}

/// A page of images in the full form.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImagePage {
    /// The images of this page, in name order.
    pub items: Vec<ImageView>,
    /// The cursor of the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// How many images match `state` and `q`.
    pub total: usize,
    /// Every managed image counted by state (whatever the filter).
    pub counts: BTreeMap<String, usize>,
}

/// A page of image summaries (`view=summary`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageSummaryPage {
    /// The images of this page, in name order.
    pub items: Vec<ImageSummaryView>,
    /// The cursor of the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// How many images match `state` and `q`.
    pub total: usize,
    /// Every managed image counted by state (whatever the filter).
    pub counts: BTreeMap<String, usize>,
}

/// A page of jobs.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobPage {
    /// The jobs of this page, newest first.
    pub items: Vec<JobView>,
    /// The cursor of the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// How many jobs match `state` and `q`.
    pub total: usize,
}

/// What `GET /v1/images` answers: every image without a query, else a page.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ImagesAnswer {
    /// No query: every image, in config order.
    Every(Vec<ImageView>),
    /// A page of full views.
    Page(ImagePage),
    /// A page of summaries.
    Summary(ImageSummaryPage),
}

/// What `GET /v1/jobs` answers: every job without a query, else a page.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum JobsAnswer {
    /// No query: every job, oldest first.
    Every(Vec<JobView>),
    /// A page.
    Page(JobPage),
}

fn limit(l: Option<usize>) -> Result<usize, ApiError> {
    match l {
        None => Ok(DEFAULT_LIMIT),
        Some(n @ 1..=MAX_LIMIT) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit {n} is out of range (1 to {MAX_LIMIT})"
        ))),
    }
}

fn encode_cursor(kind: char, key: &str) -> String {
    let mut s = String::with_capacity(1 + 2 * key.len());
    s.push(kind);
    for b in key.bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn decode_cursor(kind: char, cursor: &str) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request(format!("cursor {cursor:?} is not one this API gave"));
    let hex = cursor.strip_prefix(kind).ok_or_else(bad)?;
    if hex.len() % 2 != 0 || !hex.is_ascii() {
        return Err(bad());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    String::from_utf8(bytes).map_err(|_| bad())
}

fn image_state(s: &str) -> Result<ImageState, ApiError> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
        ApiError::bad_request(format!(
            "state {s:?} is not one of fresh, stale, queued, building, failing, held"
        ))
    })
}

const JOB_STATES: [&str; 5] = ["queued", "running", "succeeded", "failed", "cancelled"];

/// What the image query selects from `summaries` (every managed image, any
/// order): the page's names in name order, the next cursor, how many match,
/// and the counts by state.
pub struct ImageSelection<'a> {
    /// The page's summaries, in name order.
    pub items: Vec<&'a ImageSummaryView>,
    /// The cursor of the next page.
    pub next: Option<String>,
    /// How many match.
    pub total: usize,
    /// Every image by state.
    pub counts: BTreeMap<String, usize>,
}

/// Selects the page `query` asks for from `summaries`, which are in name
/// order.
pub fn select_images<'a>(
    summaries: &'a [ImageSummaryView],
    query: &ImagesQuery,
) -> Result<ImageSelection<'a>, ApiError> {
    let limit = limit(query.limit)?;
    let state = query.state.as_deref().map(image_state).transpose()?;
    let after = query
        .cursor
        .as_deref()
        .map(|c| decode_cursor('i', c))
        .transpose()?;
    let needle = query.q.as_deref().map(str::to_lowercase);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for s in [
        ImageState::Fresh,
        ImageState::Stale,
        ImageState::Queued,
        ImageState::Building,
        ImageState::Failing,
        ImageState::Held,
    ] {
        counts.insert(s.to_string(), 0);
    }
    let mut total = 0;
    let mut items = Vec::with_capacity(limit.min(summaries.len()));
    let mut more = false;
    for s in summaries {
        *counts.entry(s.state.to_string()).or_insert(0) += 1;
        if state.is_some_and(|want| s.state != want) {
            continue;
        }
        if let Some(n) = &needle {
            if !contains_lowercase(&s.name, n) {
                continue;
            }
        }
        total += 1;
        if after.as_deref().is_some_and(|a| s.name.as_str() <= a) {
            continue;
        }
        if items.len() < limit {
            items.push(s);
        } else {
            more = true;
        }
    }
    let next = match (more, items.last()) {
        (true, Some(last)) => Some(encode_cursor('i', &last.name)),
        _ => None,
    };
    Ok(ImageSelection {
        items,
        next,
        total,
        counts,
    })
}

fn contains_lowercase(hay: &str, lower_needle: &str) -> bool {
    if hay.is_ascii() && lower_needle.is_ascii() {
        hay.as_bytes()
            .windows(lower_needle.len().max(1))
            .any(|w| w.eq_ignore_ascii_case(lower_needle.as_bytes()))
            || lower_needle.is_empty()
    } else {
        hay.to_lowercase().contains(lower_needle)
    }
}

/// Selects the page `query` asks for from `jobs` (oldest first, as the
/// backend gives them): newest first.
pub fn select_jobs(jobs: Vec<JobView>, query: &JobsQuery) -> Result<JobPage, ApiError> {
    let limit = limit(query.limit)?;
    if let Some(s) = query.state.as_deref() {
        if !JOB_STATES.contains(&s) {
            return Err(ApiError::bad_request(format!(
                "state {s:?} is not one of {}",
                JOB_STATES.join(", ")
            )));
        }
    }
    let before = match query.cursor.as_deref() {
        Some(c) => Some(decode_cursor('j', c)?.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("cursor {c:?} is not one this API gave"))
        })?),
        None => None,
    };
    let needle = query.q.as_deref().map(str::to_lowercase);
    let mut matching: Vec<JobView> = jobs
        .into_iter()
        .filter(|j| query.state.as_deref().is_none_or(|s| j.state == s))
        .filter(|j| {
            needle
                .as_deref()
                .is_none_or(|n| contains_lowercase(&j.image, n))
        })
        .collect();
    matching.sort_by_key(|j| std::cmp::Reverse(j.id));
    let total = matching.len();
    let mut items: Vec<JobView> = matching
        .into_iter()
        .filter(|j| before.is_none_or(|b| j.id < b))
        .take(limit + 1)
        .collect();
    let more = items.len() > limit;
    items.truncate(limit);
    let next = match (more, items.last()) {
        (true, Some(last)) => Some(encode_cursor('j', &last.id.to_string())),
        _ => None,
    };
    Ok(JobPage { items, next, total })
}

/// A rendered answer: its JSON and its `ETag`.
#[derive(Clone)]
pub struct Rendered {
    body: axum::body::Bytes,
    etag: HeaderValue,
}

impl Rendered {
    /// `value` as JSON, tagged with a hash of its bytes.
    pub fn of<T: Serialize>(value: &T) -> Result<Self, ApiError> {
        let body = serde_json::to_vec(value).map_err(encoding)?;
        Ok(Self::tagged(body))
    }

    /// A JSON array of `items`, each made and written in turn, so that
    /// only one item is held at a time besides the bytes (the same bytes
    /// as [`Rendered::of`] of the items collected). `capacity` is a guess
    /// at the length, such as the last answer's, to spare the buffer's
    /// doubling.
    pub fn of_each<T: Serialize>(
        items: impl IntoIterator<Item = Result<T, ApiError>>,
        capacity: usize,
    ) -> Result<Self, ApiError> {
        let mut body = Vec::with_capacity(capacity);
        body.push(b'[');
        for (n, item) in items.into_iter().enumerate() {
            if n > 0 {
                body.push(b',');
            }
            serde_json::to_writer(&mut body, &item?).map_err(encoding)?;
        }
        body.push(b']');
        Ok(Self::tagged(body))
    }

    /// The length of the JSON.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }

    fn tagged(body: Vec<u8>) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        body.hash(&mut h);
        let tag = format!("W/\"{:016x}{:08x}\"", h.finish(), body.len());
        let etag = HeaderValue::from_str(&tag).unwrap_or(HeaderValue::from_static("W/\"0\""));
        Self {
            body: body.into(),
            etag,
        }
    }

    /// The answer, or `304 Not Modified` when `If-None-Match` names its tag.
    pub fn respond(&self, headers: &HeaderMap) -> Response {
        respond(headers, self.etag.clone(), self.body.clone())
    }
}

fn encoding(e: serde_json::Error) -> ApiError {
    ApiError::internal(format!("encoding the answer: {e}"))
}

/// Summary pages rendered from one set of summaries: while the backend
/// hands out the same summaries (the same `Arc`), the same query is
/// answered with the same bytes, without rendering them again.
struct PageCache {
    summaries: std::sync::Arc<Vec<ImageSummaryView>>,
    pages: Vec<(String, Rendered)>,
}

/// Pages of one set of summaries kept; the dashboard asks for few.
const CACHED_PAGES: usize = 32;

static PAGES: std::sync::Mutex<Vec<PageCache>> = std::sync::Mutex::new(Vec::new());

/// The summary page `query` asks for from `summaries`, rendered once per
/// set of summaries and query.
pub fn summary_page(
    summaries: &std::sync::Arc<Vec<ImageSummaryView>>,
    query: &ImagesQuery,
) -> Result<Rendered, ApiError> {
    let key = serde_json::to_string(query).unwrap_or_default();
    let lock = || {
        PAGES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    if let Some(hit) = lock()
        .iter()
        .find(|c| std::sync::Arc::ptr_eq(&c.summaries, summaries))
        .and_then(|c| c.pages.iter().find(|(k, _)| *k == key))
    {
        return Ok(hit.1.clone());
    }
    let sel = select_images(summaries, query)?;
    let rendered = Rendered::of(&ImageSummaryPage {
        items: sel.items.into_iter().cloned().collect(),
        next: sel.next,
        total: sel.total,
        counts: sel.counts,
    })?;
    let mut cache = lock();
    // Holding the `Arc` keeps its address from being reused by another
    // set of summaries, so `ptr_eq` never mistakes one for another. Sets
    // the backend no longer hands out are dropped, but for the newest few
    // (several routers in one process, as in tests).
    cache.retain(|c| std::sync::Arc::strong_count(&c.summaries) > 1);
    let entry = match cache
        .iter_mut()
        .position(|c| std::sync::Arc::ptr_eq(&c.summaries, summaries))
    {
        Some(i) => &mut cache[i],
        None => {
            cache.push(PageCache {
                summaries: std::sync::Arc::clone(summaries),
                pages: Vec::new(),
            });
            let last = cache.len() - 1;
            &mut cache[last]
        }
    };
    if entry.pages.len() >= CACHED_PAGES {
        entry.pages.remove(0);
    }
    entry.pages.push((key, rendered.clone()));
    Ok(rendered)
}

/// The answer `value` as JSON with a weak `ETag` of its bytes, or `304 Not
/// Modified` when `If-None-Match` names that tag.
pub fn json_with_etag<T: Serialize>(headers: &HeaderMap, value: &T) -> Response {
    match Rendered::of(value) {
        Ok(r) => r.respond(headers),
        Err(e) => e.into_response(),
    }
}

fn respond(headers: &HeaderMap, etag: HeaderValue, body: axum::body::Bytes) -> Response {
    let tag = etag.to_str().unwrap_or_default();
    let matches = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/") == tag.trim_start_matches("W/"));
    if matches {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (
        [
            (header::ETAG, etag),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(name: &str, state: ImageState) -> ImageSummaryView {
        ImageSummaryView {
            name: name.to_owned(),
            state,
            unchecked: false,
            repository: format!("r/{name}"),
            current_version: None,
            current_digest: None,
            current_built_at: None,
            bases: Vec::new(),
            last_error: None,
            last_job: None,
            source: None,
            drift: 0,
        }
    }

    #[test]
    fn an_array_written_item_by_item_is_the_collected_array() {
        let items = [
            summary("a", ImageState::Fresh),
            summary("b", ImageState::Failing),
        ];
        for (n, capacity) in [(0, 0), (1, 3), (2, 1 << 12)] {
            let each =
                Rendered::of_each(items[..n].iter().cloned().map(Ok), capacity).expect("each");
            let all = Rendered::of(&items[..n].to_vec()).expect("all");
            assert_eq!((&each.body, &each.etag), (&all.body, &all.etag));
            assert_eq!(each.body_len(), all.body.len());
        }
        let failed = Rendered::of_each(
            [
                Ok(summary("a", ImageState::Fresh)),
                Err(ApiError::internal("gone".to_owned())),
            ],
            0,
        );
        assert!(failed.is_err());
    }

    #[test]
    fn pages_walk_every_match_once_in_name_order() {
        let all: Vec<ImageSummaryView> = (0..25)
            .map(|i| {
                let state = if i % 5 == 0 {
                    ImageState::Failing
                } else {
                    ImageState::Fresh
                };
                summary(&format!("img-{i:02}"), state)
            })
            .collect();
        let mut q = ImagesQuery {
            limit: Some(10),
            ..Default::default()
        };
        let mut seen = Vec::new();
        loop {
            let page = select_images(&all, &q).expect("page");
            assert_eq!(page.total, 25);
            assert_eq!(page.counts["failing"], 5);
            assert_eq!(page.counts["fresh"], 20);
            seen.extend(page.items.iter().map(|s| s.name.clone()));
            match page.next {
                Some(n) => q.cursor = Some(n),
                None => break,
            }
        }
        let want: Vec<String> = all.iter().map(|s| s.name.clone()).collect();
        assert_eq!(seen, want);

        let q = ImagesQuery {
            state: Some("failing".into()),
            q: Some("IMG-1".into()),
            ..Default::default()
        };
        let page = select_images(&all, &q).expect("page");
        let names: Vec<&str> = page.items.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["img-10", "img-15"]);
        assert_eq!(page.total, 2);
        assert!(page.next.is_none());
    }

    #[test]
    fn bad_parameters_are_refused_with_400() {
        let all = vec![summary("a", ImageState::Fresh)];
        for q in [
            ImagesQuery {
                limit: Some(0),
                ..Default::default()
            },
            ImagesQuery {
                limit: Some(1001),
                ..Default::default()
            },
            ImagesQuery {
                state: Some("sleepy".into()),
                ..Default::default()
            },
            ImagesQuery {
                cursor: Some("zz".into()),
                ..Default::default()
            },
            ImagesQuery {
                cursor: Some("i6".into()),
                ..Default::default()
            },
            ImagesQuery {
                cursor: Some("iff".into()),
                ..Default::default()
            },
            // A job cursor is not an image cursor.
            ImagesQuery {
                cursor: Some(encode_cursor('j', "7")),
                ..Default::default()
            },
        ] {
            let e = select_images(&all, &q).err().expect("refused");
            assert_eq!(e.status, 400, "{q:?}: {}", e.error);
        }
        let e = select_jobs(
            Vec::new(),
            &JobsQuery {
                cursor: Some(encode_cursor('j', "seven")),
                ..Default::default()
            },
        )
        .expect_err("refused");
        assert_eq!(e.status, 400);
    }

    #[test]
    fn a_cursor_is_a_name_so_a_page_stays_put_when_earlier_images_go() {
        let mut all: Vec<ImageSummaryView> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| summary(n, ImageState::Fresh))
            .collect();
        let q = ImagesQuery {
            limit: Some(2),
            ..Default::default()
        };
        let next = select_images(&all, &q).expect("page").next.expect("more");
        all.remove(0);
        let q = ImagesQuery {
            cursor: Some(next),
            ..q
        };
        let page = select_images(&all, &q).expect("page");
        let names: Vec<&str> = page.items.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["c", "d"]);
        assert!(page.next.is_none());
    }

    #[test]
    fn a_summary_page_is_rendered_once_per_set_of_summaries() {
        let q = ImagesQuery {
            view: Some(ImagesForm::Summary),
            ..Default::default()
        };
        let one = std::sync::Arc::new(vec![summary("a", ImageState::Fresh)]);
        let first = summary_page(&one, &q).expect("page");
        let again = summary_page(&one, &q).expect("page");
        assert_eq!(first.body.as_ptr(), again.body.as_ptr(), "the same bytes");
        // New summaries (the store moved): rendered again, another tag.
        let two = std::sync::Arc::new(vec![summary("a", ImageState::Failing)]);
        let moved = summary_page(&two, &q).expect("page");
        assert_ne!(moved.etag, first.etag);
        assert!(String::from_utf8_lossy(&moved.body).contains("\"failing\""));
    }

    #[test]
    fn etag_answers_304_for_the_same_body_only() {
        let value = serde_json::json!({"a": 1});
        let first = json_with_etag(&HeaderMap::new(), &value);
        assert_eq!(first.status(), StatusCode::OK);
        let tag = first.headers()[header::ETAG].clone();
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, tag.clone());
        assert_eq!(
            json_with_etag(&h, &value).status(),
            StatusCode::NOT_MODIFIED
        );
        let other = serde_json::json!({"a": 2});
        assert_eq!(json_with_etag(&h, &other).status(), StatusCode::OK);
    }
}
