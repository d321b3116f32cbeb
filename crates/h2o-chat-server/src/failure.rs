//! Every way a generation can fail once a front has parsed its request, in no protocol's
//! terms — with the policy each protocol needs as data: how long to wait before retrying
//! ([`Failure::retry_after`]), and whether a streaming client is answered with a status
//! instead of an event ([`Failure::is_status_on_streams`]). Each front maps it to its own
//! wire once: TGI's `error_type` and statuses (`crate::tgi_wire`), OpenAI's error object.
//!
//! ```
//! use std::time::Duration;
//! use h2o_chat_server::failure::Failure;
//!
//! let overloaded = Failure::Overloaded;
//! assert_eq!(overloaded.retry_after(), Some(Duration::from_secs(1)));
//! assert!(!overloaded.is_status_on_streams(), "TGI says it with an event");
//! assert!(Failure::ShuttingDown.is_status_on_streams());
//! ```

use std::time::Duration;

use h2o_chat_engine::{EngineError, GenerationFailure};

use crate::validation::ValidationError;

/// See the module docs.
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
    /// What the client sent or was answered could not be stored (the conversation store
    /// failed): never a silent success.
    Store(String),
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
            Failure::Store(detail) => format!("The conversation could not be stored: {detail}"),
        }
    }

    /// How long a client should wait before trying again, when the failure says.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Upstream { retry_after, .. } => *retry_after,
            Failure::Overloaded => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// Whether a client that asked for a stream gets this as an HTTP status rather than an
    /// event: what TGI itself answers with an event (§f) stays an event; what a relayed
    /// upstream, an unavailable model or a stopping server says is a status.
    pub fn is_status_on_streams(&self) -> bool {
        matches!(
            self,
            Failure::Upstream { .. }
                | Failure::Unavailable(_)
                | Failure::ShuttingDown
                | Failure::Store(_)
        )
    }
}

impl From<ValidationError> for Failure {
    fn from(err: ValidationError) -> Self {
        Failure::Invalid(err)
    }
}

impl From<crate::store::StoreError> for Failure {
    fn from(err: crate::store::StoreError) -> Self {
        Failure::Store(err.to_string())
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

impl From<GenerationFailure> for Failure {
    fn from(failure: GenerationFailure) -> Self {
        match failure {
            GenerationFailure::Upstream {
                status,
                retry_after,
                message,
            } => Failure::Upstream {
                status,
                retry_after,
                message,
            },
            GenerationFailure::Invalid(message) => {
                Failure::Invalid(ValidationError::Refused(message))
            }
            GenerationFailure::Generation(detail) => Failure::Generation(detail),
            GenerationFailure::Stalled { waited } => Failure::Stalled(waited),
        }
    }
}
