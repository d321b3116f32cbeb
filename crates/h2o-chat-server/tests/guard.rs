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

/// The status line of a raw request naming `host` (`None`: HTTP/1.0 without a Host header).
async fn status_for_host(server: &h2o_chat_server::RunningServer, host: Option<&str>) -> String {
    let body = r#"{"prompt":"Hi","max_tokens":2}"#;
    let head = match host {
        Some(host) => format!(
            "POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ),
        None => format!(
            "POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        ),
    };
    let mut stream = raw(server, format!("{head}{body}").as_bytes()).await;
    let reply = read_until_closed(&mut stream, std::time::Duration::from_secs(10))
        .await
        .expect("the server answers and closes");
    let reply = String::from_utf8_lossy(&reply).to_string();
    reply.lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_loopback_server_answers_only_to_loopback_host_names() {
    let server = start().await;
    let port = server.addr().port();
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "[::1]:8080".to_string(),
        "LOCALHOST".to_string(),
    ] {
        let status = status_for_host(&server, Some(&host)).await;
        assert!(status.contains(" 200 "), "{host}: {status}");
    }
    assert!(status_for_host(&server, None).await.contains(" 200 "));
    // A page that rebinds its own name to 127.0.0.1 still sends its own name.
    for host in [
        "rebind.attacker.test".to_string(),
        format!("rebind.attacker.test:{port}"),
        "localhost.attacker.test".to_string(),
        "127.0.0.2".to_string(),
    ] {
        let status = status_for_host(&server, Some(&host)).await;
        assert!(status.contains(" 403 "), "{host}: {status}");
    }
}

#[tokio::test]
async fn allowed_hosts_and_the_public_origin_are_answered_too() {
    let config = h2o_chat_server::ServerConfig {
        allowed_hosts: vec!["chat.lan".into()],
        public_origin: Some("https://192.0.2.10".into()),
        ..Default::default()
    };
    let server = start_with(config, h2o_chat_engine::Script::default()).await;
    for host in ["chat.lan:8080", "192.0.2.10", "localhost"] {
        let status = status_for_host(&server, Some(host)).await;
        assert!(status.contains(" 200 "), "{host}: {status}");
    }
    let status = status_for_host(&server, Some("other.lan")).await;
    assert!(status.contains(" 403 "), "{status}");
}

#[tokio::test]
async fn a_named_origin_may_call_the_apis_from_a_browser_and_preflights_need_no_key() {
    let config = h2o_chat_server::ServerConfig {
        api_key: Some(KEY.into()),
        cors_origins: vec!["http://localhost:5173".into()],
        ..Default::default()
    };
    let server = start_with(config, h2o_chat_engine::Script::default()).await;
    let url = server.url();
    let client = h2o_chat_test_support::http::client();
    for path in ["/v1/chat/completions", "/generate", "/"] {
        let preflight = client
            .request(Method::OPTIONS, format!("{url}{path}"))
            .header("origin", "http://localhost:5173")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
            .await
            .unwrap();
        assert!(
            preflight.status().is_success(),
            "{path}: {}",
            preflight.status()
        );
        let headers = preflight.headers();
        assert_eq!(
            headers["access-control-allow-origin"],
            "http://localhost:5173"
        );
        assert!(
            headers["access-control-allow-headers"]
                .to_str()
                .unwrap()
                .contains("authorization")
        );
    }
    // The call itself still needs the key, and says so in a way the page can read.
    let refused = client
        .post(format!("{url}/v1/chat/completions"))
        .header("origin", "http://localhost:5173")
        .json(&json!({"messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        refused.headers()["access-control-allow-origin"],
        "http://localhost:5173"
    );
    let answered = client
        .post(format!("{url}/v1/chat/completions"))
        .header("origin", "http://localhost:5173")
        .bearer_auth(KEY)
        .json(&json!({"messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answered.status(), StatusCode::OK);
    // Another origin, and chat-ui's cookie routes: no cross-origin access.
    let other = client
        .request(Method::OPTIONS, format!("{url}/v1/chat/completions"))
        .header("origin", "http://localhost:6666")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let chat_ui = client
        .request(Method::OPTIONS, format!("{url}/conversation"))
        .header("origin", "http://localhost:5173")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(
        chat_ui
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn without_cors_origins_there_is_no_cross_origin_access() {
    let server = start().await;
    let preflight = h2o_chat_test_support::http::client()
        .request(
            Method::OPTIONS,
            format!("{}/v1/chat/completions", server.url()),
        )
        .header("origin", "http://localhost:5173")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(
        preflight
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}
