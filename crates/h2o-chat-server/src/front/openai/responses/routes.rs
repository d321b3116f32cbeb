//! The handler: parse, pick the model, start the run, reply; `GET` and `DELETE` of a
//! response id answer 404 (responses are not kept).

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::auth;
use crate::failure::Failure;
use crate::front::openai::error::ApiError;
use crate::front::openai::responses::reply::{self, Shape};
use crate::front::openai::responses::request::ResponsesCall;
use crate::pipeline;
use crate::validation::ValidationError;

/// `POST /v1/responses`.
pub async fn create(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let mut call = match ResponsesCall::parse(&body) {
        Ok(call) => call,
        Err(err) => return err.into_response(),
    };
    if call.plan.cache_scope.is_anonymous() {
        call.plan.cache_scope = auth::key_scope(&headers);
    }
    let model = state.models().for_request(call.model.as_deref()).cloned();
    let Some(model) = model else {
        return ApiError::model_not_found(call.model.as_deref().unwrap_or("")).into_response();
    };
    let shape = Shape {
        model: call.model.clone().unwrap_or_else(|| model.id.clone()),
        tools: call.tools.clone(),
        echo: call.echo.clone(),
    };
    match pipeline::start(&state, &model.engine, call.plan, started).await {
        Ok(run) if call.stream => reply::stream(run, shape, state.streams()).await,
        Ok(run) => reply::respond(run, shape).await,
        Err(failure) => {
            let error = ApiError::from_failure(&failure);
            match failure {
                Failure::Invalid(ValidationError::Grammar(_)) => error.about(call.constraint_param),
                _ => error,
            }
            .into_response()
        }
    }
}

/// `GET` / `DELETE /v1/responses/{id}`: no response is kept, so none is found.
pub async fn stored(Path(id): Path<String>) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("No response found with id '{id}': this server keeps no responses (send the whole conversation as `input`)."),
        "invalid_request_error",
        None,
        Some("not_found"),
    )
    .into_response()
}
