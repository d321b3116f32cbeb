//! A chat rendered with the model's own template (through llama.cpp), with message content
//! kept apart from markup: the template is rendered around markers, and what stands at each
//! marker is content. Content is then tokenised as plain text, so a message that spells a
//! special token cannot forge a turn (`vocabulary.rs`).
//!
//! With tools, a template that has its own tool section in the call format the server
//! enforces (`<tool_call>`: Hermes, Qwen and their kin) is rendered itself, as Hugging Face
//! renders it (Jinja), with the tools: the model reads its tools the way it was trained to.
//! Other templates get the server's generic section ([`render_with_tools`] says `None`).
//! The template sees each message as its marker, not its text: logic that looks into a
//! message (Qwen3 telling a tool's result from a question by its first characters,
//! stripping earlier reasoning) does not apply, and such a template may render a little
//! differently from Hugging Face's rendering; the tools' section, the turns' markup and the
//! order are the template's.

use h2o_chat_engine::{ChatTurn, EngineError, Prompt, ToolUse, tool_call};
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use serde_json::{Value, json};

/// Marks message content in a rendered template. Private-use characters no message can
/// collide with in practice; a content that contains them is refused.
const SENTINEL_OPEN: char = '\u{F8F0}';
const SENTINEL_CLOSE: char = '\u{F8F1}';
/// Marks the JSON a template writes with `tojson` (the tools' definitions, earlier calls'
/// arguments): the client's text, so content too — a tool's description that spells a
/// special token must not become one.
const JSON_OPEN: char = '\u{F8F2}';
const JSON_CLOSE: char = '\u{F8F3}';
const RESERVED: [char; 4] = [SENTINEL_OPEN, SENTINEL_CLOSE, JSON_OPEN, JSON_CLOSE];

/// Refuses a chat that holds a reserved character.
fn check_reserved(turns: &[ChatTurn]) -> Result<(), EngineError> {
    if turns
        .iter()
        .any(|t| t.content.contains(RESERVED) || t.role.contains(RESERVED))
    {
        return Err(EngineError::Input(
            "a message contains a reserved private-use character (U+F8F0 to U+F8F3)".into(),
        ));
    }
    Ok(())
}

/// Renders `turns`, ending with the open assistant turn.
pub(crate) fn render(model: &LlamaModel, turns: &[ChatTurn]) -> Result<Prompt, EngineError> {
    check_reserved(turns)?;
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

/// The rendered template's markup and, at each marker, its message's content (and the JSON
/// it wrote with `tojson`, content too).
fn split(rendered: &str, turns: &[ChatTurn]) -> Result<Prompt, EngineError> {
    let mut prompt = Prompt::new();
    let mut rest = rendered;
    let mut next = 0usize;
    while let Some(open) = rest.find([SENTINEL_OPEN, JSON_OPEN]) {
        prompt.push_markup(&rest[..open]);
        if rest[open..].starts_with(JSON_OPEN) {
            let after = &rest[open + JSON_OPEN.len_utf8()..];
            let close = after
                .find(JSON_CLOSE)
                .ok_or_else(|| EngineError::Input("the chat template mangled its JSON".into()))?;
            prompt.push_content(&after[..close]);
            rest = &after[close + JSON_CLOSE.len_utf8()..];
            continue;
        }
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
    check_reserved(turns)?;
    if tools.tools.iter().any(|t| t.to_string().contains(RESERVED)) {
        return Err(EngineError::Input(
            "a tool's definition contains a reserved private-use character".into(),
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
    // The calls are enforced in the server's format: the template must teach that one
    // (`<tool_call>` alone is not enough: Qwen3-Coder's holds XML in it).
    if !rendered.contains(tool_call::OPEN.trim_end_matches('"')) {
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
    // Python's other arguments: the defaults are what is written here anyway.
    for ignored in ["ensure_ascii", "sort_keys", "separators"] {
        let _: Option<minijinja::Value> = kwargs.get(ignored)?;
    }
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
    Ok(minijinja::Value::from_safe_string(format!(
        "{JSON_OPEN}{}{JSON_CLOSE}",
        String::from_utf8_lossy(&out)
    )))
}

/// Python's default `json.dumps` separators.
struct Spaced;

/// `", "` before every item but the first (of an array, or an object's keys).
fn item_separator<W: ?Sized + std::io::Write>(writer: &mut W, first: bool) -> std::io::Result<()> {
    if first {
        Ok(())
    } else {
        writer.write_all(b", ")
    }
}

impl serde_json::ser::Formatter for Spaced {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        item_separator(writer, first)
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        item_separator(writer, first)
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
        assert_eq!(content.len(), 3, "{content:?}");
        assert_eq!((content[0], content[2]), ("Be brief.", "Weather in Paris?"));
        // The tool's definition is content too: its text cannot become special tokens.
        assert!(
            content[1].starts_with(r#"{"type": "function""#),
            "{content:?}"
        );
    }

    #[test]
    fn a_template_teaching_another_call_syntax_gets_the_generic_section() {
        // Qwen3-Coder's calls are XML inside `<tool_call>`: not what the grammar enforces.
        let coder = include_str!("../tests/templates/qwen3-coder.jinja");
        let turns = [ChatTurn::new("user", "Weather in Paris?")];
        assert_eq!(
            render_with_tools(coder, &turns, &weather(), ("", "")).unwrap(),
            None
        );
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
