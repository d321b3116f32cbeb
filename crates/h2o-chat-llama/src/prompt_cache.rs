//! Which slot a new request goes to: the one whose cached tokens share the longest prefix
//! with its prompt (so only the new suffix is evaluated), else the least recently used.
//! Only a cache of the request's own [`CacheScope`] is reused: another scope's cache is
//! evicted like an empty one would be, never read.
//!
//! A pure function of the slots' state, so the policy is tested without a model.
//!
//! ```text
//! slot 0: [A B C D E]   last used 7      new prompt: [A B C D X Y]
//! slot 1: [A B]         last used 3      → slot 0 (4 tokens reused)
//! slot 2: []            last used 0
//! ```

use h2o_chat_engine::CacheScope;

/// What the policy needs to know of a free slot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FreeSlot<'a, T> {
    pub index: usize,
    /// The tokens whose K/V the slot holds, from position 0.
    pub cache: &'a [T],
    /// The conversation it served last, if known.
    pub hint: Option<&'a str>,
    /// Whose prompt its cache holds.
    pub scope: &'a CacheScope,
    /// A step counter: lower is older.
    pub last_used: u64,
}

/// Where a request goes and how much of its prompt is already evaluated there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placement {
    pub index: usize,
    /// Prompt tokens reused from the slot's cache. Always less than the prompt's length:
    /// the last prompt token is evaluated again, because its logits choose the first token.
    pub reused: usize,
}

/// Below this many shared tokens a cache is not worth taking over: the chat template's
/// first markers are shared by every prompt, and taking a slot for them would evict a
/// conversation that is worth more.
pub(crate) const MIN_REUSE: usize = 16;

/// Length of the common prefix of two token lists.
pub(crate) fn common_prefix<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Chooses a free slot for `prompt` (non-empty) of `scope`. `reuse`: whether cached
/// prefixes may be used at all (the prompt cache can be turned off).
pub(crate) fn place<T: PartialEq>(
    free: &[FreeSlot<'_, T>],
    prompt: &[T],
    hint: Option<&str>,
    scope: &CacheScope,
    reuse: bool,
) -> Option<Placement> {
    let usable = |slot: &FreeSlot<'_, T>| {
        if slot.scope != scope {
            return 0;
        }
        common_prefix(slot.cache, prompt).min(prompt.len() - 1)
    };
    if reuse {
        // The longest shared prefix; among equals, the conversation's own slot, then the
        // most recently used (its neighbours in time are likelier to come back).
        let best = free
            .iter()
            .map(|slot| (usable(slot), slot))
            .filter(|(shared, _)| *shared >= MIN_REUSE.min(prompt.len() - 1) && *shared > 0)
            .max_by_key(|(shared, slot)| {
                (*shared, hint.is_some() && slot.hint == hint, slot.last_used)
            });
        if let Some((reused, slot)) = best {
            return Some(Placement {
                index: slot.index,
                reused,
            });
        }
    }
    // Nothing worth reusing: evict the least recently used cache (an empty one first, then
    // the lowest index, which keeps busy slots together).
    let slot = free
        .iter()
        .min_by_key(|slot| (!slot.cache.is_empty(), slot.last_used, slot.index))?;
    // A short prefix that happens to match is still valid K/V: keep it.
    Some(Placement {
        index: slot.index,
        reused: if reuse { usable(slot) } else { 0 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    static ANONYMOUS: CacheScope = CacheScope::anonymous();

    fn slot(index: usize, cache: &[u32], last_used: u64) -> FreeSlot<'_, u32> {
        FreeSlot {
            index,
            cache,
            hint: None,
            scope: &ANONYMOUS,
            last_used,
        }
    }

    fn tokens(n: u32) -> Vec<u32> {
        (0..n).collect()
    }

    #[test]
    fn the_longest_shared_prefix_wins() {
        let long = tokens(40);
        let short = tokens(20);
        let mut prompt = tokens(30);
        prompt.push(999);
        let free = [slot(0, &short, 9), slot(1, &long, 1)];
        assert_eq!(
            place(&free, &prompt, None, &ANONYMOUS, true),
            Some(Placement {
                index: 1,
                reused: 30
            })
        );
    }

    #[test]
    fn a_whole_prompt_in_cache_still_evaluates_its_last_token() {
        let cache = tokens(40);
        let prompt = tokens(40);
        let placement = place(&[slot(0, &cache, 0)], &prompt, None, &ANONYMOUS, true).unwrap();
        assert_eq!(placement.reused, 39);
    }

    #[test]
    fn a_tiny_shared_prefix_does_not_evict_a_conversation() {
        let conversation = tokens(200);
        let other: Vec<u32> = [0, 1, 2].into_iter().chain(500..520).collect();
        let empty: Vec<u32> = Vec::new();
        let free = [slot(0, &conversation, 5), slot(1, &empty, 9)];
        assert_eq!(
            place(&free, &other, None, &ANONYMOUS, true),
            Some(Placement {
                index: 1,
                reused: 0
            })
        );
    }

    #[test]
    fn without_reuse_the_least_recently_used_slot_is_evicted() {
        let a = tokens(50);
        let b = tokens(60);
        let prompt = tokens(50);
        let free = [slot(0, &a, 7), slot(1, &b, 2)];
        assert_eq!(
            place(&free, &prompt, None, &ANONYMOUS, false),
            Some(Placement {
                index: 1,
                reused: 0
            })
        );
    }

    #[test]
    fn the_conversation_hint_breaks_ties() {
        let a = tokens(50);
        let b = tokens(50);
        let prompt = tokens(60);
        let free = [
            FreeSlot {
                index: 0,
                cache: &a,
                hint: Some("x"),
                scope: &ANONYMOUS,
                last_used: 1,
            },
            FreeSlot {
                index: 1,
                cache: &b,
                hint: Some("y"),
                scope: &ANONYMOUS,
                last_used: 9,
            },
        ];
        assert_eq!(
            place(&free, &prompt, Some("x"), &ANONYMOUS, true)
                .unwrap()
                .index,
            0
        );
    }

    #[test]
    fn another_scopes_cache_is_never_reused_even_in_part() {
        let secret = tokens(100);
        let prompt = tokens(100);
        let owner = CacheScope::of("user", "a");
        let other = CacheScope::of("user", "b");
        let free = [FreeSlot {
            index: 0,
            cache: &secret,
            hint: None,
            scope: &owner,
            last_used: 3,
        }];
        assert_eq!(
            place(&free, &prompt, None, &other, true),
            Some(Placement {
                index: 0,
                reused: 0
            })
        );
        assert_eq!(
            place(&free, &prompt, None, &owner, true).unwrap().reused,
            99
        );
        assert_eq!(
            place(&free, &prompt, None, &ANONYMOUS, true)
                .unwrap()
                .reused,
            0
        );
    }

    #[test]
    fn no_free_slot_no_placement() {
        let prompt = tokens(3);
        assert_eq!(place::<u32>(&[], &prompt, None, &ANONYMOUS, true), None);
    }
}
