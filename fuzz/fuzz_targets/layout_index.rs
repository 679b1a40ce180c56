//! An OCI image layout whose `index.json` (and one blob) are arbitrary
//! bytes: open, list, look up, read and retag, in a temporary directory.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rebased_registry::Layout;

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
}

fuzz_target!(|data: &[u8]| {
    let root = dir().path().join("layout");
    let index = root.join("index.json");
    // A fresh layout (the last input's index.json removed, so that `open`
    // writes an empty one), then its index.json replaced by the input.
    let _ = std::fs::remove_file(&index);
    let layout = Layout::open(&root).expect("a layout opens");
    let blob = layout.put_blob(data).expect("blob written");
    std::fs::write(&index, data).expect("index written");
    let Ok(layout) = Layout::open(&root) else {
        return;
    };
    if let Ok(tags) = layout.list_tags() {
        for tag in tags.iter().take(3) {
            let _ = layout.lookup(tag);
            let _ = layout.manifest(tag);
        }
    }
    let _ = layout.lookup("latest");
    let _ = layout.manifest(blob.as_str());
    let _ = layout.tag(&blob, "fuzzed");
    let _ = layout.lookup("fuzzed");
});
