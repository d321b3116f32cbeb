//! Anthropic's error object with its status: `{"type": "error", "error": {"type",
//! "message"}}` — 400 `invalid_request_error`, 401 `authentication_error`, 404
//! `not_found_error`, 429 `rate_limit_error`, 500 `api_error`, 529 `overloaded_error` — for
//! a request this front refuses, and for a [`Failure`] of the pipeline, mapped once.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::failure::Failure;
use crate::validation::ValidationError;

/// The body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorBody {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub error: ErrorObject,
}

/// `error`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorObject {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub message: String,
}

/// See the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct AnthropicError {
    status: StatusCode,
    body: ErrorBody,
    retry_after: Option<Duration>,
}

impl AnthropicError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        AnthropicError {
            status,
            body: ErrorBody {
                kind: "error",
                error: ErrorObject {
                    kind,
                    message: message.into(),
                },
            },
            retry_after: None,
        }
    }

    /// 400 `invalid_request_error`.
    pub fn invalid(message: impl Into<String>) -> Self {
        AnthropicError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 404 `not_found_error` for an unknown model.
    pub fn model_not_found(model: &str) -> Self {
        AnthropicError::new(
            StatusCode::NOT_FOUND,
            "not_found_error",
            format!("model: {model} (see GET /v1/models)"),
        )
    }

    /// A pipeline failure in Anthropic's terms.
    pub fn from_failure(failure: &Failure) -> Self {
        let mut error = match failure {
            Failure::Invalid(err) => AnthropicError::invalid(match err {
                ValidationError::TotalTokens {
                    max,
                    inputs,
                    new_tokens,
                } => format!(
                    "prompt is too long: {inputs} input tokens + {new_tokens} `max_tokens` > {max}, the model's context"
                ),
                other => other.to_string(),
            }),
            Failure::Overloaded => AnthropicError::new(
                StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "overloaded_error",
                "Overloaded",
            ),
            Failure::Upstream { status: 429, .. } => AnthropicError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                failure.message(),
            ),
            Failure::Upstream { status, .. } => AnthropicError::new(
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY),
                "api_error",
                failure.message(),
            ),
            Failure::Unavailable(_) | Failure::ShuttingDown | Failure::Store(_) => {
                AnthropicError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "api_error",
                    failure.message(),
                )
            }
            Failure::Generation(_) | Failure::Stalled(_) | Failure::Incomplete => {
                AnthropicError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "api_error",
                    failure.message(),
                )
            }
        };
        error.retry_after = failure.retry_after();
        error
    }

    /// The body, for an `error` event in a stream.
    pub fn body(&self) -> &ErrorBody {
        &self.body
    }
}

impl From<crate::tools::ToolsError> for AnthropicError {
    fn from(err: crate::tools::ToolsError) -> Self {
        AnthropicError::invalid(format!("{}: {}", err.param, err.message))
    }
}

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(wait) = self.retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(wait.as_secs().max(1)),
            );
        }
        response
    }
}
