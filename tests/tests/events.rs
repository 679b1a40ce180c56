//! The event stream: `GET /v1/events` read by a real SSE client (a line
//! reader over reqwest's response body) that reconnects with
//! `Last-Event-ID`, and the `?after=N` JSON pages.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rebased_e2e::{image_table, Daemon, Setup};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(180);

/// One SSE message as a client reads it.
#[derive(Debug, Clone)]
struct Message {
    id: Option<u64>,
    event: String,
    data: Value,
}

/// A connected SSE client: each message arrives on `rx`; comments
/// (`: ping`) are counted apart. Dropping it ends the connection (the
/// reader thread ends with its next read).
struct Client {
    rx: mpsc::Receiver<Message>,
    pings: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Client {
    fn connect(d: &Daemon, last_event_id: Option<u64>) -> Self {
        let mut req = reqwest::blocking::Client::builder()
            .timeout(None)
            .build()
            .unwrap()
            .get(format!("{}/v1/events", d.api))
            .header("Accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream"),
            "{:?}",
            resp.headers()
        );
        let (tx, rx) = mpsc::channel();
        let pings = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = std::sync::Arc::clone(&pings);
        thread::spawn(move || {
            let mut id = None;
            let mut event = String::new();
            let mut data = String::new();
            for line in BufReader::new(resp).lines() {
                let Ok(line) = line else { return };
                if line.is_empty() {
                    if !data.is_empty() {
                        let msg = Message {
                            id: id.take(),
                            event: std::mem::take(&mut event),
                            data: serde_json::from_str(&data).unwrap(),
                        };
                        data.clear();
                        if tx.send(msg).is_err() {
                            return;
                        }
                    }
                    id = None;
                    continue;
                }
                if line == ": ping" {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().parse::<u64>().unwrap());
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
        });
        Self { rx, pings }
    }

    /// The persisted events (with an `id:`) until `until` says stop, the
    /// job messages apart.
    fn events_until(
        &self,
        mut until: impl FnMut(&Message) -> bool,
    ) -> (Vec<Message>, Vec<Message>) {
        let deadline = Instant::now() + WAIT;
        let (mut events, mut jobs) = (Vec::new(), Vec::new());
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self
                .rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no such event; got {events:?}"));
            if m.id.is_some() {
                let stop = until(&m);
                events.push(m);
                if stop {
                    return (events, jobs);
                }
            } else {
                jobs.push(m);
            }
        }
    }
}

fn is_published(m: &Message, version: &str) -> bool {
    m.event == "published" && m.data["version"] == version
}

#[test]
fn a_reconnect_with_last_event_id_gets_exactly_the_missed_events() {
    let s = Setup::new();
    let host = s.host();
    let ctx = s.context(
        "web",
        &format!("FROM {host}/base:latest\nCOPY hello /hello\n"),
    );
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"0s\"\n",
        &image_table("web", &ctx, &format!("{host}/web"), ""),
    );
    let daemon = s.start();

    // Connected before anything happened: the publish arrives live, with
    // the job's messages (no id) before it.
    let first = Client::connect(&daemon, None);
    // (The first build may be done before the connection: then it is replayed.)
    let (events, _) = first.events_until(|m| is_published(m, "1.0.0"));
    let published = events.last().unwrap().clone();
    let seq = published.id.unwrap();
    assert_eq!(published.data["seq"], seq);
    assert_eq!(published.data["type"], "published");
    assert_eq!(published.data["image"], "web");
    assert_eq!(published.data["repository"], format!("{host}/web"));
    assert!(published.data["digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    let job = published.data["job"].as_u64().unwrap();
    assert_eq!(published.data["log_url"], format!("/v1/jobs/{job}/log"));
    // Absent, not null.
    assert!(
        published.data.get("previous_version").is_none(),
        "{:?}",
        published.data
    );
    drop(first);

    // While no client is connected: a base update publishes 1.0.1, and a
    // rollback holds the image.
    s.bases.push(&s.registry, "base:latest", "v2");
    daemon.wait_version("web", "1.0.1", WAIT);
    daemon.cli(&["rollback", "web", "--to", "1.0.0"]);

    // The reconnect replays exactly what came after `seq`, in order,
    // then follows live.
    let second = Client::connect(&daemon, Some(seq));
    let (missed, _) = second.events_until(|m| m.event == "held");
    let ids: Vec<u64> = missed.iter().map(|m| m.id.unwrap()).collect();
    let page = daemon.get(&format!("/v1/events?after={seq}"));
    let logged: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, logged, "the replay is the log after {seq}");
    assert_eq!(
        ids.first(),
        Some(&(seq + 1)),
        "nothing missed, nothing repeated"
    );
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    let types: Vec<&str> = missed.iter().map(|m| m.event.as_str()).collect();
    assert_eq!(types, ["published", "rolled_back", "held"], "{missed:?}");
    let republished = &missed[0].data;
    assert_eq!(republished["version"], "1.0.1");
    assert_eq!(republished["previous_version"], "1.0.0");
    let bases = republished["reason"]["bases"].as_array().unwrap();
    assert_eq!(bases[0]["reference"], format!("{host}/base:latest"));
    assert_ne!(bases[0]["before"], bases[0]["after"]);
    assert_eq!(missed[1].data["version"], "1.0.0");
    assert_eq!(missed[1].data["previous_version"], "1.0.1");
    assert_eq!(missed[2].data["detail"], "rolled back to 1.0.0");
    assert_eq!(page["next"], *ids.last().unwrap());

    // Live after the replay: the resume.
    daemon.cli(&["resume", "web"]);
    let (live, _) = second.events_until(|m| m.event == "resumed");
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].id, Some(ids.last().unwrap() + 1));
    // The resumed image is stale (base v2 after 1.0.0): it is rebuilt,
    // and that arrives live too.
    let (rebuilt, jobs) = second.events_until(|m| is_published(m, "1.0.2"));
    assert_eq!(
        rebuilt.first().unwrap().id,
        Some(ids.last().unwrap() + 2),
        "{rebuilt:?}"
    );
    // Its job's changes as live-only messages (no id), before the publish.
    let job = rebuilt.last().unwrap().data["job"].as_u64().unwrap();
    let states: Vec<&str> = jobs
        .iter()
        .filter(|j| j.event == "job" && j.data["job"] == job && j.data["image"] == "web")
        .map(|j| j.data["state"].as_str().unwrap())
        .collect();
    assert!(states.contains(&"running"), "{jobs:?}");

    // `?after=N` in pages.
    let one = daemon.get(&format!("/v1/events?after={seq}&limit=1"));
    assert_eq!(one["events"].as_array().unwrap().len(), 1);
    assert_eq!(one["next"], seq + 1);
    let end = daemon.get("/v1/events?after=1000000");
    assert_eq!(end["events"], serde_json::json!([]));
    assert_eq!(end["next"], 1_000_000);
    let bad = reqwest::blocking::get(format!("{}/v1/events?limit=5000", daemon.api)).unwrap();
    assert_eq!(bad.status().as_u16(), 400);

    // A keep-alive comment every 15 s on an open stream.
    rebased_e2e::wait_for("a : ping", Duration::from_secs(20), || {
        (second.pings.load(std::sync::atomic::Ordering::SeqCst) > 0).then_some(())
    });
}
