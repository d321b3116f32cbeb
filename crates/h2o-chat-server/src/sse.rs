//! Server-sent events as TGI writes them (§b.1): `data:` + compact JSON + `\n\n` per event,
//! and `:\n\n` as the keep-alive comment.

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;

/// The keep-alive comment (§b.1).
pub const KEEP_ALIVE: &[u8] = b":\n\n";

/// `data:` + compact JSON + `\n\n` (§b.1).
pub fn frame<T: serde::Serialize>(event: &T) -> Bytes {
    let mut line = Vec::with_capacity(160);
    line.extend_from_slice(b"data:");
    // Serialising these plain structs cannot fail.
    if serde_json::to_writer(&mut line, event).is_err() {
        line.truncate(5);
        line.extend_from_slice(br#"{"error":"serialization failed","error_type":"generation"}"#);
    }
    line.extend_from_slice(b"\n\n");
    Bytes::from(line)
}

/// `data: ` + JSON + `\n\n`: the OpenAI flavour, with the space its clients expect.
pub fn spaced_frame<T: serde::Serialize>(event: &T) -> Bytes {
    let mut line = Vec::with_capacity(256);
    line.extend_from_slice(b"data: ");
    // Serialising these plain structs cannot fail.
    if serde_json::to_writer(&mut line, event).is_err() {
        line.truncate(6);
        line.extend_from_slice(
            br#"{"error":{"message":"serialization failed","type":"server_error"}}"#,
        );
    }
    line.extend_from_slice(b"\n\n");
    Bytes::from(line)
}

/// `event: NAME` + `data: ` + JSON + `\n\n`: Anthropic's and the Responses API's flavour,
/// whose clients dispatch on the event name.
pub fn named_frame<T: serde::Serialize>(name: &str, event: &T) -> Bytes {
    let mut line = Vec::with_capacity(256);
    line.extend_from_slice(b"event: ");
    line.extend_from_slice(name.as_bytes());
    line.extend_from_slice(b"\ndata: ");
    let start = line.len();
    // Serialising these plain structs cannot fail.
    if serde_json::to_writer(&mut line, event).is_err() {
        line.truncate(start);
        line.extend_from_slice(
            br#"{"type":"error","error":{"type":"api_error","message":"serialization failed"}}"#,
        );
    }
    line.extend_from_slice(b"\n\n");
    Bytes::from(line)
}

/// A `text/event-stream` response, uncached and unbuffered by proxies.
pub fn response(body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use h2o_chat_protocol::{ErrorEvent, StreamResponse, Token};

    #[test]
    fn frames_are_data_compact_json_and_two_line_feeds() {
        let bytes = frame(&ErrorEvent {
            error: "Model is overloaded".into(),
            error_type: Some("overloaded".into()),
        });
        assert_eq!(
            &bytes[..],
            b"data:{\"error\":\"Model is overloaded\",\"error_type\":\"overloaded\"}\n\n"
        );
    }

    #[test]
    fn non_ascii_is_raw_utf8_and_newlines_are_escaped() {
        let bytes = frame(&StreamResponse {
            top_tokens: Vec::new(),
            token: Token {
                id: 1,
                text: "é\n".into(),
                logprob: None,
                special: false,
            },
            generated_text: None,
            details: None,
        });
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            "data:{\"token\":{\"id\":1,\"text\":\"é\\n\",\"logprob\":null,\"special\":false},\"generated_text\":null,\"details\":null}\n\n"
        );
    }
}
