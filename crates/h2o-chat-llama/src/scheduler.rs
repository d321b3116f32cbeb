//! One inference thread, many sequences, one batch per step (continuous batching).
//!
//! The thread owns the llama.cpp context; each slot is one of its sequences (`seq_id`) with
//! its own KV cache. Every step:
//!
//! 1. takes new requests (blocking only when there is nothing to do);
//! 2. frees the slots whose readers left, resumes or gives up paused ones;
//! 3. places waiting requests on free slots, reusing the longest cached prefix
//!    ([`crate::prompt_cache`]) — the next turn of a chat evaluates only its new tokens;
//! 4. builds one batch: the next token of every generating slot, then chunks of prompts
//!    still being evaluated, within `prefill_chunk` tokens while others generate (so a long
//!    prompt never stalls the running streams) or the whole `n_batch` when nothing else runs.
//!    When a newcomer's prompt can be finished in this step, the step is that prompt's alone
//!    (TGI's prefill-first habit): on a CPU a step costs what its tokens cost, so the
//!    newcomer's first token does not also wait for every running slot's next one. Never two
//!    such steps in a row, so the running streams lose at most every other step;
//! 5. decodes it, and samples each slot whose logits came out.
//!
//! Requests join at the next step and leave the moment they end. Requests beyond the slots
//! wait in a bounded queue; beyond it they are refused (`overloaded`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use h2o_chat_engine::{
    CacheScope, EngineStats, GenerationEvent, GenerationFailure, GenerationRequest, Health,
};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc::Sender;

use crate::config::LlamaConfig;
use crate::prompt_cache::{FreeSlot, place};
use crate::sequence::{Constrained, Progress, Sequence};
use crate::sizing::context_positions;
use crate::step::{self, SlotState};

/// How long the thread waits for work while every running sequence is paused.
const PAUSED_POLL: Duration = Duration::from_millis(5);

/// A request on its way to a slot.
pub(crate) struct Job {
    pub request: GenerationRequest,
    /// The prompt, tokenised and truncated.
    pub tokens: Vec<LlamaToken>,
    pub events: Sender<GenerationEvent>,
    /// The request's constraint, compiled, and how its calls are read.
    pub constrained: Constrained,
}

/// What the engine's callers can see of the thread: health and counters.
pub(crate) struct Shared {
    slots: usize,
    failed: Mutex<Option<String>>,
    queued: AtomicUsize,
    busy: AtomicUsize,
    prompt_tokens_evaluated: AtomicU64,
    prompt_tokens_cached: AtomicU64,
    generated_tokens: AtomicU64,
    batches: AtomicU64,
    prefill_first_steps: AtomicU64,
}

impl Shared {
    pub fn new(slots: usize) -> Self {
        Shared {
            slots,
            failed: Mutex::new(None),
            queued: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            prompt_tokens_evaluated: AtomicU64::new(0),
            prompt_tokens_cached: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            prefill_first_steps: AtomicU64::new(0),
        }
    }

    pub fn health(&self) -> Health {
        match &*self.failed.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(reason) => Health::Failed(reason.clone()),
            None => Health::Ready,
        }
    }

    fn fail(&self, reason: String) {
        *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            slots: self.slots,
            busy_slots: self.busy.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            prompt_tokens_evaluated: self.prompt_tokens_evaluated.load(Ordering::Relaxed),
            prompt_tokens_cached: self.prompt_tokens_cached.load(Ordering::Relaxed),
            generated_tokens: self.generated_tokens.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            prefill_first_steps: self.prefill_first_steps.load(Ordering::Relaxed),
        }
    }

    /// Counts a request in the queue, unless `limit` are already waiting.
    pub fn try_enqueue(&self, limit: usize) -> bool {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit.max(1)).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn dequeued(&self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A sequence of the context and what its KV cache holds.
struct Slot {
    seq: i32,
    /// The tokens whose K/V are in this sequence, at positions `0..cache.len()`.
    cache: Vec<LlamaToken>,
    hint: Option<String>,
    /// Whose prompt `cache` holds.
    scope: CacheScope,
    last_used: u64,
    active: Option<Sequence>,
}

/// What a token in the batch is for.
enum Entry {
    /// The next token of a generating slot; its logits are at `index`.
    Decode { slot: usize, index: i32 },
    /// `count` prompt tokens of a slot; the logits of the last are at `index` when it is
    /// the prompt's last token. When the prompt is scored, every token of the chunk has its
    /// logits, from `first` on.
    Prefill {
        slot: usize,
        count: usize,
        index: Option<i32>,
        first: i32,
    },
}

/// Prompt tokens of a scored prompt (`decoder_input_details`) evaluated in one step.
const SCORED_PER_STEP: usize = 32;

pub(crate) struct Scheduler<'m> {
    model: &'m LlamaModel,
    context: LlamaContext<'m>,
    config: LlamaConfig,
    slots: Vec<Slot>,
    waiting: VecDeque<(Job, Instant)>,
    jobs: Receiver<Job>,
    shared: Arc<Shared>,
    n_vocab: usize,
    step: u64,
    /// The last step left the generating slots out to finish a newcomer's prompt.
    skipped_decodes: bool,
    /// The engine is gone: finish what runs, then end.
    closing: bool,
    /// When the thread started (requests' arrival order is measured from it).
    started: Instant,
}

impl<'m> Scheduler<'m> {
    /// The thread's body: creates the context (reporting success on `ready`), then runs
    /// steps until the engine is dropped and the last sequence ends.
    pub fn run(
        model: Arc<LlamaModel>,
        backend: &'static LlamaBackend,
        config: LlamaConfig,
        jobs: Receiver<Job>,
        shared: Arc<Shared>,
        ready: SyncSender<Result<(), String>>,
    ) {
        let threads = i32::try_from(config.threads).unwrap_or(1);
        let batch = u32::try_from(config.batch).unwrap_or(512);
        let seqs = u32::try_from(config.slots).unwrap_or(1);
        let params = LlamaContextParams::default()
            .with_n_ctx(context_positions(config.slots, config.context_per_slot))
            .with_n_batch(batch)
            .with_n_ubatch(batch)
            .with_n_seq_max(seqs)
            .with_kv_unified(config.kv_unified)
            .with_type_k(config.kv_cache.llama_type())
            .with_type_v(config.kv_cache.llama_type())
            // llama.cpp's LLAMA_FLASH_ATTN_TYPE_ENABLED / _DISABLED.
            .with_flash_attention_policy(i32::from(
                config.kv_cache.flash_attention() || config.fast,
            ))
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let context = match model.new_context(backend, params) {
            Ok(context) => context,
            Err(err) => {
                let reason = format!("cannot create the llama.cpp context: {err}");
                shared.fail(reason.clone());
                let _ = ready.send(Err(reason));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let mut scheduler = Scheduler {
            model: &model,
            context,
            slots: (0..config.slots)
                .map(|seq| Slot {
                    seq: seq as i32,
                    cache: Vec::new(),
                    hint: None,
                    scope: CacheScope::anonymous(),
                    last_used: 0,
                    active: None,
                })
                .collect(),
            config,
            waiting: VecDeque::new(),
            jobs,
            shared: shared.clone(),
            n_vocab: usize::try_from(model.n_vocab()).unwrap_or(0),
            step: 0,
            skipped_decodes: false,
            closing: false,
            started: Instant::now(),
        };
        let mut batch = LlamaBatch::new(scheduler.config.batch, 1);
        let mut entries = Vec::new();
        while scheduler.intake() {
            scheduler.tend();
            scheduler.admit();
            scheduler.fill(&mut batch, &mut entries);
            if entries.is_empty() {
                continue;
            }
            scheduler.decode(&mut batch, &entries);
        }
        tracing::debug!("scheduler stopped");
    }

    fn running(&self) -> usize {
        self.slots.iter().filter(|s| s.active.is_some()).count()
    }

    /// Takes new requests. Blocks when there is nothing to do; returns `false` when the
    /// engine is gone and nothing is left.
    fn intake(&mut self) -> bool {
        let idle = self.running() == 0 && self.waiting.is_empty();
        let free = self.slots.iter().any(|s| s.active.is_none());
        let progressing = self
            .slots
            .iter()
            .filter_map(|s| s.active.as_ref())
            .any(|s| !s.is_paused())
            || (free && !self.waiting.is_empty());
        if idle {
            if self.closing {
                return false;
            }
            match self.jobs.recv() {
                Ok(job) => self.waiting.push_back((job, Instant::now())),
                Err(_) => return false,
            }
        } else if !progressing {
            // Every running reader is behind and nothing can be placed: wait a little for
            // them (or for new work) instead of spinning.
            match self.jobs.recv_timeout(PAUSED_POLL) {
                Ok(job) => self.waiting.push_back((job, Instant::now())),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.closing = true,
            }
        }
        loop {
            match self.jobs.try_recv() {
                Ok(job) => self.waiting.push_back((job, Instant::now())),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => {
                    self.closing = true;
                    return true;
                }
            }
        }
    }

    /// Frees the slots whose readers left; resumes or gives up paused sequences.
    fn tend(&mut self) {
        let now = Instant::now();
        let stall_timeout = self.config.stall_timeout;
        for index in 0..self.slots.len() {
            let Some(sequence) = self.slots[index].active.as_mut() else {
                continue;
            };
            let progress = if sequence.reader_left() {
                Progress::Ended(Vec::new())
            } else if sequence.is_paused() {
                sequence.resume(stall_timeout, now)
            } else {
                Progress::Continue
            };
            if let Progress::Ended(last) = progress {
                self.end(index, last);
            }
        }
    }

    /// Places waiting requests on free slots.
    fn admit(&mut self) {
        while !self.waiting.is_empty() {
            let free: Vec<FreeSlot<'_, LlamaToken>> = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.active.is_none())
                .map(|(index, s)| FreeSlot {
                    index,
                    cache: &s.cache,
                    hint: s.hint.as_deref(),
                    scope: &s.scope,
                    last_used: s.last_used,
                })
                .collect();
            if free.is_empty() {
                return;
            }
            let Some((job, arrived)) = self.waiting.pop_front() else {
                return;
            };
            self.shared.dequeued();
            if job.events.is_closed() {
                continue; // the client left while queued
            }
            let hint = job.request.cache_hint.as_deref();
            let scope = &job.request.cache_scope;
            // A prompt to be scored is evaluated whole (a cached prefix has no logits left to
            // read), so it is placed as if there were no prompt cache: it takes an empty or
            // least recently used slot, not a conversation's for a prefix it cannot use.
            let reuse = self.config.prompt_cache && !job.request.prompt_logprobs;
            let Some(placement) = place(&free, &job.tokens, hint, scope, reuse) else {
                return;
            };
            let slot = &mut self.slots[placement.index];
            // Forget what follows the shared prefix in this sequence.
            let keep = placement.reused;
            let removed =
                self.context
                    .clear_kv_cache_seq(Some(slot.seq as u32), Some(keep as u32), None);
            let keep = if matches!(removed, Ok(true)) {
                keep
            } else {
                // The cache could not be cut there: start the sequence afresh.
                let _ = self
                    .context
                    .clear_kv_cache_seq(Some(slot.seq as u32), None, None);
                0
            };
            slot.cache.truncate(keep);
            slot.hint = job.request.cache_hint.clone();
            slot.scope = job.request.cache_scope.clone();
            let mut sequence = Sequence::new(
                &job.request,
                job.tokens,
                keep,
                self.n_vocab,
                job.events,
                arrived,
                job.constrained,
            );
            if job.request.prompt_logprobs {
                sequence.score_prompt(self.model);
            }
            slot.active = Some(sequence);
            self.shared.busy.fetch_add(1, Ordering::Relaxed);
            self.shared
                .prompt_tokens_cached
                .fetch_add(keep as u64, Ordering::Relaxed);
        }
    }

    /// Builds the step's batch ([`crate::step`]): every generating slot's next token, then
    /// prompt chunks.
    fn fill(&mut self, batch: &mut LlamaBatch, entries: &mut Vec<Entry>) {
        batch.clear();
        entries.clear();
        let states: Vec<SlotState> = self
            .slots
            .iter()
            .map(|slot| match &slot.active {
                None => SlotState {
                    decode: false,
                    prefill: 0,
                    order: 0,
                },
                Some(sequence) => SlotState {
                    decode: sequence.wants_decode(),
                    prefill: sequence.prompt.len() - sequence.prefilled,
                    order: sequence
                        .arrived
                        .saturating_duration_since(self.started)
                        .as_nanos() as u64,
                },
            })
            .collect();
        let choice = step::choose(
            &states,
            self.skipped_decodes,
            self.config.batch,
            self.config.prefill_chunk,
        );
        self.skipped_decodes = choice.prefill_first;
        if choice.prefill_first {
            self.shared
                .prefill_first_steps
                .fetch_add(1, Ordering::Relaxed);
        }
        for index in choice.decode {
            let slot = &self.slots[index];
            let Some(token) = slot.active.as_ref().and_then(|s| s.next) else {
                continue;
            };
            let position = slot.cache.len() as i32;
            if batch.add(token, position, &[slot.seq], true).is_err() {
                break;
            }
            entries.push(Entry::Decode {
                slot: index,
                index: batch.n_tokens() - 1,
            });
        }
        for (index, count) in choice.prefill {
            let slot = &self.slots[index];
            let Some(sequence) = &slot.active else {
                continue;
            };
            let scored = sequence.scores_prompt();
            // A scored prompt's tokens each bring their logits back (a vocabulary's worth
            // of floats) and a softmax on this thread: a bounded number a step keeps that
            // memory and time small, and the other slots' steps coming between.
            let count = if scored {
                count.min(SCORED_PER_STEP)
            } else {
                count
            };
            let start = sequence.prefilled;
            let last = start + count == sequence.prompt.len();
            let first = batch.n_tokens();
            let mut added = 0;
            for (offset, &token) in sequence.prompt[start..start + count].iter().enumerate() {
                let logits = scored || (last && offset + 1 == count);
                if batch
                    .add(token, (start + offset) as i32, &[slot.seq], logits)
                    .is_err()
                {
                    break;
                }
                added += 1;
            }
            if added == 0 {
                break;
            }
            entries.push(Entry::Prefill {
                slot: index,
                count: added,
                index: (last && added == count).then(|| batch.n_tokens() - 1),
                first,
            });
        }
    }

    /// Decodes the batch and moves every sequence in it forward.
    fn decode(&mut self, batch: &mut LlamaBatch, entries: &[Entry]) {
        self.step += 1;
        if let Err(err) = self.context.decode(batch) {
            let message = format!("llama.cpp could not decode a batch: {err}");
            tracing::error!(%message);
            for entry in entries {
                let slot = match entry {
                    Entry::Decode { slot, .. } | Entry::Prefill { slot, .. } => *slot,
                };
                // What the failed batch left in this sequence is unknown: forget it all.
                let seq = self.slots[slot].seq as u32;
                let _ = self.context.clear_kv_cache_seq(Some(seq), None, None);
                self.slots[slot].cache.clear();
                let failure =
                    GenerationEvent::Failed(GenerationFailure::Generation(message.clone()));
                self.end(slot, vec![failure]);
            }
            return;
        }
        self.shared.batches.fetch_add(1, Ordering::Relaxed);
        for entry in entries {
            let (index, logits_at) = match *entry {
                Entry::Decode { slot, index } => {
                    let slot_ref = &mut self.slots[slot];
                    if let Some(sequence) = slot_ref.active.as_mut()
                        && let Some(token) = sequence.next.take()
                    {
                        slot_ref.cache.push(token);
                    }
                    (slot, Some(index))
                }
                Entry::Prefill {
                    slot,
                    count,
                    index,
                    first,
                } => {
                    let slot_ref = &mut self.slots[slot];
                    if let Some(sequence) = slot_ref.active.as_mut() {
                        let start = sequence.prefilled;
                        if sequence.scores_prompt() {
                            // Position p's logits score the prompt token at p + 1; the
                            // prompt's last position is the answer's first token, sampled below.
                            for offset in 0..count {
                                let logits = self.context.get_logits_ith(first + offset as i32);
                                sequence.score_next_prompt_token(
                                    self.model,
                                    start + offset,
                                    logits,
                                );
                            }
                        }
                        slot_ref
                            .cache
                            .extend_from_slice(&sequence.prompt[start..start + count]);
                        sequence.prefilled += count;
                    }
                    self.shared
                        .prompt_tokens_evaluated
                        .fetch_add(count as u64, Ordering::Relaxed);
                    (slot, index)
                }
            };
            let Some(logits_at) = logits_at else { continue };
            let logits = self.context.get_logits_ith(logits_at);
            let Some(sequence) = self.slots[index].active.as_mut() else {
                continue;
            };
            self.shared.generated_tokens.fetch_add(1, Ordering::Relaxed);
            if let Progress::Ended(last) = sequence.advance(self.model, logits) {
                self.end(index, last);
            }
        }
    }

    /// The slot's sequence ended: the slot is free (its cache stays for the next turn), then
    /// the reader gets the last event.
    fn end(&mut self, index: usize, last: Vec<GenerationEvent>) {
        let slot = &mut self.slots[index];
        slot.last_used = self.step;
        let Some(sequence) = slot.active.take() else {
            return;
        };
        self.shared.busy.fetch_sub(1, Ordering::Relaxed);
        sequence.deliver(last);
    }
}
