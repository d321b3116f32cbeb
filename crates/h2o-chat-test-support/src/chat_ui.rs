//! A chat-ui client's first steps against a real server, as g4f and the browser take them:
//! the settings form (accepting the ethics modal), creating a conversation, and g4f's
//! generate body.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::http::session;

/// The H2o model g4f asks for first.
pub const FALCON: &str = "h2oai/h2ogpt-gm-oasst1-en-2048-falcon-40b-v1";

/// The settings form with the ethics modal accepted and `model` active.
pub async fn accept_settings(client: &reqwest::Client, url: &str, model: &str) {
    let response = client
        .post(format!("{url}/settings"))
        .header("referer", format!("{url}/"))
        .form(&[
            ("ethicsModalAccepted", "true"),
            ("shareConversationsWithModelAuthors", "true"),
            ("ethicsModalAcceptedAt", ""),
            ("activeModel", model),
            ("searchEnabled", "true"),
        ])
        .send()
        .await
        .expect("the server answers /settings");
    assert_eq!(response.status(), StatusCode::OK);
}

/// A new conversation with `model`; its id.
pub async fn create(client: &reqwest::Client, url: &str, model: &str) -> String {
    let response = client
        .post(format!("{url}/conversation"))
        .json(&json!({"model": model}))
        .send()
        .await
        .expect("the server answers /conversation");
    assert_eq!(response.status(), StatusCode::OK);
    response.json::<Value>().await.expect("JSON")["conversationId"]
        .as_str()
        .expect("a conversation id")
        .to_string()
}

/// g4f's generate body for `inputs` (§a.4), streaming.
pub fn g4f_body(inputs: &str) -> Value {
    json!({
        "inputs": inputs,
        "parameters": {"temperature": 0.4, "truncate": 2048, "max_new_tokens": 1024, "do_sample": true, "repetition_penalty": 1.2, "return_full_text": false},
        "stream": true,
        "options": {"id": uuid::Uuid::new_v4().to_string(), "response_id": uuid::Uuid::new_v4().to_string(), "is_retry": false, "use_cache": false, "web_search_id": ""}
    })
}

/// A session with the modal accepted and one conversation with `model`.
pub async fn conversation(url: &str, model: &str) -> (reqwest::Client, String) {
    let client = session();
    accept_settings(&client, url, model).await;
    let id = create(&client, url, model).await;
    (client, id)
}

/// A session and a conversation with [`FALCON`].
pub async fn ready_conversation(url: &str) -> (reqwest::Client, String) {
    conversation(url, FALCON).await
}
