//! `Dockerfile::parse` over arbitrary text, then `bases`, `pin` (whose output
//! must parse again, keep every line and every keyword, and name only pinned
//! bases), and the shell-word helpers `split_words` and `substitute` with both
//! escape characters.

#![no_main]

use std::collections::{BTreeMap, HashMap};

use libfuzzer_sys::fuzz_target;
use rebased_core::dockerfile::{split_words, substitute, Dockerfile};
use rebased_core::Digest;

const DIGEST: &str = "sha256:ee3a7427e984f3d47ef6b31962b8255b59b97c4a79dc6804134da3986c55288a";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let vars: HashMap<String, String> = [("A", "x"), ("EMPTY", ""), ("TAG", "1.0")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    for escape in ['\\', '`'] {
        let _ = split_words(&text, escape);
        let _ = substitute(&text, &vars, escape);
    }
    let build_args: BTreeMap<String, String> = vars.clone().into_iter().collect();
    let _ = Dockerfile::parse(&text, &build_args);
    let Ok(df) = Dockerfile::parse(&text, &BTreeMap::new()) else {
        return;
    };
    let bases = df.bases();
    let digest = Digest::parse(DIGEST).expect("valid digest");
    let pins = bases.iter().map(|b| (b.clone(), digest.clone())).collect();
    let pinned = df.pin(&text, &pins);
    assert_eq!(
        pinned.lines().count(),
        text.lines().count(),
        "pin changed the number of lines"
    );
    let again = match Dockerfile::parse(&pinned, &BTreeMap::new()) {
        Ok(again) => again,
        Err(e) => panic!("pinned text does not parse: {e}\n{pinned}"),
    };
    let keywords = |d: &Dockerfile| {
        d.instructions
            .iter()
            .map(|i| (i.line, i.keyword.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keywords(&again),
        keywords(&df),
        "pin changed the instructions"
    );
    for b in again.bases() {
        assert_eq!(b.digest(), Some(&digest), "{b} is not pinned");
    }
});
