//! chat-ui's routes as gpt-gm.h2o.ai ran them (§a), behind its hooks (§a.6).
//!
//! - [`request`]: ids and the generate body's schema → a plan.
//! - [`reply`]: chat-ui's own reply shapes (errors by `Accept`); generation replies are
//!   TGI's wire (`crate::tgi_wire`), which chat-ui relays.
//! - [`routes`]: the handlers; [`hooks`]: the Referer check, the ethics gate, the cookie;
//!   [`turn`]: storing a turn as it ends; [`aborts`]: stop-generating;
//!   [`settings_form`]: the settings action's form.

pub mod aborts;
pub mod hooks;
pub mod reply;
pub mod request;
pub mod routes;
pub mod settings_form;
pub mod turn;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};

use crate::AppState;

/// The paths this front answers, for people (the `serve` banner).
pub const PATHS: &[&str] = &[
    "/settings",
    "/conversation",
    "/conversations",
    "/conversation/{id}",
    "/conversation/{id}/stop-generating",
];

/// chat-ui's routes, each behind the API-key guard and the hooks.
pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/settings", post(routes::settings))
        .route(
            "/conversation",
            post(routes::create).get(routes::conversation_index),
        )
        .route("/conversations", get(routes::list))
        .route(
            "/conversation/{id}",
            post(routes::generate)
                .get(routes::show)
                .delete(routes::delete)
                .patch(routes::rename),
        )
        .route(
            "/conversation/{id}/stop-generating",
            post(routes::stop_generating),
        )
        .route_layer(from_fn_with_state(state.clone(), hooks::chat_ui_hooks))
        .route_layer(from_fn_with_state(state.clone(), hooks::guard))
}
