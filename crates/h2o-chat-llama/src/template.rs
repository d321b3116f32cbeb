//! A chat rendered with the model's own template (through llama.cpp), with message content
//! kept apart from markup: the template is rendered around markers, and what stands at each
//! marker is content. Content is then tokenised as plain text, so a message that spells a
//! special token cannot forge a turn (`vocabulary.rs`).

use h2o_chat_engine::{ChatTurn, EngineError, Prompt};
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};

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
    let mut prompt = Prompt::new();
    let mut rest = rendered.as_str();
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
