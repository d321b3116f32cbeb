//! How long the gateway waits on its upstreams.

use std::time::Duration;

/// How the gateway waits on upstreams.
#[derive(Debug, Clone, Copy)]
pub struct GatewayTimeouts {
    /// From sending a request to its first token; past it, the next upstream is tried.
    pub first_token: Duration,
    /// Between active health checks.
    pub check_interval: Duration,
    /// One active check.
    pub check_timeout: Duration,
}

impl Default for GatewayTimeouts {
    fn default() -> Self {
        GatewayTimeouts {
            first_token: Duration::from_secs(60),
            check_interval: Duration::from_secs(5),
            check_timeout: Duration::from_secs(5),
        }
    }
}
