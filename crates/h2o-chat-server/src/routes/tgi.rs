//! text-generation-inference's routes (§b, §c): `POST /generate`, `POST /generate_stream`,
//! `POST /` (the compat route that honours `stream`), `GET /info`.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use h2o_chat_engine::Prompt;
use serde_json::json;

use crate::AppState;
use crate::pipeline::{self, Failure};
use crate::validation::{Validation, parse_tgi_body, validate};
use crate::wire::tgi::{self as reply, Shape};

/// Which TGI route a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Generate,
    GenerateStream,
    Compat,
}

pub async fn generate(State(state): State<AppState>, body: Bytes) -> Response {
    handle(state, Route::Generate, &body).await
}

pub async fn generate_stream(State(state): State<AppState>, body: Bytes) -> Response {
    handle(state, Route::GenerateStream, &body).await
}

pub async fn compat(State(state): State<AppState>, body: Bytes) -> Response {
    handle(state, Route::Compat, &body).await
}

async fn handle(state: AppState, route: Route, bytes: &[u8]) -> Response {
    let started = Instant::now();
    let body = match parse_tgi_body(bytes) {
        Ok(body) => body,
        Err(err) => return reply::type_error(err.0),
    };
    let Some(model) = state.models().default_model().cloned() else {
        return reply::error_response(&Failure::Unavailable("no model is served".into()));
    };
    let streaming = match route {
        Route::Generate => false,
        Route::GenerateStream => true,
        Route::Compat => body.stream,
    };
    // On `/` an omitted return_full_text means true for text-generation models (§c).
    let shape = if route == Route::Compat {
        Shape::List
    } else {
        Shape::Object
    };
    let characters = body.inputs.chars().count();
    let validated = validate(
        Prompt::raw(body.inputs),
        None,
        &body.parameters,
        Validation {
            engine: &model.engine,
            limits: &state.config().limits,
            workers: state.validation_workers(),
            streaming,
            default_full_text: route == Route::Compat,
            fit_max_new_tokens: false,
        },
    )
    .await;
    let run = validated
        .map_err(Failure::from)
        .and_then(|validated| pipeline::start(&state, &model.engine, validated, started));
    match (run, streaming) {
        (Ok(run), true) => reply::stream(run, characters, None, None).await,
        (Ok(run), false) => reply::collect(run, shape, None).await,
        (Err(failure), true) if !reply::is_status_even_when_streaming(&failure) => {
            // TGI answers a rule violation or overload on a stream with one event, 200.
            reply::error_stream(&failure, characters)
        }
        (Err(failure), _) => reply::error_response(&failure),
    }
}

/// TGI's `/info`, with the engine's real limits, plus which engine really serves each id.
pub async fn info(State(state): State<AppState>) -> Response {
    let limits = state.config().limits;
    let Some(default) = state.models().default_model() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no model is served").into_response();
    };
    let engine = default.engine.info();
    let max_total_tokens = if engine.context_length > 0 {
        limits.max_total_tokens.min(engine.context_length)
    } else {
        limits.max_total_tokens
    };
    let served: Vec<serde_json::Value> = state
        .models()
        .all()
        .iter()
        .map(|m| {
            let info = m.engine.info();
            json!({
                "id": m.id,
                "aliases": m.aliases,
                "stand_in": m.stand_in,
                "served_by": info.model_id,
                "backend": info.backend,
                "parameters": m.parameters(),
            })
        })
        .collect();
    axum::Json(json!({
        "model_id": engine.model_id,
        "model_sha": null,
        "model_dtype": "gguf",
        "model_device_type": "cpu",
        "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": limits.max_concurrent_requests,
        "max_best_of": limits.max_best_of,
        "max_stop_sequences": limits.max_stop_sequences,
        "max_input_length": limits.max_input_length,
        "max_total_tokens": max_total_tokens,
        "max_batch_total_tokens": engine.batch_total_tokens,
        "max_batch_size": engine.slots,
        "validation_workers": state.config().bounds.validation_workers,
        "version": concat!("h2o-chat-server ", env!("CARGO_PKG_VERSION")),
        "sha": null,
        "docker_label": null,
        "backend": engine.backend,
        "served_models": served,
    }))
    .into_response()
}
