//! The HTTP routes, thin shells over the pipeline: chat-ui's (`chat_ui`),
//! text-generation-inference's (`tgi`), the OpenAI-compatible gateway (`openai`), and the
//! operator's `/health` and `/metrics` (`health`). Each only translates its wire format into
//! a validated request and the pipeline's steps back.

pub mod chat_ui;
pub mod health;
pub mod openai;
pub mod page;
pub mod tgi;
