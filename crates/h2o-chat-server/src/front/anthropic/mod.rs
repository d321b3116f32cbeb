//! Anthropic's Messages API: `POST /v1/messages` (stream and not) and
//! `POST /v1/messages/count_tokens` — what Claude Code and Anthropic's SDKs speak.
//!
//! - [`wire`]: the requests and replies as types.
//! - [`request`]: a request → a plan (its tools are [`crate::tools`]'s grammar).
//! - [`reply`]: a run → a `message` object, or Anthropic's event stream.
//! - [`error`]: Anthropic's error object and statuses.
//! - [`routes`]: the handlers and the API-key guard (`x-api-key` or Bearer).

pub mod error;
pub mod reply;
pub mod request;
pub mod routes;
pub mod wire;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::post;

use crate::AppState;

/// The paths this front answers, for people (the `serve` banner).
pub const PATHS: &[&str] = &["/v1/messages", "/v1/messages/count_tokens"];

/// The Anthropic routes, behind the API-key guard.
pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/v1/messages", post(routes::messages))
        .route("/v1/messages/count_tokens", post(routes::count_tokens))
        .route_layer(from_fn_with_state(state.clone(), routes::guard))
}
