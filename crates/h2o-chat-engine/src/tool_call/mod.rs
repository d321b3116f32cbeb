//! The format of tool calls in an answer, shared by every engine and front (the Hermes and
//! Qwen models' own):
//!
//! ```text
//! <tool_call>
//! {"name": "get_weather", "arguments": {"city": "Paris"}}
//! </tool_call>
//! ```
//!
//! several calls one per line. A tool's result goes back to the model wrapped in
//! `<tool_response>` tags.
//!
//! A model trained on another call syntax ([`Syntax`]: Llama 3.x's JSON with
//! `"parameters"`, Mistral's `[TOOL_CALLS]name[ARGS]{…}`) writes its own under the grammar
//! ([`ToolUse::grammar`](crate::ToolUse::grammar)), and its engine translates the answer
//! into this format as it is sampled ([`Translator`]): a front reads every answer the same
//! way, whatever model or relay wrote it.
//!
//! ```
//! use h2o_chat_engine::tool_call;
//!
//! let call = tool_call::written("get_weather", r#"{"city": "Paris"}"#);
//! assert_eq!(
//!     call,
//!     "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"
//! );
//! let (words, calls) = tool_call::read_written(&format!("Let me look.\n{call}")).unwrap();
//! assert_eq!(words, "Let me look.");
//! assert_eq!(calls, [("get_weather".to_string(), r#"{"city": "Paris"}"#.to_string())]);
//! let results = format!("{}\n{}", tool_call::response("18 C"), tool_call::response("noon"));
//! assert_eq!(tool_call::read_responses(&results).unwrap(), ["18 C", "noon"]);
//! assert_eq!(tool_call::read_responses("Thanks!"), None);
//! ```

mod exchange;
mod grammar;
mod syntax;
mod translator;

pub use exchange::{Exchange, exchanges};
pub use grammar::MAX_PARALLEL_CALLS;
pub use syntax::{HERMES, LLAMA3, MISTRAL, SYNTAXES, Syntax};
pub use translator::Translator;

/// What opens a call, up to its name.
pub const OPEN: &str = HERMES.open;
/// What follows the name, up to the arguments object.
pub const AFTER_NAME: &str = HERMES.after_name;
/// What closes a call after its arguments.
pub const CLOSE: &str = HERMES.close;
/// What stands between two calls.
pub const BETWEEN: &str = HERMES.between;

/// Whether a name is one a tool may have: 1 to 64 letters, digits, `_` or `-` (OpenAI's
/// rule; templates write names bare, so nothing else may stand there).
pub fn is_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A call as the model writes it; empty arguments are an empty object.
pub fn written(name: &str, arguments: &str) -> String {
    HERMES.written(name, arguments)
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
