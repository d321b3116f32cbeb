//! Shutdown with a deadline: draining refuses new work and lets running answers finish;
//! at the deadline the ones still running end with an error event, and the server stops.
//! (The signals themselves — SIGTERM, SIGINT, a second signal — are tested on the real
//! binary in the CLI's tests.)

use std::time::Duration;

use h2o_chat_engine::ScriptGate;
use h2o_chat_server::{ServerConfig, Timeouts};
use h2o_chat_test_support::http::session;
use h2o_chat_test_support::server::*;
use serde_json::json;

fn config(shutdown: Duration) -> ServerConfig {
    ServerConfig {
        timeouts: Timeouts {
            shutdown,
            ..Timeouts::default()
        },
        ..ServerConfig::default()
    }
}

async fn open_stream(url: &str) -> reqwest::Response {
    let mut response = session()
        .post(format!("{url}/generate_stream"))
        .json(&json!({"inputs": "Hi", "parameters": {"max_new_tokens": 4000}}))
        .send()
        .await
        .unwrap();
    assert!(response.chunk().await.unwrap().is_some());
    response
}

#[tokio::test]
async fn at_the_deadline_running_streams_end_with_an_error_event_and_the_server_stops() {
    let gate = ScriptGate::new();
    let server = start_with(config(Duration::from_millis(300)), gated(&gate, true)).await;
    let url = server.url();
    gate.release(2);
    let first = open_stream(&url).await;
    let second = open_stream(&url).await;
    server.shutdown();
    // Draining: no new requests.
    let refused = session()
        .post(format!("{url}/generate"))
        .json(&json!({"inputs": "Hi"}))
        .send()
        .await;
    assert!(refused.is_err() || refused.unwrap().status() == 503);
    for stream in [first, second] {
        let rest = tokio::time::timeout(Duration::from_secs(20), stream.text())
            .await
            .expect("the stream ended at the deadline")
            .unwrap();
        assert!(
            rest.ends_with("data:{\"error\":\"Request failed during generation: the server is shutting down\",\"error_type\":\"shutdown\"}\n\n"),
            "{rest}"
        );
    }
    tokio::time::timeout(Duration::from_secs(20), server.wait())
        .await
        .expect("the server stopped")
        .unwrap();
}

#[tokio::test]
async fn a_stream_that_finishes_within_the_deadline_finishes_normally() {
    let gate = ScriptGate::new();
    let server = start_with(config(Duration::from_secs(60)), gated(&gate, false)).await;
    gate.release(1);
    let stream = open_stream(&server.url()).await;
    server.shutdown();
    gate.release(10);
    let rest = stream.text().await.unwrap();
    assert!(rest.contains("\"generated_text\":\"tok\""), "{rest}");
    tokio::time::timeout(Duration::from_secs(20), server.wait())
        .await
        .expect("the server stopped once the stream was done")
        .unwrap();
}

#[tokio::test]
async fn a_forced_shutdown_ends_every_stream_at_once() {
    let gate = ScriptGate::new();
    let server = start_with(config(Duration::from_secs(3600)), gated(&gate, true)).await;
    gate.release(1);
    let stream = open_stream(&server.url()).await;
    server.shutdown();
    server.force_shutdown();
    let rest = tokio::time::timeout(Duration::from_secs(20), stream.text())
        .await
        .expect("the stream ended")
        .unwrap();
    assert!(rest.contains("\"error_type\":\"shutdown\""), "{rest}");
    tokio::time::timeout(Duration::from_secs(20), server.wait())
        .await
        .expect("the server stopped")
        .unwrap();
}
