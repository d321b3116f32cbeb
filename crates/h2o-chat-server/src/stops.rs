//! Stopping a conversation's running generation (`POST /conversation/{id}/stop-generating`),
//! as chat-ui's `abortedGenerations` did: the generate stream of that conversation ends, and
//! what it had generated is stored as the answer.
//!
//! An entry lives exactly as long as its generation (the [`StopGuard`] removes it), so the
//! map holds at most as many entries as generations can run at once.
//!
//! ```
//! use h2o_chat_server::stops::Stops;
//!
//! let stops = Stops::default();
//! let guard = stops.register("64f1c0d2e4b0a1b2c3d4e5f6");
//! assert!(stops.stop("64f1c0d2e4b0a1b2c3d4e5f6"));
//! assert!(guard.is_stopped());
//! drop(guard);
//! assert!(!stops.stop("64f1c0d2e4b0a1b2c3d4e5f6"), "nothing runs any more");
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

/// The running generations of conversations, by conversation id.
#[derive(Default)]
pub struct Stops {
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

impl Stops {
    /// Registers the generation now starting for `conversation`. A generation still
    /// registered for it (a second tab, a retry) is stopped: one answer per conversation
    /// at a time, as its stored history can only take one.
    pub fn register(&self, conversation: &str) -> StopGuard {
        let generation = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let previous = self
            .inner
            .running()
            .insert(conversation.to_string(), (generation, token.clone()));
        if let Some((_, previous)) = previous {
            previous.cancel();
        }
        StopGuard {
            inner: self.inner.clone(),
            conversation: conversation.to_string(),
            generation,
            token,
        }
    }

    /// Stops the conversation's running generation; false when none runs.
    pub fn stop(&self, conversation: &str) -> bool {
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
pub struct StopGuard {
    inner: Arc<Inner>,
    conversation: String,
    generation: u64,
    token: CancellationToken,
}

impl StopGuard {
    /// Resolves when the generation is asked to stop.
    pub async fn stopped(&self) {
        self.token.cancelled().await;
    }

    pub fn is_stopped(&self) -> bool {
        self.token.is_cancelled()
    }
}

impl Drop for StopGuard {
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
    fn a_new_generation_stops_the_previous_one_and_outlives_its_guard() {
        let stops = Stops::default();
        let first = stops.register("c");
        let second = stops.register("c");
        assert!(first.is_stopped());
        assert!(!second.is_stopped());
        drop(first);
        assert_eq!(stops.len(), 1, "the newer entry stays");
        assert!(stops.stop("c"));
        assert!(second.is_stopped());
        drop(second);
        assert!(stops.is_empty());
    }
}
