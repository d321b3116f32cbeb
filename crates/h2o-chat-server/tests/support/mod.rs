//! What the server's tests share: a server on an ephemeral loopback port with a scripted
//! engine, a browser-like chat-ui session, the g4f body, and a raw socket for the tests that
//! must misbehave below HTTP.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use h2o_chat_engine::{Script, ScriptGate, ScriptedEngine};
use h2o_chat_server::{ModelRegistry, RunningServer, Server, ServerConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const FALCON: &str = "h2oai/h2ogpt-gm-oasst1-en-2048-falcon-40b-v1";

pub async fn start_with(config: ServerConfig, script: Script) -> RunningServer {
    let engine = Arc::new(ScriptedEngine::new(script));
    Server::new(config, ModelRegistry::with_h2o_stand_ins(engine))
        .bind("127.0.0.1:0")
        .await
        .unwrap()
}

pub async fn start() -> RunningServer {
    start_with(ServerConfig::default(), Script::default()).await
}

/// A script whose tokens wait for the gate's permits.
pub fn gated(gate: &ScriptGate, endless: bool) -> Script {
    Script {
        tokens: vec!["tok".into()],
        endless,
        gate: Some(gate.clone()),
        ..Script::default()
    }
}

/// Waits until `counter` reaches `n` (the engine says so; no timer).
pub async fn reach(mut counter: tokio::sync::watch::Receiver<usize>, n: usize) {
    counter
        .wait_for(|&value| value >= n)
        .await
        .expect("the engine is alive");
}

/// A browser-like session: cookie jar, no redirects, no proxy.
pub fn session() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

pub async fn accept_settings(client: &reqwest::Client, url: &str) {
    let response = client
        .post(format!("{url}/settings"))
        .header("referer", format!("{url}/"))
        .form(&[
            ("ethicsModalAccepted", "true"),
            ("shareConversationsWithModelAuthors", "true"),
            ("ethicsModalAcceptedAt", ""),
            ("activeModel", FALCON),
            ("searchEnabled", "true"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

pub async fn create(client: &reqwest::Client, url: &str) -> String {
    let response = client
        .post(format!("{url}/conversation"))
        .json(&json!({"model": FALCON}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json::<Value>().await.unwrap()["conversationId"]
        .as_str()
        .unwrap()
        .to_string()
}

pub fn g4f_body(inputs: &str) -> Value {
    json!({
        "inputs": inputs,
        "parameters": {"temperature": 0.4, "truncate": 2048, "max_new_tokens": 1024, "do_sample": true, "repetition_penalty": 1.2, "return_full_text": false},
        "stream": true,
        "options": {"id": uuid::Uuid::new_v4().to_string(), "response_id": uuid::Uuid::new_v4().to_string(), "is_retry": false, "use_cache": false, "web_search_id": ""}
    })
}

pub async fn ready_conversation(url: &str) -> (reqwest::Client, String) {
    let client = session();
    accept_settings(&client, url).await;
    let id = create(&client, url).await;
    (client, id)
}

/// The bytes a raw socket receives until the server closes it (or `limit` passes).
pub async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let read = async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read).await.ok()?;
    Some(received)
}

/// Connects and writes `bytes` (possibly a partial request).
pub async fn raw(server: &RunningServer, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// A server's own figure from `/metrics` (summed over labels).
pub async fn metric(url: &str, name: &str) -> f64 {
    let text = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key.split('{').next()? == name).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}
