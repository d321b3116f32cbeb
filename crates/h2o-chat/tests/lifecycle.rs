//! The conversation lifecycle of protocol §a, checked on the wire: what the client sends at
//! each step, byte for byte, against the literal examples of the protocol document.

use h2o_chat_test_support::chat_ui_double as support;

use std::time::Duration;

use axum::http::Method;
use futures_util::StreamExt;
use h2o_chat::{H2o, Message, Parameters};
use support::{TestServer, sse_body, stream_reply};

fn client(server: &TestServer) -> H2o {
    H2o::builder()
        .url(&server.url)
        .env_proxy(false)
        .build()
        .unwrap()
}

#[tokio::test]
async fn settings_form_body_and_referer_are_those_of_section_a2() {
    let server = TestServer::start().await;
    let h2o = client(&server);
    h2o.complete([Message::user("Hi")]).await.unwrap();

    let settings = server.requests_to(Method::POST, "/settings");
    assert_eq!(settings.len(), 1);
    assert_eq!(
        settings[0].text(),
        "ethicsModalAccepted=true&shareConversationsWithModelAuthors=true&ethicsModalAcceptedAt=&activeModel=h2oai%2Fh2ogpt-gm-oasst1-en-2048-falcon-40b-v1&searchEnabled=true"
    );
    assert_eq!(
        settings[0].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        settings[0].header("referer"),
        Some(format!("{}/", server.url).as_str())
    );
}

#[tokio::test]
async fn create_body_is_the_model_id() {
    let server = TestServer::start().await;
    client(&server)
        .complete([Message::user("Hi")])
        .await
        .unwrap();
    let create = server.requests_to(Method::POST, "/conversation");
    assert_eq!(
        create[0].text(),
        r#"{"model":"h2oai/h2ogpt-gm-oasst1-en-2048-falcon-40b-v1"}"#
    );
    assert_eq!(create[0].header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn generate_body_has_the_keys_of_section_a4_in_order() {
    let server = TestServer::start().await;
    client(&server)
        .complete([Message::user("Hello, how are you?")])
        .await
        .unwrap();
    let generate = server
        .requests_to(Method::POST, "/conversation/")
        .pop()
        .unwrap();
    let text = generate.text();
    let options_at = text
        .find(r#","options":{"id":""#)
        .expect("options follow stream");
    assert_eq!(
        &text[..options_at],
        r#"{"inputs":"Hello, how are you?","parameters":{"temperature":0.4,"truncate":2048,"max_new_tokens":1024,"do_sample":true,"repetition_penalty":1.2,"return_full_text":false},"stream":true"#
    );
    let body = generate.json();
    let options = &body["options"];
    let keys: Vec<&String> = options.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "id",
            "response_id",
            "is_retry",
            "use_cache",
            "web_search_id"
        ]
    );
    for key in ["id", "response_id"] {
        let id = options[key].as_str().unwrap();
        let parsed = uuid_version(id);
        assert_eq!(parsed, Some(4), "{key} = {id} is not a UUIDv4");
    }
    assert_ne!(options["id"], options["response_id"]);
    assert_eq!(options["is_retry"], false);
    assert_eq!(options["use_cache"], false);
    assert_eq!(options["web_search_id"], "");
    assert_eq!(
        generate.header("referer"),
        Some(format!("{}/", server.url).as_str())
    );
}

fn uuid_version(id: &str) -> Option<u8> {
    let bytes = id.as_bytes();
    if bytes.len() != 36
        || bytes[8] != b'-'
        || bytes[13] != b'-'
        || bytes[18] != b'-'
        || bytes[23] != b'-'
    {
        return None;
    }
    (bytes[14] as char).to_digit(16).map(|d| d as u8)
}

#[tokio::test]
async fn fresh_uuids_for_every_completion() {
    let server = TestServer::start().await;
    let h2o = client(&server);
    h2o.complete([Message::user("a")]).await.unwrap();
    h2o.complete([Message::user("b")]).await.unwrap();
    let ids: Vec<String> = server
        .requests_to(Method::POST, "/conversation/")
        .iter()
        .map(|r| r.json()["options"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
}

#[tokio::test]
async fn session_cookie_is_sent_back_on_every_later_step() {
    let server = TestServer::start().await;
    let h2o = client(&server);
    h2o.complete([Message::user("Hi")]).await.unwrap();
    h2o.wait_for_cleanup().await;
    let requests = server.requests();
    assert_eq!(requests.len(), 4, "settings, create, generate, delete");
    assert_eq!(requests[0].header("cookie"), None, "no session yet");
    for request in &requests[1..] {
        assert_eq!(
            request.header("cookie"),
            Some("hf-chat=session-1"),
            "{} {}",
            request.method,
            request.path
        );
    }
}

#[tokio::test]
async fn path_prefix_of_the_base_url_is_kept() {
    let server = TestServer::start_with_prefix("/chat").await;
    let h2o = H2o::builder()
        .url(format!("{}/", server.url))
        .env_proxy(false)
        .build()
        .unwrap();
    let answer = h2o.complete([Message::user("Hi")]).await.unwrap();
    assert_eq!(answer.text, "Hello!");
    h2o.wait_for_cleanup().await;
    let paths: Vec<String> = server.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths[0], "/chat/settings");
    assert_eq!(paths[1], "/chat/conversation");
    assert!(paths[2].starts_with("/chat/conversation/"));
    assert_eq!(
        server.requests()[0].header("referer"),
        Some(format!("{}/", server.url).as_str())
    );
    assert_eq!(server.conversations(), 0);
}

#[tokio::test]
async fn conversation_is_deleted_after_the_answer() {
    let server = TestServer::start().await;
    let h2o = client(&server);
    let answer = h2o.complete([Message::user("Hi")]).await.unwrap();
    assert_eq!(answer.text, "Hello!");
    assert_eq!(answer.generated_text, "Hello!");
    assert_eq!(answer.tokens, 3);
    h2o.wait_for_cleanup().await;
    assert_eq!(server.conversations(), 0);
    let delete = server.requests_to(Method::DELETE, "/conversation/");
    assert_eq!(delete.len(), 1);
    assert_eq!(
        delete[0].path,
        server.requests_to(Method::POST, "/conversation/")[0].path
    );
}

#[tokio::test]
async fn alias_is_sent_as_its_full_id() {
    let server = TestServer::start().await;
    let h2o = client(&server);
    h2o.request([Message::user("Hi")])
        .model("llama-13b")
        .complete()
        .await
        .unwrap();
    let create = server.requests_to(Method::POST, "/conversation");
    assert_eq!(
        create[0].json()["model"],
        "h2oai/h2ogpt-gm-oasst1-en-2048-open-llama-13b"
    );
    let settings = server.requests_to(Method::POST, "/settings");
    assert!(
        settings[0]
            .text()
            .contains("activeModel=h2oai%2Fh2ogpt-gm-oasst1-en-2048-open-llama-13b")
    );
}

#[tokio::test]
async fn empty_model_means_falcon_40b() {
    let server = TestServer::start().await;
    let h2o = client(&server);
    let mut stream = h2o
        .create_async_generator("", &[Message::user("Hi")], None, Parameters::empty())
        .await
        .unwrap();
    while stream.next().await.is_some() {}
    let create = server.requests_to(Method::POST, "/conversation");
    assert_eq!(
        create[0].json()["model"],
        "h2oai/h2ogpt-gm-oasst1-en-2048-falcon-40b-v1"
    );
}

#[tokio::test]
async fn kwargs_override_defaults_and_extend_them() {
    let server = TestServer::start().await;
    let h2o = client(&server);
    let mut stream = h2o
        .create_async_generator(
            "falcon-7b",
            &[Message::system("Be brief."), Message::user("Hi")],
            None,
            Parameters::empty()
                .temperature(0.7)
                .set("stream", true)
                .stop(["\n"]),
        )
        .await
        .unwrap();
    while stream.next().await.is_some() {}
    let body = server
        .requests_to(Method::POST, "/conversation/")
        .pop()
        .unwrap()
        .json();
    assert_eq!(
        serde_json::to_string(&body["parameters"]).unwrap(),
        r#"{"temperature":0.7,"truncate":2048,"max_new_tokens":1024,"do_sample":true,"repetition_penalty":1.2,"return_full_text":false,"stream":true,"stop":["\n"]}"#
    );
    assert_eq!(body["inputs"], "System: Be brief.\nUser: Hi\nAssistant:");
}

#[tokio::test]
async fn warm_completion_is_two_requests_on_one_connection() {
    let server = TestServer::start().await;
    let h2o = client(&server);
    h2o.complete([Message::user("cold")]).await.unwrap();
    h2o.wait_for_cleanup().await;
    let cold = server.requests();
    h2o.complete([Message::user("warm")]).await.unwrap();
    h2o.wait_for_cleanup().await;
    let warm: Vec<_> = server.requests().into_iter().skip(cold.len()).collect();
    let steps: Vec<String> = warm
        .iter()
        .map(|r| format!("{} {}", r.method, r.path.split('/').nth(1).unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            "POST conversation",
            "POST conversation",
            "DELETE conversation"
        ]
    );
    let known_peers: std::collections::HashSet<_> = cold.iter().map(|r| r.peer).collect();
    for request in &warm {
        assert!(
            known_peers.contains(&request.peer),
            "warm request on a new connection: {} {}",
            request.method,
            request.path
        );
    }
}

#[tokio::test]
async fn one_client_serves_many_tasks_with_one_settings_post() {
    let server = TestServer::start().await;
    let h2o = client(&server);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let h2o = h2o.clone();
        tasks.push(tokio::spawn(async move {
            h2o.complete([Message::user(format!("question {i}"))]).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().text, "Hello!");
    }
    h2o.wait_for_cleanup().await;
    assert_eq!(server.requests_to(Method::POST, "/settings").len(), 1);
    assert_eq!(server.conversations(), 0);
}

#[tokio::test]
async fn settings_are_sent_again_when_the_server_forgot_them() {
    let server = TestServer::start().await;
    let h2o = client(&server);
    h2o.complete([Message::user("a")]).await.unwrap();
    server.forget_sessions();
    let answer = h2o.complete([Message::user("b")]).await.unwrap();
    assert_eq!(answer.text, "Hello!");
    assert_eq!(server.requests_to(Method::POST, "/settings").len(), 2);
}

#[tokio::test]
async fn event_stream_shows_special_tokens_and_the_final_event() {
    let server = TestServer::start().await;
    server.script_generate(stream_reply(sse_body(&["A", "B"])));
    let h2o = client(&server);
    let events: Vec<_> = h2o
        .request([Message::user("Hi")])
        .events()
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(events.len(), 3);
    match events.last().unwrap() {
        Ok(h2o_chat::Event::Final(f)) => {
            assert_eq!(f.generated_text, "AB");
            assert!(f.token.as_ref().unwrap().special);
        }
        other => panic!("last event is {other:?}"),
    }
}

#[tokio::test]
async fn per_call_proxy_that_refuses_is_a_transport_error() {
    let server = TestServer::start().await;
    let h2o = H2o::builder()
        .url(&server.url)
        .env_proxy(false)
        .connect_timeout(Duration::from_secs(2))
        .retry(h2o_chat::RetryPolicy::none())
        .build()
        .unwrap();
    // Port 9 (discard) on loopback has no listener: the proxy connection is refused.
    let err = h2o
        .create_async_generator(
            "",
            &[Message::user("Hi")],
            Some("http://127.0.0.1:9"),
            Parameters::empty(),
        )
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), h2o_chat::ErrorKind::Transport, "{err}");
    assert!(
        server.requests().is_empty(),
        "the request went around the proxy"
    );
}
