//! What the server keeps: sessions (memory) and conversations (data).
//!
//! - **Sessions** are a memory bound: the ethics flag and the rate limit's recent events,
//!   capped in number (the least recently seen is forgotten first). Forgetting a session
//!   deletes nothing a user stored: its conversations stay, and its cookie still finds them.
//! - **Conversations** are data: removed by their owner (`DELETE`), or by an explicit
//!   retention (`serve --retention`) measured from their own last activity — never from the
//!   process's start, so a restart after downtime keeps everything. Only conversations their
//!   user never touched (no message, no title) are pruned after an hour of idleness: they hold
//!   nothing, and would otherwise let anyone fill the server's cap.
//! - **A turn is stored as it happens** ([`Store::begin_turn`], [`Store::end_turn`]): the
//!   question before the answer streams, the answer as far as it went at every end.
//!
//! Every operation says when it fails ([`StoreError`]); the server answers 503 before a stream,
//! an error event after it, and counts it in `/metrics` — never a silent success.
//!
//! Two stores keep the same contract (`contract.rs` checks it against both): [`MemoryStore`],
//! lost on restart, and [`SqliteStore`], durable (`serve --db`, the default for `serve`). Every
//! conversation belongs to one session; asking for it from another session is "not found",
//! exactly like a missing one (§a.4 step 3). The server calls them off its async runtime
//! ([`Conversations`]).
//!
//! ```
//! use h2o_chat_server::{MemoryStore, Store, StoreBounds};
//!
//! let store = MemoryStore::new(StoreBounds::default());
//! store.accept_ethics("session-a").unwrap();
//! let id = store.create("session-a", "model").unwrap();
//! assert!(store.get("session-a", &id).unwrap().is_some());
//! assert!(store.get("session-b", &id).unwrap().is_none()); // another session's: not found
//! ```

#[cfg(test)]
mod contract;
mod conversations;
mod memory;
mod sqlite;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

pub use conversations::Conversations;
pub use memory::MemoryStore;
pub use sqlite::SqliteStore;

/// How long a conversation its user never touched (no message, no title) is kept idle.
pub const UNTOUCHED_TTL: Duration = Duration::from_secs(3600);

/// Who wrote a message (chat-ui's `from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Author {
    User,
    Assistant,
}

impl Author {
    /// The chat template's role.
    pub fn role(self) -> &'static str {
        match self {
            Author::User => "user",
            Author::Assistant => "assistant",
        }
    }
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub from: Author,
    pub content: String,
    /// The client's `options.id` (a UUID) for user messages.
    pub id: String,
}

/// A stored conversation.
#[derive(Debug, Clone)]
pub struct StoredConversation {
    pub id: String,
    pub session: String,
    pub model: String,
    pub title: String,
    pub messages: Vec<StoredMessage>,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

/// A line of a session's conversation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    pub id: String,
    pub title: String,
    pub model: String,
    pub updated_at: SystemTime,
}

/// A store operation that failed: the disk, a lock held past the busy timeout, a deadline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the conversation store failed ({operation}): {detail}")]
pub struct StoreError {
    pub operation: &'static str,
    pub detail: String,
}

impl StoreError {
    pub fn new(operation: &'static str, detail: impl std::fmt::Display) -> Self {
        StoreError {
            operation,
            detail: detail.to_string(),
        }
    }
}

/// Why a conversation cannot be created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateError {
    /// This session holds as many as it may.
    SessionFull { limit: usize },
    /// The server holds as many as it may.
    ServerFull { limit: usize },
    /// The store failed.
    Unavailable(StoreError),
}

/// The caps a store applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreBounds {
    /// Sessions remembered (ethics acceptance, rate-limit events); the least recently seen
    /// is forgotten first. Forgetting a session deletes none of its conversations.
    pub max_sessions: usize,
    /// Conversations one session may hold; creating more is refused with 429.
    pub max_conversations_per_session: usize,
    /// Conversations on the whole server; creating more is refused with 429 (and a
    /// `Retry-After`) until some are deleted.
    pub max_conversations: usize,
    /// Bytes of messages kept per conversation; beyond, the oldest messages go first.
    pub max_history_bytes: usize,
}

impl Default for StoreBounds {
    fn default() -> Self {
        StoreBounds {
            max_sessions: 100_000,
            max_conversations_per_session: 256,
            max_conversations: 100_000,
            max_history_bytes: 256 * 1024,
        }
    }
}

/// The start of a turn: the question, stored before the answer streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnStart {
    /// A retry replaces the message with this id and everything after it (§a.4).
    pub retry_of: Option<String>,
    pub question: StoredMessage,
}

/// What a sweep removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// Conversations whose last activity is older than this (`serve --retention`); `None`
    /// keeps them until their owner deletes them.
    pub retention: Option<Duration>,
    /// Conversations never touched by their user (no message, no title) idle this long.
    pub untouched: Duration,
}

/// The state a server keeps. Calls may block on I/O: async code goes through
/// [`Conversations`], which runs them off the runtime with a deadline.
pub trait Store: Send + Sync + 'static {
    /// Whether calls may wait on I/O (a file, a lock), so they must not run on an async
    /// runtime's thread.
    fn blocks(&self) -> bool;
    fn accept_ethics(&self, session: &str) -> Result<(), StoreError>;
    fn ethics_accepted(&self, session: &str) -> Result<bool, StoreError>;
    fn create(&self, session: &str, model: &str) -> Result<String, CreateError>;
    /// The conversation if it exists and belongs to `session`.
    fn get(&self, session: &str, id: &str) -> Result<Option<StoredConversation>, StoreError>;
    /// The session's conversations, most recently updated first.
    fn list(&self, session: &str) -> Result<Vec<ConversationSummary>, StoreError>;
    /// Stores a turn's question (dropping the oldest messages beyond the byte cap); false when
    /// the conversation is gone or another session's.
    fn begin_turn(&self, session: &str, id: &str, turn: &TurnStart) -> Result<bool, StoreError>;
    /// Stores the answer to the question `question_id`, right after it; false when that
    /// question is no longer there (the conversation was deleted, the question retried).
    fn end_turn(
        &self,
        session: &str,
        id: &str,
        question_id: &str,
        answer: &StoredMessage,
    ) -> Result<bool, StoreError>;
    fn set_title(&self, session: &str, id: &str, title: &str) -> Result<bool, StoreError>;
    fn delete(&self, session: &str, id: &str) -> Result<bool, StoreError>;
    /// Records a finished generation for the rate limit.
    fn record_generation(&self, session: &str) -> Result<(), StoreError>;
    /// Finished generations of `session` within `window`, and when the oldest expires.
    fn recent_generations(
        &self,
        session: &str,
        window: Duration,
    ) -> Result<(usize, Option<Duration>), StoreError>;
    /// Removes what `sweep` says and rate-limit events older than a minute; returns how many
    /// conversations went.
    fn sweep(&self, sweep: &Sweep) -> Result<usize, StoreError>;
    /// Conversations stored (kept in memory: no I/O, for `/metrics`).
    fn conversation_count(&self) -> usize;
    /// Sessions remembered (kept in memory: no I/O).
    fn session_count(&self) -> usize;
    /// The session a conversation belongs to (for operators and tests).
    fn owner_of(&self, id: &str) -> Result<Option<String>, StoreError>;
}

/// A MongoDB-style ObjectId (§a.3): 4-byte time, 5 random bytes, 3-byte counter.
pub fn object_id(counter: &AtomicU32) -> String {
    let seconds = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32);
    let random = uuid::Uuid::new_v4();
    let counter = counter.fetch_add(1, Ordering::Relaxed) & 0x00FF_FFFF;
    let mut id = format!("{seconds:08x}");
    for byte in &random.as_bytes()[..5] {
        id.push_str(&format!("{byte:02x}"));
    }
    id.push_str(&format!("{counter:06x}"));
    id
}

pub(crate) fn rand_u32() -> u32 {
    let bytes = uuid::Uuid::new_v4();
    let b = bytes.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Drops the oldest messages until the contents fit in `max_bytes` (the newest message is
/// always kept).
pub fn cap_history(messages: &mut Vec<StoredMessage>, max_bytes: usize) {
    let mut total: usize = messages.iter().map(|m| m.content.len()).sum();
    let mut drop = 0;
    while total > max_bytes && drop + 1 < messages.len() {
        total -= messages[drop].content.len();
        drop += 1;
    }
    messages.drain(..drop);
}

/// A turn's question added to `messages`: a retry first cuts the retried message and what
/// follows it.
pub(crate) fn apply_turn(messages: &mut Vec<StoredMessage>, turn: &TurnStart, max_bytes: usize) {
    if let Some(retried) = &turn.retry_of
        && let Some(at) = messages.iter().position(|m| &m.id == retried)
    {
        messages.truncate(at);
    }
    messages.push(turn.question.clone());
    cap_history(messages, max_bytes);
}

/// An answer placed right after its question; false when the question is gone.
pub(crate) fn apply_answer(
    messages: &mut Vec<StoredMessage>,
    question_id: &str,
    answer: &StoredMessage,
    max_bytes: usize,
) -> bool {
    let Some(at) = messages
        .iter()
        .position(|m| m.from == Author::User && m.id == question_id)
    else {
        return false;
    };
    messages.insert(at + 1, answer.clone());
    cap_history(messages, max_bytes);
    true
}
