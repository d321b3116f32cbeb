//! Server state: sessions (the ethics flag, rate-limit events) and conversations.
//!
//! Kept behind the small [`Store`] trait so a durable store can replace the in-memory one.
//! Every conversation belongs to one session; asking for it from another session is "not
//! found", exactly like a missing one (§a.4 step 3).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    User,
    Assistant,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub from: From,
    pub content: String,
    /// The client's `options.id` (a UUID) for user messages.
    pub id: String,
}

/// A stored conversation.
#[derive(Debug, Clone)]
pub struct Conversation {
    pub id: String,
    pub session: String,
    pub model: String,
    pub title: String,
    pub messages: Vec<StoredMessage>,
    pub created_at: SystemTime,
    touched: Instant,
}

/// Why a conversation cannot be created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateError {
    TooMany { limit: usize },
}

/// The state a server keeps.
pub trait Store: Send + Sync + 'static {
    fn accept_ethics(&self, session: &str);
    fn ethics_accepted(&self, session: &str) -> bool;
    fn create(&self, session: &str, model: &str) -> Result<String, CreateError>;
    /// The conversation if it exists and belongs to `session`.
    fn get(&self, session: &str, id: &str) -> Option<Conversation>;
    /// Replaces the messages of a conversation (if it still exists and is the session's).
    fn set_messages(&self, session: &str, id: &str, messages: Vec<StoredMessage>) -> bool;
    fn set_title(&self, session: &str, id: &str, title: String) -> bool;
    fn delete(&self, session: &str, id: &str) -> bool;
    /// Records a finished generation for the rate limit.
    fn record_generation(&self, session: &str);
    /// Finished generations of `session` within `window`, and when the oldest expires.
    fn recent_generations(&self, session: &str, window: Duration) -> (usize, Option<Duration>);
    /// Removes conversations untouched for `ttl`; returns how many.
    fn sweep(&self, ttl: Duration) -> usize;
    /// All conversations (for tests and metrics).
    fn conversation_count(&self) -> usize;
    /// The session a conversation belongs to (for operators and tests).
    fn owner_of(&self, id: &str) -> Option<String>;
}

#[derive(Default)]
struct State {
    ethics: HashMap<String, SystemTime>,
    conversations: HashMap<String, Conversation>,
    per_session: HashMap<String, usize>,
    generations: HashMap<String, VecDeque<Instant>>,
}

/// The default store: everything in memory, lost on restart.
pub struct MemoryStore {
    state: Mutex<State>,
    max_per_session: usize,
    counter: AtomicU32,
    titles: AtomicU32,
}

impl MemoryStore {
    pub fn new(max_per_session: usize) -> Self {
        MemoryStore {
            state: Mutex::new(State::default()),
            max_per_session,
            counter: AtomicU32::new(rand_u32()),
            titles: AtomicU32::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A MongoDB-style ObjectId: 4-byte time, 5 random bytes, 3-byte counter, 24 hex digits.
    fn object_id(&self) -> String {
        let seconds = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as u32);
        let random = uuid::Uuid::new_v4();
        let counter = self.counter.fetch_add(1, Ordering::Relaxed) & 0x00FF_FFFF;
        let mut id = format!("{seconds:08x}");
        for byte in &random.as_bytes()[..5] {
            id.push_str(&format!("{byte:02x}"));
        }
        id.push_str(&format!("{counter:06x}"));
        id
    }
}

fn rand_u32() -> u32 {
    let bytes = uuid::Uuid::new_v4();
    let b = bytes.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

impl Store for MemoryStore {
    fn accept_ethics(&self, session: &str) {
        self.state()
            .ethics
            .insert(session.to_string(), SystemTime::now());
    }

    fn ethics_accepted(&self, session: &str) -> bool {
        self.state().ethics.contains_key(session)
    }

    fn create(&self, session: &str, model: &str) -> Result<String, CreateError> {
        let id = self.object_id();
        let mut state = self.state();
        let count = state.per_session.entry(session.to_string()).or_default();
        if *count >= self.max_per_session {
            return Err(CreateError::TooMany {
                limit: self.max_per_session,
            });
        }
        *count += 1;
        let n = self.titles.fetch_add(1, Ordering::Relaxed) + 1;
        state.conversations.insert(
            id.clone(),
            Conversation {
                id: id.clone(),
                session: session.to_string(),
                model: model.to_string(),
                title: format!("Untitled {n}"),
                messages: Vec::new(),
                created_at: SystemTime::now(),
                touched: Instant::now(),
            },
        );
        Ok(id)
    }

    fn get(&self, session: &str, id: &str) -> Option<Conversation> {
        let mut state = self.state();
        let conversation = state
            .conversations
            .get_mut(id)
            .filter(|c| c.session == session)?;
        conversation.touched = Instant::now();
        Some(conversation.clone())
    }

    fn set_messages(&self, session: &str, id: &str, messages: Vec<StoredMessage>) -> bool {
        let mut state = self.state();
        match state
            .conversations
            .get_mut(id)
            .filter(|c| c.session == session)
        {
            Some(conversation) => {
                conversation.messages = messages;
                conversation.touched = Instant::now();
                true
            }
            None => false,
        }
    }

    fn set_title(&self, session: &str, id: &str, title: String) -> bool {
        let mut state = self.state();
        match state
            .conversations
            .get_mut(id)
            .filter(|c| c.session == session)
        {
            Some(conversation) => {
                conversation.title = title;
                true
            }
            None => false,
        }
    }

    fn delete(&self, session: &str, id: &str) -> bool {
        let mut state = self.state();
        if state
            .conversations
            .get(id)
            .is_none_or(|c| c.session != session)
        {
            return false;
        }
        state.conversations.remove(id);
        if let Some(count) = state.per_session.get_mut(session) {
            *count = count.saturating_sub(1);
        }
        true
    }

    fn record_generation(&self, session: &str) {
        self.state()
            .generations
            .entry(session.to_string())
            .or_default()
            .push_back(Instant::now());
    }

    fn recent_generations(&self, session: &str, window: Duration) -> (usize, Option<Duration>) {
        let mut state = self.state();
        let Some(events) = state.generations.get_mut(session) else {
            return (0, None);
        };
        let now = Instant::now();
        while events
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            events.pop_front();
        }
        let oldest_expires = events
            .front()
            .map(|t| window.saturating_sub(now.duration_since(*t)));
        (events.len(), oldest_expires)
    }

    fn sweep(&self, ttl: Duration) -> usize {
        let mut state = self.state();
        let now = Instant::now();
        let expired: Vec<(String, String)> = state
            .conversations
            .values()
            .filter(|c| now.duration_since(c.touched) > ttl)
            .map(|c| (c.id.clone(), c.session.clone()))
            .collect();
        for (id, session) in &expired {
            state.conversations.remove(id);
            if let Some(count) = state.per_session.get_mut(session) {
                *count = count.saturating_sub(1);
            }
        }
        state.generations.retain(|_, events| {
            events
                .back()
                .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(3600))
        });
        expired.len()
    }

    fn conversation_count(&self) -> usize {
        self.state().conversations.len()
    }

    fn owner_of(&self, id: &str) -> Option<String> {
        self.state()
            .conversations
            .get(id)
            .map(|c| c.session.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids_are_24_lowercase_hex_and_distinct() {
        let store = MemoryStore::new(10);
        let a = store.create("s", "m").unwrap();
        let b = store.create("s", "m").unwrap();
        assert_eq!(a.len(), 24);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        );
        assert_ne!(a, b);
    }

    #[test]
    fn another_session_sees_nothing() {
        let store = MemoryStore::new(10);
        let id = store.create("alice", "m").unwrap();
        assert!(store.get("bob", &id).is_none());
        assert!(!store.delete("bob", &id));
        assert!(store.delete("alice", &id));
    }

    #[test]
    fn per_session_cap_and_sweep() {
        let store = MemoryStore::new(2);
        store.create("s", "m").unwrap();
        store.create("s", "m").unwrap();
        assert_eq!(
            store.create("s", "m"),
            Err(CreateError::TooMany { limit: 2 })
        );
        assert_eq!(store.sweep(Duration::ZERO), 2);
        assert!(store.create("s", "m").is_ok());
    }
}
