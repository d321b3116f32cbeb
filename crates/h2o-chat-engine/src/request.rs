//! What a generation is asked for and what it produces, independent of the model backend.

use std::sync::Arc;
use std::time::Duration;

use h2o_chat_protocol::{FinishReason, Token};

use crate::constraint::Constraint;
use crate::prompt::Prompt;

/// TGI's sampling parameters (protocol §c), already validated by the server.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SamplingParams {
    pub temperature: Option<f32>,
    pub top_k: Option<u32>,
    pub top_p: Option<f32>,
    pub typical_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub do_sample: bool,
    /// `None`: a random seed is drawn (and reported when sampling).
    pub seed: Option<u64>,
}

impl SamplingParams {
    /// TGI samples when `do_sample` is set or any warper is active (temperature ≠ 1, top_k,
    /// top_p, typical_p); otherwise it decodes greedily.
    pub fn is_sampling(&self) -> bool {
        self.do_sample
            || self.temperature.is_some_and(|t| t != 1.0)
            || self.top_k.is_some()
            || self.top_p.is_some()
            || self.typical_p.is_some()
    }
}

/// A prompt's length for one model, and its token ids when the engine has a tokenizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    /// Tokens in the prompt (an estimate for engines without the model's tokenizer).
    pub count: usize,
    /// The ids, in order; `None` when the engine cannot know them (a remote model).
    pub ids: Option<Arc<[u32]>>,
}

impl Tokenized {
    /// A count without ids.
    pub fn counted(count: usize) -> Self {
        Tokenized { count, ids: None }
    }

    /// Ids, counted.
    pub fn ids(ids: Vec<u32>) -> Self {
        Tokenized {
            count: ids.len(),
            ids: Some(ids.into()),
        }
    }

    /// TGI's left truncation: only the last `keep` tokens.
    pub fn keep_last(self, keep: usize) -> Self {
        if self.count <= keep {
            return self;
        }
        Tokenized {
            count: keep,
            ids: self.ids.map(|ids| ids[ids.len() - keep..].into()),
        }
    }
}

/// Whose evaluated prompts a request may reuse. An engine with a prompt cache reuses a
/// cached prefix only within its scope: reusing another's would tell a client, through
/// `cached_tokens` and through the time to its first token, what someone else's prompt
/// began with. Requests that name nobody share the anonymous scope.
///
/// ```
/// use h2o_chat_engine::CacheScope;
///
/// assert_eq!(CacheScope::anonymous(), CacheScope::default());
/// assert_ne!(CacheScope::of("user", "alice"), CacheScope::of("user", "bob"));
/// assert_ne!(CacheScope::of("user", "alice"), CacheScope::of("salt", "alice"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct CacheScope(Option<Arc<str>>);

impl CacheScope {
    /// Every request that names nobody.
    pub const fn anonymous() -> Self {
        CacheScope(None)
    }

    /// The scope `name` of a `kind` of owner (a session, an API user, a salt, a key).
    pub fn of(kind: &str, name: &str) -> Self {
        CacheScope(Some(format!("{kind}:{name}").into()))
    }

    pub fn is_anonymous(&self) -> bool {
        self.0.is_none()
    }
}

/// One generation to run.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    /// The prompt: a rendered chat (markup and content), or TGI's raw `inputs`.
    pub prompt: Prompt,
    /// The prompt as [`crate::Engine::tokenize`] returned it, already truncated, when the
    /// caller has it (tokenising twice costs time on the engine's thread).
    pub tokens: Option<Tokenized>,
    pub sampling: SamplingParams,
    pub max_new_tokens: u32,
    /// Stop strings: generation ends when the output ends with one of them.
    pub stop: Vec<String>,
    /// Keep only the last `truncate` prompt tokens.
    pub truncate: Option<usize>,
    /// What this request probably continues (a conversation id): a scheduler prefers the
    /// sequence it served before, whose cache holds the shared prefix.
    pub cache_hint: Option<String>,
    /// Whose cached prompts it may reuse.
    pub cache_scope: CacheScope,
    /// What the answer must follow, if anything.
    pub constraint: Option<Constraint>,
    /// How many likeliest alternatives to report with each token (TGI's `top_n_tokens`,
    /// OpenAI's `top_logprobs`); 0 for none.
    pub top_tokens: u8,
    /// Report the prompt's tokens with their log-probabilities (TGI's
    /// `decoder_input_details`): a [`GenerationEvent::Prefill`] before the first token. The
    /// prompt is then evaluated whole, none of it reused from a cache (a cached prefix has no
    /// logits left to read).
    pub prompt_logprobs: bool,
}

impl GenerationRequest {
    /// A request with TGI's defaults around a prompt.
    pub fn new(prompt: Prompt, max_new_tokens: u32) -> Self {
        GenerationRequest {
            prompt,
            tokens: None,
            sampling: SamplingParams::default(),
            max_new_tokens,
            stop: Vec::new(),
            truncate: None,
            cache_hint: None,
            cache_scope: CacheScope::anonymous(),
            constraint: None,
            top_tokens: 0,
            prompt_logprobs: false,
        }
    }
}

/// The end of a generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub reason: FinishReason,
    pub generated_tokens: u32,
    /// The seed used when sampling; `None` for greedy decoding.
    pub seed: Option<u64>,
    /// All generated tokens decoded with special tokens skipped.
    pub generated_text: String,
    /// Prompt tokens after truncation.
    pub input_tokens: u32,
    /// Prompt tokens whose evaluation was reused from an earlier request (prompt cache).
    pub cached_tokens: u32,
}

/// Why a started generation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GenerationFailure {
    /// A remote server answered with an error status before any token (relays). Servers
    /// pass the status on, as chat-ui relays TGI's (§a.4 step 9).
    #[error("upstream HTTP {status}: {message}")]
    Upstream {
        status: u16,
        retry_after: Option<Duration>,
        message: String,
    },
    /// A remote server refused the request itself (its own validation): the client's
    /// error, which another server would refuse too.
    #[error("{0}")]
    Invalid(String),
    /// Generation failed (TGI's `generation` error).
    #[error("{0}")]
    Generation(String),
    /// The reader did not take events for this long, so the sequence was given up to keep
    /// the others going.
    #[error("the client did not read its stream for {} s", waited.as_secs())]
    Stalled { waited: Duration },
}

/// What a running generation sends.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    /// A token that is not the last. Its text is decoded incrementally and may be empty.
    Token(Token),
    /// The last token and the summary.
    Finished(Token, Finish),
    /// Generation failed after starting; nothing follows.
    Failed(GenerationFailure),
    /// The likeliest tokens at the position of the token that follows (its own included),
    /// most likely first, with their log-probabilities — sent just before that `Token` or
    /// `Finished`, only when the request asked for them.
    Alternatives(Vec<Token>),
    /// The prompt's tokens as the model read them, each with its log-probability given the
    /// tokens before it (the first has none) — sent once, before the first token, only when
    /// the request asked for it ([`GenerationRequest::prompt_logprobs`]).
    Prefill(Vec<Token>),
}
