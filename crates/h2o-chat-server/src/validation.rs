//! TGI's request validation (protocol §c), as data in one place.
//!
//! Two kinds of failure, as in TGI: a *type* error (wrong JSON type, negative or fractional
//! integer, `null` where a value is required) is rejected before anything streams, with
//! HTTP 422 and serde's message; a *rule* violation is a `validation` error (an error event
//! when streaming). Rules run in TGI's order, so the first message is the same one TGI gave.

use serde::Deserialize;
use serde_json::Value;

use crate::config::Limits;
use h2o_chat_engine::{GenerationRequest, SamplingParams};

/// TGI's `parameters` object, with serde types that reproduce its type errors.
#[derive(Debug, Clone, Deserialize)]
pub struct Parameters {
    #[serde(default)]
    pub best_of: Option<usize>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    pub top_k: Option<i32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub typical_p: Option<f32>,
    #[serde(default)]
    pub do_sample: bool,
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: u32,
    #[serde(default)]
    pub return_full_text: Option<bool>,
    #[serde(default)]
    pub stop: Vec<String>,
    #[serde(default)]
    pub truncate: Option<usize>,
    #[serde(default)]
    pub watermark: bool,
    #[serde(default)]
    pub details: bool,
    #[serde(default)]
    pub decoder_input_details: bool,
    #[serde(default)]
    pub seed: Option<u64>,
}

fn default_max_new_tokens() -> u32 {
    20
}

impl Default for Parameters {
    /// What TGI uses when `parameters` is absent: every field's serde default.
    fn default() -> Self {
        Parameters {
            best_of: None,
            temperature: None,
            repetition_penalty: None,
            top_k: None,
            top_p: None,
            typical_p: None,
            do_sample: false,
            max_new_tokens: default_max_new_tokens(),
            return_full_text: None,
            stop: Vec::new(),
            truncate: None,
            watermark: false,
            details: false,
            decoder_input_details: false,
            seed: None,
        }
    }
}

/// A TGI request body (`/generate`, `/generate_stream`, `/`).
#[derive(Debug, Clone, Deserialize)]
pub struct GenerateBody {
    pub inputs: String,
    #[serde(default)]
    pub parameters: Parameters,
    /// Only the compat route `/` reads it.
    #[serde(default)]
    pub stream: bool,
}

/// A type error: HTTP 422 `text/plain`, the message axum/TGI gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeError(pub String);

/// Parses a JSON body the way TGI's axum `Json` extractor did: syntax errors and type errors
/// both end in [`TypeError`] with axum's wording.
pub fn parse_body(bytes: &[u8]) -> Result<GenerateBody, TypeError> {
    let syntax = |err: serde_json::Error| {
        TypeError(format!("Failed to parse the request body as JSON: {err}"))
    };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let body =
        serde_path_to_error::deserialize::<_, GenerateBody>(&mut deserializer).map_err(|err| {
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

/// A rule violation; the message goes after `Input validation error: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Input validation error: {0}")]
pub struct RuleError(pub String);

/// A request that passed every rule.
#[derive(Debug, Clone)]
pub struct Validated {
    pub generation: GenerationRequest,
    pub details: bool,
    pub return_full_text: bool,
    pub best_of: usize,
    pub input_tokens: usize,
}

/// Applies §c's rules in TGI's order. `count_tokens` tokenizes with the serving model.
pub fn validate(
    inputs: &str,
    parameters: &Parameters,
    streaming: bool,
    default_full_text: bool,
    limits: &Limits,
    count_tokens: impl FnOnce(&str) -> Result<usize, String>,
) -> Result<Validated, RuleError> {
    let rule = |message: String| Err(RuleError(message));
    let best_of = parameters.best_of.unwrap_or(1);
    if streaming && best_of != 1 {
        return rule("`best_of` != 1 is not supported when streaming tokens".into());
    }
    if streaming && parameters.decoder_input_details {
        return rule(
            "`decoder_input_details` == true is not supported when streaming tokens".into(),
        );
    }
    if best_of == 0 || best_of > limits.max_best_of {
        return rule(format!(
            "`best_of` must be > 0 and <= {}. Given: {best_of}",
            limits.max_best_of
        ));
    }
    let sampling_params = SamplingParams {
        temperature: parameters.temperature,
        top_k: parameters.top_k.map(|k| k.max(0) as u32),
        top_p: parameters.top_p,
        typical_p: parameters.typical_p,
        repetition_penalty: parameters.repetition_penalty,
        do_sample: parameters.do_sample,
        seed: parameters.seed,
    };
    if best_of > 1 && !sampling_params.is_sampling() {
        return rule("you must use sampling when `best_of` is > 1".into());
    }
    if parameters.temperature.is_some_and(|t| t <= 0.0) {
        return rule("`temperature` must be strictly positive".into());
    }
    if parameters.repetition_penalty.is_some_and(|p| p <= 0.0) {
        return rule("`repetition_penalty` must be strictly positive".into());
    }
    if parameters.top_p.is_some_and(|p| p <= 0.0 || p >= 1.0) {
        return rule("`top_p` must be > 0.0 and < 1.0".into());
    }
    if parameters.typical_p.is_some_and(|p| p <= 0.0 || p >= 1.0) {
        return rule("`typical_p` must be > 0.0 and < 1.0".into());
    }
    if parameters.top_k.is_some_and(|k| k <= 0) {
        return rule("`top_k` must be strictly positive".into());
    }
    if parameters.max_new_tokens == 0 {
        return rule("`max_new_tokens` must be strictly positive".into());
    }
    if parameters.stop.len() > limits.max_stop_sequences {
        return rule(format!(
            "`stop` supports up to {} stop sequences. Given: {}",
            limits.max_stop_sequences,
            parameters.stop.len()
        ));
    }
    if best_of > 1 && parameters.seed.is_some() {
        return rule("`seed` must not be set when `best_of` > 1".into());
    }
    // TGI would generate `best_of` sequences and return the likeliest; this server generates
    // one, so it says so instead of silently ignoring the request.
    if best_of > 1 {
        return rule("`best_of` > 1 is not supported by this server".into());
    }
    if inputs.is_empty() {
        return rule("`inputs` cannot be empty".into());
    }
    if let Some(truncate) = parameters.truncate
        && (truncate == 0 || truncate > limits.max_input_length)
    {
        return rule(format!(
            "`truncate` must be strictly positive and less than {}. Given: {truncate}",
            limits.max_input_length
        ));
    }
    let counted = count_tokens(inputs).map_err(RuleError)?;
    let input_tokens = parameters.truncate.map_or(counted, |t| counted.min(t));
    let max_new_tokens = parameters.max_new_tokens as usize;
    if input_tokens + max_new_tokens > limits.max_total_tokens {
        return rule(format!(
            "`inputs` tokens + `max_new_tokens` must be <= {}. Given: {input_tokens} `inputs` tokens and {max_new_tokens} `max_new_tokens`",
            limits.max_total_tokens
        ));
    }
    if input_tokens > limits.max_input_length {
        return rule(format!(
            "`inputs` must have less than {} tokens. Given: {input_tokens}",
            limits.max_input_length
        ));
    }
    Ok(Validated {
        generation: GenerationRequest {
            prompt: inputs.to_string(),
            sampling: sampling_params,
            max_new_tokens: parameters.max_new_tokens,
            stop: parameters.stop.clone(),
            truncate: parameters.truncate,
        },
        details: parameters.details,
        return_full_text: parameters.return_full_text.unwrap_or(default_full_text),
        best_of,
        input_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(params: Value) -> Result<Validated, String> {
        let body = serde_json::json!({"inputs": "hello", "parameters": params}).to_string();
        let parsed = parse_body(body.as_bytes()).map_err(|e| e.0)?;
        validate(
            &parsed.inputs,
            &parsed.parameters,
            true,
            false,
            &Limits::default(),
            |s| Ok(s.len()),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn rules_and_their_messages() {
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
                check(params.clone()).unwrap_err(),
                format!("Input validation error: {message}"),
                "{params}"
            );
        }
    }

    #[test]
    fn best_of_above_one_is_refused_on_generate_too() {
        let body =
            serde_json::json!({"inputs": "hello", "parameters": {"best_of": 2, "do_sample": true}})
                .to_string();
        let parsed = parse_body(body.as_bytes()).unwrap();
        let err = validate(
            &parsed.inputs,
            &parsed.parameters,
            false,
            false,
            &Limits::default(),
            |s| Ok(s.len()),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Input validation error: `best_of` > 1 is not supported by this server"
        );
    }

    #[test]
    fn rules_run_in_tgi_order() {
        let err = check(serde_json::json!({"temperature": 0, "top_k": 0})).unwrap_err();
        assert!(err.contains("temperature"));
    }

    #[test]
    fn type_errors_name_the_field() {
        for params in [
            serde_json::json!({"truncate": 2048.0}),
            serde_json::json!({"max_new_tokens": -1}),
            serde_json::json!({"do_sample": null}),
            serde_json::json!({"stop": null}),
            serde_json::json!({"temperature": "hot"}),
        ] {
            let err = check(params.clone()).unwrap_err();
            assert!(
                err.starts_with(
                    "Failed to deserialize the JSON body into the target type: parameters."
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn integers_are_accepted_for_float_fields_and_unknown_keys_ignored() {
        let ok =
            check(serde_json::json!({"temperature": 1, "whatever": [1], "stream": true})).unwrap();
        assert_eq!(ok.generation.sampling.temperature, Some(1.0));
        assert_eq!(ok.generation.max_new_tokens, 20, "TGI's default");
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
