//! A fleet: `bases` base repositories in the registry and `images` images
//! spread over them round-robin, each already published once (version
//! 1.0.0 in its own OCI image layout, annotated with the digest of its
//! base as rebased annotates what it builds), so the daemon starts with
//! every image fresh and a poll cycle has nothing to build: what is
//! measured is the cost of watching.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::harness::{free_port, image_table, write_config, Daemon, Registry, TinyImage};

/// A configured fleet and its daemon's config.
pub struct Fleet {
    /// The config file.
    pub config: PathBuf,
    /// The API address.
    pub listen: String,
    /// Each image's base reference, in image order.
    pub image_bases: Vec<String>,
}

/// The cron of "once a year": a daemon that polls only when asked.
pub const YEARLY: &str = "0 0 0 1 1 *";

/// Pushes the bases, writes contexts, layouts and the config.
pub fn make(
    registry: &Registry,
    work: &Path,
    images: usize,
    bases: usize,
    poll: &str,
) -> Result<Fleet> {
    let host = &registry.host;
    let mut seeds = Vec::with_capacity(bases);
    for b in 0..bases {
        let repo = format!("base-{b}");
        let marker = format!("base {b} v1\n");
        let digest = registry.push_image(&repo, "latest", &[("marker", marker.as_bytes())])?;
        let reference = format!("{host}/{repo}:latest");
        let annotations = BTreeMap::from([
            (
                "io.rebased.bases".to_owned(),
                serde_json::json!({ &reference: digest }).to_string(),
            ),
            ("io.rebased.trigger".to_owned(), "poll".to_owned()),
        ]);
        let seed = TinyImage::annotated(&[("hello", b"hello\n")], &annotations)?;
        seeds.push((reference, seed));
    }
    let mut tables = String::with_capacity(images * 160);
    let mut image_bases = Vec::with_capacity(images);
    for i in 0..images {
        let (reference, seed) = &seeds[i % bases];
        let ctx = work.join("ctx").join(format!("img-{i}"));
        fs::create_dir_all(&ctx)?;
        fs::write(ctx.join("hello"), format!("hello from {i}\n"))?;
        fs::write(
            ctx.join("Dockerfile"),
            format!("FROM {reference}\nCOPY hello /hello\nCMD [\"/bin/sh\"]\n"),
        )?;
        let layout = work.join("out").join(format!("img-{i}"));
        seed.write_layout(&layout, "1.0.0")?;
        tables.push_str(&image_table(
            &format!("img-{i}"),
            &ctx,
            &format!("oci:{}", layout.display()),
        ));
        image_bases.push(reference.clone());
    }
    let listen = format!("127.0.0.1:{}", free_port()?);
    let config = write_config(
        work,
        &listen,
        host,
        &format!("poll = \"{poll}\"\nsettle = \"0s\""),
        &tables,
    )?;
    Ok(Fleet {
        config,
        listen,
        image_bases,
    })
}

/// Starts the daemon on a fleet and waits for its first round (every base
/// checked, every image decided).
pub fn start(fleet: &Fleet, work: &Path) -> Result<(Daemon, Duration)> {
    let started = std::time::Instant::now();
    let mut daemon = Daemon::start(&fleet.config, &fleet.listen, &work.join("daemon.log"))?;
    daemon.wait_log("poll round finished", Duration::from_secs(1800))?;
    Ok((daemon, started.elapsed()))
}
