//! The `rebased` binary: the CLI and its exit codes. The daemon's parts,
//! each layer using only the ones below it:
//!
//! - [`supervisor`]: wiring, every task, signals, watchdog, shutdown;
//! - [`reload`], [`read_model`] (the API's backend), [`poll`] (the poll
//!   loop);
//! - [`reconcile`]: the one decision per image, and the job executor;
//! - [`ledger`] (import, rollback), [`build`], [`publish`];
//! - [`destination`], [`records`], [`status`], [`live`] (the config in
//!   force), [`config`] (files), [`notify`], [`logging`].

mod attest;
mod audit;
mod build;
mod client;
mod config;
mod contexts;
mod destination;
mod events;
mod ledger;
mod live;
mod logging;
mod memo;
mod notifiers;
mod notify;
mod poll;
mod publish;
mod read_model;
mod reconcile;
mod records;
mod reload;
mod signing;
mod status;
mod supervisor;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Keeps container images fresh: watches the bases your Dockerfiles build
/// FROM and rebuilds, versions and re-tags the images on top of them.
#[derive(Parser)]
#[command(name = "rebased", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// The config file.
        #[arg(long, short, default_value = config::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// One check and the builds it causes, then exit: 1 when a base could
    /// not be checked, a Dockerfile could not be read or a build failed.
    Once {
        /// The config file.
        #[arg(long, short, default_value = config::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate the config and print the plan: images, bases, build order.
    CheckConfig {
        /// The config file.
        #[arg(long, short, default_value = config::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Write a new signing key pair: DIR/cosign.key (encrypted as cosign
    /// does, under the password in --password-file) and DIR/cosign.pub.
    Keygen {
        /// The directory to write them in (existing files are not replaced).
        #[arg(long)]
        out: PathBuf,
        /// The password (its first line); without it, asked for on the
        /// terminal (twice, not echoed).
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Show the daemon's status.
    Status {
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// List the managed images.
    Images {
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Show one image's history: versions, supersession, rollbacks.
    Image {
        /// The image's name.
        name: String,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// List jobs.
    Jobs {
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Print a job's build log.
    Log {
        /// The job's id.
        job: u64,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Check bases now (every one, or REFERENCE): what `POST /v1/check` does.
    Check {
        /// One base reference to check, as a Dockerfile names it.
        reference: Option<String>,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Queue a rebuild of an image now; prints the job's id.
    Rebuild {
        /// The image's name.
        name: String,
        /// Build even if the image is held (rolled back); it stays held.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Run the immutability audit now (every image, or NAME): version
    /// tags, floating tags and signatures against the ledger; prints each
    /// finding and its repair.
    Audit {
        /// One image's name.
        name: Option<String>,
        /// Start it and return at once (`POST /v1/audit?wait=false`): a
        /// fleet's audit can outlast the client's 120 s; `status` shows
        /// when it ran and `image NAME` its findings.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Point an image's floating tags at an earlier version and hold it.
    Rollback {
        /// The image's name.
        name: String,
        /// The version to go back to.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Every notifier: pending events, last success, last error.
    Notifiers {
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Send a test event to notifier NAME (through its outbox, like any event).
    NotifyTest {
        /// The notifier's name.
        name: String,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// End a hold: the image builds automatically again.
    Resume {
        /// The image's name.
        name: String,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// List the git sources: repository, ref, commit, dependents.
    Sources {
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// List the remote build engines: state, builds running, done, failed, lost.
    Engines {
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Print a Dockerfile's external bases, one normalised reference a line.
    Bases {
        /// The Dockerfile.
        dockerfile: PathBuf,
        /// Build arguments, `K=V`.
        #[arg(long = "build-arg", value_name = "K=V")]
        build_args: Vec<String>,
        /// The platform built, `os/arch[/variant]` (default: the host's):
        /// the value of `TARGETPLATFORM`, `TARGETARCH`, ... in `FROM`.
        #[arg(long)]
        platform: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => daemon(config, supervisor::Mode::Run),
        Command::Once { config } => daemon(config, supervisor::Mode::Once),
        Command::CheckConfig { config } => check_config(&config),
        Command::Keygen { out, password_file } => keygen(&out, password_file.as_deref()),
        Command::Bases {
            dockerfile,
            build_args,
            platform,
        } => bases(&dockerfile, &build_args, platform.as_deref()),
        Command::Status { api } => client_cmd(&api, client::status),
        Command::Images { api } => client_cmd(&api, client::images),
        Command::Image { name, api } => client_cmd(&api, |c| client::image(c, &name)),
        Command::Jobs { api } => client_cmd(&api, client::jobs),
        Command::Sources { api } => client_cmd(&api, client::sources),
        Command::Engines { api } => client_cmd(&api, client::engines),
        Command::Log { job, api } => client_cmd(&api, |c| client::log(c, job)),
        Command::Check { reference, api } => {
            client_cmd(&api, |c| client::check(c, reference.as_deref()))
        }
        Command::Rebuild { name, force, api } => {
            client_cmd(&api, |c| client::rebuild(c, &name, force))
        }
        Command::Rollback { name, to, api } => {
            client_cmd(&api, |c| client::rollback(c, &name, &to))
        }
        Command::Resume { name, api } => client_cmd(&api, |c| client::resume(c, &name)),
        Command::Audit { name, no_wait, api } => client_cmd(&api, |c| {
            if no_wait {
                client::audit_start(c, name.as_deref())
            } else {
                client::audit(c, name.as_deref())
            }
        }),
        Command::Notifiers { api } => client_cmd(&api, client::notifiers),
        Command::NotifyTest { name, api } => client_cmd(&api, |c| client::notify_test(c, &name)),
    }
}

/// `run` and `once`: exit 2 for a bad config, 1 for a failure (or, in
/// `once`, a failed build), 0 otherwise.
fn daemon(config_file: PathBuf, mode: supervisor::Mode) -> ExitCode {
    let (cfg, graph) = match config::load_checked(&config_file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}", said_once(&e));
            return ExitCode::from(2);
        }
    };
    logging::init(&cfg);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(supervisor::run(cfg, graph, config_file, mode));
    // Every task has ended; a blocking read still running is not waited for.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(supervisor::Exit::Clean) => ExitCode::SUCCESS,
        Ok(supervisor::Exit::Failed(problems)) => {
            for p in &problems {
                eprintln!("error: {p}");
            }
            ExitCode::FAILURE
        }
        // Said once, on stderr (where the text log goes, and what the
        // journal records under systemd).
        Err(e) => {
            eprintln!("error: {}", said_once(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, each said once: a cause whose text the
/// message already holds (a library error that prints its source) is not
/// repeated.
fn said_once(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn client_cmd(
    args: &client::ApiArgs,
    f: impl FnOnce(&client::Client) -> anyhow::Result<String>,
) -> ExitCode {
    match client::Client::new(args).and_then(|c| f(&c)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", said_once(&e));
            ExitCode::FAILURE
        }
    }
}

/// `keygen`: 0 when both files are written, 2 for a bad argument, 1 when
/// they cannot be written.
fn keygen(out: &std::path::Path, password_file: Option<&std::path::Path>) -> ExitCode {
    let password = match password_file {
        Some(f) => rebased_sign::Password::from_file(f).map_err(|e| e.to_string()),
        None => prompt_password(),
    };
    let password = match password {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let key_path = out.join("cosign.key");
    let pub_path = out.join("cosign.pub");
    for p in [&key_path, &pub_path] {
        if p.exists() {
            eprintln!("error: {} exists: not replacing it", p.display());
            return ExitCode::from(2);
        }
    }
    let written = rebased_sign::SigningKey::generate()
        .map_err(anyhow::Error::from)
        .and_then(|key| {
            let pem = key.to_encrypted_pem(&password)?;
            std::fs::create_dir_all(out)?;
            write_private(&key_path, &pem)?;
            std::fs::write(&pub_path, key.public().to_pem())?;
            Ok(key.public().fingerprint())
        });
    match written {
        Ok(fingerprint) => {
            println!(
                "wrote {} and {} (key {fingerprint})",
                key_path.display(),
                pub_path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "error: cannot write the key pair in {}: {e:#}",
                out.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// The password for a new key, typed twice on the terminal without echo;
/// refused when standard input is no terminal.
fn prompt_password() -> std::result::Result<rebased_sign::Password, String> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err("standard input is no terminal to ask for the password on: pass --password-file FILE (the key is encrypted under its first line)".to_owned());
    }
    let saved = rustix::termios::tcgetattr(&stdin)
        .map_err(|e| format!("reading the terminal's settings: {e}"))?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
    rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &quiet)
        .map_err(|e| format!("turning the terminal's echo off: {e}"))?;
    let ask = |what: &str| {
        eprint!("{what}: ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        let read = stdin.lock().read_line(&mut line);
        eprintln!();
        read.map(|_| rebased_sign::Password::new(line.trim_end_matches(['\r', '\n']).to_owned()))
    };
    let first = ask("password for the new key");
    let second = ask("the same password again");
    let restored =
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &saved);
    let (first, second) = match (first, second) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return Err(format!("reading the password: {e}")),
    };
    restored.map_err(|e| format!("restoring the terminal's echo: {e}"))?;
    if !first.same_as(&second) {
        return Err("the two passwords differ".to_owned());
    }
    Ok(first)
}

/// Writes `text` to a new file readable by its owner only.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

fn check_config(path: &std::path::Path) -> ExitCode {
    let (cfg, graph) = match config::load_checked(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}", said_once(&e));
            return ExitCode::from(2);
        }
    };
    println!("config {}", path.display());
    println!("poll: {}", cfg.daemon.poll.as_str());
    // The key was opened by load_checked; this shows which one it is.
    if let Ok(Some(key)) = config::signer(&cfg) {
        let attest: Vec<String> = cfg
            .signing
            .attest
            .iter()
            .map(|a| format!("{a:?}").to_lowercase())
            .collect();
        println!(
            "signing: key {} (attestations: {})",
            key.public().fingerprint(),
            if attest.is_empty() {
                "none".to_owned()
            } else {
                attest.join(", ")
            }
        );
    }
    if let Some(audit) = &cfg.daemon.audit {
        println!(
            "audit: {}{}",
            audit.as_str(),
            if cfg.daemon.audit_repair {
                " (repairs)"
            } else {
                ""
            }
        );
    }
    let mut failed = 0;
    for (i, image) in cfg.image.iter().enumerate() {
        println!(
            "{}. {} -> {} (first version {})",
            i + 1,
            image.name,
            image.repository,
            image.version
        );
        if let Some(git) = image.context.git() {
            println!(
                "   source {} ref {} dir {} (bump {:?} for a source change)",
                git.public_url(),
                git.reference_or_head(),
                if git.dir.as_os_str().is_empty() {
                    ".".to_owned()
                } else {
                    git.dir.display().to_string()
                },
                image.source_bump
            );
            println!("   FROM: read from the source's commit when it is checked out");
            continue;
        }
        if image.watch_context {
            println!(
                "   source {} (watched: a content change builds, bump {:?})",
                image.context, image.source_bump
            );
        }
        match config::image_bases(image) {
            Ok(bases) => {
                for b in bases {
                    println!("   FROM {b}");
                }
                for w in emulation_warnings(&cfg, image) {
                    println!("   warning: {w}");
                }
            }
            Err(e) => {
                failed += 1;
                println!("   error: {e:#}");
            }
        }
    }
    println!("build order: {}", graph.order().join(", "));
    for n in &cfg.notify {
        // Never the URL: it may be a secret even when written inline.
        let all = |v: &[String]| {
            if v.is_empty() {
                "all".to_owned()
            } else {
                v.join(", ")
            }
        };
        println!(
            "notify {} ({}): events {}; images {}",
            n.name,
            n.kind.as_str(),
            all(&n.events),
            all(&n.images)
        );
    }
    if failed > 0 {
        let images = if failed == 1 { "image" } else { "images" };
        eprintln!(
            "error: config {} is not valid: {failed} {images} cannot be built as configured (see above)",
            path.display()
        );
        ExitCode::from(2)
    } else {
        println!("config {} is valid", path.display());
        ExitCode::SUCCESS
    }
}

/// What `check-config` warns about an image: a foreign platform whose
/// `RUN` steps an engine cannot run here (no binfmt handler).
fn emulation_warnings(
    cfg: &rebased_core::config::Config,
    image: &rebased_core::config::ImageConfig,
) -> Vec<String> {
    // A git context's Dockerfile is in a checkout check-config does not
    // make: it may have RUN steps.
    let has_run = image.dockerfile_path().is_none_or(|path| {
        config::read_dockerfile_for(&path, &image.build_args, &[])
            .is_ok_and(|p| p.model.instructions.iter().any(|i| i.keyword == "RUN"))
    });
    if !has_run {
        return Vec::new();
    }
    rebased_builder::emulation::missing(
        &image.platforms,
        &rebased_core::oci::Platform::host(),
        &cfg.builder.binfmt_dir,
    )
    .into_iter()
    .map(|m| m.to_string())
    .collect()
}

fn bases(dockerfile: &std::path::Path, build_args: &[String], platform: Option<&str>) -> ExitCode {
    let mut args = BTreeMap::new();
    for a in build_args {
        match a.split_once('=') {
            Some((k, v)) => {
                args.insert(k.to_owned(), v.to_owned());
            }
            None => {
                eprintln!("error: --build-arg {a:?} must be K=V");
                return ExitCode::from(2);
            }
        }
    }
    let platform = platform.map_or_else(
        || rebased_core::oci::Platform::host().to_string(),
        str::to_owned,
    );
    if let Err(e) = rebased_core::oci::Platform::parse(&platform) {
        eprintln!("error: --platform: {e}");
        return ExitCode::from(2);
    }
    match config::dockerfile_bases(dockerfile, &args, &[platform]) {
        Ok(bases) => {
            for b in bases {
                println!("{b}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", said_once(&e));
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    /// issue 22: "Address already in use (os error 98): Address already in
    /// use (os error 98)".
    #[test]
    fn each_cause_is_said_once() {
        #[derive(Debug)]
        struct Bind {
            source: std::io::Error,
        }
        impl std::fmt::Display for Bind {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "cannot listen on x: {}", self.source)
            }
        }
        impl std::error::Error for Bind {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.source)
            }
        }
        let e = anyhow::Error::new(Bind {
            source: std::io::Error::new(std::io::ErrorKind::AddrInUse, "in use"),
        })
        .context("starting");
        assert_eq!(super::said_once(&e), "starting: cannot listen on x: in use");
    }
}

#[cfg(test)]
mod layering {
    /// The binary's modules, top layer first: a module may use only the
    /// ones on lines below its own (ARCHITECTURE.md, "Inside the binary").
    const LAYERS: &[&[&str]] = &[
        &["main", "client"],
        &["supervisor"],
        &["read_model", "reload", "contexts"],
        &["poll"],
        &["reconcile"],
        &["ledger", "audit"],
        &["build"],
        &["publish"],
        &["signing", "attest"],
        &["destination"],
        &["notifiers"],
        &["status", "records", "events", "memo"],
        &["live"],
        &["config", "notify", "logging"],
    ];

    fn layer(module: &str) -> Option<usize> {
        LAYERS.iter().position(|l| l.contains(&module))
    }

    /// The `.rs` files of a module: `NAME.rs`, or every file in `NAME/`.
    fn files(path: &std::path::Path) -> Vec<std::path::PathBuf> {
        if path.is_dir() {
            let mut v: Vec<_> = std::fs::read_dir(path)
                .expect("module directory")
                .map(|e| e.expect("entry").path())
                .filter(|p| p.extension().is_some_and(|e| e == "rs"))
                .collect();
            v.sort();
            v
        } else if path.extension().is_some_and(|e| e == "rs") {
            vec![path.to_owned()]
        } else {
            Vec::new()
        }
    }

    /// The first segment of every path from the crate's root in `text`,
    /// with its line: `crate::a::b` gives `a`, `crate::{a, b::{c, d}}` gives
    /// `a` and `b` (`self` is the root, `main`). A root path followed by
    /// anything but a name or a group is an error, so no way of writing a
    /// path slips past.
    fn crate_uses(text: &str) -> Result<Vec<(usize, String)>, String> {
        fn ident(s: &str) -> String {
            s.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        }
        let needle = "crate::";
        let mut out = Vec::new();
        for (at, _) in text.match_indices(needle) {
            let line = text[..at].matches('\n').count() + 1;
            let rest = &text[at + needle.len()..];
            let mut names = Vec::new();
            if rest.starts_with('{') {
                // The group's items at its top level; nested groups are
                // paths inside an item's first segment.
                let mut depth = 0;
                let mut item = String::new();
                let mut closed = false;
                for c in rest.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                names.push(std::mem::take(&mut item));
                                closed = true;
                                break;
                            }
                        }
                        ',' if depth == 1 => {
                            names.push(std::mem::take(&mut item));
                            continue;
                        }
                        _ => {}
                    }
                    if depth == 1 && c != '{' {
                        item.push(c);
                    }
                }
                if !closed {
                    return Err(format!(
                        "line {line}: a group from the crate root that does not close"
                    ));
                }
                names.retain(|n| !n.trim().is_empty());
            } else {
                names.push(rest.to_owned());
            }
            for n in names {
                let name = ident(n.trim_start());
                if name.is_empty() {
                    return Err(format!(
                        "line {line}: a path from the crate root with neither a name nor a group"
                    ));
                }
                out.push((line, if name == "self" { "main".into() } else { name }));
            }
        }
        Ok(out)
    }

    #[test]
    fn crate_uses_reads_paths_and_groups() {
        let uses = |t: &str| crate_uses(t).expect("parses");
        let names = |t: &str| -> Vec<String> { uses(t).into_iter().map(|(_, n)| n).collect() };
        assert_eq!(names("use crate::live::Live;"), ["live"]);
        assert_eq!(names("use crate::{supervisor};"), ["supervisor"]);
        assert_eq!(
            names("use crate::{\n    poll::{self, Round},\n    self,\n    reconcile,\n};"),
            ["poll", "main", "reconcile"]
        );
        assert_eq!(uses("x\ny crate::{a::{b, c}, d}")[1], (2, "d".to_owned()));
        assert!(crate_uses("use crate::*;").is_err());
        assert!(crate_uses("use crate::{a, b").is_err());
    }

    #[test]
    fn every_use_of_crate_points_down() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("src") {
            let path = entry.expect("entry").path();
            let sources = files(&path);
            if sources.is_empty() {
                continue;
            }
            let Some(module) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let Some(own) = layer(module) else {
                panic!("{} is in no layer of LAYERS", path.display());
            };
            seen += 1;
            for file in sources {
                let text = std::fs::read_to_string(&file).expect("read");
                // This module's examples are no uses.
                let text = text.split("mod layering {").next().unwrap_or_default();
                let uses = crate_uses(text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                for (line, name) in uses {
                    // Anything else after the crate's root is the root's (main.rs).
                    let theirs = layer(&name).unwrap_or(0);
                    assert!(
                        theirs > own || name == module,
                        "{}:{line}: uses {name} of the crate, which is not below {module}",
                        file.display(),
                    );
                }
            }
        }
        assert_eq!(seen, LAYERS.iter().map(|l| l.len()).sum::<usize>());
    }
}
