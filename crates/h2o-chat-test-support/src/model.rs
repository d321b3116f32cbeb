//! The local model, as the tool keeps it: fetched once into its home (`h2o-chat`'s main job
//! does it first in CI), SHA-256 checked.

use std::path::PathBuf;
use std::sync::OnceLock;

use h2o_chat_llama::fetch::{SMOLLM2, ensure_model};

/// The local model's GGUF, fetched if it is not there yet.
pub fn local_gguf() -> PathBuf {
    static GGUF: OnceLock<PathBuf> = OnceLock::new();
    GGUF.get_or_init(|| {
        let never = std::sync::atomic::AtomicBool::new(false);
        ensure_model(
            &h2o_chat_cli::home::dir(),
            &SMOLLM2,
            &mut |_, _, _| {},
            &never,
        )
        .expect("the local model is fetched")
    })
    .clone()
}
