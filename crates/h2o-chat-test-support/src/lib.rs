//! # h2o-chat-test-support
//!
//! What the project's tests share, so that each rule is tested once and each helper exists
//! once:
//!
//! - [`chat_ui_double`]: a chat-ui server that records every request byte for byte and can
//!   be told to misbehave in every way the protocol lists (the client's tests).
//! - [`http`]: loopback clients and JSON requests.
//! - `chat_ui` (feature `server`): a chat-ui client's first steps against a real server (settings, create,
//!   g4f's generate body).
//! - [`metrics`]: one parser of Prometheus' text format, for reading a server's own figures.
//! - [`python`]: the official clients' test scripts, run against a loopback server.
//! - `server` (feature `server`): `h2o-chat-server` on an ephemeral loopback port with a
//!   scripted engine, and raw sockets for the tests that misbehave below HTTP.
//! - `gateway` (feature `gateway`): a gateway server in front of upstreams.
//! - `model` (feature `model`): the local model, where the tool keeps it.
//!
//! ```
//! let figures = h2o_chat_test_support::metrics::parse(
//!     "# TYPE h2o_chat_requests_total counter\n\
//!      h2o_chat_requests_total{route=\"POST /generate\",status=\"200\"} 2\n\
//!      h2o_chat_requests_total{route=\"GET /info\",status=\"200\"} 1\n",
//! );
//! assert_eq!(figures.sum("h2o_chat_requests_total"), 3.0);
//! assert_eq!(figures.with("h2o_chat_requests_total", "route", "GET /info"), 1.0);
//! ```

#[cfg(feature = "server")]
pub mod chat_ui;
pub mod chat_ui_double;
#[cfg(feature = "gateway")]
pub mod gateway;
pub mod http;
pub mod metrics;
#[cfg(feature = "model")]
pub mod model;
pub mod python;
#[cfg(feature = "server")]
pub mod server;
