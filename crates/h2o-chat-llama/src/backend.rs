//! The process's llama.cpp backend: initialised once, its own logging silenced (tracing
//! carries ours).

use std::path::PathBuf;
use std::sync::OnceLock;

use h2o_chat_engine::EngineError;
use llama_cpp_2::llama_backend::LlamaBackend;

/// llama.cpp may be initialised once per process; this is the process's backend (for code
/// that drives the bindings directly beside the engine, such as the benchmarks).
pub fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let mut backend = LlamaBackend::init().map_err(|e| e.to_string())?;
            // llama.cpp's own logging goes to stderr unless silenced; tracing carries ours.
            backend.void_logs();
            Ok(backend)
        })
        .as_ref()
        .map_err(|e| EngineError::Load {
            path: PathBuf::new(),
            detail: format!("llama.cpp backend: {e}"),
        })
}
