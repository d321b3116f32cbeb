//! `--api-key`: every route that generates or reads conversations requires
//! `Authorization: Bearer <key>`, compared in constant time.
//!
//! Guarded: TGI's `/generate`, `/generate_stream`, `POST /`; chat-ui's `/settings` and
//! `/conversation…`; OpenAI's `/v1/…`. Open: `GET /` (the page, which asks for the key),
//! `/info`, `/health`, `/metrics` — they generate nothing and show no conversation.
//!
//! Each family refuses in its own shape: TGI `{"error", "error_type": "authentication"}`,
//! chat-ui's hook format, OpenAI's error object.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;

const MESSAGE: &str = "Incorrect API key provided: send `Authorization: Bearer <key>`.";

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

/// Whether the request carries the configured key (always, when none is configured).
pub fn is_authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(key) = &state.config().api_key else {
        return true;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    constant_time_eq(given.trim().as_bytes(), key.as_bytes())
}

fn challenge(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

/// The guard for TGI's routes.
pub async fn tgi(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if is_authorized(&state, request.headers()) {
        return next.run(request).await;
    }
    challenge(
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({"error": MESSAGE, "error_type": "authentication"})),
        )
            .into_response(),
    )
}

/// The guard for chat-ui's routes, answering in the hook format (§a.6).
pub async fn chat_ui(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if is_authorized(&state, request.headers()) {
        return next.run(request).await;
    }
    challenge(crate::wire::chat_ui::hook_error(
        request.headers(),
        StatusCode::UNAUTHORIZED,
        MESSAGE,
    ))
}

/// The guard for the OpenAI routes.
pub async fn openai(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if is_authorized(&state, request.headers()) {
        return next.run(request).await;
    }
    challenge(crate::wire::openai::ApiError::invalid_api_key(MESSAGE).into_response())
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
