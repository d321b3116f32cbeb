//! [`H2oBuilder`]: every setting of a client, each with a default a person would accept.

use std::time::Duration;

use crate::RetryPolicy;
use crate::client::{Config, H2o};
use crate::error::Error;
use crate::models::DEFAULT_MODEL;
use crate::params::Parameters;
use crate::prompt::PromptFormat;

/// The former public service. It is gone; pass the URL of a live deployment.
pub const DEFAULT_URL: &str = "https://gpt-gm.h2o.ai";

/// Builds an [`H2o`] client.
///
/// ```
/// use std::time::Duration;
/// let h2o = h2o_chat::H2o::builder()
///     .url("http://127.0.0.1:8080/chat")
///     .model("falcon-7b")
///     .idle_timeout(Duration::from_secs(10))
///     .build()
///     .unwrap();
/// assert_eq!(h2o.url(), "http://127.0.0.1:8080/chat");
/// assert_eq!(h2o.model(), "h2oai/h2ogpt-gm-oasst1-en-2048-falcon-7b-v3");
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct H2oBuilder {
    config: Config,
}

impl Default for H2oBuilder {
    fn default() -> Self {
        H2oBuilder {
            config: Config {
                url: DEFAULT_URL.into(),
                model: DEFAULT_MODEL.into(),
                proxy: None,
                env_proxy: true,
                connect_timeout: Duration::from_secs(10),
                request_timeout: Duration::from_secs(30),
                first_event_timeout: Duration::from_secs(120),
                idle_timeout: Duration::from_secs(30),
                user_agent: concat!("h2o-chat/", env!("CARGO_PKG_VERSION")).into(),
                retry: RetryPolicy::default(),
                max_event_size: 1 << 20,
                parameters: Parameters::default(),
                prompt_format: PromptFormat::FormatPrompt,
            },
        }
    }
}

impl H2oBuilder {
    /// The server's base URL. A path prefix (`http://host/chat`) is kept; a trailing slash is
    /// not needed. Default: [`DEFAULT_URL`].
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.config.url = url.into();
        self
    }

    /// The default model: an id, or one of the aliases of [`crate::models`]. Empty means
    /// falcon-40b.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.config.model = model.into();
        self
    }

    /// A proxy for every request: `http://`, `https://` or `socks5://` (with credentials
    /// in the URL if needed). Overrides the environment's proxy variables.
    pub fn proxy(mut self, proxy: impl Into<String>) -> Self {
        self.config.proxy = Some(proxy.into());
        self
    }

    /// Whether `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY` apply (default: yes).
    pub fn env_proxy(mut self, enabled: bool) -> Self {
        self.config.env_proxy = enabled;
        self
    }

    /// Opening a connection (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// A whole settings, create or delete request (default 30 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// From sending the generate request to its first event, queueing and prompt
    /// evaluation included (default 120 s). Keep-alives do not reset it.
    pub fn first_event_timeout(mut self, timeout: Duration) -> Self {
        self.config.first_event_timeout = timeout;
        self
    }

    /// The longest silence between two events (default 30 s). A stalled server is an error.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// The `User-Agent` header.
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.config.user_agent = user_agent.into();
        self
    }

    /// Retries of settings, create and the generate POST before its first event.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.config.retry = policy;
        self
    }

    /// The largest stream event accepted (default 1 MiB). Larger is an error, so a hostile
    /// server cannot exhaust memory.
    pub fn max_event_size(mut self, bytes: usize) -> Self {
        self.config.max_event_size = bytes;
        self
    }

    /// The parameters every request starts from (default: g4f's six, §c).
    pub fn parameters(mut self, parameters: Parameters) -> Self {
        self.config.parameters = parameters;
        self
    }

    /// How `inputs` is built from messages (default: §e.1 `format_prompt`).
    pub fn prompt_format(mut self, format: PromptFormat) -> Self {
        self.config.prompt_format = format;
        self
    }

    /// Checks the settings and builds the client (its connection pool and cookie jar).
    pub fn build(self) -> Result<H2o, Error> {
        H2o::from_config(self.config)
    }
}
