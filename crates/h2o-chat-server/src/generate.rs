//! From a validated request to TGI's reply: the SSE event stream (§b.1–§b.4, §b.6) or the
//! one-shot JSON (§b.7). HTTP handlers stay thin; this is where generation meets the wire.
//!
//! The stream owns the engine's receiver: when the client disconnects, hyper drops the body,
//! the receiver goes with it, and the engine stops at its next token. A concurrency permit
//! (`max_concurrent_requests`) is held for the life of the stream; without one the answer is
//! the `overloaded` error event.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use h2o_chat::protocol::wire::{Details, ErrorEvent, FinishReason, StreamResponse, Token};
use h2o_chat_engine::{Engine, EngineError, Finish, GenerationEvent, TokenOut};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::validation::Validated;

/// What the caller learns when a generation ends well: the final text (for chat-ui to
/// store) and the finish summary.
pub type OnFinish = Box<dyn FnOnce(&Finish) + Send>;

/// An error event's parts (§b.4).
pub fn error_event(error: impl Into<String>, error_type: &str) -> ErrorEvent {
    ErrorEvent {
        error: error.into(),
        error_type: Some(error_type.to_string()),
    }
}

/// `data:` + compact JSON + `\n\n` (§b.1).
pub fn frame<T: serde::Serialize>(event: &T) -> Bytes {
    let mut line = Vec::with_capacity(160);
    line.extend_from_slice(b"data:");
    // Serialising these plain structs cannot fail.
    if serde_json::to_writer(&mut line, event).is_err() {
        line.truncate(5);
        line.extend_from_slice(br#"{"error":"serialization failed","error_type":"generation"}"#);
    }
    line.extend_from_slice(b"\n\n");
    Bytes::from(line)
}

/// The keep-alive comment (§b.1).
pub const KEEP_ALIVE: &[u8] = b":\n\n";

fn wire_token(token: TokenOut) -> Token {
    Token {
        id: token.id,
        text: token.text,
        logprob: token.logprob.is_finite().then_some(token.logprob),
        special: token.special,
    }
}

fn wire_reason(reason: h2o_chat_engine::FinishReason) -> FinishReason {
    match reason {
        h2o_chat_engine::FinishReason::Length => FinishReason::Length,
        h2o_chat_engine::FinishReason::EosToken => FinishReason::EosToken,
        h2o_chat_engine::FinishReason::StopSequence => FinishReason::StopSequence,
    }
}

/// `details` of the final event, when asked for.
pub fn details_of(finish: &Finish) -> Details {
    Details {
        finish_reason: wire_reason(finish.reason),
        generated_tokens: finish.generated_tokens,
        seed: finish.seed,
    }
}

/// `generated_text` of the final event: the prompt first when `return_full_text`.
fn generated_text(validated: &Validated, finish: &Finish) -> String {
    if validated.return_full_text {
        format!("{}{}", validated.generation.prompt, finish.generated_text)
    } else {
        finish.generated_text.clone()
    }
}

/// Starts a generation under the concurrency limit.
pub fn start(
    engine: &Arc<dyn Engine>,
    permits: &Arc<Semaphore>,
    validated: &Validated,
) -> Result<(mpsc::Receiver<GenerationEvent>, OwnedSemaphorePermit), ErrorEvent> {
    let overloaded = || error_event("Model is overloaded", "overloaded");
    let permit = permits
        .clone()
        .try_acquire_owned()
        .map_err(|_| overloaded())?;
    match engine.start(validated.generation.clone()) {
        Ok(generation) => Ok((generation.events, permit)),
        Err(EngineError::Overloaded) => Err(overloaded()),
        Err(err) => Err(error_event(
            format!("Request failed during generation: {err}"),
            "generation",
        )),
    }
}

enum Phase {
    /// Not started: the error to send, or the receiver to read.
    Ready(Result<(mpsc::Receiver<GenerationEvent>, OwnedSemaphorePermit), ErrorEvent>),
    Streaming(mpsc::Receiver<GenerationEvent>, OwnedSemaphorePermit),
    Done,
}

struct StreamState {
    phase: Phase,
    validated: Validated,
    keep_alive: Duration,
    on_finish: Option<OnFinish>,
}

/// The SSE body of a generation.
pub fn sse_body(
    engine: &Arc<dyn Engine>,
    permits: &Arc<Semaphore>,
    validated: Validated,
    keep_alive: Duration,
    on_finish: Option<OnFinish>,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    let state = StreamState {
        phase: Phase::Ready(start(engine, permits, &validated)),
        validated,
        keep_alive,
        on_finish,
    };
    futures_util::stream::unfold(state, |mut state| async move {
        let bytes = next_frame(&mut state).await?;
        Some((Ok(bytes), state))
    })
}

async fn next_frame(state: &mut StreamState) -> Option<Bytes> {
    loop {
        match std::mem::replace(&mut state.phase, Phase::Done) {
            Phase::Done => return None,
            Phase::Ready(Err(error)) => return Some(frame(&error)),
            Phase::Ready(Ok((events, permit))) => state.phase = Phase::Streaming(events, permit),
            Phase::Streaming(mut events, permit) => {
                let event = tokio::time::timeout(state.keep_alive, events.recv()).await;
                match event {
                    Err(_) => {
                        state.phase = Phase::Streaming(events, permit);
                        return Some(Bytes::from_static(KEEP_ALIVE));
                    }
                    Ok(Some(GenerationEvent::Token(token))) => {
                        state.phase = Phase::Streaming(events, permit);
                        return Some(frame(&StreamResponse {
                            token: wire_token(token),
                            generated_text: None,
                            details: None,
                        }));
                    }
                    Ok(Some(GenerationEvent::Finished(token, finish))) => {
                        let event = StreamResponse {
                            token: wire_token(token),
                            generated_text: Some(generated_text(&state.validated, &finish)),
                            details: state.validated.details.then(|| details_of(&finish)),
                        };
                        if let Some(on_finish) = state.on_finish.take() {
                            on_finish(&finish);
                        }
                        drop(permit);
                        return Some(frame(&event));
                    }
                    Ok(Some(GenerationEvent::Failed(message))) => {
                        return Some(frame(&error_event(
                            format!("Request failed during generation: {message}"),
                            "generation",
                        )));
                    }
                    Ok(None) => {
                        return Some(frame(&error_event(
                            "Incomplete generation",
                            "incomplete_generation",
                        )));
                    }
                }
            }
        }
    }
}

/// The result of a generation read to its end (for `/generate` and non-stream `/`).
pub enum Collected {
    Done {
        text: String,
        finish: Finish,
        tokens: Vec<Token>,
    },
    Failed(ErrorEvent),
}

/// Runs a generation to its end.
pub async fn collect(
    engine: &Arc<dyn Engine>,
    permits: &Arc<Semaphore>,
    validated: &Validated,
) -> Collected {
    let (mut events, _permit) = match start(engine, permits, validated) {
        Ok(started) => started,
        Err(error) => return Collected::Failed(error),
    };
    let mut tokens = Vec::new();
    while let Some(event) = events.recv().await {
        match event {
            GenerationEvent::Token(token) => tokens.push(wire_token(token)),
            GenerationEvent::Finished(token, finish) => {
                tokens.push(wire_token(token));
                return Collected::Done {
                    text: generated_text(validated, &finish),
                    finish,
                    tokens,
                };
            }
            GenerationEvent::Failed(message) => {
                return Collected::Failed(error_event(
                    format!("Request failed during generation: {message}"),
                    "generation",
                ));
            }
        }
    }
    Collected::Failed(error_event(
        "Incomplete generation",
        "incomplete_generation",
    ))
}

/// `details` of a non-stream answer: the stream's, plus the generated tokens and an empty
/// `prefill` (no `decoder_input_details`), as TGI's own Python client requires.
#[derive(serde::Serialize)]
pub struct FullDetails {
    pub finish_reason: FinishReason,
    pub generated_tokens: u32,
    pub seed: Option<u64>,
    pub prefill: Vec<Token>,
    pub tokens: Vec<Token>,
}

/// TGI's non-stream answer. Serialised directly (not through `serde_json::Value`) so a
/// log-probability keeps its short `f32` form, as in the stream.
#[derive(serde::Serialize)]
pub struct Answer {
    pub generated_text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<FullDetails>,
}

/// The answer for a finished generation.
pub fn json_answer(
    validated: &Validated,
    text: String,
    finish: &Finish,
    tokens: Vec<Token>,
) -> Answer {
    Answer {
        generated_text: text,
        details: validated.details.then(|| FullDetails {
            finish_reason: wire_reason(finish.reason),
            generated_tokens: finish.generated_tokens,
            seed: finish.seed,
            prefill: Vec::new(),
            tokens,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_data_compact_json_and_two_line_feeds() {
        let bytes = frame(&error_event("Model is overloaded", "overloaded"));
        assert_eq!(
            &bytes[..],
            b"data:{\"error\":\"Model is overloaded\",\"error_type\":\"overloaded\"}\n\n"
        );
    }

    #[test]
    fn non_ascii_is_raw_utf8_and_newlines_are_escaped() {
        let bytes = frame(&StreamResponse {
            token: Token {
                id: 1,
                text: "é\n".into(),
                logprob: None,
                special: false,
            },
            generated_text: None,
            details: None,
        });
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            "data:{\"token\":{\"id\":1,\"text\":\"é\\n\",\"logprob\":null,\"special\":false},\"generated_text\":null,\"details\":null}\n\n"
        );
    }
}
