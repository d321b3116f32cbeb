//! The real model: a GGUF run by llama.cpp (through `llama-cpp-2`), with TGI's semantics on
//! top (sampling, stopping, incremental text).
//!
//! Generation never runs on the async runtime. Each worker is a plain thread that owns one
//! llama.cpp context (its KV cache) and takes jobs from a bounded queue; a full queue is
//! TGI's `overloaded`. Tokens go back through a bounded channel, so a slow reader slows the
//! worker instead of growing memory, and a dropped reader stops the generation at the next
//! token.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc as channel;

use crate::detokenize::TextAssembler;
use crate::engine::{ChatTurn, Engine, EngineInfo, Generation};
use crate::error::EngineError;
use crate::request::{Finish, GenerationEvent, GenerationRequest, TokenOut};
use crate::sampling::Sampler;
use crate::stopping::StoppingCriteria;

/// Prompt tokens decoded per llama.cpp batch.
const PROMPT_BATCH: usize = 512;
/// Events buffered between a worker and its reader.
const EVENT_BUFFER: usize = 64;

/// How to run the model.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub gguf: PathBuf,
    /// The id the model is served under.
    pub model_id: String,
    /// Threads per generation (default: all cores).
    pub threads: usize,
    /// Generations run at once (each has its own KV cache).
    pub parallel: usize,
    /// Positions per sequence (prompt + output); the KV cache is sized for it.
    pub context_length: usize,
    /// Requests that may wait for a worker before new ones are refused as overloaded.
    pub queue: usize,
}

impl LlamaConfig {
    /// Defaults for a GGUF: all cores, one generation at a time, 4,096 positions, 128 queued.
    pub fn new(gguf: impl Into<PathBuf>, model_id: impl Into<String>) -> Self {
        LlamaConfig {
            gguf: gguf.into(),
            model_id: model_id.into(),
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            parallel: 1,
            context_length: 4096,
            queue: 128,
        }
    }
}

/// llama.cpp may be initialised once per process; this is the process's backend (for code
/// that drives the bindings directly beside the engine, such as the benchmarks).
pub fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let mut backend = LlamaBackend::init().map_err(|e| e.to_string())?;
            // llama.cpp's own logging goes to stderr unless silenced; tracing carries ours.
            backend.void_logs();
            Ok(backend)
        })
        .as_ref()
        .map_err(|e| EngineError::Load {
            path: PathBuf::new(),
            detail: format!("llama.cpp backend: {e}"),
        })
}

struct Job {
    request: GenerationRequest,
    events: channel::Sender<GenerationEvent>,
}

/// The llama.cpp engine. See the module docs.
pub struct LlamaEngine {
    model: Arc<LlamaModel>,
    jobs: SyncSender<Job>,
    info: EngineInfo,
    load_ms: u128,
}

impl LlamaEngine {
    /// Loads the GGUF (memory-mapped) and starts the workers.
    pub fn load(config: LlamaConfig) -> Result<LlamaEngine, EngineError> {
        let backend = backend()?;
        let load_error = |detail: String| EngineError::Load {
            path: config.gguf.clone(),
            detail,
        };
        if !Path::new(&config.gguf).is_file() {
            return Err(load_error("no such file".into()));
        }
        let started = Instant::now();
        let model = LlamaModel::load_from_file(backend, &config.gguf, &LlamaModelParams::default())
            .map_err(|e| load_error(format!("{e} (is it a GGUF model?)")))?;
        let model = Arc::new(model);
        let load_ms = started.elapsed().as_millis();
        let context_length = config
            .context_length
            .min(model.n_ctx_train() as usize)
            .max(16);
        let (jobs, queue) = mpsc::sync_channel::<Job>(config.queue.max(1));
        let queue = Arc::new(Mutex::new(queue));
        let threads = config.threads.max(1);
        for index in 0..config.parallel.max(1) {
            let worker = Worker {
                model: model.clone(),
                backend,
                queue: queue.clone(),
                threads,
                context_length,
            };
            std::thread::Builder::new()
                .name(format!("h2o-chat-engine-{index}"))
                .spawn(move || worker.run())
                .map_err(|e| load_error(format!("cannot start a worker thread: {e}")))?;
        }
        let info = EngineInfo {
            model_id: config.model_id.clone(),
            backend: format!(
                "llama.cpp via llama-cpp-2 0.1.160, {threads} threads × {} worker(s)",
                config.parallel.max(1)
            ),
            source: config.gguf.display().to_string(),
            context_length,
        };
        tracing::info!(model = %info.model_id, load_ms, "model loaded");
        Ok(LlamaEngine {
            model,
            jobs,
            info,
            load_ms,
        })
    }

    /// How long loading the model took.
    pub fn load_ms(&self) -> u128 {
        self.load_ms
    }
}

impl Engine for LlamaEngine {
    fn info(&self) -> EngineInfo {
        self.info.clone()
    }

    fn render_chat(&self, turns: &[ChatTurn]) -> Result<String, EngineError> {
        let template = self
            .model
            .chat_template(None)
            .map_err(|e| EngineError::Input(format!("the model has no chat template: {e}")))?;
        let messages = turns
            .iter()
            .map(|t| LlamaChatMessage::new(t.role.clone(), t.content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EngineError::Input(format!("a message cannot be rendered: {e}")))?;
        self.model
            .apply_chat_template(&template, &messages, true)
            .map_err(|e| EngineError::Input(format!("the chat template failed: {e}")))
    }

    fn count_tokens(&self, text: &str) -> Result<usize, EngineError> {
        Ok(self
            .model
            .vocab()
            .tokenize(text.as_bytes(), true, true)
            .len())
    }

    fn start(&self, request: GenerationRequest) -> Result<Generation, EngineError> {
        let (events, receiver) = channel::channel(EVENT_BUFFER);
        match self.jobs.try_send(Job { request, events }) {
            Ok(()) => Ok(Generation { events: receiver }),
            Err(TrySendError::Full(_)) => Err(EngineError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(EngineError::Stopped),
        }
    }
}

struct Worker {
    model: Arc<LlamaModel>,
    backend: &'static LlamaBackend,
    queue: Arc<Mutex<Receiver<Job>>>,
    threads: usize,
    context_length: usize,
}

impl Worker {
    fn run(self) {
        let threads = i32::try_from(self.threads).unwrap_or(1);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(self.context_length as u32))
            .with_n_batch(PROMPT_BATCH as u32)
            .with_n_ubatch(PROMPT_BATCH as u32)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let mut context = match self.model.new_context(self.backend, params) {
            Ok(context) => Some(context),
            Err(err) => {
                tracing::error!(%err, "cannot create a llama.cpp context; this worker fails every job");
                None
            }
        };
        loop {
            let job = {
                let queue = self
                    .queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                queue.recv()
            };
            let Ok(job) = job else {
                return; // the engine is gone
            };
            if job.events.is_closed() {
                continue; // the client left while queued
            }
            let Some(context) = context.as_mut() else {
                let _ = job.events.blocking_send(GenerationEvent::Failed(
                    "the model context could not be created".into(),
                ));
                continue;
            };
            if let Err(message) = generate(&self.model, context, &job) {
                let _ = job.events.blocking_send(GenerationEvent::Failed(message));
            }
        }
    }
}

/// One generation on a worker's context. Returns `Err` with a message for the client when
/// llama.cpp fails; a client that leaves is not an error.
fn generate(model: &LlamaModel, context: &mut LlamaContext<'_>, job: &Job) -> Result<(), String> {
    let vocab = model.vocab();
    let request = &job.request;
    let mut prompt = vocab.tokenize(request.prompt.as_bytes(), true, true);
    if let Some(keep) = request.truncate
        && prompt.len() > keep
    {
        prompt.drain(..prompt.len() - keep);
    }
    if prompt.is_empty() {
        return Err("the prompt has no tokens".into());
    }
    let capacity = context.n_ctx() as usize;
    if prompt.len() + request.max_new_tokens as usize > capacity {
        return Err(format!(
            "{} prompt tokens + {} new tokens exceed the context of {capacity}",
            prompt.len(),
            request.max_new_tokens
        ));
    }
    context.clear_kv_cache();

    let mut sampler = Sampler::new(&request.sampling, model.n_vocab().max(0) as usize);
    let mut batch = LlamaBatch::new(PROMPT_BATCH, 1);
    for (chunk_index, chunk) in prompt.chunks(PROMPT_BATCH).enumerate() {
        batch.clear();
        let last_chunk = (chunk_index + 1) * PROMPT_BATCH >= prompt.len();
        for (i, &token) in chunk.iter().enumerate() {
            let pos = (chunk_index * PROMPT_BATCH + i) as i32;
            let wants_logits = last_chunk && i == chunk.len() - 1;
            batch
                .add(token, pos, &[0], wants_logits)
                .map_err(|e| e.to_string())?;
            sampler.observe(token.0 as u32);
        }
        if job.events.is_closed() {
            return Ok(());
        }
        context
            .decode(&mut batch)
            .map_err(|e| format!("prompt evaluation failed: {e}"))?;
    }

    let criteria = StoppingCriteria::new(request.max_new_tokens, request.stop.clone());
    let mut assembler = TextAssembler::default();
    let mut text = String::new();
    let mut position = prompt.len() as i32;
    let mut generated = 0u32;
    loop {
        let logits = context.get_logits_ith(batch.n_tokens() - 1);
        let (id, logprob) = sampler.choose(logits);
        let token = LlamaToken(id as i32);
        generated += 1;
        let is_eos = vocab.is_eog(token);
        let special = is_eos || vocab.is_control(token);
        let piece = if special {
            String::from_utf8_lossy(&vocab.token_to_piece(token, true, None)).into_owned()
        } else {
            let piece = assembler.push(&vocab.token_to_piece(token, false, None));
            text.push_str(&piece);
            piece
        };
        let mut out = TokenOut {
            id,
            text: piece,
            logprob,
            special,
        };
        if let Some(reason) = criteria.check(generated, is_eos, &text) {
            let rest = assembler.finish();
            if !special {
                out.text.push_str(&rest);
            }
            text.push_str(&rest);
            let finish = Finish {
                reason,
                generated_tokens: generated,
                seed: sampler.seed(),
                generated_text: text,
                input_tokens: prompt.len() as u32,
            };
            let _ = job
                .events
                .blocking_send(GenerationEvent::Finished(out, finish));
            return Ok(());
        }
        if job
            .events
            .blocking_send(GenerationEvent::Token(out))
            .is_err()
        {
            return Ok(()); // the client left: stop generating
        }
        batch.clear();
        batch
            .add(token, position, &[0], true)
            .map_err(|e| e.to_string())?;
        position += 1;
        context
            .decode(&mut batch)
            .map_err(|e| format!("decoding failed after {generated} tokens: {e}"))?;
    }
}
