//! `/health` and `/metrics` with a scripted engine (the real model's are in
//! `h2o-chat-llama`'s tests).

use std::sync::Arc;

use h2o_chat_engine::{DeferredEngine, Engine, Script, ScriptedEngine};
use h2o_chat_server::{ModelRegistry, Server, ServerConfig};
use h2o_chat_test_support::chat_ui::*;
use h2o_chat_test_support::http::session;
use h2o_chat_test_support::metrics;
use h2o_chat_test_support::server::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn health_is_503_while_loading_200_when_ready_and_503_when_draining() {
    let deferred = Arc::new(DeferredEngine::new("scripted"));
    let engine: Arc<dyn Engine> = deferred.clone();
    let server = Server::new(
        ServerConfig::default(),
        ModelRegistry::with_h2o_stand_ins(engine),
    )
    .bind("127.0.0.1:0")
    .await
    .unwrap();
    let url = server.url();
    let health = || async {
        let response = session().get(format!("{url}/health")).send().await.unwrap();
        let status = response.status();
        (status, response.json::<Value>().await.unwrap())
    };
    let (status, body) = health().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["reason"].as_str().unwrap().contains("loading"),
        "{body}"
    );
    deferred.resolve(Ok(Arc::new(ScriptedEngine::new(Script::default()))));
    let (status, body) = health().await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ok");
    server.shutdown();
    // A draining server no longer accepts connections; one already open says why.
}

#[tokio::test]
async fn a_model_that_failed_to_load_is_503_with_the_reason() {
    let deferred = Arc::new(DeferredEngine::new("scripted"));
    deferred.resolve(Err("no such file".into()));
    let engine: Arc<dyn Engine> = deferred;
    let server = Server::new(
        ServerConfig::default(),
        ModelRegistry::with_h2o_stand_ins(engine),
    )
    .bind("127.0.0.1:0")
    .await
    .unwrap();
    let response = session()
        .get(format!("{}/health", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["reason"].as_str().unwrap().contains("no such file"),
        "{body}"
    );
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_status() {
    let server = start().await;
    let url = server.url();
    for _ in 0..3 {
        session()
            .post(format!("{url}/generate"))
            .json(&json!({"inputs": "Hi"}))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    }
    let (_, id) = ready_conversation(&url).await;
    session()
        .delete(format!("{url}/conversation/{id}"))
        .send()
        .await
        .unwrap();
    let text = session()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("h2o_chat_requests_total{route=\"POST /generate\",status=\"200\"} 3"),
        "{text}"
    );
    // Conversation ids never become labels.
    assert!(
        text.contains("route=\"DELETE /conversation/{id}\""),
        "{text}"
    );
    assert!(!text.contains(&id));
    let figures = metrics::parse(&text);
    // Three generations of "Hello", "!" and the end token.
    assert_eq!(
        figures.sum("h2o_chat_time_to_first_token_seconds_count"),
        3.0
    );
    assert_eq!(figures.sum("h2o_chat_generated_tokens_total"), 9.0);
    assert!(figures.sum("h2o_chat_connections") >= 1.0, "this one");
}
