//! Notifiers against real HTTP receivers on loopback: the `webhook` kind
//! through a base update -> publish -> failing build -> rollback, with a
//! receiver that fails and hangs, and across a kill -9 of the daemon.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use rebased_e2e::{image_table, rebased_bin, wait_for, Daemon, Setup};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(180);
const SECRET: &str = "s3cret-hmac-key";

/// One request the receiver read.
#[derive(Debug, Clone)]
struct Request {
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    /// The status it was answered with (0: hung past the sender's timeout).
    status: u16,
}

/// How the receiver answers the n-th request (from 0).
type Script = dyn Fn(usize) -> Answer + Send + Sync;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Answer {
    Ok,
    Fail,
    Hang,
}

/// A loopback HTTP/1.1 receiver that records every request.
struct Receiver {
    url: String,
    seen: Arc<Mutex<Vec<Request>>>,
    script: Arc<Mutex<Arc<Script>>>,
}

impl Receiver {
    fn start(script: impl Fn(usize) -> Answer + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Mutex<Arc<Script>>> = Arc::new(Mutex::new(Arc::new(script)));
        let (s, sc) = (Arc::clone(&seen), Arc::clone(&script));
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (s, sc) = (Arc::clone(&s), Arc::clone(&sc));
                thread::spawn(move || serve(stream, &s, &sc));
            }
        });
        Self { url, seen, script }
    }

    fn set(&self, script: impl Fn(usize) -> Answer + Send + Sync + 'static) {
        *self.script.lock().unwrap() = Arc::new(script);
    }

    fn seen(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }

    /// The requests answered 200, in order.
    fn accepted(&self) -> Vec<Request> {
        self.seen()
            .into_iter()
            .filter(|r| r.status == 200)
            .collect()
    }
}

fn serve(stream: TcpStream, seen: &Mutex<Vec<Request>>, script: &Mutex<Arc<Script>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut headers = BTreeMap::new();
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        assert!(line.starts_with("POST /hook"), "{line}");
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
        let len: usize = headers["content-length"].parse().unwrap();
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        let n = seen.lock().unwrap().len();
        let answer = (script.lock().unwrap().clone())(n);
        let status = match answer {
            Answer::Ok => 200,
            Answer::Fail => 500,
            Answer::Hang => 0,
        };
        seen.lock().unwrap().push(Request {
            headers,
            body,
            status,
        });
        if answer == Answer::Hang {
            // Past the notifier's 1 s timeout; then a failure, so a late
            // answer never counts as a delivery.
            thread::sleep(Duration::from_secs(3));
            let _ = out
                .write_all(b"HTTP/1.1 503 Late\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            return;
        }
        let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// `sha256=<hex>` of `body` under [`SECRET`].
fn signature(body: &[u8]) -> String {
    format!("sha256={}", rebased_e2e::hmac_sha256_hex(SECRET, body))
}

/// `app` from `base:latest`, one attempt per build, and a webhook
/// notifier to `url` with a 1 s timeout.
fn setup(url: &str) -> Setup {
    let s = Setup::new();
    let host = s.host();
    let ctx = s.context(
        "app",
        &format!("FROM {host}/base:latest\nCOPY hello /hello\n"),
    );
    let secret = s.dir().join("notify-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"0s\"\n[builder]\nmax_attempts = 1",
        &format!(
            "{}\n[[notify]]\nname = \"ops\"\nkind = \"webhook\"\nurl = \"{url}\"\nsecret_file = \"{}\"\ntimeout = \"1s\"\n",
            image_table("app", &ctx, &format!("{host}/app"), ""),
            secret.display()
        ),
    );
    s
}

/// Every accepted delivery: signed, its headers matching its body, and
/// each delivery id accepted once. The bodies, in order.
fn check_deliveries(r: &Receiver) -> Vec<Value> {
    let mut ids = BTreeMap::new();
    let mut bodies = Vec::new();
    for req in r.accepted() {
        assert_eq!(req.headers["content-type"], "application/json");
        assert_eq!(
            req.headers["x-rebased-signature-256"],
            signature(&req.body),
            "signed"
        );
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(
            req.headers["x-rebased-event"],
            body["type"].as_str().unwrap()
        );
        let id = req.headers["x-rebased-delivery"].clone();
        assert!(
            ids.insert(id.clone(), body["seq"].clone()).is_none(),
            "delivery {id} accepted twice"
        );
        bodies.push(body);
    }
    // Every attempt at one event carries that event's delivery id.
    for req in r.seen() {
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        let id = &req.headers["x-rebased-delivery"];
        if let Some(seq) = ids.get(id) {
            assert_eq!(*seq, body["seq"], "one id, one event");
        }
    }
    bodies
}

fn types(bodies: &[Value]) -> Vec<String> {
    bodies
        .iter()
        .map(|b| {
            format!(
                "{} {}",
                b["type"].as_str().unwrap(),
                b["version"].as_str().unwrap_or("-")
            )
        })
        .collect()
}

fn wait_accepted(r: &Receiver, n: usize) -> Vec<Value> {
    wait_for("the deliveries", WAIT, || {
        (r.accepted().len() >= n).then_some(())
    });
    check_deliveries(r)
}

#[test]
fn a_publish_a_failing_build_and_a_rollback_arrive_in_order_signed_once_each() {
    // Requests 0 and 1 fail, request 3 hangs past the timeout.
    let r = Receiver::start(|n| match n {
        0 | 1 => Answer::Fail,
        3 => Answer::Hang,
        _ => Answer::Ok,
    });
    let s = setup(&r.url);
    let daemon = s.start();
    daemon.wait_version("app", "1.0.0", WAIT);
    // A base update publishes 1.0.1.
    s.bases.push(&s.registry, "base:latest", "v2");
    daemon.wait_version("app", "1.0.1", WAIT);
    // Someone pushes 1.0.2 by hand: the next build fails (never overwrites).
    s.bases.push(&s.registry, "app:1.0.2", "foreign");
    s.bases.push(&s.registry, "base:latest", "v3");
    daemon.wait_failing("app", WAIT);
    daemon.cli(&["rollback", "app", "--to", "1.0.0"]);

    let bodies = wait_accepted(&r, 6);
    assert_eq!(
        types(&bodies),
        [
            "published 1.0.0",
            "published 1.0.1",
            "failed -",
            "failing -",
            "rolled_back 1.0.0",
            "held -"
        ],
        "{bodies:#?}"
    );
    let seqs: Vec<u64> = bodies.iter().map(|b| b["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    let published = &bodies[1];
    assert_eq!(published["image"], "app");
    assert_eq!(published["previous_version"], "1.0.0");
    assert_eq!(published["repository"], format!("{}/app", s.host()));
    assert!(published["reason"]["bases"][0]["before"].is_string());
    assert!(
        bodies[2]["detail"]
            .as_str()
            .unwrap()
            .contains("refusing to overwrite"),
        "{:?}",
        bodies[2]
    );
    assert!(bodies[2]["log_url"]
        .as_str()
        .unwrap()
        .starts_with("/v1/jobs/"));
    // The failures and the hang were retried under the same ids.
    let seen = r.seen();
    assert_eq!(
        seen[0].headers["x-rebased-delivery"],
        seen[2].headers["x-rebased-delivery"]
    );
    assert_eq!(seen[3].status, 0);
    assert_eq!(
        seen[3].headers["x-rebased-delivery"],
        seen[4].headers["x-rebased-delivery"]
    );

    let n = &daemon.get("/v1/notifiers")[0];
    assert_eq!(n["name"], "ops");
    assert_eq!(n["kind"], "webhook");
    assert_eq!(n["pending"], 0, "{n}");
    assert!(n["last_success"].is_string(), "{n}");
    let last_error = n["last_error"].as_str().unwrap();
    assert!(
        last_error.contains("no answer within") || last_error.contains("500"),
        "{n}"
    );
    assert!(!serde_json::to_string(n).unwrap().contains(SECRET));
    let metrics = daemon.get_text("/metrics");
    assert!(
        metrics
            .contains("rebased_notify_deliveries_total{notifier=\"ops\",outcome=\"delivered\"} 6"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rebased_notify_outbox_depth{notifier=\"ops\"} 0"),
        "{metrics}"
    );

    // The test event goes through the outbox like any other.
    assert_eq!(daemon.post("/v1/notifiers/ops/test", None), 202);
    assert_eq!(daemon.post("/v1/notifiers/nobody/test", None), 404);
    let bodies = wait_accepted(&r, 7);
    assert_eq!(bodies[6]["type"], "test");
    assert!(
        !daemon.log_text().contains(SECRET),
        "the secret is never logged"
    );
}

#[test]
fn a_whole_sequence_pending_at_a_kill_is_delivered_after_the_restart_under_the_same_ids() {
    // Everything fails until the restart.
    let r = Receiver::start(|_| Answer::Fail);
    let s = setup(&r.url);
    let mut daemon = s.start();
    daemon.wait_version("app", "1.0.0", WAIT);
    s.bases.push(&s.registry, "base:latest", "v2");
    daemon.wait_version("app", "1.0.1", WAIT);
    // A failing build, then a rollback: the whole sequence pending.
    s.bases.push(&s.registry, "app:1.0.2", "foreign");
    s.bases.push(&s.registry, "base:latest", "v3");
    daemon.wait_failing("app", WAIT);
    daemon.cli(&["rollback", "app", "--to", "1.0.0"]);
    // The first event has been tried (and failed) at least once.
    wait_for("a failed attempt", WAIT, || {
        (!r.seen().is_empty()).then_some(())
    });
    let pending = daemon.get("/v1/notifiers")[0]["pending"].as_u64().unwrap();
    assert_eq!(pending, 6, "every event is pending");
    let tried = r.seen()[0].headers["x-rebased-delivery"].clone();
    daemon.kill_hard();

    r.set(|_| Answer::Ok);
    let daemon = Daemon::start(&s.config, &s.listen, &s.log);
    let bodies = wait_accepted(&r, 6);
    assert_eq!(
        types(&bodies),
        [
            "published 1.0.0",
            "published 1.0.1",
            "failed -",
            "failing -",
            "rolled_back 1.0.0",
            "held -"
        ]
    );
    assert_eq!(
        r.accepted()[0].headers["x-rebased-delivery"],
        tried,
        "a retry keeps its id"
    );
    wait_for("nothing pending", WAIT, || {
        (daemon.get("/v1/notifiers")[0]["pending"] == 0).then_some(())
    });
    // Nothing more arrives: each event once.
    thread::sleep(Duration::from_secs(2));
    assert_eq!(r.accepted().len(), 6);
}

#[test]
fn a_reload_drops_a_removed_notifier_and_starts_an_added_one_at_the_end_of_the_log() {
    let a = Receiver::start(|_| Answer::Ok);
    let b = Receiver::start(|_| Answer::Ok);
    let s = setup(&a.url);
    let daemon = s.start();
    daemon.wait_version("app", "1.0.0", WAIT);
    assert_eq!(types(&wait_accepted(&a, 1)), ["published 1.0.0"]);

    // A config whose secret file cannot be read is refused at load with
    // file, line and key; the config in force stays.
    let good = std::fs::read_to_string(&s.config).unwrap();
    let missing = s.dir().join("no-such-secret");
    let bad = good.replace(
        &s.dir().join("notify-secret").display().to_string(),
        &missing.display().to_string(),
    );
    let bad_file = s.dir().join("bad.toml");
    std::fs::write(&bad_file, &bad).unwrap();
    let out = std::process::Command::new(rebased_bin())
        .args(["check-config", "--config"])
        .arg(&bad_file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let line = bad
        .lines()
        .position(|l| l.starts_with("secret_file"))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!(
            "bad.toml:{line}:1: key notify[0].secret_file: cannot read {}",
            missing.display()
        )),
        "{err}"
    );
    assert!(!err.contains(SECRET));
    let out = std::process::Command::new(rebased_bin())
        .args(["check-config", "--config"])
        .arg(&s.config)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("notify ops (webhook): events all; images all"),
        "{listed}"
    );
    assert!(!listed.contains(&a.url), "{listed}");

    // Notifier `ops` replaced by `chat` (Slack), its URL a secret in a file.
    let url_file = s.dir().join("slack-url");
    std::fs::write(&url_file, format!("{}?token=xoxb-SLACK-TOKEN\n", b.url)).unwrap();
    let start = good.find("[[notify]]").unwrap();
    std::fs::write(
        &s.config,
        format!(
            "{}[[notify]]\nname = \"chat\"\nkind = \"slack\"\nurl_file = \"{}\"\n",
            &good[..start],
            url_file.display()
        ),
    )
    .unwrap();
    daemon.signal("-HUP");
    wait_for("the new notifier", WAIT, || {
        let names: Vec<Value> = daemon.get("/v1/notifiers").as_array().unwrap().clone();
        (names.len() == 1 && names[0]["name"] == "chat").then_some(())
    });
    let log = wait_for("the drop said", WAIT, || {
        let log = daemon.log_text();
        log.contains("its outbox is dropped").then_some(log)
    });
    assert!(
        log.lines()
            .any(|l| l.contains("its outbox is dropped") && l.contains("ops")),
        "{log}"
    );
    // It starts at the end of the log: the old publish is not sent to it.
    assert_eq!(daemon.get("/v1/notifiers")[0]["pending"], 0);
    let out = daemon.cli(&["notify-test", "chat"]);
    assert!(out.contains("test event") && out.contains("chat"), "{out}");
    wait_for("the test message", WAIT, || {
        (b.accepted().len() == 1).then_some(())
    });
    let msg: Value = serde_json::from_slice(&b.accepted()[0].body).unwrap();
    assert!(
        msg["text"]
            .as_str()
            .unwrap()
            .contains("a test event for notifier chat"),
        "{msg}"
    );
    assert_eq!(a.seen().len(), 1, "the removed notifier sends nothing more");
    let table = daemon.cli(&["notifiers"]);
    assert!(table.contains("chat") && table.contains("slack"), "{table}");
    // The URL from url_file is a secret.
    for text in [
        daemon.log_text(),
        daemon.get_text("/v1/notifiers"),
        daemon.get_text("/metrics"),
        table,
    ] {
        assert!(!text.contains("SLACK-TOKEN"), "{text}");
    }
}
