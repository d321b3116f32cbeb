//! What runs before every chat-ui route: the API-key guard ([`guard`]), then chat-ui's hook
//! checks in this order (§a.6): the form CSRF check on `Referer`, the ethics gate, then the
//! session cookie is refreshed.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::AppState;
use crate::auth::{self, KEY_MESSAGE};
use crate::front::chat_ui::reply::{hook_error, media_type};
use crate::session::{SessionId, session_of, set_cookie};

const FORM_TYPES: [&str; 3] = [
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "text/plain",
];

/// `scheme://host[:port]` of a URL, with the default port dropped, lower-cased.
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split(['/', '?', '#']).next()?.to_ascii_lowercase();
    let authority = authority.rsplit('@').next()?.to_string();
    let default_port = match scheme.as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return None,
    };
    let authority = authority
        .strip_suffix(default_port)
        .unwrap_or(&authority)
        .to_string();
    if authority.is_empty() {
        return None;
    }
    Some(format!("{scheme}://{authority}"))
}

fn own_origin(state: &AppState, headers: &HeaderMap) -> Option<String> {
    if let Some(public) = &state.config().public_origin {
        return origin_of(public);
    }
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let scheme = if state.config().secure_cookie {
        "https"
    } else {
        "http"
    };
    origin_of(&format!("{scheme}://{host}"))
}

fn is_form_post(method: &Method, headers: &HeaderMap) -> bool {
    if method != Method::POST {
        return false;
    }
    FORM_TYPES.contains(&media_type(headers).as_str())
}

/// Whether the request comes with a body the hook would leave unread.
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

/// A hook's refusal. It answers before reading the body, so when there is one the
/// connection cannot be reused: say so.
fn refuse(headers: &HeaderMap, status: StatusCode, message: &str) -> Response {
    let mut response = hook_error(headers, status, message);
    if has_body(headers) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The middleware.
pub async fn chat_ui_hooks(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let method = request.method().clone();
    if is_form_post(&method, headers) {
        let Some(referer) = headers.get(header::REFERER).and_then(|v| v.to_str().ok()) else {
            return refuse(
                headers,
                StatusCode::FORBIDDEN,
                "Non-JSON form requests need to have a referer",
            );
        };
        if origin_of(referer).is_none() || origin_of(referer) != own_origin(&state, headers) {
            return refuse(
                headers,
                StatusCode::FORBIDDEN,
                "Invalid referer for POST request",
            );
        }
    }
    let session = session_of(headers, state.config().bounds.max_cookie_len);
    let path = request.uri().path();
    let gated = state.config().ethics_gate
        && !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS)
        && !["/login", "/admin", "/settings"]
            .iter()
            .any(|p| path == *p || path.starts_with(&format!("{p}/")));
    if gated {
        let accepted = state
            .conversations()
            .ethics_accepted(session.0.clone())
            .await;
        let headers = request.headers();
        match accepted {
            Ok(true) => {}
            Ok(false) => {
                return refuse(
                    headers,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "You need to accept the welcome modal first",
                );
            }
            Err(_) => {
                return refuse(
                    headers,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The conversation store is unavailable. Try again later.",
                );
            }
        }
    }
    request.extensions_mut().insert(session.clone());
    let mut response = next.run(request).await;
    if let Some(cookie) = set_cookie(&session, state.config().secure_cookie) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// The API-key guard, refusing in the hook format (§a.6).
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if auth::is_authorized(state.config(), request.headers()) {
        return next.run(request).await;
    }
    auth::challenge(hook_error(
        request.headers(),
        StatusCode::UNAUTHORIZED,
        KEY_MESSAGE,
    ))
}

/// The session the hooks resolved (always present on chat-ui routes).
pub fn session(extensions: &axum::http::Extensions) -> SessionId {
    extensions
        .get::<SessionId>()
        .cloned()
        .unwrap_or_else(|| SessionId(uuid::Uuid::new_v4().to_string()))
}

#[cfg(test)]
mod tests {
    use super::origin_of;

    #[test]
    fn origins_compare_scheme_host_and_port() {
        assert_eq!(
            origin_of("https://gpt-gm.h2o.ai/"),
            Some("https://gpt-gm.h2o.ai".into())
        );
        assert_eq!(
            origin_of("http://127.0.0.1:8080/chat/x?y"),
            Some("http://127.0.0.1:8080".into())
        );
        assert_eq!(origin_of("http://Host:80/a"), Some("http://host".into()));
        assert_eq!(origin_of("not a url"), None);
        assert_eq!(origin_of("ftp://h/"), None);
    }
}
