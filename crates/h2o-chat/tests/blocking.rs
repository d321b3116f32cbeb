//! The blocking face and the legacy API (seed 001), against the test server over loopback.

use h2o_chat_test_support::chat_ui_double as support;

use axum::http::Method;
use h2o_chat::legacy::{Completion, Legacy, LegacyParams};
use h2o_chat::{Error, H2o, Message, blocking};
use support::{Chunk, Reply, TestServer, final_event, token_event};

/// Starts the test server on its own runtime thread, since blocking calls must not run on
/// an async runtime.
fn server() -> (TestServer, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(TestServer::start());
    (server, runtime)
}

#[test]
fn blocking_stream_yields_the_tokens_and_deletes_the_conversation() {
    let (server, _rt) = server();
    let h2o = blocking::H2o::new(H2o::builder().url(&server.url).env_proxy(false)).unwrap();
    let tokens: Vec<String> = h2o
        .stream([Message::user("Hi")])
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(tokens, ["Hello", "!"]);
    h2o.wait_for_cleanup().unwrap();
    assert_eq!(server.conversations(), 0);
}

#[test]
fn dropping_the_blocking_client_waits_for_the_delete() {
    let (server, _rt) = server();
    let h2o = blocking::H2o::new(H2o::builder().url(&server.url).env_proxy(false)).unwrap();
    assert_eq!(h2o.complete([Message::user("Hi")]).unwrap().text, "Hello!");
    drop(h2o);
    assert_eq!(server.conversations(), 0);
}

#[test]
fn dropping_a_blocking_iterator_early_deletes_the_conversation() {
    let (server, _rt) = server();
    let mut parts = Vec::new();
    for i in 0..200 {
        parts.push(Chunk::Bytes(token_event(i, "x", false).into_bytes()));
        parts.push(Chunk::Sleep(std::time::Duration::from_millis(5)));
    }
    server.script_generate(Reply::Stream("text/event-stream", parts));
    let h2o = blocking::H2o::new(H2o::builder().url(&server.url).env_proxy(false)).unwrap();
    let mut tokens = h2o.stream([Message::user("Hi")]).unwrap();
    assert_eq!(tokens.next().unwrap().unwrap(), "x");
    drop(tokens);
    h2o.wait_for_cleanup().unwrap();
    assert_eq!(server.conversations(), 0);
}

#[tokio::test]
async fn blocking_inside_a_runtime_is_refused_with_a_clear_error() {
    let err = blocking::H2o::new(H2o::builder().url("http://127.0.0.1:9")).unwrap_err();
    assert!(matches!(err, Error::BlockingInsideRuntime));
    assert!(err.to_string().contains("use h2o_chat::H2o"));
}

#[test]
fn legacy_stream_uses_the_role_content_prompt_and_the_alias_id() {
    let (server, _rt) = server();
    let legacy = Legacy::new(&server.url).unwrap();
    let messages = [
        Message::user("Напиши короткое стихотворение о весне."),
        Message::assistant("Весна пришла"),
    ];
    let answer = legacy
        .create_completion(
            "falcon-7b",
            &messages,
            true,
            LegacyParams {
                temperature: Some(0.5),
                max_new_tokens: Some(50),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(matches!(answer, Completion::Stream(_)));
    let tokens: Vec<String> = answer.collect::<Result<_, _>>().unwrap();
    assert_eq!(tokens, ["Hello", "!"]);
    let body = server
        .requests_to(Method::POST, "/conversation/")
        .pop()
        .unwrap()
        .json();
    assert_eq!(
        body["inputs"],
        format!(
            "{}user: Напиши короткое стихотворение о весне.\nassistant: Весна пришла\nassistant:",
            h2o_chat::prompt::LEGACY_INSTRUCTION
        )
    );
    assert_eq!(body["parameters"]["temperature"], 0.5);
    assert_eq!(body["parameters"]["max_new_tokens"], 50);
    let create = server.requests_to(Method::POST, "/conversation");
    assert_eq!(
        create[0].json()["model"],
        "h2oai/h2ogpt-gm-oasst1-en-2048-falcon-7b-v3"
    );
}

#[test]
fn legacy_stream_ends_at_the_end_of_text_token() {
    let (server, _rt) = server();
    // Tokens after the EOS token must never be seen.
    let body = format!(
        "{}{}{}",
        token_event(1, "Bon", false),
        final_event("Bon"),
        token_event(2, "after", false)
    );
    server.script_generate(Reply::Stream(
        "text/event-stream",
        vec![Chunk::Bytes(body.into_bytes())],
    ));
    let legacy = Legacy::new(&server.url).unwrap();
    let text = legacy
        .create_completion(
            "falcon-40b",
            &[Message::user("Hi")],
            true,
            LegacyParams::default(),
        )
        .unwrap()
        .into_text()
        .unwrap();
    assert_eq!(text, "Bon");
}

#[test]
fn legacy_without_stream_returns_the_whole_text_and_fixed_ids() {
    let (server, _rt) = server();
    let legacy = Legacy::new(&server.url).unwrap();
    let id = "5b3f0cd6-1b42-4e8a-9f3e-2f4a1c6d7e80".to_string();
    let answer = legacy
        .create_completion(
            "llama-13b",
            &[Message::user("Расскажи о себе.")],
            false,
            LegacyParams {
                id: Some(id.clone()),
                ..Default::default()
            },
        )
        .unwrap();
    let Completion::Text(text) = answer else {
        panic!("stream = false gives text")
    };
    assert_eq!(text, "Hello!");
    let body = server
        .requests_to(Method::POST, "/conversation/")
        .pop()
        .unwrap()
        .json();
    assert_eq!(body["options"]["id"], id.as_str());
}
