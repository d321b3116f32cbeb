//! The server's front doors, one per protocol: each parses its wire into a
//! [`Plan`](crate::plan::Plan), runs it through the [`pipeline`](crate::pipeline), and writes
//! the run's steps back in its wire. No front imports another; what two share lives beside
//! them (`crate::tgi_wire`: TGI's replies, which chat-ui relays).
//!
//! - [`chat_ui`]: gpt-gm.h2o.ai's chat-ui routes (§a).
//! - [`tgi`]: text-generation-inference's routes (§b, §c).
//! - [`openai`]: the OpenAI-compatible API (chat and text completions).
//! - [`anthropic`]: Anthropic's Messages API.
//! - [`page`]: the web chat page (a chat-ui client of this server).
//! - [`operator`]: `/health` and `/metrics`.

pub mod anthropic;
pub mod chat_ui;
pub mod openai;
pub mod operator;
pub mod page;
pub mod tgi;
