//! The configs shipped in `config/` are valid and resolve their contexts
//! relative to their own directory, wherever rebased is started from.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use rebased_e2e::rebased_bin;

fn check(file: &str) -> String {
    let config = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config")
        .join(file);
    // Started from elsewhere: relative paths follow the config file.
    let out = Command::new(rebased_bin())
        .args(["check-config", "--config"])
        .arg(&config)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{file}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn the_default_config_watches_a_public_base_into_an_oci_layout() {
    let text = check("rebased.toml");
    assert!(
        text.contains("FROM docker.io/library/busybox:stable"),
        "{text}"
    );
    assert!(
        text.contains("hello -> oci:/var/lib/rebased/images/hello"),
        "{text}"
    );
}

#[test]
fn the_walkthrough_config_is_valid() {
    let text = check("example.toml");
    assert!(text.contains("FROM 127.0.0.1:5000/base:latest"), "{text}");
}
