//! The OpenAI-compatible gateway: `GET /v1/models`, `POST /v1/chat/completions` (stream and
//! not), `POST /v1/completions`. The request is mapped to TGI's parameters
//! ([`crate::openai_request`]) and goes through the same validation and pipeline as every
//! other route; the reply shapes are in [`crate::wire::openai`].

use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use h2o_chat_engine::Prompt;
use serde_json::{Value, json};

use crate::AppState;
use crate::openai_request::{Input, OpenAiRequest};
use crate::pipeline::{self, Failure};
use crate::validation::{Validation, render_chat, validate};
use crate::wire::openai::{self as reply, ApiError, Kind};

/// `GET /v1/models`. Stand-ins carry an extra `h2o_chat` object that clients ignore.
pub async fn models(State(state): State<AppState>) -> Response {
    let data: Vec<Value> = state
        .models()
        .all()
        .iter()
        .map(|m| {
            let info = m.engine.info();
            json!({
                "id": m.id,
                "object": "model",
                "created": 0,
                "owned_by": if m.stand_in { "h2o-chat (stand-in)" } else { "h2o-chat" },
                "h2o_chat": {"stand_in": m.stand_in, "served_by": info.model_id, "aliases": m.aliases},
            })
        })
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(State(state): State<AppState>, body: Bytes) -> Response {
    respond(state, &body, Kind::Chat).await
}

/// `POST /v1/completions` (legacy text completions): the prompt is used as is.
pub async fn completions(State(state): State<AppState>, body: Bytes) -> Response {
    respond(state, &body, Kind::Text).await
}

async fn respond(state: AppState, body: &[u8], kind: Kind) -> Response {
    let started = Instant::now();
    let request = match OpenAiRequest::parse(body, kind) {
        Ok(request) => request,
        Err(err) => return err.into_response(),
    };
    // No model (or an empty one) means the local model, not a stand-in.
    let model = match request.model.as_deref().filter(|m| !m.is_empty()) {
        None => state
            .models()
            .all()
            .iter()
            .find(|m| !m.stand_in)
            .or(state.models().default_model())
            .cloned(),
        Some(name) => state.models().by_name(name).cloned(),
    };
    let Some(model) = model else {
        return ApiError::model_not_found(request.model.as_deref().unwrap_or("")).into_response();
    };
    let workers = state.validation_workers();
    let prompt = match request.input {
        Input::Chat(turns) => render_chat(&model.engine, workers, turns).await,
        Input::Text(text) => Ok(Prompt::raw(text)),
    };
    let validated = match prompt {
        Ok(prompt) => {
            validate(
                prompt,
                None,
                &request.parameters,
                Validation {
                    engine: &model.engine,
                    limits: &state.config().limits,
                    workers,
                    streaming: request.stream,
                    default_full_text: false,
                    fit_max_new_tokens: request.fit_max_tokens,
                },
            )
            .await
        }
        Err(rejection) => Err(rejection),
    };
    let run = validated.map_err(Failure::from).and_then(|mut validated| {
        validated.request.cache_hint = request.user.clone();
        pipeline::start(&state, &model.engine, validated, started)
    });
    match run {
        Ok(run) if request.stream => {
            reply::stream(run, kind, model.id.clone(), request.include_usage).await
        }
        Ok(run) => reply::complete(run, kind, model.id.clone()).await,
        Err(failure) => ApiError::from_failure(&failure).into_response(),
    }
}
