//! Signed versions: every version published to a registry carries a
//! cosign signature (`sha256-<hex>.sig`) that two verifiers which are not
//! ours accept: the sigstore project's Rust client (the `sigstore` crate,
//! its cosign module: `triangulate`, `trusted_signature_layers` and
//! `verify_constraints` with a `PublicKeyVerifier`, no Rekor or Fulcio
//! trust root, as `cosign verify --insecure-ignore-tlog`) and
//! `tests/cosign.py` (Python's `cryptography`, written from cosign's
//! published format; it also checks the payload's `docker-reference`,
//! which sigstore-rs does not). Every check asks both and requires them to
//! agree. Attestations (DSSE), which sigstore-rs does not verify, and keys
//! in cosign's encrypted format written independently (`hashlib.scrypt`
//! and PyNaCl) are `tests/cosign.py`'s; a key made by `rebased keygen` is
//! read back by Python and by rebased; bad keys are refused at start.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rebased_e2e::{image_table, rebased_bin, run, Setup};
use sigstore::cosign::verification_constraint::{PublicKeyVerifier, VerificationConstraintVec};
use sigstore::cosign::{verify_constraints, ClientBuilder, CosignCapabilities};
use sigstore::registry::{Auth, ClientConfig, ClientProtocol, OciReference};

const WAIT: Duration = Duration::from_secs(180);

fn cosign_py() -> Command {
    let mut c = Command::new("python3");
    c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("cosign.py"));
    c
}

/// What sigstore-rs makes of a digest's cosign signature.
#[derive(Debug, PartialEq, Eq)]
enum Sigstore {
    /// A layer of the `.sig` names the digest and is signed by the key.
    Verified,
    /// No signature layer names the digest (no `.sig`, or none of its
    /// layers is a simple-signing payload for it).
    NoLayers,
    /// This many layers name the digest; none is signed by the key.
    NotByKey(usize),
}

/// sigstore-rs's cosign verification of `repo@digest` in the test
/// registry (plain http) with the public key PEM at `public`: the
/// signature's place found by `triangulate`, its layers read and checked
/// against the digest by `trusted_signature_layers` (no trust root: these
/// signatures have no transparency-log entry), then `verify_constraints`
/// with a `PublicKeyVerifier`.
fn sigstore_rs(host: &str, repo: &str, digest: &str, public: &Path) -> Sigstore {
    let key = fs::read(public).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(vec![host.to_owned()]),
            ..ClientConfig::default()
        };
        let mut client = ClientBuilder::default()
            .with_oci_client_config(config)
            .build()
            .unwrap();
        let image = OciReference::with_digest(host.to_owned(), repo.to_owned(), digest.to_owned());
        let (signatures, resolved) = client.triangulate(&image, &Auth::Anonymous).await.unwrap();
        assert_eq!(resolved, digest);
        let tag = format!("{}.sig", digest.replace(':', "-"));
        assert_eq!(signatures.tag(), Some(tag.as_str()), "{signatures}");
        let layers = client
            .trusted_signature_layers(&Auth::Anonymous, &image)
            .await
            .unwrap();
        if layers.is_empty() {
            return Sigstore::NoLayers;
        }
        let constraints: VerificationConstraintVec =
            vec![Box::new(PublicKeyVerifier::try_from(&key).unwrap())];
        match verify_constraints(&layers, constraints.iter()) {
            Ok(()) => Sigstore::Verified,
            Err(_) => Sigstore::NotByKey(layers.len()),
        }
    })
}

/// Whether `repo@digest`'s signature verifies with the key at `public`,
/// by sigstore-rs and by `tests/cosign.py`, which must agree.
fn verifies(s: &Setup, repo: &str, digest: &str, public: &Path) -> bool {
    let sigstore = sigstore_rs(s.host(), repo, digest, public);
    let python = cosign_py()
        .args(["verify", s.host(), repo, digest])
        .arg(public)
        .output()
        .unwrap();
    assert_eq!(
        sigstore == Sigstore::Verified,
        python.status.success(),
        "sigstore-rs: {sigstore:?}; cosign.py: {}",
        String::from_utf8_lossy(&python.stderr)
    );
    python.status.success()
}

fn signing_section(dir: &Path, password: &str) -> String {
    fs::write(dir.join("cosign.password"), format!("{password}\n")).unwrap();
    format!(
        "\n[signing]\nkey_file = \"{}\"\npassword_file = \"{}\"\n",
        dir.join("cosign.key").display(),
        dir.join("cosign.password").display()
    )
}

fn setup(password: &str) -> Setup {
    let s = Setup::new();
    let host = s.host().to_owned();
    let ctx = s.context(
        "app",
        &format!("FROM {host}/base:latest\nCOPY hello /hello\n"),
    );
    let signing = signing_section(s.dir(), password);
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"0s\"\n[builder]\nmax_attempts = 1",
        &format!(
            "{signing}{}",
            image_table(
                "app",
                &ctx,
                &format!("{host}/app"),
                "tags = [\"{major}.{minor}\", \"latest\"]\n"
            )
        ),
    );
    s
}

fn check_config(config: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(rebased_bin())
        .args(["check-config", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_published_version_verifies_and_what_else_is_pushed_does_not() {
    let s = setup("p4ss word");
    // The key in cosign's format, written by Python, not by us.
    run(cosign_py().args(["make-key"]).arg(s.dir()).arg("p4ss word"));
    let public = s.dir().join("cosign.pub");
    let (code, out, err) = check_config(&s.config);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("signing: key sha256:"), "{out}");

    let daemon = s.start();
    daemon.wait_version("app", "1.0.0", WAIT);
    let v100 = s.registry.digest("app:1.0.0").unwrap();
    assert!(verifies(&s, "app", &v100, &public), "1.0.0 verifies");
    // A real base update: the new version is signed too.
    s.bases.push(&s.registry, "base:latest", "v2");
    daemon.wait_version("app", "1.0.1", WAIT);
    let v101 = s.registry.digest("app:1.0.1").unwrap();
    assert!(verifies(&s, "app", &v101, &public), "1.0.1 verifies");
    assert_eq!(
        s.registry.digest("app:latest").as_deref(),
        Some(v101.as_str())
    );
    let tags = s.registry.tags("app");
    let sig_tag = format!("sha256-{}.sig", v101.trim_start_matches("sha256:"));
    assert!(tags.contains(&sig_tag), "{tags:?}");
    // The ledger records the signature (and no secret).
    let image = daemon.image("app");
    let text = image.to_string();
    assert!(!text.contains("p4ss word"), "{text}");
    let log = daemon.log_text();
    assert!(!log.contains("p4ss word"), "{log}");

    // Pushed by hand to the same repository: no signature.
    let foreign = s.bases.push(&s.registry, "app:hand-made", "foreign");
    assert!(!verifies(&s, "app", &foreign, &public), "unsigned");
    assert_eq!(
        sigstore_rs(s.host(), "app", &foreign, &public),
        Sigstore::NoLayers
    );
    // A payload tampered to name it, under 1.0.1's signature: sigstore-rs
    // finds the layer naming the digest and refuses its signature.
    run(cosign_py().args(["tamper", s.host(), "app", &v101, &foreign]));
    assert!(!verifies(&s, "app", &foreign, &public), "tampered payload");
    assert_eq!(
        sigstore_rs(s.host(), "app", &foreign, &public),
        Sigstore::NotByKey(1)
    );
    // Another key's public half does not verify 1.0.1.
    let other = s.dir().join("other");
    fs::create_dir_all(&other).unwrap();
    run(cosign_py().args(["make-key"]).arg(&other).arg("x"));
    assert!(!verifies(&s, "app", &v101, &other.join("cosign.pub")));
    assert_eq!(
        sigstore_rs(s.host(), "app", &v101, &other.join("cosign.pub")),
        Sigstore::NotByKey(1)
    );
    // 1.0.1 itself still verifies: the rejections above are not a
    // verifier that refuses everything.
    assert_eq!(
        sigstore_rs(s.host(), "app", &v101, &public),
        Sigstore::Verified
    );
}

#[test]
fn a_crash_between_the_signature_and_the_record_signs_then_moves_the_tags() {
    let s = setup("pw");
    run(cosign_py().args(["make-key"]).arg(s.dir()).arg("pw"));
    let public = s.dir().join("cosign.pub");
    let daemon = s.start();
    daemon.wait_version("app", "1.0.0", WAIT);
    let v100 = s.registry.digest("app:1.0.0").unwrap();
    drop(daemon);
    let mut daemon = s.start_with_env(&[("REBASED_FAILPOINT", "after-signature")]);
    s.bases.push(&s.registry, "base:latest", "v2");
    let status = daemon.wait_exit(WAIT);
    assert!(!status.success(), "the failpoint aborts the daemon");
    let v101 = s.registry.digest("app:1.0.1").unwrap();
    assert!(
        verifies(&s, "app", &v101, &public),
        "signed before the crash"
    );
    assert_eq!(
        s.registry.digest("app:latest").as_deref(),
        Some(v100.as_str()),
        "no floating tag moved before the signature"
    );
    let daemon = s.start();
    daemon.wait_version("app", "1.0.1", WAIT);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        s.registry.digest("app:latest").as_deref(),
        Some(v101.as_str())
    );
    assert!(verifies(&s, "app", &v101, &public));
}

#[test]
fn keygen_writes_a_cosign_key_that_both_sides_read_and_bad_keys_are_refused() {
    let s = setup("right");
    let dir = s.dir();
    fs::write(dir.join("pw"), "right\n").unwrap();
    // No password file and no terminal to ask on: refused, saying what to pass.
    let out = Command::new(rebased_bin())
        .args(["keygen", "--out"])
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--password-file"));
    let out = Command::new(rebased_bin())
        .args(["keygen", "--out"])
        .arg(dir)
        .arg("--password-file")
        .arg(dir.join("pw"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let key = fs::read_to_string(dir.join("cosign.key")).unwrap();
    assert!(
        key.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----"),
        "{key}"
    );
    let public = fs::read_to_string(dir.join("cosign.pub")).unwrap();
    assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"), "{public}");
    // Python opens it with the password and finds the same public key.
    let read = run(cosign_py()
        .arg("read-key")
        .arg(dir.join("cosign.key"))
        .arg("right"));
    assert_eq!(read.trim(), public.trim());
    // And rebased reads it back.
    let (code, out, err) = check_config(&s.config);
    assert_eq!(code, Some(0), "{out}{err}");
    // A second keygen does not replace it.
    let again = Command::new(rebased_bin())
        .args(["keygen", "--out"])
        .arg(dir)
        .arg("--password-file")
        .arg(dir.join("pw"))
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert_eq!(fs::read_to_string(dir.join("cosign.key")).unwrap(), key);

    // Asked for on a terminal (a pty): not echoed, typed twice, then read back.
    let prompted = dir.join("prompted");
    let script = r#"
import os, subprocess, sys, time
master, slave = os.openpty()
p = subprocess.Popen(sys.argv[1:], stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
os.close(slave)
os.set_blocking(master, False)
echoed = b""
def drain():
    global echoed
    time.sleep(0.3)
    try:
        echoed += os.read(master, 4096)
    except (BlockingIOError, OSError):
        pass
def wait_for(text):
    seen = b""
    while text not in seen:
        seen += os.read(p.stderr.fileno(), 1)
wait_for(b"password for the new key: ")
os.write(master, b"typed secret\n")
drain()
wait_for(b"the same password again: ")
os.write(master, b"typed secret\n")
drain()
out, err = p.communicate(timeout=60)
print(p.returncode, b"typed secret" in echoed + out + err)
"#;
    let out = run(Command::new("python3")
        .args(["-c", script])
        .arg(rebased_bin())
        .args(["keygen", "--out"])
        .arg(&prompted));
    assert_eq!(out.trim(), "0 False", "exit 0, the password never echoed");
    let read = run(cosign_py()
        .arg("read-key")
        .arg(prompted.join("cosign.key"))
        .arg("typed secret"));
    assert_eq!(
        read.trim(),
        fs::read_to_string(prompted.join("cosign.pub"))
            .unwrap()
            .trim()
    );

    // A wrong password: refused by check-config and at start, naming the
    // file and never the password.
    fs::write(dir.join("cosign.password"), "wrong-secret\n").unwrap();
    let (code, out, err) = check_config(&s.config);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        err.contains("wrong password") && err.contains("cosign.key"),
        "{err}"
    );
    assert!(
        !err.contains("wrong-secret") && !err.contains("right"),
        "{err}"
    );
    let run_out = Command::new(rebased_bin())
        .args(["run", "--config"])
        .arg(&s.config)
        .output()
        .unwrap();
    assert_eq!(run_out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run_out.stderr).contains("wrong password"));
    // Not P-256 (an Ed25519 PKCS#8 key): refused as such.
    fs::write(
        dir.join("cosign.key"),
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let (code, _, err) = check_config(&s.config);
    assert_eq!(code, Some(2));
    assert!(err.contains("not an ECDSA P-256 key"), "{err}");
    // Unreadable.
    fs::write(dir.join("cosign.key"), "not a key").unwrap();
    let (code, _, err) = check_config(&s.config);
    assert_eq!(code, Some(2));
    assert!(err.contains("unreadable key"), "{err}");
}

#[test]
fn attestations_carry_verified_provenance_and_the_packages_of_the_layers() {
    let s = Setup::empty();
    let host = s.host().to_owned();
    let status = "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9+deb12u4\nDescription: GNU C Library\n shared libraries\n\nPackage: old-tool\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1.0\n\nPackage: tzdata\nStatus: install ok installed\nArchitecture: all\nVersion: 2024a-0+deb12u1\n";
    let deb = s.bases.push_with_files(
        &s.registry,
        "deb:latest",
        "deb",
        &[
            ("var/lib/dpkg/status", status),
            (
                "etc/os-release",
                "ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
            ),
        ],
    );
    let apk = s.bases.push_with_files(
        &s.registry,
        "alp:latest",
        "alp",
        &[
            ("lib/apk/db/installed", "C:Q1abc=\nP:musl\nV:1.2.4_git20230717-r4\nA:x86_64\n\nP:busybox\nV:1.36.1-r15\nA:x86_64\n"),
            ("etc/os-release", "ID=alpine\nVERSION_ID=3.19.1\n"),
        ],
    );
    let deb_ctx = s.context(
        "appdeb",
        &format!("FROM {host}/deb:latest\nCOPY hello /hello\n"),
    );
    let apk_ctx = s.context(
        "appapk",
        &format!("FROM {host}/alp:latest\nCOPY hello /hello\n"),
    );
    run(cosign_py().args(["make-key"]).arg(s.dir()).arg("pw"));
    let public = s.dir().join("cosign.pub");
    let signing = signing_section(s.dir(), "pw");
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"0s\"\n[builder]\nmax_attempts = 1",
        &format!(
            "{signing}attest = [\"slsa\", \"sbom\"]\n{}{}",
            image_table("appdeb", &deb_ctx, &format!("{host}/appdeb"), ""),
            image_table("appapk", &apk_ctx, &format!("{host}/appapk"), "")
        ),
    );
    let daemon = s.start();
    daemon.wait_version("appdeb", "1.0.0", WAIT);
    daemon.wait_version("appapk", "1.0.0", WAIT);
    let attestations = |repo: &str, digest: &str| -> Vec<serde_json::Value> {
        let out = run(cosign_py()
            .args(["attestations", &host, repo, digest])
            .arg(&public));
        serde_json::from_str(&out).unwrap()
    };
    let packages = |atts: &[serde_json::Value]| -> Vec<String> {
        let sbom = atts
            .iter()
            .find(|a| a["annotation"] == "https://spdx.dev/Document")
            .expect("an SBOM");
        assert_eq!(sbom["statement"]["predicate"]["spdxVersion"], "SPDX-2.3");
        let mut names: Vec<String> = sbom["statement"]["predicate"]["packages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["primaryPackagePurpose"] != "OPERATING-SYSTEM")
            .map(|p| {
                format!(
                    "{}@{}",
                    p["name"].as_str().unwrap(),
                    p["versionInfo"].as_str().unwrap()
                )
            })
            .collect();
        names.sort();
        names
    };

    let v = s.registry.digest("appdeb:1.0.0").unwrap();
    let atts = attestations("appdeb", &v);
    assert_eq!(atts.len(), 2, "{atts:?}");
    let slsa = atts
        .iter()
        .find(|a| a["annotation"] == "https://slsa.dev/provenance/v1")
        .expect("provenance");
    assert_eq!(slsa["payloadType"], "application/vnd.in-toto+json");
    let st = &slsa["statement"];
    assert_eq!(st["predicateType"], "https://slsa.dev/provenance/v1");
    assert_eq!(st["subject"][0]["name"], format!("{host}/appdeb"));
    assert_eq!(
        format!(
            "sha256:{}",
            st["subject"][0]["digest"]["sha256"].as_str().unwrap()
        ),
        v,
        "the subject is the version's digest in the registry"
    );
    let deps = st["predicate"]["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .unwrap();
    assert_eq!(deps.len(), 1, "{deps:?}");
    assert_eq!(deps[0]["uri"], format!("{host}/deb:latest@{deb}"));
    let run_details = &st["predicate"]["runDetails"];
    assert!(
        run_details["builder"]["id"]
            .as_str()
            .unwrap()
            .starts_with("urn:rebased:"),
        "{run_details}"
    );
    assert!(run_details["metadata"]["startedOn"].is_string());
    assert!(run_details["metadata"]["finishedOn"].is_string());
    assert_eq!(
        packages(&atts),
        ["libc6@2.36-9+deb12u4", "tzdata@2024a-0+deb12u1"],
        "exactly the installed dpkg packages"
    );

    let v = s.registry.digest("appapk:1.0.0").unwrap();
    let atts = attestations("appapk", &v);
    assert_eq!(
        packages(&atts),
        ["busybox@1.36.1-r15", "musl@1.2.4_git20230717-r4"]
    );
    let st = &atts
        .iter()
        .find(|a| a["annotation"] == "https://slsa.dev/provenance/v1")
        .unwrap()["statement"];
    assert_eq!(
        st["predicate"]["buildDefinition"]["resolvedDependencies"][0]["uri"],
        format!("{host}/alp:latest@{apk}")
    );
}

/// `POST /v1/audit` (every image): the audits' JSON.
fn audit(s: &Setup) -> serde_json::Value {
    let resp = reqwest::blocking::Client::new()
        .post(format!("http://{}/v1/audit", s.listen))
        .timeout(Duration::from_secs(120))
        .send()
        .unwrap();
    assert!(resp.status().is_success(), "{:?}", resp.status());
    resp.json().unwrap()
}

fn kinds(audits: &serde_json::Value) -> Vec<(String, String, bool)> {
    let mut out: Vec<(String, String, bool)> = audits[0]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_owned(),
                f["tag"].as_str().unwrap().to_owned(),
                f["repaired"].is_string(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_audit_reports_a_moved_version_tag_a_moved_floating_tag_and_a_lost_signature_and_repairs_them(
) {
    let s = setup("pw");
    run(cosign_py().args(["make-key"]).arg(s.dir()).arg("pw"));
    let public = s.dir().join("cosign.pub");
    let mut daemon = s.start();
    daemon.wait_version("app", "1.0.0", WAIT);
    s.bases.push(&s.registry, "base:latest", "v2");
    daemon.wait_version("app", "1.0.1", WAIT);
    std::thread::sleep(Duration::from_secs(2));
    let v100 = s.registry.digest("app:1.0.0").unwrap();
    let v101 = s.registry.digest("app:1.0.1").unwrap();
    assert_eq!(
        s.registry.digest("app:latest").as_deref(),
        Some(v101.as_str())
    );
    let clean = audit(&s);
    assert_eq!(kinds(&clean), [], "{clean:#}");
    assert_eq!(clean[0]["versions"], 2);
    let out = daemon.cli(&["audit", "app"]);
    assert!(out.contains("app: 2 versions, no drift"), "{out}");

    // Someone with push rights: 1.0.0 overwritten with skopeo, `latest`
    // moved, 1.0.1's signature deleted.
    let host = s.host().to_owned();
    let foreign = s.bases.push(&s.registry, "elsewhere:x", "foreign");
    let copy = |from: &str, to: &str| {
        rebased_e2e::skopeo(&[
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{host}/{from}"),
            &format!("docker://{host}/{to}"),
        ]);
    };
    copy("elsewhere:x", "app:1.0.0");
    copy("elsewhere:x", "app:latest");
    let sig_tag = format!("sha256-{}.sig", v101.trim_start_matches("sha256:"));
    let sig = s.registry.digest(&format!("app:{sig_tag}")).unwrap();
    let deleted = reqwest::blocking::Client::new()
        .delete(format!("http://{host}/v2/app/manifests/{sig}"))
        .send()
        .unwrap();
    assert!(deleted.status().is_success(), "{:?}", deleted.status());
    assert!(!verifies(&s, "app", &v101, &public));
    assert_eq!(
        s.registry.digest("app:1.0.0").as_deref(),
        Some(foreign.as_str())
    );

    let found = audit(&s);
    assert_eq!(
        kinds(&found),
        [
            ("floating_tag_moved".to_owned(), "latest".to_owned(), false),
            ("signature_missing".to_owned(), sig_tag.clone(), false),
            ("version_tag_moved".to_owned(), "1.0.0".to_owned(), false),
        ],
        "{found:#}"
    );
    let moved = found[0]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "version_tag_moved")
        .unwrap()
        .clone();
    assert_eq!(moved["expected"], v100.as_str());
    assert_eq!(moved["found"], foreign.as_str());
    // Shown on the image and in the status, counted in the metrics.
    let image = daemon.image("app");
    assert_eq!(
        image["audit"]["findings"].as_array().unwrap().len(),
        3,
        "{image:#}"
    );
    let status = daemon.get("/v1/status");
    assert_eq!(status["audit"]["drift"], 3, "{status:#}");
    assert_eq!(status["audit"]["images"][0], "app");
    let metrics = daemon.get_text("/metrics");
    for kind in [
        "floating_tag_moved",
        "signature_missing",
        "version_tag_moved",
    ] {
        assert!(
            metrics.contains(&format!(
                "rebased_audit_findings_total{{kind=\"{kind}\",repaired=\"false\"}} 1"
            )),
            "{metrics}"
        );
    }
    assert!(
        metrics.contains("rebased_audit_drift{image=\"app\"} 3"),
        "{metrics}"
    );
    // Nothing was repaired without audit_repair.
    assert_eq!(
        s.registry.digest("app:latest").as_deref(),
        Some(foreign.as_str())
    );
    daemon.stop();

    // The drift events are in the ledger, each with expected and found.
    {
        let store = rebased_state::Store::open(&s.dir().join("state").join("db")).unwrap();
        let drift: Vec<rebased_state::Finding> = store
            .events("app")
            .unwrap()
            .into_iter()
            .filter_map(|e| match e.kind {
                rebased_state::EventKind::Drift { finding } => Some(finding),
                _ => None,
            })
            .collect();
        assert_eq!(drift.len(), 3, "{drift:?}");
        assert!(drift
            .iter()
            .any(|f| f.tag == "latest" && f.found.as_deref() == Some(foreign.as_str())));
    }
    // sled releases its lock a moment after the last handle.
    std::thread::sleep(Duration::from_secs(1));

    // With audit_repair: every one is put right, and recorded so.
    let text = fs::read_to_string(&s.config).unwrap();
    fs::write(
        &s.config,
        text.replace("settle = \"0s\"", "settle = \"0s\"\naudit_repair = true"),
    )
    .unwrap();
    let daemon = s.start();
    let repaired = audit(&s);
    assert_eq!(
        kinds(&repaired),
        [
            ("floating_tag_moved".to_owned(), "latest".to_owned(), true),
            ("signature_missing".to_owned(), sig_tag.clone(), true),
            ("version_tag_moved".to_owned(), "1.0.0".to_owned(), true),
        ],
        "{repaired:#}"
    );
    assert_eq!(
        s.registry.digest("app:1.0.0").as_deref(),
        Some(v100.as_str())
    );
    assert_eq!(
        s.registry.digest("app:latest").as_deref(),
        Some(v101.as_str())
    );
    assert!(verifies(&s, "app", &v101, &public), "signed again");
    assert_eq!(daemon.get("/v1/status")["audit"]["drift"], 0);
    // The foreign image is still in the registry: nothing was deleted.
    assert_eq!(
        s.registry.digest("elsewhere:x").as_deref(),
        Some(foreign.as_str())
    );
    let again = audit(&s);
    assert_eq!(kinds(&again), [], "{again:#}");
    let out = daemon.cli(&["audit"]);
    assert!(out.contains("app: 2 versions, no drift"), "{out}");
}

#[test]
fn the_audit_runs_on_its_schedule() {
    let s = setup("pw");
    run(cosign_py().args(["make-key"]).arg(s.dir()).arg("pw"));
    let text = fs::read_to_string(&s.config).unwrap();
    fs::write(
        &s.config,
        text.replace(
            "settle = \"0s\"",
            "settle = \"0s\"\naudit = \"*/2 * * * * *\"",
        ),
    )
    .unwrap();
    let (code, out, err) = check_config(&s.config);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("audit: */2 * * * * *"), "{out}");
    let daemon = s.start();
    daemon.wait_version("app", "1.0.0", WAIT);
    // No request: the schedule runs it, and finds the signed version intact.
    let audited = rebased_e2e::wait_for("a scheduled audit", Duration::from_secs(30), || {
        let image = daemon.image("app");
        (image["audit"]["versions"] == 1).then_some(image)
    });
    assert_eq!(
        audited["audit"]["findings"],
        serde_json::json!([]),
        "{audited:#}"
    );
    let status = daemon.get("/v1/status");
    assert!(status["audit"]["last_run"].is_string(), "{status:#}");
    assert_eq!(status["audit"]["drift"], 0);
    assert!(
        audited["versions"][0]["signature"]["key"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{audited:#}"
    );
}

#[test]
fn an_index_is_signed_and_so_is_each_child() {
    let s = Setup::empty();
    let host = s.host().to_owned();
    let amd = s
        .bases
        .push_platform(&s.registry, "parts:amd64", "amd64", Some("linux/amd64"));
    let arm = s
        .bases
        .push_platform(&s.registry, "parts:arm64", "arm64", Some("linux/arm64"));
    s.bases
        .push_index(&s.registry, "parts", &[&amd, &arm], "base:latest");
    let ctx = s.context(
        "app",
        &format!("FROM {host}/base:latest\nCOPY hello /hello\n"),
    );
    run(cosign_py().args(["make-key"]).arg(s.dir()).arg("pw"));
    let public = s.dir().join("cosign.pub");
    let signing = signing_section(s.dir(), "pw");
    s.write_config(
        "poll = \"*/1 * * * * *\"\nsettle = \"0s\"\n[builder]\nmax_attempts = 1",
        &format!(
            "{signing}attest = [\"sbom\"]\n{}",
            image_table(
                "app",
                &ctx,
                &format!("{host}/app"),
                "platforms = [\"linux/amd64\", \"linux/arm64\"]\n"
            )
        ),
    );
    let daemon = s.start();
    daemon.wait_version("app", "1.0.0", WAIT);
    let index = s.registry.digest("app:1.0.0").unwrap();
    assert!(verifies(&s, "app", &index, &public), "the index verifies");
    let manifest = s.registry.raw_manifest("app:1.0.0");
    let children: Vec<String> = manifest["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(children.len(), 2, "{manifest:#}");
    for child in &children {
        assert!(
            verifies(&s, "app", child, &public),
            "child {child} verifies"
        );
    }
    // One SBOM per child, under the index's attestations.
    let out = run(cosign_py()
        .args(["attestations", &host, "app", &index])
        .arg(&public));
    let atts: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let mut subjects: Vec<String> = atts
        .iter()
        .map(|a| {
            format!(
                "sha256:{}",
                a["statement"]["subject"][0]["digest"]["sha256"]
                    .as_str()
                    .unwrap()
            )
        })
        .collect();
    subjects.sort();
    let mut want = children.clone();
    want.sort();
    assert_eq!(subjects, want);
    // The first child's signature over a payload naming the second, in
    // the second's `.sig`: sigstore-rs refuses it.
    run(cosign_py().args(["tamper", &host, "app", &children[0], &children[1]]));
    assert_eq!(
        sigstore_rs(&host, "app", &children[1], &public),
        Sigstore::NotByKey(1)
    );
    assert!(!verifies(&s, "app", &children[1], &public));
    assert!(verifies(&s, "app", &children[0], &public));
}

/// `rebased_registry_requests_total` of `kind`, summed over outcomes.
fn requests(metrics: &str, kind: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("rebased_registry_requests_total{")
                && l.contains(&format!("kind=\"{kind}\""))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

#[test]
fn the_audit_asks_once_per_tag() {
    let s = setup("pw");
    run(cosign_py().args(["make-key"]).arg(s.dir()).arg("pw"));
    // Polls only at start: the audit's requests are the only ones after.
    let text = fs::read_to_string(&s.config).unwrap();
    fs::write(
        &s.config,
        text.replace("poll = \"*/1 * * * * *\"", "poll = \"0 0 1 1 *\""),
    )
    .unwrap();
    let daemon = s.start();
    daemon.wait_version("app", "1.0.0", WAIT);
    std::thread::sleep(Duration::from_secs(2));
    let before = daemon.get_text("/metrics");
    let clean = audit(&s);
    assert_eq!(kinds(&clean), [], "{clean:#}");
    let after = daemon.get_text("/metrics");
    let delta = |kind: &str| requests(&after, kind) - requests(&before, kind);
    // The version tag and the two floating tags (`1.0`, `latest`).
    assert_eq!(delta("manifest_head"), 3, "{after}");
    // The signature tag, and its payload.
    assert_eq!(delta("manifest_get"), 1, "{after}");
    assert_eq!(delta("blob_get"), 1, "{after}");
    assert_eq!(delta("manifest_put"), 0);
}

/// The state directory lost: both versions are read back from the
/// registry without a signature record. The audit checks the `.sig` of
/// each with the key in force: 1.0.1's (signed) is recorded, 1.0.0's
/// (published before `[signing]`) is missing, and `audit_repair` signs it.
/// Then the key changes: the signatures already recorded are checked with
/// the key that made them, so none of them is a finding.
#[test]
fn versions_read_back_have_their_signatures_checked_and_recorded_and_a_new_key_leaves_old_ones_alone(
) {
    let s = Setup::new();
    let host = s.host().to_owned();
    let ctx = s.context(
        "app",
        &format!("FROM {host}/base:latest\nCOPY hello /hello\n"),
    );
    let daemon_extra = "poll = \"*/1 * * * * *\"\nsettle = \"0s\"\n[builder]\nmax_attempts = 1";
    let table = image_table("app", &ctx, &format!("{host}/app"), "tags = [\"latest\"]\n");
    // 1.0.0 before signing was configured.
    s.write_config(daemon_extra, &table);
    let mut daemon = s.start();
    daemon.wait_version("app", "1.0.0", WAIT);
    daemon.stop();
    let v100 = s.registry.digest("app:1.0.0").unwrap();
    // 1.0.1 signed.
    run(cosign_py().args(["make-key"]).arg(s.dir()).arg("pw"));
    let public = s.dir().join("cosign.pub");
    let signing = signing_section(s.dir(), "pw");
    s.write_config(daemon_extra, &format!("{signing}{table}"));
    let mut daemon = s.start();
    s.bases.push(&s.registry, "base:latest", "v2");
    daemon.wait_version("app", "1.0.1", WAIT);
    daemon.stop();
    let v101 = s.registry.digest("app:1.0.1").unwrap();
    assert!(verifies(&s, "app", &v101, &public));
    assert!(!verifies(&s, "app", &v100, &public));

    // The state directory is lost; the ledger is read back.
    std::thread::sleep(Duration::from_secs(1));
    fs::remove_dir_all(s.dir().join("state")).unwrap();
    let mut daemon = s.start();
    let found = rebased_e2e::wait_for("the versions read back", WAIT, || {
        let image = daemon.image("app");
        (image["versions"].as_array().map(Vec::len) == Some(2)).then_some(image)
    });
    assert!(found["versions"][0]["signature"].is_null(), "{found:#}");
    let sig100 = format!("sha256-{}.sig", v100.trim_start_matches("sha256:"));
    let audited = audit(&s);
    assert_eq!(
        kinds(&audited),
        [("signature_missing".to_owned(), sig100.clone(), false)],
        "{audited:#}"
    );
    // 1.0.1's signature is recorded now, with the key that made it.
    let image = daemon.image("app");
    let shown = |image: &serde_json::Value, v: &str| {
        image["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["version"] == v)
            .unwrap()["signature"]
            .clone()
    };
    let sig = shown(&image, "1.0.1");
    assert!(
        sig["key"].as_str().unwrap().starts_with("sha256:"),
        "{image:#}"
    );
    assert!(shown(&image, "1.0.0").is_null(), "{image:#}");
    daemon.stop();

    // With audit_repair, 1.0.0 is signed; a second audit finds nothing.
    std::thread::sleep(Duration::from_secs(1));
    s.write_config(
        &daemon_extra.replace("settle = \"0s\"", "settle = \"0s\"\naudit_repair = true"),
        &format!("{signing}{table}"),
    );
    let text = fs::read_to_string(&s.config).unwrap();
    assert!(text.contains("audit_repair = true"), "{text}");
    let mut daemon = s.start();
    let repaired = audit(&s);
    assert_eq!(
        kinds(&repaired),
        [("signature_missing".to_owned(), sig100.clone(), true)],
        "{repaired:#}"
    );
    assert!(
        verifies(&s, "app", &v100, &public),
        "1.0.0 signed by the repair"
    );
    let again = audit(&s);
    assert_eq!(kinds(&again), [], "{again:#}");

    // 1.0.0's .sig replaced by one whose payload was tampered with: the
    // repair adds a good signature and keeps what the tag held (it never
    // deletes), as cosign adds signatures.
    run(cosign_py().args(["tamper", &host, "app", &v101, &v100]));
    assert!(!verifies(&s, "app", &v100, &public));
    let tampered = audit(&s);
    assert_eq!(
        kinds(&tampered),
        [("signature_invalid".to_owned(), sig100.clone(), true)],
        "{tampered:#}"
    );
    assert!(verifies(&s, "app", &v100, &public), "signed again");
    let sig_manifest: serde_json::Value = reqwest::blocking::Client::new()
        .get(format!("http://{host}/v2/app/manifests/{sig100}"))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        sig_manifest["layers"].as_array().map(Vec::len),
        Some(2),
        "the tampered layer kept, ours added: {sig_manifest:#}"
    );
    let again = audit(&s);
    assert_eq!(kinds(&again), [], "{again:#}");
    daemon.stop();

    // A new key: it would sign new versions; the recorded signatures stay
    // and are checked with the key that made them, so nothing drifts.
    std::thread::sleep(Duration::from_secs(1));
    let old = s.dir().join("old");
    fs::create_dir_all(&old).unwrap();
    fs::rename(s.dir().join("cosign.key"), old.join("cosign.key")).unwrap();
    fs::rename(&public, old.join("cosign.pub")).unwrap();
    run(cosign_py().args(["make-key"]).arg(s.dir()).arg("pw"));
    let daemon = s.start();
    let rotated = audit(&s);
    assert_eq!(kinds(&rotated), [], "{rotated:#}");
    assert_eq!(rotated[0]["versions"], 2);
    assert!(verifies(&s, "app", &v100, &old.join("cosign.pub")));
    assert!(verifies(&s, "app", &v101, &old.join("cosign.pub")));

    // Started without waiting: 202 at once, the audit recorded after it.
    let before = daemon.image("app")["audit"]["at"].clone();
    let r = reqwest::blocking::Client::new()
        .post(format!("http://{}/v1/audit?wait=false", s.listen))
        .json(&serde_json::json!({"image": "app"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let started: serde_json::Value = r.json().unwrap();
    assert_eq!(started["images"], serde_json::json!(["app"]), "{started:#}");
    assert!(started["at"].is_string(), "{started:#}");
    let image = rebased_e2e::wait_for("the started audit recorded", WAIT, || {
        let image = daemon.image("app");
        (image["audit"]["at"] != before).then_some(image)
    });
    assert_eq!(
        image["audit"]["findings"],
        serde_json::json!([]),
        "{image:#}"
    );
    let out = daemon.cli(&["audit", "--no-wait"]);
    assert!(out.contains("audit of 1 image(s) started at"), "{out}");
    // An unknown image is refused before anything starts.
    let r = reqwest::blocking::Client::new()
        .post(format!("http://{}/v1/audit?wait=false", s.listen))
        .json(&serde_json::json!({"image": "nope"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    drop(daemon);
}
