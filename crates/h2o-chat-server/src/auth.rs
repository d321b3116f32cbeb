//! `--api-key`: every route that generates or reads conversations requires
//! `Authorization: Bearer <key>` (or Anthropic's `x-api-key: <key>`), compared in constant
//! time.
//!
//! Guarded: TGI's `/generate`, `/generate_stream`, `POST /`; chat-ui's `/settings` and
//! `/conversation…`; OpenAI's `/v1/…`. Open: `GET /` (the page, which asks for the key),
//! `/info`, `/health`, `/metrics` — they generate nothing and show no conversation.
//!
//! Each front refuses in its own shape (its `guard`): TGI `{"error", "error_type":
//! "authentication"}`, chat-ui's hook format, OpenAI's error object — all through
//! [`challenge`].

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;

use h2o_chat_engine::CacheScope;

use crate::config::ServerConfig;

/// What a refused request is told.
pub const KEY_MESSAGE: &str = "Incorrect API key provided: send `Authorization: Bearer <key>`.";

/// Compares without an early exit, so timing does not reveal a prefix of the key.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        difference |= usize::from(x ^ y);
    }
    difference == 0
}

/// The key a request presents: `Authorization: Bearer KEY`, or Anthropic's `x-api-key`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|key| !key.is_empty())
}

/// Whether the request carries the configured key (always, when none is configured).
pub fn is_authorized(config: &ServerConfig, headers: &HeaderMap) -> bool {
    let Some(key) = &config.api_key else {
        return true;
    };
    let given = presented_key(headers).unwrap_or("");
    constant_time_eq(given.as_bytes(), key.as_bytes())
}

/// The prompt-cache scope of a request that names no other: its bearer key, else the
/// anonymous scope.
pub fn key_scope(headers: &HeaderMap) -> CacheScope {
    presented_key(headers).map_or_else(CacheScope::anonymous, |key| CacheScope::of("key", key))
}

/// A refusal, with the `WWW-Authenticate: Bearer` challenge.
pub fn challenge(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn keys_compare_in_constant_time_and_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
