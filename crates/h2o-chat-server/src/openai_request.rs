//! An OpenAI request in TGI's terms: the mapping every OpenAI route goes through before the
//! same validation as TGI's own routes.
//!
//! - `temperature` 0 means greedy decoding, whatever `top_p` says; absent means OpenAI's
//!   default, sampling at temperature 1. `top_p` 1 means no nucleus cut, 0 greedy.
//! - `max_tokens` / `max_completion_tokens` → `max_new_tokens`; absent: what fits after the
//!   prompt, at most 512.
//! - `presence_penalty` / `frequency_penalty` → `repetition_penalty = 1 + max(p, f) / 2`
//!   when positive (TGI has one multiplicative penalty; OpenAI's 0–2 maps onto 1–2).
//! - `stop` (a string or up to 4), `seed`; `user` is the prompt cache's hint.
//! - Options this server does not implement (`n` > 1, `logprobs`, `tools`, a
//!   `response_format` other than text, `logit_bias`, `echo`, `suffix`, …) are refused with a
//!   400 that names them, and so is any field OpenAI does not define: nothing is silently
//!   ignored but `metadata`, `store`, `service_tier` and `parallel_tool_calls`.
//!
//! ```
//! use h2o_chat_server::openai_request::{Input, OpenAiRequest};
//! use h2o_chat_server::wire::openai::Kind;
//!
//! let body = br#"{"model":"smollm2","messages":[{"role":"user","content":"Hi"}],"temperature":0,"top_p":0.5}"#;
//! let request = OpenAiRequest::parse(body, Kind::Chat).unwrap();
//! assert!(!request.parameters.do_sample);          // temperature 0: greedy…
//! assert_eq!(request.parameters.top_p, None);       // …whatever top_p says
//! assert!(matches!(request.input, Input::Chat(ref turns) if turns[0].content == "Hi"));
//! ```

use h2o_chat_engine::ChatTurn;
use h2o_chat_protocol::GenerateParameters;
use serde_json::{Map, Value};

use crate::wire::openai::{ApiError, Kind};

/// `max_tokens` when the request gives none (and the room after the prompt allows).
pub const DEFAULT_MAX_TOKENS: u32 = 512;

/// What the model reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Chat messages, rendered with the model's template (content stays text).
    Chat(Vec<ChatTurn>),
    /// A legacy completion prompt, used as is.
    Text(String),
}

/// An OpenAI request, mapped.
#[derive(Debug, Clone)]
pub struct OpenAiRequest {
    /// The requested model; `None` or empty means the local model.
    pub model: Option<String>,
    pub input: Input,
    pub parameters: GenerateParameters,
    /// `max_tokens` was not given: shrink the default to what fits after the prompt.
    pub fit_max_tokens: bool,
    pub stream: bool,
    pub include_usage: bool,
    pub user: Option<String>,
}

const CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stream_options",
    "stop",
    "max_tokens",
    "max_completion_tokens",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "user",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
    "parallel_tool_calls",
    "metadata",
    "store",
    "service_tier",
    "modalities",
    "audio",
    "prediction",
    "reasoning_effort",
    "web_search_options",
];

const TEXT_FIELDS: &[&str] = &[
    "model",
    "prompt",
    "suffix",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stream_options",
    "logprobs",
    "echo",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "best_of",
    "logit_bias",
    "user",
    "seed",
];

fn number(body: &Map<String, Value>, key: &str) -> Result<Option<f64>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(ApiError::invalid(format!("`{key}` must be a number"), key)),
    }
}

fn is_unset(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) | Some(Value::Bool(false)) => true,
        Some(Value::Array(items)) => items.is_empty(),
        Some(Value::Object(map)) => map.is_empty(),
        Some(Value::Number(n)) => n.as_f64() == Some(0.0),
        Some(Value::String(s)) => s.is_empty(),
        _ => false,
    }
}

/// Refuses options this server does not implement, naming them.
fn refuse_unsupported(body: &Map<String, Value>, kind: Kind) -> Result<(), ApiError> {
    let known = match kind {
        Kind::Chat => CHAT_FIELDS,
        Kind::Text => TEXT_FIELDS,
    };
    if let Some(unknown) = body.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            format!("Unrecognized request argument supplied: {unknown}"),
            unknown,
        ));
    }
    match body.get("n") {
        None | Some(Value::Null) => {}
        Some(n) if n.as_u64() == Some(1) => {}
        Some(_) => {
            return Err(ApiError::unsupported(
                "n",
                "only one choice (n = 1) is generated",
            ));
        }
    }
    for (key, what) in [
        ("logprobs", "log-probabilities are not returned"),
        ("top_logprobs", "log-probabilities are not returned"),
        ("logit_bias", "logits cannot be biased"),
        ("tools", "there is no tool calling"),
        ("functions", "there is no function calling"),
        ("audio", "there is no audio output"),
        ("prediction", "there are no predicted outputs"),
        ("reasoning_effort", "the model does not reason"),
        ("web_search_options", "there is no web search"),
        ("echo", "the prompt is not echoed"),
        ("suffix", "there is no insertion"),
    ] {
        if !is_unset(body.get(key)) {
            return Err(ApiError::unsupported(key, what));
        }
    }
    for key in ["tool_choice", "function_call"] {
        match body.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == "none" || s == "auto" => {}
            Some(_) => return Err(ApiError::unsupported(key, "there is no tool calling")),
        }
    }
    match body.get("response_format") {
        None | Some(Value::Null) => {}
        Some(format) if format.get("type").and_then(Value::as_str) == Some("text") => {}
        Some(_) => {
            return Err(ApiError::unsupported(
                "response_format",
                "only plain text is generated",
            ));
        }
    }
    match body.get("modalities") {
        None | Some(Value::Null) => {}
        Some(Value::Array(m)) if m.iter().all(|v| v.as_str() == Some("text")) => {}
        Some(_) => {
            return Err(ApiError::unsupported(
                "modalities",
                "only text is generated",
            ));
        }
    }
    match body.get("best_of") {
        None | Some(Value::Null) => {}
        Some(n) if n.as_u64() == Some(1) => {}
        Some(_) => {
            return Err(ApiError::unsupported(
                "best_of",
                "one sequence is generated",
            ));
        }
    }
    Ok(())
}

/// Text of a message's `content`: a string, or a list of `{type: "text", text}` parts.
fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(text) => Some(text.clone()),
        Value::Null => Some(String::new()),
        Value::Array(parts) => {
            let mut text = String::new();
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => text.push_str(part.get("text")?.as_str()?),
                    _ => return None,
                }
            }
            Some(text)
        }
        _ => None,
    }
}

fn chat_turns(body: &Map<String, Value>) -> Result<Vec<ChatTurn>, ApiError> {
    let Some(messages) = body
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
    else {
        return Err(ApiError::invalid(
            "`messages` must be a non-empty list",
            "messages",
        ));
    };
    let mut turns = Vec::with_capacity(messages.len());
    for (i, message) in messages.iter().enumerate() {
        let role = match message.get("role").and_then(Value::as_str).unwrap_or("") {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role `{other}` is not supported"),
                    "messages",
                ));
            }
        };
        if !is_unset(message.get("tool_calls")) || !is_unset(message.get("function_call")) {
            return Err(ApiError::unsupported(
                "messages",
                "there is no tool calling",
            ));
        }
        let Some(content) = message.get("content").and_then(content_text) else {
            return Err(ApiError::invalid(
                format!("messages[{i}].content must be a string or a list of text parts"),
                "messages",
            ));
        };
        turns.push(ChatTurn::new(role, content));
    }
    Ok(turns)
}

impl OpenAiRequest {
    /// Parses and maps a request body (see the module docs).
    pub fn parse(bytes: &[u8], kind: Kind) -> Result<Self, ApiError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            ApiError::invalid(
                format!("We could not parse the JSON body of your request: {e}"),
                "body",
            )
        })?;
        let Value::Object(body) = value else {
            return Err(ApiError::invalid(
                "the request body must be a JSON object",
                "body",
            ));
        };
        refuse_unsupported(&body, kind)?;
        let model = match body.get("model") {
            None | Some(Value::Null) => None,
            Some(Value::String(model)) => Some(model.clone()),
            Some(_) => return Err(ApiError::invalid("`model` must be a string", "model")),
        };
        let input = match kind {
            Kind::Chat => Input::Chat(chat_turns(&body)?),
            Kind::Text => match body.get("prompt") {
                Some(Value::String(prompt)) if !prompt.is_empty() => Input::Text(prompt.clone()),
                _ => {
                    return Err(ApiError::invalid(
                        "`prompt` must be a non-empty string",
                        "prompt",
                    ));
                }
            },
        };

        let temperature = number(&body, "temperature")?;
        if temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return Err(ApiError::invalid(
                "`temperature` must be between 0 and 2",
                "temperature",
            ));
        }
        let top_p = number(&body, "top_p")?;
        if top_p.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
            return Err(ApiError::invalid(
                "`top_p` must be between 0 and 1",
                "top_p",
            ));
        }
        // Greedy when asked for temperature 0 or top_p 0; otherwise OpenAI samples.
        let greedy = temperature == Some(0.0) || top_p == Some(0.0);
        let mut parameters = GenerateParameters {
            do_sample: !greedy,
            ..GenerateParameters::default()
        };
        if !greedy {
            parameters.temperature = temperature.filter(|&t| t != 1.0).map(|t| t as f32);
            parameters.top_p = top_p.filter(|&p| p < 1.0).map(|p| p as f32);
        }
        let penalty = [
            number(&body, "presence_penalty")?,
            number(&body, "frequency_penalty")?,
        ]
        .into_iter()
        .flatten()
        .fold(0.0f64, f64::max);
        if penalty > 2.0 {
            return Err(ApiError::invalid(
                "penalties must be between -2 and 2",
                "presence_penalty",
            ));
        }
        parameters.repetition_penalty = (penalty > 0.0).then(|| (1.0 + penalty / 2.0) as f32);
        let max_tokens = match (
            number(&body, "max_completion_tokens")?,
            number(&body, "max_tokens")?,
        ) {
            (Some(n), _) | (None, Some(n)) => {
                if n < 1.0 || n.fract() != 0.0 || n > f64::from(u32::MAX) {
                    return Err(ApiError::invalid(
                        "`max_tokens` must be a positive integer",
                        "max_tokens",
                    ));
                }
                Some(n as u32)
            }
            (None, None) => None,
        };
        parameters.max_new_tokens = max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
        parameters.stop = match body.get("stop") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => {
                let stop: Option<Vec<String>> = items
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect();
                match stop {
                    Some(stop) if stop.len() <= 4 => stop,
                    _ => {
                        return Err(ApiError::invalid(
                            "`stop` must be a string or a list of at most 4 strings",
                            "stop",
                        ));
                    }
                }
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    "`stop` must be a string or a list of strings",
                    "stop",
                ));
            }
        };
        parameters.seed = match body.get("seed") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_i64()
                    .map(|s| s as u64)
                    .or_else(|| v.as_u64())
                    .ok_or_else(|| ApiError::invalid("`seed` must be an integer", "seed"))?,
            ),
        };
        parameters.return_full_text = Some(false);
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(ApiError::invalid("`stream` must be a boolean", "stream")),
        };
        let include_usage = body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let user = body
            .get("user")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .map(|u| u.chars().take(256).collect());
        Ok(OpenAiRequest {
            model,
            input,
            parameters,
            fit_max_tokens: max_tokens.is_none(),
            stream,
            include_usage,
            user,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(extra: Value) -> Result<OpenAiRequest, String> {
        let mut body = serde_json::json!({"messages": [{"role": "user", "content": "Hi"}]});
        if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
            body.extend(extra);
        }
        OpenAiRequest::parse(body.to_string().as_bytes(), Kind::Chat).map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn temperature_zero_is_greedy_whatever_top_p_says() {
        for top_p in [0.1, 0.5, 0.99] {
            let request = chat(serde_json::json!({"temperature": 0, "top_p": top_p})).unwrap();
            assert!(!request.parameters.do_sample);
            assert_eq!(request.parameters.top_p, None);
            assert_eq!(request.parameters.temperature, None);
        }
    }

    #[test]
    fn absent_temperature_samples_like_openai() {
        let request = chat(serde_json::json!({})).unwrap();
        assert!(request.parameters.do_sample);
        assert_eq!(request.parameters.temperature, None, "1 is TGI's no-op");
        assert!(request.fit_max_tokens);
    }

    #[test]
    fn unsupported_options_are_refused_by_name() {
        for (extra, name) in [
            (serde_json::json!({"logprobs": true}), "logprobs"),
            (
                serde_json::json!({"tools": [{"type": "function"}]}),
                "tools",
            ),
            (
                serde_json::json!({"response_format": {"type": "json_object"}}),
                "response_format",
            ),
            (serde_json::json!({"n": 2}), "`n`"),
            (serde_json::json!({"logit_bias": {"5": 1}}), "logit_bias"),
            (serde_json::json!({"frobnicate": 1}), "frobnicate"),
        ] {
            let err = chat(extra.clone()).unwrap_err();
            assert!(err.contains(name), "{extra}: {err}");
        }
    }

    #[test]
    fn defaults_and_empty_values_of_unsupported_options_pass() {
        let request = chat(serde_json::json!({
            "logprobs": false, "tools": [], "response_format": {"type": "text"},
            "n": 1, "tool_choice": "none", "metadata": {"a": "b"}, "store": false
        }));
        assert!(request.is_ok(), "{request:?}");
    }

    #[test]
    fn penalties_map_to_one_repetition_penalty() {
        let request =
            chat(serde_json::json!({"presence_penalty": 0.4, "frequency_penalty": 1.0})).unwrap();
        assert_eq!(request.parameters.repetition_penalty, Some(1.5));
    }
}
