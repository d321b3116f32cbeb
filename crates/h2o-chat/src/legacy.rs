//! Seed 001: the older blocking `_create_completion(model, messages, stream, **kwargs)`.
//!
//! It takes a model *alias* (`falcon-40b`, `falcon-7b`, `llama-13b`, or a full id), builds
//! the legacy `role: content` prompt with its instruction line (§e.2 v1), and either streams
//! tokens — ending at the end-of-text token — or returns the whole text. The module facts of
//! the seed are here as constants: [`URL`], [`MODELS`], [`SUPPORTS_STREAM`], [`NEEDS_AUTH`],
//! [`model_table`] and [`params`].
//!
//! ```
//! assert!(h2o_chat::legacy::params().starts_with(
//!     "h2o_chat::legacy supports: (model: &str, messages: &[Message], stream: bool, temperature: f64"
//! ));
//! assert_eq!(h2o_chat::legacy::MODELS, ["falcon-40b", "falcon-7b", "llama-13b"]);
//! ```
//!
//! ```no_run
//! use h2o_chat::{legacy, Message};
//!
//! let provider = legacy::Legacy::new("http://127.0.0.1:8080")?;
//! let params = legacy::LegacyParams { max_new_tokens: Some(50), ..Default::default() };
//! let answer = provider.create_completion("falcon-7b", &[Message::user("Hi")], true, params)?;
//! for token in answer {
//!     print!("{}", token?);
//! }
//! # Ok::<(), h2o_chat::Error>(())
//! ```

use crate::blocking::{self, TokenIter};
use crate::error::Error;
use crate::models::{self, MODELS as TABLE};
use crate::params::Parameters;
use crate::prompt::PromptFormat;
use crate::protocol::wire::Options;
use crate::{H2o, Message};

/// The service's URL (seed 001's `url`).
pub const URL: &str = crate::DEFAULT_URL;
/// The model aliases (seed 001's `model` list).
pub const MODELS: [&str; 3] = [TABLE[0].alias, TABLE[1].alias, TABLE[2].alias];
/// The provider streams (seed 001's `supports_stream`).
pub const SUPPORTS_STREAM: bool = true;
/// The provider needs no account (seed 001's `needs_auth`).
pub const NEEDS_AUTH: bool = false;

/// Alias → model id (seed 001's `models` dict).
pub fn model_table() -> [(&'static str, &'static str); 3] {
    [
        (TABLE[0].alias, TABLE[0].id),
        (TABLE[1].alias, TABLE[1].id),
        (TABLE[2].alias, TABLE[2].id),
    ]
}

/// Declares [`LegacyParams`] and, from the same list, the names and types that [`params`]
/// reports — so the description cannot drift from the real fields.
macro_rules! legacy_params {
    ($( $(#[$doc:meta])* $name:ident : $ty:ty ),* $(,)?) => {
        /// The keyword arguments seed 001 read. `None` keeps the default of §c (or a fresh
        /// UUID for `id` / `response_id`).
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct LegacyParams {
            $( $(#[$doc])* pub $name: Option<$ty>, )*
        }

        /// `(name, type)` of every field of [`LegacyParams`], in order.
        pub const PARAM_FIELDS: &[(&str, &str)] = &[ $( (stringify!($name), stringify!($ty)) ),* ];
    };
}

legacy_params! {
    /// Sampling temperature (default 0.4).
    temperature: f64,
    /// Keep only the last N input tokens (default 2048).
    truncate: u32,
    /// Maximum tokens to generate (default 1024).
    max_new_tokens: u32,
    /// Sample instead of greedy decoding (default true).
    do_sample: bool,
    /// Penalty for repeated tokens (default 1.2).
    repetition_penalty: f64,
    /// Prepend the prompt to the final text (default false).
    return_full_text: bool,
    /// `options.id`, the user message's id (default: a fresh UUID).
    id: String,
    /// `options.response_id` (default: a fresh UUID).
    response_id: String,
}

/// The positional arguments of [`create_completion`], in order.
const ARGS: &[(&str, &str)] = &[
    ("model", "&str"),
    ("messages", "&[Message]"),
    ("stream", "bool"),
];

/// Seed 001's `params` string: what `create_completion` accepts, generated from the real
/// argument and field lists.
pub fn params() -> String {
    let all: Vec<String> = ARGS
        .iter()
        .chain(PARAM_FIELDS)
        .map(|(name, ty)| format!("{name}: {ty}"))
        .collect();
    format!("h2o_chat::legacy supports: ({})", all.join(", "))
}

impl LegacyParams {
    fn split(self) -> (Parameters, Options) {
        let mut parameters = Parameters::default();
        if let Some(v) = self.temperature {
            parameters.insert("temperature", v);
        }
        if let Some(v) = self.truncate {
            parameters.insert("truncate", v);
        }
        if let Some(v) = self.max_new_tokens {
            parameters.insert("max_new_tokens", v);
        }
        if let Some(v) = self.do_sample {
            parameters.insert("do_sample", v);
        }
        if let Some(v) = self.repetition_penalty {
            parameters.insert("repetition_penalty", v);
        }
        if let Some(v) = self.return_full_text {
            parameters.insert("return_full_text", v);
        }
        let mut options = Options::fresh();
        if let Some(id) = self.id {
            options.id = id;
        }
        if let Some(response_id) = self.response_id {
            options.response_id = response_id;
        }
        (parameters, options)
    }
}

/// What [`create_completion`] returns: tokens as they come (`stream = true`) or the whole
/// text (`stream = false`).
pub enum Completion {
    /// The tokens; the iterator ends at the end-of-text token.
    Stream(TokenIter),
    /// The whole answer.
    Text(String),
}

impl Completion {
    /// The whole text, reading the stream to its end if needed.
    pub fn into_text(self) -> Result<String, Error> {
        match self {
            Completion::Stream(tokens) => tokens.collect_text(),
            Completion::Text(text) => Ok(text),
        }
    }
}

impl Iterator for Completion {
    type Item = Result<String, Error>;

    /// Iterating a `Text` completion yields the text once.
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Completion::Stream(tokens) => tokens.next(),
            Completion::Text(text) if text.is_empty() => None,
            Completion::Text(text) => Some(Ok(std::mem::take(text))),
        }
    }
}

/// The legacy provider bound to a server.
#[derive(Debug, Clone)]
pub struct Legacy {
    client: blocking::H2o,
}

impl Legacy {
    /// A legacy provider for the server at `url`.
    pub fn new(url: &str) -> Result<Legacy, Error> {
        Ok(Legacy {
            client: blocking::H2o::new(H2o::builder().url(url))?,
        })
    }

    /// A legacy provider over an existing blocking client (its session is shared).
    pub fn with_client(client: blocking::H2o) -> Legacy {
        Legacy { client }
    }

    /// Seed 001's `_create_completion(model, messages, stream, **kwargs)`.
    pub fn create_completion(
        &self,
        model: &str,
        messages: &[Message],
        stream: bool,
        params: LegacyParams,
    ) -> Result<Completion, Error> {
        let model = models::resolve_alias(model)?;
        let (parameters, options) = params.split();
        // The seed merged only its six keys over nothing: the client's defaults are replaced.
        let request = self
            .client
            .request(messages.iter().cloned())
            .model(model)
            .parameters(parameters)
            .prompt_format(PromptFormat::Legacy)
            .options(options);
        if stream {
            Ok(Completion::Stream(self.client.run_stream(request)?))
        } else {
            Ok(Completion::Text(self.client.run_complete(request)?.text))
        }
    }
}

/// Seed 001's `_create_completion` against [`URL`], or against `$H2O_CHAT_URL` when it is set
/// (the public service is gone; point this at a live deployment or `h2o-chat serve`).
pub fn create_completion(
    model: &str,
    messages: &[Message],
    stream: bool,
    params: LegacyParams,
) -> Result<Completion, Error> {
    let url = std::env::var("H2O_CHAT_URL").unwrap_or_else(|_| URL.to_string());
    Legacy::new(&url)?.create_completion(model, messages, stream, params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_string_lists_every_argument_and_field() {
        assert_eq!(
            params(),
            "h2o_chat::legacy supports: (model: &str, messages: &[Message], stream: bool, \
             temperature: f64, truncate: u32, max_new_tokens: u32, do_sample: bool, \
             repetition_penalty: f64, return_full_text: bool, id: String, response_id: String)"
        );
    }

    #[test]
    fn module_facts_of_seed_001() {
        assert_eq!(URL, "https://gpt-gm.h2o.ai");
        assert_eq!((SUPPORTS_STREAM, NEEDS_AUTH), (true, false));
        assert_eq!(
            model_table()[2],
            ("llama-13b", "h2oai/h2ogpt-gm-oasst1-en-2048-open-llama-13b")
        );
    }

    #[test]
    fn legacy_params_override_defaults_in_place_and_set_ids() {
        let (parameters, options) = LegacyParams {
            temperature: Some(0.5),
            id: Some("00000000-0000-0000-0000-000000000000".into()),
            ..Default::default()
        }
        .split();
        assert_eq!(
            serde_json::to_string(&parameters).unwrap(),
            r#"{"temperature":0.5,"truncate":2048,"max_new_tokens":1024,"do_sample":true,"repetition_penalty":1.2,"return_full_text":false}"#
        );
        assert_eq!(options.id, "00000000-0000-0000-0000-000000000000");
        assert_eq!(options.response_id.len(), 36);
    }

    #[test]
    fn unknown_alias_is_refused_before_any_request() {
        let legacy = Legacy::new("http://127.0.0.1:9").unwrap();
        let err = legacy
            .create_completion(
                "gpt-4",
                &[Message::user("Hi")],
                true,
                LegacyParams::default(),
            )
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("falcon-40b, falcon-7b, llama-13b"),
            "{err}"
        );
    }
}
