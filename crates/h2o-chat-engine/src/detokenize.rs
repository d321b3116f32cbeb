//! Incremental detokenization that never emits half a UTF-8 character.
//!
//! A byte-level BPE token can end in the middle of a multi-byte character (an emoji is often
//! two or three tokens). TGI holds such bytes back and sends them with a later token, so a
//! token's `text` may be empty (§b.2). [`TextAssembler`] does the same.

/// Turns token bytes into text pieces, holding back an incomplete UTF-8 tail.
#[derive(Debug, Default)]
pub struct TextAssembler {
    pending: Vec<u8>,
}

impl TextAssembler {
    /// Adds a token's bytes and returns the text that is now complete (possibly empty).
    /// Bytes that can never become valid UTF-8 are replaced by U+FFFD.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(text) => {
                    out.push_str(text);
                    self.pending.clear();
                    return out;
                }
                Err(err) => {
                    let valid = err.valid_up_to();
                    // SAFETY-free: the prefix up to valid_up_to is valid UTF-8 by definition.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match err.error_len() {
                        // Incomplete at the end: keep the tail for the next token.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Ends the text: whatever is still held back is flushed lossily.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emoji_split_over_three_tokens_is_held_back() {
        let bytes = "👋".as_bytes();
        let mut text = TextAssembler::default();
        assert_eq!(text.push(&bytes[..1]), "");
        assert_eq!(text.push(&bytes[1..3]), "");
        assert_eq!(text.push(&bytes[3..]), "👋");
    }

    #[test]
    fn complete_prefix_is_emitted_at_once() {
        let mut text = TextAssembler::default();
        let mut bytes = b"ab".to_vec();
        bytes.extend_from_slice(&"é".as_bytes()[..1]);
        assert_eq!(text.push(&bytes), "ab");
        assert_eq!(text.push(&"é".as_bytes()[1..]), "é");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut text = TextAssembler::default();
        assert_eq!(text.push(b"a\xffb"), "a\u{FFFD}b");
        assert_eq!(text.push(b"\xe2\x82"), "");
        assert_eq!(text.finish(), "\u{FFFD}");
    }
}
