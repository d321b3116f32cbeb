//! Everything a server is configured with: the emulator defaults of the protocol document
//! (§c "Emulator defaults", §a.6 "Emulator note") and the bounds that keep a hostile or
//! careless client from exhausting it. Every map, queue and wait has its limit here.

use std::time::Duration;

pub use crate::store::StoreBounds;

/// TGI's deployment limits (§c).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_input_length: usize,
    pub max_total_tokens: usize,
    pub max_stop_sequences: usize,
    pub max_best_of: usize,
    /// Largest `top_n_tokens` (TGI's `max_top_n_tokens`) and OpenAI `top_logprobs` (20).
    pub max_top_n_tokens: u32,
    /// Generations in flight (running or queued); more get `overloaded`.
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
            max_top_n_tokens: 5,
            max_concurrent_requests: 128,
        }
    }
}

/// Bounds on what clients can make the server hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Largest request body; a larger `Content-Length` is refused at once with 413.
    pub body_limit: usize,
    /// Longest `hf-chat` cookie value taken as a session; a longer one is ignored and a
    /// fresh session issued.
    pub max_cookie_len: usize,
    /// What the conversation store holds.
    pub store: StoreBounds,
    /// Open connections. At the cap a connection that is idle or past a deadline is closed to
    /// make room (the longest-idle first); when none is, a new connection gets 503 and is
    /// closed.
    pub max_connections: usize,
    /// Open connections from one client address; beyond, its new connections get 503 (and
    /// nobody else's is closed for them).
    pub max_connections_per_client: usize,
    /// Concurrent streams of one HTTP/2 connection (when HTTP/2 is on).
    pub max_streams_per_connection: u32,
    /// Tokenisations and template renderings running at once (TGI's `validation_workers`).
    pub validation_workers: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            body_limit: 2 * 1024 * 1024,
            max_cookie_len: 128,
            store: StoreBounds::default(),
            max_connections: 1024,
            max_connections_per_client: 256,
            max_streams_per_connection: 8,
            validation_workers: 2,
        }
    }
}

/// Deadlines on every wait a client can cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From the first byte of a request to its last header.
    pub header_read: Duration,
    /// From the end of a response to the next request on a kept-alive connection.
    pub keep_alive_idle: Duration,
    /// From the end of a request's head to its body's last byte.
    pub body_read: Duration,
    /// A response write that makes no progress (the client stopped reading).
    pub write_stall: Duration,
    /// SSE keep-alive interval (TGI: 15 s).
    pub sse_keep_alive: Duration,
    /// How long shutdown lets running generations finish before ending them.
    pub shutdown: Duration,
    /// One conversation-store operation (its failure is the client's 503 or error event).
    pub store: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header_read: Duration::from_secs(10),
            keep_alive_idle: Duration::from_secs(60),
            body_read: Duration::from_secs(30),
            write_stall: Duration::from_secs(60),
            sse_keep_alive: Duration::from_secs(15),
            shutdown: Duration::from_secs(10),
            store: Duration::from_secs(5),
        }
    }
}

/// The server's settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub limits: Limits,
    pub bounds: Bounds,
    pub timeouts: Timeouts,
    /// chat-ui's ethics modal gate (on by default: g4f always accepts it first).
    pub ethics_gate: bool,
    /// chat-ui's `RATE_LIMIT`: finished generations per session per minute; `None` = off.
    pub rate_limit: Option<u32>,
    /// chat-ui's `PUBLIC_ORIGIN`, for the Referer check; by default the request's own origin.
    pub public_origin: Option<String>,
    /// Conversations whose last activity is older than this are removed (`serve
    /// --retention`); `None` (the default) keeps them until their owner deletes them.
    pub retention: Option<Duration>,
    /// Send `Secure` on the session cookie (only when served over HTTPS).
    pub secure_cookie: bool,
    /// When set, every route that generates or reads conversations requires
    /// `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Serve HTTP/2 (with prior knowledge) beside HTTP/1.1; off by default.
    pub http2: bool,
    /// Host names answered besides the loopback names (`serve --allowed-host`); see
    /// [`crate::host_check`].
    pub allowed_hosts: Vec<String>,
    /// Every request reuses every cached prompt, whoever sent it (`serve
    /// --shared-prompt-cache`): for a server whose clients all trust each other.
    pub shared_prompt_cache: bool,
    /// Origins whose pages may call the OpenAI and TGI routes from a browser
    /// (`serve --cors-origin`, `*` for any); none by default.
    pub cors_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            limits: Limits::default(),
            bounds: Bounds::default(),
            timeouts: Timeouts::default(),
            ethics_gate: true,
            rate_limit: None,
            public_origin: None,
            retention: None,
            secure_cookie: false,
            api_key: None,
            http2: false,
            allowed_hosts: Vec::new(),
            shared_prompt_cache: false,
            cors_origins: Vec::new(),
        }
    }
}
