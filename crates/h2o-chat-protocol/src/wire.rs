//! The JSON shapes that cross the wire, defined once for both sides.
//!
//! The client deserialises them and the server (crate `h2o-chat-server`) serialises them, so
//! field order here *is* the wire order of protocol §a.4 and §b.2: serde writes struct fields
//! in declaration order. Tests on both sides still compare bytes with the literal examples of
//! the protocol document, so a symmetric mistake here cannot hide.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One generated token, as TGI reports it (§b.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    /// The tokenizer id. Streams in the later NDJSON format (§g) carry no ids; they use 0.
    pub id: u32,
    /// The token's text, decoded incrementally. May be empty while a UTF-8 character is
    /// still incomplete; the held-back bytes arrive with a later token.
    pub text: String,
    /// Log-probability; `null` on the wire when it was not finite.
    pub logprob: Option<f32>,
    /// True for the tokenizer's special ids (EOS and other control tokens). Their text is
    /// the raw token string and is never part of the answer.
    pub special: bool,
}

/// Why generation ended (§b.3 `details.finish_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// `max_new_tokens` was reached.
    Length,
    /// The model produced its end-of-sequence token.
    EosToken,
    /// One of the `stop` strings ended the output.
    StopSequence,
}

impl FinishReason {
    /// The wire name (`length`, `eos_token`, `stop_sequence`).
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::EosToken => "eos_token",
            FinishReason::StopSequence => "stop_sequence",
        }
    }
}

/// `details` of the final event, present only when `parameters.details` was true.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Details {
    pub finish_reason: FinishReason,
    pub generated_tokens: u32,
    /// `null` when sampling was off.
    pub seed: Option<u64>,
}

/// One event of the TGI stream (§b.2, §b.3): a token, and on the last event the whole text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamResponse {
    pub token: Token,
    /// The likeliest tokens at this position (`top_n_tokens`); absent when not asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_tokens: Vec<Token>,
    /// Non-null only on the final event.
    pub generated_text: Option<String>,
    pub details: Option<Details>,
}

/// The error event (§b.4). It replaces the rest of the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEvent {
    pub error: String,
    /// `validation`, `overloaded`, `generation` or `incomplete_generation`; absent in some
    /// deployments, so optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
}

/// `options` of the generate body (§a.4), in the key order the browser and g4f sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Options {
    pub id: String,
    pub response_id: String,
    pub is_retry: bool,
    pub use_cache: bool,
    pub web_search_id: String,
}

impl Options {
    /// Fresh UUIDv4s for `id` and `response_id`, no retry, no cache, no web search.
    pub fn fresh() -> Self {
        Options {
            id: uuid::Uuid::new_v4().to_string(),
            response_id: uuid::Uuid::new_v4().to_string(),
            is_retry: false,
            use_cache: false,
            web_search_id: String::new(),
        }
    }
}

/// The body of `POST /conversation/{id}` (§a.4), keys in wire order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub inputs: String,
    pub parameters: Map<String, Value>,
    pub stream: bool,
    pub options: Options,
}

/// The body of `POST /conversation` (§a.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateConversation {
    pub model: String,
}

/// The reply of `POST /conversation` (§a.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationCreated {
    pub conversation_id: String,
}

/// The form fields of `POST /settings` (§a.2), in the order g4f sent them.
pub fn settings_form(active_model: &str) -> [(&'static str, &str); 5] {
    [
        ("ethicsModalAccepted", "true"),
        ("shareConversationsWithModelAuthors", "true"),
        ("ethicsModalAcceptedAt", ""),
        ("activeModel", active_model),
        ("searchEnabled", "true"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// §b.3: the literal final event of the protocol document, byte for byte.
    #[test]
    fn final_event_serialises_in_wire_order() {
        let event = StreamResponse {
            top_tokens: Vec::new(),
            token: Token {
                id: 11,
                text: "<|endoftext|>".into(),
                logprob: Some(-0.03),
                special: true,
            },
            generated_text: Some("Hello!".into()),
            details: None,
        };
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"token":{"id":11,"text":"<|endoftext|>","logprob":-0.03,"special":true},"generated_text":"Hello!","details":null}"#
        );
    }

    /// §b.2: a non-finite logprob is `null` on the wire.
    #[test]
    fn non_finite_logprob_is_null() {
        let token = Token {
            id: 1,
            text: "a".into(),
            logprob: Some(f32::NAN),
            special: false,
        };
        assert_eq!(
            serde_json::to_string(&token).unwrap(),
            r#"{"id":1,"text":"a","logprob":null,"special":false}"#
        );
    }

    /// §b.4: the literal error event.
    #[test]
    fn error_event_serialises_in_wire_order() {
        let event = ErrorEvent {
            error: "Input validation error: `temperature` must be strictly positive".into(),
            error_type: Some("validation".into()),
        };
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"error":"Input validation error: `temperature` must be strictly positive","error_type":"validation"}"#
        );
    }
}
