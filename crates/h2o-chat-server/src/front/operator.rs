//! The operator's routes: `GET /health` and `GET /metrics`. Always open (no API key).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use h2o_chat_engine::Health;
use serde_json::json;

use crate::AppState;

/// The paths this front answers, for people (the `serve` banner).
pub const PATHS: &[&str] = &["/health", "/metrics"];

/// `/health` and `/metrics`, open to all.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
}

/// 200 `{"status":"ok"}` while the server can answer: its default model takes requests
/// (loaded, or loadable on demand). Every model is listed with its state (`ready`,
/// `loading`, `failed: reason`) and whether it is in memory; one that failed to load is
/// reported there without failing the server. 503 with the reason while the default model
/// is loading or failed, or the server is shutting down.
pub async fn health(State(state): State<AppState>) -> Response {
    if state.shutdown().is_draining() {
        return unavailable("shutting down", None);
    }
    let models: Vec<serde_json::Value> = state
        .models()
        .all()
        .iter()
        .map(|model| {
            json!({
                "id": model.id,
                "status": describe(&model.engine.health()),
                "loaded": model.engine.is_loaded(),
            })
        })
        .collect();
    let default = state.models().default_model();
    match default.map(|m| (m.id.clone(), m.engine.health())) {
        Some((_, Health::Ready)) => (
            StatusCode::OK,
            axum::Json(json!({"status": "ok", "models": models})),
        )
            .into_response(),
        Some((id, health)) => {
            unavailable(&format!("{id}: {}", describe(&health)), Some(json!(models)))
        }
        None => unavailable("no model is served", Some(json!(models))),
    }
}

fn describe(health: &Health) -> String {
    match health {
        Health::Ready => "ready".into(),
        Health::Loading => "loading".into(),
        Health::Failed(reason) => format!("failed: {reason}"),
    }
}

fn unavailable(reason: &str, models: Option<serde_json::Value>) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({"status": "unavailable", "reason": reason, "models": models})),
    )
        .into_response()
}

/// Prometheus' text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let metrics = state.metrics();
    metrics
        .conversations
        .set(state.store().conversation_count() as i64);
    metrics.sessions.set(state.store().session_count() as i64);
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics().render(),
    )
        .into_response()
}
