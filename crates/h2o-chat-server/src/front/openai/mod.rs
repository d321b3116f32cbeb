//! The OpenAI-compatible API: `GET /v1/models`, `POST /v1/chat/completions` (stream and
//! not), `POST /v1/completions`, and the Responses API, `POST /v1/responses`
//! ([`responses`]).
//!
//! - [`wire`]: the requests and replies as types.
//! - [`request`]: a request → a plan (OpenAI's options in the engine's terms; tool calls
//!   are [`crate::tools`]); [`logprobs`]: tokens as OpenAI's log-probabilities.
//! - [`reply`]: a run → completion objects or streamed chunks; [`error`]: OpenAI's error
//!   object, for refusals and failures.
//! - [`routes`]: the handlers and the API-key guard.

pub mod error;
pub mod logprobs;
pub mod reply;
pub mod request;
pub mod responses;
pub mod routes;
pub mod wire;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{any, get, post};

use crate::AppState;

/// The paths this front answers, for people (the `serve` banner).
pub const PATHS: &[&str] = &[
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
];

/// The OpenAI routes, behind the API-key guard.
pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/v1/models", get(routes::models))
        .route("/v1/chat/completions", post(routes::chat_completions))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/responses", post(responses::routes::create))
        .route(
            "/v1/responses/{id}",
            get(responses::routes::stored).delete(responses::routes::stored),
        )
        .route("/v1/{*rest}", any(routes::unknown))
        .route_layer(from_fn_with_state(state.clone(), routes::guard))
}
