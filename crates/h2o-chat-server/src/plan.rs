//! What a front asks the server to generate, in no protocol's terms: the [`Plan`].
//!
//! Each front parses its own wire into a plan (its protocol's rules checked on the way);
//! [`crate::pipeline::start`] prepares it (template, tokens, history window), checks the
//! lengths and starts the engine. Nothing below a front knows which protocol asked.
//!
//! ```
//! use h2o_chat_engine::{CacheScope, ChatTurn, SamplingParams};
//! use h2o_chat_server::plan::{Input, MaxNewTokens, Plan};
//!
//! let plan = Plan {
//!     input: Input::Chat(vec![ChatTurn::new("user", "What is the capital of France?")]),
//!     sampling: SamplingParams::default(), // greedy
//!     // A default, not the client's: lowered to what fits after the prompt.
//!     max_new_tokens: MaxNewTokens::default_of(512),
//!     stop: Vec::new(),
//!     truncate: None,
//!     cache_hint: Some("user-42".into()),
//!     cache_scope: CacheScope::of("user", "user-42"),
//!     constraint: None,
//!     top_tokens: 0,
//!     prompt_logprobs: false,
//! };
//! assert!(!plan.sampling.is_sampling());
//! ```

use h2o_chat_engine::{CacheScope, ChatTurn, Constraint, SamplingParams};
use h2o_chat_protocol::GenerateParameters;
use h2o_chat_protocol::tgi::Grammar;
use serde_json::Value;

use crate::validation::ValidationError;

/// What the model reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A prompt used as is: TGI's `inputs`, a legacy completion prompt. The caller owns
    /// the whole prompt, special tokens included (TGI's semantics).
    Raw(String),
    /// Messages rendered with the model's template; all of them are sent.
    Chat(Vec<ChatTurn>),
    /// A conversation's history, rendered like a chat, of which the model sees the newest
    /// messages that fit the budget (older ones are dropped whole, never cut mid-turn).
    History(Vec<ChatTurn>),
}

/// See the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub input: Input,
    pub sampling: SamplingParams,
    /// The answer's length limit.
    pub max_new_tokens: MaxNewTokens,
    /// Stop strings: the answer ends when it ends with one.
    pub stop: Vec<String>,
    /// Keep only the last `truncate` prompt tokens (TGI's left truncation).
    pub truncate: Option<usize>,
    /// What this request probably continues (a conversation id, an OpenAI `user`): the
    /// engine prefers the slot whose cache holds its prefix.
    pub cache_hint: Option<String>,
    /// Whose cached prompts it may reuse (a chat-ui session, an API user, a salt, a key).
    pub cache_scope: CacheScope,
    /// What the answer must follow (a grammar), if anything.
    pub constraint: Option<Constraint>,
    /// Alternatives reported with each token (0: none).
    pub top_tokens: u8,
    /// The prompt's tokens with their log-probabilities (TGI's `decoder_input_details`).
    pub prompt_logprobs: bool,
}

impl Plan {
    /// The plan TGI's parameters describe (chat-ui relays them too), once their rules have
    /// passed and given `sampling` ([`crate::validation::check_rules`]); its `grammar` as
    /// the constraint.
    pub fn tgi(
        input: Input,
        parameters: &GenerateParameters,
        sampling: SamplingParams,
    ) -> Result<Plan, ValidationError> {
        Ok(Plan {
            input,
            sampling,
            max_new_tokens: MaxNewTokens::given(parameters.max_new_tokens),
            stop: parameters.stop.clone(),
            truncate: parameters.truncate,
            cache_hint: None,
            cache_scope: CacheScope::anonymous(),
            constraint: parameters.grammar.as_ref().map(constraint).transpose()?,
            // Checked against the cap by the rules.
            top_tokens: parameters.top_n_tokens.unwrap_or(0).min(u32::from(u8::MAX)) as u8,
            prompt_logprobs: parameters.decoder_input_details,
        })
    }
}

/// TGI's grammar as a constraint: a JSON schema given as an object or as a string holding
/// one, a regular expression, or a named schema.
pub fn constraint(grammar: &Grammar) -> Result<Constraint, ValidationError> {
    match grammar {
        Grammar::Json(Value::String(text)) => serde_json::from_str(text)
            .map(Constraint::JsonSchema)
            .map_err(|err| ValidationError::Grammar(format!("the JSON schema is not JSON: {err}"))),
        Grammar::Json(schema @ (Value::Object(_) | Value::Bool(_))) => {
            Ok(Constraint::JsonSchema(schema.clone()))
        }
        Grammar::Json(_) => Err(ValidationError::Grammar(
            "a JSON schema is an object (or a string holding one)".into(),
        )),
        Grammar::Regex(regex) => Ok(Constraint::Regex(regex.clone())),
        Grammar::JsonSchema(config) => Ok(Constraint::JsonSchema(config.schema.clone())),
    }
}

/// The answer's length limit, and whether the client gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxNewTokens {
    pub length: u32,
    /// A default, not the client's: lowered to what fits after the prompt instead of
    /// refusing (OpenAI's `max_tokens` when absent).
    pub is_default: bool,
}

impl MaxNewTokens {
    /// The client's limit: a prompt that leaves less room is refused.
    pub fn given(length: u32) -> Self {
        MaxNewTokens {
            length,
            is_default: false,
        }
    }

    /// A default limit, lowered to fit.
    pub fn default_of(length: u32) -> Self {
        MaxNewTokens {
            length,
            is_default: true,
        }
    }
}
