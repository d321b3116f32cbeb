//! Conversation store operations per second under 200 concurrent sessions (BENCHMARKS.md):
//! the in-memory store beside the SQLite one (a WAL file in a temporary directory).
//!
//! Each session is a thread doing what a chat-ui client does for one exchange, over and
//! over: accept the ethics modal, create a conversation, read the rate limit, store the
//! question, read the conversation back, store the answer, record the generation, list the
//! session's conversations, rename, delete — 10 store operations. Three rounds of 2 s per
//! store, medians.
//!
//! `cargo bench -p h2o-chat-server --bench store`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use h2o_chat_server::store::{Author, StoredMessage};
use h2o_chat_server::{MemoryStore, SqliteStore, Store, StoreBounds};

const SESSIONS: usize = 200;
const ROUND: Duration = Duration::from_secs(2);
const ROUNDS: usize = 3;
const OPERATIONS_PER_EXCHANGE: u64 = 10;

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

/// One exchange of one session: 10 store operations.
fn exchange(store: &dyn Store, session: &str) {
    store.accept_ethics(session);
    let Ok(id) = store.create(session, "HuggingFaceTB/SmolLM2-135M-Instruct") else {
        panic!("the store refused a conversation");
    };
    let _ = store.recent_generations(session, Duration::from_secs(60));
    let question = message(Author::User, "What is the capital of France?");
    assert!(store.set_messages(session, &id, vec![question.clone()]));
    let stored = store
        .get(session, &id)
        .expect("the conversation just created");
    let mut messages = stored.messages;
    messages.push(message(
        Author::Assistant,
        "The capital of France is Paris.",
    ));
    assert!(store.set_messages(session, &id, messages));
    store.record_generation(session);
    assert!(!store.list(session).is_empty());
    assert!(store.set_title(session, &id, "Capital of France".into()));
    assert!(store.delete(session, &id));
}

/// Exchanges per second of `SESSIONS` threads hammering `store` for `ROUND`.
fn round(store: Arc<dyn Store>) -> f64 {
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
    let (mut in_memory, mut in_sqlite) = (Vec::new(), Vec::new());
    // Alternated, so that the machine's noise falls on both.
    for _ in 0..ROUNDS {
        in_memory.push(round(memory.clone()));
        in_sqlite.push(round(sqlite.clone()));
    }
    let (m, s) = (median(in_memory), median(in_sqlite));
    println!("store operations/s, {SESSIONS} concurrent sessions, median of {ROUNDS} × {ROUND:?}:");
    println!("  in memory: {m:>12.0}");
    println!("  SQLite:    {s:>12.0}  (WAL file, synchronous=NORMAL)");
    println!("  ratio memory/SQLite: {:.1}×", m / s);
}
