//! Anthropic's replies: the `message` object, and the event stream its SDKs read —
//! `message_start`, then per content block `content_block_start`, `content_block_delta`s
//! (`text_delta`, or `input_json_delta` fragments of a tool call's input),
//! `content_block_stop`, then `message_delta` (the stop reason and usage) and
//! `message_stop`; `ping` while nothing arrives; an `error` event if the run fails after it
//! began. Every event has its `event:` line.
//!
//! A matched stop sequence is not part of the text (Anthropic names it in `stop_sequence`
//! instead): a stream holds back the last characters that could begin one until it is known.

use axum::Json;
use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use h2o_chat_engine::{Finish, FinishReason};
use serde_json::Value;

use crate::front::anthropic::error::AnthropicError;
use crate::front::anthropic::wire::{
    BlockDelta, ContentBlock, DeltaUsage, Message, MessageDelta, StreamEvent, Usage,
};
use crate::pipeline::{Run, Step};
use crate::sse;
use crate::streaming::{Frames, Streams};
use crate::tools::{CallReader, Read, ToolChoice, Tools};

/// What the reply needs from the request.
#[derive(Debug, Clone)]
pub struct Shape {
    pub model: String,
    pub tools: Option<Tools>,
    pub stop: Vec<String>,
}

impl Shape {
    fn reader(&self) -> Option<CallReader> {
        let tools = self.tools.as_ref()?;
        Some(CallReader::new(!matches!(tools.choice, ToolChoice::Auto)))
    }

    /// The stop sequence that ended `text`, when one did.
    fn matched(&self, finish: &Finish) -> Option<String> {
        if finish.reason != FinishReason::StopSequence {
            return None;
        }
        let mut stops: Vec<&String> = self.stop.iter().collect();
        stops.sort_by_key(|s| std::cmp::Reverse(s.len()));
        stops
            .into_iter()
            .find(|s| finish.generated_text.ends_with(s.as_str()))
            .cloned()
    }

    /// Characters a stream holds back: the longest stop sequence (the token that completes
    /// one ends the answer, so the whole of it is still held then).
    fn hold(&self) -> usize {
        self.stop
            .iter()
            .map(|s| s.chars().count())
            .max()
            .unwrap_or(0)
    }
}

fn id(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..24]
    )
}

fn stop_reason(finish: &Finish, calls: usize) -> &'static str {
    match finish.reason {
        FinishReason::Length => "max_tokens",
        _ if calls > 0 => "tool_use",
        FinishReason::StopSequence => "stop_sequence",
        FinishReason::EosToken => "end_turn",
    }
}

fn usage(finish: &Finish) -> Usage {
    Usage {
        input_tokens: finish.input_tokens,
        cache_creation_input_tokens: 0,
        cache_read_input_tokens: finish.cached_tokens,
        output_tokens: finish.generated_tokens,
    }
}

/// A call's input as an object (what the grammar made it; `{}` if the length limit cut it).
fn input_of(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| Value::Object(Default::default()))
}

/// The non-stream `message`, or the failure.
pub async fn message(run: Run, shape: Shape) -> Response {
    let collected = match run.collect().await {
        Ok(collected) => collected,
        Err(failure) => return AnthropicError::from_failure(&failure).into_response(),
    };
    let finish = &collected.finished.finish;
    let stop_sequence = shape.matched(finish);
    let mut text = collected.text();
    if let Some(stop) = &stop_sequence
        && let Some(kept) = text.strip_suffix(stop.as_str())
    {
        text = kept.to_string();
    }
    let (words, calls) = match shape.reader() {
        None => (text, Vec::new()),
        Some(reader) => reader.read_all(&text),
    };
    let mut content: Vec<ContentBlock> = Vec::new();
    if !words.is_empty() || calls.is_empty() {
        content.push(ContentBlock::Text { text: words });
    }
    content.extend(calls.iter().map(|(name, arguments)| ContentBlock::ToolUse {
        id: id("toolu"),
        name: name.clone(),
        input: input_of(arguments),
    }));
    Json(Message {
        id: id("msg"),
        kind: "message",
        role: "assistant",
        model: shape.model,
        content,
        stop_reason: Some(stop_reason(finish, calls.len())),
        stop_sequence,
        usage: usage(finish),
    })
    .into_response()
}

/// The content blocks of a streamed message, as they open and close.
struct Blocks {
    next: u32,
    open: Option<(u32, bool)>,
    calls: usize,
}

impl Blocks {
    fn close(&mut self, events: &mut Vec<StreamEvent>) {
        if let Some((index, _)) = self.open.take() {
            events.push(StreamEvent::ContentBlockStop { index });
        }
    }

    fn start(&mut self, block: ContentBlock, tool: bool, events: &mut Vec<StreamEvent>) -> u32 {
        self.close(events);
        let index = self.next;
        self.next += 1;
        self.open = Some((index, tool));
        events.push(StreamEvent::ContentBlockStart {
            index,
            content_block: block,
        });
        index
    }

    fn read(&mut self, read: Read, events: &mut Vec<StreamEvent>) {
        match read {
            Read::Text(text) if text.is_empty() => {}
            Read::Text(text) => {
                let index = match self.open {
                    Some((index, false)) => index,
                    _ => self.start(
                        ContentBlock::Text {
                            text: String::new(),
                        },
                        false,
                        events,
                    ),
                };
                events.push(StreamEvent::ContentBlockDelta {
                    index,
                    delta: BlockDelta::TextDelta { text },
                });
            }
            Read::CallStarted { name, .. } => {
                self.calls += 1;
                let block = ContentBlock::ToolUse {
                    id: id("toolu"),
                    name,
                    input: Value::Object(Default::default()),
                };
                self.start(block, true, events);
            }
            Read::Arguments { text, .. } => {
                if let Some((index, true)) = self.open {
                    events.push(StreamEvent::ContentBlockDelta {
                        index,
                        delta: BlockDelta::InputJsonDelta { partial_json: text },
                    });
                }
            }
        }
    }
}

/// Text held back while it could be the start of a stop sequence.
struct Holdback {
    hold: usize,
    held: String,
}

impl Holdback {
    /// What may go out now.
    fn push(&mut self, text: &str) -> String {
        self.held.push_str(text);
        let count = self.held.chars().count();
        if count <= self.hold {
            return String::new();
        }
        let cut = self
            .held
            .char_indices()
            .nth(count - self.hold)
            .map_or(self.held.len(), |(at, _)| at);
        self.held.drain(..cut).collect()
    }

    /// The rest, without the stop sequence that ended the answer.
    fn finish(&mut self, stop: Option<&str>) -> String {
        let mut rest = std::mem::take(&mut self.held);
        if let Some(stop) = stop
            && rest.ends_with(stop)
        {
            rest.truncate(rest.len() - stop.len());
        }
        rest
    }
}

fn frames(events: Vec<StreamEvent>) -> Vec<Bytes> {
    events
        .iter()
        .map(|event| sse::named_frame(event.name(), event))
        .collect()
}

/// The streamed message; see the module docs.
pub async fn stream(mut run: Run, shape: Shape, streams: &Streams) -> Response {
    if let Some(Step::Failed(failure)) = run.peek().await
        && failure.is_status_on_streams()
    {
        return AnthropicError::from_failure(failure).into_response();
    }
    let input_tokens = run.prepared().tokens.count as u32;
    let message_id = id("msg");
    let mut started = false;
    let mut blocks = Blocks {
        next: 0,
        open: None,
        calls: 0,
    };
    let mut reader = shape.reader();
    let mut holdback = Holdback {
        hold: shape.hold(),
        held: String::new(),
    };
    let body = streams.body(run, move |step, _| {
        let mut events = Vec::new();
        if !started {
            started = true;
            events.push(StreamEvent::MessageStart {
                message: Message {
                    id: message_id.clone(),
                    kind: "message",
                    role: "assistant",
                    model: shape.model.clone(),
                    content: Vec::new(),
                    stop_reason: None,
                    stop_sequence: None,
                    usage: Usage {
                        input_tokens,
                        cache_creation_input_tokens: 0,
                        cache_read_input_tokens: 0,
                        output_tokens: 0,
                    },
                },
            });
            events.push(StreamEvent::Ping);
        }
        let mut read = |text: &str, blocks: &mut Blocks, events: &mut Vec<StreamEvent>| {
            let reads = match reader.as_mut() {
                Some(reader) => reader.push(text),
                None => vec![Read::Text(text.to_string())],
            };
            for read in reads {
                blocks.read(read, events);
            }
        };
        match step {
            Step::KeepAlive => events.push(StreamEvent::Ping),
            Step::Token(token) => {
                if !token.special {
                    let out = holdback.push(&token.text);
                    read(&out, &mut blocks, &mut events);
                }
            }
            Step::Finished(finished) => {
                if !finished.token.special {
                    let out = holdback.push(&finished.token.text);
                    read(&out, &mut blocks, &mut events);
                }
                let stop_sequence = shape.matched(&finished.finish);
                let rest = holdback.finish(stop_sequence.as_deref());
                read(&rest, &mut blocks, &mut events);
                if let Some(mut reader) = reader.take() {
                    for read in reader.finish() {
                        blocks.read(read, &mut events);
                    }
                }
                blocks.close(&mut events);
                events.push(StreamEvent::MessageDelta {
                    delta: MessageDelta {
                        stop_reason: Some(stop_reason(&finished.finish, blocks.calls)),
                        stop_sequence,
                    },
                    usage: DeltaUsage {
                        output_tokens: finished.finish.generated_tokens,
                    },
                });
                events.push(StreamEvent::MessageStop);
                return Frames {
                    bytes: frames(events),
                    last: true,
                };
            }
            Step::Failed(failure) => {
                let mut bytes = frames(events);
                bytes.push(sse::named_frame(
                    "error",
                    AnthropicError::from_failure(&failure).body(),
                ));
                return Frames { bytes, last: true };
            }
            Step::Aborted => {
                return Frames {
                    bytes: frames(events),
                    last: true,
                };
            }
        }
        Frames {
            bytes: frames(events),
            last: false,
        }
    });
    sse::response(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_sequence_is_held_back_and_never_sent() {
        let mut holdback = Holdback {
            hold: "END".len(),
            held: String::new(),
        };
        let mut out = String::new();
        for piece in ["Hé", "llo E", "N", "D"] {
            out.push_str(&holdback.push(piece));
        }
        out.push_str(&holdback.finish(Some("END")));
        assert_eq!(out, "Héllo ");
        let mut holdback = Holdback {
            hold: 2,
            held: String::new(),
        };
        let mut out = holdback.push("abcdef");
        out.push_str(&holdback.finish(None));
        assert_eq!(out, "abcdef");
    }
}
