//! What chat-ui's routes accept (§a.3–§a.4): conversation ids, the generate body's schema,
//! and the TGI request chat-ui builds from it — the conversation's messages as the prompt,
//! the client's `parameters` passed on after a JavaScript round trip.

use h2o_chat_engine::{CacheScope, ChatTurn};
use h2o_chat_protocol::GenerateParameters;
use serde_json::{Map, Value};

use crate::config::Limits;
use crate::plan::{Input, Plan};
use crate::store::{Author, StoredMessage, TurnStart};
use crate::tgi_wire::Echo;
use crate::validation::{ValidationError, check_rules};

/// A MongoDB ObjectId as chat-ui's routes take it: 24 hex digits.
pub fn is_object_id(id: &str) -> bool {
    id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A textual UUID of version 1–5, any case, or the nil UUID (chat-ui's zod `uuid()`).
pub fn is_uuid(value: &str) -> bool {
    let bytes = value.as_bytes();
    if bytes.len() != 36 {
        return false;
    }
    for (i, &b) in bytes.iter().enumerate() {
        let ok = if matches!(i, 8 | 13 | 18 | 23) {
            b == b'-'
        } else {
            b.is_ascii_hexdigit()
        };
        if !ok {
            return false;
        }
    }
    if value == "00000000-0000-0000-0000-000000000000" {
        return true;
    }
    matches!(bytes[14], b'1'..=b'5')
        && matches!(bytes[19].to_ascii_lowercase(), b'8' | b'9' | b'a' | b'b')
}

/// Why a generate body is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// chat-ui's schema failed (→ 500 `Internal Error`).
    Schema,
    /// `parameters` has a wrong type: TGI's 422 `text/plain`, which chat-ui relays.
    Type(String),
}

/// A generate body (§a.4) that passed chat-ui's schema.
#[derive(Debug, Clone)]
pub struct GenerateBody {
    /// The question, trimmed as JavaScript trims.
    pub inputs: String,
    /// `options.id`: the question's message id.
    pub message_id: Option<String>,
    /// The id the question is stored under: `options.id`, or a fresh one.
    question_id: String,
    pub is_retry: bool,
    /// `stream` as chat-ui passes it on to TGI.
    pub stream: bool,
    pub parameters: GenerateParameters,
}

impl GenerateBody {
    /// Parses a body in chat-ui's order: its own schema, then the TGI request it relays.
    pub fn parse(body: &[u8]) -> Result<GenerateBody, BodyError> {
        let Value::Object(map) =
            serde_json::from_slice::<Value>(body).map_err(|_| BodyError::Schema)?
        else {
            return Err(BodyError::Schema);
        };
        let (inputs, message_id, is_retry) = options(&map).ok_or(BodyError::Schema)?;
        // chat-ui relays `{...body, inputs: prompt}` to TGI after a JavaScript round trip.
        let stream = map.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let parameters = parameters(map.get("parameters").cloned())?;
        Ok(GenerateBody {
            inputs,
            question_id: message_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            message_id,
            is_retry,
            stream,
            parameters,
        })
    }

    /// The question as it is stored, and what a retry replaces.
    pub fn turn(&self) -> TurnStart {
        TurnStart {
            retry_of: self.message_id.clone().filter(|_| self.is_retry),
            question: StoredMessage {
                from: Author::User,
                content: self.inputs.clone(),
                id: self.question_id.clone(),
            },
        }
    }

    /// The conversation after this question, as the model reads it (the store applies the
    /// same [`GenerateBody::turn`]).
    pub fn history(&self, mut messages: Vec<StoredMessage>) -> Vec<StoredMessage> {
        crate::store::apply_turn(&mut messages, &self.turn(), usize::MAX);
        messages
    }

    /// TGI's rules over the parameters, and the plan: the newest messages that fit, the
    /// conversation id as the prompt cache's hint, the session as its scope. An omitted
    /// `return_full_text` means true.
    pub fn plan(
        &self,
        messages: &[StoredMessage],
        conversation: &str,
        session: &str,
        limits: &Limits,
    ) -> Result<(Plan, Echo), ValidationError> {
        let sampling = check_rules(&self.parameters, self.stream, limits)?;
        let turns = messages
            .iter()
            .map(|m| ChatTurn::new(m.from.role(), m.content.clone()))
            .collect();
        let mut plan = Plan::tgi(Input::History(turns), &self.parameters, sampling)?;
        plan.cache_hint = Some(conversation.to_string());
        plan.cache_scope = CacheScope::of("session", session);
        Ok((plan, Echo::of(&self.parameters, true)))
    }
}

/// `inputs` and `options` as chat-ui's schema takes them; `None` on any violation.
fn options(map: &Map<String, Value>) -> Option<(String, Option<String>, bool)> {
    let inputs = map.get("inputs")?.as_str()?;
    // JavaScript's trim: Unicode white space, line breaks and U+FEFF.
    let inputs = inputs.trim_matches(|c: char| c.is_whitespace() || c == '\u{FEFF}');
    if inputs.is_empty() {
        return None;
    }
    let Value::Object(options) = map.get("options")? else {
        return None;
    };
    let uuid_field = |key: &str| -> Option<Option<String>> {
        match options.get(key) {
            None | Some(Value::Null) => Some(None),
            Some(Value::String(s)) if is_uuid(s) => Some(Some(s.clone())),
            Some(_) => None,
        }
    };
    let message_id = uuid_field("id")?;
    uuid_field("response_id")?;
    let is_retry = match options.get("is_retry") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return None,
    };
    match options.get("web_search_id") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        // No web searches are stored here, so any id names a missing one.
        Some(_) => return None,
    }
    Some((inputs.to_string(), message_id, is_retry))
}

/// `parameters` as TGI receives them from chat-ui: absent or null means TGI's defaults.
fn parameters(value: Option<Value>) -> Result<GenerateParameters, BodyError> {
    match value {
        None | Some(Value::Null) => Ok(GenerateParameters::default()),
        Some(mut value) => {
            normalize_whole_floats(&mut value);
            serde_path_to_error::deserialize(value).map_err(|err| {
                BodyError::Type(format!(
                    "Failed to deserialize the JSON body into the target type: parameters.{err}"
                ))
            })
        }
    }
}

/// chat-ui re-serialises the body in JavaScript before relaying it, so a whole-valued float
/// (`2048.0`) reaches TGI as an integer (§c).
fn normalize_whole_floats(value: &mut Value) {
    match value {
        Value::Number(n) => {
            if let Some(f) = n.as_f64()
                && !n.is_i64()
                && !n.is_u64()
                && f.fract() == 0.0
                && f.abs() < 9.0e15
            {
                *value = if f < 0.0 {
                    Value::from(f as i64)
                } else {
                    Value::from(f as u64)
                };
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_whole_floats),
        Value::Object(map) => map.values_mut().for_each(normalize_whole_floats),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_of_versions_one_to_five_and_nil() {
        assert!(is_uuid("5b3f0cd6-1b42-4e8a-9f3e-2f4a1c6d7e80"));
        assert!(is_uuid("5B3F0CD6-1B42-1E8A-9F3E-2F4A1C6D7E80"));
        assert!(is_uuid("00000000-0000-0000-0000-000000000000"));
        assert!(!is_uuid("5b3f0cd6-1b42-7e8a-9f3e-2f4a1c6d7e80"));
        assert!(!is_uuid("not-a-uuid"));
    }

    #[test]
    fn chat_ui_schema() {
        let ok = br#"{"inputs":"  hi\n","options":{"id":"5b3f0cd6-1b42-4e8a-9f3e-2f4a1c6d7e80","is_retry":false,"web_search_id":""}}"#;
        assert_eq!(GenerateBody::parse(ok).unwrap().inputs, "hi");
        for bad in [
            &br#"{"inputs":"   ","options":{}}"#[..],
            br#"{"inputs":"hi"}"#,
            br#"{"inputs":"hi","options":{"id":"x"}}"#,
            br#"{"inputs":"hi","options":{"is_retry":"yes"}}"#,
            br#"{"inputs":"hi","options":{"web_search_id":"abc"}}"#,
            br#"{"inputs":5,"options":{}}"#,
            b"not json",
        ] {
            assert_eq!(
                GenerateBody::parse(bad).unwrap_err(),
                BodyError::Schema,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn chat_ui_relay_turns_whole_floats_into_integers() {
        let mut params = serde_json::json!({"truncate": 2048.0, "temperature": 0.5, "x": [3.0]});
        normalize_whole_floats(&mut params);
        assert_eq!(
            params.to_string(),
            r#"{"truncate":2048,"temperature":0.5,"x":[3]}"#
        );
        let body = br#"{"inputs":"hi","options":{},"parameters":{"truncate":2048.0}}"#;
        assert_eq!(
            GenerateBody::parse(body).unwrap().parameters.truncate,
            Some(2048)
        );
    }

    #[test]
    fn a_wrongly_typed_parameter_is_tgi_type_error() {
        let body = br#"{"inputs":"hi","options":{},"parameters":{"temperature":"hot"}}"#;
        let BodyError::Type(message) = GenerateBody::parse(body).unwrap_err() else {
            panic!("a type error");
        };
        assert!(message.contains("parameters.temperature"), "{message}");
    }
}
