//! Scenario `dashboard` (issue 19): at 10,000 images, the paged summary
//! `GET /v1/images?limit=100&view=summary` under `wrk` (target: 5,000
//! requests/s or more), the same page in full and answered `304` for its
//! `ETag`, and the fleet page's time to its first rows in headless
//! Chromium (`tests/browser/first-rows.js`, target: under 1 s).

use std::io::Read;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::fleet::{self, YEARLY};
use crate::harness::{proc_stat, Registry};
use crate::scenarios::{figure, mib, round2, wrk_with};
use crate::Sizes;

fn first_rows_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser/first-rows.js")
}

/// Runs the scenario.
pub fn dashboard(sizes: &Sizes) -> Result<Value> {
    let n = sizes.dashboard_images;
    println!(
        "\n== dashboard: {n} images, wrk -t2 -c{} -d{}s, first rows in headless Chromium",
        sizes.wrk_connections, sizes.wrk_seconds
    );
    let registry = Registry::start(None)?;
    let work = crate::harness::tempdir()?;
    let f = fleet::make(&registry, work.path(), n, 10, YEARLY)?;
    let (mut daemon, _) = fleet::start(&f, work.path())?;
    let page = daemon.get("/v1/images?limit=100&view=summary")?;
    if page["total"].as_u64() != Some(n as u64) {
        bail!("the summary page counts {} images, not {n}", page["total"]);
    }
    let mut out = serde_json::Map::new();
    let http = reqwest::blocking::Client::new();
    let summary = format!("{}/v1/images?limit=100&view=summary", daemon.api);
    let resp = http.get(&summary).send()?;
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| anyhow!("no ETag on {summary}"))?
        .to_owned();
    let plain = resp.bytes()?.len();
    let mut zipped = http
        .get(&summary)
        .header("accept-encoding", "gzip")
        .send()?;
    if zipped
        .headers()
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        != Some("gzip")
    {
        bail!("{summary} was not gzipped when asked");
    }
    let mut body = Vec::new();
    zipped.read_to_end(&mut body)?;
    figure("summary page of 100: bytes", plain, "plain JSON");
    figure(
        "summary page of 100: bytes gzipped",
        body.len(),
        "Accept-Encoding: gzip",
    );
    out.insert("page_bytes".to_owned(), json!(plain));
    out.insert("page_bytes_gzip".to_owned(), json!(body.len()));

    let if_none_match = format!("If-None-Match: {etag}");
    let runs: [(&str, String, Vec<&str>); 3] = [
        ("summary", summary.clone(), vec![]),
        (
            "full",
            format!("{}/v1/images?limit=100", daemon.api),
            vec![],
        ),
        (
            "not_modified",
            summary.clone(),
            vec![if_none_match.as_str()],
        ),
    ];
    for (name, url, headers) in &runs {
        let (rps, p99, errors) = wrk_with(url, sizes.wrk_seconds, sizes.wrk_connections, headers)?;
        let what = match *name {
            "summary" => "GET /v1/images?limit=100&view=summary",
            "full" => "GET /v1/images?limit=100 (full views)",
            _ => "the summary page, If-None-Match: 304",
        };
        figure(
            &format!("{what}: requests/s"),
            round2(rps),
            "wrk Requests/sec, wrk and rebased sharing the machine's cores",
        );
        figure(
            &format!("{what}: p99 (ms)"),
            round2(p99),
            "wrk --latency 99%",
        );
        // wrk counts a 304 as Non-2xx: for that run they are the answers.
        let errors = if *name == "not_modified" { 0 } else { errors };
        out.insert(
            (*name).to_owned(),
            json!({"requests_per_s": round2(rps), "p99_ms": round2(p99), "errors": errors}),
        );
    }

    let script = first_rows_script();
    let run = Command::new("node")
        .arg(&script)
        .current_dir(script.parent().unwrap_or(work.path()))
        .env("REBASED_URL", &daemon.api)
        .env("RUNS", sizes.first_rows_runs.to_string())
        .output()
        .context("node must be installed, and `npm ci` run in tests/browser")?;
    let text = String::from_utf8_lossy(&run.stdout);
    let result: Value = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(|| {
            anyhow!(
                "no result from {}:\n{text}\n{}",
                script.display(),
                String::from_utf8_lossy(&run.stderr)
            )
        })
        .and_then(|j| Ok(serde_json::from_str(j)?))?;
    if let Some(e) = result.get("error") {
        bail!("{}: {e}", script.display());
    }
    let runs = result["runs"].as_array().cloned().unwrap_or_default();
    let mut times: Vec<f64> = runs
        .iter()
        .filter_map(|r| r["first_rows_ms"].as_f64())
        .collect();
    if times.is_empty() {
        bail!("no first-rows times: {result}");
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    figure(
        "fleet page: first rows, median (ms)",
        round2(median),
        "performance.now() when the first row is in the DOM, a fresh browser context each run",
    );
    figure(
        "fleet page: first rows, max (ms)",
        round2(times[times.len() - 1]),
        "of the runs",
    );
    out.insert("first_rows_ms_median".to_owned(), json!(round2(median)));
    out.insert("first_rows".to_owned(), Value::Array(runs));
    let stat = proc_stat(daemon.pid(), crate::harness::clock_ticks())?;
    figure(
        "daemon peak RSS after the load (MiB)",
        mib(stat.hwm_kib),
        "VmHWM",
    );
    out.insert("peak_rss_mib".to_owned(), json!(mib(stat.hwm_kib)));
    out.insert("images".to_owned(), json!(n));
    daemon.stop()?;
    Ok(Value::Object(out))
}
