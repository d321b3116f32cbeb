//! The handlers: `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions`, and
//! the API-key guard.

use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::auth::{self, KEY_MESSAGE};
use crate::failure::Failure;
use crate::front::openai::error::ApiError;
use crate::front::openai::reply::{self, Shape};
use crate::front::openai::request::{Kind, OpenAiRequest};
use crate::front::openai::wire::{Model, ModelList, ModelOrigin};
use crate::pipeline;
use crate::validation::ValidationError;

/// `GET /v1/models`. Stand-ins say so in an extra `h2o_chat` object that clients ignore.
pub async fn models(State(state): State<AppState>) -> Response {
    let data = state
        .models()
        .all()
        .iter()
        .map(|m| Model {
            id: m.id.clone(),
            object: "model",
            created: 0,
            owned_by: if m.stand_in {
                "h2o-chat (stand-in)"
            } else {
                "h2o-chat"
            },
            h2o_chat: ModelOrigin {
                stand_in: m.stand_in,
                loaded: m.engine.is_loaded(),
                served_by: m.engine.info().model_id,
                aliases: m.aliases.clone(),
            },
        })
        .collect();
    Json(ModelList {
        object: "list",
        data,
    })
    .into_response()
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond(state, &headers, &body, Kind::Chat).await
}

/// `POST /v1/completions` (legacy text completions): the prompt is used as is.
pub async fn completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond(state, &headers, &body, Kind::Text).await
}

async fn respond(state: AppState, headers: &HeaderMap, body: &[u8], kind: Kind) -> Response {
    let started = Instant::now();
    let mut request = match OpenAiRequest::parse(body, kind) {
        Ok(request) => request,
        Err(err) => return err.into_response(),
    };
    if request.plan.cache_scope.is_anonymous() {
        request.plan.cache_scope = auth::key_scope(headers);
    }
    let model = state
        .models()
        .for_request(request.model.as_deref())
        .cloned();
    let Some(model) = model else {
        return ApiError::model_not_found(request.model.as_deref().unwrap_or("")).into_response();
    };
    let shape = Shape {
        kind,
        model: model.id.clone(),
        include_usage: request.include_usage,
        logprobs: request.logprobs,
        tools: request.tools.clone(),
    };
    let constraint_param = request.constraint_param;
    // One run per choice, each its own sequence; a seed gives each choice its own seed.
    let mut runs = Vec::with_capacity(request.n as usize);
    for choice in 0..request.n {
        let mut plan = request.plan.clone();
        if let Some(seed) = plan.sampling.seed {
            plan.sampling.seed = Some(seed.wrapping_add(u64::from(choice)));
        }
        match pipeline::start(&state, &model.engine, plan, started).await {
            Ok(run) => runs.push(run),
            Err(failure) => {
                let mut error = ApiError::from_failure(&failure);
                if let Failure::Invalid(ValidationError::Grammar(_)) = failure {
                    error = error.about(constraint_param);
                }
                return error.into_response();
            }
        }
    }
    if request.stream {
        reply::stream(runs, shape, state.streams()).await
    } else {
        reply::complete(runs, shape).await
    }
}

/// Any other path under `/v1/`: OpenAI's error envelope, not the chat-ui page's.
pub async fn unknown(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    ApiError::unknown_route(method.as_str(), uri.path()).into_response()
}

/// The API-key guard, refusing with OpenAI's error object.
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if auth::is_authorized(state.config(), request.headers()) {
        return next.run(request).await;
    }
    auth::challenge(ApiError::invalid_api_key(KEY_MESSAGE).into_response())
}
