//! A chat-ui test server that speaks the lifecycle of protocol §a over a real loopback
//! socket, records every request byte for byte, and can be told to misbehave in every way
//! §f and §b.5 list: error statuses, Retry-After, malformed or truncated streams, stalls,
//! disconnects, huge lines, split UTF-8.
//!
//! It keeps the state a real server keeps (sessions by cookie, the ethics flag,
//! conversations per session), so "zero conversations left" is the server's own word.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, OriginalUri, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};

/// One piece of a scripted response body.
#[derive(Clone, Debug)]
pub enum Chunk {
    Bytes(Vec<u8>),
    Sleep(Duration),
    /// Abort the connection without finishing the chunked body.
    Disconnect,
}

/// A scripted reply.
#[derive(Clone, Debug)]
pub enum Reply {
    /// The normal reply of the route.
    Normal,
    /// A status with headers and a body.
    Status(u16, Vec<(&'static str, String)>, String),
    /// A 200 stream with this content type and body.
    Stream(&'static str, Vec<Chunk>),
    /// A status whose body arrives in these chunks (e.g. never: a stalled error body).
    StatusStream(u16, Vec<Chunk>),
}

/// What one request looked like on the wire.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub peer: SocketAddr,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }
}

#[derive(Default)]
struct Script {
    settings: VecDeque<Reply>,
    create: VecDeque<Reply>,
    generate: VecDeque<Reply>,
    /// Reply to every generate with this once the queue is empty.
    generate_default: Option<Reply>,
}

#[derive(Default)]
struct ServerState {
    /// session id → ethics accepted
    sessions: HashMap<String, bool>,
    /// conversation id → owning session
    conversations: HashMap<String, String>,
    /// The conversation count, for tests to await changes instead of polling.
    count: Option<tokio::sync::watch::Sender<usize>>,
    requests: Vec<Recorded>,
    script: Script,
    next_session: u64,
    next_conversation: u64,
}

/// A running test server.
#[derive(Clone)]
pub struct TestServer {
    state: Arc<Mutex<ServerState>>,
    pub addr: SocketAddr,
    /// The base URL, with the prefix if any (no trailing slash).
    pub url: String,
}

type Shared = Arc<Mutex<ServerState>>;

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with_prefix("").await
    }

    /// Serves the routes under `prefix` (e.g. `/chat`), as a deployment behind a path would.
    pub async fn start_with_prefix(prefix: &str) -> TestServer {
        let state: Shared = Arc::default();
        state.lock().unwrap().count = Some(tokio::sync::watch::channel(0).0);
        let routes = Router::new()
            .route("/settings", post(settings))
            .route("/conversation", post(create))
            .route("/conversation/{id}", any(conversation))
            .with_state(state.clone());
        let app = if prefix.is_empty() {
            routes
        } else {
            Router::new().nest(prefix, routes)
        };
        let app =
            app.fallback(
                |uri: Uri| async move { (StatusCode::NOT_FOUND, format!("Not found: {uri}")) },
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        TestServer {
            state,
            addr,
            url: format!("http://{addr}{prefix}"),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut ServerState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    pub fn script_settings(&self, reply: Reply) {
        self.with(|s| s.script.settings.push_back(reply));
    }
    pub fn script_create(&self, reply: Reply) {
        self.with(|s| s.script.create.push_back(reply));
    }
    pub fn script_generate(&self, reply: Reply) {
        self.with(|s| s.script.generate.push_back(reply));
    }
    pub fn script_generate_always(&self, reply: Reply) {
        self.with(|s| s.script.generate_default = Some(reply));
    }

    /// Conversations that exist on the server now.
    pub fn conversations(&self) -> usize {
        self.with(|s| s.conversations.len())
    }

    /// Waits until exactly `n` conversations exist (the server's own event; the generous
    /// bound only turns a hang into a failure).
    pub async fn until_conversations(&self, n: usize) {
        let mut count = self
            .with(|s| s.count.as_ref().map(|c| c.subscribe()))
            .expect("started with a counter");
        let reached =
            tokio::time::timeout(Duration::from_secs(30), count.wait_for(|&value| value == n))
                .await;
        assert!(
            matches!(reached, Ok(Ok(_))),
            "expected {n} conversations, have {}",
            self.conversations()
        );
    }

    /// Forgets every session's settings, as a restarted server would.
    pub fn forget_sessions(&self) {
        self.with(|s| s.sessions.clear());
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.with(|s| s.requests.clone())
    }

    /// Requests whose method and path-suffix match.
    pub fn requests_to(&self, method: Method, path_contains: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path.contains(path_contains))
            .collect()
    }
}

/// Token event bytes in TGI's exact shape (§b.2).
pub fn token_event(id: u32, text: &str, special: bool) -> String {
    format!(
        "data:{{\"token\":{{\"id\":{id},\"text\":{},\"logprob\":-0.25,\"special\":{special}}},\"generated_text\":null,\"details\":null}}\n\n",
        serde_json::to_string(text).unwrap()
    )
}

/// The final event (§b.3) with an EOS token.
pub fn final_event(generated: &str) -> String {
    format!(
        "data:{{\"token\":{{\"id\":11,\"text\":\"<|endoftext|>\",\"logprob\":-0.03,\"special\":true}},\"generated_text\":{},\"details\":null}}\n\n",
        serde_json::to_string(generated).unwrap()
    )
}

/// A complete, well-formed stream for `tokens`.
pub fn sse_body(tokens: &[&str]) -> String {
    let mut body = String::new();
    for (i, token) in tokens.iter().enumerate() {
        body.push_str(&token_event(100 + i as u32, token, false));
    }
    body.push_str(&final_event(&tokens.concat()));
    body
}

/// A reply streaming `body` in one chunk.
pub fn stream_reply(body: String) -> Reply {
    Reply::Stream("text/event-stream", vec![Chunk::Bytes(body.into_bytes())])
}

fn record(
    state: &Shared,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    peer: SocketAddr,
) {
    state.lock().unwrap().requests.push(Recorded {
        method,
        path: uri.path().to_string(),
        headers: headers.clone(),
        body: body.to_vec(),
        peer,
    });
}

/// The session id from the `hf-chat` cookie, or a new one (§a.0).
fn session_of(state: &mut ServerState, headers: &HeaderMap) -> (String, bool) {
    let from_cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().strip_prefix("hf-chat="))
        .next()
        .map(str::to_string);
    match from_cookie {
        Some(id) => (id, false),
        None => {
            state.next_session += 1;
            (format!("session-{}", state.next_session), true)
        }
    }
}

fn with_cookie(mut response: Response, session: &str) -> Response {
    let cookie = format!("hf-chat={session}; Path=/; HttpOnly; SameSite=Lax");
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("cookie header"),
    );
    response
}

fn json_error(status: u16, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "message": message }).to_string(),
    )
        .into_response()
}

fn scripted(reply: Reply) -> Option<Response> {
    match reply {
        Reply::Normal => None,
        Reply::Status(status, headers, body) => {
            let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
            for (name, value) in headers {
                response
                    .headers_mut()
                    .insert(name, HeaderValue::from_str(&value).unwrap());
            }
            Some(response)
        }
        Reply::StatusStream(status, chunks) => {
            let stream = body_stream(chunks);
            Some(
                Response::builder()
                    .status(status)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from_stream(stream))
                    .unwrap(),
            )
        }
        Reply::Stream(content_type, chunks) => {
            let stream =
                futures_util::stream::unfold(chunks.into_iter(), |mut chunks| async move {
                    loop {
                        match chunks.next()? {
                            Chunk::Bytes(bytes) => {
                                return Some((Ok::<_, std::io::Error>(Bytes::from(bytes)), chunks));
                            }
                            Chunk::Sleep(duration) => tokio::time::sleep(duration).await,
                            Chunk::Disconnect => {
                                return Some((
                                    Err(std::io::Error::other("scripted disconnect")),
                                    chunks,
                                ));
                            }
                        }
                    }
                });
            Some(
                Response::builder()
                    .status(200)
                    .header(header::CONTENT_TYPE, content_type)
                    .header(header::CACHE_CONTROL, "no-cache")
                    .body(Body::from_stream(stream))
                    .unwrap(),
            )
        }
    }
}

fn body_stream(
    chunks: Vec<Chunk>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::unfold(chunks.into_iter(), |mut chunks| async move {
        loop {
            match chunks.next()? {
                Chunk::Bytes(bytes) => return Some((Ok(Bytes::from(bytes)), chunks)),
                Chunk::Sleep(duration) => tokio::time::sleep(duration).await,
                Chunk::Disconnect => {
                    return Some((Err(std::io::Error::other("scripted disconnect")), chunks));
                }
            }
        }
    })
}

async fn settings(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&state, Method::POST, &uri, &headers, &body, peer);
    let mut guard = state.lock().unwrap();
    if let Some(response) = guard.script.settings.pop_front().and_then(scripted) {
        return response;
    }
    // §a.6: a form POST needs a same-origin Referer.
    if headers.get(header::REFERER).is_none() {
        return (
            StatusCode::FORBIDDEN,
            "Non-JSON form requests need to have a referer",
        )
            .into_response();
    }
    let (session, _) = session_of(&mut guard, &headers);
    let accepted =
        form_urlencoded::parse(&body).any(|(k, v)| k == "ethicsModalAccepted" && !v.is_empty());
    guard.sessions.insert(session.clone(), accepted);
    let referer = headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("/")
        .to_string();
    let body =
        serde_json::json!({"type": "redirect", "status": 303, "location": referer}).to_string();
    with_cookie(
        ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        &session,
    )
}

// A test helper: the Err side is the reply itself, built once.
#[allow(clippy::result_large_err)]
fn ethics_ok(state: &mut ServerState, headers: &HeaderMap) -> Result<String, Response> {
    let (session, _) = session_of(state, headers);
    if state.sessions.get(&session).copied().unwrap_or(false) {
        Ok(session)
    } else {
        Err((
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"error":"You need to accept the welcome modal first"}"#,
        )
            .into_response())
    }
}

async fn create(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&state, Method::POST, &uri, &headers, &body, peer);
    let mut guard = state.lock().unwrap();
    let session = match ethics_ok(&mut guard, &headers) {
        Ok(session) => session,
        Err(response) => return response,
    };
    if let Some(response) = guard.script.create.pop_front().and_then(scripted) {
        return response;
    }
    let model = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("model").and_then(|m| m.as_str()).map(str::to_string));
    if model.is_none() {
        return json_error(500, "Internal Error");
    }
    guard.next_conversation += 1;
    let id = format!("64f1c0d2e4b0a1b2c3{:06x}", guard.next_conversation);
    guard.conversations.insert(id.clone(), session.clone());
    let count = guard.conversations.len();
    if let Some(counter) = &guard.count {
        counter.send_replace(count);
    }
    with_cookie(
        (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "conversationId": id }).to_string(),
        )
            .into_response(),
        &session,
    )
}

async fn conversation(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&state, method.clone(), &uri, &headers, &body, peer);
    let mut guard = state.lock().unwrap();
    let session = match ethics_ok(&mut guard, &headers) {
        Ok(session) => session,
        Err(response) => return response,
    };
    if guard.conversations.get(&id) != Some(&session) {
        return json_error(404, "Conversation not found");
    }
    match method {
        Method::DELETE => {
            guard.conversations.remove(&id);
            let count = guard.conversations.len();
            if let Some(counter) = &guard.count {
                counter.send_replace(count);
            }
            with_cookie(StatusCode::OK.into_response(), &session)
        }
        Method::POST => {
            let reply = guard
                .script
                .generate
                .pop_front()
                .or_else(|| guard.script.generate_default.clone())
                .unwrap_or_else(|| stream_reply(sse_body(&["Hello", "!"])));
            match scripted(reply) {
                Some(response) => with_cookie(response, &session),
                None => with_cookie(
                    scripted(stream_reply(sse_body(&["Hello", "!"]))).unwrap(),
                    &session,
                ),
            }
        }
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
}
