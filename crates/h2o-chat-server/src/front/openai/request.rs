//! An OpenAI request ([`wire`](super::wire)) as a [`Plan`]:
//!
//! - `temperature` 0 means greedy decoding, whatever `top_p` says; absent means OpenAI's
//!   default, sampling at temperature 1. `top_p` 1 means no nucleus cut, 0 greedy.
//! - `max_tokens` / `max_completion_tokens` → the answer's limit; absent: what fits after
//!   the prompt, at most 512.
//! - `presence_penalty` / `frequency_penalty` → a repetition penalty `1 + max(p, f) / 2`
//!   when positive (TGI has one multiplicative penalty; OpenAI's 0–2 maps onto 1–2).
//! - `stop` (a string or up to 4), `seed`; `user` is the prompt cache's hint.
//! - Options this server does not implement (`n` > 1, `logprobs`, `tools`, a
//!   `response_format` other than text, `logit_bias`, `echo`, `suffix`, …) are refused with a
//!   400 that names them, and so is any field OpenAI does not define: nothing is silently
//!   ignored but `metadata`, `store`, `service_tier` and `parallel_tool_calls`.
//!
//! ```
//! use h2o_chat_server::front::openai::request::{Kind, OpenAiRequest};
//! use h2o_chat_server::plan::Input;
//!
//! let body = br#"{"model":"smollm2","messages":[{"role":"user","content":"Hi"}],"temperature":0,"top_p":0.5}"#;
//! let request = OpenAiRequest::parse(body, Kind::Chat).unwrap();
//! assert!(!request.plan.sampling.do_sample);          // temperature 0: greedy…
//! assert_eq!(request.plan.sampling.top_p, None);       // …whatever top_p says
//! assert!(matches!(request.plan.input, Input::Chat(ref turns) if turns[0].content == "Hi"));
//! ```

use h2o_chat_engine::{CacheScope, ChatTurn, SamplingParams};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::front::openai::error::ApiError;
use crate::front::openai::wire::{
    ChatCompletionRequest, CompletionRequest, RequestMessage, Stop, StreamOptions,
};
use crate::plan::{Input, MaxNewTokens, Plan};

/// `max_tokens` when the request gives none (and the room after the prompt allows).
pub const DEFAULT_MAX_TOKENS: u32 = 512;

/// Chat completions or legacy text completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Text,
}

/// An OpenAI request, mapped.
#[derive(Debug, Clone)]
pub struct OpenAiRequest {
    /// The requested model; `None` or empty means the local model.
    pub model: Option<String>,
    pub plan: Plan,
    pub stream: bool,
    pub include_usage: bool,
}

/// A value a client may send to mean "off": absent, null, false, empty, zero.
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

/// Refuses an option that is set, naming it and why.
fn refuse_if_set(value: Option<&Value>, key: &str, what: &str) -> Result<(), ApiError> {
    if is_unset(value) {
        Ok(())
    } else {
        Err(ApiError::unsupported(key, what))
    }
}

/// Refuses the first field OpenAI does not define.
fn refuse_unknown(unknown: &std::collections::BTreeMap<String, Value>) -> Result<(), ApiError> {
    match unknown.keys().next() {
        Some(key) => Err(ApiError::invalid(
            format!("Unrecognized request argument supplied: {key}"),
            key,
        )),
        None => Ok(()),
    }
}

/// Parses a body into its wire type; a wrong type names the field it is in.
fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::invalid(
            format!("We could not parse the JSON body of your request: {e}"),
            "body",
        )
    })?;
    if !value.is_object() {
        return Err(ApiError::invalid(
            "the request body must be a JSON object",
            "body",
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let field = path
            .split(['.', '['])
            .next()
            .filter(|f| !f.is_empty() && *f != "?")
            .unwrap_or("body")
            .to_string();
        ApiError::invalid(format!("`{path}`: {}", err.into_inner()), &field)
    })
}

/// Text of a message's `content`: a string, or a list of `{type: "text", text}` parts.
fn content_text(content: Option<&Value>) -> Option<String> {
    match content {
        None | Some(Value::Null) => Some(String::new()),
        Some(Value::String(text)) => Some(text.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => text.push_str(part.get("text")?.as_str()?),
                    _ => return None,
                }
            }
            Some(text)
        }
        Some(_) => None,
    }
}

fn chat_turns(messages: &[RequestMessage]) -> Result<Vec<ChatTurn>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "`messages` must be a non-empty list",
            "messages",
        ));
    }
    let mut turns = Vec::with_capacity(messages.len());
    for (i, message) in messages.iter().enumerate() {
        let role = match message.role.as_deref().unwrap_or("") {
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
        if !is_unset(message.tool_calls.as_ref()) || !is_unset(message.function_call.as_ref()) {
            return Err(ApiError::unsupported(
                "messages",
                "there is no tool calling",
            ));
        }
        let Some(content) = content_text(message.content.as_ref()) else {
            return Err(ApiError::invalid(
                format!("messages[{i}].content must be a string or a list of text parts"),
                "messages",
            ));
        };
        turns.push(ChatTurn::new(role, content));
    }
    Ok(turns)
}

/// The fields both kinds share, as the request gave them.
struct Common<'a> {
    model: Option<String>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    max_tokens: Option<f64>,
    stop: Option<&'a Stop>,
    seed: Option<i128>,
    stream: Option<bool>,
    stream_options: Option<&'a StreamOptions>,
    user: Option<&'a str>,
    cache_salt: Option<&'a str>,
}

impl OpenAiRequest {
    /// Parses and maps a request body (see the module docs).
    pub fn parse(bytes: &[u8], kind: Kind) -> Result<Self, ApiError> {
        match kind {
            Kind::Chat => {
                let body: ChatCompletionRequest = parse_body(bytes)?;
                refuse_unknown(&body.unknown)?;
                refuse_chat_options(&body)?;
                let input = Input::Chat(chat_turns(&body.messages)?);
                let common = Common {
                    model: body.model.clone(),
                    temperature: body.temperature,
                    top_p: body.top_p,
                    presence_penalty: body.presence_penalty,
                    frequency_penalty: body.frequency_penalty,
                    max_tokens: body.max_completion_tokens.or(body.max_tokens),
                    stop: body.stop.as_ref(),
                    seed: body.seed,
                    stream: body.stream,
                    stream_options: body.stream_options.as_ref(),
                    user: body.user.as_deref(),
                    cache_salt: body.cache_salt.as_deref(),
                };
                map(input, common)
            }
            Kind::Text => {
                let body: CompletionRequest = parse_body(bytes)?;
                refuse_unknown(&body.unknown)?;
                refuse_text_options(&body)?;
                let input = match &body.prompt {
                    Some(Value::String(prompt)) if !prompt.is_empty() => Input::Raw(prompt.clone()),
                    _ => {
                        return Err(ApiError::invalid(
                            "`prompt` must be a non-empty string",
                            "prompt",
                        ));
                    }
                };
                let common = Common {
                    model: body.model.clone(),
                    temperature: body.temperature,
                    top_p: body.top_p,
                    presence_penalty: body.presence_penalty,
                    frequency_penalty: body.frequency_penalty,
                    max_tokens: body.max_tokens,
                    stop: body.stop.as_ref(),
                    seed: body.seed,
                    stream: body.stream,
                    stream_options: body.stream_options.as_ref(),
                    user: body.user.as_deref(),
                    cache_salt: body.cache_salt.as_deref(),
                };
                map(input, common)
            }
        }
    }
}

/// Refuses the chat options this server does not implement, naming them.
fn refuse_chat_options(body: &ChatCompletionRequest) -> Result<(), ApiError> {
    refuse_n(body.n)?;
    for (value, key, what) in [
        (
            &body.logprobs,
            "logprobs",
            "log-probabilities are not returned",
        ),
        (
            &body.top_logprobs,
            "top_logprobs",
            "log-probabilities are not returned",
        ),
        (&body.logit_bias, "logit_bias", "logits cannot be biased"),
        (&body.tools, "tools", "there is no tool calling"),
        (&body.functions, "functions", "there is no function calling"),
        (&body.audio, "audio", "there is no audio output"),
        (
            &body.prediction,
            "prediction",
            "there are no predicted outputs",
        ),
        (
            &body.reasoning_effort,
            "reasoning_effort",
            "the model does not reason",
        ),
        (
            &body.web_search_options,
            "web_search_options",
            "there is no web search",
        ),
    ] {
        refuse_if_set(value.as_ref(), key, what)?;
    }
    for (value, key) in [
        (&body.tool_choice, "tool_choice"),
        (&body.function_call, "function_call"),
    ] {
        match value {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == "none" || s == "auto" => {}
            Some(_) => return Err(ApiError::unsupported(key, "there is no tool calling")),
        }
    }
    match &body.response_format {
        None | Some(Value::Null) => {}
        Some(format) if format.get("type").and_then(Value::as_str) == Some("text") => {}
        Some(_) => {
            return Err(ApiError::unsupported(
                "response_format",
                "only plain text is generated",
            ));
        }
    }
    match &body.modalities {
        None | Some(Value::Null) => {}
        Some(Value::Array(m)) if m.iter().all(|v| v.as_str() == Some("text")) => {}
        Some(_) => {
            return Err(ApiError::unsupported(
                "modalities",
                "only text is generated",
            ));
        }
    }
    Ok(())
}

/// Refuses the text-completion options this server does not implement, naming them.
fn refuse_text_options(body: &CompletionRequest) -> Result<(), ApiError> {
    refuse_n(body.n)?;
    for (value, key, what) in [
        (
            &body.logprobs,
            "logprobs",
            "log-probabilities are not returned",
        ),
        (&body.logit_bias, "logit_bias", "logits cannot be biased"),
        (&body.echo, "echo", "the prompt is not echoed"),
        (&body.suffix, "suffix", "there is no insertion"),
    ] {
        refuse_if_set(value.as_ref(), key, what)?;
    }
    match body.best_of {
        None | Some(1) => Ok(()),
        Some(_) => Err(ApiError::unsupported(
            "best_of",
            "one sequence is generated",
        )),
    }
}

fn refuse_n(n: Option<u64>) -> Result<(), ApiError> {
    match n {
        None | Some(1) => Ok(()),
        Some(_) => Err(ApiError::unsupported(
            "n",
            "only one choice (n = 1) is generated",
        )),
    }
}

/// The sampling, the limits and the stream options both kinds share.
fn map(input: Input, common: Common<'_>) -> Result<OpenAiRequest, ApiError> {
    if common
        .temperature
        .is_some_and(|t| !(0.0..=2.0).contains(&t))
    {
        return Err(ApiError::invalid(
            "`temperature` must be between 0 and 2",
            "temperature",
        ));
    }
    if common.top_p.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
        return Err(ApiError::invalid(
            "`top_p` must be between 0 and 1",
            "top_p",
        ));
    }
    // Greedy when asked for temperature 0 or top_p 0; otherwise OpenAI samples.
    let greedy = common.temperature == Some(0.0) || common.top_p == Some(0.0);
    let mut sampling = SamplingParams {
        do_sample: !greedy,
        ..SamplingParams::default()
    };
    if !greedy {
        sampling.temperature = common.temperature.filter(|&t| t != 1.0).map(|t| t as f32);
        sampling.top_p = common.top_p.filter(|&p| p < 1.0).map(|p| p as f32);
    }
    let penalty = [common.presence_penalty, common.frequency_penalty]
        .into_iter()
        .flatten()
        .fold(0.0f64, f64::max);
    if penalty > 2.0 {
        return Err(ApiError::invalid(
            "penalties must be between -2 and 2",
            "presence_penalty",
        ));
    }
    sampling.repetition_penalty = (penalty > 0.0).then(|| (1.0 + penalty / 2.0) as f32);
    sampling.seed = match common.seed {
        None => None,
        Some(seed) if seed < 0 && seed >= i128::from(i64::MIN) => Some(seed as i64 as u64),
        Some(seed) => Some(
            u64::try_from(seed)
                .map_err(|_| ApiError::invalid("`seed` must be a 64-bit integer", "seed"))?,
        ),
    };
    let max_new_tokens = match common.max_tokens {
        Some(n) if n < 1.0 || n.fract() != 0.0 || n > f64::from(u32::MAX) => {
            return Err(ApiError::invalid(
                "`max_tokens` must be a positive integer",
                "max_tokens",
            ));
        }
        Some(n) => MaxNewTokens::given(n as u32),
        None => MaxNewTokens::default_of(DEFAULT_MAX_TOKENS),
    };
    let stop = match common.stop {
        None => Vec::new(),
        Some(Stop::One(stop)) => vec![stop.clone()],
        Some(Stop::Many(stops)) if stops.len() <= 4 => stops.clone(),
        Some(Stop::Many(_)) => {
            return Err(ApiError::invalid(
                "`stop` must be a string or a list of at most 4 strings",
                "stop",
            ));
        }
    };
    let user: Option<String> = common
        .user
        .filter(|u| !u.is_empty())
        .map(|u| u.chars().take(256).collect());
    // The prompt cache's scope: the client's salt, else its user, else (set by the route)
    // its API key.
    let cache_scope = match (common.cache_salt.filter(|s| !s.is_empty()), &user) {
        (Some(salt), _) => CacheScope::of("salt", salt),
        (None, Some(user)) => CacheScope::of("user", user),
        (None, None) => CacheScope::anonymous(),
    };
    Ok(OpenAiRequest {
        model: common.model,
        plan: Plan {
            input,
            sampling,
            max_new_tokens,
            stop,
            truncate: None,
            cache_hint: user,
            cache_scope,
        },
        stream: common.stream.unwrap_or(false),
        include_usage: common
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(extra: Value) -> Result<OpenAiRequest, String> {
        let mut body = serde_json::json!({"messages": [{"role": "user", "content": "Hi"}]});
        if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
            body.extend(extra);
        }
        OpenAiRequest::parse(body.to_string().as_bytes(), Kind::Chat)
            .map_err(|e| format!("{}: {}", e.param().unwrap_or(""), e.body().error.message))
    }

    #[test]
    fn temperature_zero_is_greedy_whatever_top_p_says() {
        for top_p in [0.1, 0.5, 0.99] {
            let request = chat(serde_json::json!({"temperature": 0, "top_p": top_p})).unwrap();
            assert!(!request.plan.sampling.do_sample);
            assert_eq!(request.plan.sampling.top_p, None);
            assert_eq!(request.plan.sampling.temperature, None);
        }
    }

    #[test]
    fn absent_temperature_samples_like_openai() {
        let request = chat(serde_json::json!({})).unwrap();
        assert!(request.plan.sampling.do_sample);
        assert_eq!(request.plan.sampling.temperature, None, "1 is TGI's no-op");
        assert!(request.plan.max_new_tokens.is_default);
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
        assert_eq!(request.plan.sampling.repetition_penalty, Some(1.5));
    }

    #[test]
    fn a_wrongly_typed_field_is_named_as_the_param() {
        for (extra, param) in [
            (serde_json::json!({"temperature": "hot"}), "temperature"),
            (serde_json::json!({"stop": 5}), "stop"),
            (serde_json::json!({"messages": "Hi"}), "messages"),
            (
                serde_json::json!({"stream_options": {"include_usage": 1}}),
                "stream_options",
            ),
        ] {
            let err = chat(extra.clone()).unwrap_err();
            assert!(err.starts_with(&format!("{param}: ")), "{extra}: {err}");
        }
    }
}
