//! Security checks: secrets (registry password, API token, webhook token,
//! the signing key and its password) appear in no log, API answer, job log or error message; no shell is ever
//! run and untrusted strings stay arguments; `COPY` cannot reach outside the
//! context; the state directory and the API socket are private.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rebased_e2e::{
    app_context, free_port, image_table, rebased_bin, rust_sources, wait_for, BaseMaker, Daemon,
    Registry, Setup,
};

const WAIT: Duration = Duration::from_secs(120);
const PASSWORD: &str = "reg-PW-4b1d9e";
const WRONG_PASSWORD: &str = "unreach-PW-77c2aa";
const API_TOKEN: &str = "api-TOKEN-5e0f13";
const HOOK_TOKEN: &str = "hook-TOKEN-a93c07";
const SIGN_PASSWORD: &str = "sign-PW-3c8e51";
const WRONG_SIGN_PASSWORD: &str = "sign-WRONG-PW-90d4f2";

#[test]
fn secrets_appear_in_no_log_answer_or_error() {
    let (registry, ca) = Registry::start_secure("bot", PASSWORD);
    let host = registry.host.clone();
    BaseMaker::new().push_secure(
        &registry,
        "base:latest",
        "v1",
        &ca,
        &format!("bot:{PASSWORD}"),
    );
    let work = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = work.path().join(name);
        fs::write(&p, format!("{text}\n")).unwrap();
        p
    };
    let pw = write("pw", PASSWORD);
    let wrong = write("wrong-pw", WRONG_PASSWORD);
    let api = write("api-token", API_TOKEN);
    let hook = write("hook-token", HOOK_TOKEN);
    // A signing key made by keygen, under a password.
    let sign_pw = write("sign-pw", SIGN_PASSWORD);
    let keys = work.path().join("keys");
    let made = Command::new(rebased_bin())
        .args(["keygen", "--out"])
        .arg(&keys)
        .arg("--password-file")
        .arg(&sign_pw)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    // The key's PEM body lines: none may show anywhere.
    let key_lines: Vec<String> = fs::read_to_string(keys.join("cosign.key"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_owned)
        .collect();
    assert!(!key_lines.is_empty());
    let good = app_context(
        work.path(),
        "good",
        &format!("FROM {host}/base:latest\nCOPY hello /hello\n"),
    );
    // A registry that is not there, with credentials: its errors are shown.
    let dead = format!("127.0.0.1:{}", free_port());
    let bad = app_context(
        work.path(),
        "bad",
        &format!("FROM {dead}/base:latest\nCOPY hello /hello\n"),
    );
    let listen = format!("127.0.0.1:{}", free_port());
    let config = work.path().join("rebased.toml");
    fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"{state}\"\nlisten = \"{listen}\"\napi_token_file = \"{api}\"\npoll = \"*/1 * * * * *\"\nsettle = \"0s\"\n\n[builder]\nmax_attempts = 1\n\n[registries.\"{host}\"]\nusername = \"bot\"\npassword_file = \"{pw}\"\nca_file = \"{ca}\"\n\n[registries.\"{dead}\"]\nusername = \"bot\"\npassword_file = \"{wrong}\"\n\n[webhooks]\ntoken_file = \"{hook}\"\n\n[signing]\nkey_file = \"{key}\"\npassword_file = \"{sign_pw}\"\nattest = [\"slsa\"]\n{}{}",
            image_table("good", &good, &format!("{host}/good"), ""),
            image_table("bad", &bad, &format!("{dead}/bad"), ""),
            state = work.path().join("state").display(),
            api = api.display(),
            pw = pw.display(),
            ca = ca.display(),
            wrong = wrong.display(),
            hook = hook.display(),
            key = keys.join("cosign.key").display(),
            sign_pw = sign_pw.display(),
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&config, &listen, &work.path().join("daemon.log"));
    wait_for("good published and bad's base in error", WAIT, || {
        let good = daemon.image("good");
        let bad = daemon.image("bad");
        (good["state"] == "fresh" && bad["bases"][0]["error"].is_string()).then_some(())
    });
    // Wrong tokens: refused, and the answers do not echo the real ones.
    let client = reqwest::blocking::Client::new();
    let mut answers = String::new();
    for (path, token) in [
        ("/v1/check", "wrong"),
        ("/v1/webhooks/generic", "wrong"),
        ("/v1/webhooks/generic?token=wrong", ""),
    ] {
        let r = client
            .post(format!("{}{path}", daemon.api))
            .bearer_auth(token)
            .body(r#"{"reference": "x"}"#)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
        answers += &r.text().unwrap();
    }
    // Every action the API documents (every POST but the webhooks) is
    // refused without the token, and so is a POST to no route at all
    // (which, with the token, is a 404).
    let doc = daemon.get("/openapi.json");
    let mut actions: Vec<String> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(p, ops)| ops.get("post").is_some() && !p.starts_with("/v1/webhooks/"))
        .map(|(p, _)| p.replace("{name}", "good"))
        .collect();
    assert!(actions.len() >= 6, "{actions:?}");
    actions.push("/v1/no-such-route".to_owned());
    for path in &actions {
        let r = client
            .post(format!("{}{path}", daemon.api))
            .body("{}")
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path} without a token");
    }
    // With the token an unknown POST is a 404; a POST to a GET-only route
    // is a 405 either way.
    for (path, token, want) in [
        ("/v1/no-such-route", API_TOKEN, 404),
        ("/v1/status", "", 405),
    ] {
        let r = client
            .post(format!("{}{path}", daemon.api))
            .bearer_auth(token)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "POST {path}");
    }
    // The audit's answer (signatures checked), with the right token.
    let r = client
        .post(format!("{}/v1/audit", daemon.api))
        .bearer_auth(API_TOKEN)
        .json(&serde_json::json!({}))
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.status());
    answers += &r.text().unwrap();
    // Everything the daemon says.
    for path in [
        "/v1/status",
        "/v1/images",
        "/v1/bases",
        "/v1/jobs",
        "/metrics",
        "/openapi.json",
    ] {
        answers += &daemon.get_text(path);
    }
    for job in daemon.get("/v1/jobs").as_array().unwrap() {
        answers += &daemon.get_text(&format!("/v1/jobs/{}/log", job["id"]));
    }
    let bad_error = daemon.image("bad")["bases"][0]["error"].to_string();
    assert!(
        bad_error.contains(&dead),
        "the error names the registry: {bad_error}"
    );
    answers += &bad_error;
    let log = daemon.log_text();
    // The state directory (ledger, logs, build scratch) holds none either.
    let mut state = Vec::new();
    collect_files(&work.path().join("state"), &mut state);
    assert!(
        answers.contains("\"signature\""),
        "the good image is signed and shows it"
    );
    // A wrong signing password: refused by check-config, and neither
    // password (nor the key) is in the error.
    let text = fs::read_to_string(&config).unwrap();
    let wrong_sign = write("wrong-sign-pw", WRONG_SIGN_PASSWORD);
    let wrong_config = work.path().join("wrong-sign.toml");
    fs::write(
        &wrong_config,
        text.replace(
            &sign_pw.display().to_string(),
            &wrong_sign.display().to_string(),
        ),
    )
    .unwrap();
    let checked = Command::new(rebased_bin())
        .args(["check-config", "--config"])
        .arg(&wrong_config)
        .output()
        .unwrap();
    assert_eq!(checked.status.code(), Some(2), "{checked:?}");
    let refusal = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(refusal.contains("password"), "{refusal}");
    let secrets = [
        PASSWORD,
        WRONG_PASSWORD,
        API_TOKEN,
        HOOK_TOKEN,
        SIGN_PASSWORD,
        WRONG_SIGN_PASSWORD,
    ];
    let key_parts = key_lines.iter().map(String::as_str);
    for secret in secrets.into_iter().chain(key_parts) {
        assert!(!answers.contains(secret), "{secret} in an API answer");
        assert!(!log.contains(secret), "{secret} in the daemon log");
        assert!(
            !refusal.contains(secret),
            "{secret} in check-config's refusal"
        );
        assert!(
            !state.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} in the state directory"
        );
    }
}

fn collect_files(dir: &Path, out: &mut Vec<u8>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            // buildah's image storage holds base images, not our secrets.
            if !p.ends_with("containers") {
                collect_files(&p, out);
            }
        } else if let Ok(bytes) = fs::read(&p) {
            out.extend(bytes);
        }
    }
}

#[test]
fn no_shell_runs_and_untrusted_strings_stay_arguments() {
    // The daemon's source never starts a shell (the benchmark harness,
    // which runs the shell-loop peer on purpose, is not the daemon).
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates");
    let mut sources = rust_sources(&root);
    sources.retain(|(p, _)| !p.components().any(|c| c.as_os_str() == "bench"));
    assert!(sources.len() > 20);
    for (path, text) in &sources {
        for shell in [
            "Command::new(\"sh\")",
            "Command::new(\"bash\")",
            "Command::new(\"/bin/sh\")",
            ".arg(\"-c\")",
            "[\"-c\",",
        ] {
            assert!(
                !text.contains(shell),
                "{} starts a shell ({shell})",
                path.display()
            );
        }
    }
    // A build argument and a file name made to look like shell: they reach
    // the engine as one argument each and run nothing on the host.
    let s = Setup::new();
    let registry = &s.registry;
    let marker = s.dir().join("pwned");
    let evil = format!(
        "$(touch {}); `touch {}`",
        marker.display(),
        marker.display()
    );
    let ctx = s.context(
        "app",
        &format!(
            "FROM {}/base:latest\nARG EVIL\nCOPY . /ctx/\nRUN [\"/bin/busybox\", \"true\"]\nLABEL evil=$EVIL\n",
            registry.host
        ),
    );
    // Copied by `COPY . /ctx/`, so the builder handles the name.
    fs::write(ctx.join("$(touch pwned2);x"), "odd name\n").unwrap();
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"0s\"",
        &format!(
            "[builder]\nmax_attempts = 1\n{}",
            image_table(
                "app",
                &ctx,
                &format!("{}/app", registry.host),
                &format!("build_args = {{ EVIL = {evil:?} }}")
            )
        ),
    );
    let daemon = s.start();
    daemon.wait_version_never_failing("app", "1.0.0", WAIT);
    assert_eq!(
        registry.inspect("app:1.0.0")["Labels"]["evil"],
        evil.as_str()
    );
    assert!(!marker.exists(), "a build argument ran on the host");
    assert!(!ctx.join("pwned2").exists() && !Path::new("pwned2").exists());
}

#[test]
fn copy_cannot_reach_outside_the_context() {
    let s = Setup::new();
    let registry = &s.registry;
    let outside = s.dir().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret"), "host file\n").unwrap();
    let cases = [
        ("dotdot", "COPY ../outside/secret /x\n"),
        ("abslink", "COPY abs /x\n"),
        ("parentlink", "COPY dir/secret /x\n"),
    ];
    let mut tables = String::new();
    for (name, copy) in cases {
        let ctx = s.context(name, &format!("FROM {}/base:latest\n{copy}", registry.host));
        std::os::unix::fs::symlink(outside.join("secret"), ctx.join("abs")).unwrap();
        std::os::unix::fs::symlink(&outside, ctx.join("dir")).unwrap();
        tables += &image_table(name, &ctx, &format!("{}/{name}", registry.host), "");
    }
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"0s\"",
        &format!("[builder]\nbackend = \"native\"\nmax_attempts = 1\n{tables}"),
    );
    let daemon = s.start();
    for (name, _) in cases {
        // Refused.
        let error = daemon.wait_failing(name, WAIT);
        assert!(
            error.contains("line 2") && (error.contains("escape") || error.contains("outside")),
            "{name}: {error}"
        );
        assert!(
            registry.digest(&format!("{name}:1.0.0")).is_none(),
            "{name} pushed"
        );
    }
}

#[test]
fn state_directory_and_api_socket_are_private() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let socket = work.path().join("api.sock");
    let ctx = app_context(
        work.path(),
        "app",
        "FROM 127.0.0.1:1/base:latest\nCOPY hello /hello\n",
    );
    let config = work.path().join("rebased.toml");
    fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"{}\"\nlisten = \"unix:{}\"\npoll = \"0 0 0 1 1 *\"\n{}",
            state.display(),
            socket.display(),
            image_table("app", &ctx, "127.0.0.1:1/app", "")
        ),
    )
    .unwrap();
    let mut child = Command::new(rebased_bin())
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the socket", WAIT, || socket.exists().then_some(()));
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700, "state directory");
    assert_eq!(mode(&socket), 0o660, "API socket");
    let answer = wait_for("an answer on the socket", WAIT, || {
        let mut s = std::os::unix::net::UnixStream::connect(&socket).ok()?;
        s.write_all(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    });
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    let _ = child.kill();
    let _ = child.wait();
}
