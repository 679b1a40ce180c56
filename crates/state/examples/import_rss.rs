//! The store's memory at 10,000 images: imports one version for each of
//! `IMAGES` images (as the daemon does at start for a fleet already
//! published) and prints the process's `VmRSS`/`VmHWM` as it goes. Used to
//! size sled's page cache (BENCHMARKS.md, scenario 1).
//!
//! `cargo run --release -p rebased-state --example import_rss [IMAGES]`

use std::collections::BTreeMap;

use rebased_core::{Digest, Trigger, Version};
use rebased_state::{Store, VersionRecord};

fn memory() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("VmRSS") || l.starts_with("VmHWM"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

fn digest(n: u64) -> Digest {
    Digest::parse(&format!("sha256:{n:064x}")).expect("valid digest")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let images: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    println!("before open: {}", memory());
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    println!("opened: {}", memory());
    let v1 = Version::parse("1.0.0")?;
    for i in 0..images {
        let rec = VersionRecord::new(
            v1,
            digest(i),
            BTreeMap::from([(
                format!("127.0.0.1:5000/base-{}:latest", i % 100),
                digest(i + 1),
            )]),
            Trigger::Poll,
        );
        store.import(&format!("img-{i}"), &[rec], Some(v1))?;
        if (i + 1) % (images / 5).max(1) == 0 {
            println!("{} images imported: {}", i + 1, memory());
        }
    }
    Ok(())
}
