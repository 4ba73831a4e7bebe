//! Every parser of ids, keys and resume tokens on any text: no panic, and
//! what parses is canonical (printing it gives the same text back), so one
//! id or token has one spelling.
#![no_main]

use customers::{
    auth::ApiKey,
    domain::{AppId, CustomerId, EventId, KeyId, ResumeToken, parse_id},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_id("id", text) {
        Ok(id) => assert_eq!(id.to_string(), text),
        Err(invalid) => assert!(invalid.violations.iter().all(|v| v.field == "id")),
    }
    if let Ok(id) = text.parse::<CustomerId>() {
        assert_eq!(id.to_string(), text);
    }
    if let Ok(id) = text.parse::<AppId>() {
        assert_eq!(id.to_string(), text);
    }
    if let Ok(id) = text.parse::<KeyId>() {
        assert_eq!(id.to_string(), text);
    }
    if let Ok(id) = text.parse::<EventId>() {
        assert_eq!(id.to_string(), text);
    }
    if let Some(token) = ResumeToken::parse(text) {
        assert_eq!(token.encode(), text);
    }
    if let Some(key) = ApiKey::parse(text) {
        assert_eq!(key.reveal(), text);
    }
});
