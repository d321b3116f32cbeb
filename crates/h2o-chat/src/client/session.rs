//! The chat-ui session: one cookie jar, one connection pool per proxy, and the settings step
//! done once (§a.0, §a.2).
//!
//! All server state is keyed by the `hf-chat` cookie, so every request of a client shares
//! one jar, whatever proxy carries it. Settings are posted the first time they are needed and
//! again only when the server says the session lost them (405), which keeps a warm
//! completion at two requests on its critical path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use reqwest::cookie::Jar;
use reqwest::{Client, header, redirect};

use crate::client::Config;
use crate::client::reply::{status_error, transport};
use crate::error::{Error, Step};
use crate::protocol::wire::settings_form;

pub(crate) struct Session {
    jar: Arc<Jar>,
    default_client: Client,
    /// Clients for per-call proxies, made on first use and kept for their pools.
    proxied: Mutex<HashMap<String, Client>>,
    settings_done: AtomicBool,
    /// Serialises the settings POST so concurrent first calls send it once.
    settings_lock: tokio::sync::Mutex<()>,
}

impl Session {
    pub(crate) fn new(config: &Config) -> Result<Self, Error> {
        let jar = Arc::new(Jar::default());
        let default_client = make_client(config, &jar, config.proxy.as_deref())?;
        Ok(Session {
            jar,
            default_client,
            proxied: Mutex::new(HashMap::new()),
            settings_done: AtomicBool::new(false),
            settings_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The client for a per-call proxy, or the default one.
    pub(crate) fn client(&self, config: &Config, proxy: Option<&str>) -> Result<Client, Error> {
        let Some(proxy) = proxy else {
            return Ok(self.default_client.clone());
        };
        let mut proxied = self
            .proxied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = proxied.get(proxy) {
            return Ok(client.clone());
        }
        let client = make_client(config, &self.jar, Some(proxy))?;
        proxied.insert(proxy.to_string(), client.clone());
        Ok(client)
    }

    /// Posts the settings form unless this session already did.
    pub(crate) async fn ensure_settings(
        &self,
        config: &Config,
        client: &Client,
        model: &str,
    ) -> Result<(), Error> {
        if self.settings_done.load(Ordering::Acquire) {
            return Ok(());
        }
        let _guard = self.settings_lock.lock().await;
        if self.settings_done.load(Ordering::Acquire) {
            return Ok(());
        }
        config
            .retry
            .run("settings", || post_settings(config, client, model))
            .await?;
        self.settings_done.store(true, Ordering::Release);
        Ok(())
    }

    /// The server answered 405: the session no longer has its settings.
    pub(crate) fn forget_settings(&self) {
        self.settings_done.store(false, Ordering::Release);
    }
}

fn make_client(config: &Config, jar: &Arc<Jar>, proxy: Option<&str>) -> Result<Client, Error> {
    let mut builder = Client::builder()
        .cookie_provider(jar.clone())
        .connect_timeout(config.connect_timeout)
        .user_agent(config.user_agent.clone())
        // A 303 from settings is success; following it would fetch a page for nothing.
        .redirect(redirect::Policy::none())
        .tcp_nodelay(true);
    if let Some(proxy) = proxy {
        let proxy = reqwest::Proxy::all(proxy)
            .map_err(|err| Error::Config(format!("proxy `{proxy}`: {err}")))?;
        builder = builder.proxy(proxy);
    } else if !config.env_proxy {
        builder = builder.no_proxy();
    }
    builder
        .build()
        .map_err(|err| Error::Config(format!("HTTP client: {err}")))
}

/// §a.2: the form action, with the `Referer` its CSRF check requires.
async fn post_settings(config: &Config, client: &Client, model: &str) -> Result<(), Error> {
    let url = format!("{}/settings", config.url);
    let response = client
        .post(&url)
        .header(header::REFERER, config.referer())
        .form(&settings_form(model))
        .timeout(config.request_timeout)
        .send()
        .await
        .map_err(|err| transport(Step::Settings, &url, err, config.request_timeout))?;
    let status = response.status();
    // Any 2xx or 3xx is success (§a.2): JSON `{"type":"redirect"}` or a 303.
    if status.is_success() || status.is_redirection() {
        return Ok(());
    }
    Err(status_error(Step::Settings, &url, response, config.request_timeout).await)
}
