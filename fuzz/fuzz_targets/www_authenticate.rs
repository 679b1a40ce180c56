//! What a registry answers in headers and at its token endpoint:
//! `WWW-Authenticate` challenges, `Retry-After`, `ratelimit-remaining`, and
//! the token response body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rebased_registry::{
    parse_challenge, parse_rate_limit, parse_retry_after, parse_token_response, Challenge,
};

fuzz_target!(|data: &[u8]| {
    if let Ok((token, ttl)) = parse_token_response(data) {
        assert!(!token.is_empty());
        assert!(ttl <= std::time::Duration::from_secs(3600));
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(Challenge::Bearer { realm, .. }) = parse_challenge(text) {
        let _ = realm.len();
    }
    let _ = parse_retry_after(text);
    let _ = parse_rate_limit(text);
});
