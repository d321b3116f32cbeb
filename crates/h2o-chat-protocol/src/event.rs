//! What one decoded stream event means to a client (§b.2–§b.5, and §g for NDJSON).
//!
//! The wire has two framings (SSE `data:` events and the later NDJSON lines) but a client only
//! ever cares about three things: a token, the final answer, or an error. [`Event`] is that
//! meaning; [`parse_sse_data`] and [`parse_ndjson_line`] turn one event's bytes into it.

use serde::Deserialize;
use serde_json::Value;

use crate::wire::{Details, ErrorEvent, Token};

/// One decoded event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A generated token that is not the last one.
    Token(Token),
    /// The last event: the final token (absent in the NDJSON format) and the whole answer.
    Final(FinalEvent),
    /// The server reported a failure; nothing follows (§b.4).
    Error(ErrorEvent),
    /// The likeliest tokens at the position of the token that follows (its own included),
    /// with their log-probabilities: TGI's `top_tokens`, present when the request asked for
    /// `top_n_tokens`. A [`crate::Decoder`] yields it just before that token's event.
    Alternatives(Vec<Token>),
}

/// The final event (§b.3).
#[derive(Debug, Clone, PartialEq)]
pub struct FinalEvent {
    /// The last generated token; it counts as a token. Special when the model stopped by
    /// itself (EOS), normal text when a stop sequence or the length limit ended the run.
    /// `None` in the NDJSON format, whose `finalAnswer` carries no token.
    pub token: Option<Token>,
    /// The whole generated text, as the server decoded it.
    pub generated_text: String,
    /// Present when the request asked for `details`.
    pub details: Option<Details>,
}

/// Why an event's bytes could not be understood.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    /// The event's data is not the JSON the protocol describes.
    #[error("malformed event: {detail}; data: {raw}")]
    Malformed {
        /// What the JSON parser said.
        detail: String,
        /// The start of the raw data, for the log.
        raw: String,
    },
    /// Valid JSON, but neither a token, a final event nor an error.
    #[error("unexpected event (no `token` or `error`): {raw}")]
    Unexpected { raw: String },
}

/// How much raw event data an error message quotes.
const RAW_QUOTE_LIMIT: usize = 200;

fn quote(raw: &[u8]) -> String {
    let cut = raw.len().min(RAW_QUOTE_LIMIT);
    let mut text = String::from_utf8_lossy(&raw[..cut]).into_owned();
    if raw.len() > cut {
        text.push('…');
    }
    text
}

fn malformed(err: serde_json::Error, raw: &[u8]) -> EventError {
    EventError::Malformed {
        detail: err.to_string(),
        raw: quote(raw),
    }
}

/// The union of the SSE event shapes. Unknown fields are ignored, as §b.3 requires.
#[derive(Deserialize)]
struct SseEvent {
    token: Option<Token>,
    #[serde(default)]
    top_tokens: Vec<Token>,
    generated_text: Option<String>,
    details: Option<Value>,
    error: Option<String>,
    error_type: Option<String>,
}

/// Parses the data of one SSE event (§b.5 step 5). Its `top_tokens`, if any, are left out
/// ([`crate::Decoder`] yields them as [`Event::Alternatives`]).
pub fn parse_sse_data(data: &[u8]) -> Result<Event, EventError> {
    parse_sse_event(data).map(|(event, _)| event)
}

/// Parses the data of one SSE event, with the alternatives it carries (empty when none).
pub(crate) fn parse_sse_event(data: &[u8]) -> Result<(Event, Vec<Token>), EventError> {
    if let Some(event) = crate::fast_path::parse_token_event(data) {
        return Ok((event, Vec::new()));
    }
    let event: SseEvent = serde_json::from_slice(data).map_err(|e| malformed(e, data))?;
    if let Some(error) = event.error {
        return Ok((
            Event::Error(ErrorEvent {
                error,
                error_type: event.error_type,
            }),
            Vec::new(),
        ));
    }
    let Some(token) = event.token else {
        return Err(EventError::Unexpected { raw: quote(data) });
    };
    let parsed = match event.generated_text {
        Some(generated_text) => Event::Final(FinalEvent {
            token: Some(token),
            generated_text,
            details: event.details.and_then(details_from),
        }),
        None => Event::Token(token),
    };
    Ok((parsed, event.top_tokens))
}

/// `details` is informative: a deployment with a newer shape must not cost the user the
/// answer, so a `details` we cannot read is dropped with a warning instead of failing.
fn details_from(value: Value) -> Option<Details> {
    if value.is_null() {
        return None;
    }
    match serde_json::from_value(value) {
        Ok(details) => Some(details),
        Err(err) => {
            tracing::warn!(%err, "ignoring unreadable `details` in the final event");
            None
        }
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum NdjsonEvent {
    Stream {
        token: String,
    },
    FinalAnswer {
        text: String,
    },
    Status {
        status: String,
        message: Option<String>,
    },
    #[serde(other)]
    Other,
}

/// Parses one line of the later NDJSON format (§g). Returns `None` for updates that carry
/// nothing for the answer (`status: started`, titles, web-search progress).
pub fn parse_ndjson_line(line: &[u8]) -> Result<Option<Event>, EventError> {
    let event: NdjsonEvent = serde_json::from_slice(line).map_err(|e| malformed(e, line))?;
    Ok(match event {
        NdjsonEvent::Stream { token } => Some(Event::Token(Token {
            id: 0,
            // 2024-05 servers right-pad tokens with NULs to 16 characters.
            text: if token.contains('\0') {
                token.replace('\0', "")
            } else {
                token
            },
            logprob: None,
            special: false,
        })),
        NdjsonEvent::FinalAnswer { text } => Some(Event::Final(FinalEvent {
            token: None,
            generated_text: text,
            details: None,
        })),
        NdjsonEvent::Status { status, message } if status == "error" => {
            Some(Event::Error(ErrorEvent {
                error: message.unwrap_or_else(|| "the server reported an error".into()),
                error_type: Some("status".into()),
            }))
        }
        NdjsonEvent::Status { .. } | NdjsonEvent::Other => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::FinishReason;

    #[test]
    fn token_event_of_section_b2() {
        let event = parse_sse_data(br#"{"token":{"id":23090,"text":"Hello","logprob":-0.4873,"special":false},"generated_text":null,"details":null}"#).unwrap();
        assert_eq!(
            event,
            Event::Token(Token {
                id: 23090,
                text: "Hello".into(),
                logprob: Some(-0.4873),
                special: false
            })
        );
    }

    #[test]
    fn final_event_with_details() {
        let event = parse_sse_data(br#"{"token":{"id":2,"text":"</s>","logprob":null,"special":true},"generated_text":"Hi","details":{"finish_reason":"eos_token","generated_tokens":3,"seed":null}}"#).unwrap();
        let Event::Final(fin) = event else {
            panic!("not final")
        };
        assert_eq!(fin.generated_text, "Hi");
        assert_eq!(fin.details.unwrap().finish_reason, FinishReason::EosToken);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let event = parse_sse_data(br#"{"token":{"id":1,"text":"a","logprob":0.0,"special":false,"extra":1},"top_tokens":[],"generated_text":null,"details":null}"#).unwrap();
        assert!(matches!(event, Event::Token(t) if t.text == "a"));
    }

    #[test]
    fn error_event_of_section_b4() {
        let event = parse_sse_data(br#"{"error":"Model is overloaded","error_type":"overloaded"}"#)
            .unwrap();
        assert_eq!(
            event,
            Event::Error(ErrorEvent {
                error: "Model is overloaded".into(),
                error_type: Some("overloaded".into())
            })
        );
    }

    #[test]
    fn malformed_json_is_an_error_with_the_raw_data() {
        let err = parse_sse_data(br#"{"token":{"id":1,"text":"#).unwrap_err();
        assert!(matches!(err, EventError::Malformed { raw, .. } if raw.starts_with("{\"token\"")));
    }

    #[test]
    fn json_without_token_or_error_is_unexpected() {
        assert!(matches!(
            parse_sse_data(br#"{"hello":1}"#),
            Err(EventError::Unexpected { .. })
        ));
    }

    #[test]
    fn ndjson_stream_token_strips_nul_padding() {
        let event = parse_ndjson_line(b"{\"type\":\"stream\",\"token\":\"Hi\\u0000\\u0000\"}")
            .unwrap()
            .unwrap();
        assert!(matches!(event, Event::Token(t) if t.text == "Hi"));
    }

    #[test]
    fn ndjson_status_started_is_skipped_and_error_is_an_error() {
        assert_eq!(
            parse_ndjson_line(br#"{"type":"status","status":"started"}"#).unwrap(),
            None
        );
        assert!(matches!(
            parse_ndjson_line(br#"{"type":"status","status":"error","message":"boom"}"#),
            Ok(Some(Event::Error(e))) if e.error == "boom"
        ));
    }
}
