//! OpenAI's error object with its status: `{"error": {"message", "type", "param", "code"}}`
//! — for a request this front refuses, and for a [`Failure`] of the pipeline, mapped once.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::failure::Failure;
use crate::front::openai::wire::{ErrorBody, ErrorObject};
use crate::validation::ValidationError;

/// See the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        message: impl Into<String>,
        kind: &'static str,
        param: Option<&str>,
        code: Option<&'static str>,
    ) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                error: ErrorObject {
                    message: message.into(),
                    kind,
                    param: param.map(str::to_string),
                    code,
                },
            },
            retry_after: None,
        }
    }

    /// 400 `invalid_request_error` about `param`.
    pub fn invalid(message: impl Into<String>, param: &str) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            message,
            "invalid_request_error",
            Some(param),
            None,
        )
    }

    /// 400 for an option this server does not implement.
    pub fn unsupported(param: &str, what: &str) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`{param}` is not supported by this server: {what}"),
            "invalid_request_error",
            Some(param),
            Some("unsupported_parameter"),
        )
    }

    /// 401 for a missing or wrong key.
    pub fn invalid_api_key(message: &str) -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            message,
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        )
    }

    /// 404 for a path under `/v1/` this server does not answer.
    pub fn unknown_route(method: &str, path: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "Unknown request URL: {method} {path}. See GET /v1/models and the README for the routes served."
            ),
            "invalid_request_error",
            None,
            Some("unknown_url"),
        )
    }

    /// 404 for an unknown model.
    pub fn model_not_found(model: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("The model `{model}` does not exist. See GET /v1/models."),
            "invalid_request_error",
            Some("model"),
            Some("model_not_found"),
        )
    }

    /// A pipeline failure in OpenAI's terms.
    pub fn from_failure(failure: &Failure) -> Self {
        let mut error = match failure {
            Failure::Invalid(err) => ApiError::from_validation(err),
            Failure::Overloaded => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "The model is overloaded; try again later.",
                "server_error",
                None,
                Some("overloaded"),
            ),
            Failure::Upstream { status, .. } => ApiError::new(
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY),
                failure.message(),
                if *status == 429 {
                    "rate_limit_error"
                } else {
                    "server_error"
                },
                None,
                Some("upstream_error"),
            ),
            Failure::Store(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                failure.message(),
                "server_error",
                None,
                Some("store_unavailable"),
            ),
            Failure::Unavailable(_) | Failure::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                failure.message(),
                "server_error",
                None,
                Some("unavailable"),
            ),
            Failure::Generation(_) | Failure::Stalled(_) | Failure::Incomplete => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                failure.message(),
                "server_error",
                None,
                None,
            ),
        };
        error.retry_after = failure.retry_after();
        error
    }

    /// A rule of §c in OpenAI's terms: 400 naming the parameter as OpenAI calls it,
    /// `context_length_exceeded` when the request is too long.
    pub fn from_validation(err: &ValidationError) -> Self {
        // Too long, in OpenAI's words: the messages and the completion, not TGI's `inputs`.
        match *err {
            ValidationError::TotalTokens {
                max,
                inputs,
                new_tokens,
            } => {
                return ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "This model's maximum context length is {max} tokens. However, you requested {} tokens ({inputs} in the messages, {new_tokens} in the completion). Please reduce the length of the messages or of `max_tokens`.",
                        inputs + new_tokens
                    ),
                    "invalid_request_error",
                    Some(if inputs >= max {
                        "messages"
                    } else {
                        "max_tokens"
                    }),
                    Some("context_length_exceeded"),
                );
            }
            ValidationError::InputLength { max, given } => {
                return ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "This model's maximum prompt length is {max} tokens. However, your messages resulted in {given} tokens. Please reduce the length of the messages."
                    ),
                    "invalid_request_error",
                    Some("messages"),
                    Some("context_length_exceeded"),
                );
            }
            _ => {}
        }
        let param = match err {
            ValidationError::MaxNewTokens | ValidationError::TotalTokens { .. } => "max_tokens",
            ValidationError::EmptyInputs
            | ValidationError::InputLength { .. }
            | ValidationError::Prompt(_)
            | ValidationError::Refused(_) => "messages",
            other => other.parameter(),
        };
        ApiError::new(
            StatusCode::BAD_REQUEST,
            err.to_string(),
            "invalid_request_error",
            Some(param),
            err.is_too_long().then_some("context_length_exceeded"),
        )
    }

    /// What the error says.
    pub fn message(&self) -> &str {
        &self.body.error.message
    }

    /// The same error about another parameter (a grammar is the client's
    /// `response_format` or `tools`).
    pub fn about(mut self, param: &str) -> Self {
        self.body.error.param = Some(param.to_string());
        self
    }

    /// The `param` the error names.
    pub fn param(&self) -> Option<&str> {
        self.body.error.param.as_deref()
    }

    /// The body, for an error chunk in a stream.
    pub fn body(&self) -> &ErrorBody {
        &self.body
    }
}

impl From<crate::tools::ToolsError> for ApiError {
    fn from(err: crate::tools::ToolsError) -> Self {
        ApiError::invalid(err.message, err.param)
    }
}

impl IntoResponse for ApiError {
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
