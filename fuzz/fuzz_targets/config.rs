//! `Config::parse` over arbitrary text, and the value parsers it uses one
//! by one: cron specs, durations, tag templates, image names, repositories.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rebased_core::config::{Config, CronSpec, ImageName, Repository, TagTemplate};
use rebased_core::duration::ConfigDuration;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::parse(text) {
        let _ = e.to_string();
    }
    // Single values are short: give the value parsers the first line.
    let line = text.lines().next().unwrap_or_default();
    let _ = CronSpec::parse(line);
    if let Ok(d) = ConfigDuration::parse(line) {
        let printed = d.to_string();
        assert_eq!(
            ConfigDuration::parse(&printed),
            Ok(d),
            "{line:?} prints as {printed:?}"
        );
    }
    let _ = TagTemplate::try_from(line.to_owned());
    let _ = ImageName::try_from(line.to_owned());
    let _ = Repository::try_from(line.to_owned()).map(|r| r.to_string());
});
