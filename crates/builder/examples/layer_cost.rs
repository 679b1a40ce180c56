//! What one native `COPY` layer costs each way the backend can have it: built
//! (tar + gzip + two sha256), hashed only (tar + sha256: the layer cache's
//! content check), and stamped only (one `stat` per file: the layer cache's
//! first check). The context is `FILES` incompressible files of `MIB` MiB
//! in all, as in BENCHMARKS.md scenario 4. Median of `ROUNDS` runs each.
//!
//! `cargo run --release -p rebased-builder --example layer_cost [FILES MIB ROUNDS]`

use std::fs;
use std::time::Instant;

use rebased_builder::native::cache;
use rebased_builder::native::context::{Context, CopySpec};
use rebased_builder::native::layer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let files = args.first().copied().unwrap_or(2000);
    let mib = args.get(1).copied().unwrap_or(50);
    let rounds = args.get(2).copied().unwrap_or(5).max(1);

    let dir = tempfile::tempdir()?;
    let each = (mib << 20) / files.max(1);
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..files {
        let sub = dir.path().join("files").join(format!("d{:02}", i % 40));
        fs::create_dir_all(&sub)?;
        let mut buf = Vec::with_capacity(each + 8);
        while buf.len() < each {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            buf.extend_from_slice(&state.to_le_bytes());
        }
        buf.truncate(each);
        fs::write(sub.join(format!("f{i:05}.bin")), buf)?;
    }
    let ctx = Context::open(dir.path())?;
    let spec = CopySpec {
        sources: vec!["files/".to_owned()],
        dest: "/data/".to_owned(),
        owner: (0, 0),
        chmod: None,
        extract_archives: false,
        archive_owners: false,
        existing: None,
    };
    println!("context: {files} files, {mib} MiB (page cache warm after the first round)");

    let time = |what: &str, f: &mut dyn FnMut() -> Result<(), Box<dyn std::error::Error>>| {
        let mut ms = Vec::new();
        for _ in 0..rounds {
            let t = Instant::now();
            f()?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        println!(
            "  {what:<52} {:>9.1} ms  (median of {rounds})",
            ms[ms.len() / 2]
        );
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    let mut entries = Vec::new();
    time("walk the context (Context::entries)", &mut || {
        entries = ctx.entries(&spec)?;
        Ok(())
    })?;
    time(
        "stamp: one stat per file (layer cache, 1st check)",
        &mut || {
            cache::stamp(&entries, 0)?;
            Ok(())
        },
    )?;
    time(
        "diff_id: tar + sha256 (layer cache, 2nd check)",
        &mut || {
            layer::diff_id(&entries, 0)?;
            Ok(())
        },
    )?;
    let mut size = 0;
    time("build: tar + gzip + sha256 (no cache hit)", &mut || {
        size = layer::build(&entries, 0)?.blob.len();
        Ok(())
    })?;
    println!("  layer blob: {size} bytes");
    Ok(())
}
