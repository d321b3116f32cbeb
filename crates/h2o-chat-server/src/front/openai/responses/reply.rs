//! The Responses replies: the `response` object, and its event stream — `response.created`,
//! `response.in_progress`; per output item `response.output_item.added`, for a message
//! `response.content_part.added`, `response.output_text.delta`s, `response.output_text.done`,
//! `response.content_part.done`, for a call `response.function_call_arguments.delta`s and
//! `.done`; `response.output_item.done`; then `response.completed` (or `.incomplete` when the
//! length limit cut it, `.failed` when the run failed) carrying the whole response. Every
//! event has its `event:` line and a `sequence_number`.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use h2o_chat_engine::{Finish, FinishReason};
use serde_json::{Value, json};

use crate::front::openai::error::ApiError;
use crate::front::openai::responses::request::Echo;
use crate::front::openai::responses::wire::{
    IncompleteDetails, InputDetails, OutputDetails, OutputItem, OutputText, ResponseError,
    ResponseObject, Usage,
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
    pub echo: Echo,
}

impl Shape {
    fn reader(&self) -> Option<CallReader> {
        let tools = self.tools.as_ref()?;
        Some(CallReader::new(!matches!(tools.choice, ToolChoice::Auto)))
    }

    /// The response object at a point of its life.
    fn object(&self, id: &str, created_at: u64, status: &'static str) -> ResponseObject {
        let echo = &self.echo;
        ResponseObject {
            id: id.to_string(),
            object: "response",
            created_at,
            status,
            error: None,
            incomplete_details: None,
            instructions: echo.instructions.clone(),
            max_output_tokens: echo.max_output_tokens,
            model: self.model.clone(),
            output: Vec::new(),
            parallel_tool_calls: echo.parallel_tool_calls,
            previous_response_id: None,
            reasoning: json!({"effort": null, "summary": null}),
            store: false,
            temperature: echo.temperature,
            text: echo.text.clone(),
            tool_choice: echo.tool_choice.clone(),
            tools: echo.tools.clone(),
            top_p: echo.top_p,
            truncation: "disabled",
            usage: None,
            user: echo.user.clone(),
            metadata: echo.metadata.clone(),
        }
    }
}

fn id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn usage(finish: &Finish) -> Usage {
    Usage {
        input_tokens: finish.input_tokens,
        input_tokens_details: InputDetails {
            cached_tokens: finish.cached_tokens,
        },
        output_tokens: finish.generated_tokens,
        output_tokens_details: OutputDetails {
            reasoning_tokens: 0,
        },
        total_tokens: finish.input_tokens.saturating_add(finish.generated_tokens),
    }
}

/// `completed`, or `incomplete` when the length limit cut the answer.
fn ending(finish: &Finish) -> (&'static str, Option<IncompleteDetails>) {
    match finish.reason {
        FinishReason::Length => (
            "incomplete",
            Some(IncompleteDetails {
                reason: "max_output_tokens",
            }),
        ),
        _ => ("completed", None),
    }
}

/// The output items of a whole answer.
fn output_of(text: &str, reader: Option<CallReader>, status: &'static str) -> Vec<OutputItem> {
    let (words, calls) = match reader {
        None => (text.to_string(), Vec::new()),
        Some(reader) => reader.read_all(text),
    };
    let mut output = Vec::new();
    if !words.is_empty() || calls.is_empty() {
        output.push(OutputItem::Message {
            id: id("msg"),
            status,
            role: "assistant",
            content: vec![OutputText::new(words)],
        });
    }
    output.extend(
        calls
            .into_iter()
            .map(|(name, arguments)| OutputItem::FunctionCall {
                id: id("fc"),
                call_id: id("call"),
                name,
                arguments,
                status,
            }),
    );
    output
}

/// The non-stream `response`, or the failure.
pub async fn respond(run: Run, shape: Shape) -> Response {
    let created_at = now();
    let collected = match run.collect().await {
        Ok(collected) => collected,
        Err(failure) => return ApiError::from_failure(&failure).into_response(),
    };
    let finish = &collected.finished.finish;
    let (status, incomplete_details) = ending(finish);
    let mut response = shape.object(&id("resp"), created_at, status);
    response.output = output_of(&collected.text(), shape.reader(), status);
    response.incomplete_details = incomplete_details;
    response.usage = Some(usage(finish));
    Json(response).into_response()
}

/// The stream's writer: sequence numbers, the open item, what has been written.
struct Writer {
    sequence: u64,
    response_id: String,
    created_at: u64,
    shape: Shape,
    reader: Option<CallReader>,
    /// The output so far, for the `.done` events and the final response.
    output: Vec<OutputItem>,
    /// Whether the last output item is still open.
    open: bool,
}

impl Writer {
    /// An event: its `type` and `sequence_number` first, as OpenAI writes them.
    fn event(&mut self, name: &str, body: Value) -> Bytes {
        let mut event = serde_json::Map::new();
        event.insert("type".into(), Value::from(name));
        event.insert("sequence_number".into(), Value::from(self.sequence));
        if let Value::Object(fields) = body {
            event.extend(fields);
        }
        self.sequence += 1;
        sse::named_frame(name, &event)
    }

    fn response(&self, status: &'static str) -> ResponseObject {
        let mut response = self
            .shape
            .object(&self.response_id, self.created_at, status);
        response.output = self.output.clone();
        response
    }

    fn index(&self) -> usize {
        self.output.len().saturating_sub(1)
    }

    /// Closes the open item with its `.done` events.
    fn close(&mut self, frames: &mut Vec<Bytes>) {
        if !self.open {
            return;
        }
        self.open = false;
        let index = self.index();
        let Some(item) = self.output.last_mut() else {
            return;
        };
        match item {
            OutputItem::Message {
                id,
                status,
                content,
                ..
            } => {
                *status = "completed";
                let (id, part) = (id.clone(), content.first().cloned());
                let text = part.as_ref().map(|p| p.text.clone()).unwrap_or_default();
                frames.push(self.event(
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
                ));
                frames.push(self.event(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
                ));
            }
            OutputItem::FunctionCall {
                id,
                name,
                arguments,
                status,
                ..
            } => {
                *status = "completed";
                let body = json!({"item_id": id, "output_index": index, "name": name, "arguments": arguments});
                frames.push(self.event("response.function_call_arguments.done", body));
            }
        }
        let item = self.output.last().cloned();
        frames.push(self.event(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        ));
    }

    fn read(&mut self, read: Read, frames: &mut Vec<Bytes>) {
        match read {
            Read::Text(text) if text.is_empty() => {}
            Read::Text(text) => {
                let open_message =
                    self.open && matches!(self.output.last(), Some(OutputItem::Message { .. }));
                if !open_message {
                    self.open_message(frames);
                }
                let index = self.index();
                let item_id = match self.output.last_mut() {
                    Some(OutputItem::Message { id, content, .. }) => {
                        if let Some(part) = content.first_mut() {
                            part.text.push_str(&text);
                        }
                        id.clone()
                    }
                    _ => String::new(),
                };
                frames.push(self.event(
                    "response.output_text.delta",
                    json!({"item_id": item_id, "output_index": index, "content_index": 0, "delta": text, "logprobs": []}),
                ));
            }
            Read::CallStarted { name, .. } => {
                self.close(frames);
                let item = OutputItem::FunctionCall {
                    id: id("fc"),
                    call_id: id("call"),
                    name,
                    arguments: String::new(),
                    status: "in_progress",
                };
                self.add_item(item, frames);
            }
            Read::Arguments { text, .. } => {
                let index = self.index();
                if let Some(OutputItem::FunctionCall { id, arguments, .. }) = self.output.last_mut()
                {
                    arguments.push_str(&text);
                    let item_id = id.clone();
                    frames.push(self.event(
                        "response.function_call_arguments.delta",
                        json!({"item_id": item_id, "output_index": index, "delta": text}),
                    ));
                }
            }
        }
    }

    /// Opens an output item and says so.
    fn add_item(&mut self, item: OutputItem, frames: &mut Vec<Bytes>) {
        self.output.push(item);
        self.open = true;
        let index = self.index();
        let added = json!({"output_index": index, "item": self.output.last()});
        frames.push(self.event("response.output_item.added", added));
    }

    /// Opens a message item with its (empty) text part.
    fn open_message(&mut self, frames: &mut Vec<Bytes>) {
        self.close(frames);
        let item = OutputItem::Message {
            id: id("msg"),
            status: "in_progress",
            role: "assistant",
            content: Vec::new(),
        };
        self.add_item(item, frames);
        let index = self.index();
        let item_id = match self.output.last_mut() {
            Some(OutputItem::Message { id, content, .. }) => {
                content.push(OutputText::new(String::new()));
                id.clone()
            }
            _ => String::new(),
        };
        frames.push(self.event(
            "response.content_part.added",
            json!({"item_id": item_id, "output_index": index, "content_index": 0, "part": OutputText::new(String::new())}),
        ));
    }

    fn text(&mut self, text: &str, frames: &mut Vec<Bytes>) {
        let reads = match self.reader.as_mut() {
            Some(reader) => reader.push(text),
            None => vec![Read::Text(text.to_string())],
        };
        for read in reads {
            self.read(read, frames);
        }
    }
}

/// The streamed response; see the module docs.
pub async fn stream(mut run: Run, shape: Shape, streams: &Streams) -> Response {
    if let Some(Step::Failed(failure)) = run.peek().await
        && failure.is_status_on_streams()
    {
        return ApiError::from_failure(failure).into_response();
    }
    let mut writer = Writer {
        sequence: 0,
        response_id: id("resp"),
        created_at: now(),
        reader: shape.reader(),
        shape,
        output: Vec::new(),
        open: false,
    };
    let mut started = false;
    let body = streams.body(run, move |step, _| {
        let mut frames = Vec::new();
        if !started {
            started = true;
            let created = writer.response("in_progress");
            frames.push(writer.event("response.created", json!({"response": created})));
            let progress = writer.response("in_progress");
            frames.push(writer.event("response.in_progress", json!({"response": progress})));
        }
        match step {
            // A comment line: clients skip it, proxies see the connection is alive.
            Step::KeepAlive => frames.push(Bytes::from_static(b": keep-alive\n\n")),
            Step::Token(token) => {
                if !token.special {
                    writer.text(&token.text, &mut frames);
                }
            }
            Step::Finished(finished) => {
                if !finished.token.special {
                    writer.text(&finished.token.text, &mut frames);
                }
                if let Some(mut reader) = writer.reader.take() {
                    for read in reader.finish() {
                        writer.read(read, &mut frames);
                    }
                }
                if writer.output.is_empty() {
                    // An empty answer is still a message.
                    writer.open_message(&mut frames);
                }
                writer.close(&mut frames);
                let (status, incomplete_details) = ending(&finished.finish);
                let mut response = writer.response(status);
                response.incomplete_details = incomplete_details;
                response.usage = Some(usage(&finished.finish));
                let name = if status == "completed" {
                    "response.completed"
                } else {
                    "response.incomplete"
                };
                frames.push(writer.event(name, json!({"response": response})));
                return Frames {
                    bytes: frames,
                    last: true,
                };
            }
            Step::Failed(failure) => {
                writer.close(&mut frames);
                let mut response = writer.response("failed");
                let error = ApiError::from_failure(&failure);
                response.error = Some(ResponseError {
                    code: "server_error",
                    message: error.message().to_string(),
                });
                frames.push(writer.event("response.failed", json!({"response": response})));
                return Frames {
                    bytes: frames,
                    last: true,
                };
            }
            Step::Aborted => {
                return Frames {
                    bytes: frames,
                    last: true,
                };
            }
        }
        Frames {
            bytes: frames,
            last: false,
        }
    });
    sse::response(body)
}
