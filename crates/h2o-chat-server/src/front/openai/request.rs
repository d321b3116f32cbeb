//! An OpenAI request ([`wire`](super::wire)) as a [`Plan`]:
//!
//! - `temperature` 0 means greedy decoding, whatever `top_p` says; absent means OpenAI's
//!   default, sampling at temperature 1. `top_p` 1 means no nucleus cut, 0 greedy.
//! - `max_tokens` / `max_completion_tokens` → the answer's limit; absent: what fits after
//!   the prompt, at most 512.
//! - `presence_penalty` / `frequency_penalty` → a repetition penalty `1 + max(p, f) / 2`
//!   when positive (TGI has one multiplicative penalty; OpenAI's 0–2 maps onto 1–2).
//! - `stop` (a string or up to 4), `seed`; `user` is the prompt cache's hint and, with
//!   `cache_salt`, its scope.
//! - vLLM's and llama.cpp's `top_k`, `repetition_penalty` and `typical_p` → TGI's warpers.
//! - `response_format` (`text`, `json_object`, `json_schema`, TGI's `{"type": "json",
//!   "value"}`) and `tools` / `tool_choice` / `parallel_tool_calls` → a grammar the engine
//!   enforces ([`crate::tools`]); tool calls and results in the history are rendered for
//!   the model.
//! - `logprobs` / `top_logprobs` (chat, at most 20), `logprobs` (completions, at most 5) →
//!   alternatives per token; `n` (at most [`MAX_CHOICES`]) → that many runs.
//! - Options this server does not implement (`logit_bias`, `min_p`, `echo`, `suffix`,
//!   `functions`, audio, …) are refused with a 400 that names them, and so is any field
//!   OpenAI does not define: nothing is silently ignored but `metadata`, `store` and
//!   `service_tier`.
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

use h2o_chat_engine::{CacheScope, ChatTurn, Constraint, SamplingParams, tool_call};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::front::openai::error::ApiError;
use crate::front::openai::logprobs::Asked;
use crate::front::openai::wire::{
    ChatCompletionRequest, CompletionRequest, RequestMessage, Stop, StreamOptions,
};
use crate::plan::{Input, MaxNewTokens, Plan};
use crate::tools::Tools;

/// `max_tokens` when the request gives none (and the room after the prompt allows).
pub const DEFAULT_MAX_TOKENS: u32 = 512;
/// The most choices (`n`) one request may ask for.
pub const MAX_CHOICES: u32 = 8;
/// OpenAI's cap on chat `top_logprobs`, and on completions' `logprobs`.
pub const MAX_TOP_LOGPROBS: u8 = 20;
pub const MAX_TEXT_LOGPROBS: u8 = 5;

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
    /// Choices to generate.
    pub n: u32,
    pub logprobs: Asked,
    /// The tools the answer may call (its calls are read back when set).
    pub tools: Option<Tools>,
    /// The request field the plan's constraint came from, for its errors.
    pub constraint_param: &'static str,
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

/// The request's messages as turns for the model: tool calls and results written as the
/// model reads them, the tools' system section first.
fn chat_turns(
    messages: &[RequestMessage],
    tools: Option<&Tools>,
) -> Result<Vec<ChatTurn>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "`messages` must be a non-empty list",
            "messages",
        ));
    }
    let mut turns = Vec::with_capacity(messages.len() + 1);
    for (i, message) in messages.iter().enumerate() {
        let Some(role) = message.role.as_deref() else {
            return Err(ApiError::invalid(
                format!(
                    "messages[{i}] has no `role` (one of system, developer, user, assistant, tool)"
                ),
                "messages",
            ));
        };
        let role = match role {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" => "tool",
            other => {
                return Err(ApiError::invalid(
                    format!(
                        "messages[{i}].role `{other}` is not supported (one of system, developer, user, assistant, tool)"
                    ),
                    "messages",
                ));
            }
        };
        if !is_unset(message.function_call.as_ref()) {
            return Err(ApiError::unsupported(
                "messages",
                "`function_call` in a message is the deprecated form: send `tool_calls`",
            ));
        }
        let Some(content) = content_text(message.content.as_ref()) else {
            return Err(ApiError::invalid(
                format!("messages[{i}].content must be a string or a list of text parts"),
                "messages",
            ));
        };
        match role {
            "tool" => turns.push(ChatTurn::new("user", tool_call::response(&content))),
            "assistant" if !is_unset(message.tool_calls.as_ref()) => {
                let calls = earlier_calls(i, message.tool_calls.as_ref())?;
                let mut text = content;
                for call in calls {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&call);
                }
                turns.push(ChatTurn::new("assistant", text));
            }
            _ => turns.push(ChatTurn::new(role, content)),
        }
    }
    if let Some(tools) = tools {
        let section = tools.system_section();
        match turns.first_mut() {
            Some(first) if first.role == "system" => {
                first.content = format!("{}\n\n{section}", first.content);
            }
            _ => turns.insert(0, ChatTurn::new("system", section)),
        }
    }
    Ok(turns)
}

/// An assistant message's `tool_calls`, written as the model writes calls.
fn earlier_calls(i: usize, calls: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let invalid = || {
        ApiError::invalid(
            format!(
                "messages[{i}].tool_calls must be a list of {{\"id\", \"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}"
            ),
            "messages",
        )
    };
    let Some(Value::Array(calls)) = calls else {
        return Err(invalid());
    };
    calls
        .iter()
        .map(|call| {
            let function = call.get("function").ok_or_else(invalid)?;
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(invalid)?;
            let arguments = match function.get("arguments") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(text)) => text.clone(),
                Some(object @ Value::Object(_)) => object.to_string(),
                Some(_) => return Err(invalid()),
            };
            Ok(tool_call::written(name, &arguments))
        })
        .collect()
}

/// `response_format` as the JSON Schema the answer must follow; `None` for text.
fn response_schema(format: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    let invalid = |what: &str| {
        ApiError::invalid(
            format!(
                "`response_format` {what}: give {{\"type\": \"text\" | \"json_object\" | \"json_schema\", …}}"
            ),
            "response_format",
        )
    };
    let any_object = || serde_json::json!({"type": "object"});
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(
            format.get("value").cloned().unwrap_or_else(any_object),
        )),
        Some("json_schema") => {
            let Some(config) = format.get("json_schema").or_else(|| format.get("value")) else {
                return Err(invalid("of type json_schema needs `json_schema`"));
            };
            match config.get("schema") {
                None | Some(Value::Null) => Ok(Some(any_object())),
                Some(schema @ (Value::Object(_) | Value::Bool(_))) => Ok(Some(schema.clone())),
                Some(_) => Err(invalid(
                    "has a `json_schema.schema` that is not a JSON Schema",
                )),
            }
        }
        // TGI's Messages API shape.
        Some("json") => match format.get("value") {
            Some(Value::String(text)) => serde_json::from_str(text)
                .map(Some)
                .map_err(|_| invalid("has a `value` string that is not JSON")),
            Some(schema @ (Value::Object(_) | Value::Bool(_))) => Ok(Some(schema.clone())),
            _ => Err(invalid("of type json needs a schema in `value`")),
        },
        Some(other) => Err(ApiError::unsupported(
            "response_format",
            &format!("type `{other}` is not one of text, json_object, json_schema"),
        )),
        None => Err(invalid("has no `type`")),
    }
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
    n: Option<u64>,
    extra: Extra,
}

/// vLLM's and llama.cpp's sampling fields beside OpenAI's.
struct Extra {
    top_k: Option<f64>,
    repetition_penalty: Option<f64>,
    typical_p: Option<f64>,
    min_p: Option<f64>,
}

impl OpenAiRequest {
    /// Parses and maps a request body (see the module docs).
    pub fn parse(bytes: &[u8], kind: Kind) -> Result<Self, ApiError> {
        match kind {
            Kind::Chat => {
                let body: ChatCompletionRequest = parse_body(bytes)?;
                refuse_unknown(&body.unknown)?;
                refuse_chat_options(&body)?;
                let tools = Tools::parse(
                    body.tools.as_ref(),
                    body.tool_choice.as_ref(),
                    body.parallel_tool_calls.as_ref(),
                )
                .map_err(ApiError::from)?;
                let schema = response_schema(body.response_format.as_ref())?;
                let input = Input::Chat(chat_turns(&body.messages, tools.as_ref())?);
                let logprobs = chat_logprobs(body.logprobs.as_ref(), body.top_logprobs.as_ref())?;
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
                    n: body.n,
                    extra: Extra {
                        top_k: body.top_k,
                        repetition_penalty: body.repetition_penalty,
                        typical_p: body.typical_p,
                        min_p: body.min_p,
                    },
                };
                let mut request = map(input, common)?;
                request.logprobs = logprobs;
                request.plan.top_tokens = logprobs.top;
                match (&tools, schema) {
                    (Some(tools), schema) => {
                        request.plan.constraint =
                            Some(Constraint::Tools(tools.tool_use(schema.as_ref())));
                        request.constraint_param = "tools";
                    }
                    (None, Some(schema)) => {
                        request.plan.constraint = Some(Constraint::JsonSchema(schema));
                    }
                    (None, None) => {}
                }
                request.tools = tools;
                Ok(request)
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
                let logprobs = text_logprobs(body.logprobs.as_ref())?;
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
                    n: body.n,
                    extra: Extra {
                        top_k: body.top_k,
                        repetition_penalty: body.repetition_penalty,
                        typical_p: body.typical_p,
                        min_p: body.min_p,
                    },
                };
                let mut request = map(input, common)?;
                request.logprobs = logprobs;
                request.plan.top_tokens = logprobs.top;
                Ok(request)
            }
        }
    }
}

/// Chat's `logprobs` (a boolean) and `top_logprobs` (0–20, only with `logprobs`).
fn chat_logprobs(on: Option<&Value>, top: Option<&Value>) -> Result<Asked, ApiError> {
    let on = match on {
        None | Some(Value::Null) => false,
        Some(Value::Bool(on)) => *on,
        Some(_) => {
            return Err(ApiError::invalid(
                "`logprobs` must be a boolean",
                "logprobs",
            ));
        }
    };
    let top = match top {
        None | Some(Value::Null) => 0,
        Some(n) => match n.as_u64() {
            Some(n) if n <= u64::from(MAX_TOP_LOGPROBS) => n as u8,
            _ => {
                return Err(ApiError::invalid(
                    format!("`top_logprobs` must be an integer from 0 to {MAX_TOP_LOGPROBS}"),
                    "top_logprobs",
                ));
            }
        },
    };
    if top > 0 && !on {
        return Err(ApiError::invalid(
            "`logprobs` must be true when `top_logprobs` is given",
            "top_logprobs",
        ));
    }
    Ok(Asked { on, top })
}

/// Completions' `logprobs`: how many alternatives (0–5); absent or null is off.
fn text_logprobs(value: Option<&Value>) -> Result<Asked, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(Asked::default()),
        Some(n) => match n.as_u64() {
            Some(n) if n <= u64::from(MAX_TEXT_LOGPROBS) => Ok(Asked {
                on: true,
                top: n as u8,
            }),
            _ => Err(ApiError::invalid(
                format!("`logprobs` must be an integer from 0 to {MAX_TEXT_LOGPROBS}"),
                "logprobs",
            )),
        },
    }
}

/// Refuses the chat options this server does not implement, naming them.
fn refuse_chat_options(body: &ChatCompletionRequest) -> Result<(), ApiError> {
    for (value, key, what) in [
        (&body.logit_bias, "logit_bias", "logits cannot be biased"),
        (
            &body.functions,
            "functions",
            "`functions` is the deprecated form: send `tools`",
        ),
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
    match &body.function_call {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "none" || s == "auto" => {}
        Some(_) => {
            return Err(ApiError::unsupported(
                "function_call",
                "`function_call` is the deprecated form: send `tool_choice`",
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
    for (value, key, what) in [
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
            "one sequence per choice is generated (ask for `n` choices instead)",
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
    let n = match common.n {
        None => 1,
        Some(n) if (1..=u64::from(MAX_CHOICES)).contains(&n) => n as u32,
        Some(_) => {
            return Err(ApiError::invalid(
                format!("`n` must be from 1 to {MAX_CHOICES}"),
                "n",
            ));
        }
    };
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
    let extra = &common.extra;
    if extra.min_p.is_some_and(|p| p != 0.0) {
        return Err(ApiError::unsupported(
            "min_p",
            "the sampler has TGI's warpers (top_k, top_p, typical_p), not min-p",
        ));
    }
    if !greedy {
        sampling.top_k = match extra.top_k {
            None => None,
            // vLLM's and llama.cpp's "off".
            Some(k) if k == -1.0 || k == 0.0 => None,
            Some(k) if k >= 1.0 && k.fract() == 0.0 && k <= f64::from(u32::MAX) => Some(k as u32),
            Some(_) => {
                return Err(ApiError::invalid(
                    "`top_k` must be a positive integer (or -1 for none)",
                    "top_k",
                ));
            }
        };
        sampling.typical_p = match extra.typical_p {
            None => None,
            Some(1.0) => None,
            Some(p) if p > 0.0 && p < 1.0 => Some(p as f32),
            Some(_) => {
                return Err(ApiError::invalid(
                    "`typical_p` must be > 0 and <= 1",
                    "typical_p",
                ));
            }
        };
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
    sampling.repetition_penalty = match extra.repetition_penalty {
        Some(p) if p <= 0.0 || !p.is_finite() => {
            return Err(ApiError::invalid(
                "`repetition_penalty` must be strictly positive",
                "repetition_penalty",
            ));
        }
        Some(p) => (p != 1.0).then_some(p as f32),
        None => (penalty > 0.0).then(|| (1.0 + penalty / 2.0) as f32),
    };
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
            constraint: None,
            top_tokens: 0,
            prompt_logprobs: false,
        },
        stream: common.stream.unwrap_or(false),
        include_usage: common
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        n,
        logprobs: Asked::default(),
        tools: None,
        constraint_param: "response_format",
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
    fn unsupported_and_invalid_options_are_refused_by_name() {
        for (extra, name) in [
            (serde_json::json!({"top_logprobs": 2}), "top_logprobs"),
            (
                serde_json::json!({"logprobs": true, "top_logprobs": 21}),
                "top_logprobs",
            ),
            (
                serde_json::json!({"tools": [{"type": "function"}]}),
                "tools",
            ),
            (
                serde_json::json!({"response_format": {"type": "xml"}}),
                "response_format",
            ),
            (serde_json::json!({"n": 9}), "`n`"),
            (serde_json::json!({"n": 0}), "`n`"),
            (serde_json::json!({"min_p": 0.1}), "min_p"),
            (serde_json::json!({"top_k": 2.5, "temperature": 1}), "top_k"),
            (
                serde_json::json!({"repetition_penalty": 0}),
                "repetition_penalty",
            ),
            (serde_json::json!({"logit_bias": {"5": 1}}), "logit_bias"),
            (
                serde_json::json!({"functions": [{"name": "f"}]}),
                "functions",
            ),
            (serde_json::json!({"frobnicate": 1}), "frobnicate"),
        ] {
            let err = chat(extra.clone()).unwrap_err();
            assert!(err.contains(name), "{extra}: {err}");
        }
    }

    #[test]
    fn defaults_and_empty_values_of_options_pass() {
        let request = chat(serde_json::json!({
            "logprobs": false, "tools": [], "response_format": {"type": "text"},
            "n": 1, "tool_choice": "none", "metadata": {"a": "b"}, "store": false,
            "min_p": 0, "top_k": -1
        }))
        .unwrap();
        assert!(request.plan.constraint.is_none());
        assert!(request.tools.is_none());
    }

    #[test]
    fn structured_output_tools_logprobs_and_choices_map_to_the_plan() {
        let request =
            chat(serde_json::json!({"response_format": {"type": "json_object"}})).unwrap();
        assert_eq!(
            request.plan.constraint,
            Some(Constraint::JsonSchema(
                serde_json::json!({"type": "object"})
            ))
        );
        let schema =
            serde_json::json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        for format in [
            serde_json::json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": true}}),
            serde_json::json!({"type": "json", "value": schema}),
        ] {
            let request = chat(serde_json::json!({"response_format": format})).unwrap();
            assert_eq!(
                request.plan.constraint,
                Some(Constraint::JsonSchema(schema.clone()))
            );
        }
        let request = chat(serde_json::json!({
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": schema}}],
            "tool_choice": "required",
            "logprobs": true, "top_logprobs": 3, "n": 2, "top_k": 40, "temperature": 0.7
        }))
        .unwrap();
        assert!(
            matches!(request.plan.constraint, Some(Constraint::Tools(ref t)) if t.tools[0]["function"]["name"] == "get_weather")
        );
        assert_eq!(request.constraint_param, "tools");
        assert_eq!((request.n, request.plan.top_tokens), (2, 3));
        assert_eq!(request.plan.sampling.top_k, Some(40));
        let Input::Chat(turns) = &request.plan.input else {
            panic!()
        };
        assert_eq!(turns[0].role, "system");
        assert!(turns[0].content.contains("<tools>"));
    }

    #[test]
    fn tool_calls_and_results_in_the_history_are_written_for_the_model() {
        let request = chat(serde_json::json!({"messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}
        ]}))
        .unwrap();
        let Input::Chat(turns) = &request.plan.input else {
            panic!()
        };
        assert_eq!(turns[1].role, "assistant");
        assert_eq!(
            turns[1].content,
            tool_call::written("get_weather", r#"{"city": "Paris"}"#)
        );
        assert_eq!(turns[2].role, "user");
        assert!(turns[2].content.contains("<tool_response>\n18 C, sunny"));
    }

    #[test]
    fn a_message_without_a_role_is_named() {
        let err = chat(serde_json::json!({"messages": [{"content": "Hi"}]})).unwrap_err();
        assert!(err.contains("messages[0] has no `role`"), "{err}");
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
