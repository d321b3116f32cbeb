//! # h2o-chat-server
//!
//! An H2o-compatible server: the chat-ui routes of gpt-gm.h2o.ai as they were in mid-2023
//! (protocol §a–§f), text-generation-inference's routes and an OpenAI-compatible API,
//! answered by any [`h2o_chat_engine::Engine`] — the local model (`h2o-chat-llama`), a
//! gateway to other servers (`h2o-chat-gateway`), or a scripted engine. The original Python
//! provider and the browser-style client both work against it unmodified, and so does this
//! project's own client library.
//!
//! The shape: one front door per protocol ([`front`]) parses its wire into a [`plan::Plan`]
//! and writes the steps of a [`pipeline::Run`] back in its wire. Below the fronts, nothing
//! knows which protocol asked: [`prepare`] renders and tokenises in one hop off the runtime,
//! [`validation`] holds the rules as data, [`pipeline`] runs the engine under the server's
//! limits, and a [`failure::Failure`] carries its policy for each front to word. Around
//! them: the conversation [`store`], [`metrics`], and a listener that bounds every
//! connection ([`config::Bounds`], [`config::Timeouts`]) and shuts down with a deadline
//! ([`shutdown`]).
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
pub mod cors;
pub mod failure;
pub mod front;
pub mod host_check;
mod listener;
pub mod metrics;
pub mod models;
pub mod pipeline;
pub mod plan;
pub mod prepare;
pub mod session;
pub mod shutdown;
mod sse;
pub mod store;
pub mod streaming;
pub mod tgi_wire;
pub mod tools;
pub mod validation;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::{from_fn_with_state, map_response};
use axum::response::Response;
use axum::routing::get;
use tokio::sync::Semaphore;
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;

pub use config::{Bounds, Limits, ServerConfig, Timeouts};
pub use metrics::Metrics;
pub use models::{LOCAL_ALIAS, LOCAL_MODEL_ID, ModelRegistry, ServedModel};
pub use shutdown::Shutdown;
pub use store::{Conversations, MemoryStore, SqliteStore, Store, StoreBounds};

use front::chat_ui::aborts::Aborts;
use host_check::HostPolicy;
use store::Sweep;
use streaming::Streams;

/// The route families and their paths, for people (the `serve` banner).
pub const ROUTES: &[(&str, &[&str])] = &[
    ("chat-ui", front::chat_ui::PATHS),
    ("TGI", front::tgi::PATHS),
    ("OpenAI", front::openai::PATHS),
    ("Anthropic", front::anthropic::PATHS),
    ("operator", front::operator::PATHS),
];

struct Shared {
    config: ServerConfig,
    models: ModelRegistry,
    conversations: Conversations,
    permits: Arc<Semaphore>,
    validation_workers: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    aborts: Aborts,
    streams: Streams,
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
    /// The store itself: its counts, and tests' direct reads. Handlers go through
    /// [`AppState::conversations`], off the runtime.
    pub fn store(&self) -> &dyn Store {
        self.0.conversations.store().as_ref()
    }
    /// The store as handlers use it: off the runtime, with a deadline, failures counted.
    pub fn conversations(&self) -> &Conversations {
        &self.0.conversations
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
    pub fn aborts(&self) -> &Aborts {
        &self.0.aborts
    }
    /// The streamed answers' tasks.
    pub fn streams(&self) -> &Streams {
        &self.0.streams
    }
}

/// A configured server, not yet listening.
pub struct Server {
    state: AppState,
}

impl Server {
    /// A server with the in-memory store.
    pub fn new(config: ServerConfig, models: ModelRegistry) -> Self {
        let store = Arc::new(MemoryStore::new(config.bounds.store));
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
        let metrics = Metrics::new(engines, config.bounds.store.max_conversations);
        let config_stall = config.timeouts.write_stall;
        let conversations =
            Conversations::new(store, config.timeouts.store, metrics.store_failures.clone());
        Server {
            state: AppState(Arc::new(Shared {
                config,
                models,
                conversations,
                permits,
                validation_workers,
                metrics: Arc::new(metrics),
                shutdown: Shutdown::new(),
                aborts: Aborts::default(),
                streams: Streams::new(config_stall),
            })),
        }
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Adds figures kept outside the server (a gateway's per-upstream metrics) to
    /// `/metrics`.
    pub fn register_metrics(
        &self,
        collector: Box<dyn prometheus::core::Collector>,
    ) -> prometheus::Result<()> {
        self.state.metrics().register(collector)
    }

    /// The axum application: every front, counted by route, within the body bounds.
    pub fn router(&self) -> Router {
        let state = self.state.clone();
        // `/` is the page for GET (open) and TGI's compat route for POST (guarded).
        let root =
            get(front::page::page.layer(CompressionLayer::new())).merge(front::tgi::compat(&state));
        let body_limit = state.config().bounds.body_limit;
        // The APIs a browser app on another origin may call, when the operator says which
        // origins; chat-ui's cookie routes stay same-origin.
        let apis = Router::new()
            .route("/", root)
            .merge(front::tgi::router(&state))
            .merge(front::anthropic::router(&state))
            .merge(front::openai::router(&state));
        let apis = match cors::layer(&state.config().cors_origins) {
            Some(cors) => apis.layer(cors),
            None => apis,
        };
        Router::new()
            .merge(apis)
            .merge(front::chat_ui::router(&state))
            .merge(front::operator::router())
            .merge(front::page::router())
            .route_layer(from_fn_with_state(state.clone(), metrics::count_requests))
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(body_limit))
            .layer(RequestBodyLimitLayer::new(body_limit))
            .layer(map_response(close_when_body_refused))
            .with_state(state)
    }

    /// Binds (e.g. `127.0.0.1:0` for an ephemeral port) and starts serving in the background.
    pub async fn bind(self, addr: &str) -> std::io::Result<RunningServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let state = self.state.clone();
        let policy = HostPolicy::for_bind(
            local.ip().is_loopback(),
            &state.config().allowed_hosts,
            state.config().public_origin.as_deref(),
        );
        let app = self
            .router()
            .layer(axum::middleware::from_fn(move |request, next| {
                host_check::check(policy.clone(), request, next)
            }));
        let sweep = Sweep {
            retention: state.config().retention,
            untouched: store::UNTOUCHED_TTL,
        };
        // Once before the first request (a store reopened after downtime is swept by its
        // rows' own ages), then every minute. A failure is counted and logged by the
        // store's handle, and every request will say so too.
        let _ = state.conversations().sweep(sweep).await;
        let sweeper = {
            let state = state.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        () = state.shutdown().draining() => return,
                    }
                    // A failure is counted and logged by the store's handle; the next tick
                    // tries again.
                    if let Ok(removed) = state.conversations().sweep(sweep).await
                        && removed > 0
                    {
                        tracing::info!(removed, "conversations removed by the sweep");
                    }
                }
            })
        };
        let task = {
            let state = state.clone();
            tokio::spawn(async move {
                let config = state.config();
                let listening = listener::Listening {
                    max_connections: config.bounds.max_connections,
                    max_connections_per_client: config.bounds.max_connections_per_client,
                    http2_streams: config
                        .http2
                        .then_some(config.bounds.max_streams_per_connection),
                    timeouts: config.timeouts,
                };
                listener::serve(
                    listener,
                    app,
                    listening,
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
    front::chat_ui::reply::route_error(
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
    /// streamed answers to end (their turns stored) and the relays' upstream cleanup, within
    /// the shutdown timeout.
    pub async fn wait(self) -> std::io::Result<()> {
        let result = self.task.await.map_err(std::io::Error::other);
        // Every answer ends by the shutdown deadline, its turn stored on the way out; the
        // bound only turns a bug into a warning instead of a hang.
        let deadline = self.state.config().timeouts.shutdown + Duration::from_secs(5);
        if tokio::time::timeout(deadline, self.state.streams().ended())
            .await
            .is_err()
        {
            tracing::warn!("streamed answers were still ending after the shutdown deadline");
        }
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
