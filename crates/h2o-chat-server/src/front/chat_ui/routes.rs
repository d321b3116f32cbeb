//! chat-ui's routes as gpt-gm.h2o.ai ran them (§a): the settings form action and the
//! conversation routes (create, list, generate, delete, rename, stop).
//!
//! The hooks (`hooks.rs`) have already run: the Referer check, the ethics gate, and the
//! session is in the request's extensions. Generation goes through the same pipeline as
//! every front, and the reply is TGI's, which chat-ui relays (§a.4 step 9).

use std::time::{Duration, Instant, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::AppState;
use crate::front::chat_ui::hooks::session;
use crate::front::chat_ui::reply::{
    html_error, internal_error, media_type, prefers_json, route_error,
};
use crate::front::chat_ui::request::{BodyError, GenerateBody, is_object_id};
use crate::front::chat_ui::settings_form::read_form;
use crate::front::chat_ui::turn::Turn;
use crate::pipeline;
use crate::session::SessionId;
use crate::store::{Author, CreateError, StoredConversation};
use crate::tgi_wire::{self, Shape, StreamHeaders};

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
    if field("ethicsModalAccepted").is_some_and(|v| !v.is_empty())
        && state
            .conversations()
            .accept_ethics(session.0.clone())
            .await
            .is_err()
    {
        return settings_failure(&headers);
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
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    extensions: Extensions,
) -> Response {
    let session = session(&extensions);
    let Ok(conversations) = state.conversations().list(session.0).await else {
        return unavailable(&headers);
    };
    let items: Vec<Value> = conversations
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
    let created = state
        .conversations()
        .create(session.0, model.to_string())
        .await;
    let (reason, message) = match created {
        Ok(id) => return Json(json!({ "conversationId": id })).into_response(),
        Err(CreateError::Unavailable(_)) => {
            state.metrics().refused_conversation("store");
            return unavailable(&headers);
        }
        Err(CreateError::SessionFull { limit }) => (
            "session",
            format!("Too many conversations: this session already has {limit}. Delete some first."),
        ),
        Err(CreateError::ServerFull { limit }) => (
            "server",
            format!("The server holds {limit} conversations, its limit. Try again later."),
        ),
    };
    // The session that hits a cap is refused; nobody's conversations make room.
    state.metrics().refused_conversation(reason);
    let mut response = route_error(&headers, StatusCode::TOO_MANY_REQUESTS, &message);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(60));
    response
}

/// 503: the conversation store failed (counted and logged by its handle).
fn unavailable(headers: &HeaderMap) -> Response {
    route_error(
        headers,
        StatusCode::SERVICE_UNAVAILABLE,
        "The conversation store is unavailable. Try again later.",
    )
}

/// Why a `/conversation/{id}` route cannot go on (§a.4 steps 2–3).
enum Lookup {
    /// Not an ObjectId: chat-ui's schema failure, 500.
    BadId,
    /// Missing, or another session's: 404.
    NotFound,
    /// The store failed: 503.
    Unavailable,
}

impl Lookup {
    fn reply(self, headers: &HeaderMap) -> Response {
        match self {
            Lookup::BadId => internal_error(headers),
            Lookup::NotFound => {
                route_error(headers, StatusCode::NOT_FOUND, "Conversation not found")
            }
            Lookup::Unavailable => unavailable(headers),
        }
    }
}

/// The session's conversation `id`, checked in chat-ui's order.
async fn lookup(
    state: &AppState,
    session: &SessionId,
    id: &str,
) -> Result<StoredConversation, Lookup> {
    if !is_object_id(id) {
        return Err(Lookup::BadId);
    }
    match state
        .conversations()
        .get(session.0.clone(), id.to_string())
        .await
    {
        Ok(Some(conversation)) => Ok(conversation),
        Ok(None) => Err(Lookup::NotFound),
        Err(_) => Err(Lookup::Unavailable),
    }
}

/// The rate limit (§a.4 step 4): more than `RATE_LIMIT` finished generations in the last
/// minute is 429, with how long until the oldest one leaves the window.
async fn rate_limited(
    state: &AppState,
    session: &SessionId,
    headers: &HeaderMap,
) -> Option<Response> {
    let limit = state.config().rate_limit?;
    let recent = state
        .conversations()
        .recent_generations(session.0.clone(), Duration::from_secs(60))
        .await;
    let Ok((recent, oldest_expires)) = recent else {
        return Some(unavailable(headers));
    };
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

/// `POST /conversation/{id}`: generate (§a.4), in chat-ui's order of checks; the reply is
/// TGI's, which chat-ui relays (§a.4 step 9), and the turn is stored as it ends ([`Turn`]).
pub async fn generate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    extensions: Extensions,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let session = session(&extensions);
    let conversation = match lookup(&state, &session, &id).await {
        Ok(conversation) => conversation,
        Err(lookup) => return lookup.reply(&headers),
    };
    if let Some(response) = rate_limited(&state, &session, &headers).await {
        return response;
    }
    let Some(model) = state.models().by_id(&conversation.model).cloned() else {
        return route_error(&headers, StatusCode::GONE, "Model not available anymore");
    };
    let request = match GenerateBody::parse(&body) {
        Ok(request) => request,
        Err(BodyError::Schema) => return internal_error(&headers),
        Err(BodyError::Type(message)) => return tgi_wire::type_error(message),
    };
    let messages = request.history(conversation.messages);
    let mut stream_headers = StreamHeaders {
        compute_type: model.engine.info().compute_type,
        characters: 0,
    };
    let (plan, echo) = match request.plan(&messages, &id, &session.0, &state.config().limits) {
        Ok(planned) => planned,
        Err(err) => return tgi_wire::refusal(&err.into(), request.stream, &stream_headers),
    };
    let mut run = match pipeline::start(&state, &model.engine, plan, started).await {
        Ok(run) => run,
        Err(failure) => return tgi_wire::refusal(&failure, request.stream, &stream_headers),
    };
    // The question is stored before the answer streams.
    let begun = Turn::begin(state.conversations(), &session.0, &id, request.turn()).await;
    let question = match begun {
        Ok(Some(question)) => question,
        Ok(None) => return Lookup::NotFound.reply(&headers),
        Err(failure) => return tgi_wire::error_response(&failure),
    };
    let abort = request.stream.then(|| state.aborts().register(&id));
    if let Some(guard) = &abort {
        run.abort_on(guard.token());
    }
    let (conversations, stop) = (state.conversations().clone(), request.parameters.stop);
    let turn = Turn::new(conversations, session.0, id, question, stop, abort);
    run.observe(Box::new(turn));
    if request.stream {
        stream_headers.characters = run.prepared().prompt.char_count();
        tgi_wire::stream(run, echo, &stream_headers, state.streams()).await
    } else {
        tgi_wire::collect(run, Shape::List, echo).await
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
    match state.conversations().delete(session.0, id).await {
        Ok(true) => StatusCode::OK.into_response(),
        Ok(false) => Lookup::NotFound.reply(&headers),
        Err(_) => Lookup::Unavailable.reply(&headers),
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
    let conversation = match lookup(&state, &session, &id).await {
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
    if let Err(lookup) = lookup(&state, &session, &id).await {
        return lookup.reply(&headers);
    }
    let title = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("title").and_then(Value::as_str).map(str::to_string));
    let Some(title) = title.filter(|t| (1..=100).contains(&t.chars().count())) else {
        return internal_error(&headers);
    };
    match state.conversations().set_title(session.0, id, title).await {
        Ok(true) => StatusCode::OK.into_response(),
        Ok(false) => Lookup::NotFound.reply(&headers),
        Err(_) => Lookup::Unavailable.reply(&headers),
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
    if let Err(lookup) = lookup(&state, &session, &id).await {
        return lookup.reply(&headers);
    }
    state.aborts().abort(&id);
    StatusCode::OK.into_response()
}
