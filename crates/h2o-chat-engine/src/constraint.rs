//! What an answer must follow, in no protocol's terms: the [`Constraint`] a front builds
//! from TGI's `grammar`, OpenAI's `response_format` or its `tools`, and an engine enforces
//! token by token (the local model with a grammar over its vocabulary; a relay by passing
//! it to a server that can).
//!
//! Tool calls ([`ToolUse`]) are written in one documented format whoever produces them
//! ([`tool_call`]): the local model writes it under the grammar; a relay to a server that
//! calls tools natively writes the calls it receives in it, so a front reads every answer
//! the same way.
//!
//! ```
//! use h2o_chat_engine::Constraint;
//!
//! let any_object = Constraint::JsonSchema(serde_json::json!({"type": "object"}));
//! assert_eq!(any_object.kind(), "json");
//! assert_ne!(any_object.key(), Constraint::Regex("[0-9]+".into()).key());
//! ```

use serde_json::Value;

/// See the module docs.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// JSON valid against a JSON Schema (`{"type": "object"}` for any object).
    JsonSchema(Value),
    /// Text the regular expression matches in full.
    Regex(String),
    /// Tools the answer may (or must) call.
    Tools(ToolUse),
}

/// A request's tools, in the two forms its engines take: the grammar of an answer in the
/// [`tool_call`] format (with the system section that shows the model its tools), for an
/// engine that enforces it itself, and the tools as OpenAI lists them, for a relay to a
/// server that calls tools natively.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolUse {
    /// The answer's grammar, in llguidance's Lark syntax.
    pub grammar: String,
    /// The system section the prompt carries for a model without tool syntax of its own.
    /// A relay that passes the tools natively takes it out of the messages it sends.
    pub section: String,
    /// OpenAI's `tools`: `{"type": "function", "function": {name, description, parameters}}`.
    pub tools: Vec<Value>,
    /// OpenAI's `tool_choice`: `"auto"`, `"required"` or a named function.
    pub choice: Value,
    /// OpenAI's `parallel_tool_calls`.
    pub parallel: bool,
    /// The JSON Schema an answer in words must follow instead (`response_format` beside
    /// `auto`), if any.
    pub text_schema: Option<Value>,
}

impl ToolUse {
    /// `turns` without the generic section the front appended to the system message (for
    /// an engine or an upstream that shows the model its tools its own way); a system
    /// message that was only the section is left out.
    pub fn without_section(&self, turns: &[crate::ChatTurn]) -> Vec<crate::ChatTurn> {
        turns
            .iter()
            .filter_map(|turn| {
                if turn.role != "system" {
                    return Some(turn.clone());
                }
                if turn.content == self.section {
                    return None;
                }
                let content = turn
                    .content
                    .strip_suffix(&self.section)
                    .and_then(|rest| rest.strip_suffix("\n\n"))
                    .unwrap_or(&turn.content);
                Some(crate::ChatTurn::new("system", content))
            })
            .collect()
    }
}

/// The format of tool calls in an answer (the Hermes and Qwen models' own):
///
/// ```text
/// <tool_call>
/// {"name": "get_weather", "arguments": {"city": "Paris"}}
/// </tool_call>
/// ```
///
/// several calls one per line. A tool's result goes back to the model wrapped in
/// `<tool_response>` tags.
///
/// ```
/// use h2o_chat_engine::tool_call;
///
/// let call = tool_call::written("get_weather", r#"{"city": "Paris"}"#);
/// assert_eq!(
///     call,
///     "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"
/// );
/// let (words, calls) = tool_call::read_written(&format!("Let me look.\n{call}")).unwrap();
/// assert_eq!(words, "Let me look.");
/// assert_eq!(calls, [("get_weather".to_string(), r#"{"city": "Paris"}"#.to_string())]);
/// let results = format!("{}\n{}", tool_call::response("18 C"), tool_call::response("noon"));
/// assert_eq!(tool_call::read_responses(&results).unwrap(), ["18 C", "noon"]);
/// assert_eq!(tool_call::read_responses("Thanks!"), None);
/// ```
pub mod tool_call {
    /// What opens a call, up to its name.
    pub const OPEN: &str = "<tool_call>\n{\"name\": \"";
    /// What follows the name, up to the arguments object.
    pub const AFTER_NAME: &str = "\", \"arguments\": ";
    /// What closes a call after its arguments.
    pub const CLOSE: &str = "}\n</tool_call>";
    /// What stands between two calls.
    pub const BETWEEN: &str = "\n";

    /// A call as the model writes it; empty arguments are an empty object.
    pub fn written(name: &str, arguments: &str) -> String {
        let arguments = if arguments.trim().is_empty() {
            "{}"
        } else {
            arguments
        };
        format!("{OPEN}{name}{AFTER_NAME}{arguments}{CLOSE}")
    }

    /// A tool's result, as the model reads it.
    pub fn response(content: &str) -> String {
        format!("{RESPONSE_OPEN}{content}{RESPONSE_CLOSE}")
    }

    const RESPONSE_OPEN: &str = "<tool_response>\n";
    const RESPONSE_CLOSE: &str = "\n</tool_response>";

    /// An assistant turn read back: its words (before the first call, without the line
    /// break that separates them) and its calls as (name, arguments), when it holds calls
    /// [`written`] wrote and nothing after them; `None` otherwise.
    pub fn read_written(turn: &str) -> Option<(String, Vec<(String, String)>)> {
        let at = turn.find(OPEN)?;
        let words = turn[..at].strip_suffix(BETWEEN).unwrap_or(&turn[..at]);
        let mut rest = &turn[at..];
        let mut calls = Vec::new();
        while !rest.is_empty() {
            rest = rest.strip_prefix(OPEN)?;
            let name_end = rest.find(AFTER_NAME)?;
            let name = &rest[..name_end];
            rest = &rest[name_end + AFTER_NAME.len()..];
            let arguments_end = rest.find(CLOSE)?;
            calls.push((name.to_string(), rest[..arguments_end].to_string()));
            rest = &rest[arguments_end + CLOSE.len()..];
            rest = rest.strip_prefix(BETWEEN).unwrap_or(rest);
        }
        Some((words.to_string(), calls))
    }

    /// A user turn that is only tools' results ([`response`], one a line) read back: the
    /// results; `None` for anything else.
    pub fn read_responses(turn: &str) -> Option<Vec<String>> {
        let mut rest = turn;
        let mut results = Vec::new();
        while !rest.is_empty() {
            rest = rest.strip_prefix(RESPONSE_OPEN)?;
            let end = rest.find(RESPONSE_CLOSE)?;
            results.push(rest[..end].to_string());
            rest = &rest[end + RESPONSE_CLOSE.len()..];
            rest = rest.strip_prefix(BETWEEN).unwrap_or(rest);
        }
        (!results.is_empty()).then_some(results)
    }
}

impl Constraint {
    /// A short name of its kind, for messages and metrics: `json`, `regex`, `tools`.
    pub fn kind(&self) -> &'static str {
        match self {
            Constraint::JsonSchema(_) => "json",
            Constraint::Regex(_) => "regex",
            Constraint::Tools(_) => "tools",
        }
    }

    /// A key that is equal exactly for equal constraints (for a cache of compiled ones).
    pub fn key(&self) -> String {
        match self {
            Constraint::JsonSchema(schema) => format!("json:{schema}"),
            Constraint::Regex(regex) => format!("regex:{regex}"),
            Constraint::Tools(tools) => format!("tools:{}", tools.grammar),
        }
    }

    /// Its size in bytes as given (the first bound a compiler checks).
    pub fn size(&self) -> usize {
        match self {
            Constraint::JsonSchema(schema) => schema.to_string().len(),
            Constraint::Regex(text) => text.len(),
            Constraint::Tools(tools) => tools.grammar.len(),
        }
    }
}
