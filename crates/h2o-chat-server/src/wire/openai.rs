//! The OpenAI-compatible replies: errors in OpenAI's shape, the completion objects, and the
//! streamed chunks strict clients accept (`finish_reason` null until the last chunk, then
//! `stop` or `length`; `usage` with the engine's real counts; `data: [DONE]` at the end).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use h2o_chat_engine::{Finish, FinishReason};
use serde_json::{Value, json};

use crate::pipeline::{Failure, Finished, Run, Step};
use crate::validation::ValidationError;
use crate::wire::{sse, tgi};

/// An OpenAI-style error: `{"error": {"message", "type", "param", "code"}}` with a status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
    retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        message: impl Into<String>,
        kind: &str,
        param: Option<&str>,
        code: Option<&str>,
    ) -> Self {
        ApiError {
            status,
            body: json!({"error": {"message": message.into(), "type": kind, "param": param, "code": code}}),
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
        error.retry_after = tgi::retry_after(failure);
        error
    }

    /// A rule of §c in OpenAI's terms: 400 naming the parameter, `context_length_exceeded`
    /// when the request is too long.
    pub fn from_validation(err: &ValidationError) -> Self {
        let param = match err.parameter() {
            "max_new_tokens" => "max_tokens",
            "inputs" => "messages",
            other => other,
        };
        let message = err
            .to_string()
            .trim_start_matches("Input validation error: ")
            .to_string();
        ApiError::new(
            StatusCode::BAD_REQUEST,
            message,
            "invalid_request_error",
            Some(param),
            err.is_too_long().then_some("context_length_exceeded"),
        )
    }

    fn body(&self) -> &Value {
        &self.body
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

/// Chat completions or legacy text completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Text,
}

impl Kind {
    fn id(self) -> String {
        match self {
            Kind::Chat => format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            Kind::Text => format!("cmpl-{}", uuid::Uuid::new_v4().simple()),
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn finish_reason(finish: &Finish) -> &'static str {
    match finish.reason {
        FinishReason::Length => "length",
        FinishReason::EosToken | FinishReason::StopSequence => "stop",
    }
}

/// `usage`, with the prompt tokens served from the cache (OpenAI's
/// `prompt_tokens_details.cached_tokens`).
fn usage(finish: &Finish) -> Value {
    json!({
        "prompt_tokens": finish.input_tokens,
        "completion_tokens": finish.generated_tokens,
        "total_tokens": finish.input_tokens + finish.generated_tokens,
        "prompt_tokens_details": {"cached_tokens": finish.cached_tokens},
    })
}

/// The non-stream completion object, or the failure.
pub async fn complete(run: Run, kind: Kind, model: String) -> Response {
    match run.collect().await {
        Ok(collected) => {
            let text = collected.text();
            let finish = &collected.finished.finish;
            let choice = match kind {
                Kind::Chat => {
                    json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": finish_reason(finish)})
                }
                Kind::Text => {
                    json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason(finish)})
                }
            };
            let object = match kind {
                Kind::Chat => "chat.completion",
                Kind::Text => "text_completion",
            };
            Json(json!({
                "id": kind.id(), "object": object, "created": now(), "model": model,
                "choices": [choice], "usage": usage(finish), "system_fingerprint": null,
            }))
            .into_response()
        }
        Err(failure) => ApiError::from_failure(&failure).into_response(),
    }
}

/// Builds the chunks of one streamed completion.
struct Chunks {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
}

impl Chunks {
    fn chunk(&self, choices: Value) -> Value {
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Text => "text_completion",
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "system_fingerprint": null, "choices": choices})
    }

    fn role(&self) -> Bytes {
        sse::spaced_frame(&self.chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}])))
    }

    fn content(&self, text: &str) -> Bytes {
        let choice = match self.kind {
            Kind::Chat => {
                json!({"index": 0, "delta": {"content": text}, "logprobs": null, "finish_reason": null})
            }
            Kind::Text => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": null})
            }
        };
        sse::spaced_frame(&self.chunk(json!([choice])))
    }

    fn end(&self, finished: &Finished, include_usage: bool) -> Vec<Bytes> {
        let reason = finish_reason(&finished.finish);
        let choice = match self.kind {
            Kind::Chat => {
                json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": reason})
            }
            Kind::Text => {
                json!({"index": 0, "text": "", "logprobs": null, "finish_reason": reason})
            }
        };
        let mut frames = Vec::with_capacity(3);
        if !finished.token.special && !finished.token.text.is_empty() {
            frames.push(self.content(&finished.token.text));
        }
        frames.push(sse::spaced_frame(&self.chunk(json!([choice]))));
        if include_usage {
            let mut last = self.chunk(json!([]));
            last["usage"] = usage(&finished.finish);
            frames.push(sse::spaced_frame(&last));
        }
        frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
        frames
    }

    fn failure(failure: &Failure) -> Vec<Bytes> {
        vec![
            sse::spaced_frame(ApiError::from_failure(failure).body()),
            Bytes::from_static(b"data: [DONE]\n\n"),
        ]
    }
}

/// The streamed reply: a role chunk (chat), content chunks, the finish chunk, `usage` if
/// asked for, then `[DONE]`. A failure mid-stream becomes an error chunk then `[DONE]`.
pub async fn stream(mut run: Run, kind: Kind, model: String, include_usage: bool) -> Response {
    if let Some(Step::Failed(failure)) = run.peek().await
        && tgi::is_status_even_when_streaming(failure)
    {
        return ApiError::from_failure(failure).into_response();
    }
    let chunks = Chunks {
        id: kind.id(),
        created: now(),
        model,
        kind,
    };
    let mut first = Vec::new();
    if kind == Kind::Chat {
        first.push(chunks.role());
    }
    let body = futures_util::stream::unfold(
        (run, chunks, std::collections::VecDeque::from(first), false),
        move |(mut run, chunks, mut pending, ended)| async move {
            loop {
                if let Some(bytes) = pending.pop_front() {
                    return Some((Ok(bytes), (run, chunks, pending, ended)));
                }
                if ended {
                    return None;
                }
                match run.next().await? {
                    // A comment line: clients skip it, proxies see the connection is alive.
                    Step::KeepAlive => pending.push_back(Bytes::from_static(b": keep-alive\n\n")),
                    Step::Token(token) => {
                        if !token.special && !token.text.is_empty() {
                            pending.push_back(chunks.content(&token.text));
                        }
                    }
                    Step::Finished(finished) => {
                        pending.extend(chunks.end(&finished, include_usage));
                        return pending
                            .pop_front()
                            .map(|bytes| (Ok(bytes), (run, chunks, pending, true)));
                    }
                    Step::Failed(failure) => {
                        pending.extend(Chunks::failure(&failure));
                        return pending
                            .pop_front()
                            .map(|bytes| (Ok(bytes), (run, chunks, pending, true)));
                    }
                }
            }
        },
    );
    sse::response(body)
}
