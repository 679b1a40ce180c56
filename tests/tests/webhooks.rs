//! Webhooks: the registry's own notifications trigger a rebuild with polling
//! set to once a year; and what the endpoint does with bad deliveries.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::time::Duration;

use rebased_e2e::{
    app_context, free_port, hmac_sha256_hex, image_table, wait_for, write_config, Daemon, Registry,
    Setup,
};

const WAIT: Duration = Duration::from_secs(120);
const TOKEN: &str = "hook-s3cret";

fn sign(body: &[u8]) -> String {
    format!("sha256={}", hmac_sha256_hex(TOKEN, body))
}

#[test]
fn registry_notifications_trigger_a_rebuild_and_bad_deliveries_change_nothing() {
    let listen = format!("127.0.0.1:{}", free_port());
    let registry =
        Registry::start_notifying(&format!("http://{listen}/v1/webhooks/distribution"), TOKEN);
    let setup = Setup::with(registry, listen);
    let (registry, bases, host) = (&setup.registry, &setup.bases, setup.host());
    bases.push(registry, "base:latest", "v1");

    let ctx = setup.context(
        "app",
        &format!("FROM {host}/base:latest\nCOPY hello /hello\n"),
    );
    let token_file = setup.dir().join("webhook-token");
    fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    setup.write_config(
        "poll = \"0 0 0 1 1 *\"\nsettle = \"0s\"",
        &format!(
            "\n[webhooks]\ntoken_file = \"{}\"\n{}",
            token_file.display(),
            image_table("app", &ctx, &format!("{host}/app"), "")
        ),
    );
    let daemon = setup.start();
    // 1.0.0, from the check at start.
    daemon.wait_version("app", "1.0.0", WAIT);

    // Bad deliveries: refused with a reason, nothing happens.
    let generic = br#"{"reference": "BASE"}"#.to_vec();
    let generic = String::from_utf8(generic)
        .unwrap()
        .replace("BASE", &format!("{host}/base:latest"))
        .into_bytes();
    let (s, body) = daemon.post_body("/v1/webhooks/generic", &[], generic.clone());
    assert_eq!(s, 401, "no token: {body}");
    let (s, _) = daemon.post_body(
        "/v1/webhooks/generic",
        &[("authorization", "Bearer wrong")],
        generic.clone(),
    );
    assert_eq!(s, 401);
    let (s, _) = daemon.post_body(
        "/v1/webhooks/github",
        &[("x-hub-signature-256", "sha256=00ff")],
        generic.clone(),
    );
    assert_eq!(s, 401, "wrong signature");
    let (s, body) = daemon.post_body(
        "/v1/webhooks/nosuch?token=hook-s3cret",
        &[],
        generic.clone(),
    );
    assert_eq!(s, 404, "{body}");
    let (s, body) = daemon.post_body(
        "/v1/webhooks/distribution?token=hook-s3cret",
        &[],
        b"{\"events\": [".to_vec(),
    );
    assert_eq!(s, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not valid JSON"),
        "{body}"
    );
    let big = vec![b' '; 2 << 20];
    let (s, _) = daemon.post_body("/v1/webhooks/generic?token=hook-s3cret", &[], big);
    assert_eq!(s, 413, "2 MiB body");
    let other = br#"{"reference": "docker.io/library/nginx:latest"}"#.to_vec();
    let (s, body) = daemon.post_body("/v1/webhooks/generic?token=hook-s3cret", &[], other);
    assert_eq!(
        (s, body["status"].as_str()),
        (202, Some("ignored")),
        "{body}"
    );
    // A signed GitHub ping is fine and names nothing.
    let ping = br#"{"zen": "Keep it logically awesome."}"#.to_vec();
    let sig = sign(&ping);
    let (s, body) = daemon.post_body(
        "/v1/webhooks/github",
        &[("x-hub-signature-256", &sig), ("x-github-event", "ping")],
        ping,
    );
    assert_eq!(
        (s, body["status"].as_str()),
        (202, Some("ignored")),
        "{body}"
    );
    // A good generic delivery is accepted (nothing changed upstream: no build).
    let (s, body) = daemon.post_body(
        "/v1/webhooks/generic",
        &[("authorization", &format!("Bearer {TOKEN}"))],
        generic,
    );
    assert_eq!(
        (s, body["status"].as_str()),
        (202, Some("accepted")),
        "{body}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(daemon.fresh_version("app").as_deref(), Some("1.0.0"));

    // The real registry's notification of a new base: rebuilt without polling.
    bases.push(registry, "base:latest", "v2");
    daemon.wait_version("app", "1.0.1", WAIT);
    let img = daemon.image("app");
    assert_eq!(img["versions"][1]["trigger"], "webhook", "{img:#}");

    let metrics = daemon.get_text("/metrics");
    for needle in [
        "rebased_webhook_deliveries_total{source=\"distribution\",outcome=\"accepted\"}",
        "rebased_webhook_deliveries_total{source=\"generic\",outcome=\"unauthorized\"} 2",
        "rebased_webhook_deliveries_total{source=\"generic\",outcome=\"too_large\"} 1",
        "rebased_versions_published_total{image=\"app\"} 2",
        "rebased_builds_total{outcome=\"published\"} 2",
        "rebased_build_duration_seconds_count 2",
        "rebased_queue_depth 0",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in:\n{metrics}");
    }
}

#[test]
fn webhook_deliveries_in_flight_are_bounded() {
    use std::io::Write;
    let listen = format!("127.0.0.1:{}", free_port());
    let work = tempfile::tempdir().unwrap();
    let ctx = app_context(
        work.path(),
        "app",
        "FROM 127.0.0.1:1/base:latest\nCOPY hello /hello\n",
    );
    let token_file = work.path().join("webhook-token");
    fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let config = write_config(
        work.path(),
        &listen,
        "127.0.0.1:1",
        "poll = \"0 0 0 1 1 *\"",
        &format!(
            "\n[webhooks]\ntoken_file = \"{}\"\n{}",
            token_file.display(),
            image_table("app", &ctx, "127.0.0.1:1/app", "")
        ),
    );
    let daemon = Daemon::start(&config, &listen, &work.path().join("daemon.log"));
    let body = br#"{"reference": "127.0.0.1:1/base:latest"}"#.to_vec();
    let auth = format!("Bearer {TOKEN}");
    // One delivery with the token.
    let deliver = || {
        daemon.post_body(
            "/v1/webhooks/generic",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.clone(),
        )
    };
    // Slow senders without the token hold nothing: they are refused before
    // their body is read.
    let mut strangers = Vec::new();
    for _ in 0..40 {
        let mut s = std::net::TcpStream::connect(&listen).unwrap();
        write!(
            s,
            "POST /v1/webhooks/generic HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{{"
        )
        .unwrap();
        strangers.push(s);
    }
    wait_for("a delivery to be taken despite the strangers", WAIT, || {
        let (status, _) = deliver();
        (status == 202).then_some(())
    });
    // Nor do slow senders waving a signature header at a source that does
    // not sign (only GitHub does): the token is still checked first.
    for _ in 0..40 {
        let mut s = std::net::TcpStream::connect(&listen).unwrap();
        write!(
            s,
            "POST /v1/webhooks/generic HTTP/1.1\r\nHost: x\r\nX-Hub-Signature-256: sha256=00ff\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{{"
        )
        .unwrap();
        s.flush().unwrap();
        strangers.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let (status, reply) = deliver();
    assert_eq!(status, 202, "signed strangers hold no permit: {reply}");
    drop(strangers);
    // Slow senders with the token: headers and a little of a 4 KiB body,
    // then nothing.
    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut s = std::net::TcpStream::connect(&listen).unwrap();
        write!(
            s,
            "POST /v1/webhooks/generic HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{{\"references\": ["
        )
        .unwrap();
        s.flush().unwrap();
        slow.push(s);
    }
    let (status, reply) = wait_for("deliveries past the bound to be turned away", WAIT, || {
        let (status, reply) = deliver();
        (status == 503).then_some((status, reply))
    });
    assert_eq!(status, 503, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("in flight"),
        "{reply}"
    );
    // Other endpoints still answer.
    assert_eq!(daemon.get("/v1/status")["images"], 1);
    // Once the slow senders go, deliveries are taken again.
    drop(slow);
    wait_for("deliveries to be taken again", WAIT, || {
        let (status, _) = deliver();
        (status == 202).then_some(())
    });
    let metrics = daemon.get_text("/metrics");
    assert!(metrics.contains("outcome=\"busy\""), "{metrics}");
}
