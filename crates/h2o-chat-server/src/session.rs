//! The `hf-chat` session cookie (§a.0).
//!
//! chat-ui uses any value the client sends verbatim. So that a client cannot make the
//! server store and echo arbitrary bytes, a value longer than the cap (or one that could not
//! be echoed in a header) is treated as no cookie at all: the request gets a fresh session.

use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, HeaderValue, header};

/// The cookie's name (chat-ui's default `COOKIE_NAME`).
pub const COOKIE_NAME: &str = "hf-chat";

/// The session id of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionId(pub String);

/// The session from the cookie, used verbatim when it is at most `max_len` bytes of
/// printable ASCII; otherwise a new random UUIDv4.
pub fn session_of(headers: &HeaderMap, max_len: usize) -> SessionId {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(COOKIE_NAME)?.strip_prefix('='))
        .find(|value| !value.is_empty())
        .filter(|value| value.len() <= max_len && echoable(value))
        .map(|value| SessionId(value.to_string()))
        .unwrap_or_else(|| SessionId(uuid::Uuid::new_v4().to_string()))
}

/// A cookie value that can be sent back in `Set-Cookie` unchanged.
fn echoable(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b';' && b != b',' && b != b'"' && b != b'\\')
}

/// `Set-Cookie` for a session, expiring in a year. `Secure` only over HTTPS (emulator note).
pub fn set_cookie(session: &SessionId, secure: bool) -> Option<HeaderValue> {
    let expires = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(365 * 24 * 3600));
    let attributes = if secure {
        "HttpOnly; Secure; SameSite=None"
    } else {
        "HttpOnly; SameSite=Lax"
    };
    // A cookie value from the client is echoed; refuse to echo one that could break the header.
    if !echoable(&session.0) {
        return None;
    }
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={}; Path=/; Expires={expires}; {attributes}",
        session.0
    ))
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_value_is_used_verbatim() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; hf-chat=abc-123; b=2"),
        );
        assert_eq!(session_of(&headers, 128), SessionId("abc-123".into()));
    }

    #[test]
    fn no_cookie_gives_a_fresh_uuid() {
        let a = session_of(&HeaderMap::new(), 128);
        let b = session_of(&HeaderMap::new(), 128);
        assert_ne!(a, b);
        assert_eq!(a.0.len(), 36);
    }

    #[test]
    fn a_cookie_longer_than_the_cap_is_no_session() {
        let mut headers = HeaderMap::new();
        let long = format!("hf-chat={}", "a".repeat(129));
        headers.insert(header::COOKIE, HeaderValue::from_str(&long).unwrap());
        let session = session_of(&headers, 128);
        assert_eq!(session.0.len(), 36, "a fresh UUID");
    }

    #[test]
    fn set_cookie_has_path_expiry_and_no_secure_over_http() {
        let value = set_cookie(&SessionId("x".into()), false).unwrap();
        let value = value.to_str().unwrap();
        assert!(value.starts_with("hf-chat=x; Path=/; Expires="), "{value}");
        assert!(value.ends_with("HttpOnly; SameSite=Lax"));
        assert!(!value.contains("Secure"));
    }
}
