//! A request's tools, checked, and the calls in its answer read back.
//!
//! **The format** ([`h2o_chat_engine::tool_call`], documented in the README, the same as the
//! Hermes and Qwen models'): for a model without tool syntax of its own the tools are
//! listed in a system section, a call is a `<tool_call>` of its name and arguments, several
//! calls one per line. A tool's result goes back as a user turn wrapped in
//! `<tool_response>` tags, an earlier assistant call as the model wrote it. A model with a
//! syntax of its own sees its tools through its own template and writes its own calls,
//! which its engine translates into this format; an upstream that calls tools natively gets
//! them as OpenAI's `tools`, and its calls come back in this format ([`ToolUse`]).
//!
//! **The grammar** ([`ToolUse::grammar`], in the engine): the call's frame is literal, the
//! name one of the tools', the arguments JSON valid against that tool's schema; `auto`
//! lets the model choose between words and calls.
//!
//! **The answer** is read back by [`CallReader`], incrementally: the calls' names as soon as
//! they are complete, their arguments as they are sampled (the frame's closing held back
//! until it is certain), text as text.
//!
//! ```
//! use h2o_chat_server::tools::{CallReader, Read};
//!
//! let mut reader = CallReader::new(true);
//! let mut seen = Vec::new();
//! for piece in ["<tool_call>\n{\"name\": \"get_", "weather\", \"arguments\": {\"city\"", ": \"Paris\"}}\n</tool_call>"] {
//!     seen.extend(reader.push(piece));
//! }
//! seen.extend(reader.finish());
//! assert_eq!(seen[0], Read::CallStarted { index: 0, name: "get_weather".into() });
//! let arguments: String = seen.iter().filter_map(|r| match r {
//!     Read::Arguments { text, .. } => Some(text.as_str()),
//!     _ => None,
//! }).collect();
//! assert_eq!(arguments, r#"{"city": "Paris"}"#);
//! ```

use serde::Deserialize;
use serde_json::Value;

/// Tools a request may list.
pub const MAX_TOOLS: usize = 64;
/// The bytes of every tool's definition together.
pub const MAX_TOOLS_BYTES: usize = 64 * 1024;

use h2o_chat_engine::ToolUse;
use h2o_chat_engine::tool_call::{self, AFTER_NAME, CLOSE, OPEN};

/// One tool as the request gives it (`{"type": "function", "function": {...}}`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ToolDefinition {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: Option<FunctionDefinition>,
}

/// `tools[].function`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FunctionDefinition {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parameters: Option<Value>,
    #[serde(default)]
    pub strict: Option<bool>,
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// A JSON Schema of the arguments object.
    pub parameters: Value,
}

impl Tool {
    /// A tool named `name` from its definition's object: its `description`, and its
    /// arguments' schema under `schema` (`parameters` for OpenAI, `input_schema` for
    /// Anthropic).
    pub fn from_definition(name: &str, definition: &Value, schema: &str) -> Tool {
        Tool {
            name: name.to_string(),
            description: definition
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_string),
            parameters: parameters_or_empty(definition.get(schema).cloned()),
        }
    }

    /// Its OpenAI signature, `{"type": "function", "function": {...}}`.
    pub fn signature(&self) -> Value {
        serde_json::json!({
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description.clone().unwrap_or_default(),
                "parameters": self.parameters,
            },
        })
    }
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    /// The model answers in words or calls tools.
    Auto,
    /// The model calls at least one tool.
    Required,
    /// The model calls this tool, once.
    Named(String),
}

/// The tools of a request, what it lets the model do with them.
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    pub tools: Vec<Tool>,
    pub choice: ToolChoice,
    /// More than one call in an answer (`parallel_tool_calls`, off by default here).
    pub parallel: bool,
}

/// A request's tools that cannot be used, and the field to blame (each front words it in
/// its own error shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolsError {
    pub message: String,
    pub param: &'static str,
}

impl ToolsError {
    pub fn invalid(message: impl Into<String>, param: &'static str) -> Self {
        ToolsError {
            message: message.into(),
            param,
        }
    }
}

impl Tools {
    /// Tools the model may call, checked: at most [`MAX_TOOLS`] of at most
    /// [`MAX_TOOLS_BYTES`] together, each name valid and once, a named choice among them.
    /// `None` when there are none (a choice that asks for a call is then an error).
    pub fn new(
        tools: Vec<Tool>,
        choice: ToolChoice,
        parallel: bool,
    ) -> Result<Option<Tools>, ToolsError> {
        if tools.is_empty() {
            return match choice {
                ToolChoice::Auto => Ok(None),
                _ => Err(ToolsError::invalid(
                    "`tool_choice` asks for a tool call but `tools` lists none",
                    "tool_choice",
                )),
            };
        }
        if tools.len() > MAX_TOOLS {
            return Err(ToolsError::invalid(
                format!(
                    "`tools` lists {} tools; at most {MAX_TOOLS} are taken",
                    tools.len()
                ),
                "tools",
            ));
        }
        let size: usize = tools
            .iter()
            .map(|t| {
                t.name.len()
                    + t.description.as_ref().map_or(0, String::len)
                    + t.parameters.to_string().len()
            })
            .sum();
        if size > MAX_TOOLS_BYTES {
            return Err(ToolsError::invalid(
                format!("`tools` is {size} bytes; at most {MAX_TOOLS_BYTES} are taken"),
                "tools",
            ));
        }
        for (i, tool) in tools.iter().enumerate() {
            if !tool_call::is_tool_name(&tool.name) {
                return Err(ToolsError::invalid(
                    format!("tool {i}'s name must be 1 to 64 letters, digits, `_` or `-`"),
                    "tools",
                ));
            }
            if tools[..i].iter().any(|t| t.name == tool.name) {
                return Err(ToolsError::invalid(
                    format!("`tools` names `{}` twice", tool.name),
                    "tools",
                ));
            }
            if !tool.parameters.is_object() {
                return Err(ToolsError::invalid(
                    format!(
                        "tool `{}`'s parameters must be a JSON Schema object",
                        tool.name
                    ),
                    "tools",
                ));
            }
        }
        if let ToolChoice::Named(name) = &choice
            && !tools.iter().any(|t| t.name == *name)
        {
            return Err(ToolsError::invalid(
                format!("`tool_choice` names `{name}`, which `tools` does not list"),
                "tool_choice",
            ));
        }
        Ok(Some(Tools {
            tools,
            choice,
            parallel,
        }))
    }

    /// OpenAI's chat shape: `tools` (`{"type": "function", "function": {...}}`),
    /// `tool_choice` and `parallel_tool_calls`; `None` when there are no tools, or
    /// `tool_choice` is `none` (the model then answers in words and the tools are not shown
    /// to it). `parallel_tool_calls` is off unless asked for (as llama.cpp's server has it):
    /// a small model given the choice repeats the same call until its length limit.
    pub fn parse(
        tools: Option<&Value>,
        choice: Option<&Value>,
        parallel: Option<&Value>,
    ) -> Result<Option<Tools>, ToolsError> {
        let choice = match openai_choice(choice, |named| {
            named.get("function").and_then(|f| f.get("name"))
        })? {
            None => return Ok(None),
            Some(choice) => choice,
        };
        let list = match tools {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => list.clone(),
            Some(_) => return Err(ToolsError::invalid("`tools` must be a list", "tools")),
        };
        if list.len() > MAX_TOOLS {
            return Err(ToolsError::invalid(
                format!(
                    "`tools` lists {} tools; at most {MAX_TOOLS} are taken",
                    list.len()
                ),
                "tools",
            ));
        }
        let mut parsed: Vec<Tool> = Vec::with_capacity(list.len());
        for (i, tool) in list.into_iter().enumerate() {
            let definition: ToolDefinition = serde_json::from_value(tool)
                .map_err(|e| ToolsError::invalid(format!("`tools[{i}]`: {e}"), "tools"))?;
            let function = match (definition.kind.as_str(), definition.function) {
                ("function", Some(function)) => function,
                _ => {
                    return Err(ToolsError::invalid(
                        format!(
                            "`tools[{i}]` must be {{\"type\": \"function\", \"function\": {{…}}}}"
                        ),
                        "tools",
                    ));
                }
            };
            parsed.push(Tool {
                name: function.name,
                description: function.description,
                parameters: parameters_or_empty(function.parameters),
            });
        }
        Tools::new(parsed, choice, parallel_of(parallel)?)
    }

    /// The system section that shows the model its tools and the call format.
    pub fn system_section(&self) -> String {
        let mut section = String::from(
            "You can call functions to help with the user's request. The functions are \
             listed in <tools></tools> tags, one JSON signature a line:\n<tools>\n",
        );
        for tool in &self.tools {
            section.push_str(&tool.signature().to_string());
            section.push('\n');
        }
        section.push_str(
            "</tools>\nTo call a function, answer with a JSON object of its name and \
             arguments in <tool_call></tool_call> tags:\n<tool_call>\n{\"name\": \
             <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
        );
        section
    }

    /// The constraint of an answer: the tools as OpenAI lists them (its grammar is the
    /// engine's, in its model's call syntax). `text_schema`: the JSON Schema a text answer must follow
    /// instead of free text (`response_format` beside `auto`).
    pub fn tool_use(&self, text_schema: Option<&Value>) -> ToolUse {
        let choice = match &self.choice {
            ToolChoice::Auto => Value::from("auto"),
            ToolChoice::Required => Value::from("required"),
            ToolChoice::Named(name) => {
                serde_json::json!({"type": "function", "function": {"name": name}})
            }
        };
        ToolUse {
            section: self.system_section(),
            tools: self.tools.iter().map(Tool::signature).collect(),
            choice,
            parallel: self.parallel,
            text_schema: text_schema.cloned(),
        }
    }
}

/// A tool without `parameters` takes an empty object.
fn parameters_or_empty(parameters: Option<Value>) -> Value {
    match parameters {
        None | Some(Value::Null) => serde_json::json!({"type": "object", "properties": {}}),
        Some(schema) => schema,
    }
}

/// `parallel_tool_calls`: off unless asked for.
pub fn parallel_of(value: Option<&Value>) -> Result<bool, ToolsError> {
    match value {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ToolsError::invalid(
            "`parallel_tool_calls` must be a boolean",
            "parallel_tool_calls",
        )),
    }
}

/// OpenAI's `tool_choice` (chat and Responses differ only in where a named function's name
/// is: `name_of` finds it); `None` for `none`.
pub fn openai_choice(
    choice: Option<&Value>,
    name_of: impl Fn(&serde_json::Map<String, Value>) -> Option<&Value>,
) -> Result<Option<ToolChoice>, ToolsError> {
    let wrong = || {
        ToolsError::invalid(
            "`tool_choice` must be `none`, `auto`, `required` or a named function",
            "tool_choice",
        )
    };
    match choice {
        None | Some(Value::Null) => Ok(Some(ToolChoice::Auto)),
        Some(Value::String(s)) if s == "none" => Ok(None),
        Some(Value::String(s)) if s == "auto" => Ok(Some(ToolChoice::Auto)),
        Some(Value::String(s)) if s == "required" => Ok(Some(ToolChoice::Required)),
        Some(Value::Object(named))
            if named.get("type").and_then(Value::as_str) == Some("function") =>
        {
            let name = name_of(named).and_then(Value::as_str).ok_or_else(wrong)?;
            Ok(Some(ToolChoice::Named(name.to_string())))
        }
        Some(_) => Err(wrong()),
    }
}

/// What [`CallReader`] makes of the answer so far.
#[derive(Debug, Clone, PartialEq)]
pub enum Read {
    /// Text of a text answer.
    Text(String),
    /// A call's name is complete.
    CallStarted { index: usize, name: String },
    /// More of a call's arguments (a JSON string, in pieces).
    Arguments { index: usize, text: String },
}

/// Where the reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing decisive yet: the answer might still open a call.
    Undecided,
    Text,
    /// Inside `<tool_call>\n{"name": "` … up to the name's end.
    Opening,
    Name,
    Arguments,
    /// Between calls, or after the last.
    Between,
}

/// Reads an answer that may hold calls (see the module docs).
#[derive(Debug, Clone)]
pub struct CallReader {
    phase: Phase,
    /// Text not yet given out (a possible opening, a name, arguments that may be the close).
    held: String,
    calls: usize,
}

impl CallReader {
    /// `calls_expected`: the grammar allows only calls (`required`, a named tool).
    pub fn new(calls_expected: bool) -> Self {
        CallReader {
            phase: if calls_expected {
                Phase::Opening
            } else {
                Phase::Undecided
            },
            held: String::new(),
            calls: 0,
        }
    }

    /// Calls read so far (started).
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Reads the next piece of the answer.
    pub fn push(&mut self, piece: &str) -> Vec<Read> {
        self.held.push_str(piece);
        let mut out = Vec::new();
        loop {
            let before = (self.phase, self.held.len());
            self.step(&mut out);
            if (self.phase, self.held.len()) == before {
                return out;
            }
        }
    }

    fn step(&mut self, out: &mut Vec<Read>) {
        match self.phase {
            Phase::Undecided => {
                if self.held.starts_with(OPEN) || OPEN.starts_with(self.held.as_str()) {
                    if self.held.len() >= OPEN.len() {
                        self.phase = Phase::Opening;
                    }
                } else {
                    self.phase = Phase::Text;
                }
            }
            Phase::Text => {
                // Text, until a call opens (a relayed upstream may write words before its
                // calls; the local model's grammar never lets text open one).
                if let Some(open) = self.held.find(OPEN) {
                    let text: String = self.held.drain(..open).collect();
                    if !text.is_empty() {
                        out.push(Read::Text(text));
                    }
                    self.phase = Phase::Opening;
                } else {
                    let keep = (1..OPEN.len())
                        .rev()
                        .find(|&n| self.held.ends_with(&OPEN[..n]))
                        .unwrap_or(0);
                    let cut = self.held.len() - keep;
                    if cut > 0 && self.held.is_char_boundary(cut) {
                        out.push(Read::Text(self.held.drain(..cut).collect()));
                    }
                }
            }
            Phase::Opening => {
                if self.held.len() >= OPEN.len() && self.held.starts_with(OPEN) {
                    self.held.drain(..OPEN.len());
                    self.phase = Phase::Name;
                } else if !self.held.is_empty() && !OPEN.starts_with(self.held.as_str()) {
                    // Words where a call was due: they are text.
                    self.phase = Phase::Text;
                }
            }
            Phase::Name => {
                if let Some(end) = self.held.find(AFTER_NAME) {
                    let name = self.held[..end].to_string();
                    self.held.drain(..end + AFTER_NAME.len());
                    out.push(Read::CallStarted {
                        index: self.calls,
                        name,
                    });
                    self.calls += 1;
                    self.phase = Phase::Arguments;
                }
            }
            Phase::Arguments => {
                if let Some(end) = self.held.find(CLOSE) {
                    let text: String = self.held.drain(..end).collect();
                    self.held.drain(..CLOSE.len());
                    if !text.is_empty() {
                        out.push(Read::Arguments {
                            index: self.calls - 1,
                            text,
                        });
                    }
                    self.phase = Phase::Between;
                } else {
                    // Give out all but what could be the start of the close.
                    let keep = (1..CLOSE.len())
                        .rev()
                        .find(|&n| self.held.ends_with(&CLOSE[..n]))
                        .unwrap_or(0);
                    let cut = self.held.len() - keep;
                    if cut > 0 && self.held.is_char_boundary(cut) {
                        let text: String = self.held.drain(..cut).collect();
                        out.push(Read::Arguments {
                            index: self.calls - 1,
                            text,
                        });
                    }
                }
            }
            Phase::Between => {
                let rest = self.held.trim_start_matches('\n');
                if rest.len() < self.held.len() {
                    self.held = rest.to_string();
                }
                if !self.held.is_empty() {
                    // Another call, or words after the calls.
                    self.phase = Phase::Opening;
                }
            }
        }
    }

    /// A whole answer read at once: its text, and its calls as (name, arguments).
    pub fn read_all(mut self, answer: &str) -> (String, Vec<(String, String)>) {
        let mut reads = self.push(answer);
        reads.extend(self.finish());
        let mut text = String::new();
        let mut calls: Vec<(String, String)> = Vec::new();
        for read in reads {
            match read {
                Read::Text(piece) => text.push_str(&piece),
                Read::CallStarted { name, .. } => calls.push((name, String::new())),
                Read::Arguments { index, text } => {
                    if let Some(call) = calls.get_mut(index) {
                        call.1.push_str(&text);
                    }
                }
            }
        }
        (text, calls)
    }

    /// The answer ended: what was held is given out as it stands (text held because it
    /// might have opened a call; arguments cut by the length limit).
    pub fn finish(&mut self) -> Vec<Read> {
        let held = std::mem::take(&mut self.held);
        match self.phase {
            Phase::Undecided | Phase::Text if !held.is_empty() => vec![Read::Text(held)],
            Phase::Arguments => {
                // Cut inside the frame's close: the close is not an argument.
                let keep = (1..CLOSE.len())
                    .rev()
                    .find(|&n| held.ends_with(&CLOSE[..n]))
                    .map_or(held.len(), |n| held.len() - n);
                let text = held[..keep].to_string();
                if text.is_empty() {
                    Vec::new()
                } else {
                    vec![Read::Arguments {
                        index: self.calls - 1,
                        text,
                    }]
                }
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(reader: &mut CallReader, text: &str, piece: usize) -> Vec<Read> {
        let mut out = Vec::new();
        let chars: Vec<char> = text.chars().collect();
        for chunk in chars.chunks(piece) {
            out.extend(reader.push(&chunk.iter().collect::<String>()));
        }
        out.extend(reader.finish());
        out
    }

    fn text_of(reads: &[Read]) -> String {
        reads
            .iter()
            .filter_map(|r| match r {
                Read::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect()
    }

    fn arguments_of(reads: &[Read]) -> String {
        reads
            .iter()
            .filter_map(|r| match r {
                Read::Arguments { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn words_around_calls_are_text_and_the_calls_still_calls() {
        let call = tool_call::written("get_weather", r#"{"city": "Paris"}"#);
        // Words first (a relayed upstream may write them), split anywhere.
        for expected in [false, true] {
            let mut reader = CallReader::new(expected);
            let reads = read_all(&mut reader, &format!("Let me look.{call}"), 3);
            assert_eq!(
                text_of(&reads),
                "Let me look.",
                "calls expected: {expected}"
            );
            assert_eq!(reader.calls(), 1, "calls expected: {expected}");
        }
        // Words after a call.
        let (text, calls) = CallReader::new(true).read_all(&format!("{call}\nDone."));
        assert_eq!(text, "Done.");
        assert_eq!(
            calls,
            [(
                "get_weather".to_string(),
                r#"{"city": "Paris"}"#.to_string()
            )]
        );
    }

    #[test]
    fn calls_are_read_whatever_the_pieces() {
        let answer = format!(
            "{}\n{}",
            tool_call::written("get_weather", r#"{"city": "Paris"}"#),
            tool_call::written("get_time", "{}")
        );
        for piece in [1, 2, 3, 7, 1000] {
            let reads = read_all(&mut CallReader::new(false), &answer, piece);
            let names: Vec<_> = reads
                .iter()
                .filter_map(|r| match r {
                    Read::CallStarted { index, name } => Some((*index, name.as_str())),
                    _ => None,
                })
                .collect();
            assert_eq!(
                names,
                [(0, "get_weather"), (1, "get_time")],
                "piece {piece}"
            );
            for (index, expected) in [(0, r#"{"city": "Paris"}"#), (1, "{}")] {
                let arguments: String = reads
                    .iter()
                    .filter_map(|r| match r {
                        Read::Arguments { index: i, text } if *i == index => Some(text.as_str()),
                        _ => None,
                    })
                    .collect();
                assert_eq!(arguments, expected, "piece {piece}");
            }
            assert!(!reads.iter().any(|r| matches!(r, Read::Text(_))));
        }
    }

    #[test]
    fn text_is_text_even_when_it_begins_like_a_call() {
        for text in ["Hello there", "<tool", "<b>bold</b>", "<tool_cal"] {
            let reads = read_all(&mut CallReader::new(false), text, 2);
            let joined: String = reads
                .iter()
                .map(|r| match r {
                    Read::Text(t) => t.clone(),
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(joined, text);
        }
    }

    #[test]
    fn a_call_cut_by_the_length_limit_keeps_what_was_written() {
        let reads = read_all(
            &mut CallReader::new(true),
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Pa",
            4,
        );
        let arguments = arguments_of(&reads);
        assert_eq!(arguments, r#"{"city": "Pa"#);
    }

    #[test]
    fn a_call_cut_inside_its_close_gives_only_its_arguments() {
        let reads = read_all(
            &mut CallReader::new(true),
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</too",
            3,
        );
        let arguments = arguments_of(&reads);
        assert_eq!(arguments, r#"{"a": 1}"#);
    }

    #[test]
    fn bad_tool_lists_are_refused_by_name() {
        let parse = |tools: Value, choice: Value| Tools::parse(Some(&tools), Some(&choice), None);
        let weather = serde_json::json!([{"type": "function", "function": {"name": "w"}}]);
        assert!(parse(weather.clone(), "none".into()).unwrap().is_none());
        for (tools, choice, wanted) in [
            (
                serde_json::json!([{"type": "function", "function": {"name": "a b"}}]),
                Value::Null,
                "letters",
            ),
            (serde_json::json!([{"type": "retrieval"}]), Value::Null, "must be"),
            (serde_json::json!([{"type": "function", "function": {"name": "w"}}, {"type": "function", "function": {"name": "w"}}]), Value::Null, "twice"),
            (weather.clone(), serde_json::json!({"type": "function", "function": {"name": "x"}}), "does not list"),
            (weather, "sometimes".into(), "tool_choice"),
            (Value::Array((0..65).map(|i| serde_json::json!({"type": "function", "function": {"name": format!("f{i}")}})).collect()), Value::Null, "at most 64"),
        ] {
            let err = parse(tools, choice).unwrap_err();
            assert!(err.message.contains(wanted), "{}", err.message);
        }
    }
}
