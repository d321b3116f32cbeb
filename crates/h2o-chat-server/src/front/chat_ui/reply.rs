//! The shapes of chat-ui's replies: content negotiation by `Accept` (§a.2, §a.7) and the
//! error bodies of the hooks (§a.6) and of routes (§a.7).

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The request's media type (`Content-Type` before any `;`), lower-cased; empty if none.
pub fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// The q-value `Accept` gives a media type (exact, `type/*` or `*/*`); 0 when not accepted.
fn quality(accept: &str, media: &str) -> f32 {
    let (kind, _) = media.split_once('/').unwrap_or((media, ""));
    let mut best: Option<(u8, f32)> = None;
    for part in accept.split(',') {
        let mut fields = part.split(';');
        let range = fields.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = fields
            .filter_map(|f| f.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let specificity = if range == media {
            3
        } else if range == format!("{kind}/*") {
            2
        } else if range == "*/*" {
            1
        } else {
            continue;
        };
        if best.is_none_or(|(s, _)| specificity > s) {
            best = Some((specificity, q));
        }
    }
    best.map_or(0.0, |(_, q)| q)
}

/// SvelteKit's `negotiate(accept, ["application/json", "text/html"]) === "application/json"`:
/// the first type wins a tie. `absent_is_json` says what a missing `Accept` means (the
/// settings action: JSON; route errors: HTML).
pub fn prefers_json(headers: &HeaderMap, absent_is_json: bool) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return absent_is_json;
    };
    let json = quality(accept, "application/json");
    let html = quality(accept, "text/html");
    json > 0.0 && json >= html
}

/// A route error (§a.7): `{"message": ...}` when JSON wins, else an HTML page.
pub fn route_error(headers: &HeaderMap, status: StatusCode, message: &str) -> Response {
    if prefers_json(headers, false) {
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "message": message }).to_string(),
        )
            .into_response()
    } else {
        html_error(status, message)
    }
}

/// The HTML error page.
pub fn html_error(status: StatusCode, message: &str) -> Response {
    let page = format!(
        "<!doctype html><html><head><title>{code}</title></head><body><h1>{code}</h1><p>{}</p></body></html>",
        escape_html(message),
        code = status.as_u16()
    );
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page,
    )
        .into_response()
}

/// A hook error (§a.6): JSON `{"error": ...}` when `Accept` or `Content-Type` mentions
/// `application/json`, else the bare text.
pub fn hook_error(headers: &HeaderMap, status: StatusCode, message: &str) -> Response {
    let mentions_json = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/json"))
    };
    if mentions_json(header::ACCEPT) || mentions_json(header::CONTENT_TYPE) {
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "error": message }).to_string(),
        )
            .into_response()
    } else {
        (
            status,
            [(header::CONTENT_TYPE, "text/plain")],
            message.to_string(),
        )
            .into_response()
    }
}

/// 500 `Internal Error`, the answer to every schema, JSON or id failure (§a.7).
pub fn internal_error(headers: &HeaderMap) -> Response {
    route_error(headers, StatusCode::INTERNAL_SERVER_ERROR, "Internal Error")
}

pub fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn star_counts_as_json_and_browsers_get_html() {
        assert!(prefers_json(&accept("*/*"), false));
        assert!(prefers_json(&accept("application/json"), false));
        assert!(!prefers_json(
            &accept("text/html,application/xhtml+xml,*/*;q=0.8"),
            true
        ));
        assert!(prefers_json(&HeaderMap::new(), true));
        assert!(!prefers_json(&HeaderMap::new(), false));
        assert!(!prefers_json(&accept("text/plain"), true));
    }
}
