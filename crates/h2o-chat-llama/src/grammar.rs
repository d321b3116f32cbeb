//! Constraints as grammars over the model's vocabulary, with llguidance: a JSON Schema, a
//! regular expression or a Lark grammar becomes a matcher that, at every step, says which
//! tokens may come next ([`Grammar::mask`]); the sampler sees only those
//! ([`h2o_chat_engine::Sampler::choose_from`]), so sampling keeps TGI's semantics within the
//! grammar. When the grammar is complete it allows only end-of-sequence, so a constrained
//! answer ends as any answer does (`eos_token`), or at the length limit (`length`).
//!
//! The token table is built once per model from the vocabulary's bytes (special tokens
//! marked as llguidance expects). A constraint is compiled once — off the async runtime, in
//! the server's preparation hop — on a thread with a large stack (llguidance's compilers
//! recurse on nesting), within limits on its size, its nesting and llguidance's own fuel;
//! a compiled one is kept (the last [`CACHED`] distinct ones) and cloned for each request.

use std::sync::{Arc, Mutex};

use h2o_chat_engine::Constraint;
use h2o_chat_engine::tool_call::Syntax;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

/// Compiled constraints kept for reuse.
pub const CACHED: usize = 64;
/// The largest constraint taken, in bytes as given.
pub const MAX_BYTES: usize = 256 * 1024;
/// The deepest nesting taken (JSON values in a schema, groups in a regular expression).
pub const MAX_DEPTH: usize = 64;
/// The compiling thread's stack: llguidance's schema and regex compilers recurse.
const COMPILER_STACK: usize = 64 << 20;

/// How JSON is written under a schema unless the schema says otherwise: one space after
/// `:` and `,`, no other white space — the model's own habit, and no room to wander
/// (free white space lets a small model emit newlines until its length limit).
fn json_layout() -> Value {
    serde_json::json!({
        "whitespace_flexible": false,
        "item_separator": ", ",
        "key_separator": ": ",
    })
}

/// The model's token table and the compiled constraints. See the module docs.
pub struct Grammars {
    factory: Arc<ParserFactory>,
    /// The model's call syntax, in which tool calls are enforced.
    syntax: Syntax,
    /// The syntax's frame literals that are one special token of the vocabulary
    /// (Mistral's `[TOOL_CALLS]`), with its id: the grammar asks for the token, as the
    /// model was trained to write it, not for its name spelled out.
    special_literals: Vec<(String, i32)>,
    /// Most recently used last.
    cache: Mutex<Vec<(String, Matcher)>>,
}

/// One request's grammar: where it stands, and the mask of what may come next.
pub struct Grammar {
    matcher: Matcher,
}

impl Grammars {
    /// The token table of `model` (49,152 tokens for SmolLM2: ~50 ms, once); tool calls
    /// are enforced in `syntax`.
    pub(crate) fn of(model: &LlamaModel, syntax: Syntax) -> Result<Self, String> {
        let mut factory = ParserFactory::new_simple(&token_table(model))
            .map_err(|e| format!("cannot build the grammar engine's token table: {e}"))?;
        factory.quiet();
        let vocab = model.vocab();
        let special_literals = [syntax.open, syntax.after_name, syntax.close, syntax.between]
            .into_iter()
            .filter(|literal| !literal.is_empty())
            .filter_map(
                |literal| match vocab.tokenize(literal.as_bytes(), false, true)[..] {
                    [token] if vocab.is_control(token) => Some((literal.to_string(), token.0)),
                    _ => None,
                },
            )
            .collect();
        Ok(Grammars {
            factory: Arc::new(factory),
            syntax,
            special_literals,
            cache: Mutex::new(Vec::new()),
        })
    }

    /// A fresh matcher for `constraint`, compiled now unless a recent request compiled it.
    /// An error is the client's: what is wrong with the constraint.
    pub fn compile(&self, constraint: &Constraint) -> Result<Grammar, String> {
        let key = constraint.key();
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(at) = cache.iter().position(|(k, _)| *k == key) {
                let entry = cache.remove(at);
                let matcher = entry.1.deep_clone();
                cache.push(entry);
                return Ok(Grammar { matcher });
            }
        }
        let matcher = self.build(constraint)?;
        let fresh = matcher.deep_clone();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHED {
            cache.remove(0);
        }
        cache.push((key, matcher));
        Ok(Grammar { matcher: fresh })
    }

    fn build(&self, constraint: &Constraint) -> Result<Matcher, String> {
        if constraint.size() > MAX_BYTES {
            return Err(format!(
                "the {} is {} bytes; at most {MAX_BYTES} are taken",
                describe(constraint),
                constraint.size()
            ));
        }
        let grammar = match constraint {
            Constraint::JsonSchema(schema) => {
                if depth(schema) > MAX_DEPTH {
                    return Err(format!(
                        "the JSON schema nests deeper than {MAX_DEPTH} levels"
                    ));
                }
                let mut schema = schema.clone();
                if let Value::Object(map) = &mut schema
                    && !map.contains_key("x-guidance")
                {
                    map.insert("x-guidance".into(), json_layout());
                }
                TopLevelGrammar::from_json_schema(schema)
            }
            Constraint::Regex(regex) => {
                if group_depth(regex) > MAX_DEPTH {
                    return Err(format!(
                        "the regular expression nests deeper than {MAX_DEPTH} groups"
                    ));
                }
                TopLevelGrammar::from_regex(regex)
            }
            Constraint::Tools(tools) => {
                let lark = tools.grammar(&self.syntax, &|literal| self.literal(literal));
                if group_depth(&lark) > MAX_DEPTH {
                    return Err(format!("the grammar nests deeper than {MAX_DEPTH} groups"));
                }
                TopLevelGrammar::from_lark(lark)
            }
        };
        let factory = self.factory.clone();
        // Compiled and its first mask computed on a thread of its own, whose stack the
        // compilers' recursion cannot exhaust; a panic in them is an error, not a crash.
        let compiled = std::thread::Builder::new()
            .name("h2o-chat-grammar".into())
            .stack_size(COMPILER_STACK)
            .spawn(move || {
                let mut matcher = Matcher::new(factory.create_parser(grammar));
                match matcher.compute_mask() {
                    Ok(_) => Ok(matcher),
                    Err(err) => Err(err.to_string()),
                }
            })
            .map_err(|e| format!("cannot start the grammar compiler: {e}"))?
            .join()
            .map_err(|_| format!("the {} could not be compiled", describe(constraint)))?;
        let mut matcher = compiled.map_err(|err| tidy(&err))?;
        matcher.reset().map_err(|err| tidy(&err.to_string()))?;
        Ok(matcher)
    }
}

impl Grammars {
    /// A frame literal in Lark: the special token it is, or the text.
    fn literal(&self, text: &str) -> String {
        match self
            .special_literals
            .iter()
            .find(|(literal, _)| literal == text)
        {
            Some((_, id)) => format!("<[{id}]>"),
            None => Value::String(text.to_string()).to_string(),
        }
    }
}

impl Grammar {
    /// What may come next: bit `i` of the words is token `i` (only end-of-sequence once the
    /// grammar is complete). An error means the grammar cannot go on.
    pub fn mask(&mut self) -> Result<Vec<u32>, String> {
        self.matcher
            .compute_mask_or_eos()
            .map(|mask| mask.as_slice().to_vec())
            .map_err(|err| tidy(&err.to_string()))
    }

    /// Whether the grammar is complete (only end-of-sequence may follow).
    pub fn is_done(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// Moves past `token` (one the last mask allowed).
    pub fn advance(&mut self, token: u32) -> Result<(), String> {
        if self.matcher.is_stopped() {
            return Ok(());
        }
        self.matcher
            .consume_token(token)
            .map_err(|err| tidy(&err.to_string()))
    }
}

/// The vocabulary as llguidance's token table: each token's bytes; special tokens (which
/// decode to nothing as text) marked with 0xFF before their name; every end-of-generation
/// token an end of sequence.
fn token_table(model: &LlamaModel) -> TokEnv {
    let vocab = model.vocab();
    let size = u32::try_from(model.n_vocab()).unwrap_or(0);
    let eos = vocab.eos();
    let mut ends = vec![eos.0 as u32];
    let words: Vec<Vec<u8>> = (0..size as i32)
        .map(LlamaToken)
        .map(|token| {
            if vocab.is_eog(token) && token != eos {
                ends.push(token.0 as u32);
            }
            let text = vocab.token_to_piece(token, false, None);
            if !text.is_empty() {
                return text;
            }
            let name = vocab.token_to_piece(token, true, None);
            if name.is_empty() {
                return Vec::new();
            }
            let mut marked = Vec::with_capacity(name.len() + 1);
            marked.push(TokTrie::SPECIAL_TOKEN_MARKER);
            marked.extend_from_slice(&name);
            marked
        })
        .collect();
    let info = TokRxInfo::new(size, eos.0 as u32);
    let trie = TokTrie::from(&info, &words).with_eos_tokens(&ends);
    Arc::new(ApproximateTokEnv::new(trie))
}

fn describe(constraint: &Constraint) -> &'static str {
    match constraint {
        Constraint::JsonSchema(_) => "JSON schema",
        Constraint::Regex(_) => "regular expression",
        Constraint::Tools(_) => "tool-call grammar",
    }
}

/// The nesting depth of a JSON value.
fn depth(value: &Value) -> usize {
    // Iterative: the value may be deep enough to exhaust a recursion.
    let mut deepest = 0;
    let mut stack = vec![(value, 1usize)];
    while let Some((value, level)) = stack.pop() {
        deepest = deepest.max(level);
        match value {
            Value::Array(items) => stack.extend(items.iter().map(|v| (v, level + 1))),
            Value::Object(map) => stack.extend(map.values().map(|v| (v, level + 1))),
            _ => {}
        }
    }
    deepest
}

/// The deepest nesting of `(`, `[` and `{` in a pattern (escapes skipped).
fn group_depth(pattern: &str) -> usize {
    let (mut level, mut deepest, mut escaped) = (0usize, 0usize, false);
    for c in pattern.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '(' | '[' | '{' => {
                level += 1;
                deepest = deepest.max(level);
            }
            ')' | ']' | '}' => level = level.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// An llguidance message for a client on one line: its first few lines (a regex error
/// shows the pattern, a caret and the reason), without the parser state verbose errors
/// dump after them, at most 500 characters.
fn tidy(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(6)
        .collect();
    lines.join(" ").chars().take(500).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_measured_without_recursion() {
        let mut deep = Value::Null;
        for _ in 0..100_000 {
            deep = Value::Array(vec![deep]);
        }
        assert_eq!(depth(&deep), 100_001);
        std::mem::forget(deep); // its recursive drop is not what is tested here
        assert_eq!(depth(&serde_json::json!({"a": [1, {"b": 2}]})), 4);
        assert_eq!(group_depth(r"((a)|[b\(])"), 2);
        assert_eq!(group_depth(&"(".repeat(70)), 70);
    }
}
