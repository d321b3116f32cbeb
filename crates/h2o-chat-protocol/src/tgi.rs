//! text-generation-inference's request body (§c): `inputs`, the typed `parameters`, and the
//! compat route's `stream`.
//!
//! The serde types reproduce TGI's *type* rules exactly — a negative or fractional integer,
//! `null` where a value is required, a string for a number are deserialisation errors —
//! because TGI answers those with HTTP 422 before anything else (§c "Type errors are not
//! events"). The *value* rules (`temperature > 0`, …) are the server's validation.
//!
//! ```
//! use h2o_chat_protocol::CompatGenerateRequest;
//!
//! let body: CompatGenerateRequest =
//!     serde_json::from_str(r#"{"inputs":"Hi","parameters":{"max_new_tokens":8,"stop":["\n"]}}"#).unwrap();
//! assert_eq!(body.parameters.max_new_tokens, 8);
//! assert!(!body.stream);
//! assert!(serde_json::from_str::<CompatGenerateRequest>(r#"{"inputs":"Hi","parameters":{"truncate":2048.0}}"#).is_err());
//! ```

use serde::{Deserialize, Serialize};

/// TGI's `parameters` object, with the serde types that reproduce its type errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateParameters {
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
    /// Alternatives reported with each token (`top_tokens` on the wire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_n_tokens: Option<u32>,
    /// What the answer must follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grammar: Option<Grammar>,
}

/// TGI's `parameters.grammar`: `{"type": "json" | "json_object" | "regex" | "json_schema",
/// "value": …}`.
///
/// ```
/// use h2o_chat_protocol::tgi::Grammar;
///
/// let grammar: Grammar = serde_json::from_str(r#"{"type":"regex","value":"[0-9]+"}"#).unwrap();
/// assert_eq!(grammar, Grammar::Regex("[0-9]+".into()));
/// let grammar: Grammar =
///     serde_json::from_str(r#"{"type":"json_object","value":{"type":"object"}}"#).unwrap();
/// assert!(matches!(grammar, Grammar::Json(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum Grammar {
    /// A JSON Schema (an object, or a string holding one).
    #[serde(rename = "json", alias = "json_object")]
    Json(serde_json::Value),
    /// A regular expression the whole answer matches.
    #[serde(rename = "regex")]
    Regex(String),
    /// A named JSON Schema (OpenAI's `json_schema` shape).
    #[serde(rename = "json_schema")]
    JsonSchema(JsonSchemaConfig),
}

/// `grammar.value` of type `json_schema`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonSchemaConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub schema: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// TGI's default for `max_new_tokens` (§c).
pub const DEFAULT_MAX_NEW_TOKENS: u32 = 20;

fn default_max_new_tokens() -> u32 {
    DEFAULT_MAX_NEW_TOKENS
}

impl Default for GenerateParameters {
    /// What TGI uses when `parameters` is absent: every field's serde default.
    fn default() -> Self {
        GenerateParameters {
            best_of: None,
            temperature: None,
            repetition_penalty: None,
            top_k: None,
            top_p: None,
            typical_p: None,
            do_sample: false,
            max_new_tokens: DEFAULT_MAX_NEW_TOKENS,
            return_full_text: None,
            stop: Vec::new(),
            truncate: None,
            watermark: false,
            details: false,
            decoder_input_details: false,
            seed: None,
            top_n_tokens: None,
            grammar: None,
        }
    }
}

/// The body of TGI's `/generate`, `/generate_stream` and `/` (TGI calls the last one's
/// `CompatGenerateRequest`; only `/` reads `stream`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompatGenerateRequest {
    pub inputs: String,
    #[serde(default)]
    pub parameters: GenerateParameters,
    #[serde(default)]
    pub stream: bool,
}
