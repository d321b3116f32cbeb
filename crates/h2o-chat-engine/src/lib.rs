//! # h2o-chat-engine
//!
//! Local inference for h2o-chat: a GGUF language model run by llama.cpp, with the generation
//! semantics of text-generation-inference (protocol §b–§c): TGI's sampling (temperature,
//! top-k, top-p, typical-p, repetition penalty, seed), its stopping rules and their order,
//! and incremental text that never splits a UTF-8 character.
//!
//! - [`Engine`]: the trait the server talks to; [`LlamaEngine`] is the real model,
//!   [`ScriptedEngine`] a deterministic stand-in for fault injection and benchmarks.
//! - [`fetch`]: the model cache and its one-time fetch with pip.
//!
//! ```
//! use h2o_chat_engine::{Engine, GenerationEvent, GenerationRequest, Script, ScriptedEngine, SamplingParams};
//!
//! let engine = ScriptedEngine::new(Script::default());
//! let mut generation = engine.start(GenerationRequest {
//!     prompt: "Hi".into(),
//!     sampling: SamplingParams::default(),
//!     max_new_tokens: 20,
//!     stop: vec![],
//!     truncate: None,
//! }).unwrap();
//! let mut text = String::new();
//! while let Some(event) = generation.events.blocking_recv() {
//!     match event {
//!         GenerationEvent::Token(token) => text.push_str(&token.text),
//!         GenerationEvent::Finished(_, finish) => { assert_eq!(finish.generated_text, "Hello!"); break }
//!         GenerationEvent::Failed(message) => panic!("{message}"),
//!     }
//! }
//! assert_eq!(text, "Hello!");
//! ```

pub mod detokenize;
mod engine;
mod error;
pub mod fetch;
mod llama;
mod request;
pub mod sampling;
mod scripted;
pub mod stopping;

pub use engine::{ChatTurn, Engine, EngineInfo, Generation, chatml};
pub use error::EngineError;
pub use llama::{LlamaConfig, LlamaEngine, backend as llama_backend};
pub use request::{
    Finish, FinishReason, GenerationEvent, GenerationRequest, SamplingParams, TokenOut,
};
pub use sampling::Sampler;
pub use scripted::{SCRIPTED_EOS_ID, Script, ScriptedEngine};
