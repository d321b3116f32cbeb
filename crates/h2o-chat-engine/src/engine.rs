//! The boundary between the server and a model: the [`Engine`] trait.
//!
//! The server only ever sees this trait, so the real model and a scripted engine (for fault
//! injection and for measuring the server's own ceiling) are interchangeable.

use tokio::sync::mpsc;

use crate::error::EngineError;
use crate::request::{GenerationEvent, GenerationRequest};

/// One chat message for the chat template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTurn {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

/// ChatML (`<|im_start|>role\ncontent<|im_end|>\n` per turn, then the open assistant turn),
/// with no default system message — SmolLM2's format, used where no model template is known.
pub fn chatml(turns: &[ChatTurn]) -> String {
    let mut prompt = String::new();
    for turn in turns {
        prompt.push_str("<|im_start|>");
        prompt.push_str(&turn.role);
        prompt.push('\n');
        prompt.push_str(&turn.content);
        prompt.push_str("<|im_end|>\n");
    }
    prompt.push_str("<|im_start|>assistant\n");
    prompt
}

/// What an engine tells about itself (for `/info`, `/v1/models`, `h2o-chat models`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    /// The model's own id, e.g. `HuggingFaceTB/SmolLM2-135M-Instruct`.
    pub model_id: String,
    /// How it is run, e.g. `llama.cpp (GGUF Q4_1, 2 threads)`.
    pub backend: String,
    /// The model file or source, for people.
    pub source: String,
    /// The largest number of positions one sequence can use.
    pub context_length: usize,
}

/// A running generation: events arrive on `events`; dropping the receiver cancels it.
pub struct Generation {
    pub events: mpsc::Receiver<GenerationEvent>,
}

/// A language model that generates with TGI's semantics.
pub trait Engine: Send + Sync + 'static {
    /// Who this engine is.
    fn info(&self) -> EngineInfo;

    /// Renders a conversation with the model's own chat template, ending with the open
    /// assistant turn.
    fn render_chat(&self, turns: &[ChatTurn]) -> Result<String, EngineError>;

    /// How many tokens `text` is for this model (for TGI's length validation).
    fn count_tokens(&self, text: &str) -> Result<usize, EngineError>;

    /// Queues a generation. Fails with [`EngineError::Overloaded`] when the queue is full.
    /// Generation runs off the caller's thread and stops when the receiver is dropped.
    fn start(&self, request: GenerationRequest) -> Result<Generation, EngineError>;
}
