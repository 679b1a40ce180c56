//! `find_file` over arbitrary bytes as a layer blob (gzip, zstd magic or a
//! plain tar), for a path picked by the first byte, within a small budget.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rebased_builder::native::layer::{find_file, Lookup};

const PATHS: &[&str] = &["etc/passwd", "etc/group", "/etc/./passwd", "a/b/c", "x"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, blob)) = data.split_first() else {
        return;
    };
    let path = PATHS[usize::from(pick) % PATHS.len()];
    if let Ok(Lookup::Found(contents)) = find_file(blob, path, 1 << 20) {
        assert!(contents.len() <= 1 << 20);
    }
});
