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

mod build;
mod client;
mod config;
mod destination;
mod ledger;
mod live;
mod logging;
mod notify;
mod poll;
mod publish;
mod read_model;
mod reconcile;
mod records;
mod reload;
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
        #[arg(long, short, default_value = "/etc/rebased/rebased.toml")]
        config: PathBuf,
    },
    /// One check and the builds it causes, then exit (non-zero if a build failed).
    Once {
        /// The config file.
        #[arg(long, short, default_value = "/etc/rebased/rebased.toml")]
        config: PathBuf,
    },
    /// Validate the config and print the plan: images, bases, build order.
    CheckConfig {
        /// The config file.
        #[arg(long, short, default_value = "/etc/rebased/rebased.toml")]
        config: PathBuf,
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
    /// Queue a rebuild of an image now.
    Rebuild {
        /// The image's name.
        name: String,
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
    /// End a hold: the image builds automatically again.
    Resume {
        /// The image's name.
        name: String,
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => daemon(config, supervisor::Mode::Run),
        Command::Once { config } => daemon(config, supervisor::Mode::Once),
        Command::CheckConfig { config } => check_config(&config),
        Command::Bases {
            dockerfile,
            build_args,
        } => bases(&dockerfile, &build_args),
        Command::Status { api } => client_cmd(&api, client::status),
        Command::Images { api } => client_cmd(&api, client::images),
        Command::Image { name, api } => client_cmd(&api, |c| client::image(c, &name)),
        Command::Jobs { api } => client_cmd(&api, client::jobs),
        Command::Log { job, api } => client_cmd(&api, |c| client::log(c, job)),
        Command::Rebuild { name, api } => client_cmd(&api, |c| client::rebuild(c, &name)),
        Command::Rollback { name, to, api } => {
            client_cmd(&api, |c| client::rollback(c, &name, &to))
        }
        Command::Resume { name, api } => client_cmd(&api, |c| client::resume(c, &name)),
    }
}

/// `run` and `once`: exit 2 for a bad config, 1 for a failure (or, in
/// `once`, a failed build), 0 otherwise.
fn daemon(config_file: PathBuf, mode: supervisor::Mode) -> ExitCode {
    let (cfg, graph) = match config::load_checked(&config_file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
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
        Ok(supervisor::Exit::BuildFailed) => ExitCode::FAILURE,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
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
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    let (cfg, graph) = match config::load_checked(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    println!("config {} is valid", path.display());
    println!("poll: {}", cfg.daemon.poll.as_str());
    let mut failed = false;
    for (i, image) in cfg.image.iter().enumerate() {
        println!(
            "{}. {} -> {} (first version {})",
            i + 1,
            image.name,
            image.repository,
            image.version
        );
        match config::image_bases(image) {
            Ok(bases) => {
                for b in bases {
                    println!("   FROM {b}");
                }
            }
            Err(e) => {
                failed = true;
                println!("   error: {e:#}");
            }
        }
    }
    println!("build order: {}", graph.order().join(", "));
    if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

fn bases(dockerfile: &std::path::Path, build_args: &[String]) -> ExitCode {
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
    match config::dockerfile_bases(dockerfile, &args) {
        Ok(bases) => {
            for b in bases {
                println!("{b}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod layering {
    /// The binary's modules, top layer first: a module may use only the
    /// ones on lines below its own (ARCHITECTURE.md, "Inside the binary").
    const LAYERS: &[&[&str]] = &[
        &["main", "client"],
        &["supervisor"],
        &["read_model", "reload"],
        &["poll"],
        &["reconcile"],
        &["ledger"],
        &["publish", "build"],
        &["destination"],
        &["status", "records"],
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
