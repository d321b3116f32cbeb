//! `POST /conversation/{id}/stop-generating`: the conversation's running stream ends and its
//! answer is kept as far as it went (chat-ui's `abortedGenerations`). The scripted engine's
//! gate sets the pace, so every step is an event, not a timer.

use std::time::Duration;

use futures_util::StreamExt;
use h2o_chat_engine::ScriptGate;
use h2o_chat_server::ServerConfig;
use h2o_chat_test_support::chat_ui::{g4f_body, ready_conversation};
use h2o_chat_test_support::server::{gated, reach, start_with};
use reqwest::StatusCode;
use serde_json::Value;

/// Reads the stream until `n` token events have arrived; returns what was read.
async fn read_tokens(
    body: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    n: usize,
) -> String {
    let mut text = String::new();
    while text.matches("\"token\"").count() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(20), body.next())
            .await
            .expect("a token within the bound")
            .expect("the stream is open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text
}

async fn rest_of(
    body: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
) -> String {
    let mut rest = String::new();
    let read = async {
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => rest.push_str(&String::from_utf8_lossy(&chunk)),
                Err(_) => break,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the stream ended within the bound");
    rest
}

/// Asks "Count forever." in the conversation and reads the answer's first three tokens (the
/// gate lets three through); returns the stream, still open.
async fn three_tokens_of_an_endless_answer(
    gate: &ScriptGate,
    client: &reqwest::Client,
    url: &str,
    id: &str,
) -> impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin {
    gate.release(3);
    let response = client
        .post(format!("{url}/conversation/{id}"))
        .json(&g4f_body("Count forever."))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.bytes_stream();
    read_tokens(&mut body, 3).await;
    body
}

/// The conversation as the server stores it.
async fn conversation(client: &reqwest::Client, url: &str, id: &str) -> Value {
    client
        .get(format!("{url}/conversation/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn stop_generating_ends_the_stream_and_keeps_the_answer_so_far() {
    let gate = ScriptGate::new();
    let server = start_with(ServerConfig::default(), gated(&gate, true)).await;
    let url = server.url();
    let (client, id) = ready_conversation(&url).await;
    let mut body = three_tokens_of_an_endless_answer(&gate, &client, &url, &id).await;

    let stop = client
        .post(format!("{url}/conversation/{id}/stop-generating"))
        .send()
        .await
        .unwrap();
    assert_eq!(stop.status(), StatusCode::OK);
    let rest = rest_of(&mut body).await;
    assert!(
        !rest.contains("generated_text\":\""),
        "no final event: {rest}"
    );
    assert!(!rest.contains("\"error\""), "no error event either: {rest}");
    reach(gate.ended(), 1).await;

    let conversation = conversation(&client, &url, &id).await;
    let messages = conversation["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{conversation}");
    assert_eq!(messages[0]["content"], "Count forever.");
    assert_eq!(messages[1]["from"], "assistant");
    assert!(
        messages[1]["content"]
            .as_str()
            .unwrap()
            .starts_with("toktoktok"),
        "{conversation}"
    );
    assert!(
        server.state().aborts().is_empty(),
        "nothing left registered"
    );
}

#[tokio::test]
async fn a_client_that_leaves_mid_answer_keeps_the_question_and_the_answer_so_far() {
    let gate = ScriptGate::new();
    let server = start_with(ServerConfig::default(), gated(&gate, true)).await;
    let url = server.url();
    let (client, id) = ready_conversation(&url).await;
    let body = three_tokens_of_an_endless_answer(&gate, &client, &url, &id).await;
    drop(body);
    // The generation ends when the server drops the stream, after keeping its text.
    reach(gate.ended(), 1).await;

    let conversation = conversation(&client, &url, &id).await;
    let messages = conversation["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{conversation}");
    assert_eq!(messages[0]["content"], "Count forever.");
    assert_eq!(messages[1]["from"], "assistant");
    assert_eq!(messages[1]["content"], "toktoktok", "{conversation}");
    assert!(
        server.state().aborts().is_empty(),
        "nothing left registered"
    );
}

#[tokio::test]
async fn stop_generating_with_nothing_running_is_200_and_changes_nothing() {
    let server = start_with(ServerConfig::default(), Default::default()).await;
    let url = server.url();
    let (client, id) = ready_conversation(&url).await;
    let stop = client
        .post(format!("{url}/conversation/{id}/stop-generating"))
        .send()
        .await
        .unwrap();
    assert_eq!(stop.status(), StatusCode::OK);
    // Another session's conversation, or no conversation: not found, as every id route.
    let stranger = h2o_chat_test_support::http::session();
    let refused = stranger
        .post(format!("{url}/conversation/{id}/stop-generating"))
        .send()
        .await
        .unwrap();
    assert!(
        matches!(
            refused.status(),
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
        ),
        "{}",
        refused.status()
    );
}

#[tokio::test]
async fn a_new_answer_in_the_same_conversation_stops_the_running_one() {
    let gate = ScriptGate::new();
    let server = start_with(ServerConfig::default(), gated(&gate, true)).await;
    let url = server.url();
    let (client, id) = ready_conversation(&url).await;
    gate.release(1);
    let first = client
        .post(format!("{url}/conversation/{id}"))
        .json(&g4f_body("One."))
        .send()
        .await
        .unwrap();
    let mut first = first.bytes_stream();
    read_tokens(&mut first, 1).await;
    // The second answer's headers wait for its first step; its start is the engine's event.
    let second = tokio::spawn({
        let (client, url, id) = (client.clone(), url.clone(), id.clone());
        async move {
            client
                .post(format!("{url}/conversation/{id}"))
                .json(&g4f_body("Two."))
                .send()
                .await
        }
    });
    reach(gate.started(), 2).await;
    // The first ends without a final event: its history could not take two answers.
    let rest = rest_of(&mut first).await;
    assert!(!rest.contains("generated_text\":\""), "{rest}");
    reach(gate.ended(), 1).await;
    // The second answers in full.
    gate.release(2_000);
    let second = second.await.unwrap().unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    let mut body = second.bytes_stream();
    let answer = rest_of(&mut body).await;
    assert!(
        answer.contains("\"generated_text\":\"toktok"),
        "the final event: {answer}"
    );
}
