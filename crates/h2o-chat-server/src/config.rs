//! Everything a server is configured with, with the emulator defaults of the protocol
//! document (§c "Emulator defaults", §a.6 "Emulator note").

use std::time::Duration;

/// TGI's deployment limits (§c).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_input_length: usize,
    pub max_total_tokens: usize,
    pub max_stop_sequences: usize,
    pub max_best_of: usize,
    pub max_concurrent_requests: usize,
}

impl Default for Limits {
    /// h2oGPT's TGI flags for these models: 2048 / 4096 / 6, and TGI's 2 / 128.
    fn default() -> Self {
        Limits {
            max_input_length: 2048,
            max_total_tokens: 4096,
            max_stop_sequences: 6,
            max_best_of: 2,
            max_concurrent_requests: 128,
        }
    }
}

/// The server's settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub limits: Limits,
    /// chat-ui's ethics modal gate (on by default: g4f always accepts it first).
    pub ethics_gate: bool,
    /// chat-ui's `RATE_LIMIT`: finished generations per session per minute; `None` = off.
    pub rate_limit: Option<u32>,
    /// chat-ui's `PUBLIC_ORIGIN`, for the Referer check; by default the request's own origin.
    pub public_origin: Option<String>,
    /// Largest request body accepted.
    pub body_limit: usize,
    /// Conversations one session may hold; creating more is refused with 429.
    pub max_conversations_per_session: usize,
    /// Conversations untouched for this long are removed.
    pub conversation_ttl: Duration,
    /// SSE keep-alive interval (TGI: 15 s).
    pub keep_alive: Duration,
    /// Send `Secure` on the session cookie (only when served over HTTPS).
    pub secure_cookie: bool,
    /// When set, the OpenAI routes require `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            limits: Limits::default(),
            ethics_gate: true,
            rate_limit: None,
            public_origin: None,
            body_limit: 2 * 1024 * 1024,
            max_conversations_per_session: 256,
            conversation_ttl: Duration::from_secs(3600),
            keep_alive: Duration::from_secs(15),
            secure_cookie: false,
            api_key: None,
        }
    }
}
