//! Turning an HTTP reply into success or a typed [`Error`] (§f "Client reporting").
//!
//! Bodies of error replies are read with a cap: a hostile server cannot make the client
//! buffer an endless error page.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Response, StatusCode, header};

use crate::error::{Error, Step, TimeoutKind};

/// How much of an error body is read.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// How much of a plain-text error body is quoted in the message.
const MESSAGE_LIMIT: usize = 500;
/// How much of a JSON success body (`conversationId`) is read.
pub(crate) const JSON_BODY_LIMIT: usize = 64 * 1024;

/// Maps a transport failure, telling a connect timeout from other failures.
pub(crate) fn transport(step: Step, url: &str, source: reqwest::Error, timeout: Duration) -> Error {
    if source.is_timeout() {
        let kind = if source.is_connect() {
            TimeoutKind::Connect
        } else {
            TimeoutKind::Request
        };
        return Error::Timeout {
            step,
            url: url.into(),
            kind,
            after: timeout,
            partial: String::new(),
        };
    }
    Error::Transport {
        step,
        url: url.into(),
        source,
    }
}

/// Reads at most `limit` bytes of a body; `None` when it is longer.
pub(crate) async fn read_capped(
    response: Response,
    limit: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// The error for a reply whose status is not the success the step expects. The body is
/// read within `deadline`: a server that sends an error status and then stalls still gets
/// its status reported.
pub(crate) async fn status_error(
    step: Step,
    url: &str,
    response: Response,
    deadline: Duration,
) -> Error {
    let status = response.status();
    let retry_after = retry_after(&response);
    let read = tokio::time::timeout(deadline, read_capped(response, ERROR_BODY_LIMIT)).await;
    let message = match read {
        Ok(Ok(Some(body))) => message_of(&body),
        Ok(Ok(None)) => format!("(error body larger than {ERROR_BODY_LIMIT} bytes)"),
        Ok(Err(err)) => format!("(error body unreadable: {err})"),
        Err(_) => format!(
            "{} (the error body did not arrive within {} s)",
            status.canonical_reason().unwrap_or(""),
            deadline.as_secs_f64()
        ),
    };
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("").to_string()
    } else {
        message
    };
    let url = url.to_string();
    match status {
        StatusCode::TOO_MANY_REQUESTS => Error::RateLimited {
            step,
            url,
            retry_after,
            message,
        },
        StatusCode::FORBIDDEN | StatusCode::METHOD_NOT_ALLOWED => Error::Session {
            step,
            url,
            status: status.as_u16(),
            message,
        },
        _ => Error::Http {
            step,
            url,
            status: status.as_u16(),
            message,
        },
    }
}

/// `Retry-After` in seconds. (The HTTP-date form is not used by chat-ui or TGI.)
fn retry_after(response: &Response) -> Option<Duration> {
    let value = response.headers().get(header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The server's words in an error body (§f): JSON `message`, else `error` (a string), else
/// `error.message` (the settings action's shape), else the trimmed text, cut.
pub(crate) fn message_of(body: &[u8]) -> String {
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) {
        let found = json
            .get("message")
            .and_then(|v| v.as_str())
            .or_else(|| json.get("error").and_then(|v| v.as_str()))
            .or_else(|| {
                json.get("error")
                    .and_then(|e| e.get("message"))
                    .and_then(|v| v.as_str())
            });
        if let Some(found) = found {
            return found.to_string();
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(MESSAGE_LIMIT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::message_of;

    #[test]
    fn message_comes_from_message_error_or_error_message_or_text() {
        assert_eq!(
            message_of(br#"{"message":"Conversation not found"}"#),
            "Conversation not found"
        );
        assert_eq!(
            message_of(br#"{"error":"You need to accept the welcome modal first"}"#),
            "You need to accept the welcome modal first"
        );
        assert_eq!(
            message_of(br#"{"type":"error","error":{"message":"Internal Error"}}"#),
            "Internal Error"
        );
        assert_eq!(
            message_of(b"  Non-JSON form requests need to have a referer\n"),
            "Non-JSON form requests need to have a referer"
        );
        let long = "x".repeat(2000);
        assert_eq!(message_of(long.as_bytes()).chars().count(), 501);
    }
}
