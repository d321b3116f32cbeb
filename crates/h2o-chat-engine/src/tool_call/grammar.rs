//! The grammar of an answer with tools, in llguidance's Lark syntax, for the call syntax
//! of the model that writes it.
//!
//! The call's frame is literal, the name one of the tools', the arguments JSON valid
//! against that tool's `parameters` schema. `required` and a named tool allow only calls;
//! `auto` allows either free text that never opens a call or calls — the model chooses with
//! its first tokens, and once it has opened a call the call is enforced to its end. This
//! is a grammar that accepts both, rather than TGI's extra `no_tool` function, so that an
//! answer in words is written as words (a small model writes worse prose inside a JSON
//! string).

use serde_json::Value;

use super::Syntax;
use crate::ToolUse;

/// Calls in one answer when parallel calls are allowed.
pub const MAX_PARALLEL_CALLS: usize = 8;

impl ToolUse {
    /// The tools the model may call now (a named choice narrows them to one), as
    /// (name, parameters' schema).
    fn callable(&self) -> impl Iterator<Item = (&str, &Value)> {
        let named = self.named();
        self.tools.iter().filter_map(move |tool| {
            let function = tool.get("function")?;
            let name = function.get("name")?.as_str()?;
            if named.is_some_and(|wanted| wanted != name) {
                return None;
            }
            Some((name, function.get("parameters").unwrap_or(&Value::Null)))
        })
    }

    /// The one tool `tool_choice` names, if it names one.
    fn named(&self) -> Option<&str> {
        self.choice.get("function")?.get("name")?.as_str()
    }

    /// The answer's grammar for a model whose calls are in `syntax` (see the module docs).
    /// `literal` writes a frame literal in Lark (a JSON string, or a special token where
    /// the model's vocabulary has the literal as one).
    ///
    /// ```
    /// use h2o_chat_engine::ToolUse;
    /// use h2o_chat_engine::tool_call::{HERMES, LLAMA3};
    /// use serde_json::json;
    ///
    /// let tools = ToolUse {
    ///     section: String::new(),
    ///     tools: vec![json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}})],
    ///     choice: json!("required"),
    ///     parallel: false,
    ///     text_schema: None,
    /// };
    /// let quoted = |text: &str| serde_json::to_string(text).unwrap();
    /// assert!(tools.grammar(&HERMES, &quoted).contains(r#""get_weather" "\", \"arguments\": ""#));
    /// assert!(tools.grammar(&LLAMA3, &quoted).contains(r#""\", \"parameters\": ""#));
    /// ```
    pub fn grammar(&self, syntax: &Syntax, literal: &dyn Fn(&str) -> String) -> String {
        let mut lark = String::new();
        let several = self.parallel && syntax.parallel && self.named().is_none();
        let calls = match (several, syntax.between) {
            (false, _) => "call".to_string(),
            (true, "") => format!("call{{1,{MAX_PARALLEL_CALLS}}}"),
            (true, between) => format!(
                "call ({} call){{0,{}}}",
                literal(between),
                MAX_PARALLEL_CALLS - 1
            ),
        };
        let auto = self.choice.as_str() == Some("auto");
        match (auto, &self.text_schema) {
            (true, None) => {
                lark.push_str(&format!("start: TEXT | {calls}\n"));
                // Words never hold what opens a call: neither the model's opening nor the
                // shared one (a front would read it as a call).
                let mut openings = vec![regex_escaped("<tool_call>")];
                if !syntax.is_shared() {
                    openings.push(regex_escaped(syntax.open));
                }
                lark.push_str(&format!(
                    "TEXT: /(?s:.*)/ & ~/(?s:.*)({})(?s:.*)/\n",
                    openings.join("|")
                ));
            }
            (true, Some(schema)) => {
                lark.push_str(&format!("start: text | {calls}\n"));
                lark.push_str(&format!("text: %json {schema}\n"));
            }
            (false, _) => lark.push_str(&format!("start: {calls}\n")),
        }
        let close = if syntax.close.is_empty() {
            String::new()
        } else {
            format!(" {}", literal(syntax.close))
        };
        lark.push_str(&format!("call: {} function{close}\n", literal(syntax.open)));
        let alternatives: Vec<String> = (0..self.callable().count())
            .map(|i| format!("f{i}"))
            .collect();
        lark.push_str(&format!("function: {}\n", alternatives.join(" | ")));
        for (i, (name, parameters)) in self.callable().enumerate() {
            // Arguments are laid out as the frame's readers expect, whatever layout the
            // schema asks for (no white space around the value: a translator finds its end).
            let mut parameters = parameters.clone();
            if let Value::Object(map) = &mut parameters {
                let guidance = map
                    .entry("x-guidance")
                    .or_insert_with(|| Value::Object(Default::default()));
                if !guidance.is_object() {
                    *guidance = Value::Object(Default::default());
                }
                if let Value::Object(guidance) = guidance {
                    guidance.insert("whitespace_flexible".into(), false.into());
                    guidance.insert("item_separator".into(), ", ".into());
                    guidance.insert("key_separator".into(), ": ".into());
                }
            }
            lark.push_str(&format!(
                "f{i}: {} {} %json {parameters}\n",
                literal(name),
                literal(syntax.after_name)
            ));
        }
        lark
    }
}

/// `text` as a regular expression matching it alone (Lark's `/…/`, so `/` too).
fn regex_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        match c {
            '\\' | '.' | '+' | '*' | '?' | '(' | ')' | '|' | '[' | ']' | '{' | '}' | '^' | '$'
            | '/' | '"' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tool_call::{HERMES, LLAMA3, MISTRAL};
    use serde_json::json;

    fn tools(choice: Value, parallel: bool) -> ToolUse {
        ToolUse {
            section: String::new(),
            tools: vec![
                json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}),
                json!({"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}),
            ],
            choice,
            parallel,
            text_schema: None,
        }
    }

    fn quoted(text: &str) -> String {
        Value::String(text.to_string()).to_string()
    }

    #[test]
    fn the_grammar_names_only_the_callable_tools() {
        let auto = tools(json!("auto"), true).grammar(&HERMES, &quoted);
        assert!(
            auto.starts_with("start: TEXT | call (\"\\n\" call){0,7}"),
            "{auto}"
        );
        assert!(auto.contains("get_weather") && auto.contains("get_time"));
        let named = tools(
            json!({"type": "function", "function": {"name": "get_time"}}),
            true,
        )
        .grammar(&HERMES, &quoted);
        assert!(named.starts_with("start: call\n"), "{named}");
        assert!(!named.contains("get_weather"));
        assert!(
            tools(json!("required"), false)
                .grammar(&HERMES, &quoted)
                .starts_with("start: call\n")
        );
    }

    #[test]
    fn each_syntax_gets_its_own_frame() {
        let llama = tools(json!("auto"), true).grammar(&LLAMA3, &quoted);
        // Llama 3.x calls one tool at a time, whatever was asked.
        assert!(llama.starts_with("start: TEXT | call\n"), "{llama}");
        assert!(llama.contains(r#"(<tool_call>|\{\"name\": \")"#), "{llama}");
        assert!(
            llama.contains(r#"call: "{\"name\": \"" function "}""#),
            "{llama}"
        );
        let mistral = tools(json!("required"), true).grammar(&MISTRAL, &|t: &str| {
            if t == "[TOOL_CALLS]" {
                "<[9]>".to_string()
            } else {
                quoted(t)
            }
        });
        assert!(mistral.starts_with("start: call{1,8}\n"), "{mistral}");
        assert!(mistral.contains("call: <[9]> function\n"), "{mistral}");
        assert!(
            mistral.contains(r#"f0: "get_weather" "[ARGS]" %json"#),
            "{mistral}"
        );
    }
}
