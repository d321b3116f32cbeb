//! text-generation-inference's routes (§b, §c): `POST /generate`, `POST /generate_stream`,
//! `POST /` (the compat route that honours `stream`), `GET /info`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use h2o_chat_engine::Engine;
use serde_json::json;

use crate::AppState;
use crate::generate::{Collected, collect, error_event, frame, json_answer, sse_body};
use crate::validation::{GenerateBody, Validated, parse_body, validate};

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

/// 422 `text/plain` for a body TGI could not deserialize.
pub fn type_error(message: String) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

async fn handle(state: AppState, route: Route, bytes: &[u8]) -> Response {
    let body = match parse_body(bytes) {
        Ok(body) => body,
        Err(err) => return type_error(err.0),
    };
    let Some(model) = state.models().default_model() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no model is served").into_response();
    };
    let engine = model.engine.clone();
    let streaming = match route {
        Route::Generate => false,
        Route::GenerateStream => true,
        Route::Compat => body.stream,
    };
    // On `/` an omitted return_full_text means true for text-generation models (§c).
    let default_full_text = route == Route::Compat;
    respond(&state, &engine, &body, streaming, default_full_text, None).await
}

/// Validates and answers as TGI would, streaming or not. `prompt_characters` is what
/// `x-compute-characters` reports.
pub async fn respond(
    state: &AppState,
    engine: &Arc<dyn Engine>,
    body: &GenerateBody,
    streaming: bool,
    default_full_text: bool,
    on_finish: Option<crate::generate::OnFinish>,
) -> Response {
    let validated = validate(
        &body.inputs,
        &body.parameters,
        streaming,
        default_full_text,
        &state.config().limits,
        |text| engine.count_tokens(text).map_err(|e| e.to_string()),
    );
    if streaming {
        let stream_response = |body: Body, characters: usize| {
            let mut response = Response::new(body);
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
            headers.insert("x-compute-type", HeaderValue::from_static("cpu+llama.cpp"));
            headers.insert("x-compute-characters", HeaderValue::from(characters));
            response
        };
        return match validated {
            // TGI answers a rule violation on a stream with one error event, status 200.
            Err(rule) => stream_response(
                Body::from(frame(&error_event(rule.to_string(), "validation"))),
                body.inputs.chars().count(),
            ),
            Ok(validated) => {
                let characters = validated.generation.prompt.chars().count();
                let sse = sse_body(
                    engine,
                    state.permits(),
                    validated,
                    state.config().keep_alive,
                    on_finish,
                );
                stream_response(Body::from_stream(sse), characters)
            }
        };
    }
    let validated: Validated = match validated {
        Ok(validated) => validated,
        Err(rule) => {
            return tgi_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &rule.to_string(),
                "validation",
            );
        }
    };
    match collect(engine, state.permits(), &validated).await {
        Collected::Done {
            text,
            finish,
            tokens,
        } => {
            let answer = json_answer(&validated, text, &finish, tokens);
            if let Some(on_finish) = on_finish {
                on_finish(&finish);
            }
            // `/` answers a list (§b.7), `/generate` an object.
            if default_full_text {
                (StatusCode::OK, axum::Json([answer])).into_response()
            } else {
                (StatusCode::OK, axum::Json(answer)).into_response()
            }
        }
        Collected::Failed(error) => {
            let status = match error.error_type.as_deref() {
                Some("overloaded") => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            let kind = error.error_type.clone().unwrap_or_default();
            tgi_error(status, &error.error, &kind)
        }
    }
}

fn tgi_error(status: StatusCode, message: &str, error_type: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": message, "error_type": error_type})),
    )
        .into_response()
}

/// TGI's `/info`, plus which engine really serves each id.
pub async fn info(State(state): State<AppState>) -> Response {
    let limits = state.config().limits;
    let (model_id, backend, context) = state
        .models()
        .default_model()
        .map(|m| {
            let info = m.engine.info();
            (info.model_id, info.backend, info.context_length)
        })
        .unwrap_or_default();
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
            })
        })
        .collect();
    axum::Json(json!({
        "model_id": model_id,
        "model_sha": null,
        "model_dtype": "gguf",
        "model_device_type": "cpu",
        "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": limits.max_concurrent_requests,
        "max_best_of": limits.max_best_of,
        "max_stop_sequences": limits.max_stop_sequences,
        "max_input_length": limits.max_input_length,
        "max_total_tokens": limits.max_total_tokens,
        "max_batch_total_tokens": context,
        "validation_workers": 1,
        "version": concat!("h2o-chat-server ", env!("CARGO_PKG_VERSION")),
        "sha": null,
        "docker_label": null,
        "backend": backend,
        "served_models": served,
    }))
    .into_response()
}
