//! The in-memory store: everything lost on restart; every call is a map operation under one
//! lock, so it never blocks on I/O.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use super::{
    ConversationSummary, CreateError, Store, StoreBounds, StoreError, StoredConversation,
    StoredMessage, Sweep, TurnStart, apply_answer, apply_turn, object_id, rand_u32,
};

/// What the store remembers of a session.
struct SessionRecord {
    ethics_at: Option<SystemTime>,
    generations: VecDeque<Instant>,
    /// Its key in `State::recency`.
    seen: u64,
    seen_at: Instant,
}

/// A session only read (its ethics flag) is marked as seen at most this often, as the
/// SQLite store does (a write per request would be a write per request).
const SEEN_GRANULARITY: Duration = Duration::from_secs(60);

#[derive(Default)]
struct State {
    sessions: HashMap<String, SessionRecord>,
    /// Sessions by when they were last seen (oldest first), for the cap.
    recency: BTreeMap<u64, String>,
    clock: u64,
    conversations: HashMap<String, StoredConversation>,
    /// Conversations per session (sessions may be forgotten; their conversations count on).
    owned: HashMap<String, usize>,
}

impl State {
    /// The session's record, created if needed (forgetting the least recently seen session
    /// at the cap — its record only, never its conversations), and marked as seen now.
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
                self.sessions.remove(&oldest);
            }
            self.sessions.insert(
                session.to_string(),
                SessionRecord {
                    ethics_at: None,
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

    fn conversation(&mut self, session: &str, id: &str) -> Option<&mut StoredConversation> {
        self.conversations
            .get_mut(id)
            .filter(|c| c.session == session)
    }

    fn remove(&mut self, id: &str) {
        if let Some(conversation) = self.conversations.remove(id)
            && let Some(count) = self.owned.get_mut(&conversation.session)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.owned.remove(&conversation.session);
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
    conversations: AtomicUsize,
    sessions: AtomicUsize,
}

impl MemoryStore {
    pub fn new(bounds: StoreBounds) -> Self {
        MemoryStore {
            state: Mutex::new(State::default()),
            bounds,
            counter: AtomicU32::new(rand_u32()),
            titles: AtomicU32::new(0),
            conversations: AtomicUsize::new(0),
            sessions: AtomicUsize::new(0),
        }
    }

    /// Runs `f` on the state, then publishes the counts.
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let value = f(&mut state);
        self.conversations
            .store(state.conversations.len(), Ordering::Relaxed);
        self.sessions.store(state.sessions.len(), Ordering::Relaxed);
        value
    }
}

impl Store for MemoryStore {
    fn blocks(&self) -> bool {
        false
    }

    fn accept_ethics(&self, session: &str) -> Result<(), StoreError> {
        let max = self.bounds.max_sessions;
        self.with(|state| state.session(session, max).ethics_at = Some(SystemTime::now()));
        Ok(())
    }

    fn ethics_accepted(&self, session: &str) -> Result<bool, StoreError> {
        let max = self.bounds.max_sessions;
        Ok(self.with(|state| {
            let Some(record) = state.sessions.get(session) else {
                return false;
            };
            let accepted = record.ethics_at.is_some();
            if accepted && record.seen_at.elapsed() > SEEN_GRANULARITY {
                state.session(session, max);
            }
            accepted
        }))
    }

    fn create(&self, session: &str, model: &str) -> Result<String, CreateError> {
        let id = object_id(&self.counter);
        let bounds = self.bounds;
        let n = self.titles.fetch_add(1, Ordering::Relaxed) + 1;
        self.with(|state| {
            if state.conversations.len() >= bounds.max_conversations {
                return Err(CreateError::ServerFull {
                    limit: bounds.max_conversations,
                });
            }
            let owned = state.owned.get(session).copied().unwrap_or(0);
            if owned >= bounds.max_conversations_per_session {
                return Err(CreateError::SessionFull {
                    limit: bounds.max_conversations_per_session,
                });
            }
            state.session(session, bounds.max_sessions);
            *state.owned.entry(session.to_string()).or_default() += 1;
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
                },
            );
            Ok(id)
        })
    }

    fn get(&self, session: &str, id: &str) -> Result<Option<StoredConversation>, StoreError> {
        Ok(self.with(|state| state.conversation(session, id).map(|c| c.clone())))
    }

    fn list(&self, session: &str) -> Result<Vec<ConversationSummary>, StoreError> {
        let mut list: Vec<ConversationSummary> = self.with(|state| {
            state
                .conversations
                .values()
                .filter(|c| c.session == session)
                .map(|c| ConversationSummary {
                    id: c.id.clone(),
                    title: c.title.clone(),
                    model: c.model.clone(),
                    updated_at: c.updated_at,
                })
                .collect()
        });
        list.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then(b.id.cmp(&a.id)));
        Ok(list)
    }

    fn begin_turn(&self, session: &str, id: &str, turn: &TurnStart) -> Result<bool, StoreError> {
        let max_bytes = self.bounds.max_history_bytes;
        Ok(self.with(|state| match state.conversation(session, id) {
            Some(conversation) => {
                apply_turn(&mut conversation.messages, turn, max_bytes);
                conversation.updated_at = SystemTime::now();
                true
            }
            None => false,
        }))
    }

    fn end_turn(
        &self,
        session: &str,
        id: &str,
        question_id: &str,
        answer: &StoredMessage,
    ) -> Result<bool, StoreError> {
        let max_bytes = self.bounds.max_history_bytes;
        Ok(self.with(|state| match state.conversation(session, id) {
            Some(conversation) => {
                let placed =
                    apply_answer(&mut conversation.messages, question_id, answer, max_bytes);
                if placed {
                    conversation.updated_at = SystemTime::now();
                }
                placed
            }
            None => false,
        }))
    }

    fn set_title(&self, session: &str, id: &str, title: &str) -> Result<bool, StoreError> {
        Ok(self.with(|state| match state.conversation(session, id) {
            Some(conversation) => {
                conversation.title = title.to_string();
                conversation.updated_at = SystemTime::now();
                true
            }
            None => false,
        }))
    }

    fn delete(&self, session: &str, id: &str) -> Result<bool, StoreError> {
        Ok(self.with(|state| {
            if state.conversation(session, id).is_none() {
                return false;
            }
            state.remove(id);
            true
        }))
    }

    fn record_generation(&self, session: &str) -> Result<(), StoreError> {
        let max = self.bounds.max_sessions;
        self.with(|state| {
            let record = state.session(session, max);
            record.generations.push_back(Instant::now());
            // Only the last minute counts; keep no more than a generous bound.
            while record.generations.len() > 10_000 {
                record.generations.pop_front();
            }
        });
        Ok(())
    }

    fn recent_generations(
        &self,
        session: &str,
        window: Duration,
    ) -> Result<(usize, Option<Duration>), StoreError> {
        Ok(self.with(|state| {
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
        }))
    }

    fn sweep(&self, sweep: &Sweep) -> Result<usize, StoreError> {
        let now = SystemTime::now();
        let older = |at: SystemTime, age: Duration| now.duration_since(at).is_ok_and(|d| d >= age);
        Ok(self.with(|state| {
            let expired: Vec<String> = state
                .conversations
                .values()
                .filter(|c| {
                    let retired = sweep.retention.is_some_and(|r| older(c.updated_at, r));
                    let untouched = c.messages.is_empty()
                        && c.updated_at == c.created_at
                        && older(c.updated_at, sweep.untouched);
                    retired || untouched
                })
                .map(|c| c.id.clone())
                .collect();
            for id in &expired {
                state.remove(id);
            }
            let minute = Duration::from_secs(60);
            let instant = Instant::now();
            for record in state.sessions.values_mut() {
                while record
                    .generations
                    .front()
                    .is_some_and(|t| instant.duration_since(*t) > minute)
                {
                    record.generations.pop_front();
                }
            }
            expired.len()
        }))
    }

    fn conversation_count(&self) -> usize {
        self.conversations.load(Ordering::Relaxed)
    }

    fn session_count(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    fn owner_of(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(self.with(|state| state.conversations.get(id).map(|c| c.session.clone())))
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
