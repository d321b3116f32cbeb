//! Tokens and their alternatives as OpenAI's `logprobs`: per token of the answer its text,
//! log-probability and bytes, and the likeliest alternatives at its position — the chat
//! shape (`content: [{token, logprob, bytes, top_logprobs}]`) and the legacy completions
//! shape (parallel lists). The values are the engine's: the chosen token's log-probability
//! under the distribution it was drawn from, and the alternatives' under the same one.
//!
//! The tokens' texts join to the answer's text (a character split across tokens is given
//! with the token that completes it). Special tokens (the end of the answer) are not listed.
//!
//! ```
//! use h2o_chat_engine::Token;
//! use h2o_chat_server::front::openai::logprobs::chat_entry;
//!
//! let token = Token { id: 7, text: "Hi".into(), logprob: Some(-0.5), special: false };
//! let entry = chat_entry(&token, &[token.clone()]).unwrap();
//! assert_eq!((entry.token.as_str(), entry.logprob, entry.bytes.as_slice()), ("Hi", -0.5, &b"Hi"[..]));
//! assert_eq!(entry.top_logprobs.len(), 1);
//! ```

use h2o_chat_engine::Token;
use serde_json::Value;

use crate::front::openai::wire::{ChatLogprobs, TextLogprobs, TokenLogprob, TopLogprob};

/// What a request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Asked {
    /// Log-probabilities at all.
    pub on: bool,
    /// Alternatives per token.
    pub top: u8,
}

/// A log-probability as OpenAI writes it: finite (a certain token is 0, an impossible one
/// the lowest `f32`, never `-inf`, which is not JSON).
fn finite(logprob: Option<f32>) -> f32 {
    match logprob {
        Some(lp) if lp.is_finite() => lp,
        Some(lp) if lp > 0.0 => 0.0,
        _ => f32::MIN,
    }
}

/// A chat entry for one token of the answer; `None` for a special token.
pub fn chat_entry(token: &Token, alternatives: &[Token]) -> Option<TokenLogprob> {
    if token.special {
        return None;
    }
    Some(TokenLogprob {
        token: token.text.clone(),
        logprob: finite(token.logprob),
        bytes: token.text.as_bytes().to_vec(),
        top_logprobs: alternatives
            .iter()
            .map(|alt| TopLogprob {
                token: alt.text.clone(),
                logprob: finite(alt.logprob),
                bytes: alt.text.as_bytes().to_vec(),
            })
            .collect(),
    })
}

/// A chat choice's `logprobs` over these tokens.
pub fn chat(tokens: &[Token], alternatives: &[Vec<Token>]) -> ChatLogprobs {
    ChatLogprobs {
        content: tokens
            .iter()
            .enumerate()
            .filter_map(|(i, token)| {
                chat_entry(token, alternatives.get(i).map_or(&[][..], Vec::as_slice))
            })
            .collect(),
        refusal: None,
    }
}

/// A text completion's `logprobs` over these tokens, the offsets counted from `offset`
/// (the characters of answer already given).
pub fn text(tokens: &[Token], alternatives: &[Vec<Token>], offset: usize) -> TextLogprobs {
    let mut logprobs = TextLogprobs::default();
    let mut at = offset;
    for (i, token) in tokens.iter().enumerate() {
        if token.special {
            continue;
        }
        logprobs.tokens.push(token.text.clone());
        logprobs.token_logprobs.push(finite(token.logprob));
        logprobs.text_offset.push(at);
        at += token.text.chars().count();
        let mut top = serde_json::Map::new();
        for alt in alternatives.get(i).map_or(&[][..], Vec::as_slice) {
            top.entry(alt.text.clone())
                .or_insert_with(|| Value::from(finite(alt.logprob)));
        }
        logprobs.top_logprobs.push(top);
    }
    logprobs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str, logprob: f32, special: bool) -> Token {
        Token {
            id: 1,
            text: text.into(),
            logprob: Some(logprob),
            special,
        }
    }

    #[test]
    fn the_answer_is_listed_without_its_end_and_offsets_count_characters() {
        let tokens = [
            token("Ça", -0.1, false),
            token(" va", -0.2, false),
            token("<|im_end|>", -0.01, true),
        ];
        let alternatives = vec![vec![token("Ça", -0.1, false), token("Ca", -2.5, false)]];
        let chat = chat(&tokens, &alternatives);
        assert_eq!(chat.content.len(), 2);
        assert_eq!(chat.content[0].top_logprobs[1].token, "Ca");
        assert!(chat.content[1].top_logprobs.is_empty());
        let text = text(&tokens, &alternatives, 10);
        assert_eq!(text.tokens, ["Ça", " va"]);
        assert_eq!(text.text_offset, [10, 12]);
        assert_eq!(text.top_logprobs[0]["Ca"], -2.5);
    }

    #[test]
    fn an_impossible_token_is_a_finite_number() {
        let entry = chat_entry(
            &Token {
                id: 1,
                text: "x".into(),
                logprob: None,
                special: false,
            },
            &[],
        )
        .unwrap();
        assert_eq!(entry.logprob, f32::MIN);
        assert!(serde_json::to_string(&entry).is_ok());
    }
}
