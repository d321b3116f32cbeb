//! The H2o models, their g4f aliases and prompt templates (§d).
//!
//! ```
//! use h2o_chat::models;
//!
//! assert_eq!(models::resolve_alias("falcon-7b").unwrap(), "h2oai/h2ogpt-gm-oasst1-en-2048-falcon-7b-v3");
//! assert_eq!(models::resolve(""), models::DEFAULT_MODEL);
//! assert!(models::resolve_alias("gpt-5").unwrap_err().to_string().contains("falcon-40b"));
//! ```

/// One model of the H2o service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Model {
    /// The short name g4f users typed.
    pub alias: &'static str,
    /// The id the server knows (`activeModel`, `model`).
    pub id: &'static str,
    /// h2oGPT's prompt type for this model.
    pub prompt_type: &'static str,
    /// The end-of-sequence token, sent as a special token.
    pub eos: &'static str,
}

/// falcon-40b, the service's default model.
pub const FALCON_40B: &str = "h2oai/h2ogpt-gm-oasst1-en-2048-falcon-40b-v1";
/// falcon-7b.
pub const FALCON_7B: &str = "h2oai/h2ogpt-gm-oasst1-en-2048-falcon-7b-v3";
/// open-llama-13b.
pub const LLAMA_13B: &str = "h2oai/h2ogpt-gm-oasst1-en-2048-open-llama-13b";

/// The default model: used whenever the model is empty.
pub const DEFAULT_MODEL: &str = FALCON_40B;

/// The models of §d, default first.
pub const MODELS: [Model; 3] = [
    Model {
        alias: "falcon-40b",
        id: FALCON_40B,
        prompt_type: "prompt_answer",
        eos: "<|endoftext|>",
    },
    Model {
        alias: "falcon-7b",
        id: FALCON_7B,
        prompt_type: "prompt_answer",
        eos: "<|endoftext|>",
    },
    Model {
        alias: "llama-13b",
        id: LLAMA_13B,
        prompt_type: "prompt_answer_openllama",
        eos: "</s>",
    },
];

/// The model with this alias or id.
pub fn find(name: &str) -> Option<&'static Model> {
    MODELS.iter().find(|m| m.alias == name || m.id == name)
}

/// The async provider's rule: empty → the default; a known alias → its id (§d advises clients
/// to map aliases locally); anything else is sent as given, since other deployments serve
/// other ids.
pub fn resolve(name: &str) -> &str {
    if name.is_empty() {
        return DEFAULT_MODEL;
    }
    MODELS
        .iter()
        .find(|m| m.alias == name)
        .map_or(name, |m| m.id)
}

/// A name that is neither an alias nor a full id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown model `{name}`: known aliases are {}", known_aliases())]
pub struct UnknownModel {
    pub name: String,
}

fn known_aliases() -> String {
    MODELS
        .iter()
        .map(|m| m.alias)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The legacy API's rule (seed 001): empty → the default, an alias → its id, a full id
/// (`owner/name`) as is; anything else is an error that lists the aliases.
pub fn resolve_alias(name: &str) -> Result<&str, UnknownModel> {
    if name.is_empty() {
        return Ok(DEFAULT_MODEL);
    }
    if let Some(model) = MODELS.iter().find(|m| m.alias == name) {
        return Ok(model.id);
    }
    if name.contains('/') {
        return Ok(name);
    }
    Err(UnknownModel { name: name.into() })
}

/// h2oGPT's `prompt_answer` template (§d) for a conversation, ending with the open answer
/// turn: `<|prompt|>{user}E<|answer|>{assistant}E…<|answer|>`.
pub fn prompt_answer(model: &Model, turns: &[(bool, &str)]) -> String {
    let mut prompt = String::new();
    for (is_user, content) in turns {
        prompt.push_str(if *is_user { "<|prompt|>" } else { "<|answer|>" });
        prompt.push_str(content);
        prompt.push_str(model.eos);
    }
    prompt.push_str("<|answer|>");
    prompt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_map_to_the_ids_of_section_d() {
        assert_eq!(resolve_alias("falcon-40b").unwrap(), FALCON_40B);
        assert_eq!(resolve_alias("falcon-7b").unwrap(), FALCON_7B);
        assert_eq!(resolve_alias("llama-13b").unwrap(), LLAMA_13B);
    }

    #[test]
    fn empty_model_means_the_default() {
        assert_eq!(resolve(""), FALCON_40B);
        assert_eq!(resolve_alias("").unwrap(), FALCON_40B);
        assert_eq!(MODELS[0].id, DEFAULT_MODEL);
    }

    #[test]
    fn full_ids_pass_through() {
        assert_eq!(resolve_alias(LLAMA_13B).unwrap(), LLAMA_13B);
        assert_eq!(resolve("my/model"), "my/model");
        assert_eq!(resolve("smollm2"), "smollm2");
    }

    #[test]
    fn unknown_alias_lists_the_known_ones() {
        let err = resolve_alias("gpt-4").unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown model `gpt-4`: known aliases are falcon-40b, falcon-7b, llama-13b"
        );
    }

    #[test]
    fn prompt_answer_templates_of_section_d() {
        let turns = [(true, "Hello!"), (false, "Hi!"), (true, "How are you?")];
        assert_eq!(
            prompt_answer(&MODELS[0], &turns),
            "<|prompt|>Hello!<|endoftext|><|answer|>Hi!<|endoftext|><|prompt|>How are you?<|endoftext|><|answer|>"
        );
        assert_eq!(
            prompt_answer(&MODELS[2], &turns),
            "<|prompt|>Hello!</s><|answer|>Hi!</s><|prompt|>How are you?</s><|answer|>"
        );
    }
}
