//! A Responses request as a [`Plan`]:
//!
//! - `instructions` is the first (system) turn; `input` is a string (one user message) or
//!   items: messages (`role` user, system, developer or assistant; `content` a string or
//!   `input_text` / `output_text` parts), `function_call` (an earlier call) and
//!   `function_call_output` (its result), written as [`crate::tools`] writes them for the
//!   model; `reasoning` items are dropped; images, files and other items get a 400 naming
//!   them.
//! - `max_output_tokens` (absent: what fits, at most 512), `temperature` (0 is greedy),
//!   `top_p`, `seed`; `prompt_cache_key` (else `user`, else `safety_identifier`) is the
//!   prompt cache's hint and scope.
//! - `tools` (function tools: `name`, `description`, `parameters`, `strict`), `tool_choice`
//!   and `parallel_tool_calls` → the tool grammar; `text.format` (`text`, `json_object`,
//!   `json_schema`) → a JSON Schema the answer follows. Built-in tools (web search, file
//!   search, …) get a 400.
//! - `store: true` and `previous_response_id` get a 400 (see the module docs of
//!   [`super`]); `metadata`, `truncation`, `reasoning`, `include`, `service_tier` are
//!   accepted and change nothing; other fields get a 400 naming them.
//!
//! ```
//! use h2o_chat_server::front::openai::responses::request::ResponsesCall;
//! use h2o_chat_server::plan::Input;
//!
//! let call = ResponsesCall::parse(br#"{"model":"smollm2","instructions":"Be brief.","input":"Hi"}"#).unwrap();
//! let Input::Chat(turns) = &call.plan.input else { unreachable!() };
//! assert_eq!((turns[0].role.as_str(), turns[1].content.as_str()), ("system", "Hi"));
//! ```

use h2o_chat_engine::{CacheScope, ChatTurn, Constraint, SamplingParams, tool_call};
use serde_json::Value;

use crate::front::openai::error::ApiError;
use crate::front::openai::request::DEFAULT_MAX_TOKENS;
use crate::front::openai::responses::wire::ResponsesRequest;
use crate::plan::{Input, MaxNewTokens, Plan};
use crate::tools::{Tool, Tools, openai_choice, parallel_of};

/// What the `response` object repeats of the request.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    pub instructions: Option<String>,
    pub max_output_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub tool_choice: Value,
    pub tools: Vec<Value>,
    pub text: Value,
    pub parallel_tool_calls: bool,
    pub user: Option<String>,
    pub metadata: Value,
}

/// A request, mapped.
#[derive(Debug, Clone)]
pub struct ResponsesCall {
    pub model: Option<String>,
    pub plan: Plan,
    pub stream: bool,
    /// The tools whose calls are read back from the answer.
    pub tools: Option<Tools>,
    /// The request field the plan's constraint came from, for its errors.
    pub constraint_param: &'static str,
    pub echo: Echo,
}

/// The text of a message's `content`: a string, or `input_text` / `output_text` parts.
fn content_text(content: &Value, at: &str) -> Result<String, ApiError> {
    match content {
        Value::String(text) => Ok(text.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match part.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text" | "text") => text.push_str(
                        part.get("text").and_then(Value::as_str).ok_or_else(|| {
                            ApiError::invalid(
                                format!("{at}.content[{j}].text must be a string"),
                                "input",
                            )
                        })?,
                    ),
                    other => {
                        return Err(ApiError::unsupported(
                            "input",
                            &format!(
                                "{at}.content[{j}] is `{}`; only text parts are read",
                                other.unwrap_or("")
                            ),
                        ));
                    }
                }
            }
            Ok(text)
        }
        _ => Err(ApiError::invalid(
            format!("{at}.content must be a string or a list of text parts"),
            "input",
        )),
    }
}

/// `input` as turns (after `instructions`).
fn turns_of(input: Option<&Value>) -> Result<Vec<ChatTurn>, ApiError> {
    let items = match input {
        Some(Value::String(text)) => return Ok(vec![ChatTurn::new("user", text.clone())]),
        Some(Value::Array(items)) if !items.is_empty() => items,
        _ => {
            return Err(ApiError::invalid(
                "`input` must be a string or a non-empty list of items",
                "input",
            ));
        }
    };
    let mut turns: Vec<ChatTurn> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("input[{i}]");
        match item.get("type").and_then(Value::as_str) {
            None | Some("message") => {
                let role = match item.get("role").and_then(Value::as_str) {
                    Some("user") => "user",
                    Some("system" | "developer") => "system",
                    Some("assistant") => "assistant",
                    other => {
                        return Err(ApiError::invalid(
                            format!(
                                "{at}.role `{}` is not one of user, system, developer, assistant",
                                other.unwrap_or("")
                            ),
                            "input",
                        ));
                    }
                };
                let text = content_text(item.get("content").unwrap_or(&Value::Null), &at)?;
                turns.push(ChatTurn::new(role, text));
            }
            Some("function_call") => {
                let name = item.get("name").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::invalid(format!("{at}.name must be a string"), "input")
                })?;
                let arguments = item
                    .get("arguments")
                    .and_then(Value::as_str)
                    .unwrap_or("{}");
                let call = tool_call::written(name, arguments);
                // Calls of one turn go together, one per line, as the model writes them.
                match turns.last_mut() {
                    Some(last)
                        if last.role == "assistant" && last.content.ends_with("</tool_call>") =>
                    {
                        last.content.push('\n');
                        last.content.push_str(&call);
                    }
                    _ => turns.push(ChatTurn::new("assistant", call)),
                }
            }
            Some("function_call_output") => {
                let output = match item.get("output") {
                    Some(Value::String(text)) => text.clone(),
                    Some(other @ Value::Array(_)) => content_text(other, &format!("{at}.output"))?,
                    _ => {
                        return Err(ApiError::invalid(
                            format!("{at}.output must be a string"),
                            "input",
                        ));
                    }
                };
                turns.push(ChatTurn::new("user", tool_call::response(&output)));
            }
            // What a reasoning model wrote: this one does not reason.
            Some("reasoning") => {}
            Some(other) => {
                return Err(ApiError::unsupported(
                    "input",
                    &format!(
                        "{at} is a `{other}` item; messages, function_call and function_call_output are read"
                    ),
                ));
            }
        }
    }
    Ok(turns)
}

/// `tools`, `tool_choice` and `parallel_tool_calls` in the Responses shape.
fn tools_of(
    tools: Option<&[Value]>,
    choice: Option<&Value>,
    parallel: Option<&Value>,
) -> Result<Option<Tools>, ApiError> {
    let Some(choice) = openai_choice(choice, |named| named.get("name"))? else {
        return Ok(None);
    };
    let mut parsed = Vec::new();
    for (i, tool) in tools.unwrap_or(&[]).iter().enumerate() {
        match tool.get("type").and_then(Value::as_str) {
            Some("function") => {}
            other => {
                return Err(ApiError::unsupported(
                    "tools",
                    &format!(
                        "tools[{i}] is `{}`; only function tools are served",
                        other.unwrap_or("")
                    ),
                ));
            }
        }
        let name = tool.get("name").and_then(Value::as_str).ok_or_else(|| {
            ApiError::invalid(format!("tools[{i}].name must be a string"), "tools")
        })?;
        parsed.push(Tool::from_definition(name, tool, "parameters"));
    }
    Ok(Tools::new(parsed, choice, parallel_of(parallel)?)?)
}

/// `text.format` as the JSON Schema the answer follows; `None` for text.
fn format_schema(format: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(serde_json::json!({"type": "object"}))),
        Some("json_schema") => match format.get("schema") {
            Some(schema @ (Value::Object(_) | Value::Bool(_))) => Ok(Some(schema.clone())),
            None | Some(Value::Null) => Ok(Some(serde_json::json!({"type": "object"}))),
            Some(_) => Err(ApiError::invalid(
                "`text.format.schema` must be a JSON Schema",
                "text",
            )),
        },
        other => Err(ApiError::unsupported(
            "text",
            &format!(
                "`text.format` of type `{}` is not one of text, json_object, json_schema",
                other.unwrap_or("")
            ),
        )),
    }
}

impl ResponsesCall {
    /// Parses and maps a body (see the module docs).
    pub fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        let body: ResponsesRequest = serde_json::from_slice(bytes).map_err(|e| {
            ApiError::invalid(
                format!("We could not parse the JSON body of your request: {e}"),
                "body",
            )
        })?;
        if let Some(key) = body.unknown.keys().next() {
            return Err(ApiError::invalid(
                format!("Unrecognized request argument supplied: {key}"),
                key,
            ));
        }
        if body.store == Some(true) {
            return Err(ApiError::unsupported(
                "store",
                "responses are not kept; send the whole conversation as `input` (and `store: false`, or leave it out)",
            ));
        }
        if body
            .previous_response_id
            .as_deref()
            .is_some_and(|id| !id.is_empty())
        {
            return Err(ApiError::unsupported(
                "previous_response_id",
                "responses are not kept; send the whole conversation as `input`",
            ));
        }
        if body.background == Some(true) {
            return Err(ApiError::unsupported(
                "background",
                "responses run in the foreground",
            ));
        }
        let tools = tools_of(
            body.tools.as_deref(),
            body.tool_choice.as_ref(),
            body.parallel_tool_calls.as_ref(),
        )?;
        let format = body.text.as_ref().and_then(|t| t.format.clone());
        let schema = format_schema(format.as_ref())?;
        let mut turns = Vec::new();
        let mut system = body.instructions.clone().unwrap_or_default();
        if let Some(tools) = &tools {
            if !system.is_empty() {
                system.push_str("\n\n");
            }
            system.push_str(&tools.system_section());
        }
        if !system.is_empty() {
            turns.push(ChatTurn::new("system", system));
        }
        turns.extend(turns_of(body.input.as_ref())?);
        if body.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return Err(ApiError::invalid(
                "`temperature` must be between 0 and 2",
                "temperature",
            ));
        }
        if body.top_p.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
            return Err(ApiError::invalid(
                "`top_p` must be between 0 and 1",
                "top_p",
            ));
        }
        let greedy = body.temperature == Some(0.0) || body.top_p == Some(0.0);
        let mut sampling = SamplingParams {
            do_sample: !greedy,
            ..SamplingParams::default()
        };
        if !greedy {
            sampling.temperature = body.temperature.filter(|&t| t != 1.0).map(|t| t as f32);
            sampling.top_p = body.top_p.filter(|&p| p < 1.0).map(|p| p as f32);
        }
        sampling.seed = match body.seed {
            None => None,
            Some(seed) => Some(u64::try_from(seed).map_err(|_| {
                ApiError::invalid("`seed` must be a non-negative 64-bit integer", "seed")
            })?),
        };
        let max_new_tokens = match body.max_output_tokens {
            Some(n) if n < 1.0 || n.fract() != 0.0 || n > f64::from(u32::MAX) => {
                return Err(ApiError::invalid(
                    "`max_output_tokens` must be a positive integer",
                    "max_output_tokens",
                ));
            }
            Some(n) => MaxNewTokens::given(n as u32),
            None => MaxNewTokens::default_of(DEFAULT_MAX_TOKENS),
        };
        let key = [&body.prompt_cache_key, &body.user, &body.safety_identifier]
            .into_iter()
            .flatten()
            .find(|k| !k.is_empty())
            .map(|k| k.chars().take(256).collect::<String>());
        let (constraint, constraint_param) = match (&tools, &schema) {
            (Some(tools), schema) => (
                Some(Constraint::Tools(tools.tool_use(schema.as_ref()))),
                "tools",
            ),
            (None, Some(schema)) => (Some(Constraint::JsonSchema(schema.clone())), "text"),
            (None, None) => (None, "text"),
        };
        let echo = Echo {
            instructions: body.instructions.clone(),
            max_output_tokens: body.max_output_tokens.map(|n| n as u32),
            temperature: body.temperature,
            top_p: body.top_p,
            tool_choice: body
                .tool_choice
                .clone()
                .unwrap_or_else(|| Value::from("auto")),
            tools: body.tools.clone().unwrap_or_default(),
            text: serde_json::json!({"format": format.unwrap_or_else(|| serde_json::json!({"type": "text"}))}),
            parallel_tool_calls: tools.as_ref().is_some_and(|t| t.parallel),
            user: body.user.clone(),
            metadata: body
                .metadata
                .clone()
                .unwrap_or_else(|| serde_json::json!({})),
        };
        Ok(ResponsesCall {
            model: body.model,
            plan: Plan {
                input: Input::Chat(turns),
                sampling,
                max_new_tokens,
                stop: Vec::new(),
                truncate: None,
                cache_scope: key
                    .as_deref()
                    .map_or_else(CacheScope::anonymous, |k| CacheScope::of("user", k)),
                cache_hint: key,
                constraint,
                top_tokens: 0,
                prompt_logprobs: false,
            },
            stream: body.stream.unwrap_or(false),
            tools,
            constraint_param,
            echo,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<ResponsesCall, String> {
        ResponsesCall::parse(body.to_string().as_bytes())
            .map_err(|e| format!("{}: {}", e.param().unwrap_or(""), e.message()))
    }

    #[test]
    fn items_calls_and_outputs_become_turns() {
        let call = parse(serde_json::json!({
            "model": "smollm2",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"},
                {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": "{\"city\": \"Rome\"}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "18 C"},
                {"type": "reasoning", "summary": []}
            ],
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "text": {"format": {"type": "json_object"}}
        }))
        .unwrap();
        let Input::Chat(turns) = &call.plan.input else {
            panic!()
        };
        assert_eq!(turns[0].role, "system");
        assert_eq!(turns[2].content.matches("<tool_call>").count(), 2);
        assert_eq!(turns[3].content, tool_call::response("18 C"));
        assert_eq!(turns.len(), 4);
        assert_eq!(call.constraint_param, "tools");
    }

    #[test]
    fn what_this_server_cannot_do_is_refused_by_name() {
        for (body, wanted) in [
            (serde_json::json!({"input": "Hi", "store": true}), "store"),
            (
                serde_json::json!({"input": "Hi", "previous_response_id": "resp_1"}),
                "previous_response_id",
            ),
            (
                serde_json::json!({"input": [{"type": "input_image", "image_url": "x"}]}),
                "input_image",
            ),
            (
                serde_json::json!({"input": "Hi", "tools": [{"type": "web_search"}]}),
                "web_search",
            ),
            (
                serde_json::json!({"input": "Hi", "text": {"format": {"type": "xml"}}}),
                "xml",
            ),
            (
                serde_json::json!({"input": "Hi", "frobnicate": 1}),
                "frobnicate",
            ),
            (serde_json::json!({"input": []}), "input"),
        ] {
            let err = parse(body.clone()).unwrap_err();
            assert!(err.contains(wanted), "{body}: {err}");
        }
        assert!(
            parse(serde_json::json!({"input": "Hi", "store": false, "metadata": {"a": "b"}}))
                .is_ok()
        );
    }
}
