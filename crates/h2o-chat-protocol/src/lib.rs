//! # h2o-chat-protocol
//!
//! The H2o chat wire protocol (chat-ui in front of text-generation-inference, as
//! gpt-gm.h2o.ai ran it in 2023), defined once for both sides: the client library
//! (`h2o-chat`) reads it, the server (`h2o-chat-server`) writes it.
//!
//! - [`wire`]: the JSON bodies and events, in wire field order.
//! - [`tgi`]: TGI's request body and its typed `parameters` (§c).
//! - [`decoder`]: the incremental stream decoder (§b.5), a pure function of bytes.
//! - [`event`]: what a decoded event means ([`Event`]).
//!
//! ```
//! use h2o_chat_protocol::{Decoder, Event};
//!
//! let mut decoder = Decoder::new(1 << 20);
//! decoder.push(b"data:{\"token\":{\"id\":1,\"text\":\"Hi\",\"logprob\":-0.5,\"special\":false},");
//! assert!(decoder.next_event().unwrap().is_none()); // the event is not complete yet
//! decoder.push(b"\"generated_text\":null,\"details\":null}\n\n");
//! match decoder.next_event().unwrap() {
//!     Some(Event::Token(token)) => assert_eq!(token.text, "Hi"),
//!     other => panic!("{other:?}"),
//! }
//! ```

pub mod decoder;
pub mod event;
mod fast_path;
pub mod tgi;
pub mod wire;

pub use decoder::{DecodeError, Decoder};
pub use event::{Event, EventError, FinalEvent};
pub use tgi::{CompatGenerateRequest, GenerateParameters};
pub use wire::{
    ConversationCreated, CreateConversation, Details, ErrorEvent, FinishReason, GenerateRequest,
    Options, StreamResponse, Token,
};
