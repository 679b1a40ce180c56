//! Fault injection against a stub registry (the real one cannot be made to
//! misbehave on cue): 5xx then success, 429 with Retry-After, a hanging
//! server, a failing token endpoint, the bearer flow and rate-limit headers,
//! a blob that does not match its digest, a refused blob HEAD; and the same
//! retries, waits and caps for tags, tag lists, blob uploads and mounts and
//! manifest pushes, which go through the same transport as manifest reads.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rebased_core::config::RegistryConfig;
use rebased_core::ImageRef;
use rebased_registry::{ErrorKind, Registry};

const DIGEST: &str = "sha256:ee3a7427e984f3d47ef6b31962b8255b59b97c4a79dc6804134da3986c55288a";

/// Serves `respond(n, request_line)` for the n-th request (0-based);
/// `None` never answers (the connection hangs). Returns host and a counter.
fn stub(
    respond: impl Fn(usize, &str) -> Option<String> + Send + Sync + 'static,
) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&count);
    let respond = Arc::new(respond);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let respond = Arc::clone(&respond);
            let c = Arc::clone(&c);
            std::thread::spawn(move || loop {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if !skip_headers_and_body(&mut reader) {
                    return;
                }
                let n = c.fetch_add(1, Ordering::SeqCst);
                match respond(n, line.trim()) {
                    Some(resp) => {
                        if stream.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                    None => {
                        std::thread::sleep(Duration::from_secs(30));
                        return;
                    }
                }
            });
        }
    });
    (host, count)
}

/// Reads a request's headers and its body (by `Content-Length`, or chunked),
/// so the next request on the connection starts where it should; false when
/// the connection broke.
fn skip_headers_and_body(reader: &mut BufReader<std::net::TcpStream>) -> bool {
    use std::io::Read;
    let (mut length, mut chunked) = (0usize, false);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return false;
        }
        if h == "\r\n" {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        chunked |= lower.starts_with("transfer-encoding:") && lower.contains("chunked");
    }
    if !chunked {
        let mut body = vec![0; length];
        return reader.read_exact(&mut body).is_ok();
    }
    loop {
        let mut size = String::new();
        if reader.read_line(&mut size).unwrap_or(0) == 0 {
            return false;
        }
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        let mut chunk = vec![0; n + 2];
        if reader.read_exact(&mut chunk).is_err() {
            return false;
        }
        if n == 0 {
            return true;
        }
    }
}

fn ok(extra: &str) -> String {
    format!("HTTP/1.1 200 OK\r\nDocker-Content-Digest: {DIGEST}\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 0\r\n{extra}\r\n")
}

fn status(code: &str, extra: &str) -> String {
    format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\n{extra}\r\n")
}

fn registry(host: &str) -> Registry {
    let cfg = RegistryConfig {
        insecure: true,
        ..RegistryConfig::default()
    };
    Registry::with_timeout(
        &BTreeMap::from([(host.to_owned(), cfg)]),
        Duration::from_secs(2),
    )
}

fn reference(host: &str) -> ImageRef {
    ImageRef::parse(&format!("{host}/base:latest")).unwrap()
}

#[tokio::test]
async fn server_errors_are_retried_then_succeed() {
    let (host, count) = stub(|n, _| {
        Some(if n < 2 {
            status("503 Service Unavailable", "")
        } else {
            ok("")
        })
    });
    let head = registry(&host).head(&reference(&host)).await.unwrap();
    assert_eq!(head.digest.as_str(), DIGEST);
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn persistent_server_errors_give_a_clear_error() {
    let (host, count) = stub(|_, _| Some(status("500 Internal Server Error", "")));
    let e = registry(&host).head(&reference(&host)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Protocol);
    assert!(
        e.to_string().contains(&format!("{host}/base:latest")) && e.to_string().contains("500"),
        "{e}"
    );
    assert_eq!(
        count.load(Ordering::SeqCst),
        4,
        "a bounded number of attempts"
    );
}

#[tokio::test]
async fn too_many_requests_waits_as_told() {
    let (host, _) = stub(|n, _| {
        Some(if n == 0 {
            status("429 Too Many Requests", "Retry-After: 1\r\n")
        } else {
            ok("")
        })
    });
    let start = Instant::now();
    registry(&host).head(&reference(&host)).await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );

    let (host, count) = stub(|_, _| Some(status("429 Too Many Requests", "Retry-After: 3600\r\n")));
    let e = registry(&host).head(&reference(&host)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert!(e.to_string().contains("retry after 3600 s"), "{e}");
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "no hammering past a long Retry-After"
    );
}

#[tokio::test]
async fn a_hanging_server_times_out() {
    let (host, _) = stub(|_, _| None);
    let start = Instant::now();
    let e = registry(&host).head(&reference(&host)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unreachable);
    assert!(e.to_string().contains("timed out"), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "bounded: {:?}",
        start.elapsed()
    );
}

/// A stub registry with a token endpoint at `/token`: manifests need
/// `Bearer t0k3n`; `token_status` is what the token endpoint answers.
fn token_registry(token_status: &'static str) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let tokens = Arc::new(AtomicUsize::new(0));
    let (a, t) = (addr.clone(), Arc::clone(&tokens));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (a, t) = (a.clone(), Arc::clone(&t));
            std::thread::spawn(move || loop {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let mut authorized = false;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    authorized |= h
                        .to_ascii_lowercase()
                        .starts_with("authorization: bearer t0k3n");
                }
                let resp = if line.starts_with("GET /token") {
                    t.fetch_add(1, Ordering::SeqCst);
                    if token_status.starts_with("200") {
                        let body = r#"{"token": "t0k3n", "expires_in": 300}"#;
                        format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                    } else {
                        status(token_status, "")
                    }
                } else if authorized {
                    ok("ratelimit-remaining: 76;w=21600\r\n")
                } else {
                    status(
                        "401 Unauthorized",
                        &format!("Www-Authenticate: Bearer realm=\"http://{a}/token\",service=\"stub\"\r\n"),
                    )
                };
                if stream.write_all(resp.as_bytes()).is_err() {
                    return;
                }
            });
        }
    });
    (addr, tokens)
}

#[tokio::test]
async fn bearer_flow_caches_the_token_and_reads_the_rate_limit() {
    let (addr, tokens) = token_registry("200 OK");
    let reg = registry(&addr);
    let head = reg.head(&reference(&addr)).await.unwrap();
    assert_eq!(head.rate_limit_remaining, Some(76));
    reg.head(&reference(&addr)).await.unwrap();
    assert_eq!(
        tokens.load(Ordering::SeqCst),
        1,
        "token cached until expiry"
    );
}

#[tokio::test]
async fn a_failing_token_endpoint_is_an_auth_error() {
    let (addr, _) = token_registry("500 Internal Server Error");
    let e = registry(&addr).head(&reference(&addr)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unauthorized);
    assert!(
        e.to_string().contains("token endpoint") && e.to_string().contains("500"),
        "{e}"
    );
}

#[tokio::test]
async fn basic_challenge_without_credentials() {
    let (host, _) = stub(|_, _| {
        Some(status(
            "401 Unauthorized",
            "Www-Authenticate: Basic realm=\"Registry\"\r\n",
        ))
    });
    let e = registry(&host).head(&reference(&host)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unauthorized);
    assert!(e.to_string().contains("credentials"), "{e}");
}

#[tokio::test]
async fn without_a_digest_header_the_manifest_is_hashed() {
    let body = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#;
    let (host, count) = stub(move |_, line| {
        Some(if line.starts_with("HEAD") {
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_owned()
        } else {
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        })
    });
    let head = registry(&host).head(&reference(&host)).await.unwrap();
    use sha2::Digest as _;
    let want: String = sha2::Sha256::digest(body.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(head.digest.as_str(), format!("sha256:{want}"));
    assert_eq!(count.load(Ordering::SeqCst), 2, "one HEAD, then one GET");
}

#[tokio::test]
async fn requests_to_one_registry_are_bounded_by_its_concurrency() {
    // A slow registry that records how many requests it serves at once.
    let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (n2, p2) = (Arc::clone(&now), Arc::clone(&peak));
    let (host, count) = stub(move |_, _| {
        let inflight = n2.fetch_add(1, Ordering::SeqCst) + 1;
        p2.fetch_max(inflight, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(200));
        n2.fetch_sub(1, Ordering::SeqCst);
        Some(ok(""))
    });
    let cfg = RegistryConfig {
        insecure: true,
        concurrency: 2,
        ..RegistryConfig::default()
    };
    let reg = Arc::new(Registry::with_timeout(
        &BTreeMap::from([(host.clone(), cfg)]),
        Duration::from_secs(5),
    ));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (reg, r) = (
            Arc::clone(&reg),
            ImageRef::parse(&format!("{host}/base{i}:latest")).unwrap(),
        );
        tasks.push(tokio::spawn(async move { reg.head(&r).await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(count.load(Ordering::SeqCst), 8);
    assert_eq!(
        peak.load(Ordering::SeqCst),
        2,
        "at most `concurrency` requests in flight"
    );
}

/// Answers `GET /v2/` with 200 and everything else with `other`.
fn blob_stub(other: &'static str) -> String {
    let (host, _) = stub(move |_, line| {
        Some(if line.starts_with("GET /v2/ ") {
            status("200 OK", "")
        } else {
            other.to_owned()
        })
    });
    host
}

#[tokio::test]
async fn a_blob_that_does_not_match_its_digest_is_refused() {
    let host = blob_stub("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil");
    let r = registry(&host);
    let digest = rebased_core::Digest::parse(DIGEST).unwrap();
    let e = r.blob(&reference(&host), &digest, 100).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Protocol, "{e}");
    assert!(e.reference.ends_with(DIGEST), "{e}");
    let mut out = Vec::new();
    let e = r
        .blob_to_writer(&reference(&host), &digest, &mut out)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Protocol, "{e}");
    // Refused from Content-Length alone, before the body is read.
    let e = r.blob(&reference(&host), &digest, 3).await.unwrap_err();
    assert!(e.detail.contains("limit of 3 bytes"), "{e}");
}

#[tokio::test]
async fn a_refused_blob_head_is_an_auth_error() {
    let host = blob_stub("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
    let digest = rebased_core::Digest::parse(DIGEST).unwrap();
    let e = registry(&host)
        .blob_exists(&reference(&host), &digest)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unauthorized, "{e}");
}

#[tokio::test]
async fn a_manifest_over_4_mib_is_refused_not_buffered() {
    // Declared too large, and too large without a Content-Length.
    let big = format!(
        "{{\"schemaVersion\": 2, \"pad\": \"{}\"}}",
        "x".repeat(5 << 20)
    );
    let (host, _) = stub(move |n, _| {
        Some(if n % 2 == 0 {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\n\r\n{big}",
                big.len()
            )
        } else {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nConnection: close\r\n\r\n{big}"
            )
        })
    });
    let r = registry(&host);
    for _ in 0..2 {
        let e = r.manifest(&reference(&host)).await.expect_err("too large");
        assert_eq!(e.kind, ErrorKind::Protocol, "{e}");
        assert!(
            e.to_string().contains("4 MiB") || e.to_string().contains("larger than"),
            "{e}"
        );
    }
}

#[tokio::test]
async fn a_pinned_manifest_must_hash_to_its_digest() {
    let (host, _) = stub(|_, _| {
        let body = r#"{"schemaVersion": 2}"#;
        Some(format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    });
    let pinned = ImageRef::parse(&format!("{host}/base@{DIGEST}")).unwrap();
    let e = registry(&host)
        .manifest(&pinned)
        .await
        .expect_err("mismatch");
    assert!(e.to_string().contains("digest"), "{e}");
}

/// A 200 with a JSON body and extra headers.
fn json(body: &str, extra: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
}

fn repository(host: &str) -> ImageRef {
    ImageRef::parse_repository(&format!("{host}/base")).unwrap()
}

#[tokio::test]
async fn tag_lists_retry_wait_and_follow_links() {
    let (host, count) = stub(|n, line| {
        Some(match n {
            0 => status("503 Service Unavailable", ""),
            1 => status("429 Too Many Requests", "Retry-After: 1\r\n"),
            _ if line.contains("last=b") => json(r#"{"name":"base","tags":["c"]}"#, ""),
            _ => json(
                r#"{"name":"base","tags":["a","b"]}"#,
                "Link: </v2/base/tags/list?last=b&n=2>; rel=\"next\"\r\n",
            ),
        })
    });
    let start = Instant::now();
    let tags = registry(&host)
        .list_tags_in_pages(&repository(&host), 2)
        .await
        .unwrap();
    assert_eq!(tags, ["a", "b", "c"]);
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert_eq!(
        count.load(Ordering::SeqCst),
        4,
        "503, 429, page one, page two (its missing Link ends the list)"
    );

    let (host, count) = stub(|_, _| Some(status("500 Internal Server Error", "")));
    let e = registry(&host)
        .list_tags(&repository(&host))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Protocol, "{e}");
    assert!(e.to_string().contains("500"), "{e}");
    assert_eq!(
        count.load(Ordering::SeqCst),
        4,
        "a bounded number of attempts"
    );

    let (host, count) = stub(|_, _| Some(status("429 Too Many Requests", "Retry-After: 3600\r\n")));
    let e = registry(&host)
        .list_tags(&repository(&host))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::RateLimited, "{e}");
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "no hammering past a long Retry-After"
    );
}

#[tokio::test]
async fn a_tag_list_over_the_cap_is_refused() {
    let big = format!(r#"{{"tags":["{}"]}}"#, "x".repeat(9 << 20));
    let (host, _) = stub(move |_, _| Some(json(&big, "")));
    let e = registry(&host)
        .list_tags(&repository(&host))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Protocol, "{e}");
    assert!(e.to_string().contains("larger than"), "{e}");
}

/// A manifest body and its digest, for stubs that serve it pinned.
fn manifest_body() -> (String, String) {
    let body = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#;
    use sha2::Digest as _;
    let hex: String = sha2::Sha256::digest(body.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (body.to_owned(), format!("sha256:{hex}"))
}

#[tokio::test]
async fn tagging_retries_the_manifest_push_and_waits_out_429() {
    let (body, digest) = manifest_body();
    let puts = Arc::new(AtomicUsize::new(0));
    let p = Arc::clone(&puts);
    let (host, _) = stub(move |_, line| {
        Some(if line.starts_with("GET /v2/base/manifests/sha256:") {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        } else if line.starts_with("PUT /v2/base/manifests/latest ") {
            match p.fetch_add(1, Ordering::SeqCst) {
                0 => status("502 Bad Gateway", ""),
                1 => status("429 Too Many Requests", "Retry-After: 1\r\n"),
                _ => status("201 Created", ""),
            }
        } else {
            status("400 Bad Request", "")
        })
    });
    let digest = rebased_core::Digest::parse(&digest).unwrap();
    let start = Instant::now();
    registry(&host)
        .tag(&repository(&host), &digest, "latest")
        .await
        .unwrap();
    assert_eq!(puts.load(Ordering::SeqCst), 3, "502, 429, then 201");
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
}

#[tokio::test]
async fn manifest_pushes_give_up_on_a_long_retry_after_and_persistent_errors() {
    let (body, _) = manifest_body();
    let (host, count) = stub(|_, _| Some(status("429 Too Many Requests", "Retry-After: 3600\r\n")));
    let e = registry(&host)
        .push_manifest(
            &reference(&host),
            body.clone().into_bytes(),
            "application/vnd.oci.image.manifest.v1+json",
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::RateLimited, "{e}");
    assert!(e.to_string().contains("retry after 3600 s"), "{e}");
    assert_eq!(count.load(Ordering::SeqCst), 1);

    let (host, count) = stub(|_, _| Some(status("503 Service Unavailable", "")));
    let e = registry(&host)
        .push_manifest(
            &reference(&host),
            body.into_bytes(),
            "application/vnd.oci.image.manifest.v1+json",
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Protocol, "{e}");
    assert_eq!(
        count.load(Ordering::SeqCst),
        4,
        "a bounded number of attempts"
    );
}

#[tokio::test]
async fn blob_uploads_retry_each_step() {
    let data = bytes::Bytes::from_static(b"hello");
    let digest = {
        use sha2::Digest as _;
        let hex: String = sha2::Sha256::digest(&data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        rebased_core::Digest::parse(&format!("sha256:{hex}")).unwrap()
    };
    let (seen, s) = (
        Arc::new(std::sync::Mutex::new(Vec::new())),
        Arc::new(AtomicUsize::new(0)),
    );
    let (log, fails) = (Arc::clone(&seen), Arc::clone(&s));
    let (host, _) = stub(move |_, line| {
        log.lock().unwrap().push(line.to_owned());
        // Every step fails once before it succeeds.
        let first = fails.fetch_add(1, Ordering::SeqCst) % 2 == 0;
        Some(if first {
            status("503 Service Unavailable", "")
        } else if line.starts_with("POST /v2/base/blobs/uploads/ ") {
            status(
                "202 Accepted",
                "Location: /v2/base/blobs/uploads/u1?_state=x\r\n",
            )
        } else if line.starts_with("PUT /v2/base/blobs/uploads/u1?_state=x&digest=sha256%3A") {
            status("201 Created", "")
        } else {
            status("400 Bad Request", "")
        })
    });
    registry(&host)
        .push_blob(&repository(&host), data, &digest)
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(
        seen[0].starts_with("POST") && seen[1].starts_with("POST"),
        "{seen:?}"
    );
    assert!(
        seen[2].starts_with("PUT") && seen[3].starts_with("PUT"),
        "{seen:?}"
    );
}

/// Held by the tests that reach the mount refusal's warning: one reaching
/// it for the first time, with no subscriber, while another installs its
/// own, can leave the callsite cached as disabled for that other one.
static MOUNT_REFUSAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn mounts_retry_and_a_refusal_is_a_fallback_not_an_error() {
    let _serial = MOUNT_REFUSAL.lock().await;
    let digest = rebased_core::Digest::parse(DIGEST).unwrap();
    let (host, count) = stub(|n, line| {
        assert!(
            line.starts_with(&format!(
                "POST /v2/base/blobs/uploads/?mount={DIGEST}&from=upstream/base "
            )),
            "{line}"
        );
        Some(if n == 0 {
            status("500 Internal Server Error", "")
        } else {
            status(
                "201 Created",
                &format!("Location: /v2/base/blobs/{DIGEST}\r\n"),
            )
        })
    });
    let source = ImageRef::parse_repository(&format!("{host}/upstream/base")).unwrap();
    assert!(registry(&host)
        .mount_blob(&repository(&host), &source, &digest)
        .await
        .unwrap());
    assert_eq!(count.load(Ordering::SeqCst), 2);

    for refusal in [
        "401 Unauthorized",
        "403 Forbidden",
        "404 Not Found",
        "202 Accepted",
    ] {
        let (host, _) = stub(move |_, _| Some(status(refusal, "")));
        let source = ImageRef::parse_repository(&format!("{host}/upstream/base")).unwrap();
        assert!(
            !registry(&host)
                .mount_blob(&repository(&host), &source, &digest)
                .await
                .unwrap(),
            "{refusal}: declined"
        );
    }

    let (host, count) = stub(|_, _| Some(status("429 Too Many Requests", "Retry-After: 3600\r\n")));
    let source = ImageRef::parse_repository(&format!("{host}/upstream/base")).unwrap();
    let e = registry(&host)
        .mount_blob(&repository(&host), &source, &digest)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::RateLimited, "{e}");
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

/// A mount answered 202 opened an upload session: the copy that follows
/// streams into it instead of opening (and abandoning) a second one.
#[tokio::test]
async fn a_mount_answered_202_is_copied_into_the_session_it_opened() {
    let _serial = MOUNT_REFUSAL.lock().await;
    let data = "hello, session";
    let digest = {
        use sha2::Digest as _;
        let hex: String = sha2::Sha256::digest(data.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        rebased_core::Digest::parse(&format!("sha256:{hex}")).unwrap()
    };
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = Arc::clone(&seen);
    let (host, _) = stub(move |_, line| {
        log.lock().unwrap().push(line.to_owned());
        Some(if line.starts_with("POST /v2/dst/blobs/uploads/?mount=") {
            status("202 Accepted", "Location: /v2/dst/blobs/uploads/m1\r\n")
        } else if line.starts_with("POST /v2/dst/blobs/uploads/ ") {
            status("202 Accepted", "Location: /v2/dst/blobs/uploads/u2\r\n")
        } else if line.starts_with("GET /v2/src/blobs/") {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{data}",
                data.len()
            )
        } else if line.starts_with("PATCH /v2/dst/blobs/uploads/") {
            status(
                "202 Accepted",
                "Location: /v2/dst/blobs/uploads/m1?state=x\r\n",
            )
        } else if line.starts_with("PUT /v2/dst/blobs/uploads/") {
            status("201 Created", "")
        } else {
            status("400 Bad Request", "")
        })
    });
    let src = ImageRef::parse_repository(&format!("{host}/src")).unwrap();
    let dst = ImageRef::parse_repository(&format!("{host}/dst")).unwrap();
    let copied = registry(&host)
        .mount_or_copy(&dst, &src, &digest)
        .await
        .unwrap();
    assert_eq!(copied, Some(data.len() as u64));
    let seen = seen.lock().unwrap().clone();
    let uploads: Vec<&String> = seen
        .iter()
        .filter(|l| l.starts_with("POST /v2/dst/blobs/uploads/"))
        .collect();
    assert_eq!(uploads.len(), 1, "one upload session: {seen:?}");
    assert!(
        seen.iter()
            .any(|l| l.starts_with("PATCH /v2/dst/blobs/uploads/m1 ")),
        "the stream goes to the mount's session: {seen:?}"
    );
}

#[tokio::test]
async fn a_streamed_copy_is_never_sent_twice() {
    let data = "hello, stream";
    let digest = {
        use sha2::Digest as _;
        let hex: String = sha2::Sha256::digest(data.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        rebased_core::Digest::parse(&format!("sha256:{hex}")).unwrap()
    };
    let patches = Arc::new(AtomicUsize::new(0));
    let p = Arc::clone(&patches);
    let (host, _) = stub(move |_, line| {
        Some(if line.starts_with("GET /v2/src/blobs/") {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{data}",
                data.len()
            )
        } else if line.starts_with("POST /v2/dst/blobs/uploads/ ") {
            status("202 Accepted", "Location: /v2/dst/blobs/uploads/u1\r\n")
        } else if line.starts_with("PATCH /v2/dst/blobs/uploads/u1 ") {
            p.fetch_add(1, Ordering::SeqCst);
            status("503 Service Unavailable", "")
        } else {
            status("400 Bad Request", "")
        })
    });
    let src = ImageRef::parse_repository(&format!("{host}/src")).unwrap();
    let dst = ImageRef::parse_repository(&format!("{host}/dst")).unwrap();
    let e = registry(&host)
        .copy_blob(&src, &dst, &digest)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Protocol, "{e}");
    assert!(e.to_string().contains("503"), "{e}");
    assert_eq!(
        patches.load(Ordering::SeqCst),
        1,
        "a stream body is not retried"
    );
}

#[tokio::test]
async fn tag_lists_without_links_are_read_once_each() {
    // Like distribution 2.8: `n` and `last` ignored, the whole list each time.
    let (host, count) = stub(|_, _| Some(json(r#"{"tags":["t3","t1","t2"]}"#, "")));
    let tags = registry(&host)
        .list_tags_in_pages(&repository(&host), 2)
        .await
        .unwrap();
    assert_eq!(tags, ["t3", "t1", "t2"]);
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "a page over n is the whole list"
    );

    // Pages capped at or below `n` without a Link: asked again from the
    // last tag until a page brings nothing new.
    let (host, count) = stub(|_, line| {
        Some(if line.contains("last=b") {
            json(r#"{"tags":["c"]}"#, "")
        } else if line.contains("last=c") {
            json(r#"{"tags":[]}"#, "")
        } else {
            json(r#"{"tags":["a","b"]}"#, "")
        })
    });
    let tags = registry(&host)
        .list_tags_in_pages(&repository(&host), 2)
        .await
        .unwrap();
    assert_eq!(tags, ["a", "b", "c"]);
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_dead_registry_is_retried_once_then_fails_fast() {
    let host = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }; // closed again: nothing listens there
    let r = registry(&host);
    let start = Instant::now();
    let e = r.head(&reference(&host)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unreachable, "{e}");
    assert!(
        start.elapsed() >= Duration::from_millis(3500),
        "retried with backoff first: {:?}",
        start.elapsed()
    );
    let start = Instant::now();
    let digest = rebased_core::Digest::parse(DIGEST).unwrap();
    let e = r
        .blob_exists(&repository(&host), &digest)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unreachable, "{e}");
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "then one attempt per request: {:?}",
        start.elapsed()
    );
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_refused_mount_is_logged_with_its_cause() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _serial = MOUNT_REFUSAL.lock().await;
    let _guard = tracing::subscriber::set_default(subscriber);
    let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":[{"Type":"repository","Name":"upstream/base","Action":"pull"}]}]}"#;
    let (host, _) = stub(move |_, _| {
        Some(format!(
            "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    });
    let source = ImageRef::parse_repository(&format!("{host}/upstream/base")).unwrap();
    let digest = rebased_core::Digest::parse(DIGEST).unwrap();
    assert!(!registry(&host)
        .mount_blob(&repository(&host), &source, &digest)
        .await
        .unwrap());
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("mount refused"))
        .unwrap_or_else(|| panic!("no warning: {text}"));
    for want in [
        "WARN",
        &format!("registry=\"{host}\"") as &str,
        "source=\"upstream/base\"",
        "target=\"base\"",
        "status=403",
        "UNAUTHORIZED: authentication required",
    ] {
        assert!(line.contains(want), "{want:?} missing from {line}");
    }
}
