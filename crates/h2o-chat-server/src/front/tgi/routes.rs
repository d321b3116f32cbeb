//! The handlers: parse, plan, run, reply. `/info` and the key guard.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::auth::{self, KEY_MESSAGE};
use crate::failure::Failure;
use crate::front::tgi::reply;
use crate::front::tgi::request::{generation, parse_body};
use crate::pipeline;
use crate::tgi_wire::{self, Shape, StreamHeaders};

/// Which TGI route a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Generate,
    GenerateStream,
    Compat,
}

pub async fn generate(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    handle(state, Route::Generate, &headers, &body).await
}

pub async fn generate_stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(state, Route::GenerateStream, &headers, &body).await
}

pub async fn compat(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    handle(state, Route::Compat, &headers, &body).await
}

/// TGI names no user: the prompt cache's scope is the request's key.
async fn handle(state: AppState, route: Route, request: &HeaderMap, bytes: &[u8]) -> Response {
    let started = Instant::now();
    let body = match parse_body(bytes) {
        Ok(body) => body,
        Err(err) => return tgi_wire::type_error(err.0),
    };
    let Some(model) = state.models().default_model().cloned() else {
        return tgi_wire::error_response(&Failure::Unavailable("no model is served".into()));
    };
    let streaming = match route {
        Route::Generate => false,
        Route::GenerateStream => true,
        Route::Compat => body.stream,
    };
    let headers = StreamHeaders {
        compute_type: model.engine.info().compute_type,
        characters: body.inputs.chars().count(),
    };
    // On `/` an omitted return_full_text means true for text-generation models (§c).
    let compat = route == Route::Compat;
    let limits = state.config().limits;
    let (mut plan, echo) =
        match generation(body.inputs, &body.parameters, streaming, compat, &limits) {
            Ok(generation) => generation,
            Err(err) => return tgi_wire::refusal(&err.into(), streaming, &headers),
        };
    plan.cache_scope = auth::key_scope(request);
    let run = match pipeline::start(&state, &model.engine, plan, started).await {
        Ok(run) => run,
        Err(failure) => return tgi_wire::refusal(&failure, streaming, &headers),
    };
    let shape = if compat { Shape::List } else { Shape::Object };
    if streaming {
        tgi_wire::stream(run, echo, &headers, state.streams()).await
    } else {
        tgi_wire::collect(run, shape, echo).await
    }
}

/// `POST /tokenize`: TGI's `[{id, text, start, stop}]` for `inputs` as the model reads a raw
/// prompt (`start`/`stop`: character offsets in `inputs`). An engine without the model's
/// tokenizer (a relay) answers TGI's 404.
pub async fn tokenize(State(state): State<AppState>, body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    struct TokenizeRequest {
        inputs: String,
    }
    #[derive(serde::Serialize)]
    struct SimpleToken {
        id: u32,
        text: String,
        start: usize,
        stop: usize,
    }
    let request: TokenizeRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return tgi_wire::type_error(format!(
                "Failed to deserialize the JSON body into the target type: {err}"
            ));
        }
    };
    let Some(model) = state.models().default_model().cloned() else {
        return tgi_wire::error_response(&Failure::Unavailable("no model is served".into()));
    };
    let Ok(_permit) = state.validation_workers().clone().acquire_owned().await else {
        return tgi_wire::error_response(&Failure::ShuttingDown);
    };
    let engine = model.engine.clone();
    let inputs = request.inputs;
    let tokens = tokio::task::spawn_blocking(move || {
        let ids = engine
            .tokenize(&h2o_chat_engine::Prompt::raw(inputs))
            .ok()?
            .ids?;
        let mut at = 0;
        ids.iter()
            .map(|&id| {
                let text = engine.detokenize(&[id])?;
                let start = at;
                at += text.chars().count();
                Some(SimpleToken {
                    id,
                    text,
                    start,
                    stop: at,
                })
            })
            .collect::<Option<Vec<_>>>()
    })
    .await
    .ok()
    .flatten();
    match tokens {
        Some(tokens) => axum::Json(tokens).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({
                "error": "No fast tokenizer or tokenizer.json for this model",
                "error_type": "no fast tokenizer",
            })),
        )
            .into_response(),
    }
}

/// `GET /info`: TGI's model description with the engine's real limits.
pub async fn info(State(state): State<AppState>) -> Response {
    match reply::info(&state) {
        Some(info) => axum::Json(info).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no model is served").into_response(),
    }
}

/// The API-key guard, refusing in TGI's shape: `{"error", "error_type": "authentication"}`.
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if auth::is_authorized(state.config(), request.headers()) {
        return next.run(request).await;
    }
    auth::challenge(
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({"error": KEY_MESSAGE, "error_type": "authentication"})),
        )
            .into_response(),
    )
}
