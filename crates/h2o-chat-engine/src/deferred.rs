//! An engine that is not there yet: `serve` listens (and answers `/health` with "loading")
//! while the model is fetched and loaded, then every call goes to the real engine.
//!
//! ```
//! use std::sync::Arc;
//! use h2o_chat_engine::{DeferredEngine, Engine, EngineError, GenerationRequest, Health, Prompt, Script, ScriptedEngine};
//!
//! let deferred = DeferredEngine::new("my-model");
//! assert_eq!(deferred.health(), Health::Loading);
//! assert!(matches!(deferred.start(GenerationRequest::new(Prompt::raw("Hi"), 4)), Err(EngineError::Loading)));
//! deferred.resolve(Ok(Arc::new(ScriptedEngine::new(Script::default()))));
//! assert_eq!(deferred.health(), Health::Ready);
//! ```

use std::sync::{Arc, OnceLock};

use crate::constraint::Constraint;
use crate::engine::{Cleanup, Engine, EngineInfo, EngineStats, Generation, Health};
use crate::error::EngineError;
use crate::prompt::{ChatTurn, Prompt};
use crate::request::{GenerationRequest, Tokenized};

/// See the module docs.
pub struct DeferredEngine {
    model_id: String,
    engine: OnceLock<Result<Arc<dyn Engine>, String>>,
}

impl DeferredEngine {
    /// An engine for `model_id` that is loading.
    pub fn new(model_id: impl Into<String>) -> Self {
        DeferredEngine {
            model_id: model_id.into(),
            engine: OnceLock::new(),
        }
    }

    /// The load's outcome. Only the first call counts.
    pub fn resolve(&self, engine: Result<Arc<dyn Engine>, String>) {
        let _ = self.engine.set(engine);
    }

    fn ready(&self) -> Result<&Arc<dyn Engine>, EngineError> {
        match self.engine.get() {
            None => Err(EngineError::Loading),
            Some(Ok(engine)) => Ok(engine),
            Some(Err(message)) => Err(EngineError::Stopped(message.clone())),
        }
    }
}

impl Engine for DeferredEngine {
    fn info(&self) -> EngineInfo {
        match self.engine.get() {
            Some(Ok(engine)) => engine.info(),
            state => EngineInfo {
                model_id: self.model_id.clone(),
                backend: if state.is_none() {
                    "loading".into()
                } else {
                    "failed to load".into()
                },
                compute_type: String::new(),
                dtype: String::new(),
                device: String::new(),
                context_length: 0,
                slots: 0,
                batch_total_tokens: 0,
            },
        }
    }

    fn health(&self) -> Health {
        match self.engine.get() {
            None => Health::Loading,
            Some(Ok(engine)) => engine.health(),
            Some(Err(message)) => Health::Failed(message.clone()),
        }
    }

    /// While loading, zeros (so `/metrics` shows the model, not ready); then the engine's.
    fn stats(&self) -> Option<EngineStats> {
        match self.ready() {
            Ok(engine) => engine.stats(),
            Err(_) => Some(EngineStats::default()),
        }
    }

    fn load(&self) -> Result<(), EngineError> {
        self.ready()?.load()
    }

    fn is_loaded(&self) -> bool {
        self.ready().is_ok_and(|engine| engine.is_loaded())
    }

    fn render_chat(&self, turns: &[ChatTurn]) -> Result<Prompt, EngineError> {
        self.ready()?.render_chat(turns)
    }

    fn render_chat_with_tools(
        &self,
        turns: &[ChatTurn],
        tools: &crate::ToolUse,
    ) -> Result<Option<Prompt>, EngineError> {
        self.ready()?.render_chat_with_tools(turns, tools)
    }

    fn tokenize(&self, prompt: &Prompt) -> Result<Tokenized, EngineError> {
        self.ready()?.tokenize(prompt)
    }

    fn detokenize(&self, ids: &[u32]) -> Option<String> {
        self.ready().ok()?.detokenize(ids)
    }

    fn check_constraint(&self, constraint: &Constraint) -> Result<(), EngineError> {
        self.ready()?.check_constraint(constraint)
    }

    fn start(&self, request: GenerationRequest) -> Result<Generation, EngineError> {
        self.ready()?.start(request)
    }

    fn pending_cleanup(&self) -> Option<Cleanup> {
        self.ready().ok()?.pending_cleanup()
    }
}
