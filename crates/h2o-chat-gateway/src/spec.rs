//! How upstreams are named: `--upstream [KIND=]URL` on the command line, or an
//! `--upstreams FILE` in TOML with per-upstream settings.
//!
//! ```
//! use h2o_chat_gateway::{UpstreamKind, UpstreamSpec};
//!
//! let spec = UpstreamSpec::parse("tgi=http://127.0.0.1:8081", UpstreamKind::H2o).unwrap();
//! assert_eq!(spec.kind, UpstreamKind::Tgi);
//! let bare = UpstreamSpec::parse("http://127.0.0.1:8082/chat", UpstreamKind::H2o).unwrap();
//! assert_eq!(bare.kind, UpstreamKind::H2o);
//!
//! let file = r#"
//! [[upstream]]
//! kind = "openai"
//! url = "http://127.0.0.1:8000"
//! weight = 2
//! max_in_flight = 16
//! api_key = "secret"
//! model = "meta-llama/Llama-3.1-8B-Instruct"
//! "#;
//! let specs = UpstreamSpec::parse_file(file).unwrap();
//! assert_eq!(specs[0].weight, 2);
//! assert_eq!(specs[0].model.as_deref(), Some("meta-llama/Llama-3.1-8B-Instruct"));
//! ```

use serde::Deserialize;

/// What an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    /// chat-ui (an H2o server, another `h2o-chat serve`), through the provider library.
    H2o,
    /// text-generation-inference's `/generate_stream`.
    Tgi,
    /// An OpenAI-compatible server: `/v1/chat/completions` and `/v1/completions`.
    #[serde(rename = "openai")]
    OpenAi,
}

impl UpstreamKind {
    pub fn name(self) -> &'static str {
        match self {
            UpstreamKind::H2o => "h2o",
            UpstreamKind::Tgi => "tgi",
            UpstreamKind::OpenAi => "openai",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "h2o" | "chat-ui" => Some(UpstreamKind::H2o),
            "tgi" => Some(UpstreamKind::Tgi),
            "openai" | "vllm" | "llama.cpp" | "llama-server" => Some(UpstreamKind::OpenAi),
            _ => None,
        }
    }
}

fn default_weight() -> u32 {
    1
}

fn default_max_in_flight() -> usize {
    64
}

/// One upstream and how to use it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    pub kind: UpstreamKind,
    /// Its base URL (a path prefix is kept).
    pub url: String,
    /// Share of the load relative to the others (least outstanding requests per weight).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Requests sent to it at once; beyond, others are chosen (or the request waits its turn
    /// as overloaded).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Sent as `Authorization: Bearer` (TGI and OpenAI kinds).
    #[serde(default)]
    pub api_key: Option<String>,
    /// The model name the upstream knows; default: the id the client asked for (chat-ui and
    /// OpenAI kinds).
    #[serde(default)]
    pub model: Option<String>,
}

/// Why an upstream could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
/// A bad upstream: its message shows the URL without its credentials.
#[error("{}", crate::redact::credentials(.0))]
pub struct SpecError(pub String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    upstream: Vec<UpstreamSpec>,
}

impl UpstreamSpec {
    /// An upstream of `kind` at `url`, with the default settings.
    pub fn new(kind: UpstreamKind, url: impl Into<String>) -> Self {
        UpstreamSpec {
            kind,
            url: url.into(),
            weight: default_weight(),
            max_in_flight: default_max_in_flight(),
            api_key: None,
            model: None,
        }
    }

    /// `KIND=URL`, or a bare `URL` of kind `default`.
    pub fn parse(text: &str, default: UpstreamKind) -> Result<Self, SpecError> {
        let (kind, url) = match text.split_once('=') {
            Some((kind, url)) if !kind.contains("://") => (
                UpstreamKind::from_name(kind).ok_or_else(|| {
                    SpecError(format!(
                        "`{kind}` is not an upstream kind (h2o, tgi or openai) in `{text}`"
                    ))
                })?,
                url,
            ),
            _ => (default, text),
        };
        let spec = UpstreamSpec::new(kind, url);
        spec.check()?;
        Ok(spec)
    }

    /// The `[[upstream]]` tables of a TOML file.
    pub fn parse_file(text: &str) -> Result<Vec<Self>, SpecError> {
        let file: File = toml::from_str(text).map_err(|e| SpecError(e.to_string()))?;
        for spec in &file.upstream {
            spec.check()?;
        }
        Ok(file.upstream)
    }

    fn check(&self) -> Result<(), SpecError> {
        let url = url::Url::parse(&self.url)
            .map_err(|e| SpecError(format!("`{}` is not a URL: {e}", self.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(SpecError(format!("`{}` is not an http(s) URL", self.url)));
        }
        if self.weight == 0 {
            return Err(SpecError(format!(
                "{}: weight must be at least 1",
                self.url
            )));
        }
        if self.max_in_flight == 0 {
            return Err(SpecError(format!(
                "{}: max_in_flight must be at least 1",
                self.url
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_urls_and_their_errors() {
        assert_eq!(
            UpstreamSpec::parse("openai=https://h:1/v1", UpstreamKind::H2o)
                .unwrap()
                .kind,
            UpstreamKind::OpenAi
        );
        // An `=` inside the URL is not a kind.
        let spec = UpstreamSpec::parse("http://h:1/x?a=b", UpstreamKind::Tgi).unwrap();
        assert_eq!(
            (spec.kind, spec.url.as_str()),
            (UpstreamKind::Tgi, "http://h:1/x?a=b")
        );
        assert!(UpstreamSpec::parse("gpu=http://h:1", UpstreamKind::H2o).is_err());
        assert!(UpstreamSpec::parse("tgi=not a url", UpstreamKind::H2o).is_err());
        assert!(UpstreamSpec::parse("ftp://h/", UpstreamKind::H2o).is_err());
    }

    #[test]
    fn a_file_with_an_unknown_key_is_refused() {
        let file = "[[upstream]]\nkind = \"tgi\"\nurl = \"http://h:1\"\nwieght = 2\n";
        assert!(
            UpstreamSpec::parse_file(file)
                .unwrap_err()
                .0
                .contains("wieght")
        );
    }
}
