//! `h2o-chat-server` on an ephemeral loopback port with a scripted engine, the engine's
//! gate for tests driven by events instead of timers, and raw sockets for the tests that
//! must misbehave below HTTP.

use std::sync::Arc;
use std::time::Duration;

use h2o_chat_engine::{Engine, Script, ScriptGate, ScriptedEngine};
use h2o_chat_server::{ModelRegistry, RunningServer, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A server whose models (the H2o stand-ins and the engine's own) are served by `engine`.
pub async fn serve(config: ServerConfig, engine: Arc<dyn Engine>) -> RunningServer {
    Server::new(config, ModelRegistry::with_h2o_stand_ins(engine))
        .bind("127.0.0.1:0")
        .await
        .expect("bind loopback")
}

/// A server whose engine plays `script`.
pub async fn start_with(config: ServerConfig, script: Script) -> RunningServer {
    serve(config, Arc::new(ScriptedEngine::new(script))).await
}

/// A server with the default configuration and script ("Hello!").
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
    let mut stream = TcpStream::connect(server.addr())
        .await
        .expect("connect loopback");
    stream.write_all(bytes).await.expect("write");
    stream
}

/// The messages a server stores for conversation `id`, whoever owns it.
pub fn stored_messages(
    server: &RunningServer,
    id: &str,
) -> Vec<h2o_chat_server::store::StoredMessage> {
    let store = server.state().store();
    let owner = store
        .owner_of(id)
        .expect("the store answers")
        .expect("the conversation exists");
    store
        .get(&owner, id)
        .expect("the store answers")
        .expect("the conversation exists")
        .messages
}
