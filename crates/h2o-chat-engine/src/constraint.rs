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
/// assert_eq!(
///     tool_call::written("get_weather", r#"{"city": "Paris"}"#),
///     "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"
/// );
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
        format!("<tool_response>\n{content}\n</tool_response>")
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
