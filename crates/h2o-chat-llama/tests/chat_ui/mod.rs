//! A chat-ui client's first steps, shared by the serving tests and the serving benchmark.

use h2o_chat_server::LOCAL_MODEL_ID;
use serde_json::{Value, json};

/// A chat-ui session with an accepted ethics modal and one conversation with the local model.
pub async fn conversation(url: &str) -> (reqwest::Client, String) {
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .no_proxy()
        .build()
        .unwrap();
    client
        .post(format!("{url}/settings"))
        .header("referer", format!("{url}/"))
        .form(&[
            ("ethicsModalAccepted", "true"),
            ("activeModel", LOCAL_MODEL_ID),
        ])
        .send()
        .await
        .unwrap();
    let created: Value = client
        .post(format!("{url}/conversation"))
        .json(&json!({"model": LOCAL_MODEL_ID}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["conversationId"].as_str().unwrap().to_string();
    (client, id)
}
