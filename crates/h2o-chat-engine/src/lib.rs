//! # h2o-chat-engine
//!
//! The boundary between the h2o-chat server and a language model, with the generation
//! semantics of text-generation-inference (protocol §b–§c): TGI's sampling (temperature,
//! top-k, top-p, typical-p, repetition penalty, seed), its stopping rules and their order,
//! and incremental text that never splits a UTF-8 character.
//!
//! This crate never compiles llama.cpp: the local model lives in `h2o-chat-llama`, which
//! implements [`Engine`] with these same pieces.
//!
//! - [`Engine`]: the trait the server talks to; [`ScriptedEngine`] a deterministic stand-in
//!   for fault injection and benchmarks; [`DeferredEngine`] one that is still loading.
//! - [`Prompt`]: template markup kept apart from message content, so message text can never
//!   forge a turn.
//! - [`Sampler`], [`stopping`], [`detokenize`]: TGI's semantics, shared by every local engine.
//!
//! ```
//! use h2o_chat_engine::{Engine, GenerationEvent, GenerationRequest, Prompt, Script, ScriptedEngine};
//!
//! let engine = ScriptedEngine::new(Script::default());
//! let mut generation = engine.start(GenerationRequest::new(Prompt::raw("Hi"), 20)).unwrap();
//! let mut text = String::new();
//! while let Some(event) = generation.events.blocking_recv() {
//!     match event {
//!         GenerationEvent::Token(token) => text.push_str(&token.text),
//!         GenerationEvent::Finished(_, finish) => { assert_eq!(finish.generated_text, "Hello!"); break }
//!         GenerationEvent::Failed(failure) => panic!("{failure}"),
//!         GenerationEvent::Alternatives(_) | GenerationEvent::Prefill(_) => {}
//!     }
//! }
//! assert_eq!(text, "Hello!");
//! ```

mod constraint;
mod deferred;
pub mod detokenize;
mod engine;
mod error;
mod on_demand;
mod prompt;
mod request;
pub mod sampling;
mod scripted;
pub mod stopping;
pub mod tool_call;

pub use constraint::{Constraint, ToolUse};
pub use deferred::DeferredEngine;
pub use engine::{Cleanup, Engine, EngineInfo, EngineStats, Generation, Health};
pub use error::EngineError;
pub use h2o_chat_protocol::{FinishReason, Token};
pub use on_demand::{Fleet, FleetConfig, GRACE, Loader, OnDemand, RETRY_FAILED};
pub use prompt::{ChatTurn, Piece, Prompt, chatml};
pub use request::{
    CacheScope, Finish, GenerationEvent, GenerationFailure, GenerationRequest, SamplingParams,
    Tokenized,
};
pub use sampling::{Choice, Sampler};
pub use scripted::{SCRIPTED_EOS_ID, Script, ScriptGate, ScriptedEngine};
