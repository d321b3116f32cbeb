//! Which model ids the server answers to, and which engine really serves each.
//!
//! The local model is served under its own id (and the alias `smollm2`). So that unmodified
//! H2o clients work offline, the three H2o ids of protocol §d are served by it too, as
//! stand-ins — and every listing says so (`/info`, `/v1/models`, the page, `h2o-chat models`).

use std::sync::Arc;

use h2o_chat::models::MODELS as H2O_MODELS;
use h2o_chat_engine::Engine;

/// The local model's id.
pub const LOCAL_MODEL_ID: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";
/// The local model's short alias.
pub const LOCAL_ALIAS: &str = "smollm2";

/// One id the server serves.
#[derive(Clone)]
pub struct ServedModel {
    /// The id clients use.
    pub id: String,
    /// Other names accepted for the same model (the server only knows full ids in chat-ui
    /// routes, as the original did; aliases are for the TGI and OpenAI routes).
    pub aliases: Vec<String>,
    /// The engine that generates for it.
    pub engine: Arc<dyn Engine>,
    /// True when this id names a model the server does not have, answered by another.
    pub stand_in: bool,
}

/// The served models; the first is the default (chat-ui's `models[0]`).
#[derive(Clone)]
pub struct ModelRegistry {
    models: Vec<ServedModel>,
}

/// The parameters the command line and the page send for the local model: greedy with a
/// light repetition penalty. g4f's defaults (temperature 0.4, repetition penalty 1.2, 1,024
/// new tokens) make a 135M-parameter model ramble to the limit; these answer cleanly
/// ("The capital of France is Paris.").
pub fn local_parameters() -> h2o_chat::Parameters {
    h2o_chat::Parameters::empty()
        .truncate(2048)
        .max_new_tokens(512)
        .do_sample(false)
        .repetition_penalty(1.1)
        .return_full_text(false)
}

impl ServedModel {
    /// `id` (and `aliases`) served by `engine`, which is that model.
    pub fn new(id: String, aliases: Vec<String>, engine: Arc<dyn Engine>) -> Self {
        ServedModel {
            id,
            aliases,
            engine,
            stand_in: false,
        }
    }

    /// The parameters a chat-ui client starts with for this model: an H2o model's own
    /// configuration (§a.4, g4f's six), otherwise [`local_parameters`].
    pub fn parameters(&self) -> h2o_chat::Parameters {
        if H2O_MODELS.iter().any(|m| m.id == self.id) {
            h2o_chat::Parameters::default()
        } else {
            local_parameters()
        }
    }
}

impl ModelRegistry {
    /// The H2o ids (falcon-40b first, the default) served by `engine` as stand-ins, then the
    /// engine's own model under its id and `smollm2`.
    pub fn with_h2o_stand_ins(engine: Arc<dyn Engine>) -> Self {
        let own_id = engine.info().model_id;
        let mut models: Vec<ServedModel> = H2O_MODELS
            .iter()
            .map(|m| ServedModel {
                id: m.id.to_string(),
                aliases: vec![m.alias.to_string()],
                engine: engine.clone(),
                stand_in: true,
            })
            .collect();
        models.push(ServedModel {
            id: own_id,
            aliases: vec![LOCAL_ALIAS.to_string()],
            engine,
            stand_in: false,
        });
        ModelRegistry { models }
    }

    /// Exactly these models.
    pub fn new(models: Vec<ServedModel>) -> Self {
        ModelRegistry { models }
    }

    pub fn all(&self) -> &[ServedModel] {
        &self.models
    }

    pub fn default_model(&self) -> Option<&ServedModel> {
        self.models.first()
    }

    /// By full id only (chat-ui routes).
    pub fn by_id(&self, id: &str) -> Option<&ServedModel> {
        self.models.iter().find(|m| m.id == id)
    }

    /// The model an API request names (OpenAI, Responses, Anthropic): any id or alias; none
    /// (or an empty name) means the local model, not a stand-in.
    pub fn for_request(&self, name: Option<&str>) -> Option<&ServedModel> {
        match name.filter(|n| !n.is_empty()) {
            None => self
                .models
                .iter()
                .find(|m| !m.stand_in)
                .or(self.default_model()),
            Some(name) => self.by_name(name),
        }
    }

    /// By id or alias (TGI and OpenAI routes).
    pub fn by_name(&self, name: &str) -> Option<&ServedModel> {
        self.by_id(name).or_else(|| {
            self.models
                .iter()
                .find(|m| m.aliases.iter().any(|a| a == name))
        })
    }

    /// A line per model for people: id, aliases, and what really serves it.
    pub fn describe(&self) -> Vec<String> {
        self.models
            .iter()
            .map(|m| {
                let info = m.engine.info();
                let served_by = if m.stand_in {
                    format!("stand-in, served by {} ({})", info.model_id, info.backend)
                } else {
                    info.backend.clone()
                };
                format!("{} [{}] — {served_by}", m.id, m.aliases.join(", "))
            })
            .collect()
    }
}
