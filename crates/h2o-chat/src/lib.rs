//! # h2o-chat
//!
//! The H2o chat provider: talk to an H2O.ai chat service (HuggingFace chat-ui in front of
//! text-generation-inference) and stream the model's answer token by token.
//!
//! Two faces, one implementation:
//!
//! - [`H2o`] — async (seed 000's `create_async_generator`): settings → create conversation →
//!   stream → delete, with timeouts, safe retries and cleanup on every path.
//! - [`blocking::H2o`] and [`legacy::create_completion`] — blocking (seed 001), driving the
//!   async client on a background runtime.
//!
//! The wire protocol lives in [`protocol`]; its stream decoder is a pure function of bytes.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use h2o_chat::{H2o, Message, Parameters};
//!
//! # async fn run() -> Result<(), h2o_chat::Error> {
//! let h2o = H2o::builder().url("http://127.0.0.1:8080").build()?;
//! let mut tokens = h2o
//!     .request([Message::user("Tell me a joke.")])
//!     .parameters(Parameters::default().temperature(0.7))
//!     .stream()
//!     .await?;
//! while let Some(token) = tokens.next().await {
//!     print!("{}", token?);
//! }
//! h2o.wait_for_cleanup().await; // the DELETE runs off the critical path
//! # Ok(()) }
//! ```

pub mod blocking;
mod client;
pub mod error;
pub mod legacy;
mod message;
pub mod models;
pub mod params;
pub mod prompt;
pub use h2o_chat_protocol as protocol;

pub use client::{
    Completion, CompletionRequest, DEFAULT_URL, EventStream, H2o, H2oBuilder, RetryPolicy,
    TokenStream,
};
pub use error::{Error, ErrorKind, Result, Step, TimeoutKind};
pub use message::Message;
pub use params::Parameters;
pub use prompt::PromptFormat;
pub use protocol::{Details, Event, FinalEvent, FinishReason, Token};
