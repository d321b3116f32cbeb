//! What an answer must follow, in no protocol's terms: the [`Constraint`] a front builds
//! from TGI's `grammar`, OpenAI's `response_format` or its `tools`, and an engine enforces
//! token by token (the local model with a grammar over its vocabulary; a relay by passing
//! it to a server that can).
//!
//! Tool calls ([`ToolUse`]) are read in one documented format whoever produces them
//! ([`crate::tool_call`]): the local model writes it under the grammar, or its own call syntax
//! that its engine translates; a relay to a server that calls tools natively writes the
//! calls it receives in it, so a front reads every answer the same way.
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

/// A request's tools, as OpenAI lists them (what a relay to a server that calls tools
/// natively passes on), with the system section that shows them to a model without tool
/// syntax of its own. An engine that enforces calls itself compiles their
/// [`grammar`](ToolUse::grammar) in its model's call syntax.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolUse {
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
    /// What the answer's grammar depends on, as one JSON text.
    fn identity(&self) -> String {
        serde_json::json!([self.tools, self.choice, self.parallel, self.text_schema]).to_string()
    }

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
            Constraint::Tools(tools) => format!("tools:{}", tools.identity()),
        }
    }

    /// Its size in bytes as given (the first bound a compiler checks).
    pub fn size(&self) -> usize {
        match self {
            Constraint::JsonSchema(schema) => schema.to_string().len(),
            Constraint::Regex(text) => text.len(),
            Constraint::Tools(tools) => tools.identity().len(),
        }
    }
}
