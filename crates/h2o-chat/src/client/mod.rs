//! [`H2o`], the async provider (seed 000): settings → create conversation → stream → delete.
//!
//! One `H2o` value is one chat-ui session: a cookie jar, a connection pool and the settings
//! step done once. It is cheap to clone and can be used from many tasks at once; clones share
//! the session.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use h2o_chat::{H2o, Message};
//!
//! # async fn run() -> Result<(), h2o_chat::Error> {
//! let h2o = H2o::builder().url("http://127.0.0.1:8080").build()?;
//! let mut tokens = h2o.stream([Message::user("Hello, how are you?")]).await?;
//! while let Some(token) = tokens.next().await {
//!     print!("{}", token?);
//! }
//! # Ok(()) }
//! ```

mod builder;
mod conversation;
mod generate_stream;
mod reply;
mod retry;
mod session;
mod stream;

use std::sync::Arc;
use std::time::Duration;

pub use builder::{DEFAULT_URL, H2oBuilder};
pub use retry::RetryPolicy;
pub use stream::{Completion, EventStream, TokenStream};

use conversation::Conversation;
use generate_stream::GenerateStream;
use session::Session;
use tokio_util::task::TaskTracker;

use crate::error::Error;
use crate::message::Message;
use crate::models;
use crate::params::Parameters;
use crate::prompt::PromptFormat;
use crate::protocol::wire::{GenerateRequest, Options};

/// Everything a client is configured with.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) url: String,
    pub(crate) model: String,
    pub(crate) proxy: Option<String>,
    pub(crate) env_proxy: bool,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) first_event_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) user_agent: String,
    pub(crate) retry: RetryPolicy,
    pub(crate) max_event_size: usize,
    pub(crate) parameters: Parameters,
    pub(crate) prompt_format: PromptFormat,
}

impl Config {
    /// g4f sent the site's root page as `Referer`; with a path prefix that is the prefix.
    pub(crate) fn referer(&self) -> String {
        format!("{}/", self.url)
    }
}

/// Checks a base URL and strips its trailing slashes (the path prefix is kept).
fn normalize_url(raw: &str) -> Result<String, Error> {
    let parsed =
        url::Url::parse(raw).map_err(|err| Error::Config(format!("base URL `{raw}`: {err}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::Config(format!(
            "base URL `{raw}`: the scheme must be http or https"
        )));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(Error::Config(format!(
            "base URL `{raw}`: a query or fragment cannot be part of a base URL"
        )));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    session: Session,
    /// DELETEs and body drains in flight, so callers can wait for them before exiting.
    pub(crate) cleanup: TaskTracker,
}

/// The H2o chat provider. See the [crate docs](crate).
#[derive(Clone)]
pub struct H2o {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for H2o {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2o")
            .field("url", &self.inner.config.url)
            .field("model", &self.inner.config.model)
            .finish_non_exhaustive()
    }
}

impl H2o {
    /// A builder with every default.
    pub fn builder() -> H2oBuilder {
        H2oBuilder::default()
    }

    /// A client for the server at `url`, with every other default.
    pub fn new(url: impl Into<String>) -> Result<H2o, Error> {
        H2o::builder().url(url).build()
    }

    pub(crate) fn from_config(mut config: Config) -> Result<H2o, Error> {
        config.url = normalize_url(&config.url)?;
        config.model = models::resolve(&config.model).to_string();
        let session = Session::new(&config)?;
        Ok(H2o {
            inner: Arc::new(Inner {
                config,
                session,
                cleanup: TaskTracker::new(),
            }),
        })
    }

    /// The base URL (no trailing slash).
    pub fn url(&self) -> &str {
        &self.inner.config.url
    }

    /// The default model id.
    pub fn model(&self) -> &str {
        &self.inner.config.model
    }

    /// A completion request to configure further (model, parameters, proxy, prompt format).
    pub fn request(&self, messages: impl IntoIterator<Item = Message>) -> CompletionRequest {
        CompletionRequest {
            h2o: self.clone(),
            messages: messages.into_iter().collect(),
            model: None,
            parameters: Parameters::empty(),
            proxy: None,
            prompt_format: None,
            options: None,
        }
    }

    /// Streams the answer's text, token by token, with the client's defaults.
    pub async fn stream(
        &self,
        messages: impl IntoIterator<Item = Message>,
    ) -> Result<TokenStream, Error> {
        self.request(messages).stream().await
    }

    /// The whole answer.
    pub async fn complete(
        &self,
        messages: impl IntoIterator<Item = Message>,
    ) -> Result<Completion, Error> {
        self.request(messages).complete().await
    }

    /// Seed 000's `create_async_generator(model, messages, proxy, **kwargs)`: an empty model
    /// means the client's default; `parameters` are merged over g4f's defaults like `**kwargs`.
    pub async fn create_async_generator(
        &self,
        model: &str,
        messages: &[Message],
        proxy: Option<&str>,
        parameters: Parameters,
    ) -> Result<TokenStream, Error> {
        let mut request = self
            .request(messages.iter().cloned())
            .parameters(parameters);
        if !model.is_empty() {
            request = request.model(model);
        }
        if let Some(proxy) = proxy {
            request = request.proxy(proxy);
        }
        request.stream().await
    }

    pub(crate) fn inner_request_timeout(&self) -> Duration {
        self.inner.config.request_timeout
    }

    /// Waits until every conversation this client finished has been deleted (DELETEs run in
    /// the background). Call it before the runtime shuts down.
    pub async fn wait_for_cleanup(&self) {
        let cleanup = &self.inner.cleanup;
        cleanup.close();
        cleanup.wait().await;
        cleanup.reopen();
    }
}

/// One completion to run; made by [`H2o::request`].
#[derive(Debug, Clone)]
#[must_use]
pub struct CompletionRequest {
    h2o: H2o,
    messages: Vec<Message>,
    model: Option<String>,
    parameters: Parameters,
    proxy: Option<String>,
    prompt_format: Option<PromptFormat>,
    options: Option<Options>,
}

impl CompletionRequest {
    /// The model (id or alias) for this request.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Parameters merged over the client's (`{**defaults, **kwargs}`).
    pub fn parameters(mut self, parameters: Parameters) -> Self {
        self.parameters = self.parameters.merge(&parameters);
        self
    }

    /// One parameter, any key.
    pub fn param(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.parameters.insert(key, value);
        self
    }

    /// A proxy for this request only (seed 000's `proxy` argument).
    pub fn proxy(mut self, proxy: impl Into<String>) -> Self {
        self.proxy = Some(proxy.into());
        self
    }

    /// The prompt format for this request.
    pub fn prompt_format(mut self, format: PromptFormat) -> Self {
        self.prompt_format = Some(format);
        self
    }

    /// Fixed `options` ids instead of fresh UUIDs (seed 001 let callers pass `id` and
    /// `response_id`).
    pub fn options(mut self, options: Options) -> Self {
        self.options = Some(options);
        self
    }

    /// Runs the lifecycle up to the first event and returns the event stream.
    pub async fn events(self) -> Result<EventStream, Error> {
        let inner = self.h2o.inner.clone();
        let config = &inner.config;
        let model = models::resolve(self.model.as_deref().unwrap_or(&config.model)).to_string();
        let format = self.prompt_format.unwrap_or(config.prompt_format);
        let request = GenerateRequest {
            inputs: format.build(&self.messages)?,
            parameters: config.parameters.clone().merge(&self.parameters).into_map(),
            stream: true,
            options: self.options.unwrap_or_else(Options::fresh),
        };
        let client = inner.session.client(config, self.proxy.as_deref())?;
        let generation = start(&inner, &client, &model, &request).await?;
        Ok(EventStream::new(generation))
    }

    /// The answer's text, token by token (special tokens never appear).
    pub async fn stream(self) -> Result<TokenStream, Error> {
        Ok(TokenStream::new(self.events().await?))
    }

    /// The whole answer.
    pub async fn complete(self) -> Result<Completion, Error> {
        self.events().await?.collect_completion().await
    }
}

/// Settings (once), create, generate up to the first event. A 405 means the session lost
/// its settings: they are sent again and the steps repeated, once.
async fn start(
    inner: &Arc<Inner>,
    client: &reqwest::Client,
    model: &str,
    request: &GenerateRequest,
) -> Result<GenerateStream, Error> {
    let config = &inner.config;
    let mut settings_resent = false;
    loop {
        inner.session.ensure_settings(config, client, model).await?;
        let result = async {
            let conversation = config
                .retry
                .run("create conversation", || {
                    Conversation::create(inner, client, model)
                })
                .await?;
            GenerateStream::open(inner, client, conversation, request).await
        }
        .await;
        match result {
            Err(Error::Session { status: 405, .. }) if !settings_resent => {
                tracing::debug!("session lost its settings (405); sending them again");
                settings_resent = true;
                inner.session.forget_settings();
            }
            other => return other,
        }
    }
}
