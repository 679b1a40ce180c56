//! The CLI clients of the local API: `status`, `images`, `image`, `jobs`,
//! `log`, `check`, `rebuild`, `rollback`, `resume`.
//!
//! Answers are deserialised into rebased-api's view types, the types the
//! daemon serialises; the tables print each value as the API writes it
//! (times in RFC 3339), `-` for an absent one. `--json` prints the answer's
//! JSON as it came.

use std::fmt::Display;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use rebased_api::pages::ImageSummaryView;
use rebased_api::{
    Accepted, ApiError, CheckRequest, ImageView, JobView, ReasonView, RollbackRequest,
    RollbackView, StatusView,
};
use rebased_core::{Digest, ImageState};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Where the API is and how to authenticate.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// The API's base URL (default: from --config's daemon.listen, else http://127.0.0.1:8780).
    #[arg(long)]
    pub api: Option<String>,
    /// Read daemon.listen from this config to find the API.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// A file holding the API token (else $REBASED_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A client of the API.
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::blocking::Client,
    /// `--json`.
    pub json: bool,
}

impl Client {
    /// Resolves the URL and token.
    pub fn new(args: &ApiArgs) -> Result<Self> {
        let base = match (&args.api, &args.config) {
            (Some(api), _) => api.trim_end_matches('/').to_owned(),
            (None, Some(cfg)) => {
                let cfg = crate::config::load(cfg)?;
                let listen = cfg.daemon.listen;
                if listen.starts_with("unix:") {
                    bail!("daemon.listen is {listen}: this client speaks TCP only; pass --api http://HOST:PORT");
                }
                format!("http://{listen}")
            }
            (None, None) => "http://127.0.0.1:8780".to_owned(),
        };
        let token = match &args.token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read token file {}", f.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => std::env::var("REBASED_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        };
        let http = reqwest::blocking::Client::builder()
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            base,
            token,
            http,
            json: args.json,
        })
    }

    fn send(&self, req: reqwest::blocking::RequestBuilder, what: &str) -> Result<String> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req
            .send()
            .with_context(|| format!("{what}: cannot reach the API at {}", self.base))?;
        let status = resp.status();
        let body = resp.text().unwrap_or_default();
        if !status.is_success() {
            let msg = serde_json::from_str::<ApiError>(&body)
                .map(|e| e.error)
                .unwrap_or(body);
            bail!("{what}: {status}: {msg}");
        }
        Ok(body)
    }

    /// GET, as text.
    pub fn get_text(&self, path: &str) -> Result<String> {
        self.send(
            self.http.get(format!("{}{path}", self.base)),
            &format!("GET {path}"),
        )
    }

    /// GET `path` and show it: its JSON with `--json`, else `render` of the
    /// view it deserialises to.
    fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        render: impl FnOnce(T) -> String,
    ) -> Result<String> {
        let text = self.get_text(path)?;
        self.show(&format!("GET {path}"), &text, render)
    }

    /// POST `body` (JSON) to `path` and show the answer like [`Client::get`].
    fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&impl Serialize>,
        render: impl FnOnce(T) -> String,
    ) -> Result<String> {
        let mut req = self.http.post(format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(b);
        }
        let what = format!("POST {path}");
        let text = self.send(req, &what)?;
        self.show(&what, &text, render)
    }

    /// Every entry of a paged list: `path?limit=1000&QUERY`, then each
    /// `next` page, shown like [`Client::get`] as one array.
    fn get_pages<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &str,
        render: impl FnOnce(Vec<T>) -> String,
    ) -> Result<String> {
        #[derive(serde::Deserialize)]
        struct Page {
            items: Vec<serde_json::Value>,
            next: Option<String>,
        }
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{path}?limit=1000");
            if !query.is_empty() {
                url.push('&');
                url.push_str(query);
            }
            if let Some(c) = &cursor {
                url.push_str("&cursor=");
                url.push_str(c);
            }
            let text = self.get_text(&url)?;
            let page: Page =
                serde_json::from_str(&text).map_err(|e| anyhow!("GET {url}: bad JSON: {e}"))?;
            items.extend(page.items);
            match page.next {
                // A cursor that does not move would loop for ever.
                Some(n) if cursor.as_ref() != Some(&n) => cursor = Some(n),
                _ => break,
            }
        }
        let text = serde_json::Value::Array(items).to_string();
        self.show(&format!("GET {path}"), &text, render)
    }

    fn show<T: DeserializeOwned>(
        &self,
        what: &str,
        text: &str,
        render: impl FnOnce(T) -> String,
    ) -> Result<String> {
        if self.json {
            let v: serde_json::Value =
                serde_json::from_str(text).map_err(|e| anyhow!("{what}: bad JSON: {e}"))?;
            return Ok(format!("{v:#}\n"));
        }
        let view = serde_json::from_str(text).map_err(|e| anyhow!("{what}: bad JSON: {e}"))?;
        Ok(render(view))
    }
}

/// A value as the API writes it, `-` when absent.
fn or_dash<T: Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// A time as the API writes it (RFC 3339, UTC as `Z`, as many fraction
/// digits as it has).
fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn opt_time(t: Option<&DateTime<Utc>>) -> String {
    or_dash(t.map(time))
}

/// `sha256:` and the first 12 hex digits; `-` when absent.
fn short(d: Option<&Digest>) -> String {
    let Some(d) = d else {
        return "-".to_owned();
    };
    let d = d.to_string();
    match d.strip_prefix("sha256:") {
        Some(hex) if hex.len() > 12 => format!("sha256:{}", &hex[..12]),
        _ => d,
    }
}

/// An error in at most [`BRIEF`] characters, empty when there is none: a
/// longer one keeps its start (what failed) and its end (the cause), the
/// middle shortened to `...`.
fn brief(e: Option<&String>) -> String {
    let Some(e) = e else {
        return String::new();
    };
    let chars: Vec<char> = e.chars().collect();
    if chars.len() <= BRIEF {
        return e.clone();
    }
    let head = BRIEF / 3;
    let tail = BRIEF - head - 3;
    let start: String = chars[..head].iter().collect();
    let end: String = chars[chars.len() - tail..].iter().collect();
    format!("{}...{}", start.trim_end(), end.trim_start())
}

/// The widest an error column gets.
const BRIEF: usize = 80;

/// The state an image is shown in: `unchecked` for a stale (or never
/// decided) image whose base could not be checked.
fn shown_state(state: ImageState, unchecked: bool) -> String {
    match state {
        ImageState::Stale if unchecked => "unchecked".to_owned(),
        s => s.to_string(),
    }
}

/// Why an image is not fresh, in a line: its last error, else the first
/// base whose check failed.
fn image_error(i: &ImageSummaryView) -> Option<String> {
    i.last_error.clone().or_else(|| {
        i.bases.iter().find_map(|b| {
            b.error
                .as_ref()
                .map(|e| format!("base {}: {e}", b.reference))
        })
    })
}

/// Left-aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.clone()));
    }
    out.push('\n');
    out
}

/// `rebased status`.
pub fn status(c: &Client) -> Result<String> {
    c.get("/v1/status", |v: StatusView| {
        let running = if v.running.is_empty() {
            "-".to_owned()
        } else {
            v.running.join(", ")
        };
        format!(
            "rebased {}, up {} s\nconfig: {} (loaded {}){}\nimages: {}\nqueue: {} queued, running: {}\nlast poll: {}\nnext poll: {}\n",
            v.version,
            v.uptime_seconds,
            v.config_file,
            time(&v.config_loaded_at),
            v.config_error.map(|e| format!("\nconfig error: {e}")).unwrap_or_default(),
            v.images,
            v.queue_depth,
            running,
            opt_time(v.last_poll.as_ref()),
            opt_time(v.next_poll.as_ref()),
        )
    })
}

/// `rebased images`: every page of the summaries, in name order.
pub fn images(c: &Client) -> Result<String> {
    c.get_pages(
        "/v1/images",
        "view=summary",
        |images: Vec<ImageSummaryView>| {
            let rows: Vec<Vec<String>> = images
                .iter()
                .map(|i| {
                    vec![
                        i.name.clone(),
                        shown_state(i.state, i.unchecked),
                        or_dash(i.current_version.as_ref()),
                        short(i.current_digest.as_ref()),
                        i.repository.clone(),
                        brief(image_error(i).as_ref()),
                    ]
                })
                .collect();
            table(
                &["NAME", "STATE", "VERSION", "DIGEST", "REPOSITORY", "ERROR"],
                &rows,
            )
        },
    )
}

/// Why a version was superseded: the trigger and each base that moved.
fn reason(r: Option<&ReasonView>) -> String {
    let Some(r) = r else {
        return "-".to_owned();
    };
    let mut bases: Vec<String> = r
        .bases
        .iter()
        .filter(|b| b.before.as_ref() != Some(&b.after))
        .map(|b| {
            format!(
                "{} {} -> {}",
                b.reference,
                short(b.before.as_ref()),
                short(Some(&b.after))
            )
        })
        .collect();
    // The source's move, commits (or content hashes) shortened.
    if let Some(s) = r
        .source
        .as_ref()
        .filter(|s| s.before.as_ref() != Some(&s.after))
    {
        let cut = |c: &str| {
            c.trim_start_matches("sha256:")
                .chars()
                .take(7)
                .collect::<String>()
        };
        bases.insert(
            0,
            format!(
                "source {} -> {}",
                s.before.as_deref().map_or("-".to_owned(), cut),
                cut(&s.after)
            ),
        );
    }
    if bases.is_empty() {
        r.trigger.to_string()
    } else {
        format!("{}: {}", r.trigger, bases.join(", "))
    }
}

/// `rebased image NAME`: the history.
pub fn image(c: &Client, name: &str) -> Result<String> {
    c.get(&format!("/v1/images/{name}"), |v: ImageView| {
        let mut out = format!(
            "{}: {}, current {} ({}), repository {}\n",
            v.name,
            shown_state(v.state, v.unchecked),
            or_dash(v.current_version.as_ref()),
            short(v.current_digest.as_ref()),
            v.repository
        );
        if let Some(e) = &v.last_error {
            out.push_str(&format!("last error: {e}\n"));
        }
        if let Some(s) = &v.source {
            out.push_str(&format!(
                "source: {} ref {} dir {}, commit {}{}\n",
                s.url,
                s.reference,
                if s.dir.is_empty() { "." } else { &s.dir },
                or_dash(s.commit.as_deref()),
                s.error
                    .as_deref()
                    .map(|e| format!(", error: {e}"))
                    .unwrap_or_default()
            ));
        }
        if !v.bases.is_empty() {
            out.push_str("\nbases:\n");
            let rows: Vec<Vec<String>> = v
                .bases
                .iter()
                .map(|b| {
                    vec![
                        b.reference.clone(),
                        short(b.digest.as_ref()),
                        opt_time(b.last_checked.as_ref()),
                        b.error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            out.push_str(&table(&["BASE", "DIGEST", "CHECKED", "ERROR"], &rows));
        }
        out.push('\n');
        let rows: Vec<Vec<String>> = v
            .versions
            .iter()
            .map(|ver| {
                vec![
                    ver.version.to_string(),
                    short(Some(&ver.digest)),
                    time(&ver.built_at),
                    ver.trigger.to_string(),
                    or_dash(ver.superseded_by.as_ref()),
                    opt_time(ver.superseded_at.as_ref()),
                    reason(ver.reason.as_ref()),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "VERSION",
                "DIGEST",
                "BUILT",
                "TRIGGER",
                "SUPERSEDED BY",
                "AT",
                "REASON",
            ],
            &rows,
        ));
        // The table shows each version's latest supersession; a version
        // superseded more than once (a rollback to it, then a new build)
        // has its whole history here.
        let again: Vec<Vec<String>> = v
            .versions
            .iter()
            .filter(|ver| ver.supersessions.len() > 1)
            .flat_map(|ver| {
                ver.supersessions.iter().map(move |s| {
                    vec![
                        ver.version.to_string(),
                        s.by.to_string(),
                        time(&s.at),
                        reason(Some(&s.reason)),
                    ]
                })
            })
            .collect();
        if !again.is_empty() {
            out.push_str("\nsuperseded more than once:\n");
            out.push_str(&table(&["VERSION", "BY", "AT", "REASON"], &again));
        }
        if !v.rollbacks.is_empty() {
            out.push_str("\nrollbacks:\n");
            let rows: Vec<Vec<String>> = v
                .rollbacks
                .iter()
                .map(|r| {
                    vec![
                        time(&r.at),
                        or_dash(r.from.as_ref()),
                        r.to.to_string(),
                        short(Some(&r.digest)),
                    ]
                })
                .collect();
            out.push_str(&table(&["AT", "FROM", "TO", "DIGEST"], &rows));
        }
        out
    })
}

/// `rebased jobs`: every page, shown oldest first.
pub fn jobs(c: &Client) -> Result<String> {
    c.get_pages("/v1/jobs", "", |jobs: Vec<JobView>| {
        let rows: Vec<Vec<String>> = jobs
            .iter()
            .rev()
            .map(|j| {
                // A queued job after a failure: when it tries again.
                let state = if j.state == "queued" && j.attempts > 0 {
                    format!("queued, retry at {}", time(&j.not_before))
                } else {
                    j.state.clone()
                };
                vec![
                    j.id.to_string(),
                    j.image.clone(),
                    state,
                    j.trigger.to_string(),
                    j.attempts.to_string(),
                    time(&j.created_at),
                    opt_time(j.finished_at.as_ref()),
                    or_dash(j.published.as_ref()),
                    // Why it failed, else why it published nothing.
                    brief(j.error.as_ref().or(j.note.as_ref())),
                ]
            })
            .collect();
        table(
            &[
                "ID",
                "IMAGE",
                "STATE",
                "TRIGGER",
                "ATTEMPTS",
                "QUEUED",
                "FINISHED",
                "PUBLISHED",
                "ERROR / NOTE",
            ],
            &rows,
        )
    })
}

/// `rebased log JOB`.
pub fn log(c: &Client, job: u64) -> Result<String> {
    c.get_text(&format!("/v1/jobs/{job}/log"))
}

/// `rebased rebuild NAME [--force]`.
pub fn rebuild(c: &Client, name: &str, force: bool) -> Result<String> {
    let query = if force { "?force=true" } else { "" };
    c.post(
        &format!("/v1/images/{name}/rebuild{query}"),
        None::<&()>,
        |a: Accepted| format!("{}\n", a.detail),
    )
}

/// `rebased check [REFERENCE]`: every base now, or one.
pub fn check(c: &Client, reference: Option<&str>) -> Result<String> {
    let body = CheckRequest {
        reference: reference.map(str::to_owned),
    };
    c.post("/v1/check", Some(&body), |a: Accepted| {
        format!("{}; `rebased images` shows what it finds\n", a.detail)
    })
}

/// `rebased rollback NAME --to VERSION`.
pub fn rollback(c: &Client, name: &str, to: &str) -> Result<String> {
    let body = RollbackRequest { to: to.to_owned() };
    c.post(
        &format!("/v1/images/{name}/rollback"),
        Some(&body),
        |r: RollbackView| {
            format!(
                "{name} rolled back from {} to {} ({}); held until `rebased resume {name}`\n",
                or_dash(r.from.as_ref()),
                r.to,
                r.digest
            )
        },
    )
}

/// `rebased resume NAME`.
pub fn resume(c: &Client, name: &str) -> Result<String> {
    c.post(
        &format!("/v1/images/{name}/resume"),
        None::<&()>,
        |a: Accepted| format!("{}\n", a.detail),
    )
}

/// `rebased audit [NAME]`: the immutability audit now, and its findings.
pub fn audit(c: &Client, name: Option<&str>) -> Result<String> {
    let body = rebased_api::AuditRequest {
        image: name.map(str::to_owned),
    };
    c.post(
        "/v1/audit",
        Some(&body),
        |audits: Vec<rebased_api::AuditView>| {
            let mut out = String::new();
            for a in &audits {
                if a.findings.is_empty() {
                    out.push_str(&format!("{}: {} versions, no drift\n", a.image, a.versions));
                }
                for f in &a.findings {
                    out.push_str(&format!(
                        "{}: {} {} (version {}): expected {}, found {}{}\n",
                        a.image,
                        f.kind,
                        f.tag,
                        f.version,
                        f.expected,
                        f.found.as_deref().unwrap_or("nothing"),
                        f.repaired
                            .as_ref()
                            .map(|r| format!("; repaired: {r}"))
                            .unwrap_or_default()
                    ));
                }
                for e in &a.errors {
                    out.push_str(&format!("{}: not checked: {e}\n", a.image));
                }
            }
            out
        },
    )
}

/// `rebased notify-test NAME`: a test event for one notifier.
pub fn notify_test(c: &Client, name: &str) -> Result<String> {
    c.post(
        &format!("/v1/notifiers/{name}/test"),
        None::<&()>,
        |a: Accepted| format!("{}\n", a.detail),
    )
}

/// `rebased notifiers`: every notifier.
pub fn notifiers(c: &Client) -> Result<String> {
    c.get("/v1/notifiers", |ns: Vec<rebased_api::NotifierView>| {
        let rows: Vec<Vec<String>> = ns
            .iter()
            .map(|n| {
                vec![
                    n.name.clone(),
                    n.kind.clone(),
                    n.pending.to_string(),
                    n.delivered.to_string(),
                    n.dropped.to_string(),
                    opt_time(n.last_success.as_ref()),
                    n.last_error.clone().unwrap_or_else(|| "-".to_owned()),
                ]
            })
            .collect();
        table(
            &[
                "NAME",
                "KIND",
                "PENDING",
                "DELIVERED",
                "DROPPED",
                "LAST SUCCESS",
                "LAST ERROR",
            ],
            &rows,
        )
    })
}

/// `rebased audit --no-wait [NAME]`: the audit started, not awaited.
pub fn audit_start(c: &Client, name: Option<&str>) -> Result<String> {
    let body = rebased_api::AuditRequest {
        image: name.map(str::to_owned),
    };
    c.post(
        "/v1/audit?wait=false",
        Some(&body),
        |started: rebased_api::AuditStarted| {
            format!(
                "audit of {} image(s) started at {}: `rebased status` shows when it ran, `rebased image NAME` what it found\n",
                started.images.len(),
                started.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        },
    )
}

/// `rebased sources`: every git source.
pub fn sources(c: &Client) -> Result<String> {
    c.get("/v1/sources", |sources: Vec<rebased_api::SourceView>| {
        let rows: Vec<Vec<String>> = sources
            .iter()
            .map(|s| {
                vec![
                    s.url.clone(),
                    s.reference.clone(),
                    s.commit
                        .as_deref()
                        .map_or_else(|| "-".to_owned(), |c| c.chars().take(12).collect()),
                    opt_time(s.last_checked.as_ref()),
                    s.dependents.join(","),
                    brief(s.error.as_ref()),
                ]
            })
            .collect();
        table(
            &["URL", "REF", "COMMIT", "CHECKED", "IMAGES", "ERROR"],
            &rows,
        )
    })
}

/// `rebased engines`: every remote build engine.
pub fn engines(c: &Client) -> Result<String> {
    c.get("/v1/engines", |engines: Vec<rebased_api::EngineView>| {
        let rows: Vec<Vec<String>> = engines
            .iter()
            .map(|e| {
                vec![
                    e.name.clone(),
                    e.url.clone(),
                    e.state.clone(),
                    format!("{}/{}", e.running, e.max_builds),
                    e.done.to_string(),
                    e.failed.to_string(),
                    e.lost.to_string(),
                    if e.platforms.is_empty() {
                        "-".to_owned()
                    } else {
                        e.platforms.join(",")
                    },
                    brief(e.last_error.as_ref()),
                ]
            })
            .collect();
        table(
            &[
                "NAME",
                "URL",
                "STATE",
                "RUNNING",
                "DONE",
                "FAILED",
                "LOST",
                "PLATFORMS",
                "ERROR",
            ],
            &rows,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// issue 22: the ERROR column was cut at 60 characters, before the cause.
    #[test]
    fn a_long_error_keeps_its_start_and_its_cause() {
        let e = "listing the tags of 127.0.0.1:5999/hello: 127.0.0.1:5999/hello (registry 127.0.0.1:5999): unreachable: cannot connect: error sending request: Connection refused (os error 111)".to_owned();
        let b = brief(Some(&e));
        assert!(b.chars().count() <= BRIEF, "{b}");
        assert!(b.starts_with("listing the tags of"), "{b}");
        assert!(b.ends_with("Connection refused (os error 111)"), "{b}");
        assert!(b.contains("..."), "{b}");
        let short_one = "cannot read Dockerfile".to_owned();
        assert_eq!(brief(Some(&short_one)), short_one);
        assert_eq!(brief(None), "");
    }
}
