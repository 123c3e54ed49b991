//! A line or HTTP body sent to the daemon's JSON-RPC API: parsing never panics; every
//! answer it makes up is a JSON-RPC 2.0 error response; a batch is never empty nor
//! over the limit; every request it lets through has a method and object-or-null params.
#![no_main]

use hushwire_jsonrpc::{Entry, MAX_BATCH, Parsed, parse};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn check_error(v: &Value) {
    assert_eq!(v["jsonrpc"], "2.0");
    assert!(v["error"]["code"].is_i64());
    assert!(v["error"]["message"].is_string());
    assert!(matches!(
        v["id"],
        Value::Null | Value::String(_) | Value::Number(_)
    ));
}

fn check(entry: &Entry) {
    match entry {
        Entry::Invalid(v) => check_error(v),
        Entry::Call(r) => {
            assert!(matches!(r.params, Value::Object(_) | Value::Null));
            assert!(matches!(
                r.id,
                None | Some(Value::Null | Value::String(_) | Value::Number(_))
            ));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse(text) {
        Parsed::Refused(v) => check_error(&v),
        Parsed::One(e) => check(&e),
        Parsed::Batch(entries) => {
            assert!((1..=MAX_BATCH).contains(&entries.len()));
            entries.iter().for_each(check);
        }
    }
});
