//! Server state: sessions (the ethics flag, rate-limit events) and conversations, bounded.
//!
//! Two stores keep the same contract (`contract.rs` checks it against both): [`MemoryStore`],
//! lost on restart, and [`SqliteStore`], durable (`serve --db`, the default for `serve`). Every
//! conversation belongs to one session; asking for it from another session is "not found",
//! exactly like a missing one (§a.4 step 3).
//!
//! Nothing here grows without limit: sessions are capped (the least recently seen is
//! forgotten), conversations are capped per session and server-wide (creating more is
//! refused), a conversation's messages are capped in bytes (the oldest go first), and the
//! TTL sweep prunes conversations, idle sessions and old rate-limit events.
//!
//! ```
//! use h2o_chat_server::{MemoryStore, Store, StoreBounds};
//!
//! let store = MemoryStore::new(StoreBounds::default());
//! store.accept_ethics("session-a");
//! let id = store.create("session-a", "model").unwrap();
//! assert!(store.get("session-a", &id).is_some());
//! assert!(store.get("session-b", &id).is_none()); // another session's: not found
//! ```

#[cfg(test)]
mod contract;
mod memory;
mod sqlite;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

pub use memory::MemoryStore;
pub use sqlite::SqliteStore;

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
    pub(crate) touched: Instant,
}

/// A line of a session's conversation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    pub id: String,
    pub title: String,
    pub model: String,
    pub updated_at: SystemTime,
}

/// Why a conversation cannot be created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateError {
    /// This session holds as many as it may.
    SessionFull { limit: usize },
    /// The server holds as many as it may.
    ServerFull { limit: usize },
    /// The durable store failed (disk full, locked past its busy timeout); it is logged.
    Unavailable,
}

/// The caps a store applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreBounds {
    /// Sessions remembered (ethics acceptance, rate-limit events); the least recently seen
    /// is forgotten first.
    pub max_sessions: usize,
    /// Conversations one session may hold; creating more is refused with 429.
    pub max_conversations_per_session: usize,
    /// Conversations on the whole server; creating more is refused with 429 (and a
    /// `Retry-After`) until some are deleted or expire.
    pub max_conversations: usize,
    /// Bytes of messages kept per conversation (besides the model's window); the oldest
    /// messages go first.
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

/// The state a server keeps.
pub trait Store: Send + Sync + 'static {
    fn accept_ethics(&self, session: &str);
    fn ethics_accepted(&self, session: &str) -> bool;
    fn create(&self, session: &str, model: &str) -> Result<String, CreateError>;
    /// The conversation if it exists and belongs to `session`.
    fn get(&self, session: &str, id: &str) -> Option<StoredConversation>;
    /// The session's conversations, most recently updated first.
    fn list(&self, session: &str) -> Vec<ConversationSummary>;
    /// Replaces the messages of a conversation (if it still exists and is the session's),
    /// dropping the oldest beyond the byte cap.
    fn set_messages(&self, session: &str, id: &str, messages: Vec<StoredMessage>) -> bool;
    fn set_title(&self, session: &str, id: &str, title: String) -> bool;
    fn delete(&self, session: &str, id: &str) -> bool;
    /// Records a finished generation for the rate limit.
    fn record_generation(&self, session: &str);
    /// Finished generations of `session` within `window`, and when the oldest expires.
    fn recent_generations(&self, session: &str, window: Duration) -> (usize, Option<Duration>);
    /// Removes conversations untouched for `ttl`, sessions with nothing left that were not
    /// seen for `ttl`, and expired rate-limit events; returns how many conversations.
    fn sweep(&self, ttl: Duration) -> usize;
    /// All conversations (for tests and metrics).
    fn conversation_count(&self) -> usize;
    /// All sessions remembered.
    fn session_count(&self) -> usize;
    /// The session a conversation belongs to (for operators and tests).
    fn owner_of(&self, id: &str) -> Option<String>;
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
