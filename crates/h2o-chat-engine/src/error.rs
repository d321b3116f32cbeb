//! What can go wrong in local inference.

use std::path::PathBuf;

/// An engine failure. Messages are written for the person running the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The model file could not be loaded.
    #[error("cannot load the model {path}: {detail}")]
    Load { path: PathBuf, detail: String },
    /// Getting the model (pip, the wheel, the checksum) failed.
    #[error("cannot get the model: {0}")]
    Fetch(String),
    /// More requests than the engine queues (TGI's `overloaded`).
    #[error("Model is overloaded")]
    Overloaded,
    /// The prompt could not be rendered or tokenized.
    #[error("{0}")]
    Input(String),
    /// Generation failed mid-way (TGI's `generation` error).
    #[error("{0}")]
    Generation(String),
    /// The engine has shut down.
    #[error("the engine has stopped")]
    Stopped,
}
