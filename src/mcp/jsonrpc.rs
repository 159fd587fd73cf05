//! JSON-RPC 2.0 framing for MCP: one message per body, parsed strictly.
//!
//! Invariants:
//! - A duplicate key anywhere in a message makes it malformed: clawgate must
//!   never decide on one reading of a body while the server acts on another.
//! - A batch (a JSON array) is never a message; the caller refuses it.
//! - Ids are strings or numbers, compared by their JSON text.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a body is not one acceptable JSON-RPC message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not JSON, or JSON with a duplicate key.
    #[error("not strict JSON: {0}")]
    Json(String),
    /// A JSON array: a batch.
    #[error("a JSON-RPC batch")]
    Batch,
    /// JSON, but not a JSON-RPC 2.0 message.
    #[error("not a JSON-RPC 2.0 message: {0}")]
    Shape(&'static str),
}

/// Parses JSON, refusing any object that names a key twice.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, FrameError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictSeed
        .deserialize(&mut de)
        .map_err(|e| FrameError::Json(e.to_string()))?;
    de.end().map_err(|e| FrameError::Json(e.to_string()))?;
    Ok(value)
}

struct StrictSeed;

impl<'de> DeserializeSeed<'de> for StrictSeed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number JSON cannot hold"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictSeed)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key `{key}`")));
            }
            let value = map.next_value_seed(StrictSeed)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// A JSON-RPC id: a string or a number, kept as its JSON value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Id(pub Value);

impl Id {
    /// The id as JSON text (`7`, `"abc"`), as records and lookups hold it.
    pub fn text(&self) -> String {
        self.0.to_string()
    }
}

/// One JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A request: it expects a response with its id.
    Request {
        /// The request id.
        id: Id,
        /// The method (`tools/call`).
        method: String,
        /// The params, when present.
        params: Option<Value>,
    },
    /// A notification: no id, no response. A `tools/call` sent this way is
    /// decided like a request.
    Notification {
        /// The method.
        method: String,
        /// The params, when present.
        params: Option<Value>,
    },
    /// A response (a client's answer to a server's request, or a server's
    /// answer to the client's).
    Response {
        /// The id of the request answered; `None` for an error without id.
        id: Option<Id>,
        /// The result, when it succeeded.
        result: Option<Value>,
        /// Whether it is a JSON-RPC error.
        error: bool,
    },
}

impl Message {
    /// The method of a request or notification.
    pub fn method(&self) -> Option<&str> {
        match self {
            Message::Request { method, .. } | Message::Notification { method, .. } => Some(method),
            Message::Response { .. } => None,
        }
    }

    /// The params of a request or notification.
    pub fn params(&self) -> Option<&Value> {
        match self {
            Message::Request { params, .. } | Message::Notification { params, .. } => {
                params.as_ref()
            }
            Message::Response { .. } => None,
        }
    }

    /// The id of a request or response.
    pub fn id(&self) -> Option<&Id> {
        match self {
            Message::Request { id, .. } => Some(id),
            Message::Response { id, .. } => id.as_ref(),
            Message::Notification { .. } => None,
        }
    }
}

/// Parses one message from a body: strict JSON, no batch, JSON-RPC 2.0.
pub fn parse_message(bytes: &[u8]) -> Result<Message, FrameError> {
    let value = parse_strict(bytes)?;
    message_of(value)
}

/// Classifies a parsed JSON value as a JSON-RPC message.
pub fn message_of(value: Value) -> Result<Message, FrameError> {
    let mut object = match value {
        Value::Object(object) => object,
        Value::Array(_) => return Err(FrameError::Batch),
        _ => return Err(FrameError::Shape("not an object")),
    };
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(FrameError::Shape("`jsonrpc` is not \"2.0\""));
    }
    let id = match object.remove("id") {
        None => None,
        Some(v @ (Value::String(_) | Value::Number(_))) => Some(Id(v)),
        Some(Value::Null) if !object.contains_key("method") => None,
        Some(_) => return Err(FrameError::Shape("`id` is not a string or a number")),
    };
    let params = object.remove("params");
    if let Some(p) = &params
        && !p.is_object()
        && !p.is_array()
    {
        return Err(FrameError::Shape("`params` is not an object or array"));
    }
    match object.remove("method") {
        Some(Value::String(method)) => {
            if object.contains_key("result") || object.contains_key("error") {
                return Err(FrameError::Shape("a request with a result or error"));
            }
            Ok(match id {
                Some(id) => Message::Request { id, method, params },
                None => Message::Notification { method, params },
            })
        }
        Some(_) => Err(FrameError::Shape("`method` is not a string")),
        None => {
            let result = object.remove("result");
            let error = object.remove("error");
            match (result, error) {
                (Some(result), None) => Ok(Message::Response {
                    id,
                    result: Some(result),
                    error: false,
                }),
                (None, Some(_)) => Ok(Message::Response {
                    id,
                    result: None,
                    error: true,
                }),
                _ => Err(FrameError::Shape(
                    "a response needs exactly one of result or error",
                )),
            }
        }
    }
}

/// The JSON-RPC error code of a clawgate refusal (implementation-defined
/// server-error range).
pub const REFUSAL_CODE: i64 = -32003;
/// The JSON-RPC error code of a malformed message (the spec's `Invalid Request`).
pub const INVALID_REQUEST: i64 = -32600;

/// The JSON-RPC error a refused message receives. A refused tool reads like
/// an unknown one (`message`), so its existence is not revealed; `data`
/// carries clawgate's reason code and request id.
pub fn refusal(id: Option<&Id>, code: i64, message: &str, reason: &str, request_id: &str) -> Value {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": id.map_or(Value::Null, |id| id.0.clone()),
        "error": {
            "code": code,
            "message": message,
            "data": {
                "clawgate": "denied",
                "reason": reason,
                "request_id": request_id,
            },
        },
    })
}

#[cfg(test)]
#[path = "jsonrpc_tests.rs"]
mod tests;
