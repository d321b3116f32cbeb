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

/// 200 `{"status":"ok"}` when every served model's engine takes requests; 503 with the
/// reason while one is loading, failed, or the server is shutting down.
pub async fn health(State(state): State<AppState>) -> Response {
    if state.shutdown().is_draining() {
        return unavailable("shutting down", None);
    }
    let mut models = Vec::new();
    let mut worst: Option<(String, Health)> = None;
    for model in state.models().all() {
        let health = model.engine.health();
        models.push(json!({"id": model.id, "status": describe(&health)}));
        if health != Health::Ready && worst.is_none() {
            worst = Some((model.id.clone(), health));
        }
    }
    match worst {
        None => (
            StatusCode::OK,
            axum::Json(json!({"status": "ok", "models": models})),
        )
            .into_response(),
        Some((id, health)) => {
            unavailable(&format!("{id}: {}", describe(&health)), Some(json!(models)))
        }
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
