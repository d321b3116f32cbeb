//! TGI's replies (§b, §c): the event stream, the one-shot JSON, and errors with TGI's
//! statuses. chat-ui relays exactly these (§a.4 step 9), so its generate route uses them too.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use h2o_chat_protocol::{Details, ErrorEvent, StreamResponse, Token};
use serde_json::json;

use crate::pipeline::{Collected, Failure, Finished, Run, Step};
use crate::stops::StopGuard;
use crate::wire::sse;

/// Called with a good run's end (chat-ui stores the answer).
pub type OnFinish = Box<dyn FnOnce(&Finished) + Send>;

/// The error event of a failure (§b.4).
pub fn error_event(failure: &Failure) -> ErrorEvent {
    ErrorEvent {
        error: failure.message(),
        error_type: Some(failure.error_type().to_string()),
    }
}

/// The status of a failure when the reply is not (or not yet) a stream: TGI's 422 / 424 /
/// 429 / 500, 503 while the model is not available, and a relayed upstream's own status.
pub fn status_of(failure: &Failure) -> StatusCode {
    match failure {
        Failure::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        Failure::Overloaded => StatusCode::TOO_MANY_REQUESTS,
        Failure::Unavailable(_) | Failure::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        Failure::Upstream { status, .. } => {
            StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
        }
        Failure::Generation(_) | Failure::Stalled(_) => StatusCode::FAILED_DEPENDENCY,
        Failure::Incomplete => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `Retry-After` for failures that have one.
pub fn retry_after(failure: &Failure) -> Option<Duration> {
    match failure {
        Failure::Upstream { retry_after, .. } => *retry_after,
        Failure::Overloaded => Some(Duration::from_secs(1)),
        _ => None,
    }
}

/// `{"error", "error_type"}` with the failure's status.
pub fn error_response(failure: &Failure) -> Response {
    let mut response = (
        status_of(failure),
        axum::Json(json!({"error": failure.message(), "error_type": failure.error_type()})),
    )
        .into_response();
    if let Some(wait) = retry_after(failure) {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(wait.as_secs().max(1)),
        );
    }
    response
}

/// Whether a failure must be a status even on a streaming route: what TGI itself answers
/// with an event (§f) stays an event; what a relayed upstream or an unavailable model says
/// is a status.
pub fn is_status_even_when_streaming(failure: &Failure) -> bool {
    matches!(
        failure,
        Failure::Upstream { .. } | Failure::Unavailable(_) | Failure::ShuttingDown
    )
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

fn details_of(finished: &Finished) -> Details {
    Details {
        finish_reason: finished.finish.reason,
        generated_tokens: finished.finish.generated_tokens,
        seed: finished.finish.seed,
    }
}

/// A `text/event-stream` response with TGI's compute headers.
fn stream_response(
    body: impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static,
    characters: usize,
) -> Response {
    let mut response = sse::response(body);
    let headers = response.headers_mut();
    headers.insert("x-compute-type", HeaderValue::from_static("cpu+llama.cpp"));
    headers.insert("x-compute-characters", HeaderValue::from(characters));
    response
}

/// One error event as the whole stream, status 200 (§b.4).
pub fn error_stream(failure: &Failure, characters: usize) -> Response {
    let frame = sse::frame(&error_event(failure));
    stream_response(
        futures_util::stream::once(async move { Ok(frame) }),
        characters,
    )
}

/// How chat-ui's generate stream ends early on `stop-generating`: the stream closes (no
/// final event, as a stopped generation has none) after `on_stop` has the text so far.
pub struct Stopping {
    pub guard: StopGuard,
    pub on_stop: Box<dyn FnOnce(&str) + Send>,
}

/// What the event stream carries between steps.
struct Streaming {
    run: Run,
    on_finish: Option<OnFinish>,
    stopping: Option<Stopping>,
    /// The text so far, kept only when it can be stopped.
    partial: String,
    ended: bool,
}

impl Streaming {
    /// The next step, or `None` when stopped (after handing over the text so far).
    async fn next(&mut self) -> Option<Step> {
        let Some(stopping) = &self.stopping else {
            return self.run.next().await;
        };
        let step = tokio::select! {
            biased;
            () = stopping.guard.stopped() => None,
            step = self.run.next() => step,
        };
        match &step {
            Some(Step::Token(token)) if !token.special => self.partial.push_str(&token.text),
            None => {
                if let Some(stopping) = self.stopping.take() {
                    (stopping.on_stop)(&self.partial);
                }
            }
            _ => {}
        }
        step
    }
}

impl Drop for Streaming {
    /// A stream dropped before its end keeps its text so far: one that was stopped and whose
    /// client left before it was polled again, and one whose client left mid-answer (a closed
    /// tab keeps the question and the answer as far as it went, as stop-generating does).
    fn drop(&mut self) {
        if let Some(stopping) = self.stopping.take()
            && (stopping.guard.is_stopped() || !self.ended)
        {
            (stopping.on_stop)(&self.partial);
        }
    }
}

/// The event stream of a run (§b.1–§b.4): a frame per token, the final event, or an error
/// event; keep-alives while nothing arrives. `characters` is `x-compute-characters`.
pub async fn stream(
    mut run: Run,
    characters: usize,
    on_finish: Option<OnFinish>,
    stopping: Option<Stopping>,
) -> Response {
    if let Some(Step::Failed(failure)) = run.peek().await
        && is_status_even_when_streaming(failure)
    {
        return error_response(failure);
    }
    let state = Streaming {
        run,
        on_finish,
        stopping,
        partial: String::new(),
        ended: false,
    };
    let body = futures_util::stream::unfold(state, |mut state| async move {
        if state.ended {
            return None;
        }
        let bytes = match state.next().await? {
            Step::KeepAlive => Bytes::from_static(sse::KEEP_ALIVE),
            Step::Token(token) => sse::frame(&StreamResponse {
                token,
                generated_text: None,
                details: None,
            }),
            Step::Finished(finished) => {
                let frame = sse::frame(&StreamResponse {
                    token: finished.token.clone(),
                    generated_text: Some(finished.generated_text.clone()),
                    details: finished.details.then(|| details_of(&finished)),
                });
                if let Some(on_finish) = state.on_finish.take() {
                    on_finish(&finished);
                }
                state.ended = true;
                frame
            }
            Step::Failed(failure) => {
                state.ended = true;
                sse::frame(&error_event(&failure))
            }
        };
        Some((Ok(bytes), state))
    });
    stream_response(body, characters)
}

/// `details` of a non-stream answer: the stream's, plus the generated tokens and an empty
/// `prefill` (no `decoder_input_details`), as TGI's own Python client requires.
#[derive(serde::Serialize)]
struct FullDetails {
    finish_reason: h2o_chat_protocol::FinishReason,
    generated_tokens: u32,
    seed: Option<u64>,
    prefill: Vec<Token>,
    tokens: Vec<Token>,
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
pub async fn collect(run: Run, shape: Shape, on_finish: Option<OnFinish>) -> Response {
    match run.collect().await {
        Ok(Collected { finished, tokens }) => {
            let answer = Answer {
                generated_text: finished.generated_text.clone(),
                details: finished.details.then(|| FullDetails {
                    finish_reason: finished.finish.reason,
                    generated_tokens: finished.finish.generated_tokens,
                    seed: finished.finish.seed,
                    prefill: Vec::new(),
                    tokens,
                }),
            };
            if let Some(on_finish) = on_finish {
                on_finish(&finished);
            }
            match shape {
                Shape::Object => (StatusCode::OK, axum::Json(answer)).into_response(),
                Shape::List => (StatusCode::OK, axum::Json([answer])).into_response(),
            }
        }
        Err(failure) => error_response(&failure),
    }
}
