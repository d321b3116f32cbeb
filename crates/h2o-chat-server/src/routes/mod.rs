//! The HTTP routes: chat-ui's (`chat_ui`), text-generation-inference's (`tgi`) and the
//! OpenAI-compatible gateway (`openai`).

pub mod chat_ui;
pub mod openai;
pub mod tgi;
