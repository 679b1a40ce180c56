//! The `email` notifier against a real SMTP server (Debian's aiosmtpd,
//! `tests/smtp/server.py`) on a free loopback port: once plain, once with
//! STARTTLS required and AUTH, its certificate from a CA the test makes
//! with openssl. The test reads the message the server received after a
//! real base update published a version.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rebased_e2e::{free_port, image_table, wait_for, Setup};

const WAIT: Duration = Duration::from_secs(180);

/// The SMTP server; killed on drop.
struct Smtp {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Smtp {
    /// `tls`: (cert, key, user, password).
    fn start(dir: &Path, tls: Option<(&Path, &Path, &str, &str)>) -> Self {
        let out = dir.join("mail");
        fs::create_dir_all(&out).unwrap();
        let port = free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("smtp/server.py");
        // Debian's python3, which has Debian's aiosmtpd (a python3 earlier
        // on PATH, a pyenv one, may not).
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(&script).arg(port.to_string()).arg(&out);
        if let Some((cert, key, user, password)) = tls {
            cmd.arg(cert).arg(key).arg(user).arg(password);
        }
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the SMTP server did not start");
        Self { child, port, out }
    }

    /// The messages received, oldest first.
    fn messages(&self) -> Vec<String> {
        let mut files: Vec<PathBuf> = fs::read_dir(&self.out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        files.sort_by_key(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u32>().ok())
        });
        files
            .iter()
            .map(|p| fs::read_to_string(p).unwrap())
            .collect()
    }
}

/// A CA and a certificate for 127.0.0.1 signed by it: (ca, cert, key).
fn certificate(d: &Path) -> (PathBuf, PathBuf, PathBuf) {
    rebased_e2e::loopback_certificate(d, "rebased test mail CA")
}

/// A header's value in a raw message (first occurrence, unfolded).
fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().take_while(|l| !l.is_empty()).find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    })
}

/// Publishes `app` 1.0.0, then 1.0.1 after a base update, with an email
/// notifier for `published` events only; returns the messages for 1.0.1.
fn publish_and_read(s: &Setup, smtp: &Smtp, extra: &str) -> String {
    let host = s.host();
    let ctx = s.context(
        "app",
        &format!("FROM {host}/base:latest\nCOPY hello /hello\n"),
    );
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"0s\"\n",
        &format!(
            "{}\n[[notify]]\nname = \"mail\"\nkind = \"email\"\nsmtp = \"smtp://127.0.0.1:{}\"\nfrom = \"rebased <rebased@example.com>\"\nto = [\"ops@example.com\", \"dev@example.com\"]\nevents = [\"published\"]\ntimeout = \"10s\"\n{extra}",
            image_table("app", &ctx, &format!("{host}/app"), ""),
            smtp.port
        ),
    );
    let daemon = s.start();
    daemon.wait_version("app", "1.0.0", WAIT);
    s.bases.push(&s.registry, "base:latest", "v2");
    daemon.wait_version("app", "1.0.1", WAIT);
    let msg = wait_for("the 1.0.1 message", WAIT, || {
        smtp.messages()
            .into_iter()
            .find(|m| m.contains("app 1.0.1 published"))
    });
    let n = &daemon.get("/v1/notifiers")[0];
    assert_eq!(n["kind"], "email");
    assert_eq!(n["last_error"], serde_json::Value::Null, "{n}");
    msg
}

fn check_message(msg: &str) {
    assert!(
        header(msg, "From").unwrap().contains("rebased@example.com"),
        "{msg}"
    );
    let to = header(msg, "To").unwrap();
    assert!(
        to.contains("ops@example.com") && to.contains("dev@example.com"),
        "{msg}"
    );
    assert!(
        header(msg, "Subject")
            .unwrap()
            .contains("app 1.0.1 published"),
        "{msg}"
    );
    assert!(
        header(msg, "Content-Type")
            .unwrap()
            .starts_with("multipart/alternative"),
        "{msg}"
    );
    // Both parts, each with the event.
    let plain = msg.find("Content-Type: text/plain").expect("a text part");
    let html = msg.find("Content-Type: text/html").expect("an HTML part");
    assert!(plain < html, "text first, HTML last (the preferred one)");
    assert!(
        msg[plain..html].contains("app 1.0.1 published (was 1.0.0)"),
        "{msg}"
    );
    assert!(
        msg[html..].contains("<li>app 1.0.1 published (was 1.0.0)"),
        "{msg}"
    );
    assert!(msg[html..].contains("/v1/jobs/"), "the job's log: {msg}");
}

#[test]
fn a_publish_is_mailed_as_text_and_html_over_plain_smtp() {
    let s = Setup::new();
    let smtp = Smtp::start(s.dir(), None);
    let msg = publish_and_read(&s, &smtp, "starttls = false\n");
    check_message(&msg);
}

#[test]
fn a_publish_is_mailed_over_starttls_with_auth() {
    let s = Setup::new();
    let (ca, cert, key) = certificate(s.dir());
    let smtp = Smtp::start(s.dir(), Some((&cert, &key, "rebased", "mail-pass-1")));
    let pw = s.dir().join("smtp-password");
    fs::write(&pw, "mail-pass-1\n").unwrap();
    let msg = publish_and_read(
        &s,
        &smtp,
        &format!(
            "username = \"rebased\"\npassword_file = \"{}\"\nca_file = \"{}\"\n",
            pw.display(),
            ca.display()
        ),
    );
    check_message(&msg);
    assert!(!fs::read_to_string(&s.log).unwrap().contains("mail-pass-1"));
}

#[test]
fn starttls_is_required_unless_turned_off() {
    // A server without STARTTLS, a notifier that requires it: nothing is
    // sent, and the notifier says why.
    let s = Setup::new();
    let smtp = Smtp::start(s.dir(), None);
    let host = s.host();
    let ctx = s.context(
        "app",
        &format!("FROM {host}/base:latest\nCOPY hello /hello\n"),
    );
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"0s\"\n",
        &format!(
            "{}\n[[notify]]\nname = \"mail\"\nkind = \"email\"\nsmtp = \"smtp://127.0.0.1:{}\"\nfrom = \"rebased@example.com\"\nto = [\"ops@example.com\"]\n",
            image_table("app", &ctx, &format!("{host}/app"), ""),
            smtp.port
        ),
    );
    let daemon = s.start();
    daemon.wait_version("app", "1.0.0", WAIT);
    let err = wait_for("the delivery error", WAIT, || {
        daemon.get("/v1/notifiers")[0]["last_error"]
            .as_str()
            .map(str::to_owned)
    });
    assert!(err.contains("mail server"), "{err}");
    assert!(smtp.messages().is_empty(), "nothing sent in the clear");
}
