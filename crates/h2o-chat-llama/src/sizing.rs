//! How large the slots' KV caches may be: their bytes per position for this model, and the
//! positions per slot that fit a quarter of the machine's available memory.

use std::num::NonZeroU32;

use llama_cpp_2::model::LlamaModel;

use crate::kv_cache::KvCache;

/// Bytes of KV cache per position: K and V, in the cache's format, for every layer.
fn kv_bytes_per_position(model: &LlamaModel, kv_cache: KvCache) -> u64 {
    let layers = u64::from(model.n_layer());
    let heads = u64::from(model.n_head().max(1));
    let kv_heads = u64::from(model.n_head_kv());
    let width = u64::try_from(model.n_embd()).unwrap_or(0);
    // Keys and values.
    let values = layers * (width * kv_heads / heads) * 2;
    (values as f64 * kv_cache.bytes_per_value()).ceil() as u64
}

/// The width of one attention head's keys and values: the GGUF's `key_length` and
/// `value_length` when it has them, else the embedding width over the head count.
pub(crate) fn head_widths(model: &LlamaModel) -> (u32, u32) {
    let fallback = u32::try_from(model.n_embd()).unwrap_or(0) / model.n_head().max(1);
    let read = |what: &str| {
        let architecture = model.meta_val_str("general.architecture").ok()?;
        model
            .meta_val_str(&format!("{architecture}.attention.{what}"))
            .ok()?
            .parse::<u32>()
            .ok()
    };
    (
        read("key_length").unwrap_or(fallback),
        read("value_length").unwrap_or(fallback),
    )
}

/// Bytes the model holds loaded: its weights and the slots' KV caches (`positions` in all).
pub(crate) fn footprint(model: &LlamaModel, kv_cache: KvCache, positions: usize) -> u64 {
    model
        .size()
        .saturating_add(kv_bytes_per_position(model, kv_cache).saturating_mul(positions as u64))
}

/// `MemAvailable` from /proc/meminfo, in bytes.
pub fn memory_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Lowers the positions per slot (not below 1,024) until the KV caches take at most a
/// quarter of the memory available, so the defaults never push a small machine into swap.
pub(crate) fn fit_to_memory(
    model: &LlamaModel,
    kv_cache: KvCache,
    slots: usize,
    context: usize,
) -> usize {
    let Some(available) = memory_available() else {
        return context;
    };
    let per_position = kv_bytes_per_position(model, kv_cache).max(1);
    let budget = available / 4;
    let mut context = context;
    while context > 1024 && per_position * (slots * context) as u64 > budget {
        context /= 2;
    }
    context
}

/// The context's size for a scheduler, as llama.cpp wants it.
pub(crate) fn context_positions(slots: usize, per_slot: usize) -> Option<NonZeroU32> {
    NonZeroU32::new(u32::try_from(slots * per_slot).unwrap_or(u32::MAX))
}
