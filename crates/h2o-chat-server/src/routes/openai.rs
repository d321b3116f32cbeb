//! The OpenAI-compatible gateway: `GET /v1/models`, `POST /v1/chat/completions` (stream and
//! not), `POST /v1/completions`, answered by the served models' engine.
//!
//! Request mapping to TGI's parameters (the engine's semantics):
//! - `temperature`: 0 means greedy decoding; otherwise sampling at that temperature.
//! - `top_p`: 1 (OpenAI's default) means no nucleus cut; otherwise TGI's `top_p`.
//! - `max_tokens` / `max_completion_tokens` → `max_new_tokens` (default: 512, capped by the
//!   context left after the prompt).
//! - `presence_penalty` / `frequency_penalty` → `repetition_penalty = 1 + max(p, f) / 2` when
//!   positive (TGI has one multiplicative penalty; OpenAI's range 0–2 maps onto 1–2).
//! - `stop` (a string or up to 4 strings), `seed`; `n` must be 1; `user` and unknown fields
//!   are ignored. Content may be a string or a list of text parts.
//!
//! Replies follow the shapes strict clients check: `finish_reason` is `null` until the last
//! chunk and then `stop` or `length`; `usage` carries the engine's real token counts.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use h2o_chat_engine::{
    ChatTurn, Engine, Finish, FinishReason, GenerationEvent, GenerationRequest, SamplingParams,
};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::AppState;
use crate::models::ServedModel;

/// An OpenAI-style error: `{"error": {"message", "type", "param", "code"}}` with a status.
pub struct ApiError {
    status: StatusCode,
    body: Value,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

fn error(
    status: StatusCode,
    message: impl Into<String>,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> ApiError {
    ApiError {
        status,
        body: json!({"error": {"message": message.into(), "type": kind, "param": param, "code": code}}),
    }
}

fn invalid(message: impl Into<String>, param: &str) -> ApiError {
    error(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        Some(param),
        None,
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Checks `Authorization: Bearer <key>` in constant time when a key is configured.
pub fn authorized(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &state.config().api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), key.as_bytes()) {
        Ok(())
    } else {
        Err(error(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided.",
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        ))
    }
}

/// Compares without an early exit, so timing does not reveal a prefix of the key.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        difference |= usize::from(x ^ y);
    }
    difference == 0
}

/// `GET /v1/models`. Stand-ins carry an extra `h2o_chat` object that clients ignore.
pub async fn models(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(response) = authorized(&state, &headers) {
        return response.into_response();
    }
    let data: Vec<Value> = state
        .models()
        .all()
        .iter()
        .map(|m| {
            let info = m.engine.info();
            json!({
                "id": m.id,
                "object": "model",
                "created": 0,
                "owned_by": if m.stand_in { "h2o-chat (stand-in)" } else { "h2o-chat" },
                "h2o_chat": {"stand_in": m.stand_in, "served_by": info.model_id, "aliases": m.aliases},
            })
        })
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

/// What both endpoints share once the request is understood.
struct Prepared {
    model: ServedModel,
    generation: GenerationRequest,
    stream: bool,
    include_usage: bool,
}

/// Text of a message's `content`: a string, or a list of `{type: "text", text}` parts.
fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(text) => Some(text.clone()),
        Value::Null => Some(String::new()),
        Value::Array(parts) => {
            let mut text = String::new();
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => text.push_str(part.get("text")?.as_str()?),
                    _ => return None,
                }
            }
            Some(text)
        }
        _ => None,
    }
}

fn number(body: &Value, key: &str) -> Result<Option<f64>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(invalid(format!("`{key}` must be a number"), key)),
    }
}

/// Maps the OpenAI fields to a generation (see the module docs).
fn prepare(
    state: &AppState,
    body: &Value,
    prompt_of: impl FnOnce(&ServedModel) -> Result<String, ApiError>,
) -> Result<Prepared, ApiError> {
    if !body.is_object() {
        return Err(invalid("the request body must be a JSON object", "body"));
    }
    let model_name = body.get("model").and_then(Value::as_str).unwrap_or("");
    let model = if model_name.is_empty() {
        state
            .models()
            .all()
            .iter()
            .find(|m| !m.stand_in)
            .or(state.models().default_model())
    } else {
        state.models().by_name(model_name)
    };
    let Some(model) = model.cloned() else {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("The model `{model_name}` does not exist. See GET /v1/models."),
            "invalid_request_error",
            Some("model"),
            Some("model_not_found"),
        ));
    };
    match body.get("n") {
        None | Some(Value::Null) => {}
        Some(n) if n.as_u64() == Some(1) => {}
        Some(_) => return Err(invalid("only `n` = 1 is supported", "n")),
    }
    let temperature = number(body, "temperature")?;
    if temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return Err(invalid(
            "`temperature` must be between 0 and 2",
            "temperature",
        ));
    }
    let top_p = number(body, "top_p")?;
    if top_p.is_some_and(|p| !(0.0..=1.0).contains(&p) || p == 0.0) {
        return Err(invalid("`top_p` must be in (0, 1]", "top_p"));
    }
    let penalty = [
        number(body, "presence_penalty")?,
        number(body, "frequency_penalty")?,
    ]
    .into_iter()
    .flatten()
    .fold(0.0f64, f64::max);
    let max_tokens = match (
        number(body, "max_completion_tokens")?,
        number(body, "max_tokens")?,
    ) {
        (Some(n), _) | (None, Some(n)) => {
            if n < 1.0 || n.fract() != 0.0 {
                return Err(invalid(
                    "`max_tokens` must be a positive integer",
                    "max_tokens",
                ));
            }
            Some(n as usize)
        }
        (None, None) => None,
    };
    let stop: Vec<String> = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            let stop: Option<Vec<String>> = items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect();
            match stop {
                Some(stop) if stop.len() <= 4 => stop,
                _ => {
                    return Err(invalid(
                        "`stop` must be a string or a list of at most 4 strings",
                        "stop",
                    ));
                }
            }
        }
        Some(_) => {
            return Err(invalid(
                "`stop` must be a string or a list of strings",
                "stop",
            ));
        }
    };
    let seed = match body.get("seed") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .map(|s| s as u64)
                .ok_or_else(|| invalid("`seed` must be an integer", "seed"))?,
        ),
    };
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);

    let prompt = prompt_of(&model)?;
    let limits = state.config().limits;
    let input_tokens = model
        .engine
        .count_tokens(&prompt)
        .map_err(|e| invalid(e.to_string(), "messages"))?;
    if input_tokens > limits.max_input_length {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!(
                "This model's maximum input length is {} tokens; the messages have {input_tokens}.",
                limits.max_input_length
            ),
            "invalid_request_error",
            Some("messages"),
            Some("context_length_exceeded"),
        ));
    }
    let room = limits.max_total_tokens.saturating_sub(input_tokens).max(1);
    let max_new_tokens = match max_tokens {
        Some(n) if n > room => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!(
                    "`max_tokens` is too large: {n}; at most {room} tokens fit after the {input_tokens}-token prompt."
                ),
                "invalid_request_error",
                Some("max_tokens"),
                Some("context_length_exceeded"),
            ));
        }
        Some(n) => n,
        None => room.min(512),
    };
    let sampling = SamplingParams {
        temperature: temperature.filter(|&t| t > 0.0).map(|t| t as f32),
        top_p: top_p.filter(|&p| p < 1.0).map(|p| p as f32),
        repetition_penalty: (penalty > 0.0).then(|| (1.0 + penalty / 2.0) as f32),
        do_sample: temperature.is_none_or(|t| t > 0.0),
        seed,
        ..SamplingParams::default()
    };
    Ok(Prepared {
        model,
        generation: GenerationRequest {
            prompt,
            sampling,
            max_new_tokens: max_new_tokens as u32,
            stop,
            truncate: None,
        },
        stream,
        include_usage,
    })
}

/// The key check and the JSON body, the start of every POST route.
fn authorized_json(state: &AppState, headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    authorized(state, headers)?;
    parse_json(body)
}

fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        invalid(
            format!("We could not parse the JSON body of your request: {e}"),
            "body",
        )
    })
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = match authorized_json(&state, &headers, &body) {
        Ok(body) => body,
        Err(response) => return response.into_response(),
    };
    let prepared = prepare(&state, &body, |model| {
        let Some(messages) = body
            .get("messages")
            .and_then(Value::as_array)
            .filter(|m| !m.is_empty())
        else {
            return Err(invalid("`messages` must be a non-empty list", "messages"));
        };
        let mut turns = Vec::with_capacity(messages.len());
        for (i, message) in messages.iter().enumerate() {
            let role = message.get("role").and_then(Value::as_str).unwrap_or("");
            let role = match role {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(invalid(
                        format!("messages[{i}].role `{other}` is not supported"),
                        "messages",
                    ));
                }
            };
            let Some(content) = message.get("content").and_then(content_text) else {
                return Err(invalid(
                    format!("messages[{i}].content must be a string or a list of text parts"),
                    "messages",
                ));
            };
            turns.push(ChatTurn {
                role: role.into(),
                content,
            });
        }
        model
            .engine
            .render_chat(&turns)
            .map_err(|e| invalid(e.to_string(), "messages"))
    });
    match prepared {
        Ok(prepared) => answer(&state, prepared, Kind::Chat).await,
        Err(response) => response.into_response(),
    }
}

/// `POST /v1/completions` (legacy text completions): the prompt is used as is.
pub async fn completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = match authorized_json(&state, &headers, &body) {
        Ok(body) => body,
        Err(response) => return response.into_response(),
    };
    let prepared = prepare(&state, &body, |_| match body.get("prompt") {
        Some(Value::String(prompt)) if !prompt.is_empty() => Ok(prompt.clone()),
        _ => Err(invalid("`prompt` must be a non-empty string", "prompt")),
    });
    match prepared {
        Ok(prepared) => answer(&state, prepared, Kind::Text).await,
        Err(response) => response.into_response(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

fn finish_reason(finish: &Finish) -> &'static str {
    match finish.reason {
        FinishReason::Length => "length",
        FinishReason::EosToken | FinishReason::StopSequence => "stop",
    }
}

fn usage(finish: &Finish) -> Value {
    json!({
        "prompt_tokens": finish.input_tokens,
        "completion_tokens": finish.generated_tokens,
        "total_tokens": finish.input_tokens + finish.generated_tokens,
    })
}

fn start(
    state: &AppState,
    engine: &Arc<dyn Engine>,
    generation: GenerationRequest,
) -> Result<(mpsc::Receiver<GenerationEvent>, OwnedSemaphorePermit), ApiError> {
    let overloaded = || {
        error(
            StatusCode::TOO_MANY_REQUESTS,
            "The model is overloaded; try again later.",
            "server_error",
            None,
            Some("overloaded"),
        )
    };
    let permit = state
        .permits()
        .clone()
        .try_acquire_owned()
        .map_err(|_| overloaded())?;
    match engine.start(generation) {
        Ok(generation) => Ok((generation.events, permit)),
        Err(h2o_chat_engine::EngineError::Overloaded) => Err(overloaded()),
        Err(err) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            err.to_string(),
            "server_error",
            None,
            None,
        )),
    }
}

async fn answer(state: &AppState, prepared: Prepared, kind: Kind) -> Response {
    let id = match kind {
        Kind::Chat => format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        Kind::Text => format!("cmpl-{}", uuid::Uuid::new_v4().simple()),
    };
    let model_id = prepared.model.id.clone();
    let (events, permit) = match start(state, &prepared.model.engine, prepared.generation) {
        Ok(started) => started,
        Err(response) => return response.into_response(),
    };
    if prepared.stream {
        let stream = chunks(events, permit, id, model_id, kind, prepared.include_usage);
        let mut response = Response::new(Body::from_stream(stream));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return response;
    }
    let mut events = events;
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            GenerationEvent::Token(token) => {
                if !token.special {
                    text.push_str(&token.text);
                }
            }
            GenerationEvent::Finished(token, finish) => {
                if !token.special {
                    text.push_str(&token.text);
                }
                drop(permit);
                let choice = match kind {
                    Kind::Chat => {
                        json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": finish_reason(&finish)})
                    }
                    Kind::Text => {
                        json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason(&finish)})
                    }
                };
                let object = if kind == Kind::Chat {
                    "chat.completion"
                } else {
                    "text_completion"
                };
                return Json(json!({
                    "id": id, "object": object, "created": now(), "model": model_id,
                    "choices": [choice], "usage": usage(&finish), "system_fingerprint": null,
                }))
                .into_response();
            }
            GenerationEvent::Failed(message) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("generation failed: {message}"),
                    "server_error",
                    None,
                    None,
                )
                .into_response();
            }
        }
    }
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the generation ended without a final token",
        "server_error",
        None,
        None,
    )
    .into_response()
}

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// The streaming reply: a role chunk, content chunks, the finish chunk, usage if asked for,
/// then `[DONE]`. A failure becomes an error chunk followed by `[DONE]`.
fn chunks(
    events: mpsc::Receiver<GenerationEvent>,
    permit: OwnedSemaphorePermit,
    id: String,
    model: String,
    kind: Kind,
    include_usage: bool,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    let created = now();
    let object = if kind == Kind::Chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let chunk = move |choice: Value| json!({"id": id, "object": object, "created": created, "model": model, "system_fingerprint": null, "choices": [choice]});
    let content_choice = move |text: &str, finish: Option<&str>| match kind {
        Kind::Chat => {
            json!({"index": 0, "delta": if finish.is_some() { json!({}) } else { json!({"content": text}) }, "logprobs": null, "finish_reason": finish})
        }
        Kind::Text => json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish}),
    };
    struct Run {
        events: mpsc::Receiver<GenerationEvent>,
        permit: Option<OwnedSemaphorePermit>,
        pending: std::collections::VecDeque<Bytes>,
        started: bool,
        done: bool,
    }
    let run = Run {
        events,
        permit: Some(permit),
        pending: Default::default(),
        started: false,
        done: false,
    };
    futures_util::stream::unfold(run, move |mut run| {
        let chunk = chunk.clone();
        let content_choice = content_choice;
        async move {
            loop {
                if let Some(bytes) = run.pending.pop_front() {
                    return Some((Ok(bytes), run));
                }
                if run.done {
                    return None;
                }
                if !run.started && kind == Kind::Chat {
                    run.started = true;
                    run.pending.push_back(sse(&chunk(json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}))));
                    continue;
                }
                match run.events.recv().await {
                    Some(GenerationEvent::Token(token)) => {
                        if !token.special && !token.text.is_empty() {
                            run.pending
                                .push_back(sse(&chunk(content_choice(&token.text, None))));
                        }
                    }
                    Some(GenerationEvent::Finished(token, finish)) => {
                        if !token.special && !token.text.is_empty() {
                            run.pending
                                .push_back(sse(&chunk(content_choice(&token.text, None))));
                        }
                        run.pending.push_back(sse(&chunk(content_choice(
                            "",
                            Some(finish_reason(&finish)),
                        ))));
                        if include_usage {
                            let mut last = chunk(json!(null));
                            last["choices"] = json!([]);
                            last["usage"] = usage(&finish);
                            run.pending.push_back(sse(&last));
                        }
                        run.pending
                            .push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                        run.permit = None;
                        run.done = true;
                    }
                    Some(GenerationEvent::Failed(message)) => {
                        let failure = json!({"error": {"message": format!("generation failed: {message}"), "type": "server_error", "param": null, "code": null}});
                        run.pending.push_back(sse(&failure));
                        run.pending
                            .push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                        run.done = true;
                    }
                    None => {
                        let failure = json!({"error": {"message": "the generation ended without a final token", "type": "server_error", "param": null, "code": null}});
                        run.pending.push_back(sse(&failure));
                        run.pending
                            .push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                        run.done = true;
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_in_constant_time_and_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn content_is_a_string_or_text_parts() {
        assert_eq!(content_text(&json!("hi")).as_deref(), Some("hi"));
        assert_eq!(
            content_text(&json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]))
                .as_deref(),
            Some("ab")
        );
        assert_eq!(
            content_text(&json!([{"type": "image_url", "image_url": {}}])),
            None
        );
        assert_eq!(content_text(&json!(5)), None);
    }
}
