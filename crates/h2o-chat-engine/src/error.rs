//! What can go wrong before a generation starts.

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
    /// The model is still being fetched or loaded.
    #[error("the model is loading")]
    Loading,
    /// More requests than the engine queues (TGI's `overloaded`).
    #[error("Model is overloaded")]
    Overloaded,
    /// The prompt could not be rendered or tokenized.
    #[error("{0}")]
    Input(String),
    /// The request does not fit what the engine can do (too long for a sequence).
    #[error("{0}")]
    TooLong(String),
    /// The engine has shut down or failed.
    #[error("the engine has stopped: {0}")]
    Stopped(String),
}
