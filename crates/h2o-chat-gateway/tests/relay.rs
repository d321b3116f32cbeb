//! The relays behind the gateway, one upstream at a time: an H2o (chat-ui) upstream through
//! the provider library — faults become OpenAI-shaped errors with the upstream's status and
//! nothing is left upstream — a TGI upstream, and an OpenAI-compatible upstream.

use h2o_chat_test_support::chat_ui_double as support;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use h2o_chat_engine::{Script, ScriptedEngine};
use h2o_chat_gateway::{Pool, UpstreamKind, UpstreamSpec};
use h2o_chat_server::{ModelRegistry, RunningServer, Server, ServerConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Chunk, Reply, TestServer, token_event};

async fn gateway_of(kind: UpstreamKind, url: &str) -> RunningServer {
    let pool = Pool::new(vec![UpstreamSpec::new(kind, url)]).unwrap();
    h2o_chat_test_support::gateway::serve(ServerConfig::default(), &pool).await
}

async fn gateway_to(upstream: &TestServer) -> RunningServer {
    gateway_of(UpstreamKind::H2o, &upstream.url).await
}

fn request(stream: bool) -> Value {
    json!({"model": "falcon-7b", "messages": [{"role": "user", "content": "Hi"}], "stream": stream})
}

async fn post(gateway: &RunningServer, body: &Value) -> reqwest::Response {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{}/v1/chat/completions", gateway.url()))
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn nothing_left(upstream: &TestServer) {
    upstream.until_conversations(0).await;
}

#[tokio::test]
async fn relays_an_answer_through_the_provider_lifecycle() {
    let upstream = TestServer::start().await;
    let gateway = gateway_to(&upstream).await;
    let reply: Value = post(&gateway, &request(false)).await.json().await.unwrap();
    assert_eq!(reply["choices"][0]["message"]["content"], "Hello!");
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");
    let create = upstream.requests_to(axum::http::Method::POST, "/conversation");
    assert_eq!(
        create[0].json()["model"],
        "h2oai/h2ogpt-gm-oasst1-en-2048-falcon-7b-v3"
    );
    nothing_left(&upstream).await;
}

#[tokio::test]
async fn upstream_500_is_an_openai_error_with_its_status_and_nothing_is_left() {
    let upstream = TestServer::start().await;
    upstream.script_generate(Reply::Status(
        500,
        vec![],
        r#"{"message":"Internal Error"}"#.into(),
    ));
    let gateway = gateway_to(&upstream).await;
    let response = post(&gateway, &request(false)).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("500: Internal Error"),
        "{error}"
    );
    nothing_left(&upstream).await;
}

#[tokio::test]
async fn an_upstream_429_reaches_the_client_as_429_with_its_retry_after() {
    for stream in [false, true] {
        let upstream = TestServer::start().await;
        upstream.script_generate(Reply::Status(
            429,
            vec![("retry-after", "7".into())],
            r#"{"message":"You are sending too many messages. Try again later."}"#.into(),
        ));
        let gateway = gateway_to(&upstream).await;
        let response = post(&gateway, &request(stream)).await;
        assert_eq!(
            response.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "stream {stream}"
        );
        assert_eq!(response.headers()["retry-after"], "7");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["type"], "rate_limit_error");
        nothing_left(&upstream).await;
    }
}

#[tokio::test]
async fn an_upstream_503_reaches_the_client_as_503_on_every_route() {
    let upstream = TestServer::start().await;
    upstream.script_generate_always(Reply::Status(
        503,
        vec![],
        r#"{"message":"Service Unavailable"}"#.into(),
    ));
    let gateway = gateway_to(&upstream).await;
    assert_eq!(
        post(&gateway, &request(true)).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for route in ["/generate", "/generate_stream"] {
        let response = client
            .post(format!("{}{route}", gateway.url()))
            .json(&json!({"inputs": "Hi"}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{route}"
        );
    }
    nothing_left(&upstream).await;
}

#[tokio::test]
async fn upstream_error_event_mid_stream_is_an_error_chunk_then_done() {
    let upstream = TestServer::start().await;
    upstream.script_generate(support::stream_reply(format!(
        "{}data:{{\"error\":\"Request failed during generation: boom\",\"error_type\":\"generation\"}}\n\n",
        token_event(1, "Hel", false)
    )));
    let gateway = gateway_to(&upstream).await;
    let body = post(&gateway, &request(true)).await.text().await.unwrap();
    assert!(body.contains("\"content\":\"Hel\""), "{body}");
    assert!(body.contains("boom"), "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"));
    nothing_left(&upstream).await;
}

#[tokio::test]
async fn upstream_disconnect_is_an_error_and_nothing_is_left() {
    let upstream = TestServer::start().await;
    upstream.script_generate(Reply::Stream(
        "text/event-stream",
        vec![
            Chunk::Bytes(token_event(1, "Hel", false).into_bytes()),
            Chunk::Sleep(Duration::from_millis(100)),
            Chunk::Disconnect,
        ],
    ));
    let gateway = gateway_to(&upstream).await;
    let body = post(&gateway, &request(true)).await.text().await.unwrap();
    assert!(body.contains("incomplete"), "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"));
    nothing_left(&upstream).await;
}

#[tokio::test]
async fn a_client_leaving_the_gateway_deletes_the_upstream_conversation() {
    let upstream = TestServer::start().await;
    let mut slow = Vec::new();
    for i in 0..500 {
        slow.push(Chunk::Bytes(token_event(i, "la", false).into_bytes()));
        slow.push(Chunk::Sleep(Duration::from_millis(20)));
    }
    upstream.script_generate(Reply::Stream("text/event-stream", slow));
    let gateway = gateway_to(&upstream).await;
    let mut response = post(&gateway, &request(true)).await;
    assert!(response.chunk().await.unwrap().is_some());
    assert!(response.chunk().await.unwrap().is_some());
    upstream.until_conversations(1).await;
    drop(response);
    nothing_left(&upstream).await;
}

#[tokio::test]
async fn relays_to_a_tgi_server() {
    let tgi = Server::new(
        ServerConfig::default(),
        ModelRegistry::with_h2o_stand_ins(Arc::new(ScriptedEngine::new(Script::default()))),
    )
    .bind("127.0.0.1:0")
    .await
    .unwrap();
    let gateway = gateway_of(UpstreamKind::Tgi, &tgi.url()).await;
    let reply: Value = post(
        &gateway,
        &json!({"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(reply["choices"][0]["message"]["content"], "Hello!");
    assert_eq!(reply["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn relays_a_chat_to_an_openai_upstream_as_messages() {
    let upstream = Server::new(
        ServerConfig::default(),
        ModelRegistry::with_h2o_stand_ins(Arc::new(ScriptedEngine::new(Script::default()))),
    )
    .bind("127.0.0.1:0")
    .await
    .unwrap();
    let gateway = gateway_of(UpstreamKind::OpenAi, &upstream.url()).await;
    for stream in [false, true] {
        let response = post(
            &gateway,
            &json!({"model": "falcon-40b", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "max_tokens": 10, "stream": stream}),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.text().await.unwrap();
        assert!(body.contains("Hello"), "{body}");
    }
    // A chat-ui conversation relayed to it keeps its history on this side.
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .no_proxy()
        .build()
        .unwrap();
    let url = gateway.url();
    client
        .post(format!("{url}/settings"))
        .header("referer", format!("{url}/"))
        .form(&[("ethicsModalAccepted", "true")])
        .send()
        .await
        .unwrap();
    let created: Value = client
        .post(format!("{url}/conversation"))
        .json(&json!({"model": "h2oai/h2ogpt-gm-oasst1-en-2048-falcon-40b-v1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["conversationId"].as_str().unwrap();
    for question in ["First?", "Second?"] {
        let body = client
            .post(format!("{url}/conversation/{id}"))
            .json(&json!({"inputs": question, "parameters": {"max_new_tokens": 8, "return_full_text": false}, "stream": true, "options": {}}))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.contains("\"generated_text\":\"Hello!\""), "{body}");
    }
    let messages = h2o_chat_test_support::server::stored_messages(&gateway, id);
    assert_eq!(messages.len(), 4);
}

/// A TGI-speaking upstream of one route, written here for what no real server does on
/// purpose: `/generate_stream` answers with `reply`; `/moved` counts the requests it gets.
async fn odd_tgi(
    reply: fn() -> axum::response::Response,
) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use axum::routing::post;
    let moved = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = moved.clone();
    let app = axum::Router::new()
        .route("/generate_stream", post(move || async move { reply() }))
        .route(
            "/moved",
            post(move || async move {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                "moved"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, moved)
}

#[tokio::test]
async fn a_relay_follows_no_redirect_and_the_client_gets_a_bad_gateway() {
    use axum::response::IntoResponse;
    let (url, moved) =
        odd_tgi(|| (StatusCode::TEMPORARY_REDIRECT, [("location", "/moved")], "").into_response())
            .await;
    let gateway = gateway_of(UpstreamKind::Tgi, &url).await;
    let response = post(&gateway, &request(false)).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("follow no redirects"),
        "{body}"
    );
    assert_eq!(
        moved.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the prompt went nowhere else"
    );
}

#[tokio::test]
async fn a_relayed_answer_stops_at_what_was_asked_for_whatever_the_upstream_sends() {
    use axum::response::IntoResponse;
    // An upstream that sends tokens without end (and never a final event).
    let (url, _) = odd_tgi(|| {
        let events = futures_util::stream::iter(0..100_000u32)
            .map(|i| Ok::<_, std::convert::Infallible>(token_event(i, "tok ", false)));
        (
            [("content-type", "text/event-stream")],
            axum::body::Body::from_stream(events),
        )
            .into_response()
    })
    .await;
    let gateway = gateway_of(UpstreamKind::Tgi, &url).await;
    let response = post(
        &gateway,
        &json!({"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": true}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.text().await.unwrap();
    let tokens = body.matches("tok ").count();
    assert!((4..=4 + 64).contains(&tokens), "{tokens} tokens relayed");
    assert!(
        body.contains("more tokens than were asked for"),
        "{}",
        &body[body.len().saturating_sub(400)..]
    );
    assert!(body.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn a_schema_reaches_a_tgi_upstream_as_its_grammar_and_what_no_upstream_carries_is_a_400() {
    use axum::routing::post;
    // A TGI upstream that keeps the body it was sent.
    let seen = Arc::new(std::sync::Mutex::new(None::<Value>));
    let kept = seen.clone();
    let app = axum::Router::new().route(
        "/generate_stream",
        post(move |body: axum::Json<Value>| async move {
            *kept.lock().unwrap() = Some(body.0);
            (
                [("content-type", "text/event-stream")],
                format!(
                    "{}{}",
                    token_event(1, "{}", false),
                    support::final_event("{}")
                ),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let gateway = gateway_of(UpstreamKind::Tgi, &url).await;
    let response = post_to(
        &gateway,
        &json!({"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}],
                "response_format": {"type": "json_object"}}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = seen
        .lock()
        .unwrap()
        .clone()
        .expect("the upstream was called");
    assert_eq!(
        body["parameters"]["grammar"],
        json!({"type": "json", "value": {"type": "object"}})
    );
    // TGI's generate protocol has no tools (an OpenAI-kind upstream takes them natively).
    let response = post_to(
        &gateway,
        &json!({"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}],
                "tools": [{"type": "function", "function": {"name": "f"}}]}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["param"], "tools", "{error}");
    // A chat-ui upstream carries no schema either; nothing is sent to it.
    let h2o = TestServer::start().await;
    let gateway = gateway_to(&h2o).await;
    let response = post_to(
        &gateway,
        &json!({"model": "falcon-7b", "messages": [{"role": "user", "content": "Hi"}],
                "response_format": {"type": "json_object"}}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["param"], "response_format", "{error}");
    assert!(h2o.requests().is_empty(), "no upstream is tried");
}

async fn post_to(gateway: &RunningServer, body: &Value) -> reqwest::Response {
    post(gateway, body).await
}

#[tokio::test]
async fn tools_reach_an_openai_upstream_natively_and_its_calls_come_back_as_calls() {
    use axum::routing::post;
    // An OpenAI-compatible upstream that keeps the bodies it was sent and streams a call
    // whose arguments come in fragments, as vLLM and llama.cpp's server send them.
    let seen = Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let kept = seen.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |body: axum::Json<Value>| async move {
            kept.lock().unwrap().push(body.0);
            let chunk = |delta: Value, finish: Value| {
                format!(
                    "data: {}\n\n",
                    json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
                )
            };
            let body = [
                chunk(json!({"role": "assistant", "content": null}), Value::Null),
                chunk(
                    json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                           "function": {"name": "get_weather", "arguments": ""}}]}),
                    Value::Null,
                ),
                chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": "}}]}),
                    Value::Null,
                ),
                chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
                    Value::Null,
                ),
                chunk(json!({}), json!("tool_calls")),
                "data: [DONE]\n\n".to_string(),
            ]
            .concat();
            ([("content-type", "text/event-stream")], body)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let gateway = gateway_of(UpstreamKind::OpenAi, &url).await;
    let tool = json!({"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}});
    let ask = |stream: bool| {
        json!({"model": "smollm2", "stream": stream, "tool_choice": "required", "tools": [tool.clone()],
               "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}]})
    };
    let reply: Value = post_to(&gateway, &ask(false)).await.json().await.unwrap();
    let choice = &reply["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{reply}");
    assert_eq!(choice["message"]["content"], Value::Null, "{reply}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather", "{reply}");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"city": "Paris"}));
    // What the upstream got: the tools as OpenAI's own fields, and the system message as
    // the client wrote it (no section written for a model without tool syntax).
    let sent = seen.lock().unwrap()[0].clone();
    assert_eq!(sent["tools"], json!([tool]), "{sent}");
    assert_eq!(sent["tool_choice"], "required");
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}])
    );
    // Streamed: the name once, then the arguments, as the fronts stream a call.
    let body = post_to(&gateway, &ask(true)).await.text().await.unwrap();
    let mut name = None;
    let mut streamed = String::new();
    let mut finish = None;
    for data in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        let choice = &chunk["choices"][0];
        if let Some(calls) = choice["delta"]["tool_calls"].as_array() {
            if let Some(n) = calls[0]["function"]["name"].as_str() {
                assert!(name.is_none(), "the name comes once: {body}");
                name = Some(n.to_string());
            }
            streamed.push_str(calls[0]["function"]["arguments"].as_str().unwrap_or(""));
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    assert_eq!(name.as_deref(), Some("get_weather"), "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&streamed).unwrap(),
        json!({"city": "Paris"})
    );
    assert_eq!(finish.as_deref(), Some("tool_calls"));
}

#[tokio::test]
async fn alternatives_per_token_are_relayed_from_every_upstream_kind() {
    // The upstream: this server on a scripted model, which ranks `<alt>` second everywhere.
    let upstream = Server::new(
        ServerConfig::default(),
        ModelRegistry::with_h2o_stand_ins(Arc::new(ScriptedEngine::new(Script::default()))),
    )
    .bind("127.0.0.1:0")
    .await
    .unwrap();
    for kind in [UpstreamKind::H2o, UpstreamKind::Tgi, UpstreamKind::OpenAi] {
        let gateway = gateway_of(kind, &upstream.url()).await;
        let reply: Value = post(
            &gateway,
            &json!({"model": "falcon-40b", "messages": [{"role": "user", "content": "Hi"}],
                    "max_tokens": 10, "logprobs": true, "top_logprobs": 2}),
        )
        .await
        .json()
        .await
        .unwrap();
        let content = reply["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap_or_else(|| panic!("{kind:?}: {reply}"));
        let text: String = content
            .iter()
            .map(|e| e["token"].as_str().unwrap())
            .collect();
        assert_eq!(text, "Hello!", "{kind:?}: {reply}");
        for entry in content {
            let top = entry["top_logprobs"].as_array().unwrap();
            assert_eq!(top.len(), 2, "{kind:?}: {entry}");
            assert_eq!(top[0]["token"], entry["token"], "{kind:?}: {entry}");
            assert_eq!(top[1]["token"], "<alt>", "{kind:?}: {entry}");
            assert_eq!(top[1]["logprob"], -3.0, "{kind:?}: {entry}");
            assert_eq!(entry["logprob"], -0.25, "{kind:?}: {entry}");
        }
    }
}
