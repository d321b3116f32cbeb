//! `GET /info`: TGI's description of the served model — the engine's own limits, dtype and
//! device — plus which engine really serves each id (stand-ins say so).

use serde_json::{Value, json};

use crate::AppState;
use crate::validation::max_total_tokens;

/// `/info`'s body, or `None` when no model is served.
pub fn info(state: &AppState) -> Option<Value> {
    let limits = state.config().limits;
    let default = state.models().default_model()?;
    let engine = default.engine.info();
    let served: Vec<Value> = state
        .models()
        .all()
        .iter()
        .map(|m| {
            let info = m.engine.info();
            json!({
                "id": m.id,
                "aliases": m.aliases,
                "stand_in": m.stand_in,
                "served_by": info.model_id,
                "backend": info.backend,
                "loaded": m.engine.is_loaded(),
                "parameters": m.parameters(),
            })
        })
        .collect();
    Some(json!({
        "model_id": engine.model_id,
        "model_sha": null,
        "model_dtype": engine.dtype,
        "model_device_type": engine.device,
        "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": limits.max_concurrent_requests,
        "max_best_of": limits.max_best_of,
        "max_stop_sequences": limits.max_stop_sequences,
        "max_top_n_tokens": limits.max_top_n_tokens,
        "grammar_support": true,
        "max_input_length": limits.max_input_length,
        "max_total_tokens": max_total_tokens(&limits, engine.context_length),
        "max_batch_total_tokens": engine.batch_total_tokens,
        "max_batch_size": engine.slots,
        "validation_workers": state.config().bounds.validation_workers,
        "version": concat!("h2o-chat-server ", env!("CARGO_PKG_VERSION")),
        "sha": null,
        "docker_label": null,
        "backend": engine.backend,
        "served_models": served,
    }))
}
