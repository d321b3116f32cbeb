//! An Anthropic Messages request as a [`Plan`]:
//!
//! - `system` (a string or text blocks) is the first turn; `messages` are user and assistant
//!   turns whose content is a string or blocks: `text`; `tool_use` (an earlier call) and
//!   `tool_result` (its result, string or text blocks; `is_error` says so) written as
//!   [`crate::tools`] writes them for the model; `thinking` blocks a client sends back are
//!   dropped (this model does not think); `image`, `document` and any other block get a 400
//!   naming it. `cache_control` marks are accepted and need nothing: the prompt cache is
//!   automatic.
//! - `max_tokens` is required; `stop_sequences` (at most the server's stop limit),
//!   `temperature` (0 is greedy; absent is Anthropic's default 1, sampling), `top_p`,
//!   `top_k`; `metadata.user_id` is the prompt cache's hint and scope.
//! - `tools` (`name`, `description`, `input_schema`) and `tool_choice` (`auto`, `any`,
//!   `{"type": "tool", "name"}`, `none`) → the tool grammar; server tools (web search, …)
//!   get a 400. Parallel calls are off unless `disable_parallel_tool_use` is `false`.
//! - `thinking` other than `{"type": "disabled"}` gets a 400; so does any field Anthropic does
//!   not define, as Anthropic answers "Extra inputs are not permitted".
//!
//! ```
//! use h2o_chat_server::front::anthropic::request::AnthropicRequest;
//! use h2o_chat_server::plan::Input;
//!
//! let body = br#"{"model":"smollm2","max_tokens":64,"system":"Be brief.","messages":[{"role":"user","content":"Hi"}]}"#;
//! let request = AnthropicRequest::parse(body, true).unwrap();
//! let Input::Chat(turns) = &request.plan.input else { unreachable!() };
//! assert_eq!((turns[0].role.as_str(), turns[1].content.as_str()), ("system", "Hi"));
//! ```

use h2o_chat_engine::{CacheScope, ChatTurn, Constraint, SamplingParams, tool_call};
use serde_json::Value;

use crate::front::anthropic::error::AnthropicError;
use crate::front::anthropic::wire::MessagesRequest;
use crate::plan::{Input, MaxNewTokens, Plan};
use crate::tools::{Tool, ToolChoice, Tools};

/// A request, mapped.
#[derive(Debug, Clone)]
pub struct AnthropicRequest {
    pub model: Option<String>,
    pub plan: Plan,
    pub stream: bool,
    /// The tools whose calls are read back from the answer.
    pub tools: Option<Tools>,
}

/// A block's text, or the 400 that names what it is instead.
fn text_of(block: &Value, at: &str) -> Result<String, AnthropicError> {
    block
        .get("text")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| AnthropicError::invalid(format!("{at}.text: a string is required")))
}

/// A string or a list of text blocks, joined.
fn text_or_blocks(value: &Value, at: &str) -> Result<String, AnthropicError> {
    match value {
        Value::Null => Ok(String::new()),
        Value::String(text) => Ok(text.clone()),
        Value::Array(blocks) => {
            let mut parts = Vec::with_capacity(blocks.len());
            for (i, block) in blocks.iter().enumerate() {
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => parts.push(text_of(block, &format!("{at}.{i}"))?),
                    other => {
                        return Err(AnthropicError::invalid(format!(
                            "{at}.{i}.type: `{}` is not supported here (text only)",
                            other.unwrap_or("")
                        )));
                    }
                }
            }
            Ok(parts.join("\n"))
        }
        _ => Err(AnthropicError::invalid(format!(
            "{at}: a string or a list of text blocks is required"
        ))),
    }
}

/// One message's blocks as the model reads them.
fn turn_of(i: usize, role: &str, content: &Value) -> Result<Vec<ChatTurn>, AnthropicError> {
    let at = format!("messages.{i}.content");
    let blocks = match content {
        Value::String(text) => return Ok(vec![ChatTurn::new(role, text.clone())]),
        Value::Array(blocks) => blocks,
        _ => {
            return Err(AnthropicError::invalid(format!(
                "{at}: a string or a list of content blocks is required"
            )));
        }
    };
    let mut turns: Vec<ChatTurn> = Vec::new();
    let mut text: Vec<String> = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let here = format!("{at}.{j}");
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push(text_of(block, &here)?),
            Some("tool_use") if role == "assistant" => {
                let name = block.get("name").and_then(Value::as_str).ok_or_else(|| {
                    AnthropicError::invalid(format!("{here}.name: a string is required"))
                })?;
                let input = block.get("input").cloned().unwrap_or(Value::Null);
                text.push(tool_call::written(name, &input.to_string()));
            }
            Some("tool_result") if role == "user" => {
                let mut result = text_or_blocks(
                    block.get("content").unwrap_or(&Value::Null),
                    &format!("{here}.content"),
                )?;
                if block.get("is_error").and_then(Value::as_bool) == Some(true) {
                    result = format!("Error: {result}");
                }
                text.push(tool_call::response(&result));
            }
            // A client sending back what a thinking model wrote: this one does not think.
            Some("thinking" | "redacted_thinking") => {}
            Some(other) => {
                return Err(AnthropicError::invalid(format!(
                    "{here}.type: `{other}` blocks are not supported by this server (text, tool_use, tool_result)"
                )));
            }
            None => {
                return Err(AnthropicError::invalid(format!(
                    "{here}.type: a block type is required"
                )));
            }
        }
    }
    turns.push(ChatTurn::new(role, text.join("\n")));
    Ok(turns)
}

/// `tools` and `tool_choice` in Anthropic's shape.
fn tools_of(
    tools: Option<&[Value]>,
    choice: Option<&Value>,
) -> Result<Option<Tools>, AnthropicError> {
    let invalid_choice = || {
        AnthropicError::invalid(
            "tool_choice: one of {\"type\": \"auto\" | \"any\" | \"none\"} or {\"type\": \"tool\", \"name\": …}",
        )
    };
    let (choice, parallel) = match choice {
        None | Some(Value::Null) => (ToolChoice::Auto, false),
        Some(Value::Object(map)) => {
            let parallel = map
                .get("disable_parallel_tool_use")
                .and_then(Value::as_bool)
                == Some(false);
            let choice = match map.get("type").and_then(Value::as_str) {
                Some("auto") => ToolChoice::Auto,
                Some("any") => ToolChoice::Required,
                Some("none") => return Ok(None),
                Some("tool") => ToolChoice::Named(
                    map.get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(invalid_choice)?
                        .to_string(),
                ),
                _ => return Err(invalid_choice()),
            };
            (choice, parallel)
        }
        Some(_) => return Err(invalid_choice()),
    };
    let mut parsed = Vec::new();
    for (i, tool) in tools.unwrap_or(&[]).iter().enumerate() {
        if let Some(kind) = tool.get("type").and_then(Value::as_str)
            && kind != "custom"
        {
            return Err(AnthropicError::invalid(format!(
                "tools.{i}.type: `{kind}` (a server tool) is not supported by this server; define client tools with name and input_schema"
            )));
        }
        let name = tool.get("name").and_then(Value::as_str).ok_or_else(|| {
            AnthropicError::invalid(format!("tools.{i}.name: a string is required"))
        })?;
        parsed.push(Tool::from_definition(name, tool, "input_schema"));
    }
    Tools::new(parsed, choice, parallel).map_err(AnthropicError::from)
}

impl AnthropicRequest {
    /// Parses and maps a body (see the module docs). `generating`: `max_tokens` is
    /// required (not for `count_tokens`).
    pub fn parse(bytes: &[u8], generating: bool) -> Result<Self, AnthropicError> {
        let body: MessagesRequest = serde_json::from_slice(bytes).map_err(|e| {
            AnthropicError::invalid(format!("the body is not a valid request: {e}"))
        })?;
        if let Some(key) = body.unknown.keys().next() {
            return Err(AnthropicError::invalid(format!(
                "{key}: Extra inputs are not permitted"
            )));
        }
        match &body.thinking {
            None | Some(Value::Null) => {}
            Some(thinking) if thinking.get("type").and_then(Value::as_str) == Some("disabled") => {}
            Some(_) => {
                return Err(AnthropicError::invalid(
                    "thinking: this model does not think; send {\"type\": \"disabled\"} or leave it out",
                ));
            }
        }
        let max_tokens = match (body.max_tokens, generating) {
            (Some(n), _) if n >= 1 && n <= u64::from(u32::MAX) => MaxNewTokens::given(n as u32),
            (None, false) => MaxNewTokens::default_of(1),
            _ => {
                return Err(AnthropicError::invalid(
                    "max_tokens: a positive integer is required",
                ));
            }
        };
        if body.messages.is_empty() {
            return Err(AnthropicError::invalid(
                "messages: at least one message is required",
            ));
        }
        let tools = tools_of(body.tools.as_deref(), body.tool_choice.as_ref())?;
        let mut turns = Vec::with_capacity(body.messages.len() + 1);
        let system = text_or_blocks(body.system.as_ref().unwrap_or(&Value::Null), "system")?;
        let system = match &tools {
            Some(tools) if system.is_empty() => tools.system_section(),
            Some(tools) => format!("{system}\n\n{}", tools.system_section()),
            None => system,
        };
        if !system.is_empty() {
            turns.push(ChatTurn::new("system", system));
        }
        for (i, message) in body.messages.iter().enumerate() {
            let role = match message.role.as_deref() {
                Some(role @ ("user" | "assistant")) => role,
                Some(other) => {
                    return Err(AnthropicError::invalid(format!(
                        "messages.{i}.role: `{other}` is not one of user, assistant"
                    )));
                }
                None => {
                    return Err(AnthropicError::invalid(format!(
                        "messages.{i}.role: user or assistant is required"
                    )));
                }
            };
            turns.extend(turn_of(i, role, &message.content)?);
        }
        if body.temperature.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
            return Err(AnthropicError::invalid("temperature: must be from 0 to 1"));
        }
        if body.top_p.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
            return Err(AnthropicError::invalid("top_p: must be from 0 to 1"));
        }
        let greedy = body.temperature == Some(0.0);
        let mut sampling = SamplingParams {
            do_sample: !greedy,
            ..SamplingParams::default()
        };
        if !greedy {
            sampling.temperature = body.temperature.filter(|&t| t != 1.0).map(|t| t as f32);
            sampling.top_p = body.top_p.filter(|&p| p > 0.0 && p < 1.0).map(|p| p as f32);
            sampling.top_k = body
                .top_k
                .filter(|&k| k > 0)
                .map(|k| k.min(u64::from(u32::MAX)) as u32);
        }
        let user = body
            .metadata
            .as_ref()
            .and_then(|m| m.user_id.clone())
            .filter(|u| !u.is_empty())
            .map(|u| u.chars().take(256).collect::<String>());
        let constraint = tools.as_ref().map(|t| Constraint::Tools(t.tool_use(None)));
        Ok(AnthropicRequest {
            model: body.model,
            plan: Plan {
                input: Input::Chat(turns),
                sampling,
                max_new_tokens: max_tokens,
                stop: body.stop_sequences.unwrap_or_default(),
                truncate: None,
                cache_scope: user
                    .as_deref()
                    .map_or_else(CacheScope::anonymous, |u| CacheScope::of("user", u)),
                cache_hint: user,
                constraint,
                top_tokens: 0,
                prompt_logprobs: false,
            },
            stream: body.stream.unwrap_or(false),
            tools,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<AnthropicRequest, String> {
        AnthropicRequest::parse(body.to_string().as_bytes(), true)
            .map_err(|e| e.body().error.message.clone())
    }

    fn base() -> Value {
        serde_json::json!({"model": "smollm2", "max_tokens": 32, "messages": [{"role": "user", "content": "Hi"}]})
    }

    #[test]
    fn blocks_tools_and_results_become_turns() {
        let mut body = base();
        body["system"] = serde_json::json!([{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]);
        body["messages"] = serde_json::json!([
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Let me look."}, {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18 C"}]}]}
        ]);
        body["tools"] = serde_json::json!([{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
        body["tool_choice"] = serde_json::json!({"type": "any"});
        let request = parse(body).unwrap();
        let Input::Chat(turns) = &request.plan.input else {
            panic!()
        };
        assert!(
            turns[0].content.starts_with("Be brief.\n\n") && turns[0].content.contains("<tools>")
        );
        assert_eq!(
            turns[2].content,
            format!(
                "Let me look.\n{}",
                tool_call::written("get_weather", r#"{"city":"Paris"}"#)
            )
        );
        assert_eq!(turns[3].content, tool_call::response("18 C"));
        assert_eq!(request.tools.unwrap().choice, ToolChoice::Required);
        assert!(matches!(
            request.plan.constraint,
            Some(Constraint::Tools(_))
        ));
    }

    #[test]
    fn what_this_server_cannot_do_is_refused_by_name() {
        for (patch, wanted) in [
            (serde_json::json!({"max_tokens": null}), "max_tokens"),
            (
                serde_json::json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}),
                "`image`",
            ),
            (
                serde_json::json!({"messages": [{"role": "system", "content": "x"}]}),
                "messages.0.role",
            ),
            (
                serde_json::json!({"thinking": {"type": "enabled", "budget_tokens": 1024}}),
                "thinking",
            ),
            (
                serde_json::json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
                "server tool",
            ),
            (
                serde_json::json!({"frobnicate": 1}),
                "frobnicate: Extra inputs",
            ),
            (serde_json::json!({"temperature": 1.5}), "temperature"),
        ] {
            let mut body = base();
            body.as_object_mut()
                .unwrap()
                .extend(patch.as_object().unwrap().clone());
            let err = parse(body).unwrap_err();
            assert!(err.contains(wanted), "{wanted}: {err}");
        }
    }
}
