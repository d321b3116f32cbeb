//! A hand-written reader for the one event shape that makes up almost every stream.
//!
//! TGI writes each token event with serde in a fixed order (§b.2):
//! `{"token":{"id":N,"text":"…","logprob":X|null,"special":B},"generated_text":null,"details":null}`.
//! Matching that exact byte shape is about three times faster than a general JSON parse (see
//! BENCHMARKS.md), and the decoder spends nearly all its time there. Anything that deviates by
//! one byte — extra fields, other order, whitespace, the final event, an error — returns `None`
//! and goes through `serde_json`, so this path can only be faster, never different: numbers
//! are read with JSON's own grammar (no `007`, `+1` or `1.`; the log-probability through
//! serde_json itself), and a property test that also generates such non-JSON spellings checks
//! it agrees with the general parser.

use crate::event::Event;
use crate::wire::Token;

const HEAD: &[u8] = br#"{"token":{"id":"#;
const TEXT: &[u8] = br#","text":""#;
const LOGPROB: &[u8] = br#","logprob":"#;
const SPECIAL: &[u8] = br#","special":"#;
const TAIL: &[u8] = br#"},"generated_text":null,"details":null}"#;

/// Reads a non-final token event in TGI's exact byte shape, or returns `None`.
pub(crate) fn parse_token_event(data: &[u8]) -> Option<Event> {
    let rest = data.strip_prefix(HEAD)?;
    let (id, rest) = split_at_byte(rest, b',')?;
    let id = json_u32(id)?;
    let rest = rest.strip_prefix(TEXT)?;
    let (text, rest) = json_string(rest)?;
    let rest = rest.strip_prefix(LOGPROB)?;
    let (logprob, rest) = split_at_byte(rest, b',')?;
    let logprob = if logprob == b"null" {
        None
    } else {
        // serde_json's own number reader: the same grammar and the same rounding.
        Some(serde_json::from_slice::<f32>(logprob).ok()?)
    };
    let rest = rest.strip_prefix(SPECIAL)?;
    let (special, rest) = if let Some(rest) = rest.strip_prefix(b"true") {
        (true, rest)
    } else {
        (false, rest.strip_prefix(b"false")?)
    };
    if rest != TAIL {
        return None;
    }
    Some(Event::Token(Token {
        id,
        text,
        logprob,
        special,
    }))
}

/// Splits before the first `byte`, leaving it at the start of the rest.
fn split_at_byte(bytes: &[u8], byte: u8) -> Option<(&[u8], &[u8])> {
    let at = memchr::memchr(byte, bytes)?;
    Some(bytes.split_at(at))
}

/// A JSON integer (`0` or digits without a leading zero; no sign) that fits a `u32`.
fn json_u32(bytes: &[u8]) -> Option<u32> {
    let digits = !bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit);
    if !digits || (bytes.len() > 1 && bytes[0] == b'0') {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// Reads a JSON string body that starts right after its opening quote. Returns the decoded
/// text and the bytes after the closing quote. Strings with escapes are rare (newlines,
/// quotes); they are handed to serde_json, which knows every escape rule.
fn json_string(bytes: &[u8]) -> Option<(String, &[u8])> {
    let mut at = 0;
    let mut escaped = false;
    loop {
        let found = at + memchr::memchr2(b'"', b'\\', &bytes[at..])?;
        if bytes[found] == b'\\' {
            escaped = true;
            at = found + 2;
            if at > bytes.len() {
                return None;
            }
            continue;
        }
        let body = &bytes[..found];
        let rest = &bytes[found + 1..];
        if escaped {
            // Include the quotes around the body so serde reads exactly this string.
            let mut quoted = Vec::with_capacity(body.len() + 2);
            quoted.push(b'"');
            quoted.extend_from_slice(body);
            quoted.push(b'"');
            let text: String = serde_json::from_slice(&quoted).ok()?;
            return Some((text, rest));
        }
        // Control characters must be escaped in JSON; leave such input to serde's verdict.
        if body.iter().any(|&b| b < 0x20) {
            return None;
        }
        let text = std::str::from_utf8(body).ok()?;
        return Some((text.to_owned(), rest));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn via_serde(data: &[u8]) -> Option<Event> {
        #[derive(serde::Deserialize)]
        struct Raw {
            token: Token,
        }
        serde_json::from_slice::<Raw>(data)
            .ok()
            .map(|r| Event::Token(r.token))
    }

    #[test]
    fn reads_the_literal_token_event() {
        let data = br#"{"token":{"id":23090,"text":"Hello","logprob":-0.4873,"special":false},"generated_text":null,"details":null}"#;
        assert_eq!(parse_token_event(data), via_serde(data));
        assert!(parse_token_event(data).is_some());
    }

    #[test]
    fn escapes_go_through_serde() {
        let data = br#"{"token":{"id":5,"text":"a\"b\n\u00e9\ud83d\ude00","logprob":null,"special":false},"generated_text":null,"details":null}"#;
        let Some(Event::Token(token)) = parse_token_event(data) else {
            panic!("fast path refused a valid event")
        };
        assert_eq!(token.text, "a\"b\né😀");
    }

    #[test]
    fn anything_else_is_left_to_serde() {
        for data in [
            &br#"{"token":{"id":1,"text":"a","logprob":0,"special":false},"generated_text":"a","details":null}"#[..],
            br#"{"token": {"id":1,"text":"a","logprob":0,"special":false},"generated_text":null,"details":null}"#,
            br#"{"token":{"id":-1,"text":"a","logprob":0,"special":false},"generated_text":null,"details":null}"#,
            br#"{"token":{"id":1,"text":"a","logprob":NaN,"special":false},"generated_text":null,"details":null}"#,
            br#"{"token":{"id":1,"text":"a","logprob":0,"special":false},"generated_text":null,"details":null} "#,
            br#"{"token":{"id":1,"text":"a\","logprob":0,"special":false},"generated_text":null,"details":null}"#,
            br#"{"token":{"id":007,"text":"a","logprob":0,"special":false},"generated_text":null,"details":null}"#,
            br#"{"token":{"id":1,"text":"a","logprob":+1,"special":false},"generated_text":null,"details":null}"#,
            br#"{"token":{"id":1,"text":"a","logprob":1.,"special":false},"generated_text":null,"details":null}"#,
        ] {
            assert_eq!(parse_token_event(data), None, "{}", String::from_utf8_lossy(data));
        }
    }
}
