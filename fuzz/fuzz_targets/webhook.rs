//! `webhook::parse` for every source: the first byte picks the source (and,
//! for GitHub, the `X-GitHub-Event`), the rest is the body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rebased_watcher::webhook::{parse, SOURCES};

const EVENTS: &[Option<&str>] = &[
    None,
    Some("package"),
    Some("registry_package"),
    Some("ping"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let source = SOURCES[usize::from(pick) % SOURCES.len()];
    let event = EVENTS[usize::from(pick / 16) % EVENTS.len()];
    let _ = parse(source, event, body);
    // An unknown source is refused, never a panic.
    let _ = parse("unknown", event, body);
});
