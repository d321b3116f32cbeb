//! `--api-key` guards every route that generates or reads conversations — TGI's, chat-ui's
//! and OpenAI's — each refusing in its own shape; the page, `/info`, `/health` and
//! `/metrics` stay open.

use h2o_chat_test_support::chat_ui::*;
use h2o_chat_test_support::http::session;
use h2o_chat_test_support::server::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const KEY: &str = "s3cret-key";

async fn guarded() -> h2o_chat_server::RunningServer {
    let config = h2o_chat_server::ServerConfig {
        api_key: Some(KEY.into()),
        ethics_gate: false,
        ..Default::default()
    };
    start_with(config, h2o_chat_engine::Script::default()).await
}

#[tokio::test]
async fn api_key_guards_tgi_chat_ui_and_openai_routes() {
    let server = guarded().await;
    let url = server.url();
    let client = session();
    let routes: [(Method, &str, Value); 9] = [
        (Method::POST, "/generate", json!({"inputs": "Hi"})),
        (Method::POST, "/generate_stream", json!({"inputs": "Hi"})),
        (Method::POST, "/", json!({"inputs": "Hi"})),
        (Method::POST, "/conversation", json!({"model": FALCON})),
        (Method::GET, "/conversations", json!(null)),
        (
            Method::POST,
            "/conversation/64f1c0d2e4b0a1b2c3d4e5f6",
            g4f_body("Hi"),
        ),
        (Method::GET, "/v1/models", json!(null)),
        (
            Method::POST,
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Hi"}]}),
        ),
        (Method::POST, "/v1/completions", json!({"prompt": "Hi"})),
    ];
    for (method, path, body) in &routes {
        let request = |key: Option<&str>| {
            let mut request = client
                .request(method.clone(), format!("{url}{path}"))
                .header("accept", "application/json");
            if !body.is_null() {
                request = request.json(body);
            }
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            request
        };
        for wrong in [None, Some("s3cret-keY"), Some("s3cret-key-2"), Some("")] {
            let refused = request(wrong).send().await.unwrap();
            assert_eq!(
                refused.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} {wrong:?}"
            );
            assert_eq!(refused.headers()["www-authenticate"], "Bearer");
            let body: Value = refused.json().await.unwrap();
            let message = body["error"]
                .as_str()
                .or(body["error"]["message"].as_str())
                .unwrap_or_default();
            assert!(message.contains("API key"), "{path}: {body}");
        }
        let allowed = request(Some(KEY)).send().await.unwrap();
        assert_ne!(
            allowed.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn each_family_refuses_in_its_own_shape() {
    let server = guarded().await;
    let url = server.url();
    let tgi: Value = session()
        .post(format!("{url}/generate"))
        .json(&json!({"inputs": "Hi"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tgi["error_type"], "authentication");
    let openai: Value = session()
        .get(format!("{url}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(openai["error"]["code"], "invalid_api_key");
    // chat-ui's hook format: plain text unless JSON is asked for.
    let chat_ui = session()
        .post(format!("{url}/conversation"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(chat_ui.status(), StatusCode::UNAUTHORIZED);
    assert!(chat_ui.text().await.unwrap().contains("API key"));
}

#[tokio::test]
async fn the_page_info_health_and_metrics_stay_open() {
    let server = guarded().await;
    let url = server.url();
    for path in ["/", "/info", "/health", "/metrics"] {
        let response = session().get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}
