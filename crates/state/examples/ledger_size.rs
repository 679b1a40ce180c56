//! Measures the sled database after a long life: `VERSIONS` published
//! versions over 10 images and `JOBS` jobs queued, finished and forgotten
//! (the dispatcher keeps the newest 200 finished jobs), every write flushed
//! as the daemon flushes it. Prints the directory size as it goes.
//!
//! `cargo run --release -p rebased-state --example ledger_size [VERSIONS JOBS]`

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use chrono::Utc;
use rebased_core::job::{Job, JobReason, JobState};
use rebased_core::{Digest, Trigger, Version};
use rebased_state::{Store, VersionRecord};

fn digest(n: u64) -> Digest {
    Digest::parse(&format!("sha256:{n:064x}")).expect("valid digest")
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let versions = args.first().copied().unwrap_or(10_000);
    let jobs = args.get(1).copied().unwrap_or(100_000);
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let started = Instant::now();
    for n in 0..versions {
        let image = format!("image-{}", n % 10);
        let patch = n / 10;
        let rec = VersionRecord {
            children: Default::default(),
            version: Version::parse(&format!("1.0.{patch}"))?,
            digest: digest(n),
            built_at: Utc::now(),
            bases: BTreeMap::from([("docker.io/library/debian:stable".to_owned(), digest(n + 1))]),
            platforms: BTreeMap::new(),
            trigger: Trigger::Poll,
            superseded_by: None,
            superseded_at: None,
            reason: None,
            supersedes: patch
                .checked_sub(1)
                .and_then(|p| Version::parse(&format!("1.0.{p}")).ok()),
            job: Some(n),
            source: None,
            signature: None,
        };
        store.publish(&image, &rec, None)?;
    }
    println!(
        "{versions} versions over 10 images: {} bytes ({:.1} s)",
        dir_size(dir.path()),
        started.elapsed().as_secs_f64()
    );
    let reason = JobReason {
        trigger: Trigger::Poll,
        force: false,
        at: Utc::now(),
        detail: "docker.io/library/debian:stable changed".to_owned(),
    };
    let mut finished: Vec<u64> = Vec::new();
    for id in 0..jobs {
        let mut job = Job::new(id, &format!("image-{}", id % 10), reason.clone());
        store.put_job(&job)?;
        job.state = JobState::Running;
        job.started_at = Some(Utc::now());
        store.put_job(&job)?;
        job.state = JobState::Succeeded;
        job.finished_at = Some(Utc::now());
        store.put_job(&job)?;
        finished.push(id);
        if finished.len() > 200 {
            let drop: Vec<u64> = finished.drain(..finished.len() - 200).collect();
            store.delete_jobs(&drop)?;
        }
        if (id + 1) % (jobs / 10).max(1) == 0 {
            println!(
                "{} jobs: {} bytes ({:.1} s)",
                id + 1,
                dir_size(dir.path()),
                started.elapsed().as_secs_f64()
            );
        }
    }
    store.flush("end")?;
    println!(
        "final: {versions} versions, {jobs} jobs: {} bytes on disk",
        dir_size(dir.path())
    );
    Ok(())
}
