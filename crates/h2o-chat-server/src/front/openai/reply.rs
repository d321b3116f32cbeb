//! The OpenAI-compatible replies: the completion objects, and the streamed chunks strict
//! clients accept — the first chunk of each choice carries the role with `content` null, no
//! later delta has empty content, `finish_reason` is null until a choice's last chunk
//! (`stop`, `length` or `tool_calls`), `usage` (the engine's real counts, summed over the
//! choices) comes last when asked for, then `data: [DONE]`. A failure before the stream is
//! an error status; after it, an error chunk then `[DONE]`.
//!
//! Tool calls are read back from the answer ([`crate::tools::CallReader`]): a call is
//! `message.tool_calls[]` with `content` null; streamed, its `index`, `id`, `type` and name
//! come once, then its arguments in fragments as they are sampled.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use h2o_chat_engine::{Finish, FinishReason, Token};

use crate::front::openai::error::ApiError;
use crate::front::openai::logprobs::{self, Asked};
use crate::front::openai::request::Kind;
use crate::front::openai::wire::{
    ChatChoice, ChatLogprobs, Chunk, ChunkChoice, Completion, Delta, FunctionCall,
    FunctionCallDelta, PromptTokensDetails, ResponseMessage, TextChoice, TokenLogprob, ToolCall,
    ToolCallDelta, Usage,
};
use crate::pipeline::{Collected, Run, Step};
use crate::sse;
use crate::streaming::{Frames, Streams};
use crate::tools::{CallReader, Read, ToolChoice, Tools};

const DONE: &[u8] = b"data: [DONE]\n\n";

/// What the reply looks like, from the request.
#[derive(Debug, Clone)]
pub struct Shape {
    pub kind: Kind,
    /// The model id the reply names.
    pub model: String,
    pub include_usage: bool,
    pub logprobs: Asked,
    /// Tools whose calls are read back from the answer.
    pub tools: Option<Tools>,
}

impl Shape {
    /// A reader of calls, when the answer may hold them.
    fn reader(&self) -> Option<CallReader> {
        let tools = self.tools.as_ref()?;
        Some(CallReader::new(!matches!(tools.choice, ToolChoice::Auto)))
    }
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

fn call_id() -> String {
    format!("call_{}", &uuid::Uuid::new_v4().simple().to_string()[..24])
}

fn finish_reason(finish: &Finish, calls: usize) -> &'static str {
    match finish.reason {
        FinishReason::Length => "length",
        _ if calls > 0 => "tool_calls",
        FinishReason::EosToken | FinishReason::StopSequence => "stop",
    }
}

/// `usage` of the choices together: the prompt once, every choice's answer, the prompt
/// tokens served from the cache (OpenAI's `prompt_tokens_details.cached_tokens`).
fn usage<'a>(finishes: impl Iterator<Item = &'a Finish>) -> Usage {
    let mut usage = Usage {
        prompt_tokens: 0,
        completion_tokens: 0,
        total_tokens: 0,
        prompt_tokens_details: PromptTokensDetails { cached_tokens: 0 },
    };
    for (i, finish) in finishes.enumerate() {
        if i == 0 {
            usage.prompt_tokens = finish.input_tokens;
            usage.prompt_tokens_details.cached_tokens = finish.cached_tokens;
        }
        usage.completion_tokens = usage
            .completion_tokens
            .saturating_add(finish.generated_tokens);
    }
    usage.total_tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
    usage
}

/// The non-stream completion object of every run (one per choice), or the first failure.
pub async fn complete(runs: Vec<Run>, shape: Shape) -> Response {
    let collected = futures_util::future::join_all(runs.into_iter().map(Run::collect)).await;
    let mut choices = Vec::with_capacity(collected.len());
    for result in collected {
        match result {
            Ok(collected) => choices.push(collected),
            Err(failure) => return ApiError::from_failure(&failure).into_response(),
        }
    }
    let usage = usage(choices.iter().map(|c| &c.finished.finish));
    let (id, created) = (shape.kind.id(), now());
    match shape.kind {
        Kind::Chat => Json(Completion {
            id,
            object: "chat.completion",
            created,
            model: shape.model.clone(),
            choices: choices
                .iter()
                .enumerate()
                .map(|(index, collected)| chat_choice(index as u32, collected, &shape))
                .collect(),
            usage,
            system_fingerprint: None,
        })
        .into_response(),
        Kind::Text => Json(Completion {
            id,
            object: "text_completion",
            created,
            model: shape.model.clone(),
            choices: choices
                .iter()
                .enumerate()
                .map(|(index, collected)| TextChoice {
                    index: index as u32,
                    text: collected.text(),
                    logprobs: shape
                        .logprobs
                        .on
                        .then(|| logprobs::text(&collected.tokens, &collected.alternatives, 0)),
                    finish_reason: Some(finish_reason(&collected.finished.finish, 0)),
                })
                .collect(),
            usage,
            system_fingerprint: None,
        })
        .into_response(),
    }
}

/// One chat choice: its text, or its calls.
fn chat_choice(index: u32, collected: &Collected, shape: &Shape) -> ChatChoice {
    let text = collected.text();
    let (content, calls) = match shape.reader() {
        None => (Some(text), Vec::new()),
        Some(reader) => {
            let (content, calls) = reader.read_all(&text);
            let calls: Vec<ToolCall> = calls
                .into_iter()
                .map(|(name, arguments)| ToolCall {
                    id: call_id(),
                    kind: "function",
                    function: FunctionCall { name, arguments },
                })
                .collect();
            (
                (calls.is_empty() || !content.is_empty()).then_some(content),
                calls,
            )
        }
    };
    let finish_reason = finish_reason(&collected.finished.finish, calls.len());
    ChatChoice {
        index,
        message: ResponseMessage {
            role: "assistant",
            content,
            tool_calls: (!calls.is_empty()).then_some(calls),
        },
        logprobs: shape
            .logprobs
            .on
            .then(|| logprobs::chat(&collected.tokens, &collected.alternatives)),
        finish_reason,
    }
}

/// Writes the chunks of one streamed completion.
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

    fn chat(
        &self,
        index: u32,
        delta: Delta,
        logprobs: Option<ChatLogprobs>,
        finish_reason: Option<&'static str>,
    ) -> Bytes {
        self.frame(
            vec![ChunkChoice {
                index,
                delta,
                logprobs,
                finish_reason,
            }],
            None,
        )
    }
}

/// A streamed choice's state.
struct Choice {
    index: u32,
    started: bool,
    reader: Option<CallReader>,
    /// Calls begun (their ids, in order).
    calls: usize,
    /// Log-probabilities of tokens not yet sent with a chunk.
    logprobs: Vec<TokenLogprob>,
    /// Characters given so far (completions' `text_offset`).
    offset: usize,
}

impl Choice {
    fn take_logprobs(&mut self, asked: Asked) -> Option<ChatLogprobs> {
        asked.on.then(|| ChatLogprobs {
            content: std::mem::take(&mut self.logprobs),
            refusal: None,
        })
    }

    /// The frames of one token of this choice.
    fn token(
        &mut self,
        chunks: &Chunks,
        shape: &Shape,
        token: &Token,
        alternatives: &[Token],
    ) -> Vec<Bytes> {
        if token.special || token.text.is_empty() {
            return Vec::new();
        }
        if chunks.kind == Kind::Text {
            let logprobs = shape.logprobs.on.then(|| {
                logprobs::text(
                    std::slice::from_ref(token),
                    &[alternatives.to_vec()],
                    self.offset,
                )
            });
            self.offset += token.text.chars().count();
            return vec![chunks.frame(
                vec![TextChoice {
                    index: self.index,
                    text: token.text.clone(),
                    logprobs,
                    finish_reason: None,
                }],
                None,
            )];
        }
        if shape.logprobs.on
            && let Some(entry) = logprobs::chat_entry(token, alternatives)
        {
            self.logprobs.push(entry);
        }
        let reads = match self.reader.as_mut() {
            Some(reader) => reader.push(&token.text),
            None => vec![Read::Text(token.text.clone())],
        };
        self.frames(chunks, shape, reads)
    }

    /// The chunks of what the reader made of the answer.
    fn frames(&mut self, chunks: &Chunks, shape: &Shape, reads: Vec<Read>) -> Vec<Bytes> {
        let mut frames = Vec::new();
        for read in reads {
            let delta = match read {
                Read::Text(text) if text.is_empty() => continue,
                Read::Text(text) => Delta {
                    content: Some(Some(text)),
                    ..Delta::default()
                },
                Read::CallStarted { index, name } => {
                    self.calls += 1;
                    Delta {
                        tool_calls: Some(vec![ToolCallDelta {
                            index: index as u32,
                            id: Some(call_id()),
                            kind: Some("function"),
                            function: FunctionCallDelta {
                                name: Some(name),
                                arguments: String::new(),
                            },
                        }]),
                        ..Delta::default()
                    }
                }
                Read::Arguments { index, text } => Delta {
                    tool_calls: Some(vec![ToolCallDelta {
                        index: index as u32,
                        id: None,
                        kind: None,
                        function: FunctionCallDelta {
                            name: None,
                            arguments: text,
                        },
                    }]),
                    ..Delta::default()
                },
            };
            let logprobs = self.take_logprobs(shape.logprobs);
            frames.push(chunks.chat(self.index, delta, logprobs, None));
        }
        frames
    }

    /// The frames of this choice's last step.
    fn finish(
        &mut self,
        chunks: &Chunks,
        shape: &Shape,
        token: &Token,
        alternatives: &[Token],
        finish: &Finish,
    ) -> Vec<Bytes> {
        let mut frames = self.token(chunks, shape, token, alternatives);
        if let Some(mut reader) = self.reader.take() {
            let reads = reader.finish();
            frames.extend(self.frames(chunks, shape, reads));
        }
        let reason = finish_reason(finish, self.calls);
        frames.push(match chunks.kind {
            Kind::Chat => {
                let logprobs = if self.logprobs.is_empty() {
                    None
                } else {
                    self.take_logprobs(shape.logprobs)
                };
                chunks.chat(self.index, Delta::default(), logprobs, Some(reason))
            }
            Kind::Text => chunks.frame(
                vec![TextChoice {
                    index: self.index,
                    text: String::new(),
                    logprobs: None,
                    finish_reason: Some(reason),
                }],
                None,
            ),
        });
        frames
    }
}

/// The streamed reply of every run (one per choice); see the module docs.
pub async fn stream(mut runs: Vec<Run>, shape: Shape, streams: &Streams) -> Response {
    for run in &mut runs {
        if let Some(Step::Failed(failure)) = run.peek().await
            && failure.is_status_on_streams()
        {
            return ApiError::from_failure(failure).into_response();
        }
    }
    let chunks = Chunks {
        id: shape.kind.id(),
        created: now(),
        model: shape.model.clone(),
        kind: shape.kind,
    };
    let mut choices: Vec<Choice> = (0..runs.len())
        .map(|index| Choice {
            index: index as u32,
            started: false,
            reader: shape.reader(),
            calls: 0,
            logprobs: Vec::new(),
            offset: 0,
        })
        .collect();
    let include_usage = shape.include_usage;
    let end_chunks = Chunks {
        id: chunks.id.clone(),
        created: chunks.created,
        model: chunks.model.clone(),
        kind: chunks.kind,
    };
    // Each choice's end, for the `usage` chunk after the last.
    let ended = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Finish>::new()));
    let end_finishes = ended.clone();
    let encode = move |index: usize, step: Step, alternatives: &[Token]| {
        let Some(choice) = choices.get_mut(index) else {
            return Frames::none();
        };
        let mut frames = match step {
            // A comment line: clients skip it, proxies see the connection is alive.
            Step::KeepAlive => return Frames::one(Bytes::from_static(b": keep-alive\n\n"), false),
            Step::Token(token) => Frames {
                bytes: choice.token(&chunks, &shape, &token, alternatives),
                last: false,
            },
            Step::Finished(finished) => {
                let bytes = choice.finish(
                    &chunks,
                    &shape,
                    &finished.token,
                    alternatives,
                    &finished.finish,
                );
                if let Ok(mut all) = ended.lock() {
                    all.push(finished.finish);
                }
                Frames { bytes, last: false }
            }
            Step::Failed(failure) => Frames {
                bytes: vec![
                    sse::spaced_frame(ApiError::from_failure(&failure).body()),
                    Bytes::from_static(DONE),
                ],
                last: true,
            },
            Step::Aborted => Frames::end(),
        };
        // Each choice's first chunk names the role, with no content yet.
        if !choice.started && chunks.kind == Kind::Chat {
            choice.started = true;
            let role = Delta {
                role: Some("assistant"),
                content: Some(None),
                tool_calls: None,
            };
            frames
                .bytes
                .insert(0, chunks.chat(choice.index, role, None, None));
        }
        frames
    };
    let end = move || {
        let mut frames = Vec::with_capacity(2);
        if include_usage && let Ok(all) = end_finishes.lock() {
            frames.push(end_chunks.frame::<ChunkChoice>(Vec::new(), Some(usage(all.iter()))));
        }
        frames.push(Bytes::from_static(DONE));
        frames
    };
    sse::response(streams.merged(runs, encode, end))
}
