//! How `inputs` is built from messages (§e): the two formats the seeds used.
//!
//! ```
//! use h2o_chat::{Message, prompt};
//!
//! let messages = [Message::system("Be brief."), Message::user("Hi")];
//! assert_eq!(prompt::format_prompt(&messages).unwrap(), "System: Be brief.\nUser: Hi\nAssistant:");
//! assert_eq!(prompt::format_prompt(&[Message::user("Hi")]).unwrap(), "Hi");
//! ```

use crate::Message;

/// The fixed first line of the streaming legacy format (§e.2 v1). The typo "beween," is
/// what the service saw, so it stays.
pub const LEGACY_INSTRUCTION: &str = "instruction: this is a conversation beween, a user and an AI assistant, respond to the latest message, referring to the conversation if needed\n";

/// Why no prompt could be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    #[error("no messages: a prompt needs at least one message")]
    NoMessages,
}

/// §e.1, the async provider's `format_prompt`: one message is sent as its bare content; several
/// become `Role: content` lines (role as Python's `str.capitalize`) ending with `\nAssistant:`.
pub fn format_prompt(messages: &[Message]) -> Result<String, PromptError> {
    match messages {
        [] => Err(PromptError::NoMessages),
        [only] => Ok(only.content.clone()),
        many => {
            let capacity = many
                .iter()
                .map(|m| m.role.len() + m.content.len() + 3)
                .sum::<usize>()
                + 11;
            let mut prompt = String::with_capacity(capacity);
            for message in many {
                prompt.push_str(&capitalize(&message.role));
                prompt.push_str(": ");
                prompt.push_str(&message.content);
                prompt.push('\n');
            }
            prompt.push_str("Assistant:");
            Ok(prompt)
        }
    }
}

/// §e.2 v1 (2023-06-24, streaming), the prompt of seed 001: the instruction line, then
/// `role: content\n` for every message with the role as given, then `assistant:`.
pub fn legacy_prompt(messages: &[Message]) -> Result<String, PromptError> {
    if messages.is_empty() {
        return Err(PromptError::NoMessages);
    }
    let mut prompt = String::from(LEGACY_INSTRUCTION);
    push_role_lines(&mut prompt, messages);
    prompt.push_str("assistant:");
    Ok(prompt)
}

/// §e.2 v2 (2023-07-10 to 2023-08-27): the same lines without the instruction, ending with
/// `assistant: ` (the trailing space is chat-ui's to trim).
pub fn legacy_prompt_v2(messages: &[Message]) -> Result<String, PromptError> {
    if messages.is_empty() {
        return Err(PromptError::NoMessages);
    }
    let mut prompt = String::new();
    push_role_lines(&mut prompt, messages);
    prompt.push_str("assistant: ");
    Ok(prompt)
}

fn push_role_lines(prompt: &mut String, messages: &[Message]) {
    for message in messages {
        prompt.push_str(&message.role);
        prompt.push_str(": ");
        prompt.push_str(&message.content);
        prompt.push('\n');
    }
}

/// Python's `str.capitalize`: the first character in title case, all others in lower case.
///
/// Title case differs from upper case for characters whose upper case is several letters
/// (`ß` → `Ss`, `ﬁ` → `Fi`) and for the four Latin digraphs (`ǆ` → `ǅ`).
pub fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    let Some(first) = chars.next() else {
        return String::new();
    };
    let mut out = String::with_capacity(word.len());
    match first {
        'Ǆ' | 'ǅ' | 'ǆ' => out.push('ǅ'),
        'Ǉ' | 'ǈ' | 'ǉ' => out.push('ǈ'),
        'Ǌ' | 'ǋ' | 'ǌ' => out.push('ǋ'),
        'Ǳ' | 'ǲ' | 'ǳ' => out.push('ǲ'),
        _ => {
            // Title case of a multi-letter upper case: upper up to the first cased letter,
            // lower after it (`ß` → `Ss`, `ŉ` → `ʼN`).
            let mut seen_cased = false;
            for c in first.to_uppercase() {
                if seen_cased {
                    out.extend(c.to_lowercase());
                } else {
                    out.push(c);
                    seen_cased = c.is_uppercase() || c.is_lowercase();
                }
            }
        }
    }
    out.push_str(&chars.as_str().to_lowercase());
    out
}

/// Which of the seeds' prompt formats builds `inputs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PromptFormat {
    /// §e.1 `format_prompt`, the async provider's (seed 000). The default.
    #[default]
    FormatPrompt,
    /// §e.2 v1, the streaming legacy form with its instruction line (seed 001).
    Legacy,
    /// §e.2 v2, the later non-streaming legacy form.
    LegacyV2,
}

impl PromptFormat {
    /// Builds `inputs` from the messages.
    pub fn build(self, messages: &[Message]) -> Result<String, PromptError> {
        match self {
            PromptFormat::FormatPrompt => format_prompt(messages),
            PromptFormat::Legacy => legacy_prompt(messages),
            PromptFormat::LegacyV2 => legacy_prompt_v2(messages),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_prompt_examples_of_section_e1() {
        assert_eq!(format_prompt(&[Message::user("Hi")]).unwrap(), "Hi");
        assert_eq!(
            format_prompt(&[Message::system("Be brief."), Message::user("Hi")]).unwrap(),
            "System: Be brief.\nUser: Hi\nAssistant:"
        );
    }

    #[test]
    fn format_prompt_single_message_is_content_unchanged_whatever_its_role() {
        assert_eq!(
            format_prompt(&[Message::system("  keep\nme  ")]).unwrap(),
            "  keep\nme  "
        );
    }

    #[test]
    fn format_prompt_content_is_verbatim_with_newlines() {
        let messages = [Message::user("a\nb"), Message::new("GPT4", "c")];
        assert_eq!(
            format_prompt(&messages).unwrap(),
            "User: a\nb\nGpt4: c\nAssistant:"
        );
    }

    #[test]
    fn zero_messages_is_an_error() {
        assert_eq!(format_prompt(&[]), Err(PromptError::NoMessages));
        assert_eq!(legacy_prompt(&[]), Err(PromptError::NoMessages));
    }

    #[test]
    fn legacy_v1_has_the_instruction_line_and_every_message() {
        assert_eq!(
            legacy_prompt(&[Message::user("Hi")]).unwrap(),
            format!("{LEGACY_INSTRUCTION}user: Hi\nassistant:")
        );
        assert!(LEGACY_INSTRUCTION.contains("beween,"));
    }

    #[test]
    fn legacy_v2_example_of_section_e2() {
        assert_eq!(
            legacy_prompt_v2(&[Message::system("Be brief."), Message::user("Hi")]).unwrap(),
            "system: Be brief.\nuser: Hi\nassistant: "
        );
    }

    /// Expected values were printed by CPython 3.11's `str.capitalize`.
    #[test]
    fn capitalize_matches_python() {
        for (input, expected) in [
            ("user", "User"),
            ("SYSTEM", "System"),
            ("gpt4", "Gpt4"),
            ("ßig", "Ssig"),
            ("ǆx", "ǅx"),
            ("", ""),
            ("émile", "Émile"),
            ("ΣΑΣ", "Σας"),
            ("ﬁre", "Fire"),
            ("1abc", "1abc"),
            ("İSTANBUL", "İstanbul"),
            ("ŉa", "ʼNa"),
            (" user", " user"),
        ] {
            assert_eq!(capitalize(input), expected, "{input:?}");
        }
    }
}
