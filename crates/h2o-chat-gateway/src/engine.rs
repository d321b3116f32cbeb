//! The gateway as an [`Engine`]: one per served model id, every request handed to the pool.

use std::sync::Arc;

use h2o_chat_engine::{
    ChatTurn, Cleanup, Constraint, Engine, EngineError, EngineInfo, Generation, GenerationRequest,
    Health, Prompt, Tokenized, chatml,
};
use tokio::sync::mpsc;

use crate::pool::Pool;
use crate::relay::{EVENT_BUFFER, estimate_tokens};
use crate::upstream::Client;

/// The gateway as the engine of one served model id: every request goes to the pool.
pub struct Gateway {
    pool: Arc<Pool>,
    model: String,
}

impl Gateway {
    pub fn new(pool: Arc<Pool>, model: impl Into<String>) -> Self {
        Gateway {
            pool,
            model: model.into(),
        }
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }
}

impl Engine for Gateway {
    fn info(&self) -> EngineInfo {
        EngineInfo {
            model_id: self.model.clone(),
            backend: format!(
                "gateway to {} upstream(s): {}",
                self.pool.upstreams.len(),
                self.pool
                    .upstreams
                    .iter()
                    .map(|u| u.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            compute_type: "gateway".into(),
            dtype: "unknown".into(),
            device: "remote".into(),
            context_length: 0,
            slots: self
                .pool
                .upstreams
                .iter()
                .map(|u| u.spec.max_in_flight)
                .sum(),
            batch_total_tokens: 0,
        }
    }

    fn health(&self) -> Health {
        if self.pool.any_available() {
            Health::Ready
        } else {
            Health::Failed("no upstream is healthy".into())
        }
    }

    /// ChatML text (what a TGI upstream gets), with the messages kept for upstreams that
    /// take messages (OpenAI) or format them themselves (chat-ui).
    fn render_chat(&self, turns: &[ChatTurn]) -> Result<Prompt, EngineError> {
        Ok(chatml(turns))
    }

    fn tokenize(&self, prompt: &Prompt) -> Result<Tokenized, EngineError> {
        Ok(Tokenized::counted(estimate_tokens(&prompt.text())))
    }

    /// Taken when every upstream can carry it (so whichever is chosen honours it): refused
    /// before any upstream is tried otherwise.
    fn check_constraint(&self, constraint: &Constraint) -> Result<(), EngineError> {
        match self.pool.upstreams.iter().find(|u| !u.carries(constraint)) {
            None => Ok(()),
            Some(upstream) => Err(EngineError::Input(format!(
                "the upstream {} cannot enforce a {} constraint through its protocol",
                upstream.name,
                constraint.kind()
            ))),
        }
    }

    fn start(&self, request: GenerationRequest) -> Result<Generation, EngineError> {
        if request.prompt_logprobs {
            return Err(EngineError::Input(
                "the prompt's log-probabilities (`decoder_input_details`) are not relayed by the gateway"
                    .into(),
            ));
        }
        if let Some(constraint) = &request.constraint {
            self.check_constraint(constraint)?;
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| EngineError::Stopped("the gateway needs a tokio runtime".into()))?;
        let (sender, events) = mpsc::channel(EVENT_BUFFER);
        runtime.spawn(self.pool.clone().run(self.model.clone(), request, sender));
        Ok(Generation { events })
    }

    fn pending_cleanup(&self) -> Option<Cleanup> {
        let pool = self.pool.clone();
        Some(Box::pin(async move {
            for upstream in &pool.upstreams {
                if let Client::H2o(relay) = &upstream.client {
                    relay.cleanup().await;
                }
            }
        }))
    }
}
