//! # h2o-chat-server
//!
//! An H2o-compatible server: the chat-ui routes of gpt-gm.h2o.ai as they were in mid-2023
//! (protocol §a–§f), text-generation-inference's routes and an OpenAI-compatible gateway,
//! answered by any [`h2o_chat_engine::Engine`] — the local model (`h2o-chat-llama`), a relay
//! to another server, or a scripted engine. The original Python provider and the
//! browser-style client both work against it unmodified, and so does this project's own
//! client library.
//!
//! The shape: routes (`routes/`) are thin shells that translate their wire format into one
//! validated request ([`validation`]) and the steps of one [`pipeline`] back into their
//! wire format ([`wire`]). Around them: the chat-ui hooks, the API-key guard ([`auth`]),
//! metrics, and a listener that bounds every connection ([`config::Bounds`],
//! [`config::Timeouts`]) and shuts down with a deadline ([`shutdown`]).
//!
//! ```no_run
//! use std::sync::Arc;
//! use h2o_chat_engine::{Script, ScriptedEngine};
//! use h2o_chat_server::{ModelRegistry, Server, ServerConfig};
//!
//! # async fn run() -> std::io::Result<()> {
//! let engine = Arc::new(ScriptedEngine::new(Script::default()));
//! let server = Server::new(ServerConfig::default(), ModelRegistry::with_h2o_stand_ins(engine));
//! let running = server.bind("127.0.0.1:8080").await?;
//! println!("listening on {}", running.url());
//! running.wait().await?;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod config;
pub mod gateway;
pub mod history;
pub mod hooks;
mod listener;
pub mod metrics;
pub mod models;
pub mod openai_request;
pub mod pipeline;
pub mod relay;
pub mod routes;
pub mod session;
pub mod settings_form;
pub mod shutdown;
pub mod stops;
pub mod store;
pub mod validation;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::{from_fn_with_state, map_response};
use axum::response::Response;
use axum::routing::{get, post};
use tokio::sync::Semaphore;
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;

pub use config::{Bounds, Limits, ServerConfig, Timeouts};
pub use metrics::Metrics;
pub use models::{LOCAL_ALIAS, LOCAL_MODEL_ID, ModelRegistry, ServedModel};
pub use shutdown::Shutdown;
pub use store::{MemoryStore, SqliteStore, Store, StoreBounds};

struct Shared {
    config: ServerConfig,
    models: ModelRegistry,
    store: Arc<dyn Store>,
    permits: Arc<Semaphore>,
    validation_workers: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    stops: stops::Stops,
}

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn config(&self) -> &ServerConfig {
        &self.0.config
    }
    pub fn models(&self) -> &ModelRegistry {
        &self.0.models
    }
    pub fn store(&self) -> &dyn Store {
        self.0.store.as_ref()
    }
    pub fn store_arc(&self) -> Arc<dyn Store> {
        self.0.store.clone()
    }
    /// Generations in flight (`max_concurrent_requests`).
    pub fn permits(&self) -> &Arc<Semaphore> {
        &self.0.permits
    }
    /// Tokenisations and renderings running at once.
    pub fn validation_workers(&self) -> &Arc<Semaphore> {
        &self.0.validation_workers
    }
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.0.metrics
    }
    pub fn shutdown(&self) -> &Shutdown {
        &self.0.shutdown
    }
    /// The conversations' running generations, for stop-generating.
    pub fn stops(&self) -> &stops::Stops {
        &self.0.stops
    }
}

/// A configured server, not yet listening.
pub struct Server {
    state: AppState,
}

impl Server {
    /// A server with the in-memory store.
    pub fn new(config: ServerConfig, models: ModelRegistry) -> Self {
        let store = Arc::new(MemoryStore::new(StoreBounds::from(&config.bounds)));
        Server::with_store(config, models, store)
    }

    /// A server with any store.
    pub fn with_store(config: ServerConfig, models: ModelRegistry, store: Arc<dyn Store>) -> Self {
        let permits = Arc::new(Semaphore::new(config.limits.max_concurrent_requests));
        let validation_workers = Arc::new(Semaphore::new(config.bounds.validation_workers.max(1)));
        let engines = models
            .all()
            .iter()
            .map(|m| (m.engine.info().model_id, m.engine.clone()))
            .collect();
        let metrics = Metrics::new(engines, models.pool().cloned());
        Server {
            state: AppState(Arc::new(Shared {
                config,
                models,
                store,
                permits,
                validation_workers,
                metrics: Arc::new(metrics),
                shutdown: Shutdown::new(),
                stops: stops::Stops::default(),
            })),
        }
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The axum application.
    pub fn router(&self) -> Router {
        let state = self.state.clone();
        let chat_ui = Router::new()
            .route("/settings", post(routes::chat_ui::settings))
            .route(
                "/conversation",
                post(routes::chat_ui::create).get(routes::chat_ui::conversation_index),
            )
            .route("/conversations", get(routes::chat_ui::list))
            .route(
                "/conversation/{id}",
                post(routes::chat_ui::generate)
                    .get(routes::chat_ui::show)
                    .delete(routes::chat_ui::delete)
                    .patch(routes::chat_ui::rename),
            )
            .route(
                "/conversation/{id}/stop-generating",
                post(routes::chat_ui::stop_generating),
            )
            .route_layer(from_fn_with_state(state.clone(), hooks::chat_ui_hooks))
            .route_layer(from_fn_with_state(state.clone(), auth::chat_ui));
        let tgi_guard = from_fn_with_state(state.clone(), auth::tgi);
        let tgi = Router::new()
            // `/` is the page for GET (open) and TGI's compat route for POST (guarded).
            .route(
                "/",
                get(routes::page::page.layer(CompressionLayer::new()))
                    .post(routes::tgi::compat.layer(tgi_guard.clone())),
            )
            .route(
                "/generate",
                post(routes::tgi::generate.layer(tgi_guard.clone())),
            )
            .route(
                "/generate_stream",
                post(routes::tgi::generate_stream.layer(tgi_guard)),
            )
            .route("/info", get(routes::tgi::info));
        // The page's assets, compressed (the event streams never are).
        let page = Router::new()
            .route("/assets/app.js", get(routes::page::script))
            .route("/assets/app.css", get(routes::page::style))
            .layer(CompressionLayer::new());
        let openai = Router::new()
            .route("/v1/models", get(routes::openai::models))
            .route(
                "/v1/chat/completions",
                post(routes::openai::chat_completions),
            )
            .route("/v1/completions", post(routes::openai::completions))
            .route_layer(from_fn_with_state(state.clone(), auth::openai));
        let operator = Router::new()
            .route("/health", get(routes::health::health))
            .route("/metrics", get(routes::health::metrics));
        let body_limit = state.config().bounds.body_limit;
        chat_ui
            .merge(tgi)
            .merge(openai)
            .merge(operator)
            .merge(page)
            .route_layer(from_fn_with_state(state.clone(), metrics::count_requests))
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(body_limit))
            .layer(RequestBodyTimeoutLayer::new(
                state.config().timeouts.body_read,
            ))
            .layer(RequestBodyLimitLayer::new(body_limit))
            .layer(map_response(close_when_body_refused))
            .with_state(state)
    }

    /// Binds (e.g. `127.0.0.1:0` for an ephemeral port) and starts serving in the background.
    pub async fn bind(self, addr: &str) -> std::io::Result<RunningServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let app = self.router();
        let state = self.state.clone();
        let sweeper = {
            let state = state.clone();
            tokio::spawn(async move {
                let ttl = state.config().conversation_ttl;
                let mut tick = tokio::time::interval(
                    ttl.min(Duration::from_secs(60)).max(Duration::from_secs(1)),
                );
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        () = state.shutdown().draining() => return,
                    }
                    let removed = state.store().sweep(ttl);
                    if removed > 0 {
                        tracing::info!(removed, "abandoned conversations removed");
                    }
                }
            })
        };
        let task = {
            let state = state.clone();
            tokio::spawn(async move {
                listener::serve(
                    listener,
                    app,
                    state.config().bounds.max_connections,
                    state.config().timeouts,
                    state.shutdown().clone(),
                    state.metrics().clone(),
                )
                .await;
                sweeper.abort();
            })
        };
        Ok(RunningServer {
            addr: local,
            task,
            state,
        })
    }
}

/// A refused body (413) was not read: the connection cannot carry another request.
async fn close_when_body_refused(mut response: Response) -> Response {
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn not_found(headers: HeaderMap, uri: Uri) -> Response {
    wire::chat_ui::route_error(
        &headers,
        StatusCode::NOT_FOUND,
        &format!("Not found: {}", uri.path()),
    )
}

/// A server that is listening.
pub struct RunningServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    state: AppState,
}

impl RunningServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Starts a graceful shutdown: no new connections or generations; running ones have the
    /// configured shutdown timeout to finish, then end with an error event.
    pub fn shutdown(&self) {
        self.state
            .shutdown()
            .begin(self.state.config().timeouts.shutdown);
    }

    /// Ends every generation and connection now.
    pub fn force_shutdown(&self) {
        self.state.shutdown().force();
    }

    /// Waits until the server has stopped (after [`RunningServer::shutdown`]), then for the
    /// relays' upstream cleanup, within the shutdown timeout.
    pub async fn wait(self) -> std::io::Result<()> {
        let result = self.task.await.map_err(std::io::Error::other);
        let cleanups: Vec<_> = self
            .state
            .models()
            .all()
            .iter()
            .filter_map(|m| m.engine.pending_cleanup())
            .collect();
        if !cleanups.is_empty() {
            let all = futures_util::future::join_all(cleanups);
            let deadline = self.state.config().timeouts.shutdown;
            if tokio::time::timeout(deadline, all).await.is_err() {
                tracing::warn!("upstream cleanup did not finish within the shutdown timeout");
            }
        }
        result
    }
}
