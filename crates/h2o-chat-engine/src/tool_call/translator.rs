//! An answer in a model's own call syntax rewritten, as it is sampled, into the shared
//! format: the frame's literals are swapped, the name and the arguments pass through as
//! the model wrote them (the arguments as they come, so a front streams them).
//!
//! The grammar makes the frame exact, so the only thing to find is where the arguments
//! end, which needs their JSON's nesting (a close such as Llama's `}` also appears inside
//! them, and Mistral's has no close at all).
//!
//! ```
//! use h2o_chat_engine::tool_call::{self, LLAMA3, Translator};
//!
//! let mut translator = Translator::new(LLAMA3);
//! let mut shared = String::new();
//! for piece in [r#"{"name": "get_"#, r#"weather", "parame"#, r#"ters": {"city": "}"}"#, "}"] {
//!     shared.push_str(&translator.push(piece));
//! }
//! shared.push_str(&translator.finish());
//! assert_eq!(shared, tool_call::written("get_weather", r#"{"city": "}"}"#));
//! ```

use super::Syntax;
use super::syntax::HERMES;

/// Where the answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing decisive yet: the answer might still open a call.
    Undecided,
    /// Words: passed through.
    Text,
    Name,
    Arguments,
    /// After the arguments, in the frame's close.
    Close,
    /// After a call: another, or the end.
    After,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Translator {
    syntax: Syntax,
    phase: Phase,
    /// Model text not yet translated (a possible frame literal, a name).
    held: String,
    /// A call's opening whose name is not confirmed yet: as the model wrote it, and in the
    /// shared format. An answer in words may begin like a call (a JSON answer `{"name":
    /// "Bo…` under Llama's syntax): it is words again if what follows is not a name and the
    /// frame.
    opening: (String, &'static str),
    arguments: JsonEnd,
}

impl Translator {
    pub fn new(syntax: Syntax) -> Self {
        Translator {
            syntax,
            phase: Phase::Undecided,
            held: String::new(),
            opening: (String::new(), ""),
            arguments: JsonEnd::default(),
        }
    }

    /// The next piece of the model's answer; what it translates to so far.
    pub fn push(&mut self, piece: &str) -> String {
        self.held.push_str(piece);
        let mut out = String::new();
        loop {
            let before = (self.phase, self.held.len());
            self.step(&mut out);
            if (self.phase, self.held.len()) == before {
                return out;
            }
        }
    }

    /// The answer ended: what is still held, as it stands (words that began like a call;
    /// a name cut by the length limit). A close cut short is left out: the call's
    /// arguments are complete.
    pub fn finish(&mut self) -> String {
        let held = std::mem::take(&mut self.held);
        match self.phase {
            Phase::Close => String::new(),
            // A number or literal ends only where something follows it: here, the answer.
            Phase::Arguments if self.arguments.scalar => HERMES.close.to_string(),
            Phase::Name => std::mem::take(&mut self.opening.0) + &held,
            _ => held,
        }
    }

    fn step(&mut self, out: &mut String) {
        match self.phase {
            Phase::Undecided => match starts(&self.held, self.syntax.open) {
                Start::Whole => {
                    let raw = self.held.drain(..self.syntax.open.len()).collect();
                    self.opening = (raw, FIRST_OPENING);
                    self.phase = Phase::Name;
                }
                Start::Partial => {}
                Start::No => self.phase = Phase::Text,
            },
            Phase::Text => out.push_str(&std::mem::take(&mut self.held)),
            Phase::Name => {
                // A name is letters, digits, `_` and `-`; the frame follows it.
                let end = self
                    .held
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                    .unwrap_or(self.held.len());
                match starts(&self.held[end..], self.syntax.after_name) {
                    Start::Whole if end > 0 => {
                        out.push_str(self.opening.1);
                        self.opening.0.clear();
                        out.push_str(&self.held[..end]);
                        out.push_str(HERMES.after_name);
                        self.held.drain(..end + self.syntax.after_name.len());
                        self.arguments = JsonEnd::default();
                        self.phase = Phase::Arguments;
                    }
                    Start::Partial if end <= MAX_NAME => {}
                    _ => {
                        // Not a call after all: words, as the model wrote them.
                        out.push_str(&std::mem::take(&mut self.opening.0));
                        self.phase = Phase::Text;
                    }
                }
            }
            Phase::Arguments => match self.arguments.feed(&self.held) {
                Some(end) => {
                    out.push_str(&self.held[..end]);
                    self.held.drain(..end);
                    self.phase = Phase::Close;
                }
                None => out.push_str(&std::mem::take(&mut self.held)),
            },
            Phase::Close => match starts(&self.held, self.syntax.close) {
                Start::Whole => {
                    self.held.drain(..self.syntax.close.len());
                    out.push_str(HERMES.close);
                    self.phase = Phase::After;
                }
                Start::Partial => {}
                Start::No => {
                    // Not the grammar's frame (it cannot happen under it): the call ends
                    // here and the rest is words.
                    out.push_str(HERMES.close);
                    self.phase = Phase::Text;
                }
            },
            Phase::After => {
                let next = self.syntax.between.len() + self.syntax.open.len();
                let opens = self.held.starts_with(self.syntax.between)
                    && self.held[self.syntax.between.len()..].starts_with(self.syntax.open);
                if opens {
                    let raw = self.held.drain(..next).collect();
                    self.opening = (raw, NEXT_OPENING);
                    self.phase = Phase::Name;
                } else if !format!("{}{}", self.syntax.between, self.syntax.open)
                    .starts_with(self.held.as_str())
                {
                    out.push_str(HERMES.between);
                    self.phase = Phase::Text;
                }
            }
        }
    }
}

/// The shared format's opening of a first call, and of a call after another (its
/// `between` and `open`, checked by a test).
const FIRST_OPENING: &str = HERMES.open;
const NEXT_OPENING: &str = "\n<tool_call>\n{\"name\": \"";

/// The longest name a tool may have.
const MAX_NAME: usize = 64;

enum Start {
    Whole,
    Partial,
    No,
}

/// Whether `held` starts with `literal`, may still, or cannot.
fn starts(held: &str, literal: &str) -> Start {
    if held.starts_with(literal) {
        Start::Whole
    } else if literal.starts_with(held) {
        Start::Partial
    } else {
        Start::No
    }
}

/// Finds where one JSON value ends, fed in pieces (no white space before it: the grammar
/// writes none).
#[derive(Debug, Clone, Default)]
struct JsonEnd {
    started: bool,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// A number, `true`, `false` or `null` at the top.
    scalar: bool,
}

impl JsonEnd {
    /// Reads `text` (what follows what was fed before); the byte offset just past the
    /// value's end, if it ends in `text`.
    fn feed(&mut self, text: &str) -> Option<usize> {
        for (at, c) in text.char_indices() {
            let after = at + c.len_utf8();
            if !self.started {
                if c.is_whitespace() {
                    continue;
                }
                self.started = true;
                match c {
                    '{' | '[' => self.depth = 1,
                    '"' => self.in_string = true,
                    _ => self.scalar = true,
                }
                continue;
            }
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if c == '\\' {
                    self.escaped = true;
                } else if c == '"' {
                    self.in_string = false;
                    if self.depth == 0 {
                        return Some(after);
                    }
                }
                continue;
            }
            if self.scalar {
                if !(c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-')) {
                    return Some(at);
                }
                continue;
            }
            match c {
                '"' => self.in_string = true,
                '{' | '[' => self.depth += 1,
                '}' | ']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return Some(after);
                    }
                }
                _ => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tool_call::{self, LLAMA3, MISTRAL};

    /// `answer` fed `size` characters at a time.
    fn translated(syntax: Syntax, answer: &str, size: usize) -> String {
        let mut translator = Translator::new(syntax);
        let chars: Vec<char> = answer.chars().collect();
        let mut out = String::new();
        for chunk in chars.chunks(size) {
            out.push_str(&translator.push(&chunk.iter().collect::<String>()));
        }
        out.push_str(&translator.finish());
        out
    }

    #[test]
    fn a_llama_call_becomes_the_shared_format_whatever_the_pieces() {
        let args = r#"{"q": "a } and a \" and {", "n": [1, {"x": null}]}"#;
        let answer = LLAMA3.written("search", args);
        for size in [1, 2, 3, 5, 1000] {
            assert_eq!(
                translated(LLAMA3, &answer, size),
                tool_call::written("search", args),
                "pieces of {size}"
            );
        }
    }

    #[test]
    fn mistral_s_calls_one_after_another_become_calls_one_a_line() {
        let answer = format!(
            "{}{}",
            MISTRAL.written("get_weather", r#"{"city": "Paris"}"#),
            MISTRAL.written("get_time", "{}")
        );
        let shared = format!(
            "{}\n{}",
            tool_call::written("get_weather", r#"{"city": "Paris"}"#),
            tool_call::written("get_time", "{}")
        );
        for size in [1, 4, 1000] {
            assert_eq!(
                translated(MISTRAL, &answer, size),
                shared,
                "pieces of {size}"
            );
        }
        let (_, calls) = tool_call::read_written(&shared).unwrap();
        assert_eq!(calls.len(), 2);
    }

    #[test]
    fn words_pass_through_even_when_they_begin_like_a_call() {
        for words in [
            "Hello there",
            "{\"na",
            "{\"nothing\": 1}",
            "[TOOL",
            "[TOOLS]",
        ] {
            assert_eq!(translated(LLAMA3, words, 2), words);
            assert_eq!(translated(MISTRAL, words, 3), words);
        }
    }

    #[test]
    fn a_call_cut_by_the_length_limit_keeps_its_arguments_so_far() {
        let cut = r#"{"name": "search", "parameters": {"q": "Pa"#;
        assert_eq!(
            translated(LLAMA3, cut, 3),
            format!(
                "{}search{}{}",
                tool_call::OPEN,
                tool_call::AFTER_NAME,
                r#"{"q": "Pa"#
            )
        );
    }

    #[test]
    fn the_next_call_s_opening_is_the_shared_format_s() {
        assert_eq!(NEXT_OPENING, format!("{}{}", HERMES.between, HERMES.open));
    }

    #[test]
    fn a_json_answer_that_begins_like_a_llama_call_stays_words() {
        for words in [
            r#"{"name": "Bob", "age": 3}"#,
            r#"{"name": "Bob Smith", "parameters": 1}"#,
            r#"{"name": ""#,
        ] {
            for size in [1, 3, 1000] {
                assert_eq!(translated(LLAMA3, words, size), words, "pieces of {size}");
            }
        }
    }

    #[test]
    fn a_scalar_at_the_end_and_white_space_before_arguments_are_still_a_call() {
        assert_eq!(
            translated(MISTRAL, "[TOOL_CALLS]f[ARGS]42", 2),
            tool_call::written("f", "42")
        );
        assert_eq!(
            translated(LLAMA3, r#"{"name": "f", "parameters":  {"a": 1}}"#, 2),
            tool_call::written("f", r#" {"a": 1}"#)
        );
    }

    #[test]
    fn scalar_arguments_end_where_the_frame_resumes() {
        let answer = "[TOOL_CALLS]f[ARGS]42[TOOL_CALLS]g[ARGS]\"x\"";
        assert_eq!(
            translated(MISTRAL, answer, 1),
            format!(
                "{}\n{}",
                tool_call::written("f", "42"),
                tool_call::written("g", "\"x\"")
            )
        );
    }
}
