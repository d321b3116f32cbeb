//! The [`Engine`] of the local model: the GGUF loaded by llama.cpp, its vocabulary and
//! template, and the scheduler thread that generates for every request.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use h2o_chat_engine::{
    ChatTurn, Constraint, Engine, EngineError, EngineInfo, EngineStats, Generation,
    GenerationRequest, Health, Prompt, Tokenized, ToolUse, tool_call,
};
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc as channel;

use crate::backend::backend;
use crate::config::LlamaConfig;
use crate::grammar::Grammars;
use crate::scheduler::{Job, Scheduler, Shared};
use crate::sequence::Constrained;
use crate::sizing::{fit_to_memory, footprint, head_widths};
use crate::template::{self, ToolTemplate};
use crate::vocabulary::Vocabulary;

/// Events buffered between the scheduler and one reader. The last place is kept for the
/// final (or failure) event, so a reader that stops reading pauses its sequence instead of
/// losing its ending.
pub(crate) const EVENT_BUFFER: usize = 64;

/// The llama.cpp engine: a model and its scheduler thread. See the crate docs.
pub struct LlamaEngine {
    model: Arc<LlamaModel>,
    vocabulary: Arc<Vocabulary>,
    grammars: Arc<Grammars>,
    /// The model's own template with tools, when it teaches a call syntax the server knows.
    tool_template: Option<ToolTemplate>,
    /// `None` once dropping: the scheduler then ends.
    jobs: Option<mpsc::Sender<Job>>,
    /// The scheduler thread, joined when the engine is dropped (unloaded, or at exit), so
    /// that no llama.cpp work outlives the model and its context.
    scheduler: Option<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
    info: EngineInfo,
    /// The knobs as they run (sized to the machine and the model).
    config: LlamaConfig,
    load_ms: u128,
    /// Bytes held: weights and KV caches ([`Engine::footprint`]).
    footprint: u64,
}

impl LlamaEngine {
    /// Loads the GGUF (memory-mapped), sizes the slots and starts the scheduler thread.
    pub fn load(config: LlamaConfig) -> Result<LlamaEngine, EngineError> {
        let backend = backend()?;
        let path = config.gguf.clone();
        let load_error = |detail: String| EngineError::Load {
            path: path.clone(),
            detail,
        };
        if !Path::new(&config.gguf).is_file() {
            return Err(load_error("no such file".into()));
        }
        let started = Instant::now();
        let model = LlamaModel::load_from_file(backend, &config.gguf, &LlamaModelParams::default())
            .map_err(|e| load_error(format!("{e} (is it a GGUF model?)")))?;
        let model = Arc::new(model);
        let vocabulary = Arc::new(Vocabulary::of(&model));
        let tool_template = ToolTemplate::of(&model);
        let syntax = tool_template
            .as_ref()
            .map_or(tool_call::HERMES, |t| t.syntax);
        let grammars = Arc::new(Grammars::of(&model, syntax).map_err(&load_error)?);
        let load_ms = started.elapsed().as_millis();
        let slots = config.slots.clamp(1, 256);
        let (key_width, value_width) = head_widths(&model);
        let kv_cache = config.kv_cache.for_heads(key_width, value_width);
        if kv_cache != config.kv_cache {
            tracing::warn!(
                key_width,
                value_width,
                "the model's attention heads cannot be stored in an {} KV cache; using {kv_cache}",
                config.kv_cache
            );
        }
        let context_per_slot = fit_to_memory(
            &model,
            kv_cache,
            slots,
            config
                .context_per_slot
                .min(model.n_ctx_train() as usize)
                .max(64),
        );
        let threads = config.threads.max(1);
        // The knobs as they run: within the machine's and the model's limits.
        let config = LlamaConfig {
            slots,
            context_per_slot,
            threads,
            batch: config.batch.clamp(16, 8192),
            prefill_chunk: config.prefill_chunk.max(1),
            kv_cache,
            ..config
        };
        let shared = Arc::new(Shared::new(slots));
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready, created) = mpsc::sync_channel::<Result<(), String>>(1);
        let scheduler = {
            let model = model.clone();
            let shared = shared.clone();
            let config = config.clone();
            std::thread::Builder::new()
                .name("h2o-chat-scheduler".into())
                .spawn(move || Scheduler::run(model, backend, config, queue, shared, ready))
                .map_err(|e| load_error(format!("cannot start the scheduler thread: {e}")))?
        };
        match created.recv() {
            Ok(Ok(())) => {}
            Ok(Err(detail)) => return Err(load_error(detail)),
            Err(_) => return Err(load_error("the scheduler thread ended at start".into())),
        }
        let info = EngineInfo {
            model_id: config.model_id.clone(),
            backend: format!(
                "llama.cpp via llama-cpp-2 0.1.160, {threads} threads, {slots} slots × {context_per_slot} positions, {kv_cache} KV cache{}{}{}",
                if config.kv_unified {
                    ", unified KV"
                } else {
                    ""
                },
                if config.fast && !kv_cache.flash_attention() {
                    ", fast mode (answers may depend on the batch and the prompt cache)"
                } else {
                    ""
                },
                match &tool_template {
                    Some(own) =>
                        format!(", tool calls in the template's {} syntax", own.syntax.name),
                    None => String::new(),
                }
            ),
            compute_type: "cpu+llama.cpp".into(),
            dtype: "gguf".into(),
            device: "cpu".into(),
            context_length: context_per_slot,
            slots,
            batch_total_tokens: slots * context_per_slot,
        };
        let footprint = footprint(&model, kv_cache, slots * context_per_slot);
        tracing::info!(model = %info.model_id, load_ms, slots, context_per_slot, footprint_mb = footprint / (1024 * 1024), tool_calls = syntax.name, "model loaded");
        Ok(LlamaEngine {
            footprint,
            model,
            vocabulary,
            grammars,
            tool_template,
            jobs: Some(jobs),
            scheduler: Some(scheduler),
            shared,
            info,
            config,
            load_ms,
        })
    }

    /// The configuration as it runs: slots, positions and threads sized to the machine and
    /// the model, the KV cache the model's heads allow.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The call syntax tool calls are enforced in: the one the model's template teaches,
    /// else the shared one (with the generic section).
    pub fn tool_syntax(&self) -> tool_call::Syntax {
        self.tool_template
            .as_ref()
            .map_or(tool_call::HERMES, |t| t.syntax)
    }

    /// The model's grammars (to measure a constraint's masks apart from the model).
    pub fn grammars(&self) -> &Grammars {
        &self.grammars
    }

    /// How long loading the model took.
    pub fn load_ms(&self) -> u128 {
        self.load_ms
    }

    /// The model's raw tokenisation of `text` with special tokens parsed (what llama.cpp's
    /// own tools do), for comparison in tests and benchmarks.
    pub fn tokenize_raw(&self, text: &str) -> Vec<u32> {
        self.model
            .vocab()
            .tokenize(text.as_bytes(), true, true)
            .into_iter()
            .map(|t| t.0 as u32)
            .collect()
    }
}

impl Drop for LlamaEngine {
    /// Closes the queue and waits for the scheduler to end its running sequences' step and
    /// free the context (their readers are gone with the engine's last user).
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(scheduler) = self.scheduler.take()
            && scheduler.join().is_err()
        {
            tracing::error!("the scheduler thread panicked");
        }
    }
}

impl Engine for LlamaEngine {
    fn info(&self) -> EngineInfo {
        self.info.clone()
    }

    fn footprint(&self) -> Option<u64> {
        Some(self.footprint)
    }

    fn health(&self) -> Health {
        self.shared.health()
    }

    fn stats(&self) -> Option<EngineStats> {
        Some(self.shared.stats())
    }

    /// The model's own template (through llama.cpp), with message content kept apart
    /// (see `template.rs`).
    fn render_chat(&self, turns: &[ChatTurn]) -> Result<Prompt, EngineError> {
        template::render(&self.model, turns)
    }

    /// The GGUF's Jinja template itself, when it teaches a call syntax the server knows
    /// (see `template.rs`). For Hermes's syntax — the shared one — a chat this renderer
    /// cannot run is said in the log and the generic section serves instead; for another,
    /// whose calls the grammar enforces in the model's syntax, it is the client's error.
    fn render_chat_with_tools(
        &self,
        turns: &[ChatTurn],
        tools: &ToolUse,
    ) -> Result<Option<Prompt>, EngineError> {
        let Some(own) = &self.tool_template else {
            return Ok(None);
        };
        match own.render(turns, tools) {
            Ok(prompt) => Ok(Some(prompt)),
            Err(err) if own.syntax.is_shared() => {
                tracing::warn!(%err, "the model's own template cannot show the tools; the generic section is used");
                Ok(None)
            }
            Err(EngineError::Input(message)) => Err(EngineError::Input(format!(
                "the model's chat template cannot show this chat with tools: {message}"
            ))),
            Err(other) => Err(other),
        }
    }

    fn tokenize(&self, prompt: &Prompt) -> Result<Tokenized, EngineError> {
        let tokens = self.vocabulary.tokenize(&self.model, prompt);
        Ok(Tokenized::ids(
            tokens.into_iter().map(|t| t.0 as u32).collect(),
        ))
    }

    fn detokenize(&self, ids: &[u32]) -> Option<String> {
        let tokens: Vec<LlamaToken> = ids.iter().map(|&id| LlamaToken(id as i32)).collect();
        let bytes = self.model.vocab().detokenize(&tokens, false, true);
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Compiles it with llguidance over this model's vocabulary (kept for the request
    /// that follows; see `grammar.rs`).
    fn check_constraint(&self, constraint: &Constraint) -> Result<(), EngineError> {
        self.grammars
            .compile(constraint)
            .map(drop)
            .map_err(EngineError::Input)
    }

    fn start(&self, request: GenerationRequest) -> Result<Generation, EngineError> {
        if let Health::Failed(reason) = self.shared.health() {
            return Err(EngineError::Stopped(reason));
        }
        // Compiled in the caller's preparation (`check_constraint`), so this is a copy of the
        // cached grammar.
        let grammar = match &request.constraint {
            Some(constraint) => Some(
                self.grammars
                    .compile(constraint)
                    .map_err(EngineError::Input)?,
            ),
            None => None,
        };
        let tokens = match &request.tokens {
            Some(Tokenized { ids: Some(ids), .. }) => {
                ids.iter().map(|&id| LlamaToken(id as i32)).collect()
            }
            _ => {
                let mut tokens = self.vocabulary.tokenize(&self.model, &request.prompt);
                if let Some(keep) = request.truncate
                    && tokens.len() > keep
                {
                    tokens.drain(..tokens.len() - keep);
                }
                tokens
            }
        };
        let tokens: Vec<LlamaToken> = tokens;
        if tokens.is_empty() {
            return Err(EngineError::Input("the prompt has no tokens".into()));
        }
        let capacity = self.info.context_length;
        if tokens.len() + request.max_new_tokens as usize > capacity {
            return Err(EngineError::TooLong(format!(
                "{} prompt tokens + {} new tokens exceed the {capacity} positions of a slot",
                tokens.len(),
                request.max_new_tokens
            )));
        }
        if !self.shared.try_enqueue(self.config.queue) {
            return Err(EngineError::Overloaded);
        }
        let (events, receiver) = channel::channel(EVENT_BUFFER);
        // Calls in the model's own syntax are read in the shared one.
        let translator = match (&request.constraint, &self.tool_template) {
            (Some(Constraint::Tools(_)), Some(own)) if !own.syntax.is_shared() => {
                Some(tool_call::Translator::new(own.syntax))
            }
            _ => None,
        };
        let job = Job {
            request,
            tokens,
            events,
            constrained: Constrained {
                grammar,
                translator,
            },
        };
        let sent = match &self.jobs {
            Some(jobs) => jobs.send(job).is_ok(),
            None => false,
        };
        if !sent {
            self.shared.dequeued();
            return Err(EngineError::Stopped("the scheduler has stopped".into()));
        }
        Ok(Generation { events: receiver })
    }
}
