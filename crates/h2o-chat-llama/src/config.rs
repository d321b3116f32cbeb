//! How the local model runs: one set of knobs, from `serve`'s flags down to the scheduler.

use std::path::PathBuf;
use std::time::Duration;

use crate::kv_cache::KvCache;

/// How to run the model.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub gguf: PathBuf,
    /// The id the model is served under.
    pub model_id: String,
    /// Threads llama.cpp computes with (default: all cores).
    pub threads: usize,
    /// Sequences generated at once, each with its own KV cache (default 8).
    pub slots: usize,
    /// Positions per slot, prompt + output (default: 4,096, or the model's training
    /// context if smaller; lowered to fit the machine's memory).
    pub context_per_slot: usize,
    /// Requests that may wait for a slot before new ones are refused as overloaded.
    pub queue: usize,
    /// Tokens per decode step (llama.cpp's `n_batch`).
    pub batch: usize,
    /// Prompt tokens evaluated per step while other slots are generating (chunked prefill:
    /// a long prompt never stalls the streams already running).
    pub prefill_chunk: usize,
    /// One KV cache shared by all slots (llama.cpp's `kv_unified`) instead of one per slot.
    pub kv_unified: bool,
    /// Reuse a slot's cached prefix for a new request (the prompt cache).
    pub prompt_cache: bool,
    /// How long a sequence whose reader does not take its events may pause before it is
    /// given up with an error event.
    pub stall_timeout: Duration,
    /// How the KV caches store keys and values (and so whether flash attention runs);
    /// either way a sequence's answer does not depend on its batch or the prompt cache.
    pub kv_cache: KvCache,
    /// Fast mode: flash attention over a 16-bit cache, whose tiled and split kernels
    /// evaluate long prompts faster but round differently by batch shape — so an answer may
    /// then depend on its batch and on the prompt cache. Off by default (exact).
    pub fast: bool,
}

impl LlamaConfig {
    /// Defaults for a GGUF: all cores, 8 slots of 4,096 positions, 128 queued requests.
    pub fn new(gguf: impl Into<PathBuf>, model_id: impl Into<String>) -> Self {
        LlamaConfig {
            gguf: gguf.into(),
            model_id: model_id.into(),
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            slots: 8,
            context_per_slot: 4096,
            queue: 128,
            batch: 512,
            prefill_chunk: 128,
            kv_unified: false,
            prompt_cache: true,
            stall_timeout: Duration::from_secs(30),
            kv_cache: KvCache::default(),
            fast: false,
        }
    }
}
