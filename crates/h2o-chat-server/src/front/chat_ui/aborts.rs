//! Aborting a conversation's running generation (`POST /conversation/{id}/stop-generating`),
//! as chat-ui's `abortedGenerations` did: the generate stream of that conversation ends, and
//! what it had generated is stored as the answer. ("Stop" is kept for stop sequences.)
//!
//! An entry lives exactly as long as its generation (the [`AbortGuard`] removes it), so the
//! map holds at most as many entries as generations can run at once.
//!
//! ```
//! use h2o_chat_server::front::chat_ui::aborts::Aborts;
//!
//! let aborts = Aborts::default();
//! let guard = aborts.register("64f1c0d2e4b0a1b2c3d4e5f6");
//! assert!(aborts.abort("64f1c0d2e4b0a1b2c3d4e5f6"));
//! assert!(guard.is_aborted());
//! drop(guard);
//! assert!(!aborts.abort("64f1c0d2e4b0a1b2c3d4e5f6"), "nothing runs any more");
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

/// The running generations of conversations, by conversation id.
#[derive(Default)]
pub struct Aborts {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    running: Mutex<HashMap<String, (u64, CancellationToken)>>,
    next: AtomicU64,
}

impl Inner {
    fn running(&self) -> MutexGuard<'_, HashMap<String, (u64, CancellationToken)>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Aborts {
    /// Registers the generation now starting for `conversation`. A generation still
    /// registered for it (a second tab, a retry) is aborted: one answer per conversation
    /// at a time, as its stored history can only take one.
    pub fn register(&self, conversation: &str) -> AbortGuard {
        let generation = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let previous = self
            .inner
            .running()
            .insert(conversation.to_string(), (generation, token.clone()));
        if let Some((_, previous)) = previous {
            previous.cancel();
        }
        AbortGuard {
            inner: self.inner.clone(),
            conversation: conversation.to_string(),
            generation,
            token,
        }
    }

    /// Aborts the conversation's running generation; false when none runs.
    pub fn abort(&self, conversation: &str) -> bool {
        match self.inner.running().get(conversation) {
            Some((_, token)) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// Generations registered now.
    pub fn len(&self) -> usize {
        self.inner.running().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A registered generation; unregisters it when dropped.
pub struct AbortGuard {
    inner: Arc<Inner>,
    conversation: String,
    generation: u64,
    token: CancellationToken,
}

impl AbortGuard {
    /// Cancelled when the generation is asked to abort.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    pub fn is_aborted(&self) -> bool {
        self.token.is_cancelled()
    }
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        let mut running = self.inner.running();
        // Only this generation's entry: a newer one may have replaced it.
        if running
            .get(&self.conversation)
            .is_some_and(|(generation, _)| *generation == self.generation)
        {
            running.remove(&self.conversation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_generation_aborts_the_previous_one_and_outlives_its_guard() {
        let aborts = Aborts::default();
        let first = aborts.register("c");
        let second = aborts.register("c");
        assert!(first.is_aborted());
        assert!(!second.is_aborted());
        drop(first);
        assert_eq!(aborts.len(), 1, "the newer entry stays");
        assert!(aborts.abort("c"));
        assert!(second.is_aborted());
        drop(second);
        assert!(aborts.is_empty());
    }
}
