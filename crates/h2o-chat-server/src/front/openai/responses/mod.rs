//! OpenAI's Responses API: `POST /v1/responses` (stream and not) — what the OpenAI Agents
//! SDK and Codex speak. Part of the OpenAI front: same error envelope, same key guard.
//!
//! - [`wire`]: the request and the `response` object and stream events as types.
//! - [`request`]: a request → a plan (instructions, input items, tools, `text.format`).
//! - [`reply`]: a run → the `response` object, or its event stream.
//! - [`routes`]: the handler, and the `store` / `previous_response_id` answer.
//!
//! Responses are not kept: `store: true` and `previous_response_id` get a 400 that names
//! them, and `GET` / `DELETE /v1/responses/{id}` a 404. A client sends the whole
//! conversation as `input` (the Agents SDK's default), and gets the same answer it would
//! from a stored one; keeping responses per key, bounded and deletable, is the chat-ui
//! store's job for sessions, and not yet this API's.

pub mod reply;
pub mod request;
pub mod routes;
pub mod wire;
