//! Registries as users have them: TLS with a private CA and htpasswd
//! credentials from the config, from Docker's config.json, and from a
//! credential helper; and politeness: one manifest request per base per
//! cycle however many images share it.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::time::Duration;

use rebased_e2e::{free_port, image_table, wait_for, Registry, Setup};

const WAIT: Duration = Duration::from_secs(120);
const USER: &str = "bot";
const PASSWORD: &str = "s3cret-pass";

enum Creds {
    Config,
    DockerConfig,
    Helper,
}

fn detect_update_through(creds: Creds) {
    let (registry, ca) = Registry::start_secure(USER, PASSWORD);
    let s = Setup::with(registry, format!("127.0.0.1:{}", free_port()));
    let (registry, bases, host, work) = (&s.registry, &s.bases, s.host(), &s.work);
    let login = format!("{USER}:{PASSWORD}");
    bases.push_secure(registry, "base:latest", "v1", &ca, &login);

    let ctx = s.context(
        "app",
        &format!("FROM {host}/base:latest\nCOPY hello /hello\n"),
    );
    let mut env: Vec<(String, String)> = Vec::new();
    let registry_section = match creds {
        Creds::Config => {
            let pw = work.path().join("password");
            fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
            format!(
                "username = \"{USER}\"\npassword_file = \"{}\"\n",
                pw.display()
            )
        }
        Creds::DockerConfig | Creds::Helper => {
            let docker = work.path().join("docker");
            fs::create_dir_all(&docker).unwrap();
            let json = match creds {
                Creds::DockerConfig => {
                    use base64::Engine;
                    let auth = base64::engine::general_purpose::STANDARD.encode(&login);
                    format!(r#"{{"auths": {{"{host}": {{"auth": "{auth}"}}}}}}"#)
                }
                _ => {
                    // A helper script on PATH, as docker-credential-* helpers are.
                    let bin = work.path().join("bin");
                    fs::create_dir_all(&bin).unwrap();
                    let script = bin.join("docker-credential-rebtest");
                    fs::write(
                        &script,
                        format!(
                            "#!/bin/sh\nread server\nif [ \"$server\" = \"{host}\" ]; then\n  printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}' \"$server\"\nelse\n  echo 'credentials not found in native keychain'; exit 1\nfi\n"
                        ),
                    )
                    .unwrap();
                    use std::os::unix::fs::PermissionsExt;
                    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
                    let path = format!(
                        "{}:{}",
                        bin.display(),
                        std::env::var("PATH").unwrap_or_default()
                    );
                    env.push(("PATH".into(), path));
                    format!(r#"{{"credHelpers": {{"{host}": "rebtest"}}}}"#)
                }
            };
            fs::write(docker.join("config.json"), json).unwrap();
            env.push(("DOCKER_CONFIG".into(), docker.display().to_string()));
            String::new()
        }
    };
    // Over TLS with the CA: not `insecure` as write_config has it.
    fs::write(
        &s.config,
        format!(
            "[daemon]\nstate_dir = \"{}\"\nlisten = \"{}\"\npoll = \"*/1 * * * * *\"\nsettle = \"0s\"\n\n[builder]\nmax_attempts = 1\n\n[registries.\"{host}\"]\nca_file = \"{}\"\n{registry_section}{}",
            work.path().join("state").display(),
            s.listen,
            ca.display(),
            image_table("app", &ctx, &format!("{host}/app"), "")
        ),
    )
    .unwrap();
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let daemon = s.start_with_env(&env_refs);
    // 1.0.0 through TLS and credentials.
    daemon.wait_version_never_failing("app", "1.0.0", WAIT);
    bases.push_secure(registry, "base:latest", "v2", &ca, &login);
    // 1.0.1 after the base update.
    daemon.wait_version_never_failing("app", "1.0.1", WAIT);
    let log = daemon.log_text();
    assert!(
        !log.contains(PASSWORD),
        "the password must not appear in logs"
    );
}

#[test]
fn tls_and_credentials_from_the_config() {
    detect_update_through(Creds::Config);
}

#[test]
fn credentials_from_docker_config_json() {
    detect_update_through(Creds::DockerConfig);
}

#[test]
fn credentials_from_a_credential_helper() {
    detect_update_through(Creds::Helper);
}

#[test]
fn one_manifest_request_per_base_per_cycle_for_200_images() {
    let s = Setup::empty();
    let (registry, host) = (&s.registry, s.host());
    for b in 0..3 {
        s.bases
            .push(registry, &format!("base{b}:latest"), &format!("b{b}"));
    }
    // Versions go to a registry that is down: every job fails at once, so
    // the only traffic to the real registry is the polling.
    let dead = format!("127.0.0.1:{}", free_port());
    let mut images = String::new();
    for i in 0..200 {
        let ctx = s.context(
            &format!("img{i}"),
            &format!("FROM {host}/base{}:latest\nCOPY hello /hello\n", i % 3),
        );
        images += &image_table(&format!("img{i}"), &ctx, &format!("{dead}/img{i}"), "");
    }
    s.write_config(
        "poll = \"0 0 0 1 1 *\"\nsettle = \"0s\"\n\n[builder]\nmax_attempts = 1",
        &format!("[registries.\"{dead}\"]\ninsecure = true\n{images}"),
    );
    let heads = |r: &Registry| -> Vec<usize> {
        let log = r.log_text();
        (0..3)
            .map(|b| {
                log.matches(&format!("\"HEAD /v2/base{b}/manifests/latest "))
                    .count()
            })
            .collect()
    };
    let before = heads(registry);
    assert_eq!(before, [0, 0, 0]);
    let daemon = s.start();
    // The first cycle.
    daemon.wait_poll(WAIT);
    wait_for("every image decided", WAIT, || {
        let imgs = daemon.get("/v1/images");
        imgs.as_array()
            .unwrap()
            .iter()
            .all(|i| i["state"] == "failing")
            .then_some(())
    });
    assert_eq!(
        heads(registry),
        [1, 1, 1],
        "one HEAD per base for 200 images"
    );
    assert_eq!(daemon.post("/v1/check", None), 202);
    wait_for("the second cycle", WAIT, || {
        (heads(registry) != [1, 1, 1]).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(heads(registry), [2, 2, 2], "again one HEAD per base");
}
