//! JSON-RPC 2.0 framing: a line or body becomes requests to call or the error
//! responses that stand in for them; errors become responses.
//!
//! No I/O and no knowledge of the methods: the daemon parses with [`parse`], calls each
//! [`Request`] and answers with [`success`] or [`error_response`]. Everything a client
//! sends passes through [`parse`] first, so it is one of the fuzzed decoders.

use serde_json::{Map, Value, json};

/// A batch holds at most this many requests.
pub const MAX_BATCH: usize = 100;

/// JSON-RPC error codes.
pub mod code {
    /// Not JSON.
    pub const PARSE: i64 = -32700;
    /// Not a JSON-RPC 2.0 request.
    pub const INVALID_REQUEST: i64 = -32600;
    /// No such method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Missing or malformed parameters.
    pub const INVALID_PARAMS: i64 = -32602;
    /// The daemon failed (its store, a bug).
    pub const INTERNAL: i64 = -32603;
    /// The client library failed for a reason not listed below.
    pub const CLIENT: i64 = -32000;
    /// The server could not be reached: what was queued stays queued and is sent later.
    pub const NETWORK: i64 = -32001;
    /// No such conversation, group or message.
    pub const NOT_FOUND: i64 = -32002;
    /// Refused: not allowed (not an admin, not a member), or an invalid value.
    pub const REFUSED: i64 = -32003;
    /// The client service stopped.
    pub const STOPPED: i64 = -32004;
    /// A file to send could not be read.
    pub const FILE: i64 = -32005;
    /// Some of the operations were rejected by the server or the group (in `data`).
    pub const REJECTED: i64 = -32006;
}

/// One JSON-RPC error.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    /// The code (see [`code`]).
    pub code: i64,
    /// What went wrong (no message text, no keys).
    pub message: String,
    /// Details.
    pub data: Option<Value>,
}

impl RpcError {
    /// An error without details.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// The `error` member of a response.
    pub fn to_json(&self) -> Value {
        let mut e = json!({"code": self.code, "message": self.message});
        if let (Some(data), Value::Object(o)) = (&self.data, &mut e) {
            o.insert("data".into(), data.clone());
        }
        e
    }
}

/// A JSON-RPC error response.
pub fn error_response(id: Value, e: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": e.to_json()})
}

/// A JSON-RPC success response.
pub fn success(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// A request whose envelope is valid.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The id to answer with; `None` for a notification, which gets no answer.
    pub id: Option<Value>,
    /// The method name.
    pub method: String,
    /// The parameters: an object, or `Null` when there were none.
    pub params: Value,
}

/// One entry of a line or batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// A request to call.
    Call(Request),
    /// Not a valid request: this error response answers it.
    Invalid(Value),
}

/// What a line or body holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// A single request (or its error).
    One(Entry),
    /// A batch of 1..=[`MAX_BATCH`] entries; the answer is an array of their answers.
    Batch(Vec<Entry>),
    /// Not JSON, an empty batch or an oversized one: this error response is the answer.
    Refused(Value),
}

/// Parses one line or HTTP body.
pub fn parse(text: &str) -> Parsed {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Parsed::Refused(error_response(
                Value::Null,
                &RpcError::new(code::PARSE, format!("parse error: {e}")),
            ));
        }
    };
    match value {
        Value::Array(items) if items.is_empty() => Parsed::Refused(error_response(
            Value::Null,
            &RpcError::new(code::INVALID_REQUEST, "empty batch"),
        )),
        Value::Array(items) if items.len() > MAX_BATCH => Parsed::Refused(error_response(
            Value::Null,
            &RpcError::new(
                code::INVALID_REQUEST,
                format!("a batch holds at most {MAX_BATCH} requests"),
            ),
        )),
        Value::Array(items) => Parsed::Batch(items.into_iter().map(entry).collect()),
        other => Parsed::One(entry(other)),
    }
}

/// Checks one request's envelope.
fn entry(request: Value) -> Entry {
    let Value::Object(req) = request else {
        return Entry::Invalid(error_response(
            Value::Null,
            &RpcError::new(code::INVALID_REQUEST, "a request is a JSON object"),
        ));
    };
    envelope(req)
}

fn envelope(mut req: Map<String, Value>) -> Entry {
    let id = req.remove("id");
    let valid_id = matches!(
        id,
        None | Some(Value::Null | Value::String(_) | Value::Number(_))
    );
    let method = match req.remove("method") {
        Some(Value::String(m)) => Some(m),
        _ => None,
    };
    let (Some(method), true, true) = (method, valid_id, req.get("jsonrpc") == Some(&json!("2.0")))
    else {
        let answer_id = if valid_id { id } else { None };
        return Entry::Invalid(error_response(
            answer_id.unwrap_or(Value::Null),
            &RpcError::new(
                code::INVALID_REQUEST,
                "not a JSON-RPC 2.0 request (jsonrpc \"2.0\", method, id)",
            ),
        ));
    };
    let params = req.remove("params").unwrap_or(Value::Null);
    if !matches!(params, Value::Object(_) | Value::Null) {
        return Entry::Invalid(error_response(
            id.unwrap_or(Value::Null),
            &RpcError::new(code::INVALID_PARAMS, "params must be an object"),
        ));
    }
    Entry::Call(Request { id, method, params })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_code(v: &Value) -> Option<i64> {
        v["error"]["code"].as_i64()
    }

    #[test]
    fn a_request_and_a_notification() {
        let Parsed::One(Entry::Call(r)) =
            parse(r#"{"jsonrpc":"2.0","id":7,"method":"send","params":{"to":"bob"}}"#)
        else {
            unreachable!("a valid request")
        };
        assert_eq!(r.id, Some(json!(7)));
        assert_eq!(r.method, "send");
        assert_eq!(r.params, json!({"to": "bob"}));
        let Parsed::One(Entry::Call(n)) = parse(r#"{"jsonrpc":"2.0","method":"version"}"#) else {
            unreachable!("a valid notification")
        };
        assert_eq!((n.id, n.params), (None, Value::Null));
    }

    #[test]
    fn malformed_input_gets_the_spec_error_codes() {
        let Parsed::Refused(v) = parse("{not json") else {
            unreachable!()
        };
        assert_eq!(error_code(&v), Some(code::PARSE));
        let Parsed::Refused(v) = parse("[]") else {
            unreachable!()
        };
        assert_eq!(error_code(&v), Some(code::INVALID_REQUEST));
        let big = format!("[{}]", vec!["1"; MAX_BATCH + 1].join(","));
        let Parsed::Refused(v) = parse(&big) else {
            unreachable!()
        };
        assert_eq!(error_code(&v), Some(code::INVALID_REQUEST));
        // Wrong version, an object id, no method: invalid, answered with the id when usable.
        for (text, id) in [
            (r#"{"jsonrpc":"1.0","id":1,"method":"m"}"#, json!(1)),
            (r#"{"jsonrpc":"2.0","id":{},"method":"m"}"#, Value::Null),
            (r#"{"jsonrpc":"2.0","id":"a"}"#, json!("a")),
        ] {
            let Parsed::One(Entry::Invalid(v)) = parse(text) else {
                unreachable!("{text}")
            };
            assert_eq!(error_code(&v), Some(code::INVALID_REQUEST), "{text}");
            assert_eq!(v["id"], id, "{text}");
        }
        let Parsed::One(Entry::Invalid(v)) =
            parse(r#"{"jsonrpc":"2.0","id":2,"method":"m","params":[1]}"#)
        else {
            unreachable!()
        };
        assert_eq!(error_code(&v), Some(code::INVALID_PARAMS));
        assert_eq!(v["id"], json!(2));
    }

    #[test]
    fn a_batch_keeps_order_and_mixes_calls_and_errors() {
        let Parsed::Batch(entries) = parse(
            r#"[{"jsonrpc":"2.0","id":1,"method":"a"}, 5, {"jsonrpc":"2.0","id":2,"method":"b"}]"#,
        ) else {
            unreachable!()
        };
        assert_eq!(entries.len(), 3);
        assert!(matches!(&entries[0], Entry::Call(r) if r.method == "a"));
        assert!(
            matches!(&entries[1], Entry::Invalid(v) if error_code(v) == Some(code::INVALID_REQUEST))
        );
        assert!(matches!(&entries[2], Entry::Call(r) if r.method == "b"));
    }
}
