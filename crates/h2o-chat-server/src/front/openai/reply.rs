//! The OpenAI-compatible replies: the completion objects, and the streamed chunks strict
//! clients accept (`finish_reason` null until the last chunk, then `stop` or `length`;
//! `usage` with the engine's real counts; `data: [DONE]` at the end). A failure before the
//! stream is an error status; after it, an error chunk then `[DONE]`.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use h2o_chat_engine::{Finish, FinishReason};

use crate::front::openai::error::ApiError;
use crate::front::openai::request::Kind;
use crate::front::openai::wire::{
    ChatChoice, Chunk, ChunkChoice, Completion, Delta, PromptTokensDetails, ResponseMessage,
    TextChoice, Usage,
};
use crate::pipeline::{Finished, Run, Step};
use crate::sse;
use crate::streaming::{Frames, Streams};

const DONE: &[u8] = b"data: [DONE]\n\n";

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
fn usage(finish: &Finish) -> Usage {
    Usage {
        prompt_tokens: finish.input_tokens,
        completion_tokens: finish.generated_tokens,
        total_tokens: finish.input_tokens.saturating_add(finish.generated_tokens),
        prompt_tokens_details: PromptTokensDetails {
            cached_tokens: finish.cached_tokens,
        },
    }
}

/// The non-stream completion object, or the failure.
pub async fn complete(run: Run, kind: Kind, model: String) -> Response {
    let collected = match run.collect().await {
        Ok(collected) => collected,
        Err(failure) => return ApiError::from_failure(&failure).into_response(),
    };
    let text = collected.text();
    let finish = &collected.finished.finish;
    let (id, created) = (kind.id(), now());
    match kind {
        Kind::Chat => Json(Completion {
            id,
            object: "chat.completion",
            created,
            model,
            choices: vec![ChatChoice {
                index: 0,
                message: ResponseMessage {
                    role: "assistant",
                    content: text,
                },
                logprobs: None,
                finish_reason: finish_reason(finish),
            }],
            usage: usage(finish),
            system_fingerprint: None,
        })
        .into_response(),
        Kind::Text => Json(Completion {
            id,
            object: "text_completion",
            created,
            model,
            choices: vec![TextChoice {
                index: 0,
                text,
                logprobs: None,
                finish_reason: Some(finish_reason(finish)),
            }],
            usage: usage(finish),
            system_fingerprint: None,
        })
        .into_response(),
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
    fn frame<C: serde::Serialize>(&self, choices: Vec<C>, usage: Option<Usage>) -> Bytes {
        sse::spaced_frame(&Chunk {
            id: self.id.clone(),
            object: match self.kind {
                Kind::Chat => "chat.completion.chunk",
                Kind::Text => "text_completion",
            },
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: None,
            choices,
            usage,
        })
    }

    /// A chunk of one choice: a delta (chat) or text (completions), and the finish reason.
    fn choice(&self, delta: Delta, finish_reason: Option<&'static str>) -> Bytes {
        match self.kind {
            Kind::Chat => self.frame(
                vec![ChunkChoice {
                    index: 0,
                    delta,
                    logprobs: None,
                    finish_reason,
                }],
                None,
            ),
            Kind::Text => self.frame(
                vec![TextChoice {
                    index: 0,
                    text: delta.content.unwrap_or_default(),
                    logprobs: None,
                    finish_reason,
                }],
                None,
            ),
        }
    }

    fn role(&self) -> Bytes {
        self.choice(
            Delta {
                role: Some("assistant"),
                content: Some(String::new()),
            },
            None,
        )
    }

    fn content(&self, text: &str) -> Bytes {
        self.choice(
            Delta {
                role: None,
                content: Some(text.to_string()),
            },
            None,
        )
    }

    fn end(&self, finished: &Finished, include_usage: bool) -> Vec<Bytes> {
        let mut frames = Vec::with_capacity(4);
        if !finished.token.special && !finished.token.text.is_empty() {
            frames.push(self.content(&finished.token.text));
        }
        let last = match self.kind {
            Kind::Chat => Delta::default(),
            Kind::Text => Delta {
                role: None,
                content: Some(String::new()),
            },
        };
        frames.push(self.choice(last, Some(finish_reason(&finished.finish))));
        if include_usage {
            frames.push(self.frame::<ChunkChoice>(Vec::new(), Some(usage(&finished.finish))));
        }
        frames.push(Bytes::from_static(DONE));
        frames
    }
}

/// The streamed reply: a role chunk (chat), content chunks, the finish chunk, `usage` if
/// asked for, then `[DONE]`. A failure mid-stream becomes an error chunk then `[DONE]`.
pub async fn stream(
    mut run: Run,
    kind: Kind,
    model: String,
    include_usage: bool,
    streams: &Streams,
) -> Response {
    if let Some(Step::Failed(failure)) = run.peek().await
        && failure.is_status_on_streams()
    {
        return ApiError::from_failure(failure).into_response();
    }
    let chunks = Chunks {
        id: kind.id(),
        created: now(),
        model,
        kind,
    };
    let mut role = (kind == Kind::Chat).then(|| chunks.role());
    let body = streams.body(run, move |step, _| {
        let mut frames = match step {
            // A comment line: clients skip it, proxies see the connection is alive.
            Step::KeepAlive => Frames::one(Bytes::from_static(b": keep-alive\n\n"), false),
            Step::Token(token) if !token.special && !token.text.is_empty() => {
                Frames::one(chunks.content(&token.text), false)
            }
            Step::Token(_) => Frames::none(),
            Step::Finished(finished) => Frames {
                bytes: chunks.end(&finished, include_usage),
                last: true,
            },
            Step::Failed(failure) => Frames {
                bytes: vec![
                    sse::spaced_frame(ApiError::from_failure(&failure).body()),
                    Bytes::from_static(DONE),
                ],
                last: true,
            },
            Step::Aborted => Frames::end(),
        };
        // The role chunk goes first, with whatever the first step brings.
        if let Some(role) = role.take() {
            frames.bytes.insert(0, role);
        }
        frames
    });
    sse::response(body)
}
