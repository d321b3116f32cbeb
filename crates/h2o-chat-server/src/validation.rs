//! TGI's request validation (protocol §c), as data in one place.
//!
//! Two kinds of failure, as in TGI: a *type* error (wrong JSON type, negative or fractional
//! integer, `null` where a value is required) is rejected before anything streams, with
//! HTTP 422 and serde's message ([`parse_tgi_body`]); a *rule* violation is a
//! [`ValidationError`], one variant per rule carrying its values, whose text is TGI's. Rules
//! run in TGI's order, so the first message is the one TGI gave. Every route family goes
//! through [`validate`]: the OpenAI mapper builds TGI parameters first. Each protocol maps
//! the error to its own status in one place (`routes/*`).
//!
//! Tokenising is the one costly rule: it runs off the async runtime, at most
//! `validation_workers` at a time, like TGI's validation workers.
//!
//! ```
//! use h2o_chat_server::validation::{ValidationError, check_rules};
//! use h2o_chat_protocol::GenerateParameters;
//! use h2o_chat_server::Limits;
//!
//! let parameters = GenerateParameters { temperature: Some(0.0), ..Default::default() };
//! let err = check_rules(&parameters, true, &Limits::default()).unwrap_err();
//! assert_eq!(err, ValidationError::Temperature);
//! assert_eq!(err.to_string(), "Input validation error: `temperature` must be strictly positive");
//! ```

use std::sync::Arc;

use h2o_chat_engine::{Engine, EngineError, GenerationRequest, Prompt, SamplingParams, Tokenized};
use h2o_chat_protocol::{CompatGenerateRequest, GenerateParameters};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::config::Limits;

/// A rule violation, one variant per rule of §c (in TGI's order), with TGI's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("Input validation error: `best_of` != 1 is not supported when streaming tokens")]
    BestOfStreaming,
    #[error(
        "Input validation error: `decoder_input_details` == true is not supported when streaming tokens"
    )]
    DecoderInputDetailsStreaming,
    #[error("Input validation error: `best_of` must be > 0 and <= {max}. Given: {given}")]
    BestOf { max: usize, given: usize },
    #[error("Input validation error: you must use sampling when `best_of` is > 1")]
    BestOfNeedsSampling,
    #[error("Input validation error: `temperature` must be strictly positive")]
    Temperature,
    #[error("Input validation error: `repetition_penalty` must be strictly positive")]
    RepetitionPenalty,
    #[error("Input validation error: `top_p` must be > 0.0 and < 1.0")]
    TopP,
    #[error("Input validation error: `typical_p` must be > 0.0 and < 1.0")]
    TypicalP,
    #[error("Input validation error: `top_k` must be strictly positive")]
    TopK,
    #[error("Input validation error: `max_new_tokens` must be strictly positive")]
    MaxNewTokens,
    #[error("Input validation error: `stop` supports up to {max} stop sequences. Given: {given}")]
    StopSequences { max: usize, given: usize },
    #[error("Input validation error: `seed` must not be set when `best_of` > 1")]
    SeedWithBestOf,
    /// TGI would generate `best_of` sequences and return the likeliest; this server
    /// generates one, so it says so instead of silently ignoring the request.
    #[error("Input validation error: `best_of` > 1 is not supported by this server")]
    BestOfUnsupported,
    #[error("Input validation error: `inputs` cannot be empty")]
    EmptyInputs,
    #[error(
        "Input validation error: `truncate` must be strictly positive and less than {max}. Given: {given}"
    )]
    Truncate { max: usize, given: usize },
    #[error(
        "Input validation error: `inputs` tokens + `max_new_tokens` must be <= {max}. Given: {inputs} `inputs` tokens and {new_tokens} `max_new_tokens`"
    )]
    TotalTokens {
        max: usize,
        inputs: usize,
        new_tokens: usize,
    },
    #[error("Input validation error: `inputs` must have less than {max} tokens. Given: {given}")]
    InputLength { max: usize, given: usize },
    /// The prompt could not be rendered or tokenised.
    #[error("Input validation error: {0}")]
    Prompt(String),
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
            | ValidationError::Prompt(_) => "inputs",
            ValidationError::Truncate { .. } => "truncate",
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

/// A type error: HTTP 422 `text/plain`, the message axum/TGI gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeError(pub String);

/// Parses a TGI body the way TGI's axum `Json` extractor did: syntax errors and type errors
/// both end in [`TypeError`] with axum's wording.
pub fn parse_tgi_body(bytes: &[u8]) -> Result<CompatGenerateRequest, TypeError> {
    let syntax = |err: serde_json::Error| {
        TypeError(format!("Failed to parse the request body as JSON: {err}"))
    };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let body = serde_path_to_error::deserialize::<_, CompatGenerateRequest>(&mut deserializer)
        .map_err(|err| {
            if err.inner().is_data() {
                TypeError(format!(
                    "Failed to deserialize the JSON body into the target type: {err}"
                ))
            } else {
                syntax(err.into_inner())
            }
        })?;
    deserializer.end().map_err(syntax)?;
    Ok(body)
}

/// `parameters` relayed by chat-ui (§a.4 step 8): absent or null means TGI's defaults.
pub fn parse_relayed_parameters(value: Option<&Value>) -> Result<GenerateParameters, TypeError> {
    match value {
        None | Some(Value::Null) => Ok(GenerateParameters::default()),
        Some(value) => serde_path_to_error::deserialize(value).map_err(|err| {
            TypeError(format!(
                "Failed to deserialize the JSON body into the target type: parameters.{err}"
            ))
        }),
    }
}

/// chat-ui re-serialises the body in JavaScript before relaying it, so a whole-valued float
/// (`2048.0`) reaches TGI as an integer (§c). Applied to the chat-ui route's parameters.
pub fn normalize_whole_floats(value: &mut Value) {
    match value {
        Value::Number(n) => {
            if let Some(f) = n.as_f64()
                && !n.is_i64()
                && !n.is_u64()
                && f.fract() == 0.0
                && f.abs() < 9.0e15
            {
                *value = if f < 0.0 {
                    Value::from(f as i64)
                } else {
                    Value::from(f as u64)
                };
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_whole_floats),
        Value::Object(map) => map.values_mut().for_each(normalize_whole_floats),
        _ => {}
    }
}

/// A request that passed every rule, ready for the engine.
#[derive(Debug, Clone)]
pub struct Validated {
    /// Prompt, its tokens (truncated), sampling, length, stops.
    pub request: GenerationRequest,
    pub details: bool,
    pub return_full_text: bool,
    /// Prompt tokens after truncation.
    pub input_tokens: usize,
    /// Whether truncation dropped prompt tokens.
    pub truncated: bool,
}

/// Why a request cannot start: a rule, or an engine that cannot tokenise now.
#[derive(Debug)]
pub enum Rejection {
    Invalid(ValidationError),
    Unavailable(EngineError),
}

impl From<ValidationError> for Rejection {
    fn from(err: ValidationError) -> Self {
        Rejection::Invalid(err)
    }
}

/// The rules that need no tokenizer, in TGI's order (up to the `inputs` check).
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
    if best_of > 1 {
        return Err(ValidationError::BestOfUnsupported);
    }
    Ok(sampling)
}

/// What [`validate`] needs besides the parameters.
pub struct Validation<'a> {
    pub engine: &'a Arc<dyn Engine>,
    pub limits: &'a Limits,
    /// Bounds the tokenisations running at once.
    pub workers: &'a Arc<Semaphore>,
    pub streaming: bool,
    /// `return_full_text` when the request leaves it out (true on TGI's `/`).
    pub default_full_text: bool,
    /// `max_new_tokens` is a default, not the client's: lower it to what fits after the
    /// prompt instead of refusing (OpenAI's `max_tokens` when absent).
    pub fit_max_new_tokens: bool,
}

/// Applies §c's rules in TGI's order, tokenising the prompt off the async runtime.
pub async fn validate(
    prompt: Prompt,
    tokens: Option<Tokenized>,
    parameters: &GenerateParameters,
    how: Validation<'_>,
) -> Result<Validated, Rejection> {
    let limits = how.limits;
    let sampling = check_rules(parameters, how.streaming, limits)?;
    if prompt.is_empty() {
        return Err(ValidationError::EmptyInputs.into());
    }
    if let Some(truncate) = parameters.truncate
        && (truncate == 0 || truncate > limits.max_input_length)
    {
        return Err(ValidationError::Truncate {
            max: limits.max_input_length,
            given: truncate,
        }
        .into());
    }
    let (prompt, tokens) = match tokens {
        Some(tokens) => (prompt, tokens),
        None => tokenize(how.engine, how.workers, prompt).await?,
    };
    let counted = tokens.count;
    let tokens = match parameters.truncate {
        Some(keep) => tokens.keep_last(keep),
        None => tokens,
    };
    let input_tokens = tokens.count;
    // The engine's own sequences may be shorter than the configured limit.
    let max_total = limits
        .max_total_tokens
        .min(context_of(how.engine).unwrap_or(usize::MAX));
    let mut max_new_tokens = parameters.max_new_tokens as usize;
    if how.fit_max_new_tokens && input_tokens < max_total {
        max_new_tokens = max_new_tokens.min(max_total - input_tokens);
    }
    if input_tokens + max_new_tokens > max_total {
        return Err(ValidationError::TotalTokens {
            max: max_total,
            inputs: input_tokens,
            new_tokens: max_new_tokens,
        }
        .into());
    }
    if input_tokens > limits.max_input_length {
        return Err(ValidationError::InputLength {
            max: limits.max_input_length,
            given: input_tokens,
        }
        .into());
    }
    Ok(Validated {
        request: GenerationRequest {
            prompt,
            tokens: Some(tokens),
            sampling,
            max_new_tokens: max_new_tokens as u32,
            stop: parameters.stop.clone(),
            truncate: parameters.truncate,
            cache_hint: None,
        },
        details: parameters.details,
        return_full_text: parameters.return_full_text.unwrap_or(how.default_full_text),
        input_tokens,
        truncated: input_tokens < counted,
    })
}

/// The positions one sequence of the engine holds, when it says (0 = unknown).
fn context_of(engine: &Arc<dyn Engine>) -> Option<usize> {
    Some(engine.info().context_length).filter(|&n| n > 0)
}

/// Tokenises on a blocking thread, at most `workers` at once.
pub async fn tokenize(
    engine: &Arc<dyn Engine>,
    workers: &Arc<Semaphore>,
    prompt: Prompt,
) -> Result<(Prompt, Tokenized), Rejection> {
    let _permit = workers
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| Rejection::Unavailable(EngineError::Stopped("shutting down".into())))?;
    let engine = engine.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let tokens = engine.tokenize(&prompt);
        (prompt, tokens)
    })
    .await;
    match outcome {
        Ok((prompt, Ok(tokens))) => Ok((prompt, tokens)),
        Ok((_, Err(EngineError::Input(message)))) => Err(ValidationError::Prompt(message).into()),
        Ok((_, Err(err))) => Err(Rejection::Unavailable(err)),
        Err(join) => Err(Rejection::Unavailable(EngineError::Stopped(format!(
            "tokenisation failed: {join}"
        )))),
    }
}

/// Renders a chat with the engine's template on a blocking thread, bounded like
/// tokenisation.
pub async fn render_chat(
    engine: &Arc<dyn Engine>,
    workers: &Arc<Semaphore>,
    turns: Vec<h2o_chat_engine::ChatTurn>,
) -> Result<Prompt, Rejection> {
    let _permit = workers
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| Rejection::Unavailable(EngineError::Stopped("shutting down".into())))?;
    let engine = engine.clone();
    match tokio::task::spawn_blocking(move || engine.render_chat(&turns)).await {
        Ok(Ok(prompt)) => Ok(prompt),
        Ok(Err(EngineError::Input(message))) => Err(ValidationError::Prompt(message).into()),
        Ok(Err(err)) => Err(Rejection::Unavailable(err)),
        Err(join) => Err(Rejection::Unavailable(EngineError::Stopped(format!(
            "rendering failed: {join}"
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use h2o_chat_engine::{Script, ScriptedEngine};

    async fn check(params: Value) -> Result<Validated, String> {
        let body = serde_json::json!({"inputs": "hello", "parameters": params}).to_string();
        let parsed = parse_tgi_body(body.as_bytes()).map_err(|e| e.0)?;
        let engine: Arc<dyn Engine> = Arc::new(ScriptedEngine::new(Script::default()));
        let workers = Arc::new(Semaphore::new(1));
        validate(
            Prompt::raw(parsed.inputs),
            None,
            &parsed.parameters,
            Validation {
                engine: &engine,
                limits: &Limits::default(),
                workers: &workers,
                streaming: true,
                default_full_text: false,
                fit_max_new_tokens: false,
            },
        )
        .await
        .map_err(|e| match e {
            Rejection::Invalid(e) => e.to_string(),
            Rejection::Unavailable(e) => e.to_string(),
        })
    }

    #[tokio::test]
    async fn rules_and_their_messages() {
        for (params, message) in [
            (
                serde_json::json!({"temperature": 0}),
                "`temperature` must be strictly positive",
            ),
            (
                serde_json::json!({"repetition_penalty": -1.0}),
                "`repetition_penalty` must be strictly positive",
            ),
            (
                serde_json::json!({"top_p": 1.0}),
                "`top_p` must be > 0.0 and < 1.0",
            ),
            (
                serde_json::json!({"typical_p": 0}),
                "`typical_p` must be > 0.0 and < 1.0",
            ),
            (
                serde_json::json!({"top_k": 0}),
                "`top_k` must be strictly positive",
            ),
            (
                serde_json::json!({"max_new_tokens": 0}),
                "`max_new_tokens` must be strictly positive",
            ),
            (
                serde_json::json!({"stop": ["a","b","c","d","e","f","g"]}),
                "`stop` supports up to 6 stop sequences. Given: 7",
            ),
            (
                serde_json::json!({"truncate": 0}),
                "`truncate` must be strictly positive and less than 2048. Given: 0",
            ),
            (
                serde_json::json!({"truncate": 4096}),
                "`truncate` must be strictly positive and less than 2048. Given: 4096",
            ),
            (
                serde_json::json!({"max_new_tokens": 4095}),
                "`inputs` tokens + `max_new_tokens` must be <= 4096. Given: 5 `inputs` tokens and 4095 `max_new_tokens`",
            ),
            (
                serde_json::json!({"best_of": 2}),
                "`best_of` != 1 is not supported when streaming tokens",
            ),
        ] {
            assert_eq!(
                check(params.clone()).await.unwrap_err(),
                format!("Input validation error: {message}"),
                "{params}"
            );
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

    #[tokio::test]
    async fn type_errors_name_the_field() {
        for params in [
            serde_json::json!({"truncate": 2048.0}),
            serde_json::json!({"max_new_tokens": -1}),
            serde_json::json!({"do_sample": null}),
            serde_json::json!({"stop": null}),
            serde_json::json!({"temperature": "hot"}),
        ] {
            let err = check(params.clone()).await.unwrap_err();
            assert!(
                err.starts_with(
                    "Failed to deserialize the JSON body into the target type: parameters."
                ),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn integers_are_accepted_for_float_fields_and_unknown_keys_ignored() {
        let ok = check(serde_json::json!({"temperature": 1, "whatever": [1], "stream": true}))
            .await
            .unwrap();
        assert_eq!(ok.request.sampling.temperature, Some(1.0));
        assert_eq!(ok.request.max_new_tokens, 20, "TGI's default");
    }

    #[test]
    fn chat_ui_relay_turns_whole_floats_into_integers() {
        let mut params = serde_json::json!({"truncate": 2048.0, "temperature": 0.5, "x": [3.0]});
        normalize_whole_floats(&mut params);
        assert_eq!(
            params.to_string(),
            r#"{"truncate":2048,"temperature":0.5,"x":[3]}"#
        );
    }
}
