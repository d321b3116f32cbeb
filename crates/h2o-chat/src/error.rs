//! One error type for the whole provider (§f "Client reporting").
//!
//! Every variant says which protocol step failed and at which URL, carries the server's own
//! words where there are any, and keeps the text already streamed (`partial`) so a failure
//! never costs the caller what it already received.

use std::fmt;
use std::time::Duration;

use crate::models::UnknownModel;
use crate::prompt::PromptError;

/// The four steps of the conversation lifecycle (§a).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `POST /settings`: accept the ethics modal, choose the model.
    Settings,
    /// `POST /conversation`.
    CreateConversation,
    /// `POST /conversation/{id}`: the streamed generation.
    Generate,
    /// `DELETE /conversation/{id}`.
    DeleteConversation,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Settings => "settings",
            Step::CreateConversation => "create conversation",
            Step::Generate => "generate",
            Step::DeleteConversation => "delete conversation",
        })
    }
}

/// Which timeout fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    /// Opening the TCP (and TLS) connection.
    Connect,
    /// A whole non-streaming request (settings, create, delete).
    Request,
    /// From sending the generate request to its first event.
    FirstEvent,
    /// Between two events of the stream.
    Idle,
}

impl fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeoutKind::Connect => "connect",
            TimeoutKind::Request => "request",
            TimeoutKind::FirstEvent => "first-event",
            TimeoutKind::Idle => "idle",
        })
    }
}

/// A coarse classification, stable for scripts (the CLI maps it to exit codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Http,
    RateLimited,
    Session,
    Stream,
    Incomplete,
    Protocol,
    Timeout,
    TooLarge,
    Transport,
    Usage,
}

/// Everything that can go wrong talking to an H2o server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with a status that is not success.
    #[error("{step} ({url}): HTTP {status}: {message}")]
    Http {
        step: Step,
        url: String,
        status: u16,
        /// The body's `message`, `error`, `error.message`, or its trimmed text (§f).
        message: String,
    },

    /// HTTP 429, after the retries the policy allows.
    #[error("{step} ({url}): rate limited (HTTP 429){}: {message}", retry_after_text(*retry_after))]
    RateLimited {
        step: Step,
        url: String,
        retry_after: Option<Duration>,
        message: String,
    },

    /// HTTP 403 or 405: the session cookie was lost or the ethics modal not accepted.
    #[error(
        "{step} ({url}): HTTP {status}: {message} (hint: the session was not set up — settings not accepted, cookie lost, or a Referer from another origin)"
    )]
    Session {
        step: Step,
        url: String,
        status: u16,
        message: String,
    },

    /// The server sent an error event (§b.4).
    #[error("the server reported an error{}: {message}", error_type.as_deref().map(|t| format!(" ({t})")).unwrap_or_default())]
    Stream {
        error_type: Option<String>,
        message: String,
        /// The text received before the error.
        partial: String,
    },

    /// The stream ended (or the connection broke) without a final event (§b.5 step 7).
    #[error("the answer is incomplete: the stream ended without a final event after {} bytes of text{}", partial.len(), cause.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Incomplete {
        partial: String,
        /// What the connection said, when it broke rather than closed.
        cause: Option<String>,
    },

    /// The server broke the protocol: a malformed event, a missing `conversationId`, a wrong
    /// content type.
    #[error("{step} ({url}): protocol violation: {detail}")]
    Protocol {
        step: Step,
        url: String,
        detail: String,
        partial: String,
    },

    /// A timeout fired.
    #[error("{step} ({url}): {kind} timeout after {after:?}")]
    Timeout {
        step: Step,
        url: String,
        kind: TimeoutKind,
        after: Duration,
        partial: String,
    },

    /// One stream event was larger than the configured maximum.
    #[error("{step} ({url}): an event is larger than the limit of {limit} bytes")]
    EventTooLarge {
        step: Step,
        url: String,
        limit: usize,
        partial: String,
    },

    /// The request could not be sent or its answer not read. The message carries the whole
    /// cause chain ("error sending request … : connection refused").
    #[error("{step} ({url}): {}", cause_chain(source))]
    Transport {
        step: Step,
        url: String,
        #[source]
        source: reqwest::Error,
    },

    /// A model name that is neither an alias nor an id (legacy API).
    #[error(transparent)]
    UnknownModel(#[from] UnknownModel),

    /// No prompt could be built (no messages).
    #[error(transparent)]
    Prompt(#[from] PromptError),

    /// A setting is invalid (bad URL, bad proxy, …).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The blocking API was called from inside an async runtime, where blocking would stall
    /// the runtime's worker.
    #[error(
        "the blocking h2o_chat API was called from inside an async runtime; use h2o_chat::H2o (async) there"
    )]
    BlockingInsideRuntime,
}

/// An error and every cause under it, joined with `: ` (a cause already quoted by the one
/// above it is not repeated).
pub fn cause_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn retry_after_text(retry_after: Option<Duration>) -> String {
    retry_after
        .map(|d| format!(", retry after {}s", d.as_secs()))
        .unwrap_or_default()
}

/// Convenient alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The text streamed before the failure, when the failure happened mid-stream.
    pub fn partial(&self) -> Option<&str> {
        match self {
            Error::Stream { partial, .. }
            | Error::Incomplete { partial, .. }
            | Error::Protocol { partial, .. }
            | Error::Timeout { partial, .. }
            | Error::EventTooLarge { partial, .. } => Some(partial),
            _ => None,
        }
    }

    /// The coarse kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Http { .. } => ErrorKind::Http,
            Error::RateLimited { .. } => ErrorKind::RateLimited,
            Error::Session { .. } => ErrorKind::Session,
            Error::Stream { .. } => ErrorKind::Stream,
            Error::Incomplete { .. } => ErrorKind::Incomplete,
            Error::Protocol { .. } => ErrorKind::Protocol,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::EventTooLarge { .. } => ErrorKind::TooLarge,
            Error::Transport { .. } => ErrorKind::Transport,
            Error::UnknownModel(_)
            | Error::Prompt(_)
            | Error::Config(_)
            | Error::BlockingInsideRuntime => ErrorKind::Usage,
        }
    }

    /// The HTTP status, for errors that have one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Http { status, .. } | Error::Session { status, .. } => Some(*status),
            Error::RateLimited { .. } => Some(429),
            _ => None,
        }
    }

    /// Errors worth another try of a request that produced nothing yet: connection
    /// failures, 429 and the gateway statuses 502/503/504 (DESIGN "Retries where safe").
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Error::Transport { source, .. } => {
                source.is_connect() || source.is_request() || source.is_body()
            }
            Error::RateLimited { .. } => true,
            Error::Http { status, .. } => matches!(status, 502..=504),
            Error::Timeout {
                kind: TimeoutKind::Connect,
                ..
            } => true,
            _ => false,
        }
    }

    /// For a 429, how long the server asked to wait.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
