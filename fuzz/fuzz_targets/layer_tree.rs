//! `read_layer` over arbitrary bytes as a layer blob (gzip, zstd magic or a
//! plain tar), applied twice to a `Tree` (the second time over itself), then
//! a path picked by the first byte resolved in it: within the bounds, and
//! every component counted as a directory is one.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rebased_builder::native::tree::{read_layer, Tree};

const PATHS: &[&str] = &["/etc/passwd", "/bin/x/y", "../..", "/", "a/./b/../c/"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, blob)) = data.split_first() else {
        return;
    };
    let Ok(changes) = read_layer(blob, 1 << 20) else {
        return;
    };
    let mut tree = Tree::default();
    for _ in 0..2 {
        if tree.apply(&changes).is_err() {
            return;
        }
    }
    if let Ok(r) = tree.resolve(PATHS[usize::from(pick) % PATHS.len()]) {
        assert!(r.dirs <= r.segs.len());
        for k in 0..r.dirs {
            assert!(tree.get(&r.segs[..=k].join("/")).is_some());
        }
    }
});
