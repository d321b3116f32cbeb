//! What an answer must follow, in no protocol's terms: the [`Constraint`] a front builds
//! from TGI's `grammar`, OpenAI's `response_format` or its `tools`, and an engine enforces
//! token by token (the local model with a grammar over its vocabulary; a relay by passing
//! it to a server that can).
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
    /// A grammar in llguidance's Lark syntax (the server's tool-call grammars); only the
    /// local model takes it.
    Lark(String),
}

impl Constraint {
    /// A short name of its kind, for messages and metrics: `json`, `regex`, `grammar`.
    pub fn kind(&self) -> &'static str {
        match self {
            Constraint::JsonSchema(_) => "json",
            Constraint::Regex(_) => "regex",
            Constraint::Lark(_) => "grammar",
        }
    }

    /// A key that is equal exactly for equal constraints (for a cache of compiled ones).
    pub fn key(&self) -> String {
        match self {
            Constraint::JsonSchema(schema) => format!("json:{schema}"),
            Constraint::Regex(regex) => format!("regex:{regex}"),
            Constraint::Lark(grammar) => format!("lark:{grammar}"),
        }
    }

    /// Its size in bytes as given (the first bound a compiler checks).
    pub fn size(&self) -> usize {
        match self {
            Constraint::JsonSchema(schema) => schema.to_string().len(),
            Constraint::Regex(text) | Constraint::Lark(text) => text.len(),
        }
    }
}
