//! How the slots' KV caches store keys and values — and so which attention kernel runs.
//!
//! The scheduler's promise is that a sequence gets the same tokens alone, beside fifteen
//! others, or after a cached prefix. That holds only if every token's arithmetic is the same
//! whatever else is in its batch. llama.cpp's CPU flash attention has three kernels: one per
//! query row, a tiled one for 64 or more query rows of a sequence, and a split-KV one for a
//! lone query over 512 or more cached positions. The last two are chosen for 16- and 32-bit
//! caches only, and each rounds differently from the per-row kernel, so with a 16-bit cache
//! a prompt evaluated in one piece and the same text built up token by token (the next turn
//! of a chat, from the prompt cache) disagree in the last bits — and sometimes in the answer.
//! With an 8-bit cache every query row takes the per-row kernel, which also skips the cache
//! cells a sequence does not see; without flash attention, attention is a plain matrix
//! product that computes those masked cells too.
//!
//! ```
//! use h2o_chat_llama::KvCache;
//!
//! assert_eq!(KvCache::default(), KvCache::Q8_0);
//! assert!(KvCache::Q8_0.flash_attention());
//! assert!(KvCache::Q8_0.bytes_per_value() < KvCache::F16.bytes_per_value());
//! ```

use std::fmt;
use std::str::FromStr;

use llama_cpp_2::context::params::KvCacheType;

/// The KV cache's number format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvCache {
    /// 8-bit blocks (llama.cpp's Q8_0) read by flash attention: the fastest here
    /// (BENCHMARKS.md) and half the memory of F16.
    #[default]
    Q8_0,
    /// 16-bit floats, attention as matrix products (no flash attention): full precision for
    /// the cached keys and values, slower as histories grow.
    F16,
}

impl KvCache {
    /// Whether llama.cpp's flash attention runs (an 8-bit cache needs it; a 16-bit one must
    /// not have it, or its tiled and split kernels would make answers depend on the batch).
    pub fn flash_attention(self) -> bool {
        matches!(self, KvCache::Q8_0)
    }

    /// Bytes per stored key or value element.
    pub fn bytes_per_value(self) -> f64 {
        match self {
            // A block of 32 values: 32 bytes and one 16-bit scale.
            KvCache::Q8_0 => 34.0 / 32.0,
            KvCache::F16 => 2.0,
        }
    }

    /// The cache a model with these key and value head widths can have: llama.cpp stores
    /// 8-bit values in blocks of 32 per head, so a head width that 32 does not divide (80, in
    /// some models) keeps the 16-bit cache instead of failing to load.
    pub fn for_heads(self, key_width: u32, value_width: u32) -> KvCache {
        match self {
            KvCache::Q8_0 if key_width % 32 != 0 || value_width % 32 != 0 => KvCache::F16,
            other => other,
        }
    }

    /// llama.cpp's type for the cache (for code driving the bindings directly, such as the
    /// benchmarks' bare loops).
    pub fn llama_type(self) -> KvCacheType {
        match self {
            KvCache::Q8_0 => KvCacheType::Q8_0,
            KvCache::F16 => KvCacheType::F16,
        }
    }
}

impl fmt::Display for KvCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KvCache::Q8_0 => "q8_0",
            KvCache::F16 => "f16",
        })
    }
}

impl FromStr for KvCache {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" | "q8" => Ok(KvCache::Q8_0),
            "f16" => Ok(KvCache::F16),
            other => Err(format!(
                "unknown KV cache type {other:?} (expected q8_0 or f16)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::KvCache;

    #[test]
    fn an_8_bit_cache_needs_head_widths_that_32_divides() {
        assert_eq!(KvCache::Q8_0.for_heads(64, 64), KvCache::Q8_0);
        assert_eq!(KvCache::Q8_0.for_heads(128, 128), KvCache::Q8_0);
        assert_eq!(KvCache::Q8_0.for_heads(80, 80), KvCache::F16);
        assert_eq!(KvCache::Q8_0.for_heads(64, 48), KvCache::F16);
        assert_eq!(KvCache::F16.for_heads(80, 80), KvCache::F16);
    }

    #[test]
    fn names_parse_back() {
        for kv_cache in [KvCache::Q8_0, KvCache::F16] {
            assert_eq!(kv_cache.to_string().parse::<KvCache>(), Ok(kv_cache));
        }
        assert_eq!("Q8".parse::<KvCache>(), Ok(KvCache::Q8_0));
        assert!("q4_0".parse::<KvCache>().is_err());
    }
}
