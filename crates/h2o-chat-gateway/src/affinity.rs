//! Affinity: requests with the same hint (a chat-ui conversation id, an OpenAI `user`) go to
//! the upstream that served the last one, whose prompt cache holds their prefix. Bounded:
//! the least recently used hint is forgotten beyond the cap.

use std::collections::HashMap;

/// Hints remembered for affinity; the least recently used is forgotten beyond.
const AFFINITY_CAP: usize = 10_000;
/// Hint → upstream, least recently used forgotten first.
#[derive(Default)]
pub(crate) struct Affinity {
    clock: u64,
    map: HashMap<String, (usize, u64)>,
}

impl Affinity {
    pub(crate) fn get(&mut self, hint: &str) -> Option<usize> {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.map.get_mut(hint)?;
        entry.1 = clock;
        Some(entry.0)
    }

    pub(crate) fn set(&mut self, hint: &str, upstream: usize) {
        self.clock += 1;
        if !self.map.contains_key(hint)
            && self.map.len() >= AFFINITY_CAP
            && let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
        {
            self.map.remove(&oldest);
        }
        self.map.insert(hint.to_string(), (upstream, self.clock));
    }
}
