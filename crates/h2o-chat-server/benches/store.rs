//! Conversation store operations per second under 200 concurrent sessions (BENCHMARKS.md):
//! the in-memory store beside the SQLite one (a WAL file in a temporary directory), each
//! called two ways — directly from 200 threads, and as the server calls it, through its async
//! handle (`Conversations`: off the runtime, with a deadline) from 200 tasks on a two-thread
//! runtime; and SQLite called by 200 tasks on the runtime's own threads, as the server did
//! before.
//!
//! Each session does what a chat-ui client does for one exchange, over and over: accept the
//! ethics modal, create a conversation, read the rate limit, store the question, read the
//! conversation back, store the answer, record the generation, list the session's
//! conversations, rename, delete — 10 store operations. Three rounds of 2 s per store and
//! way, medians.
//!
//! `cargo bench -p h2o-chat-server --bench store`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use h2o_chat_server::store::{Author, StoredMessage, TurnStart};
use h2o_chat_server::{Conversations, MemoryStore, SqliteStore, Store, StoreBounds};

const SESSIONS: usize = 200;
const ROUND: Duration = Duration::from_secs(2);
const ROUNDS: usize = 3;
const OPERATIONS_PER_EXCHANGE: u64 = 10;
const MODEL: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn message(from: Author, content: &str) -> StoredMessage {
    StoredMessage {
        from,
        content: content.to_string(),
        id: uuid::Uuid::new_v4().to_string(),
    }
}

fn question() -> TurnStart {
    TurnStart {
        retry_of: None,
        question: message(Author::User, "What is the capital of France?"),
    }
}

/// One exchange of one session, called directly: 10 store operations.
fn exchange(store: &dyn Store, session: &str) {
    store.accept_ethics(session).expect("accepted");
    let id = store.create(session, MODEL).expect("created");
    store
        .recent_generations(session, Duration::from_secs(60))
        .expect("read");
    let turn = question();
    assert!(store.begin_turn(session, &id, &turn).expect("stored"));
    assert!(store.get(session, &id).expect("read").is_some());
    let answer = message(Author::Assistant, "The capital of France is Paris.");
    assert!(
        store
            .end_turn(session, &id, &turn.question.id, &answer)
            .expect("stored")
    );
    store.record_generation(session).expect("recorded");
    assert!(!store.list(session).expect("read").is_empty());
    assert!(
        store
            .set_title(session, &id, "Capital of France")
            .expect("renamed")
    );
    assert!(store.delete(session, &id).expect("deleted"));
}

/// The same exchange through the server's async handle.
async fn exchange_off_runtime(conversations: &Conversations, session: &str) {
    let s = || session.to_string();
    conversations.accept_ethics(s()).await.expect("accepted");
    let id = conversations
        .create(s(), MODEL.into())
        .await
        .expect("created");
    conversations
        .recent_generations(s(), Duration::from_secs(60))
        .await
        .expect("read");
    let turn = question();
    let question_id = turn.question.id.clone();
    assert!(
        conversations
            .begin_turn(s(), id.clone(), turn)
            .await
            .expect("stored")
    );
    assert!(
        conversations
            .get(s(), id.clone())
            .await
            .expect("read")
            .is_some()
    );
    let answer = message(Author::Assistant, "The capital of France is Paris.");
    assert!(
        conversations
            .end_turn(s(), id.clone(), question_id, answer)
            .await
            .expect("stored")
    );
    conversations
        .record_generation(s())
        .await
        .expect("recorded");
    assert!(!conversations.list(s()).await.expect("read").is_empty());
    assert!(
        conversations
            .set_title(s(), id.clone(), "Capital of France".into())
            .await
            .expect("renamed")
    );
    assert!(conversations.delete(s(), id).await.expect("deleted"));
}

/// Operations per second of `SESSIONS` threads calling `store` for `ROUND`.
fn direct(store: Arc<dyn Store>) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(SESSIONS + 1));
    let threads: Vec<_> = (0..SESSIONS)
        .map(|i| {
            let (store, done, stop, start) =
                (store.clone(), done.clone(), stop.clone(), start.clone());
            std::thread::spawn(move || {
                let session = format!("session-{i:03}-{}", uuid::Uuid::new_v4());
                start.wait();
                while !stop.load(Ordering::Relaxed) {
                    exchange(store.as_ref(), &session);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    std::thread::sleep(ROUND);
    stop.store(true, Ordering::Relaxed);
    let exchanges = done.load(Ordering::Relaxed);
    let elapsed = began.elapsed();
    for thread in threads {
        thread.join().expect("a session thread panicked");
    }
    (exchanges * OPERATIONS_PER_EXCHANGE) as f64 / elapsed.as_secs_f64()
}

/// Operations per second of `SESSIONS` tasks calling the handle for `ROUND`.
fn off_runtime(runtime: &tokio::runtime::Runtime, store: Arc<dyn Store>) -> f64 {
    let failures = prometheus::IntCounterVec::new(
        prometheus::Opts::new("failures", "store failures"),
        &["operation"],
    )
    .expect("a counter");
    let conversations = Conversations::new(store, Duration::from_secs(5), failures);
    runtime.block_on(async {
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..SESSIONS)
            .map(|i| {
                let (conversations, done, stop) =
                    (conversations.clone(), done.clone(), stop.clone());
                tokio::spawn(async move {
                    let session = format!("session-{i:03}-{}", uuid::Uuid::new_v4());
                    while !stop.load(Ordering::Relaxed) {
                        exchange_off_runtime(&conversations, &session).await;
                        done.fetch_add(1, Ordering::Relaxed);
                        // A memory store answers inline, so nothing above yields; a real
                        // handler yields at its socket. Without this the workers never park
                        // and the round's timer never fires.
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        let began = Instant::now();
        tokio::time::sleep(ROUND).await;
        stop.store(true, Ordering::Relaxed);
        let exchanges = done.load(Ordering::Relaxed);
        let elapsed = began.elapsed();
        for task in tasks {
            task.await.expect("a session task panicked");
        }
        (exchanges * OPERATIONS_PER_EXCHANGE) as f64 / elapsed.as_secs_f64()
    })
}

/// Operations per second of `SESSIONS` tasks calling `store` on the runtime's own threads,
/// as the server did before the store was moved off them.
fn on_runtime(runtime: &tokio::runtime::Runtime, store: Arc<dyn Store>) -> f64 {
    runtime.block_on(async {
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..SESSIONS)
            .map(|i| {
                let (store, done, stop) = (store.clone(), done.clone(), stop.clone());
                tokio::spawn(async move {
                    let session = format!("session-{i:03}-{}", uuid::Uuid::new_v4());
                    while !stop.load(Ordering::Relaxed) {
                        exchange(store.as_ref(), &session);
                        done.fetch_add(1, Ordering::Relaxed);
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        let began = Instant::now();
        tokio::time::sleep(ROUND).await;
        stop.store(true, Ordering::Relaxed);
        let exchanges = done.load(Ordering::Relaxed);
        let elapsed = began.elapsed();
        for task in tasks {
            task.await.expect("a session task panicked");
        }
        (exchanges * OPERATIONS_PER_EXCHANGE) as f64 / elapsed.as_secs_f64()
    })
}

fn main() {
    let bounds = StoreBounds {
        max_sessions: SESSIONS * 2,
        ..StoreBounds::default()
    };
    let directory = tempfile::tempdir().expect("a temporary directory");
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new(bounds));
    let sqlite: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&directory.path().join("serve.sqlite3"), bounds).expect("a SQLite store"),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut figures: [Vec<f64>; 5] = Default::default();
    // Alternated, so that the machine's noise falls on all five.
    for _ in 0..ROUNDS {
        figures[0].push(direct(memory.clone()));
        figures[1].push(off_runtime(&runtime, memory.clone()));
        figures[2].push(direct(sqlite.clone()));
        figures[3].push(off_runtime(&runtime, sqlite.clone()));
        figures[4].push(on_runtime(&runtime, sqlite.clone()));
    }
    let [m, mh, s, sh, so] = figures.map(median);
    println!("store operations/s, {SESSIONS} concurrent sessions, median of {ROUNDS} × {ROUND:?}:");
    println!("  in memory, 200 threads:                  {m:>12.0}");
    println!("  in memory, 200 tasks through the handle: {mh:>12.0}");
    println!(
        "  SQLite, 200 threads:                     {s:>12.0}  (WAL file, synchronous=NORMAL)"
    );
    println!("  SQLite, 200 tasks off the runtime:       {sh:>12.0}");
    println!("  SQLite, 200 tasks on the runtime:        {so:>12.0}  (the server before)");
    println!(
        "  ratios: memory/SQLite {:.1}×, SQLite off the runtime / direct {:.2}, off / on the runtime {:.2}",
        m / s,
        sh / s,
        sh / so
    );
}
