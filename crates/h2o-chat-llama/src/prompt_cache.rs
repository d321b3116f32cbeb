//! Which slot a new request goes to, weighing the prompt tokens a cached prefix saves now
//! against the conversation a taken slot loses (its tokens past the shared prefix):
//!
//! 1. A slot sharing at least [`MIN_REUSE`] tokens with the prompt (all but its last token,
//!    for a shorter prompt), the one sharing the most — so only the new suffix is evaluated —
//!    as long as it loses no more than it saves, or no slot is empty. A conversation's next
//!    turn finds its own slot and loses nothing; a new chat that shares only a long system
//!    message with another conversation does not evict it while an empty slot is free.
//! 2. Else an empty slot: nothing is lost.
//! 3. Else every free slot holds a conversation and one is lost whichever is taken: the one
//!    sharing the most, if that saves at least a tenth of the prompt ([`MIN_REUSE_SHARE`];
//!    llama.cpp's server takes a slot sharing more than a tenth), else the least recently
//!    used, keeping what it happens to share.
//!
//! Among slots sharing equally, the conversation's own slot, then the least recently used:
//! each keeps only the shared part, so the one lost is the one least likely to come back.
//! Only a cache of the request's own [`CacheScope`] is reused: another scope's cache counts
//! as a conversation sharing nothing, never read.
//!
//! A pure function of the slots' state, so the policy is tested without a model.
//!
//! ```text
//! slot 0: [S…S A B]     last used 7      new prompt: [S…S A B C D]   (S…S: 20 tokens)
//! slot 1: [S…S X Y Z]   last used 3      → slot 0 (22 tokens reused, nothing lost)
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

/// When a conversation is lost whichever slot is taken, the share of the prompt a cached
/// prefix must save for its slot to be taken rather than the least recently used one.
pub(crate) const MIN_REUSE_SHARE: f64 = 0.1;

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
    let last = prompt.len().saturating_sub(1);
    let usable = |slot: &FreeSlot<'_, T>| {
        if !reuse || slot.scope != scope {
            return 0;
        }
        common_prefix(slot.cache, prompt).min(last)
    };
    let empty = free
        .iter()
        .filter(|slot| slot.cache.is_empty())
        .min_by_key(|slot| slot.index);
    // The most shared tokens among the slots `takes` allows; among equals the
    // conversation's own slot, then the least recently used, then the lowest index (which
    // keeps busy slots together).
    let best = |takes: &dyn Fn(usize, &FreeSlot<'_, T>) -> bool| {
        free.iter()
            .map(|slot| (usable(slot), slot))
            .filter(|(shared, slot)| *shared > 0 && takes(*shared, slot))
            .max_by_key(|(shared, slot)| {
                (
                    *shared,
                    hint.is_some() && slot.hint == hint,
                    std::cmp::Reverse((slot.last_used, slot.index)),
                )
            })
            .map(|(reused, slot)| Placement {
                index: slot.index,
                reused,
            })
    };
    let worth = MIN_REUSE.min(last);
    let loses_no_more_than_it_saves =
        |shared: usize, slot: &FreeSlot<'_, T>| slot.cache.len().saturating_sub(shared) <= shared;
    if let Some(placement) = best(&|shared, slot| {
        shared >= worth && (empty.is_none() || loses_no_more_than_it_saves(shared, slot))
    }) {
        return Some(placement);
    }
    if let Some(empty) = empty {
        return Some(Placement {
            index: empty.index,
            reused: 0,
        });
    }
    // Every free slot holds a conversation: one is lost either way.
    let share = (prompt.len() as f64 * MIN_REUSE_SHARE).ceil() as usize;
    if let Some(placement) = best(&|shared, _| shared >= share) {
        return Some(placement);
    }
    let slot = free
        .iter()
        .min_by_key(|slot| (slot.last_used, slot.index))?;
    Some(Placement {
        index: slot.index,
        reused: usable(slot),
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

    /// `shared` tokens of `prompt`, then tokens of a conversation of its own.
    fn sharing(prompt: &[u32], shared: usize, tag: u32) -> Vec<u32> {
        let mut cache = prompt[..shared].to_vec();
        cache.extend((0..100).map(|i| 10_000 * tag + i));
        cache
    }

    #[test]
    fn among_equal_shares_the_least_recently_used_conversation_is_lost() {
        let prompt = tokens(60);
        let recent = sharing(&prompt, 20, 1);
        let old = sharing(&prompt, 20, 2);
        let free = [slot(0, &recent, 9), slot(1, &old, 1)];
        assert_eq!(
            place(&free, &prompt, None, &ANONYMOUS, true),
            Some(Placement {
                index: 1,
                reused: 20
            })
        );
    }

    #[test]
    fn when_a_conversation_is_lost_anyway_a_tenth_of_the_prompt_saved_decides() {
        // Every slot is full: the shared system message (14 of 110 tokens) is worth more
        // than which conversation goes.
        let prompt = tokens(110);
        let oldest = sharing(&prompt, 3, 1);
        let system = sharing(&prompt, 14, 2);
        let free = [slot(0, &oldest, 1), slot(1, &system, 5)];
        assert_eq!(
            place(&free, &prompt, None, &ANONYMOUS, true),
            Some(Placement {
                index: 1,
                reused: 14
            })
        );
        // Under a tenth (10 of 110), the least recently used goes, keeping what it shares.
        let markers = sharing(&prompt, 10, 3);
        let free = [slot(0, &oldest, 1), slot(1, &markers, 5)];
        assert_eq!(
            place(&free, &prompt, None, &ANONYMOUS, true),
            Some(Placement {
                index: 0,
                reused: 3
            })
        );
        // With an empty slot, nobody's conversation is lost for 14 tokens.
        let empty: Vec<u32> = Vec::new();
        let free = [slot(0, &oldest, 1), slot(1, &system, 5), slot(2, &empty, 0)];
        assert_eq!(
            place(&free, &prompt, None, &ANONYMOUS, true),
            Some(Placement {
                index: 2,
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
        for (hint, index) in [("x", 0), ("y", 1)] {
            assert_eq!(
                place(&free, &prompt, Some(hint), &ANONYMOUS, true)
                    .unwrap()
                    .index,
                index,
                "{hint}"
            );
        }
    }

    #[test]
    fn a_new_chat_sharing_only_a_system_message_does_not_evict_a_conversation_while_a_slot_is_empty()
     {
        let mut prompt = tokens(20); // the system message
        prompt.extend(300..330);
        let conversation = sharing(&prompt, 20, 1); // 20 shared, 100 of its own
        let empty: Vec<u32> = Vec::new();
        let free = [slot(0, &conversation, 5), slot(1, &empty, 0)];
        assert_eq!(
            place(&free, &prompt, None, &ANONYMOUS, true),
            Some(Placement {
                index: 1,
                reused: 0
            })
        );
        // With no empty slot a conversation is lost either way: the system message is reused.
        assert_eq!(
            place(&free[..1], &prompt, None, &ANONYMOUS, true),
            Some(Placement {
                index: 0,
                reused: 20
            })
        );
    }

    #[test]
    fn a_conversations_next_turn_takes_its_own_slot_even_beside_an_empty_one() {
        let prompt = tokens(60);
        let own = tokens(40);
        let empty: Vec<u32> = Vec::new();
        let free = [slot(0, &empty, 0), slot(1, &own, 5)];
        assert_eq!(
            place(&free, &prompt, None, &ANONYMOUS, true),
            Some(Placement {
                index: 1,
                reused: 40
            })
        );
        // Without the prompt cache, the empty slot.
        assert_eq!(
            place(&free, &prompt, None, &ANONYMOUS, false),
            Some(Placement {
                index: 0,
                reused: 0
            })
        );
    }

    #[test]
    fn another_scopes_conversation_is_not_evicted_while_a_slot_is_empty() {
        let theirs = tokens(100);
        let prompt = tokens(100);
        let empty: Vec<u32> = Vec::new();
        let other = CacheScope::of("user", "b");
        let free = [
            FreeSlot {
                index: 0,
                cache: &theirs,
                hint: None,
                scope: &other,
                last_used: 0,
            },
            slot(1, &empty, 9),
        ];
        assert_eq!(
            place(&free, &prompt, None, &ANONYMOUS, true),
            Some(Placement {
                index: 1,
                reused: 0
            })
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
