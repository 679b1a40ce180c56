//! Scenario 9, `notify`: events through a `webhook` notifier. The events
//! are test events (`POST /v1/notifiers/NAME/test`, each a flushed log
//! entry, like any event), posted from 4 threads as fast as the API takes
//! them; a loopback HTTP/1.1 receiver (keep-alive, answers 200 at once)
//! counts the deliveries and checks that they come in order, once per
//! delivery id, signed. Measured: the delivery rate (first POST to last
//! delivery), the largest outbox depth seen, the daemon's RSS before and
//! at its peak, and how much the store grew.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::harness::{clock_ticks, free_port, proc_stat, tempdir, wait_for, write_config, Daemon};
use crate::scenarios::{figure, mib, round2};
use crate::Sizes;

/// What the receiver saw.
#[derive(Default)]
struct Seen {
    /// (delivery id, seq, when), in arrival order.
    deliveries: Vec<(String, u64, Instant)>,
    /// Anything wrong with a request.
    problems: Vec<String>,
}

/// Serves one keep-alive connection.
fn serve(stream: TcpStream, seen: &Mutex<Seen>) {
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(clone);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut len = 0usize;
        let mut id = String::new();
        let mut signed = false;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "x-rebased-delivery" => id = v.trim().to_owned(),
                    "x-rebased-signature-256" => signed = v.trim().starts_with("sha256="),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let seq = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["seq"].as_u64());
        {
            let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
            match seq {
                Some(seq) if signed && !id.is_empty() => {
                    s.deliveries.push((id, seq, Instant::now()))
                }
                _ => s
                    .problems
                    .push(format!("unsigned, unnamed or no seq: {line}")),
            }
        }
        if out
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

/// Bytes of the files under `dir`.
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => bytes_under(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Scenario 9.
pub fn notify(sizes: &Sizes) -> Result<Value> {
    let n = sizes.notify_events;
    println!("\n== notify: {n} events through a webhook notifier");
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let seen = Arc::new(Mutex::new(Seen::default()));
    {
        let seen = Arc::clone(&seen);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = Arc::clone(&seen);
                thread::spawn(move || serve(stream, &seen));
            }
        });
    }
    let work = tempdir()?;
    let secret = work.path().join("secret");
    std::fs::write(&secret, "bench-key\n")?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let config = write_config(
        work.path(),
        &listen,
        "127.0.0.1:1",
        "",
        &format!(
            "\n[[notify]]\nname = \"bench\"\nkind = \"webhook\"\nurl = \"{url}\"\nsecret_file = \"{}\"\n",
            secret.display()
        ),
    )?;
    let mut daemon = Daemon::start(&config, &listen, &work.path().join("daemon.log"))?;
    let db = work.path().join("state").join("db");
    let ticks = clock_ticks();
    let pid = daemon.pid();
    // One event first: the notifier, its outbox and its connection are up.
    daemon.post("/v1/notifiers/bench/test")?;
    wait_for(
        "the first delivery",
        Duration::from_secs(60),
        Duration::from_millis(10),
        || {
            Ok((!seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .deliveries
                .is_empty())
            .then_some(()))
        },
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let before = proc_stat(pid, ticks)?;
    let db_before = bytes_under(&db);
    let t0 = Instant::now();
    let api = daemon.api.clone();
    let posters: Vec<_> = (0..4)
        .map(|t| {
            let api = api.clone();
            thread::spawn(move || -> Result<()> {
                let http = reqwest::blocking::Client::new();
                for _ in (t..n).step_by(4) {
                    let r = http.post(format!("{api}/v1/notifiers/bench/test")).send()?;
                    if !r.status().is_success() {
                        bail!("POST test: {}", r.status());
                    }
                }
                Ok(())
            })
        })
        .collect();
    // Sample the outbox depth and RSS while it runs.
    let mut max_pending = 0u64;
    let mut max_rss = before.rss_kib;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut posts_done = None;
    loop {
        let delivered = seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .deliveries
            .len();
        if posts_done.is_none() && posters.iter().all(|p| p.is_finished()) {
            posts_done = Some(t0.elapsed());
        }
        if delivered > n {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} events delivered in 600 s",
                delivered.saturating_sub(1)
            );
        }
        if let Ok(v) = daemon.get("/v1/notifiers") {
            max_pending = max_pending.max(v[0]["pending"].as_u64().unwrap_or(0));
        }
        max_rss = max_rss.max(proc_stat(pid, ticks)?.rss_kib);
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in posters {
        match p.join() {
            Ok(r) => r?,
            Err(_) => bail!("a POST thread panicked"),
        }
    }
    let posts_s = posts_done.unwrap_or_else(|| t0.elapsed()).as_secs_f64();
    let after = proc_stat(pid, ticks)?;
    let db_after = bytes_under(&db);
    let s = seen.lock().unwrap_or_else(|p| p.into_inner());
    if !s.problems.is_empty() {
        bail!(
            "bad deliveries: {:?}",
            &s.problems[..s.problems.len().min(3)]
        );
    }
    let last = s.deliveries.last().map_or(t0, |d| d.2);
    let seconds = last.duration_since(t0).as_secs_f64();
    let ids: BTreeSet<&String> = s.deliveries.iter().map(|d| &d.0).collect();
    let in_order = s.deliveries.windows(2).all(|w| w[0].1 < w[1].1);
    let once = ids.len() == s.deliveries.len();
    let rate = n as f64 / seconds.max(1e-9);
    figure(
        "events logged per second (test POSTs, 4 clients)",
        round2(n as f64 / posts_s.max(1e-9)),
        "n / time of the POSTs; each is a flushed store transaction",
    );
    figure(
        "deliveries per second",
        round2(rate),
        "n / (last delivery - first POST); one request per event, in order",
    );
    figure(
        "largest outbox depth seen",
        max_pending,
        "GET /v1/notifiers every 20 ms",
    );
    figure(
        "RSS before / peak during (MiB)",
        format!("{} / {}", mib(before.rss_kib), mib(max_rss)),
        "VmRSS, sampled every 20 ms",
    );
    figure(
        "store growth (MiB)",
        round2((db_after.saturating_sub(db_before)) as f64 / (1 << 20) as f64),
        "bytes under state_dir/db after - before",
    );
    let out = json!({
        "events": n,
        "logged_per_s": round2(n as f64 / posts_s.max(1e-9)),
        "seconds": round2(seconds),
        "deliveries_per_s": round2(rate),
        "delivered": s.deliveries.len() - 1,
        "in_order": in_order,
        "once_per_id": once,
        "max_outbox_depth": max_pending,
        "rss_mib_before": mib(before.rss_kib),
        "rss_mib_peak": mib(max_rss),
        "rss_mib_after": mib(after.rss_kib),
        "store_bytes_before": db_before,
        "store_bytes_after": db_after,
    });
    drop(s);
    daemon.stop()?;
    Ok(out)
}
