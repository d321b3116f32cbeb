//! The rules a request must pass, as data: pure functions of the request's parameters, the
//! server's [`Limits`] and the model's context length — no engine calls, no I/O. Rules run
//! in TGI's order, so the first violation is the one TGI reported (protocol §c):
//!
//! 1. [`check_rules`]: TGI's parameter rules (`best_of`, `temperature`, … `stop`), for the
//!    fronts that take TGI's parameters;
//! 2. [`check_input`]: a prompt is given, `truncate` in range — before tokenising;
//! 3. [`check_lengths`]: the prompt's tokens and `max_new_tokens` fit — after
//!    tokenising ([`crate::prepare`]).
//!
//! The token budget of a conversation's history window is [`Budget`], computed once with
//! every cap. Each front words a [`ValidationError`] for its own wire.
//!
//! ```
//! use h2o_chat_server::validation::{ValidationError, check_rules};
//! use h2o_chat_protocol::GenerateParameters;
//! use h2o_chat_server::Limits;
//!
//! let parameters = GenerateParameters { temperature: Some(0.0), ..Default::default() };
//! let err = check_rules(&parameters, true, &Limits::default()).unwrap_err();
//! assert_eq!(err, ValidationError::Temperature);
//! assert_eq!(err.to_string(), "`temperature` must be strictly positive");
//! ```

use h2o_chat_engine::SamplingParams;
use h2o_chat_protocol::GenerateParameters;

use crate::config::Limits;
use crate::plan::{Input, MaxNewTokens, Plan};

/// A rule violation, one variant per rule of §c (in TGI's order), with TGI's wording of
/// the rule (TGI's wire puts "Input validation error: " before it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("`best_of` != 1 is not supported when streaming tokens")]
    BestOfStreaming,
    #[error("`decoder_input_details` == true is not supported when streaming tokens")]
    DecoderInputDetailsStreaming,
    #[error("`best_of` must be > 0 and <= {max}. Given: {given}")]
    BestOf { max: usize, given: usize },
    #[error("you must use sampling when `best_of` is > 1")]
    BestOfNeedsSampling,
    #[error("`temperature` must be strictly positive")]
    Temperature,
    #[error("`repetition_penalty` must be strictly positive")]
    RepetitionPenalty,
    #[error("`top_p` must be > 0.0 and < 1.0")]
    TopP,
    #[error("`typical_p` must be > 0.0 and < 1.0")]
    TypicalP,
    #[error("`top_k` must be strictly positive")]
    TopK,
    #[error("`max_new_tokens` must be strictly positive")]
    MaxNewTokens,
    #[error("`stop` supports up to {max} stop sequences. Given: {given}")]
    StopSequences { max: usize, given: usize },
    #[error("`seed` must not be set when `best_of` > 1")]
    SeedWithBestOf,
    /// TGI would generate `best_of` sequences and return the likeliest; this server
    /// generates one, so it says so instead of silently ignoring the request.
    #[error("`best_of` > 1 is not supported by this server")]
    BestOfUnsupported,
    #[error("`inputs` cannot be empty")]
    EmptyInputs,
    #[error("`truncate` must be strictly positive and less than {max}. Given: {given}")]
    Truncate { max: usize, given: usize },
    #[error(
        "`inputs` tokens + `max_new_tokens` must be <= {max}. Given: {inputs} `inputs` tokens and {new_tokens} `max_new_tokens`"
    )]
    TotalTokens {
        max: usize,
        inputs: usize,
        new_tokens: usize,
    },
    #[error("`inputs` must have less than {max} tokens. Given: {given}")]
    InputLength { max: usize, given: usize },
    /// The prompt could not be rendered or tokenised.
    #[error("{0}")]
    Prompt(String),
    /// The server this one relays to refused the request (its own rules, its wording).
    #[error("{0}")]
    Refused(String),
    /// A stop sequence longer than the server takes.
    #[error("`stop` sequences must be at most {max} bytes. Given: {given}")]
    StopTooLong { max: usize, given: usize },
    /// `top_n_tokens` above the server's cap.
    #[error("`top_n_tokens` must be >= 0 and <= {max}. Given: {given}")]
    TopNTokens { max: u32, given: u32 },
    /// A grammar (TGI's `grammar`, OpenAI's `response_format` or `tools`) that cannot be
    /// compiled, or that this model cannot enforce.
    #[error("grammar is not valid: {0}")]
    Grammar(String),
}

impl ValidationError {
    /// The request field the rule is about (for OpenAI's `param`).
    pub fn parameter(&self) -> &'static str {
        match self {
            ValidationError::BestOfStreaming
            | ValidationError::BestOf { .. }
            | ValidationError::BestOfNeedsSampling
            | ValidationError::BestOfUnsupported => "best_of",
            ValidationError::DecoderInputDetailsStreaming => "decoder_input_details",
            ValidationError::Temperature => "temperature",
            ValidationError::RepetitionPenalty => "repetition_penalty",
            ValidationError::TopP => "top_p",
            ValidationError::TypicalP => "typical_p",
            ValidationError::TopK => "top_k",
            ValidationError::MaxNewTokens => "max_new_tokens",
            ValidationError::StopSequences { .. } => "stop",
            ValidationError::SeedWithBestOf => "seed",
            ValidationError::EmptyInputs
            | ValidationError::InputLength { .. }
            | ValidationError::Prompt(_)
            | ValidationError::Refused(_) => "inputs",
            ValidationError::Truncate { .. } => "truncate",
            ValidationError::TopNTokens { .. } => "top_n_tokens",
            ValidationError::StopTooLong { .. } => "stop",
            ValidationError::Grammar(_) => "grammar",
            ValidationError::TotalTokens { .. } => "max_new_tokens",
        }
    }

    /// Whether the request is too long for the model (OpenAI's `context_length_exceeded`).
    pub fn is_too_long(&self) -> bool {
        matches!(
            self,
            ValidationError::TotalTokens { .. } | ValidationError::InputLength { .. }
        )
    }
}

/// The rules that need no tokenizer, in TGI's order (up to the `inputs` check), for the
/// fronts that take TGI's parameters. Returns the sampling they ask for.
pub fn check_rules(
    parameters: &GenerateParameters,
    streaming: bool,
    limits: &Limits,
) -> Result<SamplingParams, ValidationError> {
    let best_of = parameters.best_of.unwrap_or(1);
    if streaming && best_of != 1 {
        return Err(ValidationError::BestOfStreaming);
    }
    if streaming && parameters.decoder_input_details {
        return Err(ValidationError::DecoderInputDetailsStreaming);
    }
    if best_of == 0 || best_of > limits.max_best_of {
        return Err(ValidationError::BestOf {
            max: limits.max_best_of,
            given: best_of,
        });
    }
    let sampling = SamplingParams {
        temperature: parameters.temperature,
        top_k: parameters.top_k.map(|k| k.max(0) as u32),
        top_p: parameters.top_p,
        typical_p: parameters.typical_p,
        repetition_penalty: parameters.repetition_penalty,
        do_sample: parameters.do_sample,
        seed: parameters.seed,
    };
    if best_of > 1 && !sampling.is_sampling() {
        return Err(ValidationError::BestOfNeedsSampling);
    }
    if parameters.temperature.is_some_and(|t| t <= 0.0) {
        return Err(ValidationError::Temperature);
    }
    if parameters.repetition_penalty.is_some_and(|p| p <= 0.0) {
        return Err(ValidationError::RepetitionPenalty);
    }
    if parameters.top_p.is_some_and(|p| p <= 0.0 || p >= 1.0) {
        return Err(ValidationError::TopP);
    }
    if parameters.typical_p.is_some_and(|p| p <= 0.0 || p >= 1.0) {
        return Err(ValidationError::TypicalP);
    }
    if parameters.top_k.is_some_and(|k| k <= 0) {
        return Err(ValidationError::TopK);
    }
    if parameters.max_new_tokens == 0 {
        return Err(ValidationError::MaxNewTokens);
    }
    if parameters.stop.len() > limits.max_stop_sequences {
        return Err(ValidationError::StopSequences {
            max: limits.max_stop_sequences,
            given: parameters.stop.len(),
        });
    }
    if best_of > 1 && parameters.seed.is_some() {
        return Err(ValidationError::SeedWithBestOf);
    }
    let top_n = parameters.top_n_tokens.unwrap_or(0);
    if top_n > limits.max_top_n_tokens {
        return Err(ValidationError::TopNTokens {
            max: limits.max_top_n_tokens,
            given: top_n,
        });
    }
    if best_of > 1 {
        return Err(ValidationError::BestOfUnsupported);
    }
    Ok(sampling)
}

/// The longest stop sequence taken, in bytes (each is looked for at every token).
pub const MAX_STOP_BYTES: usize = 256;

/// A prompt is given and `truncate` is in range (TGI checks both before tokenising); the
/// stop sequences are within the server's limits, whichever front gave them.
pub fn check_input(plan: &Plan, limits: &Limits) -> Result<(), ValidationError> {
    if plan.stop.len() > limits.max_stop_sequences {
        return Err(ValidationError::StopSequences {
            max: limits.max_stop_sequences,
            given: plan.stop.len(),
        });
    }
    if let Some(long) = plan
        .stop
        .iter()
        .map(String::len)
        .find(|&n| n > MAX_STOP_BYTES)
    {
        return Err(ValidationError::StopTooLong {
            max: MAX_STOP_BYTES,
            given: long,
        });
    }
    let empty = match &plan.input {
        Input::Raw(text) => text.is_empty(),
        Input::Chat(turns) | Input::History(turns) => turns.is_empty(),
    };
    if empty {
        return Err(ValidationError::EmptyInputs);
    }
    if let Some(truncate) = plan.truncate
        && (truncate == 0 || truncate > limits.max_input_length)
    {
        return Err(ValidationError::Truncate {
            max: limits.max_input_length,
            given: truncate,
        });
    }
    Ok(())
}

/// The positions one request may use, prompt and answer together: the configured
/// `max_total_tokens`, and the engine's own sequence length when it says (0 = unknown).
pub fn max_total_tokens(limits: &Limits, context_length: usize) -> usize {
    match context_length {
        0 => limits.max_total_tokens,
        context => limits.max_total_tokens.min(context),
    }
}

/// How many prompt tokens a conversation's history window may hold: what TGI's input and
/// total limits, the engine's context and `truncate` leave after the answer's room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget(pub usize);

impl Budget {
    pub fn of(plan: &Plan, limits: &Limits, context_length: usize) -> Budget {
        let total = max_total_tokens(limits, context_length);
        let mut budget = limits
            .max_input_length
            .min(total.saturating_sub(plan.max_new_tokens.length as usize));
        if let Some(truncate) = plan.truncate.filter(|&t| t > 0) {
            budget = budget.min(truncate);
        }
        Budget(budget)
    }
}

/// The prompt (`input_tokens`, after truncation) and the answer fit. Returns the answer's
/// room: `max_new_tokens`, lowered to what fits when it is a default.
pub fn check_lengths(
    input_tokens: usize,
    max_new_tokens: MaxNewTokens,
    limits: &Limits,
    context_length: usize,
) -> Result<u32, ValidationError> {
    let max_total = max_total_tokens(limits, context_length);
    let fit = max_new_tokens.is_default;
    let mut max_new_tokens = max_new_tokens.length as usize;
    if fit && input_tokens < max_total {
        max_new_tokens = max_new_tokens.min(max_total - input_tokens);
    }
    if input_tokens + max_new_tokens > max_total {
        return Err(ValidationError::TotalTokens {
            max: max_total,
            inputs: input_tokens,
            new_tokens: max_new_tokens,
        });
    }
    if input_tokens > limits.max_input_length {
        return Err(ValidationError::InputLength {
            max: limits.max_input_length,
            given: input_tokens,
        });
    }
    Ok(u32::try_from(max_new_tokens).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use h2o_chat_engine::ChatTurn;

    fn plan(max_new_tokens: u32) -> Plan {
        Plan {
            input: Input::Raw("hello".into()),
            sampling: SamplingParams::default(),
            max_new_tokens: MaxNewTokens::given(max_new_tokens),
            stop: Vec::new(),
            truncate: None,
            cache_hint: None,
            cache_scope: h2o_chat_engine::CacheScope::anonymous(),
            constraint: None,
            top_tokens: 0,
            prompt_logprobs: false,
        }
    }

    #[test]
    fn best_of_above_one_is_refused_on_generate_too() {
        let parameters = GenerateParameters {
            best_of: Some(2),
            do_sample: true,
            ..Default::default()
        };
        assert_eq!(
            check_rules(&parameters, false, &Limits::default()),
            Err(ValidationError::BestOfUnsupported)
        );
    }

    #[test]
    fn rules_run_in_tgi_order() {
        let parameters = GenerateParameters {
            temperature: Some(0.0),
            top_k: Some(0),
            ..Default::default()
        };
        assert_eq!(
            check_rules(&parameters, true, &Limits::default()),
            Err(ValidationError::Temperature)
        );
    }

    #[test]
    fn an_empty_prompt_or_conversation_is_refused() {
        let limits = Limits::default();
        let mut empty = plan(20);
        empty.input = Input::Raw(String::new());
        assert_eq!(
            check_input(&empty, &limits),
            Err(ValidationError::EmptyInputs)
        );
        empty.input = Input::Chat(Vec::new());
        assert_eq!(
            check_input(&empty, &limits),
            Err(ValidationError::EmptyInputs)
        );
        let mut chat = plan(20);
        chat.input = Input::Chat(vec![ChatTurn::new("user", "Hi")]);
        assert_eq!(check_input(&chat, &limits), Ok(()));
    }

    #[test]
    fn truncate_must_be_positive_and_within_the_input_limit() {
        let limits = Limits::default();
        for given in [0, 4096] {
            let mut truncated = plan(20);
            truncated.truncate = Some(given);
            let err = check_input(&truncated, &limits).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("`truncate` must be strictly positive and less than 2048. Given: {given}")
            );
        }
    }

    #[test]
    fn the_engine_context_caps_the_total_and_the_window() {
        let limits = Limits::default();
        assert_eq!(max_total_tokens(&limits, 0), 4096, "unknown: the limit");
        assert_eq!(max_total_tokens(&limits, 1024), 1024);
        // A window leaves room for the answer within the smaller of the two.
        assert_eq!(Budget::of(&plan(24), &limits, 1024), Budget(1000));
        assert_eq!(Budget::of(&plan(24), &limits, 0), Budget(2048));
        let mut truncated = plan(24);
        truncated.truncate = Some(100);
        assert_eq!(Budget::of(&truncated, &limits, 1024), Budget(100));
        assert_eq!(
            check_lengths(1001, MaxNewTokens::given(24), &limits, 1024),
            Err(ValidationError::TotalTokens {
                max: 1024,
                inputs: 1001,
                new_tokens: 24
            })
        );
    }

    #[test]
    fn a_default_answer_length_shrinks_to_fit_and_a_given_one_does_not() {
        let limits = Limits::default();
        assert_eq!(
            check_lengths(1000, MaxNewTokens::default_of(512), &limits, 1024),
            Ok(24)
        );
        assert!(check_lengths(1000, MaxNewTokens::given(512), &limits, 1024).is_err());
        assert_eq!(
            check_lengths(2049, MaxNewTokens::given(1), &limits, 0),
            Err(ValidationError::InputLength {
                max: 2048,
                given: 2049
            })
        );
    }
}
