//! text-generation-inference's routes (§b, §c): `POST /generate`, `POST /generate_stream`,
//! `POST /` (the compat route that honours `stream`), `POST /tokenize` and `GET /info`.
//!
//! - [`request`]: the body and TGI's parameter rules → a plan.
//! - [`reply`]: `/info`; the event stream and the one-shot JSON are TGI's wire
//!   (`crate::tgi_wire`), which chat-ui relays too.
//! - [`routes`]: the handlers and the API-key guard.

pub mod reply;
pub mod request;
pub mod routes;

use axum::Router;
use axum::handler::Handler;
use axum::middleware::from_fn_with_state;
use axum::routing::{MethodRouter, get, post};

use crate::AppState;

/// The paths this front answers, for people (the `serve` banner).
pub const PATHS: &[&str] = &["/generate", "/generate_stream", "/", "/tokenize", "/info"];

/// TGI's routes but `/`, each generating one behind the API-key guard.
pub fn router(state: &AppState) -> Router<AppState> {
    let guard = from_fn_with_state(state.clone(), routes::guard);
    Router::new()
        .route("/generate", post(routes::generate.layer(guard.clone())))
        .route(
            "/generate_stream",
            post(routes::generate_stream.layer(guard.clone())),
        )
        .route("/tokenize", post(routes::tokenize.layer(guard)))
        .route("/info", get(routes::info))
}

/// `POST /`, TGI's compat route, behind the guard. `GET /` is the page's, so the server
/// merges the two on one path.
pub fn compat(state: &AppState) -> MethodRouter<AppState> {
    post(routes::compat.layer(from_fn_with_state(state.clone(), routes::guard)))
}
