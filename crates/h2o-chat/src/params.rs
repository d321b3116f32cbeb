//! Generation parameters (§c): g4f's six defaults, overridden and extended by the caller the
//! way Python's `{**defaults, **kwargs}` merged them.
//!
//! Key order is kept: an override stays where the default stood, a new key goes last, so the
//! JSON sent is byte-identical to what g4f sent for the same call.
//!
//! ```
//! use h2o_chat::Parameters;
//!
//! let params = Parameters::default().temperature(0.7).set("top_k", 50);
//! assert_eq!(
//!     serde_json::to_string(&params).unwrap(),
//!     r#"{"temperature":0.7,"truncate":2048,"max_new_tokens":1024,"do_sample":true,"repetition_penalty":1.2,"return_full_text":false,"top_k":50}"#
//! );
//! ```

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The parameters object of the generate body. Unknown keys are allowed: servers ignore
/// them (§c), and TGI deployments may know more than this crate does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Parameters(Map<String, Value>);

/// The documented parameters: name, JSON type and what it does. `h2o-chat params` and the
/// legacy `params` string are generated from this table.
pub const KNOWN: &[(&str, &str, &str)] = &[
    (
        "temperature",
        "float > 0",
        "sampling temperature (default 0.4)",
    ),
    (
        "truncate",
        "uint",
        "keep only the last N input tokens (default 2048)",
    ),
    (
        "max_new_tokens",
        "uint > 0",
        "maximum tokens to generate (default 1024)",
    ),
    (
        "do_sample",
        "bool",
        "sample instead of greedy decoding (default true)",
    ),
    (
        "repetition_penalty",
        "float > 0",
        "penalty for repeated tokens (default 1.2)",
    ),
    (
        "return_full_text",
        "bool",
        "prepend the prompt to generated_text (default false)",
    ),
    (
        "top_k",
        "int > 0",
        "sample only from the k most likely tokens",
    ),
    ("top_p", "float in (0,1)", "nucleus sampling"),
    ("typical_p", "float in (0,1)", "typical sampling"),
    ("seed", "uint", "random seed: same seed, same text"),
    (
        "stop",
        "[string]",
        "stop sequences (at most 6 on the embedded server)",
    ),
    (
        "details",
        "bool",
        "report finish_reason, generated_tokens and seed",
    ),
    ("best_of", "uint", "must be 1 when streaming"),
    ("watermark", "bool", "watermark the output"),
];

impl Default for Parameters {
    /// g4f's defaults, identical in every version (§c), in their wire order.
    fn default() -> Self {
        let mut map = Map::new();
        map.insert("temperature".into(), 0.4.into());
        map.insert("truncate".into(), 2048.into());
        map.insert("max_new_tokens".into(), 1024.into());
        map.insert("do_sample".into(), true.into());
        map.insert("repetition_penalty".into(), 1.2.into());
        map.insert("return_full_text".into(), false.into());
        Parameters(map)
    }
}

impl Parameters {
    /// No parameters at all (the server's defaults apply).
    pub fn empty() -> Self {
        Parameters(Map::new())
    }

    /// Sets any key, as a keyword argument did: an existing key keeps its place.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.insert(key, value);
        self
    }

    /// In-place form of [`set`](Parameters::set).
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        self.0.insert(key.into(), value.into());
    }

    /// Removes a key; the server's default then applies.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.0.shift_remove(key)
    }

    /// Merges `other` over `self` (`{**self, **other}`).
    pub fn merge(mut self, other: &Parameters) -> Self {
        for (key, value) in &other.0 {
            self.0.insert(key.clone(), value.clone());
        }
        self
    }

    /// The value of a key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// The underlying JSON object.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    /// The JSON object, consumed.
    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }

    pub fn temperature(self, value: f64) -> Self {
        self.set("temperature", value)
    }
    pub fn truncate(self, value: u32) -> Self {
        self.set("truncate", value)
    }
    pub fn max_new_tokens(self, value: u32) -> Self {
        self.set("max_new_tokens", value)
    }
    pub fn do_sample(self, value: bool) -> Self {
        self.set("do_sample", value)
    }
    pub fn repetition_penalty(self, value: f64) -> Self {
        self.set("repetition_penalty", value)
    }
    pub fn return_full_text(self, value: bool) -> Self {
        self.set("return_full_text", value)
    }
    pub fn top_k(self, value: u32) -> Self {
        self.set("top_k", value)
    }
    pub fn top_p(self, value: f64) -> Self {
        self.set("top_p", value)
    }
    pub fn typical_p(self, value: f64) -> Self {
        self.set("typical_p", value)
    }
    pub fn seed(self, value: u64) -> Self {
        self.set("seed", value)
    }
    pub fn stop<S: Into<String>>(self, sequences: impl IntoIterator<Item = S>) -> Self {
        let stop: Vec<Value> = sequences
            .into_iter()
            .map(|s| Value::String(s.into()))
            .collect();
        self.set("stop", stop)
    }
    pub fn details(self, value: bool) -> Self {
        self.set("details", value)
    }
}

impl From<Map<String, Value>> for Parameters {
    fn from(map: Map<String, Value>) -> Self {
        Parameters(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_g4f_six_in_wire_order() {
        assert_eq!(
            serde_json::to_string(&Parameters::default()).unwrap(),
            r#"{"temperature":0.4,"truncate":2048,"max_new_tokens":1024,"do_sample":true,"repetition_penalty":1.2,"return_full_text":false}"#
        );
    }

    #[test]
    fn overrides_keep_their_place_and_new_keys_go_last() {
        let params = Parameters::default()
            .set("stream", true)
            .max_new_tokens(5)
            .stop(["\n"]);
        assert_eq!(
            serde_json::to_string(&params).unwrap(),
            r#"{"temperature":0.4,"truncate":2048,"max_new_tokens":5,"do_sample":true,"repetition_penalty":1.2,"return_full_text":false,"stream":true,"stop":["\n"]}"#
        );
    }

    #[test]
    fn merge_is_python_dict_merge() {
        let extra = Parameters::empty().temperature(0.9).set("x", "y");
        let merged = Parameters::default().merge(&extra);
        let keys: Vec<&str> = merged.as_map().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "temperature",
                "truncate",
                "max_new_tokens",
                "do_sample",
                "repetition_penalty",
                "return_full_text",
                "x"
            ]
        );
        assert_eq!(merged.get("temperature"), Some(&Value::from(0.9)));
    }
}
