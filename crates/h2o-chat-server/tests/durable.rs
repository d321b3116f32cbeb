//! Nothing lost: what a user stored survives the server forgetting their session, a restart
//! after downtime, and every way a turn can end early; a store that fails is an error the
//! client sees and `/metrics` counts, never a silent success. Over real sockets, with the
//! scripted engine's gate setting the pace (events, not timers).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use h2o_chat_engine::{Script, ScriptGate, ScriptedEngine};
use h2o_chat_server::store::{
    ConversationSummary, CreateError, StoreError, StoredConversation, StoredMessage, Sweep,
    TurnStart,
};
use h2o_chat_server::{
    Bounds, MemoryStore, ModelRegistry, RunningServer, Server, ServerConfig, SqliteStore, Store,
    StoreBounds, Timeouts,
};
use h2o_chat_test_support::chat_ui::{FALCON, accept_settings, create, g4f_body};
use h2o_chat_test_support::http::session;
use h2o_chat_test_support::metrics;
use h2o_chat_test_support::server::{gated, reach, stored_messages};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn serve(config: ServerConfig, script: Script, store: Arc<dyn Store>) -> RunningServer {
    let engine = Arc::new(ScriptedEngine::new(script));
    Server::with_store(config, ModelRegistry::with_h2o_stand_ins(engine), store)
        .bind("127.0.0.1:0")
        .await
        .unwrap()
}

/// A session with the modal accepted and a conversation.
async fn user(url: &str) -> (reqwest::Client, String) {
    let client = session();
    accept_settings(&client, url, FALCON).await;
    let id = create(&client, url, FALCON).await;
    (client, id)
}

/// The conversation's messages as the user reads them back.
async fn read_back(client: &reqwest::Client, url: &str, id: &str) -> Vec<String> {
    let response = client
        .get(format!("{url}/conversation/{id}"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect()
}

/// Generates in `id` and reads the whole stream.
async fn ask(client: &reqwest::Client, url: &str, id: &str, question: &str) -> String {
    client
        .post(format!("{url}/conversation/{id}"))
        .json(&g4f_body(question))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn forgetting_a_session_keeps_its_conversations() {
    let config = ServerConfig {
        bounds: Bounds {
            store: StoreBounds {
                max_sessions: 2,
                ..StoreBounds::default()
            },
            ..Bounds::default()
        },
        ..ServerConfig::default()
    };
    let store = SqliteStore::in_memory(config.bounds.store).unwrap();
    let server = serve(config, Script::default(), Arc::new(store)).await;
    let url = server.url();
    let (alice, id) = user(&url).await;
    ask(&alice, &url, &id, "Remember me.").await;
    // Others push Alice's session out of the server's memory…
    for _ in 0..3 {
        let other = session();
        accept_settings(&other, &url, FALCON).await;
    }
    assert_eq!(server.state().store().session_count(), 2);
    // …and her conversation is still hers, whole.
    assert_eq!(
        read_back(&alice, &url, &id).await,
        ["Remember me.", "Hello!"]
    );
    let figures = metrics::fetch(&url).await;
    assert_eq!(figures.sum("h2o_chat_conversations"), 1.0);
    // Only the modal has to be accepted again.
    let refused = alice
        .post(format!("{url}/conversation"))
        .json(&json!({"model": FALCON}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_restart_after_downtime_keeps_the_conversations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("serve.sqlite3");
    let (session_id, id) = {
        let store = SqliteStore::open(&path, StoreBounds::default()).unwrap();
        store.accept_ethics("alice").unwrap();
        let id = store.create("alice", FALCON).unwrap();
        let turn = TurnStart {
            retry_of: None,
            question: StoredMessage {
                from: h2o_chat_server::store::Author::User,
                content: "Before the downtime.".into(),
                id: "00000000-0000-0000-0000-000000000001".into(),
            },
        };
        assert!(store.begin_turn("alice", &id, &turn).unwrap());
        ("alice".to_string(), id)
    };
    // The server was down for two hours: every row is that old.
    let two_hours_ago = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 2 * 3600 * 1000;
    let db = h2o_chat_db::rusqlite::Connection::open(&path).unwrap();
    db.execute(
        "UPDATE conversations SET created_at = ?1, updated_at = ?1, touched_at = ?1",
        [two_hours_ago],
    )
    .unwrap();
    drop(db);
    let store = SqliteStore::open(&path, StoreBounds::default()).unwrap();
    // The server sweeps once before it listens.
    let server = serve(ServerConfig::default(), Script::default(), Arc::new(store)).await;
    let kept = stored_messages(&server, &id);
    assert_eq!(
        kept.len(),
        1,
        "the stored conversation survived the restart"
    );
    assert_eq!(
        server.state().store().owner_of(&id).unwrap().as_deref(),
        Some(session_id.as_str())
    );
    // An explicit retention shorter than the downtime is what removes it.
    let store = SqliteStore::open(&path, StoreBounds::default()).unwrap();
    let config = ServerConfig {
        retention: Some(Duration::from_secs(3600)),
        ..ServerConfig::default()
    };
    let retained = serve(config, Script::default(), Arc::new(store)).await;
    assert_eq!(retained.state().store().conversation_count(), 0);
}

#[tokio::test]
async fn the_question_is_stored_before_the_answer_streams() {
    let gate = ScriptGate::new();
    let store = Arc::new(MemoryStore::new(StoreBounds::default()));
    let server = serve(ServerConfig::default(), gated(&gate, true), store).await;
    let url = server.url();
    let (client, id) = user(&url).await;
    let streaming = tokio::spawn({
        let (client, url, id) = (client.clone(), url.clone(), id.clone());
        async move {
            client
                .post(format!("{url}/conversation/{id}"))
                .json(&g4f_body("Stored first?"))
                .send()
                .await
        }
    });
    // The engine has started and no token has been let through.
    reach(gate.started(), 1).await;
    assert_eq!(read_back(&client, &url, &id).await, ["Stored first?"]);
    streaming.abort();
}

#[tokio::test]
async fn an_answer_cut_by_a_failure_keeps_the_question_and_the_answer_so_far() {
    let script = Script {
        tokens: vec!["Par".into(), "tial".into()],
        endless: true,
        fail_after: Some((3, "the engine broke".into())),
        ..Script::default()
    };
    let store = Arc::new(MemoryStore::new(StoreBounds::default()));
    let server = serve(ServerConfig::default(), script, store).await;
    let url = server.url();
    let (client, id) = user(&url).await;
    let stream = ask(&client, &url, &id, "Go on.").await;
    assert!(stream.contains("the engine broke"), "{stream}");
    assert_eq!(
        read_back(&client, &url, &id).await,
        ["Go on.", "PartialPar"]
    );
}

#[tokio::test]
async fn an_answer_cut_by_shutdown_keeps_the_question_and_the_answer_so_far() {
    let gate = ScriptGate::new();
    let config = ServerConfig {
        timeouts: Timeouts {
            shutdown: Duration::from_millis(100),
            ..Timeouts::default()
        },
        ..ServerConfig::default()
    };
    let store = Arc::new(MemoryStore::new(StoreBounds::default()));
    let server = serve(config, gated(&gate, true), store.clone()).await;
    let url = server.url();
    let (client, id) = user(&url).await;
    gate.release(2);
    let response = client
        .post(format!("{url}/conversation/{id}"))
        .json(&g4f_body("Count."))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while text.matches("\"token\"").count() < 2 {
        text.push_str(&String::from_utf8_lossy(
            &body.next().await.unwrap().unwrap(),
        ));
    }
    server.shutdown();
    while let Some(Ok(chunk)) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("\"error_type\":\"shutdown\""), "{text}");
    let owner = store.owner_of(&id).unwrap().unwrap();
    let kept = store.get(&owner, &id).unwrap().unwrap().messages;
    let contents: Vec<&str> = kept.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["Count.", "toktok"]);
}

/// A memory store whose writes can be made to fail, as a full disk would.
struct Failing {
    inner: MemoryStore,
    broken: AtomicBool,
}

impl Failing {
    fn check(&self, operation: &'static str) -> Result<(), StoreError> {
        if self.broken.load(Ordering::Acquire) {
            Err(StoreError::new(operation, "disk full"))
        } else {
            Ok(())
        }
    }
}

impl Store for Failing {
    fn blocks(&self) -> bool {
        true
    }
    fn accept_ethics(&self, session: &str) -> Result<(), StoreError> {
        self.check("accept_ethics")?;
        self.inner.accept_ethics(session)
    }
    fn ethics_accepted(&self, session: &str) -> Result<bool, StoreError> {
        self.inner.ethics_accepted(session)
    }
    fn create(&self, session: &str, model: &str) -> Result<String, CreateError> {
        self.check("create").map_err(CreateError::Unavailable)?;
        self.inner.create(session, model)
    }
    fn get(&self, s: &str, id: &str) -> Result<Option<StoredConversation>, StoreError> {
        self.inner.get(s, id)
    }
    fn list(&self, session: &str) -> Result<Vec<ConversationSummary>, StoreError> {
        self.inner.list(session)
    }
    fn begin_turn(&self, s: &str, id: &str, turn: &TurnStart) -> Result<bool, StoreError> {
        self.check("begin_turn")?;
        self.inner.begin_turn(s, id, turn)
    }
    fn end_turn(
        &self,
        s: &str,
        id: &str,
        q: &str,
        answer: &StoredMessage,
    ) -> Result<bool, StoreError> {
        self.check("end_turn")?;
        self.inner.end_turn(s, id, q, answer)
    }
    fn set_title(&self, s: &str, id: &str, title: &str) -> Result<bool, StoreError> {
        self.check("set_title")?;
        self.inner.set_title(s, id, title)
    }
    fn delete(&self, s: &str, id: &str) -> Result<bool, StoreError> {
        self.check("delete")?;
        self.inner.delete(s, id)
    }
    fn record_generation(&self, session: &str) -> Result<(), StoreError> {
        self.inner.record_generation(session)
    }
    fn recent_generations(
        &self,
        s: &str,
        window: Duration,
    ) -> Result<(usize, Option<Duration>), StoreError> {
        self.inner.recent_generations(s, window)
    }
    fn sweep(&self, sweep: &Sweep) -> Result<usize, StoreError> {
        self.inner.sweep(sweep)
    }
    fn conversation_count(&self) -> usize {
        self.inner.conversation_count()
    }
    fn session_count(&self) -> usize {
        self.inner.session_count()
    }
    fn owner_of(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.inner.owner_of(id)
    }
}

#[tokio::test]
async fn a_write_that_fails_is_an_error_the_client_sees_and_a_counted_failure() {
    let gate = ScriptGate::new();
    let store = Arc::new(Failing {
        inner: MemoryStore::new(StoreBounds::default()),
        broken: AtomicBool::new(false),
    });
    let server = serve(ServerConfig::default(), gated(&gate, false), store.clone()).await;
    let url = server.url();
    let (client, id) = user(&url).await;
    // The answer streams; the disk fills before it can be stored.
    let answering = tokio::spawn({
        let (client, url, id) = (client.clone(), url.clone(), id.clone());
        async move { ask(&client, &url, &id, "Keep this.").await }
    });
    reach(gate.started(), 1).await;
    store.broken.store(true, Ordering::Release);
    gate.release(10);
    let stream = answering.await.unwrap();
    assert!(
        !stream.contains("\"generated_text\":\"tok\""),
        "no final event: {stream}"
    );
    assert!(stream.contains("\"error_type\":\"store\""), "{stream}");
    // A question that cannot be stored is refused before anything streams; so is a new
    // conversation.
    let refused = client
        .post(format!("{url}/conversation/{id}"))
        .json(&g4f_body("And this?"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let refused = client
        .post(format!("{url}/conversation"))
        .json(&json!({"model": FALCON}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let figures = metrics::fetch(&url).await;
    assert_eq!(
        figures.with("h2o_chat_store_failures_total", "operation", "end_turn"),
        1.0
    );
    assert_eq!(
        figures.with("h2o_chat_store_failures_total", "operation", "begin_turn"),
        1.0
    );
    assert_eq!(
        figures.with("h2o_chat_conversations_refused_total", "reason", "store"),
        1.0
    );
}

#[tokio::test]
async fn caps_refuse_the_session_that_hits_them_with_retry_after() {
    let config = ServerConfig {
        bounds: Bounds {
            store: StoreBounds {
                max_conversations_per_session: 1,
                max_conversations: 2,
                ..StoreBounds::default()
            },
            ..Bounds::default()
        },
        ..ServerConfig::default()
    };
    let store = Arc::new(MemoryStore::new(config.bounds.store));
    let server = serve(config, Script::default(), store).await;
    let url = server.url();
    let (alice, first) = user(&url).await;
    let refused = alice
        .post(format!("{url}/conversation"))
        .json(&json!({"model": FALCON}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    let (_bob, _) = user(&url).await;
    let (carol, _) = (session(), ());
    accept_settings(&carol, &url, FALCON).await;
    let full = carol
        .post(format!("{url}/conversation"))
        .json(&json!({"model": FALCON}))
        .send()
        .await
        .unwrap();
    assert_eq!(full.status(), StatusCode::TOO_MANY_REQUESTS);
    // Nobody's conversation made room.
    assert!(read_back(&alice, &url, &first).await.is_empty());
    let figures = metrics::fetch(&url).await;
    assert_eq!(figures.sum("h2o_chat_conversations"), 2.0);
    assert_eq!(figures.sum("h2o_chat_conversations_limit"), 2.0);
    assert_eq!(
        figures.with("h2o_chat_conversations_refused_total", "reason", "session"),
        1.0
    );
    assert_eq!(
        figures.with("h2o_chat_conversations_refused_total", "reason", "server"),
        1.0
    );
}
