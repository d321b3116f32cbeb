//! A chat rendered with the model's own template (through llama.cpp), with message content
//! kept apart from markup: the template is rendered around markers, and what stands at each
//! marker is content. Content is then tokenised as plain text, so a message that spells a
//! special token cannot forge a turn (`vocabulary.rs`).
//!
//! With tools, a template that has its own tool section in the call format the server
//! enforces (`<tool_call>`: Hermes, Qwen and their kin) is rendered itself, as Hugging Face
//! renders it (Jinja), with the tools: the model reads its tools the way it was trained to.
//! Other templates get the server's generic section ([`render_with_tools`] says `None`).

use h2o_chat_engine::{ChatTurn, EngineError, Prompt, ToolUse, tool_call};
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use serde_json::{Value, json};

/// Marks message content in a rendered template. Private-use characters no message can
/// collide with in practice; a content that contains them is refused.
const SENTINEL_OPEN: char = '\u{F8F0}';
const SENTINEL_CLOSE: char = '\u{F8F1}';

/// Renders `turns`, ending with the open assistant turn.
pub(crate) fn render(model: &LlamaModel, turns: &[ChatTurn]) -> Result<Prompt, EngineError> {
    if turns.iter().any(|t| {
        t.content.contains([SENTINEL_OPEN, SENTINEL_CLOSE])
            || t.role.contains([SENTINEL_OPEN, SENTINEL_CLOSE])
    }) {
        return Err(EngineError::Input(
            "a message contains a reserved private-use character (U+F8F0 or U+F8F1)".into(),
        ));
    }
    let template = model
        .chat_template(None)
        .map_err(|e| EngineError::Input(format!("the model has no chat template: {e}")))?;
    let messages = turns
        .iter()
        .enumerate()
        .map(|(i, t)| {
            LlamaChatMessage::new(
                t.role.clone(),
                format!("{SENTINEL_OPEN}{i}{SENTINEL_CLOSE}"),
            )
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| EngineError::Input(format!("a message cannot be rendered: {e}")))?;
    let rendered = model
        .apply_chat_template(&template, &messages, true)
        .map_err(|e| EngineError::Input(format!("the chat template failed: {e}")))?;
    split(&rendered, turns)
}

/// The rendered template's markup and, at each marker, its message's content.
fn split(rendered: &str, turns: &[ChatTurn]) -> Result<Prompt, EngineError> {
    let mut prompt = Prompt::new();
    let mut rest = rendered;
    let mut next = 0usize;
    while let Some(open) = rest.find(SENTINEL_OPEN) {
        prompt.push_markup(&rest[..open]);
        let after = &rest[open + SENTINEL_OPEN.len_utf8()..];
        let close = after
            .find(SENTINEL_CLOSE)
            .ok_or_else(|| EngineError::Input("the chat template mangled a message".into()))?;
        let index: usize = after[..close]
            .parse()
            .map_err(|_| EngineError::Input("the chat template mangled a message".into()))?;
        if index != next || index >= turns.len() {
            return Err(EngineError::Input(
                "the chat template reorders or drops messages".into(),
            ));
        }
        prompt.push_content(&turns[index].content);
        next += 1;
        rest = &after[close + SENTINEL_CLOSE.len_utf8()..];
    }
    prompt.push_markup(rest);
    if next != turns.len() {
        return Err(EngineError::Input(
            "the chat template drops messages".into(),
        ));
    }
    Ok(prompt.with_chat(turns))
}

/// Whether `template` shows the model its tools itself, in the call format the server
/// enforces.
fn has_own_tool_section(template: &str) -> bool {
    template.contains("tools") && template.contains("<tool_call>")
}

/// `turns` rendered by the model's own Jinja `template` with `tools` (see the module docs);
/// `None` when the template has no tool section in the enforced format. `turns` are without
/// the server's generic section ([`ToolUse::without_section`]).
pub(crate) fn render_with_tools(
    template: &str,
    turns: &[ChatTurn],
    tools: &ToolUse,
    specials: (&str, &str),
) -> Result<Option<Prompt>, EngineError> {
    if !has_own_tool_section(template) {
        return Ok(None);
    }
    if turns.iter().any(|t| {
        t.content.contains([SENTINEL_OPEN, SENTINEL_CLOSE])
            || t.role.contains([SENTINEL_OPEN, SENTINEL_CLOSE])
    }) {
        return Err(EngineError::Input(
            "a message contains a reserved private-use character (U+F8F0 or U+F8F1)".into(),
        ));
    }
    let mut env = minijinja::Environment::new();
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_filter("tojson", python_json);
    env.add_function(
        "raise_exception",
        |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                message,
            ))
        },
    );
    let compiled = env.template_from_str(template).map_err(|e| {
        EngineError::Input(format!("the model's chat template does not compile: {e}"))
    })?;
    let messages: Vec<Value> = turns
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"role": t.role, "content": format!("{SENTINEL_OPEN}{i}{SENTINEL_CLOSE}")}))
        .collect();
    let (bos, eos) = specials;
    let rendered = compiled
        .render(minijinja::context! {
            messages => messages,
            tools => tools.tools,
            add_generation_prompt => true,
            bos_token => bos,
            eos_token => eos,
        })
        .map_err(|e| EngineError::Input(format!("the model's chat template failed: {e}")))?;
    // The calls are enforced in the server's format: the template must teach that one.
    if !rendered.contains(tool_call::OPEN.lines().next().unwrap_or_default()) {
        return Ok(None);
    }
    split(&rendered, turns).map(Some)
}

/// Jinja's `tojson` as Hugging Face's templates get it (Python's `json.dumps`): `", "` and
/// `": "` between items, or `indent` spaces a level, no HTML escaping — the text the model was
/// trained on, where minijinja's own filter writes compact, HTML-safe JSON.
fn python_json(
    value: minijinja::Value,
    kwargs: minijinja::value::Kwargs,
) -> Result<minijinja::Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let invalid = |e: serde_json::Error| {
        minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
    };
    let json = serde_json::to_value(&value).map_err(invalid)?;
    let mut out = Vec::new();
    match indent {
        Some(n) => {
            let spaces = vec![b' '; n];
            let formatter = serde_json::ser::PrettyFormatter::with_indent(&spaces);
            let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
            serde::Serialize::serialize(&json, &mut serializer).map_err(invalid)?;
        }
        None => {
            let mut serializer = serde_json::Serializer::with_formatter(&mut out, Spaced);
            serde::Serialize::serialize(&json, &mut serializer).map_err(invalid)?;
        }
    }
    Ok(minijinja::Value::from_safe_string(
        String::from_utf8_lossy(&out).into_owned(),
    ))
}

/// Python's default `json.dumps` separators.
struct Spaced;

impl serde_json::ser::Formatter for Spaced {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Qwen2.5-Instruct's chat template, as its tokenizer_config.json has it.
    const QWEN: &str = include_str!("../tests/templates/qwen2.5-instruct.jinja");

    fn weather() -> ToolUse {
        ToolUse {
            grammar: String::new(),
            section: "generic section".into(),
            tools: vec![
                json!({"type": "function", "function": {"name": "get_weather",
                "description": "The weather in a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}),
            ],
            choice: json!("auto"),
            parallel: false,
            text_schema: None,
        }
    }

    #[test]
    fn a_template_with_its_own_tool_section_shows_the_tools_its_way() {
        let turns = [
            ChatTurn::new("system", "Be brief."),
            ChatTurn::new("user", "Weather in Paris?"),
        ];
        let prompt = render_with_tools(QWEN, &turns, &weather(), ("", "<|im_end|>"))
            .unwrap()
            .expect("Qwen's template has a tool section");
        let text = prompt.text();
        assert!(
            text.starts_with("<|im_start|>system\nBe brief.\n\n# Tools\n"),
            "{text}"
        );
        assert!(
            text.contains(r#"{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.""#),
            "{text}"
        );
        assert!(
            text.contains("within <tool_call></tool_call> XML tags"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n"
            ),
            "{text}"
        );
        assert!(!text.contains("generic section"));
        // The messages are content, the rest markup.
        let content: Vec<&str> = prompt
            .pieces()
            .iter()
            .filter_map(|p| match p {
                h2o_chat_engine::Piece::Content(c) => Some(c.as_str()),
                h2o_chat_engine::Piece::Markup(_) => None,
            })
            .collect();
        assert_eq!(content, ["Be brief.", "Weather in Paris?"]);
    }

    #[test]
    fn a_template_without_one_gets_the_generic_section() {
        let chatml = "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}";
        let turns = [ChatTurn::new("user", "Hi")];
        assert_eq!(
            render_with_tools(chatml, &turns, &weather(), ("", "")).unwrap(),
            None
        );
    }
}
