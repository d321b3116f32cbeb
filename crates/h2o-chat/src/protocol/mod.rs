//! The wire protocol of `shared/protocol/H2O_CHAT_PROTOCOL.md`, shared by client and server.
//!
//! - [`wire`]: the JSON bodies and events, in wire field order.
//! - [`decoder`]: the incremental stream decoder (§b.5), a pure function of bytes.
//! - [`event`]: what a decoded event means ([`Event`]).

pub mod decoder;
pub mod event;
mod fast_path;
pub mod wire;

pub use decoder::{DecodeError, Decoder};
pub use event::{Event, EventError, FinalEvent};
pub use wire::{
    ConversationCreated, CreateConversation, Details, ErrorEvent, FinishReason, GenerateRequest,
    Options, StreamResponse, Token,
};
