//! A TGI request (§c): the body as TGI's axum extractor read it, TGI's parameter rules in
//! TGI's order, and the [`Plan`] it asks for.
//!
//! Two kinds of failure, as in TGI: a *type* error (wrong JSON type, negative or fractional
//! integer, `null` where a value is required) is refused before anything streams, with
//! HTTP 422 and serde's message ([`TypeError`]); a *rule* violation is a
//! [`ValidationError`], answered as TGI answers it (an event on a stream, else 422).
//!
//! `grammar` becomes the plan's constraint (compiled, and refused with TGI's "grammar is
//! not valid" when it cannot be, by [`crate::prepare`]); `top_n_tokens` the alternatives
//! reported with each token.

use h2o_chat_protocol::{CompatGenerateRequest, GenerateParameters};

use crate::config::Limits;
use crate::plan::{Input, Plan};
use crate::tgi_wire::Echo;
use crate::validation::{ValidationError, check_rules};

/// A type error: HTTP 422 `text/plain`, the message axum/TGI gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeError(pub String);

/// Parses a TGI body the way TGI's axum `Json` extractor did: syntax errors and type errors
/// both end in [`TypeError`] with axum's wording.
pub fn parse_body(bytes: &[u8]) -> Result<CompatGenerateRequest, TypeError> {
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

/// What TGI's parameters ask for: the plan (after TGI's rules, in order) and what the reply
/// echoes. `full_text_default` is what an omitted `return_full_text` means (true on `/`).
pub fn generation(
    inputs: String,
    parameters: &GenerateParameters,
    streaming: bool,
    full_text_default: bool,
    limits: &Limits,
) -> Result<(Plan, Echo), ValidationError> {
    let sampling = check_rules(parameters, streaming, limits)?;
    Ok((
        Plan::tgi(Input::Raw(inputs), parameters, sampling)?,
        Echo::of(parameters, full_text_default),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::MaxNewTokens;
    use serde_json::{Value, json};

    fn plan_of(params: Value) -> Result<(Plan, Echo), String> {
        let body = json!({"inputs": "hello", "parameters": params}).to_string();
        let parsed = parse_body(body.as_bytes()).map_err(|e| e.0)?;
        generation(
            parsed.inputs,
            &parsed.parameters,
            true,
            false,
            &Limits::default(),
        )
        .map_err(|e| format!("Input validation error: {e}"))
    }

    #[test]
    fn rules_and_their_messages() {
        for (params, message) in [
            (
                json!({"temperature": 0}),
                "`temperature` must be strictly positive",
            ),
            (
                json!({"repetition_penalty": -1.0}),
                "`repetition_penalty` must be strictly positive",
            ),
            (json!({"top_p": 1.0}), "`top_p` must be > 0.0 and < 1.0"),
            (
                json!({"typical_p": 0}),
                "`typical_p` must be > 0.0 and < 1.0",
            ),
            (json!({"top_k": 0}), "`top_k` must be strictly positive"),
            (
                json!({"max_new_tokens": 0}),
                "`max_new_tokens` must be strictly positive",
            ),
            (
                json!({"stop": ["a","b","c","d","e","f","g"]}),
                "`stop` supports up to 6 stop sequences. Given: 7",
            ),
            (
                json!({"best_of": 2}),
                "`best_of` != 1 is not supported when streaming tokens",
            ),
        ] {
            assert_eq!(
                plan_of(params.clone()).unwrap_err(),
                format!("Input validation error: {message}"),
                "{params}"
            );
        }
    }

    #[test]
    fn type_errors_name_the_field() {
        for params in [
            json!({"truncate": 2048.0}),
            json!({"max_new_tokens": -1}),
            json!({"do_sample": null}),
            json!({"stop": null}),
            json!({"temperature": "hot"}),
        ] {
            let err = plan_of(params.clone()).unwrap_err();
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
        let (plan, _) =
            plan_of(json!({"temperature": 1, "whatever": [1], "stream": true})).unwrap();
        assert_eq!(plan.sampling.temperature, Some(1.0));
        assert_eq!(
            plan.max_new_tokens,
            MaxNewTokens::given(20),
            "TGI's default"
        );
    }
}
