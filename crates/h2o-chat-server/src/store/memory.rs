//! The default store: everything in memory, lost on restart.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use super::{
    ConversationSummary, CreateError, Store, StoreBounds, StoredConversation, StoredMessage,
    cap_history, object_id, rand_u32,
};

/// What the store remembers of a session.
struct SessionRecord {
    ethics_at: Option<SystemTime>,
    conversations: usize,
    generations: VecDeque<Instant>,
    /// Its key in `State::recency`.
    seen: u64,
    seen_at: Instant,
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, SessionRecord>,
    /// Sessions by when they were last seen (oldest first), for the cap.
    recency: BTreeMap<u64, String>,
    clock: u64,
    conversations: HashMap<String, StoredConversation>,
}

impl State {
    /// The session's record, created if needed (forgetting the least recently seen session
    /// at the cap), and marked as seen now.
    fn session(&mut self, session: &str, max_sessions: usize) -> &mut SessionRecord {
        self.clock += 1;
        let clock = self.clock;
        if let Some(record) = self.sessions.get_mut(session) {
            self.recency.remove(&record.seen);
            record.seen = clock;
            record.seen_at = Instant::now();
            self.recency.insert(clock, session.to_string());
        } else {
            while self.sessions.len() >= max_sessions.max(1) {
                let Some((_, oldest)) = self.recency.pop_first() else {
                    break;
                };
                self.forget_session(&oldest);
            }
            self.sessions.insert(
                session.to_string(),
                SessionRecord {
                    ethics_at: None,
                    conversations: 0,
                    generations: VecDeque::new(),
                    seen: clock,
                    seen_at: Instant::now(),
                },
            );
            self.recency.insert(clock, session.to_string());
        }
        // Present: it was found or just inserted.
        self.sessions
            .get_mut(session)
            .expect("the session record was just found or inserted")
    }

    /// Forgets a session and its conversations.
    fn forget_session(&mut self, session: &str) {
        if let Some(record) = self.sessions.remove(session) {
            self.recency.remove(&record.seen);
            if record.conversations > 0 {
                self.conversations.retain(|_, c| c.session != session);
            }
        }
    }
}

/// See the module docs.
pub struct MemoryStore {
    state: Mutex<State>,
    bounds: StoreBounds,
    counter: AtomicU32,
    titles: AtomicU32,
}

impl MemoryStore {
    pub fn new(bounds: StoreBounds) -> Self {
        MemoryStore {
            state: Mutex::new(State::default()),
            bounds,
            counter: AtomicU32::new(rand_u32()),
            titles: AtomicU32::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn object_id(&self) -> String {
        object_id(&self.counter)
    }
}

impl Store for MemoryStore {
    fn accept_ethics(&self, session: &str) {
        let mut state = self.state();
        state.session(session, self.bounds.max_sessions).ethics_at = Some(SystemTime::now());
    }

    fn ethics_accepted(&self, session: &str) -> bool {
        let mut state = self.state();
        if !state.sessions.contains_key(session) {
            return false;
        }
        state
            .session(session, self.bounds.max_sessions)
            .ethics_at
            .is_some()
    }

    fn create(&self, session: &str, model: &str) -> Result<String, CreateError> {
        let id = self.object_id();
        let mut state = self.state();
        if state.conversations.len() >= self.bounds.max_conversations {
            return Err(CreateError::ServerFull {
                limit: self.bounds.max_conversations,
            });
        }
        let per_session = self.bounds.max_conversations_per_session;
        let record = state.session(session, self.bounds.max_sessions);
        if record.conversations >= per_session {
            return Err(CreateError::SessionFull { limit: per_session });
        }
        record.conversations += 1;
        let n = self.titles.fetch_add(1, Ordering::Relaxed) + 1;
        let now = SystemTime::now();
        state.conversations.insert(
            id.clone(),
            StoredConversation {
                id: id.clone(),
                session: session.to_string(),
                model: model.to_string(),
                title: format!("Untitled {n}"),
                messages: Vec::new(),
                created_at: now,
                updated_at: now,
                touched: Instant::now(),
            },
        );
        Ok(id)
    }

    fn get(&self, session: &str, id: &str) -> Option<StoredConversation> {
        let mut state = self.state();
        let conversation = state
            .conversations
            .get_mut(id)
            .filter(|c| c.session == session)?;
        conversation.touched = Instant::now();
        Some(conversation.clone())
    }

    fn list(&self, session: &str) -> Vec<ConversationSummary> {
        let state = self.state();
        let mut list: Vec<ConversationSummary> = state
            .conversations
            .values()
            .filter(|c| c.session == session)
            .map(|c| ConversationSummary {
                id: c.id.clone(),
                title: c.title.clone(),
                model: c.model.clone(),
                updated_at: c.updated_at,
            })
            .collect();
        list.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then(b.id.cmp(&a.id)));
        list
    }

    fn set_messages(&self, session: &str, id: &str, mut messages: Vec<StoredMessage>) -> bool {
        cap_history(&mut messages, self.bounds.max_history_bytes);
        let mut state = self.state();
        match state
            .conversations
            .get_mut(id)
            .filter(|c| c.session == session)
        {
            Some(conversation) => {
                conversation.messages = messages;
                conversation.touched = Instant::now();
                conversation.updated_at = SystemTime::now();
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
                conversation.updated_at = SystemTime::now();
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
        if let Some(record) = state.sessions.get_mut(session) {
            record.conversations = record.conversations.saturating_sub(1);
        }
        true
    }

    fn record_generation(&self, session: &str) {
        let mut state = self.state();
        let record = state.session(session, self.bounds.max_sessions);
        record.generations.push_back(Instant::now());
        // Only the last minute counts; keep no more than a generous bound.
        while record.generations.len() > 10_000 {
            record.generations.pop_front();
        }
    }

    fn recent_generations(&self, session: &str, window: Duration) -> (usize, Option<Duration>) {
        let mut state = self.state();
        let Some(record) = state.sessions.get_mut(session) else {
            return (0, None);
        };
        let now = Instant::now();
        let events = &mut record.generations;
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
            if let Some(record) = state.sessions.get_mut(session) {
                record.conversations = record.conversations.saturating_sub(1);
            }
        }
        let minute = Duration::from_secs(60);
        let stale: Vec<String> = state
            .sessions
            .iter_mut()
            .filter_map(|(session, record)| {
                while record
                    .generations
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > minute)
                {
                    record.generations.pop_front();
                }
                let idle = now.duration_since(record.seen_at) > ttl;
                (idle && record.conversations == 0 && record.generations.is_empty())
                    .then(|| session.clone())
            })
            .collect();
        for session in stale {
            state.forget_session(&session);
        }
        expired.len()
    }

    fn conversation_count(&self) -> usize {
        self.state().conversations.len()
    }

    fn session_count(&self) -> usize {
        self.state().sessions.len()
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
    fn the_memory_store_keeps_the_store_contract() {
        crate::store::contract::check(|bounds| Box::new(MemoryStore::new(bounds)));
    }
}
