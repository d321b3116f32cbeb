//! # h2o-chat-gateway
//!
//! The gateway: one front door (every route family this server speaks) in front of many
//! upstreams — text-generation-inference, vLLM's or llama.cpp's OpenAI-compatible servers,
//! chat-ui deployments, more `h2o-chat serve`.
//!
//! - **Balancing**: among the available upstreams (healthy, not cooling down, below their
//!   in-flight cap), the one with the fewest requests in flight per unit of weight; with more
//!   than two, the better of two chosen at random (power of two choices).
//! - **Affinity**: requests with the same hint — a chat-ui conversation id, an OpenAI
//!   `user` — go to the upstream that served the last one while it is available, so its prompt
//!   cache is reused there.
//! - **Health**: an active check every few seconds ([`Pool::spawn_health_checks`]); passive:
//!   an unreachable upstream, a 5xx or a 429 puts it in cooldown (its `Retry-After`, else
//!   1 s doubling per failure in a row, at most a minute). Recovered upstreams come back on
//!   their own.
//! - **Failover** only before the first token reaches the client — the provider library's
//!   own retry rule. After that a failure is the client's error event or error chunk, never a
//!   spliced answer. A chat-ui upstream's conversation is deleted however the attempt ends.
//!
//! The gateway is an [`h2o_chat_engine::Engine`] per served model id: the server in
//! front of it speaks HTTP to clients and knows nothing of upstreams; this crate speaks HTTP
//! to upstreams and knows nothing of clients.
//!
//! ```no_run
//! use h2o_chat_engine::Engine;
//! use h2o_chat_gateway::{Pool, UpstreamKind, UpstreamSpec};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = Pool::new(vec![
//!     UpstreamSpec::new(UpstreamKind::Tgi, "http://127.0.0.1:8081"),
//!     UpstreamSpec::new(UpstreamKind::OpenAi, "http://127.0.0.1:8082"),
//! ])?;
//! pool.spawn_health_checks();
//! for model in h2o_chat_gateway::served_models(&pool) {
//!     println!("{} → {}", model.id, model.engine.info().backend);
//! }
//! # Ok(()) }
//! ```

mod affinity;
mod engine;
mod failover;
mod metrics;
mod pool;
pub mod redact;
pub mod relay;
mod spec;
mod timeouts;
mod upstream;

use std::sync::Arc;

use h2o_chat::models::MODELS as H2O_MODELS;
use h2o_chat_engine::Engine;

pub use engine::Gateway;
pub use metrics::collectors;
pub use pool::Pool;
pub use spec::{SpecError, UpstreamKind, UpstreamSpec};
pub use timeouts::GatewayTimeouts;
pub use upstream::Upstream;

/// The local model's id, which a gateway also answers to (relayed like the others).
pub const LOCAL_MODEL_ID: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";
/// The local model's short alias.
pub const LOCAL_ALIAS: &str = "smollm2";

/// A model id the gateway answers to, and the engine that relays it.
pub struct GatewayModel {
    pub id: String,
    pub aliases: Vec<String>,
    pub engine: Arc<dyn Engine>,
}

/// The ids a gateway serves: the H2o ids and the local model's, each relayed to the pool's
/// upstreams (which receive the id asked for, unless an upstream names its own model).
pub fn served_models(pool: &Arc<Pool>) -> Vec<GatewayModel> {
    H2O_MODELS
        .iter()
        .map(|m| (m.id.to_string(), vec![m.alias.to_string()]))
        .chain(std::iter::once((
            LOCAL_MODEL_ID.to_string(),
            vec![LOCAL_ALIAS.to_string()],
        )))
        .map(|(id, aliases)| GatewayModel {
            engine: Arc::new(Gateway::new(pool.clone(), id.clone())),
            id,
            aliases,
        })
        .collect()
}
