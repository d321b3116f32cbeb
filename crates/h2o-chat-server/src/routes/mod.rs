//! The HTTP routes: chat-ui's (`chat_ui`) and text-generation-inference's (`tgi`).

pub mod chat_ui;
pub mod tgi;
