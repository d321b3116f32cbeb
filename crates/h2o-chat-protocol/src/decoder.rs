//! The incremental stream decoder: bytes in, [`Event`]s out (§b.5).
//!
//! It is a pure function of the bytes it is fed, with no I/O and no clock, so it can be
//! tested at every split position of a real stream, fuzzed, and benchmarked on its own.
//! Network chunks may split anywhere — inside a line, inside a UTF-8 character, between the
//! `\r` and `\n` of a CRLF — because the decoder only ever interprets *complete lines*, and
//! only as bytes until a whole event is there.
//!
//! The format is told by the first non-blank line (§b.5 step 9): `{` means the later NDJSON
//! format (§g), anything else the SSE format of TGI.
//!
//! Memory is bounded: an event (its data lines plus the line being read) larger than
//! `max_event_size` is an error, whatever the server sends.
//!
//! ```
//! use h2o_chat_protocol::{Decoder, Event};
//!
//! let mut decoder = Decoder::new(1 << 20);
//! decoder.push(b"data:{\"token\":{\"id\":1,\"text\":\"Hi\",\"logprob\":null,\"special\":false},");
//! assert_eq!(decoder.next_event().unwrap(), None); // the line is not complete yet
//! decoder.push(b"\"generated_text\":null,\"details\":null}\n\n");
//! let Some(Event::Token(token)) = decoder.next_event().unwrap() else { panic!() };
//! assert_eq!(token.text, "Hi");
//! ```

use crate::event::{Event, EventError, parse_ndjson_line, parse_sse_event};

/// Why the byte stream cannot be decoded any further.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// One event grew past the limit; the rest of the stream is not read.
    #[error("an event is larger than the limit of {limit} bytes")]
    EventTooLarge { limit: usize },
    /// An event's data could not be understood.
    #[error(transparent)]
    Event(#[from] EventError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// No non-blank line seen yet.
    Unknown,
    Sse,
    Ndjson,
}

/// Decodes a stream of bytes into events. Feed it with [`push`](Decoder::push), drain it with
/// [`next_event`](Decoder::next_event) until `Ok(None)`, and call
/// [`finish`](Decoder::finish) at end of input.
#[derive(Debug)]
pub struct Decoder {
    /// Bytes received and not yet consumed start at `buf[start]`.
    buf: Vec<u8>,
    start: usize,
    /// The data lines of the SSE event being assembled, joined with `\n`.
    data: Vec<u8>,
    has_data: bool,
    /// The previous line ended with `\r`: a `\n` right after it belongs to the same break.
    after_cr: bool,
    format: Format,
    max_event_size: usize,
    /// After an error the stream is not trustworthy; every later call repeats the error.
    failed: Option<DecodeError>,
    /// A token event whose alternatives were just yielded: it comes next.
    held: Option<Event>,
}

impl Decoder {
    /// A decoder that refuses events larger than `max_event_size` bytes.
    pub fn new(max_event_size: usize) -> Self {
        Decoder {
            buf: Vec::new(),
            start: 0,
            data: Vec::new(),
            has_data: false,
            after_cr: false,
            format: Format::Unknown,
            max_event_size,
            failed: None,
            held: None,
        }
    }

    /// Appends bytes received from the network.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        // Reclaim consumed space before growing, so the buffer stays about one event large.
        if self.start > 0 && (self.start == self.buf.len() || self.start >= self.buf.len() / 2) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete event, or `Ok(None)` when more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<Event>, DecodeError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if let Some(event) = self.held.take() {
            return Ok(Some(event));
        }
        let result = self.decode_next();
        if let Err(err) = &result {
            self.fail(err.clone());
        }
        result
    }

    /// Ends the input: returns an event still pending without its closing blank line
    /// (§b.5 step 4 asks for leniency), or `None`. Such an unterminated event is returned
    /// without its alternatives: its token is what the caller must not lose.
    pub fn finish(&mut self) -> Result<Option<Event>, DecodeError> {
        if let Some(event) = self.next_event()? {
            return Ok(Some(event));
        }
        let tail = std::mem::take(&mut self.buf);
        let tail = &tail[self.start.min(tail.len())..];
        self.start = 0;
        let result = self
            .decode_line(tail)
            .and_then(|event| match event {
                Some(event) => Ok(Some(event)),
                None => self.dispatch_sse(),
            })
            .map(|event| self.held.take().or(event));
        if let Err(err) = &result {
            self.fail(err.clone());
        }
        result
    }

    /// Bytes held that do not yet form a complete event (for memory accounting and tests).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start + self.data.len()
    }

    fn fail(&mut self, err: DecodeError) {
        self.failed = Some(err);
        self.buf = Vec::new();
        self.data = Vec::new();
        self.start = 0;
    }

    fn decode_next(&mut self) -> Result<Option<Event>, DecodeError> {
        loop {
            if self.after_cr && self.start < self.buf.len() {
                self.after_cr = false;
                if self.buf[self.start] == b'\n' {
                    self.start += 1;
                }
            }
            let pending = &self.buf[self.start..];
            let Some(end) = memchr::memchr2(b'\n', b'\r', pending) else {
                if pending.len() + self.data.len() > self.max_event_size {
                    return Err(DecodeError::EventTooLarge {
                        limit: self.max_event_size,
                    });
                }
                return Ok(None);
            };
            if end + self.data.len() > self.max_event_size {
                return Err(DecodeError::EventTooLarge {
                    limit: self.max_event_size,
                });
            }
            let line_start = self.start;
            self.after_cr = pending[end] == b'\r';
            self.start += end + 1;
            // Split the borrow: the line lives in `buf`, which decode_line does not touch.
            let buf = std::mem::take(&mut self.buf);
            let outcome = self.decode_line(&buf[line_start..line_start + end]);
            self.buf = buf;
            if let Some(event) = outcome? {
                return Ok(Some(event));
            }
        }
    }

    /// Interprets one complete line (without its line break).
    fn decode_line(&mut self, line: &[u8]) -> Result<Option<Event>, DecodeError> {
        if self.format == Format::Unknown {
            if line.iter().all(u8::is_ascii_whitespace) {
                return Ok(None);
            }
            self.format = if line.first() == Some(&b'{') {
                Format::Ndjson
            } else {
                Format::Sse
            };
        }
        match self.format {
            Format::Ndjson => {
                // The 2023-11 server pads the end with spaces and no newline.
                if line.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                Ok(parse_ndjson_line(line)?)
            }
            _ => self.decode_sse_line(line),
        }
    }

    fn decode_sse_line(&mut self, line: &[u8]) -> Result<Option<Event>, DecodeError> {
        if line.is_empty() {
            return self.dispatch_sse();
        }
        if line[0] == b':' {
            return Ok(None); // comment or keep-alive
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        if field == b"data" {
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
        }
        // `event:`, `id:`, `retry:` and unknown fields carry nothing for us.
        Ok(None)
    }

    fn dispatch_sse(&mut self) -> Result<Option<Event>, DecodeError> {
        if !self.has_data {
            return Ok(None);
        }
        self.has_data = false;
        let result = if self.data.is_empty() {
            Ok(None) // empty data: skipped (§b.5 step 4)
        } else {
            match parse_sse_event(&self.data) {
                Ok((event, top)) if top.is_empty() => Ok(Some(event)),
                Ok((event, top)) => {
                    self.held = Some(event);
                    Ok(Some(Event::Alternatives(top)))
                }
                Err(err) => Err(DecodeError::from(err)),
            }
        };
        self.data.clear();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str) -> String {
        format!(
            "{{\"token\":{{\"id\":1,\"text\":{},\"logprob\":-0.1,\"special\":false}},\"generated_text\":null,\"details\":null}}",
            serde_json::to_string(text).unwrap()
        )
    }

    fn decode_all(chunks: &[&[u8]]) -> Result<Vec<Event>, DecodeError> {
        let mut decoder = Decoder::new(1 << 20);
        let mut events = Vec::new();
        for chunk in chunks {
            decoder.push(chunk);
            while let Some(event) = decoder.next_event()? {
                events.push(event);
            }
        }
        if let Some(event) = decoder.finish()? {
            events.push(event);
        }
        Ok(events)
    }

    fn texts(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::Token(t) => t.text.clone(),
                Event::Final(f) => format!("final:{}", f.generated_text),
                Event::Error(e) => format!("error:{}", e.error),
                Event::Alternatives(top) => format!("top:{}", top.len()),
            })
            .collect()
    }

    #[test]
    fn alternatives_come_just_before_their_token() {
        let ranked = br#"data: {"token":{"id":1,"text":"a","logprob":-0.1,"special":false},"top_tokens":[{"id":1,"text":"a","logprob":-0.1,"special":false},{"id":2,"text":"b","logprob":-2.5,"special":false}],"generated_text":null,"details":null}

data: {"token":{"id":3,"text":"c","logprob":-0.2,"special":false},"generated_text":null,"details":null}

data: {"token":{"id":4,"text":"d","logprob":-0.3,"special":false},"top_tokens":[{"id":4,"text":"d","logprob":-0.3,"special":false}],"generated_text":"acd","details":null}

"#;
        let events = decode_all(&[ranked]).unwrap();
        assert_eq!(texts(&events), ["top:2", "a", "c", "top:1", "final:acd"]);
        let Event::Alternatives(top) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!((top[1].id, top[1].text.as_str()), (2, "b"));
        // The same without the closing blank line: the token is not lost.
        let cut = &ranked[..ranked.len() - 2];
        assert_eq!(
            texts(&decode_all(&[cut]).unwrap()),
            ["top:2", "a", "c", "final:acd"]
        );
    }

    #[test]
    fn crlf_and_lone_cr_line_ends() {
        let body = format!(
            "data:{}\r\n\r\ndata:{}\r\rdata: {}\n\n",
            token("a"),
            token("b"),
            token("c")
        );
        assert_eq!(
            texts(&decode_all(&[body.as_bytes()]).unwrap()),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn crlf_split_between_cr_and_lf() {
        let body = format!("data:{}\r\n\r\ndata:{}\r\n\r\n", token("a"), token("b"));
        let bytes = body.as_bytes();
        let cr = bytes.iter().position(|&b| b == b'\r').unwrap();
        let events = decode_all(&[&bytes[..=cr], &bytes[cr + 1..]]).unwrap();
        assert_eq!(texts(&events), ["a", "b"]);
    }

    #[test]
    fn data_with_one_optional_space() {
        let body = format!("data: {}\n\ndata:{}\n\n", token("a"), token("b"));
        assert_eq!(texts(&decode_all(&[body.as_bytes()]).unwrap()), ["a", "b"]);
    }

    #[test]
    fn comments_keepalives_and_other_fields_are_ignored() {
        let body = format!(
            ":\n\n: ping\nevent: message\nid: 7\nretry: 10\nfoo\ndata:{}\n\n",
            token("a")
        );
        assert_eq!(texts(&decode_all(&[body.as_bytes()]).unwrap()), ["a"]);
    }

    #[test]
    fn several_data_lines_join_with_newline() {
        let body = "data:{\"error\":\ndata:\"x\",\"error_type\":\"generation\"}\n\n";
        assert_eq!(texts(&decode_all(&[body.as_bytes()]).unwrap()), ["error:x"]);
    }

    #[test]
    fn unterminated_last_event_is_dispatched() {
        let body = format!("data:{}", token("a"));
        assert_eq!(texts(&decode_all(&[body.as_bytes()]).unwrap()), ["a"]);
    }

    #[test]
    fn token_text_containing_data_colon() {
        let body = format!("data:{}\n\n", token("data: data:{\"x\""));
        assert_eq!(
            texts(&decode_all(&[body.as_bytes()]).unwrap()),
            ["data: data:{\"x\""]
        );
    }

    #[test]
    fn utf8_split_inside_a_character() {
        let body = format!("data:{}\n\n", token("Привет 👋"));
        let bytes = body.as_bytes();
        for split in 0..bytes.len() {
            let events = decode_all(&[&bytes[..split], &bytes[split..]]).unwrap();
            assert_eq!(texts(&events), ["Привет 👋"], "split at {split}");
        }
    }

    #[test]
    fn oversized_event_is_an_error_not_memory() {
        let mut decoder = Decoder::new(1024);
        decoder.push(b"data:");
        for _ in 0..100 {
            decoder.push(&[b'x'; 100]);
            if decoder.next_event().is_err() {
                break;
            }
        }
        assert_eq!(
            decoder.next_event(),
            Err(DecodeError::EventTooLarge { limit: 1024 })
        );
        assert!(decoder.buffered() <= 1024 + 100);
    }

    #[test]
    fn ndjson_is_detected_by_its_first_line() {
        let body = b"\n{\"type\":\"status\",\"status\":\"started\"}\n{\"type\":\"stream\",\"token\":\"Hi\"}\n{\"type\":\"finalAnswer\",\"text\":\"Hi\"}\n        ";
        assert_eq!(texts(&decode_all(&[body]).unwrap()), ["Hi", "final:Hi"]);
    }

    #[test]
    fn empty_data_is_skipped() {
        let body = format!("data:\n\ndata\n\ndata:{}\n\n", token("a"));
        assert_eq!(texts(&decode_all(&[body.as_bytes()]).unwrap()), ["a"]);
    }

    #[test]
    fn errors_are_sticky() {
        let mut decoder = Decoder::new(1024);
        decoder.push(b"data:{oops\n\n");
        assert!(decoder.next_event().is_err());
        decoder.push(format!("data:{}\n\n", token("a")).as_bytes());
        assert!(decoder.next_event().is_err());
    }
}
