//! Every way a server can fail (§f, §b.4, §b.5) ends in the right typed error, keeps the
//! text already received, and leaves no conversation behind on the server.

use h2o_chat_test_support::chat_ui_double as support;

use std::time::{Duration, Instant};

use axum::http::Method;
use futures_util::StreamExt;
use h2o_chat::{Error, H2o, Message, RetryPolicy, TimeoutKind};
use support::{Chunk, Reply, TestServer, final_event, sse_body, stream_reply, token_event};

fn client(server: &TestServer) -> H2o {
    H2o::builder()
        .url(&server.url)
        .env_proxy(false)
        .retry(RetryPolicy {
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            ..RetryPolicy::default()
        })
        .build()
        .unwrap()
}

/// Collects the token stream: the texts received and how it ended.
async fn run(h2o: &H2o) -> (Vec<String>, Result<(), Error>) {
    let mut stream = match h2o.stream([Message::user("Hi")]).await {
        Ok(stream) => stream,
        Err(err) => return (Vec::new(), Err(err)),
    };
    let mut texts = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(text) => texts.push(text),
            Err(err) => return (texts, Err(err)),
        }
    }
    (texts, Ok(()))
}

async fn assert_nothing_left(h2o: &H2o, server: &TestServer) {
    h2o.wait_for_cleanup().await;
    assert_eq!(
        server.conversations(),
        0,
        "a conversation was left on the server"
    );
}

fn chunks(parts: &[&str]) -> Vec<Chunk> {
    parts
        .iter()
        .map(|p| Chunk::Bytes(p.as_bytes().to_vec()))
        .collect()
}

#[tokio::test]
async fn http_500_on_create_is_an_http_error_with_the_server_message() {
    let server = TestServer::start().await;
    server.script_create(Reply::Status(
        500,
        vec![("content-type", "application/json".into())],
        r#"{"message":"Internal Error"}"#.into(),
    ));
    let h2o = client(&server);
    let (_, result) = run(&h2o).await;
    match result {
        Err(Error::Http {
            status: 500,
            message,
            step,
            ..
        }) => {
            assert_eq!(message, "Internal Error");
            assert_eq!(step, h2o_chat::Step::CreateConversation);
        }
        other => panic!("{other:?}"),
    }
    assert_nothing_left(&h2o, &server).await;
}

#[tokio::test]
async fn http_500_on_generate_deletes_the_conversation() {
    let server = TestServer::start().await;
    server.script_generate(Reply::Status(
        500,
        vec![],
        r#"{"message":"Internal Error"}"#.into(),
    ));
    let h2o = client(&server);
    let (_, result) = run(&h2o).await;
    assert!(
        matches!(result, Err(Error::Http { status: 500, .. })),
        "{result:?}"
    );
    assert_eq!(
        server.requests_to(Method::POST, "/conversation/").len(),
        1,
        "500 is not retried"
    );
    assert_nothing_left(&h2o, &server).await;
}

#[tokio::test]
async fn rate_limited_settings_succeed_after_retry_after() {
    let server = TestServer::start().await;
    server.script_settings(Reply::Status(
        429,
        vec![
            ("retry-after", "1".into()),
            ("content-type", "application/json".into()),
        ],
        r#"{"message":"You are sending too many messages. Try again later."}"#.into(),
    ));
    let h2o = client(&server);
    let started = Instant::now();
    let (texts, result) = run(&h2o).await;
    result.unwrap();
    assert_eq!(texts.concat(), "Hello!");
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After was not honoured: {:?}",
        started.elapsed()
    );
    assert_eq!(server.requests_to(Method::POST, "/settings").len(), 2);
    assert_nothing_left(&h2o, &server).await;
}

#[tokio::test]
async fn rate_limit_longer_than_the_cap_is_reported_not_waited() {
    let server = TestServer::start().await;
    server.script_settings(Reply::Status(
        429,
        vec![("retry-after", "3600".into())],
        "slow down".into(),
    ));
    let h2o = client(&server);
    let (_, result) = run(&h2o).await;
    match result {
        Err(Error::RateLimited {
            retry_after,
            message,
            ..
        }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(3600)));
            assert_eq!(message, "slow down");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn settings_303_is_success() {
    let server = TestServer::start().await;
    server.script_settings(Reply::Status(
        303,
        vec![("location", "/".into())],
        String::new(),
    ));
    // The scripted 303 set no cookie and stored no ethics flag; the 405 that follows makes the
    // client send the settings again, which the server then accepts.
    let h2o = client(&server);
    let (texts, result) = run(&h2o).await;
    result.unwrap();
    assert_eq!(texts.concat(), "Hello!");
    assert_nothing_left(&h2o, &server).await;
}

#[tokio::test]
async fn settings_403_is_a_session_error_with_a_hint() {
    let server = TestServer::start().await;
    for _ in 0..2 {
        server.script_settings(Reply::Status(
            403,
            vec![],
            "Invalid referer for POST request".into(),
        ));
    }
    let h2o = client(&server);
    let (_, result) = run(&h2o).await;
    let err = result.unwrap_err();
    assert!(matches!(err, Error::Session { status: 403, .. }), "{err:?}");
    assert!(err.to_string().contains("Invalid referer for POST request"));
    assert!(err.to_string().contains("hint"));
}

#[tokio::test]
async fn malformed_json_mid_stream_is_a_protocol_error_with_the_partial_text() {
    let server = TestServer::start().await;
    let body = format!(
        "{}{}data:{{\"token\":{{oops\n\n",
        token_event(1, "Hel", false),
        token_event(2, "lo", false)
    );
    server.script_generate(stream_reply(body));
    let h2o = client(&server);
    let (texts, result) = run(&h2o).await;
    assert_eq!(texts, ["Hel", "lo"]);
    match result {
        Err(Error::Protocol {
            partial, detail, ..
        }) => {
            assert_eq!(partial, "Hello");
            assert!(detail.contains("oops"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert_nothing_left(&h2o, &server).await;
}

#[tokio::test]
async fn disconnect_mid_stream_is_incomplete_with_the_partial_text() {
    let server = TestServer::start().await;
    let mut parts = chunks(&[&token_event(1, "Hel", false), &token_event(2, "lo", false)]);
    // Let the tokens leave the server before the connection is cut.
    parts.push(Chunk::Sleep(Duration::from_millis(100)));
    parts.push(Chunk::Disconnect);
    server.script_generate(Reply::Stream("text/event-stream", parts));
    let h2o = client(&server);
    let (texts, result) = run(&h2o).await;
    assert_eq!(texts.concat(), "Hello");
    match result {
        Err(Error::Incomplete { partial, cause }) => {
            assert_eq!(partial, "Hello");
            assert!(cause.is_some(), "a broken connection says why");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        server.requests_to(Method::POST, "/conversation/").len(),
        1,
        "never retried after a token"
    );
    assert_nothing_left(&h2o, &server).await;
}

#[tokio::test]
async fn clean_end_without_final_event_is_incomplete() {
    let server = TestServer::start().await;
    server.script_generate(stream_reply(format!(
        "{}{}",
        token_event(1, "Hel", false),
        token_event(2, "lo", false)
    )));
    let h2o = client(&server);
    let (_, result) = run(&h2o).await;
    match result {
        Err(Error::Incomplete {
            partial,
            cause: None,
        }) => assert_eq!(partial, "Hello"),
        other => panic!("{other:?}"),
    }
    assert_nothing_left(&h2o, &server).await;
}

#[tokio::test]
async fn stall_after_some_tokens_fires_the_idle_timeout() {
    let server = TestServer::start().await;
    let mut parts = chunks(&[&token_event(1, "Hel", false)]);
    parts.push(Chunk::Sleep(Duration::from_secs(60)));
    server.script_generate(Reply::Stream("text/event-stream", parts));
    let h2o = H2o::builder()
        .url(&server.url)
        .env_proxy(false)
        .idle_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let (texts, result) = run(&h2o).await;
    assert_eq!(texts, ["Hel"]);
    match result {
        Err(Error::Timeout {
            kind: TimeoutKind::Idle,
            partial,
            after,
            ..
        }) => {
            assert_eq!(partial, "Hel");
            assert_eq!(after, Duration::from_millis(300));
        }
        other => panic!("{other:?}"),
    }
    assert_nothing_left(&h2o, &server).await;
}

#[tokio::test]
async fn silence_before_the_first_event_fires_the_first_event_timeout() {
    let server = TestServer::start().await;
    server.script_generate(Reply::Stream(
        "text/event-stream",
        vec![
            Chunk::Bytes(b":\n\n".to_vec()),
            Chunk::Sleep(Duration::from_secs(60)),
        ],
    ));
    let h2o = H2o::builder()
        .url(&server.url)
        .env_proxy(false)
        .first_event_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let (_, result) = run(&h2o).await;
    assert!(
        matches!(
            result,
            Err(Error::Timeout {
                kind: TimeoutKind::FirstEvent,
                ..
            })
        ),
        "{result:?}"
    );
    assert_nothing_left(&h2o, &server).await;
}

/// Keep-alive comments every 50 ms for a minute.
fn keep_alives() -> Vec<Chunk> {
    (0..1200)
        .flat_map(|_| {
            [
                Chunk::Bytes(b":\n\n".to_vec()),
                Chunk::Sleep(Duration::from_millis(50)),
            ]
        })
        .collect()
}

#[tokio::test]
async fn keep_alive_comments_do_not_reset_the_first_event_timeout() {
    let server = TestServer::start().await;
    server.script_generate(Reply::Stream("text/event-stream", keep_alives()));
    let h2o = H2o::builder()
        .url(&server.url)
        .env_proxy(false)
        .first_event_timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let (_, result) = run(&h2o).await;
    assert!(
        matches!(
            result,
            Err(Error::Timeout {
                kind: TimeoutKind::FirstEvent,
                ..
            })
        ),
        "{result:?}"
    );
    assert_nothing_left(&h2o, &server).await;
}

#[tokio::test]
async fn keep_alive_comments_do_not_reset_the_idle_timeout() {
    let server = TestServer::start().await;
    let mut parts = chunks(&[&token_event(1, "Hel", false)]);
    parts.extend(keep_alives());
    server.script_generate(Reply::Stream("text/event-stream", parts));
    let h2o = H2o::builder()
        .url(&server.url)
        .env_proxy(false)
        .idle_timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let (texts, result) = run(&h2o).await;
    assert_eq!(texts, ["Hel"]);
    assert!(
        matches!(
            result,
            Err(Error::Timeout {
                kind: TimeoutKind::Idle,
                ..
            })
        ),
        "{result:?}"
    );
    assert_nothing_left(&h2o, &server).await;
}

#[tokio::test]
async fn an_error_status_whose_body_never_comes_is_reported_within_the_timeout() {
    let server = TestServer::start().await;
    server.script_generate(Reply::StatusStream(
        500,
        vec![Chunk::Sleep(Duration::from_secs(3600))],
    ));
    let h2o = H2o::builder()
        .url(&server.url)
        .env_proxy(false)
        .first_event_timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let (_, result) = run(&h2o).await;
    match result {
        Err(Error::Http {
            status: 500,
            message,
            ..
        }) => assert!(message.contains("did not arrive"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_nothing_left(&h2o, &server).await;
}

#[tokio::test]
async fn a_refused_connection_reports_its_whole_cause_chain() {
    // A loopback port with nothing listening.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let h2o = H2o::builder()
        .url(format!("http://127.0.0.1:{port}"))
        .env_proxy(false)
        .retry(h2o_chat::RetryPolicy::none())
        .build()
        .unwrap();
    let err = h2o.complete([Message::user("Hi")]).await.unwrap_err();
    let text = err.to_string().to_lowercase();
    assert!(text.contains("connection refused"), "{err}");
}

#[tokio::test]
async fn ten_megabyte_line_is_refused_not_buffered() {
    let server = TestServer::start().await;
    let mut parts = chunks(&[&token_event(1, "a", false), "data:"]);
    for _ in 0..160 {
        parts.push(Chunk::Bytes(vec![b'x'; 64 * 1024]));
    }
    parts.push(Chunk::Bytes(b"\n\n".to_vec()));
    server.script_generate(Reply::Stream("text/event-stream", parts));
    let h2o = client(&server);
    let (texts, result) = run(&h2o).await;
    assert_eq!(texts, ["a"]);
    match result {
        Err(Error::EventTooLarge { limit, partial, .. }) => {
            assert_eq!(limit, 1 << 20);
            assert_eq!(partial, "a");
        }
        other => panic!("{other:?}"),
    }
    assert_nothing_left(&h2o, &server).await;
}

#[tokio::test]
async fn error_event_is_a_stream_error_with_type_message_and_partial() {
    let server = TestServer::start().await;
    server.script_generate(stream_reply(format!(
        "{}data:{{\"error\":\"Request failed during generation: out of memory\",\"error_type\":\"generation\"}}\n\n",
        token_event(1, "Hi", false)
    )));
    let h2o = client(&server);
    let (texts, result) = run(&h2o).await;
    assert_eq!(texts, ["Hi"]);
    match result {
        Err(Error::Stream {
            error_type,
            message,
            partial,
        }) => {
            assert_eq!(error_type.as_deref(), Some("generation"));
            assert_eq!(message, "Request failed during generation: out of memory");
            assert_eq!(partial, "Hi");
        }
        other => panic!("{other:?}"),
    }
    assert_nothing_left(&h2o, &server).await;
}

#[tokio::test]
async fn validation_error_event_before_any_token() {
    let server = TestServer::start().await;
    server.script_generate(stream_reply(
        "data:{\"error\":\"Input validation error: `temperature` must be strictly positive\",\"error_type\":\"validation\"}\n\n".into(),
    ));
    let h2o = client(&server);
    let (_, result) = run(&h2o).await;
    assert!(
        matches!(result, Err(Error::Stream { ref error_type, .. }) if error_type.as_deref() == Some("validation")),
        "{result:?}"
    );
    assert_eq!(
        server.requests_to(Method::POST, "/conversation/").len(),
        1,
        "an answer is not retried"
    );
    assert_nothing_left(&h2o, &server).await;
}

#[tokio::test]
async fn special_tokens_mid_stream_are_never_text() {
    let server = TestServer::start().await;
    server.script_generate(stream_reply(format!(
        "{}{}{}{}",
        token_event(1, "A", false),
        token_event(2, "<|im_sep|>", true),
        token_event(3, "B", false),
        final_event("AB")
    )));
    let h2o = client(&server);
    let (texts, result) = run(&h2o).await;
    result.unwrap();
    assert_eq!(texts, ["A", "B"]);
}

#[tokio::test]
async fn cyrillic_and_emoji_split_across_chunks_arrive_whole() {
    let server = TestServer::start().await;
    let body = sse_body(&["Привет", ", ", "мир", " 👋🏽", "!"]);
    // One byte per network chunk: every character is split.
    let parts = body.bytes().map(|b| Chunk::Bytes(vec![b])).collect();
    server.script_generate(Reply::Stream("text/event-stream", parts));
    let h2o = client(&server);
    let (texts, result) = run(&h2o).await;
    result.unwrap();
    assert_eq!(texts, ["Привет", ", ", "мир", " 👋🏽", "!"]);
}

#[tokio::test]
async fn crlf_and_data_space_stream_decodes() {
    let server = TestServer::start().await;
    let body = sse_body(&["a", "b"])
        .replace("data:", "data: ")
        .replace('\n', "\r\n");
    server.script_generate(stream_reply(body));
    let h2o = client(&server);
    let (texts, result) = run(&h2o).await;
    result.unwrap();
    assert_eq!(texts, ["a", "b"]);
}

#[tokio::test]
async fn dropping_the_stream_after_three_tokens_deletes_the_conversation() {
    let server = TestServer::start().await;
    let mut parts = Vec::new();
    for i in 0..1000 {
        parts.push(Chunk::Bytes(token_event(i, "x", false).into_bytes()));
        parts.push(Chunk::Sleep(Duration::from_millis(5)));
    }
    server.script_generate(Reply::Stream("text/event-stream", parts));
    let h2o = client(&server);
    let mut stream = h2o.stream([Message::user("Hi")]).await.unwrap();
    for _ in 0..3 {
        assert_eq!(stream.next().await.unwrap().unwrap(), "x");
    }
    assert_eq!(server.conversations(), 1);
    drop(stream);
    assert_nothing_left(&h2o, &server).await;
}

#[tokio::test]
async fn generate_is_retried_before_any_event_with_is_retry_and_the_same_id() {
    let server = TestServer::start().await;
    server.script_generate(Reply::Status(503, vec![], "Model is loading".into()));
    server.script_generate(Reply::Stream("text/event-stream", vec![Chunk::Disconnect]));
    let h2o = client(&server);
    let (texts, result) = run(&h2o).await;
    result.unwrap();
    assert_eq!(texts.concat(), "Hello!");
    let bodies: Vec<serde_json::Value> = server
        .requests_to(Method::POST, "/conversation/")
        .iter()
        .map(|r| r.json())
        .collect();
    assert_eq!(bodies.len(), 3);
    assert_eq!(bodies[0]["options"]["is_retry"], false);
    assert_eq!(bodies[1]["options"]["is_retry"], true);
    assert_eq!(bodies[2]["options"]["is_retry"], true);
    assert!(
        bodies
            .iter()
            .all(|b| b["options"]["id"] == bodies[0]["options"]["id"])
    );
    assert_eq!(
        server.requests_to(Method::POST, "/conversation").len() - bodies.len(),
        1,
        "one conversation"
    );
    assert_nothing_left(&h2o, &server).await;
}

#[tokio::test]
async fn create_is_retried_on_502() {
    let server = TestServer::start().await;
    server.script_create(Reply::Status(502, vec![], "Bad Gateway".into()));
    let h2o = client(&server);
    let (_, result) = run(&h2o).await;
    result.unwrap();
    assert_nothing_left(&h2o, &server).await;
}

#[tokio::test]
async fn html_reply_to_generate_is_a_protocol_error() {
    let server = TestServer::start().await;
    server.script_generate(Reply::Stream("text/html", chunks(&["<html>login</html>"])));
    let h2o = client(&server);
    let (_, result) = run(&h2o).await;
    assert!(
        matches!(result, Err(Error::Protocol { ref detail, .. }) if detail.contains("text/html")),
        "{result:?}"
    );
    assert_nothing_left(&h2o, &server).await;
}

#[tokio::test]
async fn ndjson_reply_of_later_chat_ui_is_decoded() {
    let server = TestServer::start().await;
    let body = "{\"type\":\"status\",\"status\":\"started\"}\n{\"type\":\"stream\",\"token\":\"Hel\\u0000\\u0000\"}\n{\"type\":\"stream\",\"token\":\"lo\"}\n{\"type\":\"finalAnswer\",\"text\":\"Hello\"}\n    ";
    server.script_generate(Reply::Stream("text/event-stream", chunks(&[body])));
    let h2o = client(&server);
    let (texts, result) = run(&h2o).await;
    result.unwrap();
    assert_eq!(texts, ["Hel", "lo"]);
}

#[tokio::test]
async fn json_reply_of_section_b7_is_the_whole_answer() {
    let server = TestServer::start().await;
    server.script_generate(Reply::Stream(
        "application/json",
        chunks(&[r#"[{"generated_text":"Bonjour"}]"#]),
    ));
    let h2o = client(&server);
    let answer = h2o.complete([Message::user("Hi")]).await.unwrap();
    assert_eq!(answer.text, "Bonjour");
    let (texts, _) = {
        server.script_generate(Reply::Stream(
            "application/json",
            chunks(&[r#"[{"generated_text":"Bonjour"}]"#]),
        ));
        run(&h2o).await
    };
    assert_eq!(texts, ["Bonjour"]);
}

#[tokio::test]
async fn unreachable_server_is_a_transport_error_naming_the_step_and_url() {
    let h2o = H2o::builder()
        .url("http://127.0.0.1:9")
        .env_proxy(false)
        .retry(RetryPolicy::none())
        .build()
        .unwrap();
    let err = h2o.complete([Message::user("Hi")]).await.unwrap_err();
    assert_eq!(err.kind(), h2o_chat::ErrorKind::Transport);
    assert!(
        err.to_string()
            .starts_with("settings (http://127.0.0.1:9/settings)"),
        "{err}"
    );
}

#[tokio::test]
async fn no_messages_is_refused_before_any_request() {
    let server = TestServer::start().await;
    let h2o = client(&server);
    let err = h2o.complete(Vec::<Message>::new()).await.unwrap_err();
    assert!(matches!(err, Error::Prompt(_)), "{err:?}");
    assert!(server.requests().is_empty());
}
