//! `--chown` resolution against a base's `/etc/passwd` and `/etc/group`:
//! the input is `spec NUL passwd NUL group` (missing parts: no such file).

#![no_main]

use libfuzzer_sys::fuzz_target;
use rebased_builder::native::passwd::{needs_lookup, resolve_chown};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\0');
    let spec = parts.next().unwrap_or_default();
    let passwd = parts.next();
    let group = parts.next();
    let needs = needs_lookup(spec);
    let resolved = resolve_chown(spec, passwd, group);
    if !needs {
        // Numbers alone never need the files.
        assert_eq!(resolve_chown(spec, None, None), resolved);
    }
});
