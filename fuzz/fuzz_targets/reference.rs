//! Image references (`ImageRef::parse`, `parse_repository`), digests and
//! versions: no panic, and what is accepted prints back to the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rebased_core::{Digest, ImageRef, Version};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = ImageRef::parse(text) {
        let printed = r.to_string();
        let again = ImageRef::parse(&printed).expect("a printed reference parses");
        assert_eq!(again, r, "{text:?} -> {printed:?}");
        let _ = (r.name(), r.api_host(), r.with_tag("x"));
        if let Some(d) = r.digest() {
            let pinned = r.pinned(d).to_string();
            assert_eq!(
                ImageRef::parse(&pinned).expect("pinned parses"),
                r.pinned(d)
            );
        }
    }
    if let Ok(r) = ImageRef::parse_repository(text) {
        let again = ImageRef::parse_repository(&r.name()).expect("a repository name parses");
        assert_eq!(again, r);
    }
    if let Ok(d) = Digest::parse(text) {
        assert_eq!(Digest::parse(&d.to_string()).as_ref(), Ok(&d));
        let _ = (d.algorithm(), d.encoded());
    }
    if let Ok(v) = Version::parse(text) {
        assert_eq!(Version::parse(&v.to_string()), Ok(v));
        assert!(v.next_patch() >= v);
        assert!(v.next_revision() >= v);
        let _ = v.render("{major}.{minor}.{patch}");
    }
});
