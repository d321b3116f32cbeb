//! What one decode step holds: the scheduler's rules as a pure function of the slots'
//! states, so they can be read and tested apart from llama.cpp.
//!
//! - Every generating slot's next token, in slot order — unless the step is a newcomer's
//!   alone (*prefill first*): when the oldest prompts still being evaluated can be finished
//!   within one prefill chunk, the step is theirs, so a newcomer's first token does not also
//!   wait for every running stream's next one (on a CPU a step costs what its tokens cost).
//!   Never two such steps in a row: a running stream loses at most every other step.
//! - Then prompt chunks, oldest request first: within `prefill_chunk` tokens while others
//!   generate (a long prompt never stalls the running streams), or the whole batch when
//!   nothing else runs.

/// What a slot offers the next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotState {
    /// Generating, its next token ready and its reader keeping up.
    pub decode: bool,
    /// Prompt tokens still to evaluate (0: none).
    pub prefill: usize,
    /// Admission order (older first), for prompts.
    pub order: u64,
}

/// The step's content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StepChoice {
    /// Slots whose next token is decoded.
    pub decode: Vec<usize>,
    /// Slots and how many of their prompt tokens are evaluated, in order.
    pub prefill: Vec<(usize, usize)>,
    /// The step is the newcomers' alone.
    pub prefill_first: bool,
}

/// Chooses a step for `slots`. `skipped_decodes`: the previous step was prefill-first.
pub(crate) fn choose(
    slots: &[SlotState],
    skipped_decodes: bool,
    batch: usize,
    prefill_chunk: usize,
) -> StepChoice {
    let mut prefilling: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].prefill > 0).collect();
    prefilling.sort_by_key(|&i| slots[i].order);
    let wanting: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].decode).collect();
    let chunk = prefill_chunk.min(batch);
    let prefill_first =
        !wanting.is_empty() && !skipped_decodes && finishes_a_prompt(slots, &prefilling, chunk);
    let decode: Vec<usize> = if prefill_first {
        Vec::new()
    } else {
        wanting.iter().copied().take(batch).collect()
    };
    let mut budget = if wanting.is_empty() {
        batch
    } else {
        prefill_chunk
    }
    .min(batch.saturating_sub(decode.len()));
    let mut prefill = Vec::new();
    for index in prefilling {
        if budget == 0 {
            break;
        }
        let count = slots[index].prefill.min(budget);
        budget -= count;
        prefill.push((index, count));
    }
    StepChoice {
        decode,
        prefill,
        prefill_first,
    }
}

/// Whether `chunk` prompt tokens, given in arrival order, finish some prompt.
fn finishes_a_prompt(slots: &[SlotState], prefilling: &[usize], chunk: usize) -> bool {
    let mut budget = chunk;
    for &index in prefilling {
        let remaining = slots[index].prefill;
        if remaining <= budget {
            return true;
        }
        budget = budget.saturating_sub(remaining);
        if budget == 0 {
            return false;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generating() -> SlotState {
        SlotState {
            decode: true,
            prefill: 0,
            order: 0,
        }
    }

    fn prompt(tokens: usize, order: u64) -> SlotState {
        SlotState {
            decode: false,
            prefill: tokens,
            order,
        }
    }

    const IDLE: SlotState = SlotState {
        decode: false,
        prefill: 0,
        order: 0,
    };

    #[test]
    fn alone_a_prompt_takes_the_whole_batch() {
        let step = choose(&[prompt(700, 1), IDLE], false, 512, 128);
        assert_eq!(step.prefill, vec![(0, 512)]);
        assert!(step.decode.is_empty() && !step.prefill_first);
    }

    #[test]
    fn beside_running_streams_a_long_prompt_gets_one_chunk_after_their_tokens() {
        let slots = [generating(), prompt(700, 1), generating()];
        let step = choose(&slots, false, 512, 128);
        assert_eq!(step.decode, vec![0, 2]);
        assert_eq!(step.prefill, vec![(1, 128)]);
        assert!(!step.prefill_first, "700 tokens do not finish in one chunk");
    }

    #[test]
    fn a_newcomer_that_fits_one_chunk_gets_the_step_alone_but_never_twice_in_a_row() {
        let slots = [generating(), prompt(20, 1), generating()];
        let first = choose(&slots, false, 512, 128);
        assert!(first.prefill_first);
        assert!(first.decode.is_empty(), "the running streams wait one step");
        assert_eq!(first.prefill, vec![(1, 20)]);
        let second = choose(&slots, true, 512, 128);
        assert!(!second.prefill_first);
        assert_eq!(second.decode, vec![0, 2]);
    }

    #[test]
    fn prompts_are_served_oldest_first_within_the_chunk() {
        let slots = [generating(), prompt(100, 7), prompt(100, 3)];
        let step = choose(&slots, true, 512, 128);
        assert_eq!(step.prefill, vec![(2, 100), (1, 28)]);
        // Only the older prompt can finish within one chunk: that makes a newcomer step.
        assert!(choose(&slots, false, 512, 128).prefill_first);
    }

    #[test]
    fn the_batch_bounds_everything() {
        let slots = [generating(); 20];
        let step = choose(&slots, false, 16, 128);
        assert_eq!(step.decode.len(), 16);
        let mut crowded = vec![generating(); 15];
        crowded.push(prompt(50, 1));
        let step = choose(&crowded, true, 16, 128);
        assert_eq!(step.decode.len(), 15);
        assert_eq!(step.prefill, vec![(15, 1)], "what is left of the batch");
    }

    #[test]
    fn nothing_to_do_is_an_empty_step() {
        assert_eq!(
            choose(&[IDLE, IDLE], false, 512, 128),
            StepChoice::default()
        );
    }
}
