//! TGI's replies (§b, §c): the event stream, the one-shot JSON, and failures with TGI's
//! statuses and `error_type`s. TGI's routes answer with these, and so does chat-ui's
//! generate route, which relays TGI's reply as it is (§a.4 step 9) — so both fronts write
//! through this module, and neither imports the other.

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use h2o_chat_protocol::{Details, ErrorEvent, StreamResponse, Token};
use serde_json::json;

use crate::failure::Failure;
use crate::pipeline::{Collected, Finished, Run, Step};
use crate::sse;
use crate::streaming::{Frames, Streams};

/// TGI's `error_type` (§b.4), extended with `unavailable` and `shutdown`.
pub fn error_type(failure: &Failure) -> &'static str {
    match failure {
        Failure::Invalid(_) => "validation",
        Failure::Overloaded => "overloaded",
        Failure::Unavailable(_) | Failure::Upstream { .. } => "unavailable",
        Failure::Generation(_) | Failure::Stalled(_) => "generation",
        Failure::Incomplete => "incomplete_generation",
        Failure::ShuttingDown => "shutdown",
        Failure::Store(_) => "store",
    }
}

/// TGI's message for a failure: a rule's text follows "Input validation error: ".
pub fn message(failure: &Failure) -> String {
    match failure {
        Failure::Invalid(err) => format!("Input validation error: {err}"),
        other => other.message(),
    }
}

/// The error event of a failure (§b.4).
pub fn error_event(failure: &Failure) -> ErrorEvent {
    ErrorEvent {
        error: message(failure),
        error_type: Some(error_type(failure).to_string()),
    }
}

/// The status of a failure when the reply is not (or not yet) a stream: TGI's 422 / 424 /
/// 429 / 500, 503 while the model is not available, and a relayed upstream's own status.
pub fn status_of(failure: &Failure) -> StatusCode {
    match failure {
        Failure::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        Failure::Overloaded => StatusCode::TOO_MANY_REQUESTS,
        Failure::Unavailable(_) | Failure::ShuttingDown | Failure::Store(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Failure::Upstream { status, .. } => {
            StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
        }
        Failure::Generation(_) | Failure::Stalled(_) => StatusCode::FAILED_DEPENDENCY,
        Failure::Incomplete => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `{"error", "error_type"}` with the failure's status (and `Retry-After` when it has one).
pub fn error_response(failure: &Failure) -> Response {
    let mut response = (
        status_of(failure),
        axum::Json(json!({"error": message(failure), "error_type": error_type(failure)})),
    )
        .into_response();
    if let Some(wait) = failure.retry_after() {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(wait.as_secs().max(1)),
        );
    }
    response
}

/// A failure before the stream started: a status when it must be one, else TGI's single
/// error event with status 200 (§b.4) — a rule violation or overload on a stream.
pub fn refusal(failure: &Failure, streaming: bool, stream_headers: &StreamHeaders) -> Response {
    if streaming && !failure.is_status_on_streams() {
        error_stream(failure, stream_headers)
    } else {
        error_response(failure)
    }
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

/// TGI's compute headers on an event stream: `x-compute-type` (the engine's) and
/// `x-compute-characters` (the prompt's length in characters).
#[derive(Debug, Clone)]
pub struct StreamHeaders {
    pub compute_type: String,
    pub characters: usize,
}

/// A `text/event-stream` response with TGI's compute headers.
fn stream_response(body: Body, stream_headers: &StreamHeaders) -> Response {
    let mut response = sse::response(body);
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&stream_headers.compute_type) {
        headers.insert("x-compute-type", value);
    }
    headers.insert(
        "x-compute-characters",
        HeaderValue::from(stream_headers.characters),
    );
    response
}

/// One error event as the whole stream, status 200 (§b.4).
pub fn error_stream(failure: &Failure, stream_headers: &StreamHeaders) -> Response {
    stream_response(
        Body::from(sse::frame(&error_event(failure))),
        stream_headers,
    )
}

/// `details` of a stream's final event.
fn details_of(finished: &Finished) -> Details {
    Details {
        finish_reason: finished.finish.reason,
        generated_tokens: finished.finish.generated_tokens,
        seed: finished.finish.seed,
    }
}

/// What TGI's replies echo of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Echo {
    /// `details` in the final event or answer.
    pub details: bool,
    /// `generated_text` starts with the prompt (as the model saw it).
    pub full_text: bool,
}

impl Echo {
    /// What `parameters` ask to echo; `full_text_default` is what an omitted
    /// `return_full_text` means (true on TGI's `/` and on chat-ui's relay of it, §c).
    pub fn of(parameters: &h2o_chat_protocol::GenerateParameters, full_text_default: bool) -> Echo {
        Echo {
            details: parameters.details,
            full_text: parameters.return_full_text.unwrap_or(full_text_default),
        }
    }
}

/// The event stream of a run (§b.1–§b.4): a frame per token, the final event, or an error
/// event; keep-alives while nothing arrives. A run stopped on request ends without a final
/// event (chat-ui's stop-generating).
pub async fn stream(
    mut run: Run,
    echo: Echo,
    stream_headers: &StreamHeaders,
    streams: &Streams,
) -> Response {
    if let Some(Step::Failed(failure)) = run.peek().await
        && failure.is_status_on_streams()
    {
        return error_response(failure);
    }
    let body = streams.body(run, move |step, run| match step {
        Step::KeepAlive => Frames::one(Bytes::from_static(sse::KEEP_ALIVE), false),
        Step::Token(token) => Frames::one(
            sse::frame(&StreamResponse {
                token,
                top_tokens: run.alternatives().to_vec(),
                generated_text: None,
                details: None,
            }),
            false,
        ),
        Step::Finished(finished) => {
            let generated_text = generated_text(&run.echo(), &finished, echo.full_text);
            let frame = sse::frame(&StreamResponse {
                details: echo.details.then(|| details_of(&finished)),
                top_tokens: run.alternatives().to_vec(),
                token: finished.token,
                generated_text: Some(generated_text),
            });
            Frames::one(frame, true)
        }
        Step::Failed(failure) => Frames::one(sse::frame(&error_event(&failure)), true),
        Step::Aborted => Frames::end(),
    });
    stream_response(body, stream_headers)
}

/// `generated_text`, with the prompt first when asked for.
fn generated_text(prompt: &str, finished: &Finished, full_text: bool) -> String {
    if full_text {
        format!("{prompt}{}", finished.finish.generated_text)
    } else {
        finished.finish.generated_text.clone()
    }
}

/// `details` of a non-stream answer: the stream's, plus the generated tokens and `prefill`
/// (the prompt's tokens with `decoder_input_details`, else empty, as TGI's own Python client
/// requires it present).
#[derive(serde::Serialize)]
struct FullDetails {
    finish_reason: h2o_chat_protocol::FinishReason,
    generated_tokens: u32,
    seed: Option<u64>,
    prefill: Vec<InputToken>,
    tokens: Vec<Token>,
    /// Each token's alternatives (`top_n_tokens`); absent when not asked for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    top_tokens: Vec<Vec<Token>>,
}

/// A prompt token as TGI reports it (its `PrefillToken`): no `special`, and a `null`
/// log-probability for the first.
#[derive(serde::Serialize)]
struct InputToken {
    id: u32,
    text: String,
    logprob: Option<f32>,
}

impl From<Token> for InputToken {
    fn from(token: Token) -> Self {
        InputToken {
            id: token.id,
            text: token.text,
            logprob: token.logprob,
        }
    }
}

/// TGI's non-stream answer. Serialised directly (not through `serde_json::Value`) so a
/// log-probability keeps its short `f32` form, as in the stream.
#[derive(serde::Serialize)]
struct Answer {
    generated_text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<FullDetails>,
}

/// Which JSON a non-stream answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `/generate`: an object.
    Object,
    /// `/` (and chat-ui's relay of it): a one-element list (§b.7).
    List,
}

/// A non-stream answer (§b.7), or TGI's error status.
pub async fn collect(run: Run, shape: Shape, echo: Echo) -> Response {
    match run.collect().await {
        Ok(Collected {
            finished,
            tokens,
            alternatives,
            prefill,
            echo: prompt,
        }) => {
            let top_tokens = if alternatives.iter().all(Vec::is_empty) {
                Vec::new()
            } else {
                alternatives
            };
            let answer = Answer {
                generated_text: generated_text(&prompt, &finished, echo.full_text),
                details: echo.details.then(|| FullDetails {
                    finish_reason: finished.finish.reason,
                    generated_tokens: finished.finish.generated_tokens,
                    seed: finished.finish.seed,
                    prefill: prefill.into_iter().map(InputToken::from).collect(),
                    tokens,
                    top_tokens,
                }),
            };
            match shape {
                Shape::Object => (StatusCode::OK, axum::Json(answer)).into_response(),
                Shape::List => (StatusCode::OK, axum::Json([answer])).into_response(),
            }
        }
        Err(failure) => error_response(&failure),
    }
}
