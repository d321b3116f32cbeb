//! Protocol conformance of the server over a real loopback socket, with the scripted engine:
//! every row of §f's error table, the hooks of §a.6, SSE framing bytes (§b), keep-alives,
//! `Accept`-dependent replies, session isolation, hostile input, and the project's own client
//! streaming from it with no special-casing.

use std::sync::Arc;
use std::time::Duration;

use h2o_chat::{H2o, Message};
use h2o_chat_engine::{Script, ScriptGate, ScriptedEngine};
use h2o_chat_server::{
    Limits, MemoryStore, ModelRegistry, Server, ServerConfig, Store, StoreBounds, Timeouts,
};
use h2o_chat_test_support::chat_ui::*;
use h2o_chat_test_support::http::session;
use h2o_chat_test_support::server::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn sse_framing_bytes_are_those_of_section_b() {
    let server = start().await;
    let url = server.url();
    let (client, id) = ready_conversation(&url).await;
    let response = client
        .post(format!("{url}/conversation/{id}"))
        .json(&g4f_body("Hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["cache-control"], "no-cache");
    assert!(response.headers().contains_key("set-cookie"));
    assert_eq!(
        response.headers()["x-compute-characters"],
        "52",
        "the built ChatML prompt"
    );
    let body = response.text().await.unwrap();
    assert_eq!(
        body,
        "data:{\"token\":{\"id\":101,\"text\":\"Hello\",\"logprob\":-0.25,\"special\":false},\"generated_text\":null,\"details\":null}\n\n\
         data:{\"token\":{\"id\":102,\"text\":\"!\",\"logprob\":-0.25,\"special\":false},\"generated_text\":null,\"details\":null}\n\n\
         data:{\"token\":{\"id\":2,\"text\":\"<|im_end|>\",\"logprob\":-0.01,\"special\":true},\"generated_text\":\"Hello!\",\"details\":null}\n\n"
    );
}

#[tokio::test]
async fn settings_replies_json_for_star_and_303_for_browsers() {
    let server = start().await;
    let url = server.url();
    let client = session();
    let form = [("ethicsModalAccepted", "true"), ("activeModel", FALCON)];
    let json_reply = client
        .post(format!("{url}/settings"))
        .header("referer", format!("{url}/r/abc"))
        .header("accept", "*/*")
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(json_reply.status(), StatusCode::OK);
    assert_eq!(
        json_reply.text().await.unwrap(),
        format!(r#"{{"type":"redirect","status":303,"location":"{url}/r/abc"}}"#)
    );
    let browser = client
        .post(format!("{url}/settings"))
        .header("referer", format!("{url}/"))
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(browser.status(), StatusCode::SEE_OTHER);
    assert_eq!(browser.headers()["location"], format!("{url}/").as_str());
}

#[tokio::test]
async fn form_post_without_referer_is_403_in_the_hook_format() {
    let server = start().await;
    let url = server.url();
    let client = session();
    let plain = client
        .post(format!("{url}/settings"))
        .form(&[("ethicsModalAccepted", "true")])
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::FORBIDDEN);
    assert_eq!(plain.headers()["content-type"], "text/plain");
    assert!(
        plain.headers().get("set-cookie").is_none(),
        "hook errors carry no cookie"
    );
    assert_eq!(
        plain.text().await.unwrap(),
        "Non-JSON form requests need to have a referer"
    );
    let json_reply = client
        .post(format!("{url}/settings"))
        .header("accept", "application/json")
        .header("referer", "https://evil.example/")
        .form(&[("ethicsModalAccepted", "true")])
        .send()
        .await
        .unwrap();
    assert_eq!(json_reply.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        json_reply.text().await.unwrap(),
        r#"{"error":"Invalid referer for POST request"}"#
    );
}

#[tokio::test]
async fn ethics_not_accepted_is_405() {
    let server = start().await;
    let url = server.url();
    let response = session()
        .post(format!("{url}/conversation"))
        .json(&json!({"model": FALCON}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        response.text().await.unwrap(),
        r#"{"error":"You need to accept the welcome modal first"}"#
    );
}

#[tokio::test]
async fn ethics_gate_can_be_turned_off() {
    let server = start_with(
        ServerConfig {
            ethics_gate: false,
            ..ServerConfig::default()
        },
        Script::default(),
    )
    .await;
    let url = server.url();
    let response = session()
        .post(format!("{url}/conversation"))
        .json(&json!({"model": FALCON}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn settings_with_unknown_model_or_bad_field_is_500() {
    let server = start().await;
    let url = server.url();
    let client = session();
    for form in [
        vec![
            ("ethicsModalAccepted", "true"),
            ("activeModel", "falcon-40b"),
        ],
        vec![
            ("ethicsModalAccepted", "true"),
            ("shareConversationsWithModelAuthors", "maybe"),
        ],
    ] {
        let response = client
            .post(format!("{url}/settings"))
            .header("referer", format!("{url}/"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.text().await.unwrap(),
            r#"{"type":"error","error":{"message":"Internal Error"}}"#
        );
    }
}

#[tokio::test]
async fn create_with_bad_json_or_unknown_model_is_500() {
    let server = start().await;
    let url = server.url();
    let client = session();
    accept_settings(&client, &url, FALCON).await;
    for body in [&b"{not json"[..], br#"{}"#, br#"{"model":"falcon-40b"}"#] {
        let response = client
            .post(format!("{url}/conversation"))
            .header("accept", "*/*")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.text().await.unwrap(),
            r#"{"message":"Internal Error"}"#
        );
    }
}

#[tokio::test]
async fn bad_ids_are_500_and_foreign_or_missing_conversations_404() {
    let server = start().await;
    let url = server.url();
    let (alice, id) = ready_conversation(&url).await;
    let bob = session();
    accept_settings(&bob, &url, FALCON).await;
    let star = |c: &reqwest::Client, method: reqwest::Method, path: String| {
        c.request(method, format!("{url}{path}"))
            .header("accept", "*/*")
    };
    let response = star(
        &alice,
        reqwest::Method::POST,
        "/conversation/not-an-id".into(),
    )
    .json(&g4f_body("Hi"))
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let response = star(&alice, reqwest::Method::DELETE, "/conversation/xyz".into())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    for method in [reqwest::Method::POST, reqwest::Method::DELETE] {
        let response = star(&bob, method.clone(), format!("/conversation/{id}"))
            .json(&g4f_body("Hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{method}");
        assert_eq!(
            response.text().await.unwrap(),
            r#"{"message":"Conversation not found"}"#
        );
    }
    let missing = star(
        &alice,
        reqwest::Method::DELETE,
        "/conversation/64f1c0d2e4b0a1b2c3d4e5f6".into(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    // Alice still owns hers.
    let deleted = alice
        .delete(format!("{url}/conversation/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    assert!(deleted.headers().get("content-type").is_none());
    assert_eq!(deleted.text().await.unwrap(), "");
}

#[tokio::test]
async fn route_errors_are_html_for_browsers() {
    let server = start().await;
    let url = server.url();
    let (client, _) = ready_conversation(&url).await;
    let response = client
        .post(format!("{url}/conversation/64f1c0d2e4b0a1b2c3d4e5f6"))
        .header("accept", "text/html")
        .json(&g4f_body("Hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("Conversation not found")
    );
}

#[tokio::test]
async fn rate_limit_refuses_more_than_the_limit_with_429_and_the_documented_message() {
    let server = start_with(
        ServerConfig {
            rate_limit: Some(1),
            ..ServerConfig::default()
        },
        Script::default(),
    )
    .await;
    let url = server.url();
    let (client, id) = ready_conversation(&url).await;
    // §a.4 step 4: refused when the session has *more than* RATE_LIMIT recent generations,
    // so with a limit of 1 the second generation still passes.
    for inputs in ["Hi", "Again"] {
        let response = client
            .post(format!("{url}/conversation/{id}"))
            .json(&g4f_body(inputs))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{inputs}");
        response.text().await.unwrap();
    }
    let third = client
        .post(format!("{url}/conversation/{id}"))
        .header("accept", "*/*")
        .json(&g4f_body("Once more"))
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(third.headers().contains_key("retry-after"));
    assert_eq!(
        third.text().await.unwrap(),
        r#"{"message":"You are sending too many messages. Try again later."}"#
    );
}

#[tokio::test]
async fn conversation_of_a_removed_model_is_410() {
    let engine = Arc::new(ScriptedEngine::new(Script::default()));
    let store = Arc::new(MemoryStore::new(StoreBounds::default()));
    let server = Server::with_store(
        ServerConfig::default(),
        ModelRegistry::with_h2o_stand_ins(engine),
        store.clone(),
    )
    .bind("127.0.0.1:0")
    .await
    .unwrap();
    let url = server.url();
    let client = session();
    accept_settings(&client, &url, FALCON).await;
    // Learn this client's session id from a real conversation, then plant one whose model is gone.
    let probe = create(&client, &url, FALCON).await;
    let owner = store
        .owner_of(&probe)
        .unwrap()
        .expect("conversation exists");
    let id = store.create(&owner, "retired/model-v0").unwrap();
    let response = client
        .post(format!("{url}/conversation/{id}"))
        .header("accept", "*/*")
        .json(&g4f_body("Hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::GONE);
    assert_eq!(
        response.text().await.unwrap(),
        r#"{"message":"Model not available anymore"}"#
    );
}

#[tokio::test]
async fn schema_failures_of_the_generate_body_are_500() {
    let server = start().await;
    let url = server.url();
    let (client, id) = ready_conversation(&url).await;
    let mut bodies = vec![
        json!({"inputs": "   \n", "options": {}}),
        json!({"inputs": "Hi"}),
        json!({"inputs": "Hi", "options": {"id": "nope"}}),
        json!({"inputs": "Hi", "options": {"web_search_id": "64f1c0d2e4b0a1b2c3d4e5f6"}}),
    ];
    bodies.push(json!("just a string"));
    for body in bodies {
        let response = client
            .post(format!("{url}/conversation/{id}"))
            .header("accept", "*/*")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::INTERNAL_SERVER_ERROR,
            "{body}"
        );
        assert_eq!(
            response.text().await.unwrap(),
            r#"{"message":"Internal Error"}"#
        );
    }
}

#[tokio::test]
async fn parameter_of_wrong_type_is_422_text_plain() {
    let server = start().await;
    let url = server.url();
    let (client, id) = ready_conversation(&url).await;
    let mut body = g4f_body("Hi");
    body["parameters"]["max_new_tokens"] = json!(-1);
    let response = client
        .post(format!("{url}/conversation/{id}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    assert!(
        text.starts_with(
            "Failed to deserialize the JSON body into the target type: parameters.max_new_tokens"
        ),
        "{text}"
    );
    // chat-ui's JavaScript round trip makes 2048.0 an integer: accepted there.
    let mut body = g4f_body("Hi");
    body["parameters"]["truncate"] = json!(2048.0);
    let response = client
        .post(format!("{url}/conversation/{id}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // …but not straight on a TGI route.
    let response = client
        .post(format!("{url}/generate_stream"))
        .json(&json!({"inputs": "Hi", "parameters": {"truncate": 2048.0}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn rule_violation_is_a_validation_error_event_with_status_200() {
    let server = start().await;
    let url = server.url();
    let (client, id) = ready_conversation(&url).await;
    let mut body = g4f_body("Hi");
    body["parameters"]["temperature"] = json!(0);
    let response = client
        .post(format!("{url}/conversation/{id}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.text().await.unwrap(),
        "data:{\"error\":\"Input validation error: `temperature` must be strictly positive\",\"error_type\":\"validation\"}\n\n"
    );
}

#[tokio::test]
async fn failure_mid_stream_is_a_generation_error_event() {
    let script = Script {
        fail_after: Some((1, "out of memory".into())),
        ..Script::default()
    };
    let server = start_with(ServerConfig::default(), script).await;
    let url = server.url();
    let (client, id) = ready_conversation(&url).await;
    let body = client
        .post(format!("{url}/conversation/{id}"))
        .json(&g4f_body("Hi"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.starts_with("data:{\"token\":{\"id\":101,\"text\":\"Hello\""),
        "{body}"
    );
    assert!(body.ends_with("data:{\"error\":\"Request failed during generation: out of memory\",\"error_type\":\"generation\"}\n\n"), "{body}");
}

#[tokio::test]
async fn more_than_max_concurrent_requests_is_overloaded() {
    let config = ServerConfig {
        limits: Limits {
            max_concurrent_requests: 1,
            ..Limits::default()
        },
        ..ServerConfig::default()
    };
    let gate = ScriptGate::new();
    let server = start_with(config, gated(&gate, true)).await;
    let url = server.url();
    let client = session();
    // The first generation holds the only permit (its first token passes, the rest wait).
    gate.release(1);
    let mut first = client
        .post(format!("{url}/generate_stream"))
        .json(&json!({"inputs": "Hi", "parameters": {"max_new_tokens": 50}}))
        .send()
        .await
        .unwrap();
    assert!(first.chunk().await.unwrap().is_some());
    let second = client
        .post(format!("{url}/generate_stream"))
        .json(&json!({"inputs": "Hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(
        second.text().await.unwrap(),
        "data:{\"error\":\"Model is overloaded\",\"error_type\":\"overloaded\"}\n\n"
    );
    let generate = client
        .post(format!("{url}/generate"))
        .json(&json!({"inputs": "Hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(generate.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(generate.headers()["retry-after"], "1");
    drop(first);
}

#[tokio::test]
async fn keep_alive_comments_are_sent_while_no_token_comes() {
    let config = ServerConfig {
        timeouts: Timeouts {
            sse_keep_alive: Duration::from_millis(50),
            ..Timeouts::default()
        },
        ..ServerConfig::default()
    };
    let gate = ScriptGate::new();
    let script = Script {
        gate: Some(gate.clone()),
        ..Script::default()
    };
    let server = start_with(config, script).await;
    let mut response = session()
        .post(format!("{}/generate_stream", server.url()))
        .json(&json!({"inputs": "Hi"}))
        .send()
        .await
        .unwrap();
    // Nothing but keep-alives while the engine has no token…
    let mut received = Vec::new();
    while received.windows(3).filter(|w| w == b":\n\n").count() < 2 {
        received.extend_from_slice(&response.chunk().await.unwrap().unwrap());
    }
    assert!(
        received.chunks(3).all(|c| c == b":\n\n"),
        "{:?}",
        String::from_utf8_lossy(&received)
    );
    // …then the tokens and the final event.
    gate.release(3);
    let rest = response.text().await.unwrap();
    assert!(rest.contains("\"generated_text\":\"Hello!\""), "{rest}");
}

#[tokio::test]
async fn unknown_path_is_404_html() {
    let server = start().await;
    let response = session()
        .get(format!("{}/nowhere", server.url()))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
}

#[tokio::test]
async fn oversized_body_is_refused() {
    let server = start().await;
    let big = "x".repeat(3 * 1024 * 1024);
    let response = session()
        .post(format!("{}/generate", server.url()))
        .json(&json!({"inputs": big}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn tgi_routes_generate_details_stop_and_full_text() {
    let server = start().await;
    let url = server.url();
    let client = session();
    let answer: Value = client
        .post(format!("{url}/generate"))
        .json(
            &json!({"inputs": "Hi", "parameters": {"details": true, "do_sample": true, "seed": 5}}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["generated_text"], "Hello!");
    assert_eq!(answer["details"]["finish_reason"], "eos_token");
    assert_eq!(answer["details"]["generated_tokens"], 3);
    assert_eq!(answer["details"]["seed"], 5);
    assert_eq!(answer["details"]["prefill"], json!([]));
    assert_eq!(
        answer["details"]["tokens"][2],
        json!({"id": 2, "text": "<|im_end|>", "logprob": -0.01, "special": true})
    );
    // decoder_input_details: TGI's prefill tokens (no `special`; the first not scored).
    let scored: Value = client
        .post(format!("{url}/generate"))
        .json(&json!({"inputs": "Hi", "parameters": {"details": true, "decoder_input_details": true}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        scored["details"]["prefill"],
        json!([{"id": 72, "text": "H", "logprob": null}, {"id": 105, "text": "i", "logprob": -1.5}])
    );
    let stopped: Value = client
        .post(format!("{url}/generate"))
        .json(&json!({"inputs": "Hi", "parameters": {"details": true, "stop": ["lo"]}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stopped["generated_text"], "Hello");
    assert_eq!(stopped["details"]["finish_reason"], "stop_sequence");
    assert_eq!(stopped["details"]["generated_tokens"], 1);
    assert_eq!(stopped["details"]["seed"], Value::Null);
    let compat: Value = client
        .post(format!("{url}/"))
        .json(&json!({"inputs": "Hi", "parameters": {"max_new_tokens": 1}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        compat,
        json!([{"generated_text": "HiHello"}]),
        "`/` returns a list with the full text by default"
    );
    let info: Value = client
        .get(format!("{url}/info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["max_input_length"], 2048);
    assert_eq!(info["served_models"][0]["stand_in"], true);
}

#[tokio::test]
async fn is_retry_replaces_the_message_with_that_id_and_second_turn_sees_the_first() {
    let server = start().await;
    let url = server.url();
    let (client, id) = ready_conversation(&url).await;
    client
        .post(format!("{url}/conversation/{id}"))
        .json(&g4f_body("First"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut second = g4f_body("Second");
    second["options"]["id"] = json!("11111111-1111-4111-8111-111111111111");
    client
        .post(format!("{url}/conversation/{id}"))
        .json(&second)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut retry = second.clone();
    retry["inputs"] = json!("Second, again");
    retry["options"]["is_retry"] = json!(true);
    let response = client
        .post(format!("{url}/conversation/{id}"))
        .json(&retry)
        .send()
        .await
        .unwrap();
    // The prompt holds the first turn and its answer, and the retried message only once.
    let characters: usize = response.headers()["x-compute-characters"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let expected = "<|im_start|>user\nFirst<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nSecond, again<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(characters, expected.chars().count());
    response.text().await.unwrap();
    let messages = stored_messages(&server, &id);
    let contents: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["First", "Hello!", "Second, again", "Hello!"]);
}

#[tokio::test]
async fn the_client_library_streams_from_this_server_and_leaves_nothing() {
    let server = start().await;
    let h2o = H2o::builder()
        .url(server.url())
        .env_proxy(false)
        .build()
        .unwrap();
    let answer = h2o
        .complete([Message::system("Be brief."), Message::user("Hi")])
        .await
        .unwrap();
    assert_eq!(answer.text, "Hello!");
    h2o.wait_for_cleanup().await;
    assert_eq!(server.state().store().conversation_count(), 0);
}

#[tokio::test]
async fn two_hundred_concurrent_sessions() {
    let server = start().await;
    let url = server.url();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let h2o = H2o::builder().url(url).env_proxy(false).build().unwrap();
            let answer = h2o.complete([Message::user(format!("question {i}"))]).await;
            h2o.wait_for_cleanup().await;
            answer.map(|a| a.text)
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), "Hello!");
    }
    assert_eq!(server.state().store().conversation_count(), 0);
}

#[tokio::test]
async fn a_client_that_disconnects_frees_the_only_generation_slot() {
    // One permit and an engine that takes one generation: the second request can only be
    // answered if the first one's disconnect really stopped it.
    let config = ServerConfig {
        limits: Limits {
            max_concurrent_requests: 1,
            ..Limits::default()
        },
        ..ServerConfig::default()
    };
    let gate = ScriptGate::new();
    let script = Script {
        capacity: 1,
        ..gated(&gate, true)
    };
    let server = start_with(config, script).await;
    let url = server.url();
    gate.release(1);
    let mut response = session()
        .post(format!("{url}/generate_stream"))
        .json(&json!({"inputs": "Hi", "parameters": {"max_new_tokens": 4000}}))
        .send()
        .await
        .unwrap();
    assert!(response.chunk().await.unwrap().is_some());
    drop(response);
    // The engine sees the reader go: its generation ends.
    reach(gate.ended(), 1).await;
    gate.release(10);
    let answer: Value = session()
        .post(format!("{url}/generate"))
        .json(&json!({"inputs": "Hi", "parameters": {"max_new_tokens": 2}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["generated_text"], "toktok");
}

#[tokio::test]
async fn get_conversation_redirects_home_with_302() {
    let server = start().await;
    let response = session()
        .get(format!("{}/conversation", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(response.headers()["location"], "/");
}

#[tokio::test]
async fn a_multipart_settings_form_is_read_and_accepts_the_modal() {
    let server = start().await;
    let url = server.url();
    let client = session();
    let form = reqwest::multipart::Form::new()
        .text("ethicsModalAccepted", "true")
        .text("activeModel", FALCON);
    let response = client
        .post(format!("{url}/settings"))
        .header("referer", format!("{url}/"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The acceptance was not lost: creating a conversation passes the ethics gate.
    create(&client, &url, FALCON).await;
    let bad = reqwest::multipart::Form::new().text("activeModel", "no/such-model");
    let response = client
        .post(format!("{url}/settings"))
        .header("referer", format!("{url}/"))
        .multipart(bad)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn a_failed_non_stream_generation_is_424_like_tgi() {
    let script = Script {
        fail_after: Some((1, "out of memory".into())),
        ..Script::default()
    };
    let server = start_with(ServerConfig::default(), script).await;
    let response = session()
        .post(format!("{}/generate", server.url()))
        .json(&json!({"inputs": "Hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FAILED_DEPENDENCY);
    assert_eq!(
        response.text().await.unwrap(),
        r#"{"error":"Request failed during generation: out of memory","error_type":"generation"}"#
    );
}

#[tokio::test]
async fn page_sets_the_session_cookie() {
    let server = start().await;
    let response = session().get(server.url()).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(cookie.starts_with("hf-chat="), "{cookie}");
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains(r#"<script src="assets/app.js" defer></script>"#)
    );
}

#[tokio::test]
async fn graceful_shutdown_stops_the_server() {
    let server = start().await;
    let url = server.url();
    server.shutdown();
    tokio::time::timeout(Duration::from_secs(5), server.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(session().get(url).send().await.is_err());
}
