//! chat-ui's routes as gpt-gm.h2o.ai ran them (§a): the settings form action and the
//! conversation routes (create, list, generate, delete, rename, stop).
//!
//! The hooks (`hooks.rs`) have already run: the Referer check, the ethics gate, and the
//! session is in the request's extensions. Generation goes through the same validation and
//! pipeline as TGI's routes, and the reply is TGI's, which chat-ui relays (§a.4 step 9).

use std::time::{Duration, Instant, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::hooks::session;
use crate::pipeline::{self, Failure};
use crate::settings_form::read_form;
use crate::store::{Author, StoredConversation, StoredMessage};
use crate::validation::{Validation, normalize_whole_floats, parse_relayed_parameters, validate};
use crate::wire::chat_ui::{html_error, internal_error, media_type, prefers_json, route_error};
use crate::wire::tgi::{self as tgi_reply, OnFinish, Shape, Stopping};
use crate::{history, session::SessionId};

/// The settings action's failure (§a.2): JSON or an HTML page by `Accept`.
fn settings_failure(headers: &HeaderMap) -> Response {
    if prefers_json(headers, true) {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"type": "error", "error": {"message": "Internal Error"}})),
        )
            .into_response()
    } else {
        html_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Error")
    }
}

/// `POST /settings`: the SvelteKit form action (§a.2).
pub async fn settings(
    State(state): State<AppState>,
    headers: HeaderMap,
    extensions: Extensions,
    body: Bytes,
) -> Response {
    let session = session(&extensions);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Ok(fields) = read_form(&media_type(&headers), content_type, body).await else {
        return settings_failure(&headers);
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if let Some(share) = field("shareConversationsWithModelAuthors")
        && !matches!(share, "true" | "on" | "false" | "")
    {
        return settings_failure(&headers);
    }
    if let Some(model) = field("activeModel")
        && state.models().by_id(model).is_none()
    {
        return settings_failure(&headers);
    }
    if field("ethicsModalAccepted").is_some_and(|v| !v.is_empty()) {
        state.store().accept_ethics(&session.0);
    }
    let location = headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("/")
        .to_string();
    if prefers_json(&headers, true) {
        Json(json!({"type": "redirect", "status": 303, "location": location})).into_response()
    } else {
        let mut response = StatusCode::SEE_OTHER.into_response();
        if let Ok(value) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        response
    }
}

/// `GET /conversation` answers 302 to `/` (§a.3).
pub async fn conversation_index() -> Response {
    (StatusCode::FOUND, [(header::LOCATION, "/")]).into_response()
}

/// `GET /conversations`: the session's conversations, newest first (what chat-ui's page
/// loads for its sidebar).
pub async fn list(State(state): State<AppState>, extensions: Extensions) -> Response {
    let session = session(&extensions);
    let items: Vec<Value> = state
        .store()
        .list(&session.0)
        .into_iter()
        .map(|c| {
            let updated = c
                .updated_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            json!({"id": c.id, "title": c.title, "model": c.model, "updatedAt": updated})
        })
        .collect();
    Json(json!({ "conversations": items })).into_response()
}

/// `POST /conversation` (§a.3).
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    extensions: Extensions,
    body: Bytes,
) -> Response {
    let session = session(&extensions);
    let Ok(value) = serde_json::from_slice::<Value>(&body) else {
        return internal_error(&headers);
    };
    if value.get("fromShare").is_some_and(|v| !v.is_null()) {
        // Shared conversations are not kept by this server.
        return route_error(&headers, StatusCode::NOT_FOUND, "Conversation not found");
    }
    let Some(model) = value.get("model").and_then(Value::as_str) else {
        return internal_error(&headers);
    };
    if state.models().by_id(model).is_none() {
        return internal_error(&headers);
    }
    match state.store().create(&session.0, model) {
        Ok(id) => Json(json!({ "conversationId": id })).into_response(),
        Err(crate::store::CreateError::SessionFull { limit }) => route_error(
            &headers,
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "Too many conversations: this session already has {limit}. Delete some first."
            ),
        ),
        Err(crate::store::CreateError::ServerFull { limit }) => {
            let mut response = route_error(
                &headers,
                StatusCode::TOO_MANY_REQUESTS,
                &format!("The server holds {limit} conversations, its limit. Try again later."),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(60));
            response
        }
        Err(crate::store::CreateError::Unavailable) => route_error(
            &headers,
            StatusCode::SERVICE_UNAVAILABLE,
            "The conversation store is unavailable. Try again later.",
        ),
    }
}

fn is_object_id(id: &str) -> bool {
    id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Why a `/conversation/{id}` route cannot go on (§a.4 steps 2–3).
enum Lookup {
    /// Not an ObjectId: chat-ui's schema failure, 500.
    BadId,
    /// Missing, or another session's: 404.
    NotFound,
}

impl Lookup {
    fn reply(self, headers: &HeaderMap) -> Response {
        match self {
            Lookup::BadId => internal_error(headers),
            Lookup::NotFound => {
                route_error(headers, StatusCode::NOT_FOUND, "Conversation not found")
            }
        }
    }
}

/// The session's conversation `id`, checked in chat-ui's order.
fn lookup(state: &AppState, session: &SessionId, id: &str) -> Result<StoredConversation, Lookup> {
    if !is_object_id(id) {
        return Err(Lookup::BadId);
    }
    state.store().get(&session.0, id).ok_or(Lookup::NotFound)
}

/// A textual UUID of version 1–5, any case, or the nil UUID (chat-ui's zod `uuid()`).
fn is_uuid(value: &str) -> bool {
    let bytes = value.as_bytes();
    if bytes.len() != 36 {
        return false;
    }
    for (i, &b) in bytes.iter().enumerate() {
        let ok = if matches!(i, 8 | 13 | 18 | 23) {
            b == b'-'
        } else {
            b.is_ascii_hexdigit()
        };
        if !ok {
            return false;
        }
    }
    if value == "00000000-0000-0000-0000-000000000000" {
        return true;
    }
    matches!(bytes[14], b'1'..=b'5')
        && matches!(bytes[19].to_ascii_lowercase(), b'8' | b'9' | b'a' | b'b')
}

/// chat-ui's body schema (§a.4). `None` on any violation (→ 500).
struct ChatUiBody {
    inputs: String,
    message_id: Option<String>,
    is_retry: bool,
    rest: Map<String, Value>,
}

fn parse_chat_ui_body(body: &[u8]) -> Option<ChatUiBody> {
    let Value::Object(map) = serde_json::from_slice::<Value>(body).ok()? else {
        return None;
    };
    let inputs = map.get("inputs")?.as_str()?;
    // JavaScript's trim: Unicode white space, line breaks and U+FEFF.
    let inputs = inputs.trim_matches(|c: char| c.is_whitespace() || c == '\u{FEFF}');
    if inputs.is_empty() {
        return None;
    }
    let Value::Object(options) = map.get("options")? else {
        return None;
    };
    let uuid_field = |key: &str| -> Option<Option<String>> {
        match options.get(key) {
            None | Some(Value::Null) => Some(None),
            Some(Value::String(s)) if is_uuid(s) => Some(Some(s.clone())),
            Some(_) => None,
        }
    };
    let message_id = uuid_field("id")?;
    uuid_field("response_id")?;
    let is_retry = match options.get("is_retry") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return None,
    };
    match options.get("web_search_id") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        // No web searches are stored here, so any id names a missing one.
        Some(_) => return None,
    }
    Some(ChatUiBody {
        inputs: inputs.to_string(),
        message_id,
        is_retry,
        rest: map,
    })
}

/// chat-ui's cleaning of the stored answer (§a.4 step 10).
fn clean_answer(generated: &str, prompt: &str, stop: &[String]) -> String {
    let mut text = generated.strip_prefix(prompt).unwrap_or(generated);
    text = text.strip_prefix("<|startoftext|>").unwrap_or(text);
    text = text.strip_suffix("</s>").unwrap_or(text);
    let mut text = text.trim_end().to_string();
    loop {
        let before = text.len();
        for stop in stop.iter().map(String::as_str).chain(["<|endoftext|>"]) {
            if !stop.is_empty()
                && let Some(stripped) = text.strip_suffix(stop)
            {
                text = stripped.trim_end().to_string();
            }
        }
        if text.len() == before {
            return text;
        }
    }
}

/// The rate limit (§a.4 step 4): more than `RATE_LIMIT` finished generations in the last
/// minute is 429, with how long until the oldest one leaves the window.
fn rate_limited(state: &AppState, session: &SessionId, headers: &HeaderMap) -> Option<Response> {
    let limit = state.config().rate_limit?;
    let (recent, oldest_expires) = state
        .store()
        .recent_generations(&session.0, Duration::from_secs(60));
    if recent <= limit as usize {
        return None;
    }
    let mut response = route_error(
        headers,
        StatusCode::TOO_MANY_REQUESTS,
        "You are sending too many messages. Try again later.",
    );
    let wait = oldest_expires.map_or(60, |d| d.as_secs().max(1));
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(wait));
    Some(response)
}

/// `POST /conversation/{id}`: generate (§a.4), in chat-ui's order of checks.
pub async fn generate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    extensions: Extensions,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let session = session(&extensions);
    let conversation = match lookup(&state, &session, &id) {
        Ok(conversation) => conversation,
        Err(lookup) => return lookup.reply(&headers),
    };
    if let Some(response) = rate_limited(&state, &session, &headers) {
        return response;
    }
    let Some(model) = state.models().by_id(&conversation.model).cloned() else {
        return route_error(&headers, StatusCode::GONE, "Model not available anymore");
    };
    let Some(request) = parse_chat_ui_body(&body) else {
        return internal_error(&headers);
    };

    let mut messages = conversation.messages;
    if request.is_retry
        && let Some(message_id) = &request.message_id
        && let Some(at) = messages.iter().position(|m| &m.id == message_id)
    {
        messages.truncate(at);
    }
    messages.push(StoredMessage {
        from: Author::User,
        content: request.inputs.clone(),
        id: request
            .message_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
    });

    // chat-ui relays `{...body, inputs: prompt}` to TGI after a JavaScript round trip.
    let mut relayed = request.rest;
    if let Some(parameters) = relayed.get_mut("parameters") {
        normalize_whole_floats(parameters);
    }
    let stream = relayed
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let parameters = match parse_relayed_parameters(relayed.get("parameters")) {
        Ok(parameters) => parameters,
        Err(err) => return tgi_reply::type_error(err.0),
    };

    // The window of history the model can see: TGI's input and total limits, and
    // `truncate` when given, bound the prompt.
    let limits = state.config().limits;
    let mut budget = limits.max_input_length.min(
        limits
            .max_total_tokens
            .saturating_sub(parameters.max_new_tokens as usize),
    );
    if let Some(truncate) = parameters.truncate.filter(|&t| t > 0) {
        budget = budget.min(truncate);
    }
    let workers = state.validation_workers();
    let validated = match history::fit(&model.engine, workers, &messages, budget).await {
        Ok(window) => {
            messages.drain(..window.first);
            validate(
                window.prompt,
                Some(window.tokens),
                &parameters,
                Validation {
                    engine: &model.engine,
                    limits: &limits,
                    workers,
                    streaming: stream,
                    default_full_text: true,
                    fit_max_new_tokens: false,
                },
            )
            .await
        }
        Err(rejection) => Err(rejection),
    };
    let characters = validated
        .as_ref()
        .map_or(0, |v| v.request.prompt.char_count());
    let prompt_text = validated
        .as_ref()
        .map(|v| v.request.prompt.text())
        .unwrap_or_default();
    let run = validated.map_err(Failure::from).and_then(|mut validated| {
        validated.request.cache_hint = Some(id.clone());
        pipeline::start(&state, &model.engine, validated, started)
    });
    let run = match run {
        Ok(run) => run,
        Err(failure) if stream && !tgi_reply::is_status_even_when_streaming(&failure) => {
            return tgi_reply::error_stream(&failure, characters);
        }
        Err(failure) => return tgi_reply::error_response(&failure),
    };

    let store = state.store_arc();
    let session_id = session.0.clone();
    let stop = parameters.stop.clone();
    let stopping = stream.then(|| {
        let (store, session_id, id, mut messages) = (
            store.clone(),
            session_id.clone(),
            id.clone(),
            messages.clone(),
        );
        Stopping {
            guard: state.stops().register(&id),
            // A stopped answer is kept as far as it went (chat-ui's abortedGenerations).
            on_stop: Box::new(move |partial| {
                let partial = partial.trim_end();
                if !partial.is_empty() {
                    messages.push(StoredMessage {
                        from: Author::Assistant,
                        content: partial.to_string(),
                        id: uuid::Uuid::new_v4().to_string(),
                    });
                }
                store.set_messages(&session_id, &id, messages);
                store.record_generation(&session_id);
            }),
        }
    });
    let on_finish: OnFinish = Box::new(move |finished| {
        let answer = clean_answer(&finished.generated_text, &prompt_text, &stop);
        messages.push(StoredMessage {
            from: Author::Assistant,
            content: answer,
            id: uuid::Uuid::new_v4().to_string(),
        });
        store.set_messages(&session_id, &id, messages);
        store.record_generation(&session_id);
    });
    if stream {
        tgi_reply::stream(run, characters, Some(on_finish), stopping).await
    } else {
        tgi_reply::collect(run, Shape::List, Some(on_finish)).await
    }
}

/// `DELETE /conversation/{id}` (§a.5): 200 with an empty body.
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    extensions: Extensions,
) -> Response {
    let session = session(&extensions);
    if !is_object_id(&id) {
        return Lookup::BadId.reply(&headers);
    }
    if state.store().delete(&session.0, &id) {
        StatusCode::OK.into_response()
    } else {
        Lookup::NotFound.reply(&headers)
    }
}

/// `GET /conversation/{id}`: the conversation as JSON (`title`, `model`, `messages`), what
/// chat-ui's page loads to show it.
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    extensions: Extensions,
) -> Response {
    let session = session(&extensions);
    let conversation = match lookup(&state, &session, &id) {
        Ok(conversation) => conversation,
        Err(lookup) => return lookup.reply(&headers),
    };
    let messages: Vec<Value> = conversation
        .messages
        .iter()
        .map(|m| {
            json!({
                "from": match m.from { Author::User => "user", Author::Assistant => "assistant" },
                "content": m.content,
                "id": m.id,
            })
        })
        .collect();
    Json(json!({
        "id": conversation.id,
        "title": conversation.title,
        "model": conversation.model,
        "messages": messages,
    }))
    .into_response()
}

/// `PATCH /conversation/{id}` with `{"title": "1..100 chars"}`.
pub async fn rename(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    extensions: Extensions,
    body: Bytes,
) -> Response {
    let session = session(&extensions);
    if let Err(lookup) = lookup(&state, &session, &id) {
        return lookup.reply(&headers);
    }
    let title = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("title").and_then(Value::as_str).map(str::to_string));
    match title {
        Some(title) if (1..=100).contains(&title.chars().count()) => {
            state.store().set_title(&session.0, &id, title);
            StatusCode::OK.into_response()
        }
        _ => internal_error(&headers),
    }
}

/// `POST /conversation/{id}/stop-generating`: the conversation's running generation ends,
/// keeping what it had generated; 200 whether one was running or not (as chat-ui).
pub async fn stop_generating(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    extensions: Extensions,
) -> Response {
    let session = session(&extensions);
    if let Err(lookup) = lookup(&state, &session, &id) {
        return lookup.reply(&headers);
    }
    state.stops().stop(&id);
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_of_versions_one_to_five_and_nil() {
        assert!(is_uuid("5b3f0cd6-1b42-4e8a-9f3e-2f4a1c6d7e80"));
        assert!(is_uuid("5B3F0CD6-1B42-1E8A-9F3E-2F4A1C6D7E80"));
        assert!(is_uuid("00000000-0000-0000-0000-000000000000"));
        assert!(!is_uuid("5b3f0cd6-1b42-7e8a-9f3e-2f4a1c6d7e80"));
        assert!(!is_uuid("not-a-uuid"));
    }

    #[test]
    fn chat_ui_schema() {
        let ok = br#"{"inputs":"  hi\n","options":{"id":"5b3f0cd6-1b42-4e8a-9f3e-2f4a1c6d7e80","is_retry":false,"web_search_id":""}}"#;
        assert_eq!(parse_chat_ui_body(ok).unwrap().inputs, "hi");
        for bad in [
            &br#"{"inputs":"   ","options":{}}"#[..],
            br#"{"inputs":"hi"}"#,
            br#"{"inputs":"hi","options":{"id":"x"}}"#,
            br#"{"inputs":"hi","options":{"is_retry":"yes"}}"#,
            br#"{"inputs":"hi","options":{"web_search_id":"abc"}}"#,
            br#"{"inputs":5,"options":{}}"#,
            b"not json",
        ] {
            assert!(
                parse_chat_ui_body(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn stored_answer_is_cleaned_like_chat_ui() {
        assert_eq!(clean_answer("P<|startoftext|>Hi</s>", "P", &[]), "Hi");
        assert_eq!(
            clean_answer("Hi there\nUser:", "", &["\nUser:".into()]),
            "Hi there"
        );
        assert_eq!(clean_answer("Hi<|endoftext|>  ", "", &[]), "Hi");
    }
}
