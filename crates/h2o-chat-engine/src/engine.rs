//! The boundary between the server and a model: the [`Engine`] trait.
//!
//! The server only ever sees this trait, so the local model (crate `h2o-chat-llama`), a
//! relay to another server and a scripted engine (for fault injection and for measuring the
//! server's own ceiling) are interchangeable — and none of them makes the server compile
//! llama.cpp.

use tokio::sync::mpsc;

use crate::constraint::{Constraint, ToolUse};
use crate::error::EngineError;
use crate::prompt::{ChatTurn, Prompt};
use crate::request::{GenerationEvent, GenerationRequest, Tokenized};

/// What an engine tells about itself (for `/info`, `/v1/models`, `h2o-chat models`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    /// The model's own id, e.g. `HuggingFaceTB/SmolLM2-135M-Instruct`.
    pub model_id: String,
    /// How it is run, e.g. `llama.cpp, 8 slots`.
    pub backend: String,
    /// TGI's `x-compute-type` header, e.g. `cpu+llama.cpp`.
    pub compute_type: String,
    /// TGI's `model_dtype`, e.g. `gguf`.
    pub dtype: String,
    /// TGI's `model_device_type`, e.g. `cpu`.
    pub device: String,
    /// The largest number of positions one sequence can use (prompt + output).
    pub context_length: usize,
    /// Sequences generated at once (the scheduler's slots).
    pub slots: usize,
    /// Positions held for all sequences together (TGI's `max_batch_total_tokens`).
    pub batch_total_tokens: usize,
}

/// Whether an engine can take requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The model is still being fetched or loaded.
    Loading,
    Ready,
    /// It will not serve: the model failed to load, or the scheduler stopped.
    Failed(String),
}

/// A snapshot of an engine's work, for `/metrics`. Counters only ever grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub slots: usize,
    /// Slots running a generation.
    pub busy_slots: usize,
    /// Requests waiting for a slot.
    pub queued: usize,
    /// Prompt tokens run through the model.
    pub prompt_tokens_evaluated: u64,
    /// Prompt tokens whose evaluation was reused from a slot's cache instead.
    pub prompt_tokens_cached: u64,
    pub generated_tokens: u64,
    /// Decode steps run (one batch each).
    pub batches: u64,
    /// Steps given to finishing a newcomer's prompt alone, the running slots waiting one step.
    pub prefill_first_steps: u64,
}

/// A running generation: events arrive on `events`; dropping the receiver cancels it.
pub struct Generation {
    pub events: mpsc::Receiver<GenerationEvent>,
}

/// A language model that generates with TGI's semantics.
///
/// `render_chat` and `tokenize` may take milliseconds for long prompts: async callers run
/// them off their runtime (`spawn_blocking`).
pub trait Engine: Send + Sync + 'static {
    /// Who this engine is.
    fn info(&self) -> EngineInfo;

    /// Whether it can take requests now.
    fn health(&self) -> Health {
        Health::Ready
    }

    /// Whether its model is in memory now (a model on demand may be unloaded while idle).
    fn is_loaded(&self) -> bool {
        true
    }

    /// Bytes of memory its model holds while loaded (weights and caches), when it knows:
    /// what a fleet's memory budget counts ([`crate::FleetConfig::max_bytes`]).
    fn footprint(&self) -> Option<u64> {
        None
    }

    /// Its work so far; `None` for engines that keep no such figures (a relay, a gateway).
    fn stats(&self) -> Option<EngineStats> {
        None
    }

    /// Makes the model ready to take a request, loading it if it is not in memory (a model
    /// on demand); blocking, within the engine's own bound. Async callers run it off their
    /// runtime, before anything that needs the model.
    fn load(&self) -> Result<(), EngineError> {
        Ok(())
    }

    /// Renders a conversation with the model's own chat template, ending with the open
    /// assistant turn. Message text becomes [`crate::Piece::Content`].
    fn render_chat(&self, turns: &[ChatTurn]) -> Result<Prompt, EngineError>;

    /// Renders a conversation with tools the model's own way, when its template shows
    /// tools itself in the call format the server enforces ([`crate::tool_call`]); `None`
    /// when it does not, and the caller renders the turns, generic section included, with
    /// [`Engine::render_chat`]. `turns` come without the generic section
    /// ([`ToolUse::without_section`]).
    fn render_chat_with_tools(
        &self,
        _turns: &[ChatTurn],
        _tools: &ToolUse,
    ) -> Result<Option<Prompt>, EngineError> {
        Ok(None)
    }

    /// The prompt's tokens for this model (for TGI's length rules, and handed back to
    /// [`Engine::start`] so the work is done once).
    fn tokenize(&self, prompt: &Prompt) -> Result<Tokenized, EngineError>;

    /// The text of token ids (what the model saw of a truncated prompt); `None` when the
    /// engine has no tokenizer.
    fn detokenize(&self, _ids: &[u32]) -> Option<String> {
        None
    }

    /// Checks that this engine can enforce `constraint`, compiling it ahead of
    /// [`Engine::start`] (it may take milliseconds: async callers run it off their runtime,
    /// like `tokenize`). An invalid or unsupported one is [`EngineError::Input`], worded
    /// for the client.
    fn check_constraint(&self, constraint: &Constraint) -> Result<(), EngineError> {
        Err(EngineError::Input(format!(
            "this model cannot enforce a {} constraint",
            constraint.kind()
        )))
    }

    /// Queues a generation. Fails with [`EngineError::Overloaded`] when the queue is full.
    /// Generation runs off the caller's thread and stops when the receiver is dropped.
    fn start(&self, request: GenerationRequest) -> Result<Generation, EngineError>;

    /// Work still owed after generations ended (a relay's upstream deletions), for a
    /// graceful shutdown to await within its deadline.
    fn pending_cleanup(&self) -> Option<Cleanup> {
        None
    }
}

/// A future a graceful shutdown awaits (see [`Engine::pending_cleanup`]).
pub type Cleanup = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
