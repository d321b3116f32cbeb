//! The `Host` a request names must be one this server answers to: the defence against DNS
//! rebinding. A web page on `attacker.example` can make its own name resolve to
//! 127.0.0.1 and then drive a loopback server from the visitor's browser — the browser's
//! same-origin rule sees one origin — but its requests still carry `Host:
//! attacker.example`. So a server bound to a loopback address answers only to loopback
//! names (`localhost`, `127.0.0.1`, `[::1]`, any port), the names given with
//! `--allowed-host`, and the `--public-origin` host; others get 403. A server bound to
//! another address answers to every name unless names are given (a proxy in front usually
//! sets them).
//!
//! ```
//! use h2o_chat_server::host_check::HostPolicy;
//!
//! let policy = HostPolicy::for_bind(true, &[], None);
//! assert!(policy.allows(Some("localhost:8080")));
//! assert!(policy.allows(Some("[::1]:8080")));
//! assert!(!policy.allows(Some("rebind.attacker.test")));
//! assert!(policy.allows(None), "HTTP/1.0 clients send no Host");
//!
//! let policy = HostPolicy::for_bind(false, &["chat.example.org".into()], None);
//! assert!(policy.allows(Some("Chat.Example.Org.")));
//! assert!(!policy.allows(Some("other.example.org")));
//! ```

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

/// Names a loopback server always answers to.
const LOOPBACK_NAMES: [&str; 4] = ["localhost", "127.0.0.1", "[::1]", "::1"];

/// Which `Host` names are answered; see the module docs.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    /// `None`: every name.
    allowed: Option<Arc<Vec<String>>>,
}

impl HostPolicy {
    /// The policy of a server bound to a loopback address or not, with the operator's names
    /// and public origin (`https://chat.example.org`).
    pub fn for_bind(loopback: bool, names: &[String], public_origin: Option<&str>) -> Self {
        let mut allowed: Vec<String> = names.iter().map(|n| normalized(n)).collect();
        if let Some(host) = public_origin.and_then(origin_host) {
            allowed.push(host);
        }
        if !loopback && allowed.is_empty() {
            return HostPolicy { allowed: None };
        }
        allowed.extend(LOOPBACK_NAMES.iter().map(|n| n.to_string()));
        HostPolicy {
            allowed: Some(Arc::new(allowed)),
        }
    }

    /// Whether a request naming `host` (the `Host` header or the HTTP/2 authority, with or
    /// without a port) is answered.
    pub fn allows(&self, host: Option<&str>) -> bool {
        let (Some(allowed), Some(host)) = (&self.allowed, host) else {
            return true;
        };
        let name = normalized(without_port(host));
        allowed.contains(&name)
    }
}

/// Lower case, without a trailing dot (`Localhost.` is `localhost`).
fn normalized(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// `host:port` → `host`; `[::1]:8080` → `[::1]`.
fn without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The host of an origin URL, normalized.
fn origin_host(origin: &str) -> Option<String> {
    let url = url::Url::parse(origin).ok()?;
    let host = match url.host()? {
        url::Host::Ipv6(addr) => format!("[{addr}]"),
        other => other.to_string(),
    };
    Some(normalized(&host))
}

/// The middleware: 403 for a name the policy does not allow.
pub(crate) async fn check(policy: HostPolicy, request: Request, next: Next) -> Response {
    let named = request
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{fffd}"))
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    if policy.allows(named) {
        return next.run(request).await;
    }
    let shown: String = named.unwrap_or_default().chars().take(100).collect();
    crate::front::chat_ui::reply::route_error(
        request.headers(),
        StatusCode::FORBIDDEN,
        &format!(
            "Forbidden: this server does not answer to the host name `{shown}` (a loopback \
             server answers to localhost, 127.0.0.1 and [::1]; give others with --allowed-host)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_any_port_the_operators_names_and_the_public_origin() {
        let policy = HostPolicy::for_bind(
            true,
            &["chat.lan".into()],
            Some("https://chat.example.org:8443"),
        );
        for host in [
            "localhost",
            "LOCALHOST:1",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:80",
            "chat.lan:8080",
            "chat.example.org",
        ] {
            assert!(policy.allows(Some(host)), "{host}");
        }
        for host in [
            "127.0.0.2",
            "localhost.attacker.test",
            "attacker.test:8080",
            "",
            "[::2]:80",
            "127.0.0.1@attacker",
        ] {
            assert!(!policy.allows(Some(host)), "{host}");
        }
    }

    #[test]
    fn a_network_bind_without_names_answers_every_name() {
        let policy = HostPolicy::for_bind(false, &[], None);
        assert!(policy.allows(Some("anything.test")));
        let policy = HostPolicy::for_bind(false, &[], Some("http://[::1]:8080"));
        assert!(policy.allows(Some("[::1]:8080")));
        assert!(!policy.allows(Some("anything.test")));
    }
}
