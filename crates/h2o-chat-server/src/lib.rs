//! # h2o-chat-server
//!
//! An H2o-compatible server: the chat-ui routes of gpt-gm.h2o.ai as they were in mid-2023
//! (protocol §a–§f), text-generation-inference's routes and an OpenAI-compatible gateway,
//! answered by a local engine
//! (`h2o-chat-engine`). The original Python provider and the browser-style client both work
//! against it unmodified, and so does this project's own client library.
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

pub mod config;
pub mod generate;
pub mod hooks;
pub mod models;
pub mod reply;
pub mod routes;
pub mod session;
pub mod store;
pub mod upstream;
pub mod validation;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use tokio::sync::{Semaphore, watch};

pub use config::{Limits, ServerConfig};
pub use models::{LOCAL_ALIAS, LOCAL_MODEL_ID, ModelRegistry, ServedModel};
pub use store::{MemoryStore, Store};

struct Shared {
    config: ServerConfig,
    models: ModelRegistry,
    store: Arc<dyn Store>,
    permits: Arc<Semaphore>,
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
    pub fn permits(&self) -> &Arc<Semaphore> {
        &self.0.permits
    }
}

/// A configured server, not yet listening.
pub struct Server {
    state: AppState,
}

impl Server {
    /// A server with the in-memory store.
    pub fn new(config: ServerConfig, models: ModelRegistry) -> Self {
        let store = Arc::new(MemoryStore::new(config.max_conversations_per_session));
        Server::with_store(config, models, store)
    }

    /// A server with any store.
    pub fn with_store(config: ServerConfig, models: ModelRegistry, store: Arc<dyn Store>) -> Self {
        let permits = Arc::new(Semaphore::new(config.limits.max_concurrent_requests));
        Server {
            state: AppState(Arc::new(Shared {
                config,
                models,
                store,
                permits,
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
            .route(
                "/conversation/{id}",
                post(routes::chat_ui::generate)
                    .delete(routes::chat_ui::delete)
                    .patch(routes::chat_ui::rename),
            )
            .route(
                "/conversation/{id}/stop-generating",
                post(routes::chat_ui::stop_generating),
            )
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                hooks::chat_ui_hooks,
            ));
        let tgi = Router::new()
            .route("/", get(routes::chat_ui::page).post(routes::tgi::compat))
            .route("/generate", post(routes::tgi::generate))
            .route("/generate_stream", post(routes::tgi::generate_stream))
            .route("/info", get(routes::tgi::info))
            .route("/v1/models", get(routes::openai::models))
            .route(
                "/v1/chat/completions",
                post(routes::openai::chat_completions),
            )
            .route("/v1/completions", post(routes::openai::completions));
        chat_ui
            .merge(tgi)
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(state.config().body_limit))
            .with_state(state)
    }

    /// Binds (e.g. `127.0.0.1:0` for an ephemeral port) and starts serving in the background.
    pub async fn bind(self, addr: &str) -> std::io::Result<RunningServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let app = self.router();
        let (stop, mut stopped) = watch::channel(false);
        let sweeper = {
            let state = self.state.clone();
            tokio::spawn(async move {
                let ttl = state.config().conversation_ttl;
                let mut tick = tokio::time::interval(
                    ttl.min(std::time::Duration::from_secs(60))
                        .max(std::time::Duration::from_secs(1)),
                );
                loop {
                    tick.tick().await;
                    let removed = state.store().sweep(ttl);
                    if removed > 0 {
                        tracing::info!(removed, "abandoned conversations removed");
                    }
                }
            })
        };
        let task = tokio::spawn(async move {
            let result = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    while !*stopped.borrow() {
                        if stopped.changed().await.is_err() {
                            return;
                        }
                    }
                })
                .await;
            sweeper.abort();
            result
        });
        Ok(RunningServer {
            addr: local,
            stop,
            task,
            state: self.state,
        })
    }
}

async fn not_found(headers: HeaderMap, uri: Uri) -> Response {
    reply::route_error(
        &headers,
        StatusCode::NOT_FOUND,
        &format!("Not found: {}", uri.path()),
    )
}

/// A server that is listening.
pub struct RunningServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
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

    /// Stops accepting connections and lets the open ones finish.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits until the server has stopped.
    pub async fn wait(self) -> std::io::Result<()> {
        match self.task.await {
            Ok(result) => result,
            Err(err) => Err(std::io::Error::other(err)),
        }
    }
}
