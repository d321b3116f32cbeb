//! The model's special tokens, for tokenising template markup (where a special-token string
//! is the token) apart from message content (where it is only text), exactly as llama.cpp
//! splits a prompt at its special tokens.

use h2o_chat_engine::{Piece, Prompt};
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token_type::LlamaTokenAttr;

/// One special token: its text, id, and whether llama.cpp strips white space around it.
struct Special {
    text: String,
    token: LlamaToken,
    lstrip: bool,
    rstrip: bool,
}

/// The model's special tokens, for tokenising markup (where they count) apart from
/// content (where they are text).
pub(crate) struct Vocabulary {
    /// Longest first, so the longest match wins (llama.cpp's order).
    specials: Vec<Special>,
    /// Whether a byte can start a special token (a quick test before the search).
    starts: [bool; 256],
    add_bos: Option<LlamaToken>,
}

impl Vocabulary {
    pub(crate) fn of(model: &LlamaModel) -> Self {
        let vocab = model.vocab();
        let mut specials: Vec<Special> = vocab
            .tokens()
            .filter_map(|token| {
                // The same set llama.cpp splits a prompt at.
                let attr = vocab.attr(token);
                let special = attr.contains(LlamaTokenAttr::Control)
                    || attr.contains(LlamaTokenAttr::UserDefined)
                    || attr.contains(LlamaTokenAttr::Unknown);
                if !special {
                    return None;
                }
                let text = vocab.text(token)?.to_str().ok()?.to_string();
                (!text.is_empty()).then_some(Special {
                    text,
                    token,
                    lstrip: attr.contains(LlamaTokenAttr::LStrip),
                    rstrip: attr.contains(LlamaTokenAttr::RStrip),
                })
            })
            .collect();
        specials.sort_by(|a, b| b.text.len().cmp(&a.text.len()).then(a.text.cmp(&b.text)));
        let mut starts = [false; 256];
        for special in &specials {
            starts[usize::from(special.text.as_bytes()[0])] = true;
        }
        Vocabulary {
            specials,
            starts,
            add_bos: vocab.should_add_bos().then(|| vocab.bos()),
        }
    }

    /// The special token that starts `text`, if any.
    fn special_at(&self, text: &str) -> Option<&Special> {
        let first = *text.as_bytes().first()?;
        if !self.starts[usize::from(first)] {
            return None;
        }
        self.specials
            .iter()
            .find(|special| text.starts_with(special.text.as_str()))
    }

    /// Tokenises a prompt: special-token strings in markup become their tokens; everything
    /// between them — markup text and content alike — is tokenised as plain text, one run at
    /// a time, exactly as llama.cpp splits a prompt at its special tokens. Special-token
    /// strings inside content are broken up so they stay text.
    pub(crate) fn tokenize(&self, model: &LlamaModel, prompt: &Prompt) -> Vec<LlamaToken> {
        let mut tokens: Vec<LlamaToken> = self.add_bos.into_iter().collect();
        let mut run = String::new();
        // After a special token that strips white space to its right.
        let mut strip_next = false;
        for piece in prompt.pieces() {
            match piece {
                Piece::Content(text) => {
                    let text = if std::mem::take(&mut strip_next) {
                        text.trim_start()
                    } else {
                        text
                    };
                    run.push_str(text);
                }
                Piece::Markup(text) => {
                    let mut rest = text.as_str();
                    if std::mem::take(&mut strip_next) {
                        rest = rest.trim_start();
                    }
                    while let Some(c) = rest.chars().next() {
                        if let Some(special) = self.special_at(rest) {
                            if special.lstrip {
                                run.truncate(run.trim_end().len());
                            }
                            if !run.is_empty() {
                                tokens.extend(self.plain(model, &run));
                                run.clear();
                            }
                            tokens.push(special.token);
                            rest = &rest[special.text.len()..];
                            if special.rstrip {
                                rest = rest.trim_start();
                                strip_next = rest.is_empty();
                            }
                        } else {
                            run.push(c);
                            rest = &rest[c.len_utf8()..];
                        }
                    }
                }
            }
        }
        if !run.is_empty() {
            tokens.extend(self.plain(model, &run));
        }
        tokens
    }

    /// Plain text to tokens, with no special token recognised. llama.cpp matches
    /// user-defined tokens even with special parsing off, so text that contains any special
    /// string is cut inside it first: its characters are tokenised, never the token.
    fn plain(&self, model: &LlamaModel, text: &str) -> Vec<LlamaToken> {
        let vocab = model.vocab();
        let mut tokens = Vec::new();
        let mut start = 0;
        let mut at = 0;
        while at < text.len() {
            if let Some(special) = self.special_at(&text[at..]) {
                // Cut after the special string's first character.
                let cut = at + text[at..].chars().next().map_or(1, char::len_utf8);
                tokens.extend(vocab.tokenize(&text.as_bytes()[start..cut], false, false));
                start = cut;
                at += special.text.len();
                continue;
            }
            at += text[at..].chars().next().map_or(1, char::len_utf8);
        }
        tokens.extend(vocab.tokenize(&text.as_bytes()[start..], false, false));
        tokens
    }
}
