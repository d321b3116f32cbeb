//! A gateway server on an ephemeral loopback port: the ids `h2o-chat-gateway` serves, its
//! per-upstream figures in `/metrics`.

use std::sync::Arc;

use h2o_chat_gateway::Pool;
use h2o_chat_server::{ModelRegistry, RunningServer, ServedModel, Server, ServerConfig};

/// A server relaying every model id to `pool`.
pub async fn serve(config: ServerConfig, pool: &Arc<Pool>) -> RunningServer {
    let models = h2o_chat_gateway::served_models(pool)
        .into_iter()
        .map(|model| ServedModel::new(model.id, model.aliases, model.engine))
        .collect();
    let server = Server::new(config, ModelRegistry::new(models));
    for collector in h2o_chat_gateway::collectors(pool) {
        server
            .register_metrics(collector)
            .expect("the gateway's metrics register once");
    }
    server.bind("127.0.0.1:0").await.expect("bind loopback")
}
