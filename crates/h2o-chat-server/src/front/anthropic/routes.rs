//! The handlers: parse, pick the model, start the run, reply; `count_tokens`; the key guard
//! in Anthropic's shape (`x-api-key` or Bearer).

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::auth;
use crate::front::anthropic::error::AnthropicError;
use crate::front::anthropic::reply::{self, Shape};
use crate::front::anthropic::request::AnthropicRequest;
use crate::front::anthropic::wire::TokenCount;
use crate::models::ServedModel;
use crate::pipeline;

/// The model a request names: any served id or alias; none means the local model.
fn model_of(state: &AppState, name: Option<&str>) -> Result<ServedModel, AnthropicError> {
    let model = state.models().for_request(name).cloned();
    model.ok_or_else(|| AnthropicError::model_not_found(name.unwrap_or("")))
}

/// `POST /v1/messages`.
pub async fn messages(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let mut request = match AnthropicRequest::parse(&body, true) {
        Ok(request) => request,
        Err(err) => return err.into_response(),
    };
    if request.plan.cache_scope.is_anonymous() {
        request.plan.cache_scope = auth::key_scope(&headers);
    }
    let model = match model_of(&state, request.model.as_deref()) {
        Ok(model) => model,
        Err(err) => return err.into_response(),
    };
    let shape = Shape {
        model: request.model.clone().unwrap_or_else(|| model.id.clone()),
        tools: request.tools.clone(),
        stop: request.plan.stop.clone(),
    };
    match pipeline::start(&state, &model.engine, request.plan, started).await {
        Ok(run) if request.stream => reply::stream(run, shape, state.streams()).await,
        Ok(run) => reply::message(run, shape).await,
        Err(failure) => AnthropicError::from_failure(&failure).into_response(),
    }
}

/// `POST /v1/messages/count_tokens`: the prompt's tokens as the model would read it.
pub async fn count_tokens(State(state): State<AppState>, body: Bytes) -> Response {
    let request = match AnthropicRequest::parse(&body, false) {
        Ok(request) => request,
        Err(err) => return err.into_response(),
    };
    let model = match model_of(&state, request.model.as_deref()) {
        Ok(model) => model,
        Err(err) => return err.into_response(),
    };
    match pipeline::count_tokens(&state, &model.engine, request.plan).await {
        Ok(input_tokens) => axum::Json(TokenCount { input_tokens }).into_response(),
        Err(failure) => AnthropicError::from_failure(&failure).into_response(),
    }
}

/// The API-key guard, refusing in Anthropic's shape.
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if auth::is_authorized(state.config(), request.headers()) {
        return next.run(request).await;
    }
    auth::challenge(
        AnthropicError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid x-api-key: send `x-api-key: <key>` or `Authorization: Bearer <key>`",
        )
        .into_response(),
    )
}
