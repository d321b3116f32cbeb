//! The local model: a GGUF loaded by llama.cpp, its tokenizer and chat template, and the
//! [`Engine`] it serves through the scheduler.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use h2o_chat_engine::{
    ChatTurn, Engine, EngineError, EngineInfo, EngineStats, Generation, GenerationRequest, Health,
    Piece, Prompt, Tokenized,
};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token_type::LlamaTokenAttr;
use tokio::sync::mpsc as channel;

use crate::kv_cache::KvCache;
use crate::scheduler::{Job, Scheduler, SchedulerConfig, Shared};

/// Events buffered between the scheduler and one reader. The last place is kept for the
/// final (or failure) event, so a reader that stops reading pauses its sequence instead of
/// losing its ending.
pub(crate) const EVENT_BUFFER: usize = 64;

/// How to run the model.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub gguf: PathBuf,
    /// The id the model is served under.
    pub model_id: String,
    /// Threads llama.cpp computes with (default: all cores).
    pub threads: usize,
    /// Sequences generated at once, each with its own KV cache (default 8).
    pub slots: usize,
    /// Positions per slot, prompt + output (default: 4,096, or the model's training
    /// context if smaller; lowered to fit the machine's memory).
    pub context_per_slot: usize,
    /// Requests that may wait for a slot before new ones are refused as overloaded.
    pub queue: usize,
    /// Tokens per decode step (llama.cpp's `n_batch`).
    pub batch: usize,
    /// Prompt tokens evaluated per step while other slots are generating (chunked prefill:
    /// a long prompt never stalls the streams already running).
    pub prefill_chunk: usize,
    /// One KV cache shared by all slots (llama.cpp's `kv_unified`) instead of one per slot.
    pub kv_unified: bool,
    /// Reuse a slot's cached prefix for a new request (the prompt cache).
    pub prompt_cache: bool,
    /// How long a sequence whose reader does not take its events may pause before it is
    /// given up with an error event.
    pub stall_timeout: Duration,
    /// How the KV caches store keys and values (and so whether flash attention runs);
    /// either way a sequence's answer does not depend on its batch or the prompt cache.
    pub kv_cache: KvCache,
}

impl LlamaConfig {
    /// Defaults for a GGUF: all cores, 8 slots of 4,096 positions, 128 queued requests.
    pub fn new(gguf: impl Into<PathBuf>, model_id: impl Into<String>) -> Self {
        LlamaConfig {
            gguf: gguf.into(),
            model_id: model_id.into(),
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            slots: 8,
            context_per_slot: 4096,
            queue: 128,
            batch: 512,
            prefill_chunk: 128,
            kv_unified: false,
            prompt_cache: true,
            stall_timeout: Duration::from_secs(30),
            kv_cache: KvCache::default(),
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

/// One special token: its text, id, and whether llama.cpp strips white space around it.
struct Special {
    text: String,
    token: LlamaToken,
    lstrip: bool,
    rstrip: bool,
}

/// The model's special tokens, for tokenising markup (where they count) apart from
/// content (where they are text).
pub(crate) struct Vocabulary {
    /// Longest first, so the longest match wins (llama.cpp's order).
    specials: Vec<Special>,
    /// Whether a byte can start a special token (a quick test before the search).
    starts: [bool; 256],
    add_bos: Option<LlamaToken>,
}

impl Vocabulary {
    fn of(model: &LlamaModel) -> Self {
        let vocab = model.vocab();
        let mut specials: Vec<Special> = vocab
            .tokens()
            .filter_map(|token| {
                // The same set llama.cpp splits a prompt at.
                let attr = vocab.attr(token);
                let special = attr.contains(LlamaTokenAttr::Control)
                    || attr.contains(LlamaTokenAttr::UserDefined)
                    || attr.contains(LlamaTokenAttr::Unknown);
                if !special {
                    return None;
                }
                let text = vocab.text(token)?.to_str().ok()?.to_string();
                (!text.is_empty()).then_some(Special {
                    text,
                    token,
                    lstrip: attr.contains(LlamaTokenAttr::LStrip),
                    rstrip: attr.contains(LlamaTokenAttr::RStrip),
                })
            })
            .collect();
        specials.sort_by(|a, b| b.text.len().cmp(&a.text.len()).then(a.text.cmp(&b.text)));
        let mut starts = [false; 256];
        for special in &specials {
            starts[usize::from(special.text.as_bytes()[0])] = true;
        }
        Vocabulary {
            specials,
            starts,
            add_bos: vocab.should_add_bos().then(|| vocab.bos()),
        }
    }

    /// The special token that starts `text`, if any.
    fn special_at(&self, text: &str) -> Option<&Special> {
        let first = *text.as_bytes().first()?;
        if !self.starts[usize::from(first)] {
            return None;
        }
        self.specials
            .iter()
            .find(|special| text.starts_with(special.text.as_str()))
    }

    /// Tokenises a prompt: special-token strings in markup become their tokens; everything
    /// between them — markup text and content alike — is tokenised as plain text, one run at
    /// a time, exactly as llama.cpp splits a prompt at its special tokens. Special-token
    /// strings inside content are broken up so they stay text.
    pub(crate) fn tokenize(&self, model: &LlamaModel, prompt: &Prompt) -> Vec<LlamaToken> {
        let mut tokens: Vec<LlamaToken> = self.add_bos.into_iter().collect();
        let mut run = String::new();
        // After a special token that strips white space to its right.
        let mut strip_next = false;
        for piece in prompt.pieces() {
            match piece {
                Piece::Content(text) => {
                    let text = if std::mem::take(&mut strip_next) {
                        text.trim_start()
                    } else {
                        text
                    };
                    run.push_str(text);
                }
                Piece::Markup(text) => {
                    let mut rest = text.as_str();
                    if std::mem::take(&mut strip_next) {
                        rest = rest.trim_start();
                    }
                    while let Some(c) = rest.chars().next() {
                        if let Some(special) = self.special_at(rest) {
                            if special.lstrip {
                                run.truncate(run.trim_end().len());
                            }
                            if !run.is_empty() {
                                tokens.extend(self.plain(model, &run));
                                run.clear();
                            }
                            tokens.push(special.token);
                            rest = &rest[special.text.len()..];
                            if special.rstrip {
                                rest = rest.trim_start();
                                strip_next = rest.is_empty();
                            }
                        } else {
                            run.push(c);
                            rest = &rest[c.len_utf8()..];
                        }
                    }
                }
            }
        }
        if !run.is_empty() {
            tokens.extend(self.plain(model, &run));
        }
        tokens
    }

    /// Plain text to tokens, with no special token recognised. llama.cpp matches
    /// user-defined tokens even with special parsing off, so text that contains any special
    /// string is cut inside it first: its characters are tokenised, never the token.
    fn plain(&self, model: &LlamaModel, text: &str) -> Vec<LlamaToken> {
        let vocab = model.vocab();
        let mut tokens = Vec::new();
        let mut start = 0;
        let mut at = 0;
        while at < text.len() {
            if let Some(special) = self.special_at(&text[at..]) {
                // Cut after the special string's first character.
                let cut = at + text[at..].chars().next().map_or(1, char::len_utf8);
                tokens.extend(vocab.tokenize(&text.as_bytes()[start..cut], false, false));
                start = cut;
                at += special.text.len();
                continue;
            }
            at += text[at..].chars().next().map_or(1, char::len_utf8);
        }
        tokens.extend(vocab.tokenize(&text.as_bytes()[start..], false, false));
        tokens
    }
}

/// Marks message content in a rendered template. Private-use characters no message can
/// collide with in practice; a content that contains them is refused.
const SENTINEL_OPEN: char = '\u{F8F0}';
const SENTINEL_CLOSE: char = '\u{F8F1}';

/// The llama.cpp engine: a model and its scheduler thread. See the crate docs.
pub struct LlamaEngine {
    model: Arc<LlamaModel>,
    vocabulary: Arc<Vocabulary>,
    jobs: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    info: EngineInfo,
    queue: usize,
    load_ms: u128,
    kv_cache: KvCache,
}

impl LlamaEngine {
    /// Loads the GGUF (memory-mapped), sizes the slots and starts the scheduler thread.
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
        let vocabulary = Arc::new(Vocabulary::of(&model));
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
        let scheduler = SchedulerConfig {
            slots,
            context_per_slot,
            threads,
            batch: config.batch.clamp(16, 8192),
            prefill_chunk: config.prefill_chunk.max(1),
            kv_unified: config.kv_unified,
            prompt_cache: config.prompt_cache,
            stall_timeout: config.stall_timeout,
            kv_cache,
        };
        let shared = Arc::new(Shared::new(slots));
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready, created) = mpsc::sync_channel::<Result<(), String>>(1);
        {
            let model = model.clone();
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("h2o-chat-scheduler".into())
                .spawn(move || Scheduler::run(model, backend, scheduler, queue, shared, ready))
                .map_err(|e| load_error(format!("cannot start the scheduler thread: {e}")))?;
        }
        match created.recv() {
            Ok(Ok(())) => {}
            Ok(Err(detail)) => return Err(load_error(detail)),
            Err(_) => return Err(load_error("the scheduler thread ended at start".into())),
        }
        let info = EngineInfo {
            model_id: config.model_id.clone(),
            backend: format!(
                "llama.cpp via llama-cpp-2 0.1.160, {threads} threads, {slots} slots × {context_per_slot} positions, {kv_cache} KV cache{}",
                if config.kv_unified {
                    ", unified KV"
                } else {
                    ""
                }
            ),
            source: config.gguf.display().to_string(),
            context_length: context_per_slot,
            slots,
            batch_total_tokens: slots * context_per_slot,
        };
        tracing::info!(model = %info.model_id, load_ms, slots, context_per_slot, "model loaded");
        Ok(LlamaEngine {
            model,
            vocabulary,
            jobs,
            shared,
            info,
            queue: config.queue,
            load_ms,
            kv_cache,
        })
    }

    /// The KV cache the slots have (the configured one, unless the model's heads need
    /// another).
    pub fn kv_cache(&self) -> KvCache {
        self.kv_cache
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
fn head_widths(model: &LlamaModel) -> (u32, u32) {
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

/// `MemAvailable` from /proc/meminfo, in bytes.
fn memory_available() -> Option<u64> {
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
fn fit_to_memory(model: &LlamaModel, kv_cache: KvCache, slots: usize, context: usize) -> usize {
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

impl Engine for LlamaEngine {
    fn info(&self) -> EngineInfo {
        self.info.clone()
    }

    fn health(&self) -> Health {
        self.shared.health()
    }

    fn stats(&self) -> EngineStats {
        self.shared.stats()
    }

    /// The model's own template (through llama.cpp), with message content kept apart: the
    /// template is rendered around markers, and what stands at each marker is content.
    fn render_chat(&self, turns: &[ChatTurn]) -> Result<Prompt, EngineError> {
        if turns.iter().any(|t| {
            t.content.contains([SENTINEL_OPEN, SENTINEL_CLOSE])
                || t.role.contains([SENTINEL_OPEN, SENTINEL_CLOSE])
        }) {
            return Err(EngineError::Input(
                "a message contains a reserved private-use character (U+F8F0 or U+F8F1)".into(),
            ));
        }
        let template = self
            .model
            .chat_template(None)
            .map_err(|e| EngineError::Input(format!("the model has no chat template: {e}")))?;
        let messages = turns
            .iter()
            .enumerate()
            .map(|(i, t)| {
                LlamaChatMessage::new(
                    t.role.clone(),
                    format!("{SENTINEL_OPEN}{i}{SENTINEL_CLOSE}"),
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EngineError::Input(format!("a message cannot be rendered: {e}")))?;
        let rendered = self
            .model
            .apply_chat_template(&template, &messages, true)
            .map_err(|e| EngineError::Input(format!("the chat template failed: {e}")))?;
        let mut prompt = Prompt::new();
        let mut rest = rendered.as_str();
        let mut next = 0usize;
        while let Some(open) = rest.find(SENTINEL_OPEN) {
            prompt.push_markup(&rest[..open]);
            let after = &rest[open + SENTINEL_OPEN.len_utf8()..];
            let close = after
                .find(SENTINEL_CLOSE)
                .ok_or_else(|| EngineError::Input("the chat template mangled a message".into()))?;
            let index: usize = after[..close]
                .parse()
                .map_err(|_| EngineError::Input("the chat template mangled a message".into()))?;
            if index != next || index >= turns.len() {
                return Err(EngineError::Input(
                    "the chat template reorders or drops messages".into(),
                ));
            }
            prompt.push_content(&turns[index].content);
            next += 1;
            rest = &after[close + SENTINEL_CLOSE.len_utf8()..];
        }
        prompt.push_markup(rest);
        if next != turns.len() {
            return Err(EngineError::Input(
                "the chat template drops messages".into(),
            ));
        }
        Ok(prompt.with_chat(turns))
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

    fn start(&self, request: GenerationRequest) -> Result<Generation, EngineError> {
        if let Health::Failed(reason) = self.shared.health() {
            return Err(EngineError::Stopped(reason));
        }
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
        if !self.shared.try_enqueue(self.queue) {
            return Err(EngineError::Overloaded);
        }
        let (events, receiver) = channel::channel(EVENT_BUFFER);
        let job = Job {
            request,
            tokens,
            events,
        };
        if self.jobs.send(job).is_err() {
            self.shared.dequeued();
            return Err(EngineError::Stopped("the scheduler has stopped".into()));
        }
        Ok(Generation { events: receiver })
    }
}

/// Requests waiting for a slot (for the queue bound).
pub(crate) fn add_saturating(counter: &AtomicUsize, limit: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok()
}

/// The context's size for a scheduler, as llama.cpp wants it.
pub(crate) fn context_positions(slots: usize, per_slot: usize) -> Option<NonZeroU32> {
    NonZeroU32::new(u32::try_from(slots * per_slot).unwrap_or(u32::MAX))
}
