//! The wire formats the server writes, one module per protocol family. Routes hand them
//! pipeline results; they know nothing of engines.
//!
//! - [`sse`]: the event-stream framing.
//! - [`tgi`]: TGI's replies (§b) — also what chat-ui relays (§a.4 step 9).
//! - [`chat_ui`]: chat-ui's own reply shapes (§a.2, §a.6, §a.7).
//! - [`openai`]: the OpenAI-compatible replies.
//!
//! SSE frames are written by hand rather than with axum's `Sse`: axum writes `data: ` with
//! a space, and TGI's wire (which g4f's parser depends on, §b.6) has none.

pub mod chat_ui;
pub mod openai;
pub mod sse;
pub mod tgi;
