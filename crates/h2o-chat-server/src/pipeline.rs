//! One generation, from a validated request to its events — for every route family.
//!
//! Routes only translate: their wire format into a [`Validated`] request, and the
//! [`Step`]s of a [`Run`] back into their wire format. Everything else happens here, once:
//! the concurrency permit (`max_concurrent_requests`), starting the engine, keep-alive
//! ticks while nothing arrives, the shutdown deadline, time-to-first-token and inter-token
//! metrics, the final text (`return_full_text`), and every way a generation can fail, as
//! one [`Failure`] type each protocol maps to its own status or event.
//!
//! The run owns the engine's receiver: when the client disconnects, hyper drops the body,
//! the run goes with it, and the engine frees the sequence at its next step.

use std::sync::Arc;
use std::time::{Duration, Instant};

use h2o_chat_engine::{Engine, EngineError, Finish, GenerationEvent, Token};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::AppState;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::validation::{Rejection, Validated, ValidationError};

/// Every way a generation can fail, whatever the protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// A rule of §c.
    Invalid(ValidationError),
    /// More requests than the server or engine takes (TGI's `overloaded`).
    Overloaded,
    /// The model is loading or the engine has stopped.
    Unavailable(String),
    /// A remote server answered with an error status before any token (relays).
    Upstream {
        status: u16,
        retry_after: Option<Duration>,
        message: String,
    },
    /// Generation failed after starting (TGI's `generation`).
    Generation(String),
    /// The client did not read its stream for too long.
    Stalled(Duration),
    /// The engine's stream ended without a final event (TGI's `incomplete_generation`).
    Incomplete,
    /// The server's shutdown deadline passed.
    ShuttingDown,
}

impl Failure {
    /// The message a client sees.
    pub fn message(&self) -> String {
        match self {
            Failure::Invalid(err) => err.to_string(),
            Failure::Overloaded => "Model is overloaded".into(),
            Failure::Unavailable(reason) => format!("The model is not available: {reason}"),
            Failure::Upstream {
                status, message, ..
            } => format!("Upstream answered {status}: {message}"),
            Failure::Generation(detail) => format!("Request failed during generation: {detail}"),
            Failure::Stalled(waited) => format!(
                "Request failed during generation: the client did not read its stream for {} s",
                waited.as_secs()
            ),
            Failure::Incomplete => "Incomplete generation".into(),
            Failure::ShuttingDown => {
                "Request failed during generation: the server is shutting down".into()
            }
        }
    }

    /// TGI's `error_type` (§b.4), extended with `unavailable` and `shutdown`.
    pub fn error_type(&self) -> &'static str {
        match self {
            Failure::Invalid(_) => "validation",
            Failure::Overloaded => "overloaded",
            Failure::Unavailable(_) | Failure::Upstream { .. } => "unavailable",
            Failure::Generation(_) | Failure::Stalled(_) => "generation",
            Failure::Incomplete => "incomplete_generation",
            Failure::ShuttingDown => "shutdown",
        }
    }
}

impl From<Rejection> for Failure {
    fn from(rejection: Rejection) -> Self {
        match rejection {
            Rejection::Invalid(err) => Failure::Invalid(err),
            Rejection::Unavailable(err) => Failure::from(err),
        }
    }
}

impl From<EngineError> for Failure {
    fn from(err: EngineError) -> Self {
        match err {
            EngineError::Overloaded => Failure::Overloaded,
            EngineError::Input(message) | EngineError::TooLong(message) => {
                Failure::Invalid(ValidationError::Prompt(message))
            }
            other => Failure::Unavailable(other.to_string()),
        }
    }
}

impl From<h2o_chat_engine::Failure> for Failure {
    fn from(failure: h2o_chat_engine::Failure) -> Self {
        match failure {
            h2o_chat_engine::Failure::Upstream {
                status,
                retry_after,
                message,
            } => Failure::Upstream {
                status,
                retry_after,
                message,
            },
            h2o_chat_engine::Failure::Generation(detail) => Failure::Generation(detail),
            h2o_chat_engine::Failure::Stalled { waited } => Failure::Stalled(waited),
        }
    }
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// The last token (special for EOS).
    pub token: Token,
    pub finish: Finish,
    /// `generated_text` as the final event carries it: the prompt first when
    /// `return_full_text` asked for it.
    pub generated_text: String,
    /// Whether the request asked for `details`.
    pub details: bool,
}

/// What a run produces, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing arrived for the keep-alive interval.
    KeepAlive,
    Token(Token),
    /// The last step of a good run.
    Finished(Finished),
    /// The last step of a failed run.
    Failed(Failure),
}

/// A running generation. See the module docs.
pub struct Run {
    events: mpsc::Receiver<GenerationEvent>,
    _permit: OwnedSemaphorePermit,
    validated: Validated,
    engine: Arc<dyn Engine>,
    keep_alive: Duration,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
    started: Instant,
    last_token: Option<Instant>,
    peeked: Option<Step>,
    done: bool,
}

/// Starts a generation under the concurrency limit.
pub fn start(
    state: &AppState,
    engine: &Arc<dyn Engine>,
    validated: Validated,
    started: Instant,
) -> Result<Run, Failure> {
    let permit = state
        .permits()
        .clone()
        .try_acquire_owned()
        .map_err(|_| Failure::Overloaded)?;
    if state.shutdown().is_draining() {
        return Err(Failure::ShuttingDown);
    }
    let generation = engine.start(validated.request.clone())?;
    Ok(Run {
        events: generation.events,
        _permit: permit,
        validated,
        engine: engine.clone(),
        keep_alive: state.config().timeouts.sse_keep_alive,
        shutdown: state.shutdown().clone(),
        metrics: state.metrics().clone(),
        started,
        last_token: None,
        peeked: None,
        done: false,
    })
}

impl Run {
    /// The next step; `None` after the last one.
    pub async fn next(&mut self) -> Option<Step> {
        if let Some(step) = self.peeked.take() {
            return Some(step);
        }
        if self.done {
            return None;
        }
        let received = tokio::select! {
            biased;
            () = self.shutdown.deadline_passed() => {
                self.done = true;
                return Some(Step::Failed(Failure::ShuttingDown));
            }
            received = tokio::time::timeout(self.keep_alive, self.events.recv()) => received,
        };
        let step = match received {
            Err(_) => return Some(Step::KeepAlive),
            Ok(Some(GenerationEvent::Token(token))) => {
                self.record_token();
                Step::Token(token)
            }
            Ok(Some(GenerationEvent::Finished(token, finish))) => {
                self.record_token();
                self.done = true;
                let generated_text = self.final_text(&finish);
                Step::Finished(Finished {
                    token,
                    finish,
                    generated_text,
                    details: self.validated.details,
                })
            }
            Ok(Some(GenerationEvent::Failed(failure))) => {
                self.done = true;
                Step::Failed(failure.into())
            }
            Ok(None) => {
                self.done = true;
                Step::Failed(Failure::Incomplete)
            }
        };
        Some(step)
    }

    /// Waits for the first step (at most a keep-alive interval) and keeps it for
    /// [`Run::next`]. Streaming routes look at it before committing to `200`, so a relayed
    /// upstream's error status is answered as that status (§a.4 step 9: chat-ui relays TGI's
    /// status unchanged).
    pub async fn peek(&mut self) -> Option<&Step> {
        if self.peeked.is_none() {
            self.peeked = self.next().await;
        }
        self.peeked.as_ref()
    }

    /// Reads the run to its end (the non-stream routes).
    pub async fn collect(mut self) -> Result<Collected, Failure> {
        let mut tokens = Vec::new();
        while let Some(step) = self.next().await {
            match step {
                Step::KeepAlive => {}
                Step::Token(token) => tokens.push(token),
                Step::Finished(finished) => {
                    tokens.push(finished.token.clone());
                    return Ok(Collected { finished, tokens });
                }
                Step::Failed(failure) => return Err(failure),
            }
        }
        Err(Failure::Incomplete)
    }

    /// Prompt tokens of the request, after truncation.
    pub fn input_tokens(&self) -> usize {
        self.validated.input_tokens
    }

    fn record_token(&mut self) {
        let now = Instant::now();
        match self.last_token {
            None => self.metrics.observe_first_token(now - self.started),
            Some(last) => self.metrics.observe_inter_token(now - last),
        }
        self.last_token = Some(now);
    }

    /// `generated_text`, with the prompt first when asked for. A truncated prompt is echoed
    /// as the model saw it (its kept tokens), never as the megabytes a client may send.
    fn final_text(&self, finish: &Finish) -> String {
        if !self.validated.return_full_text {
            return finish.generated_text.clone();
        }
        let request = &self.validated.request;
        let prompt = match (&request.tokens, self.validated.truncated) {
            (Some(tokens), true) => tokens
                .ids
                .as_ref()
                .and_then(|ids| self.engine.detokenize(ids))
                .unwrap_or_default(),
            _ => request.prompt.text(),
        };
        format!("{prompt}{}", finish.generated_text)
    }
}

/// A run read to its end.
#[derive(Debug, Clone)]
pub struct Collected {
    pub finished: Finished,
    /// Every token, the last included.
    pub tokens: Vec<Token>,
}

impl Collected {
    /// The non-special text, as a token stream would have shown it.
    pub fn text(&self) -> String {
        self.tokens
            .iter()
            .filter(|t| !t.special)
            .map(|t| t.text.as_str())
            .collect()
    }
}
