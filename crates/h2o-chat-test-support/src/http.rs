//! Loopback HTTP clients: no proxy (a test must never leave the machine), and for chat-ui a
//! browser-like session with a cookie jar.

use reqwest::StatusCode;
use serde_json::Value;

/// A client for loopback servers.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a reqwest client")
}

/// A browser-like session: cookie jar, no redirects, no proxy.
pub fn session() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .expect("a reqwest client")
}

/// POSTs `body` as JSON; the status and the reply's JSON (`Null` when it is not JSON).
pub async fn post_json(url: &str, body: &Value) -> (StatusCode, Value) {
    let response = client()
        .post(url)
        .json(body)
        .send()
        .await
        .expect("the server answers");
    let status = response.status();
    let text = response.text().await.expect("a body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// GETs `url`; the status and the reply's JSON (`Null` when it is not JSON).
pub async fn get_json(url: &str) -> (StatusCode, Value) {
    let response = client().get(url).send().await.expect("the server answers");
    let status = response.status();
    let text = response.text().await.expect("a body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}
