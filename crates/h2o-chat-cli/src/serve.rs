//! `h2o-chat serve`: the embedded server on a chosen address, until SIGINT or SIGTERM.

use h2o_chat_server::{ModelRegistry, Server, ServerConfig};

use crate::cli::{Global, ServeArgs, UpstreamKind};
use crate::failure::Failure;
use crate::local;

pub async fn run(global: &Global, args: &ServeArgs) -> Result<(), Failure> {
    let models = match &args.upstream {
        Some(url) => match args.upstream_kind {
            UpstreamKind::H2o => ModelRegistry::relaying_to_h2o(url),
            UpstreamKind::Tgi => ModelRegistry::relaying_to_tgi(url),
        }
        .map_err(|e| Failure::Usage(format!("--upstream {url}: {e}")))?,
        None => {
            let gguf = global.gguf.clone();
            let quiet = global.quiet;
            let parallel = args.parallel;
            let engine =
                tokio::task::spawn_blocking(move || local::load_engine(gguf, quiet, parallel))
                    .await
                    .map_err(|e| Failure::Other(format!("model loading panicked: {e}")))??;
            ModelRegistry::with_h2o_stand_ins(engine)
        }
    };
    let config = ServerConfig {
        ethics_gate: !args.no_ethics_gate,
        rate_limit: args.rate_limit,
        public_origin: args.public_origin.clone(),
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        ..ServerConfig::default()
    };
    let lines = models.describe();
    let server = Server::new(config, models)
        .bind(&args.addr)
        .await
        .map_err(|e| Failure::Usage(format!("cannot listen on {}: {e}", args.addr)))?;
    eprintln!("h2o-chat serve: listening on {}", server.url());
    eprintln!(
        "routes: chat-ui (/settings, /conversation, /conversation/{{id}}), TGI (/generate, /generate_stream, /, /info)"
    );
    eprintln!("models:");
    for line in lines {
        eprintln!("  {line}");
    }
    shutdown_signal().await;
    eprintln!("h2o-chat serve: shutting down");
    server.shutdown();
    server
        .wait()
        .await
        .map_err(|e| Failure::Other(format!("server error: {e}")))
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
