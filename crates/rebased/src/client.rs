//! The CLI clients of the local API: `status`, `images`, `image`, `jobs`,
//! `log`, `rebuild`, `rollback`, `resume`.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

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
            let msg = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
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

    /// GET, as JSON.
    pub fn get(&self, path: &str) -> Result<Value> {
        let text = self.get_text(path)?;
        serde_json::from_str(&text).map_err(|e| anyhow!("GET {path}: bad JSON: {e}"))
    }

    /// POST a JSON body.
    pub fn post(&self, path: &str, body: Option<Value>) -> Result<Value> {
        let mut req = self.http.post(format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let text = self.send(req, &format!("POST {path}"))?;
        serde_json::from_str(&text).map_err(|e| anyhow!("POST {path}: bad JSON: {e}"))
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn short(d: &Value) -> String {
    let d = s(d);
    match d.strip_prefix("sha256:") {
        Some(hex) if hex.len() > 12 => format!("sha256:{}", &hex[..12]),
        _ => d,
    }
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
    let v = c.get("/v1/status")?;
    if c.json {
        return Ok(format!("{v:#}\n"));
    }
    let running = v["running"]
        .as_array()
        .map(|r| r.iter().map(s).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    Ok(format!(
        "rebased {}, up {} s\nconfig: {} (loaded {}){}\nimages: {}\nqueue: {} queued, running: {}\nlast poll: {}\nnext poll: {}\n",
        s(&v["version"]),
        s(&v["uptime_seconds"]),
        s(&v["config_file"]),
        s(&v["config_loaded_at"]),
        v["config_error"].as_str().map(|e| format!("\nconfig error: {e}")).unwrap_or_default(),
        s(&v["images"]),
        s(&v["queue_depth"]),
        if running.is_empty() { "-".to_owned() } else { running },
        s(&v["last_poll"]),
        s(&v["next_poll"]),
    ))
}

/// `rebased images`.
pub fn images(c: &Client) -> Result<String> {
    let v = c.get("/v1/images")?;
    if c.json {
        return Ok(format!("{v:#}\n"));
    }
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|i| {
            vec![
                s(&i["name"]),
                s(&i["state"]),
                s(&i["current_version"]),
                short(&i["current_digest"]),
                s(&i["repository"]),
                i["last_error"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(60)
                    .collect(),
            ]
        })
        .collect();
    Ok(table(
        &["NAME", "STATE", "VERSION", "DIGEST", "REPOSITORY", "ERROR"],
        &rows,
    ))
}

/// `rebased image NAME`: the history.
pub fn image(c: &Client, name: &str) -> Result<String> {
    let v = c.get(&format!("/v1/images/{name}"))?;
    if c.json {
        return Ok(format!("{v:#}\n"));
    }
    let mut out = format!(
        "{}: {}, current {} ({}), repository {}\n",
        s(&v["name"]),
        s(&v["state"]),
        s(&v["current_version"]),
        short(&v["current_digest"]),
        s(&v["repository"])
    );
    if let Some(e) = v["last_error"].as_str() {
        out.push_str(&format!("last error: {e}\n"));
    }
    out.push('\n');
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = v["versions"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|ver| {
            let reason = match ver["reason"].as_object() {
                Some(r) => {
                    let bases: Vec<String> = r
                        .get("bases")
                        .and_then(Value::as_array)
                        .unwrap_or(&empty)
                        .iter()
                        .filter(|b| b["before"] != b["after"])
                        .map(|b| {
                            format!(
                                "{} {} -> {}",
                                s(&b["reference"]),
                                short(&b["before"]),
                                short(&b["after"])
                            )
                        })
                        .collect();
                    let trigger = r.get("trigger").map(s).unwrap_or_default();
                    if bases.is_empty() {
                        trigger
                    } else {
                        format!("{trigger}: {}", bases.join(", "))
                    }
                }
                None => "-".to_owned(),
            };
            vec![
                s(&ver["version"]),
                short(&ver["digest"]),
                s(&ver["built_at"]),
                s(&ver["trigger"]),
                s(&ver["superseded_by"]),
                s(&ver["superseded_at"]),
                reason,
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
    let rollbacks = v["rollbacks"].as_array().unwrap_or(&empty);
    if !rollbacks.is_empty() {
        out.push_str("\nrollbacks:\n");
        let rows: Vec<Vec<String>> = rollbacks
            .iter()
            .map(|r| vec![s(&r["at"]), s(&r["from"]), s(&r["to"]), short(&r["digest"])])
            .collect();
        out.push_str(&table(&["AT", "FROM", "TO", "DIGEST"], &rows));
    }
    Ok(out)
}

/// `rebased jobs`.
pub fn jobs(c: &Client) -> Result<String> {
    let v = c.get("/v1/jobs")?;
    if c.json {
        return Ok(format!("{v:#}\n"));
    }
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|j| {
            vec![
                s(&j["id"]),
                s(&j["image"]),
                s(&j["state"]),
                s(&j["trigger"]),
                s(&j["attempts"]),
                s(&j["created_at"]),
                s(&j["finished_at"]),
                s(&j["published"]),
                j["error"].as_str().unwrap_or("").chars().take(60).collect(),
            ]
        })
        .collect();
    Ok(table(
        &[
            "ID",
            "IMAGE",
            "STATE",
            "TRIGGER",
            "ATTEMPTS",
            "QUEUED",
            "FINISHED",
            "PUBLISHED",
            "ERROR",
        ],
        &rows,
    ))
}

/// `rebased log JOB`.
pub fn log(c: &Client, job: u64) -> Result<String> {
    c.get_text(&format!("/v1/jobs/{job}/log"))
}

/// `rebased rebuild NAME`.
pub fn rebuild(c: &Client, name: &str) -> Result<String> {
    let v = c.post(&format!("/v1/images/{name}/rebuild"), None)?;
    Ok(if c.json {
        format!("{v:#}\n")
    } else {
        format!("{}\n", s(&v["detail"]))
    })
}

/// `rebased rollback NAME --to VERSION`.
pub fn rollback(c: &Client, name: &str, to: &str) -> Result<String> {
    let v = c.post(
        &format!("/v1/images/{name}/rollback"),
        Some(serde_json::json!({"to": to})),
    )?;
    Ok(if c.json {
        format!("{v:#}\n")
    } else {
        format!(
            "{name} rolled back from {} to {} ({}); held until `rebased resume {name}`\n",
            s(&v["from"]),
            s(&v["to"]),
            s(&v["digest"])
        )
    })
}

/// `rebased resume NAME`.
pub fn resume(c: &Client, name: &str) -> Result<String> {
    let v = c.post(&format!("/v1/images/{name}/resume"), None)?;
    Ok(if c.json {
        format!("{v:#}\n")
    } else {
        format!("{}\n", s(&v["detail"]))
    })
}
