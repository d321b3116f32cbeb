//! What a generation is asked for and what it produces, independent of the model backend.

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

/// One generation to run.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    /// The full prompt text (already rendered with the chat template, or raw TGI `inputs`).
    pub prompt: String,
    pub sampling: SamplingParams,
    pub max_new_tokens: u32,
    /// Stop strings: generation ends when the output ends with one of them.
    pub stop: Vec<String>,
    /// Keep only the last `truncate` prompt tokens.
    pub truncate: Option<usize>,
}

/// One generated token as the stream reports it (§b.2).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenOut {
    pub id: u32,
    /// Decoded incrementally: never half a UTF-8 character; may be empty.
    pub text: String,
    pub logprob: f32,
    pub special: bool,
}

/// Why generation ended (§b.3 order: length, then EOS, then stop sequence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Length,
    EosToken,
    StopSequence,
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
}

/// What a running generation sends.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    /// A token that is not the last.
    Token(TokenOut),
    /// The last token and the summary.
    Finished(TokenOut, Finish),
    /// Generation failed after starting.
    Failed(String),
}
