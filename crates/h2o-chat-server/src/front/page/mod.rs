//! `GET /` and its assets: the web chat page, embedded in the binary (no CDN, no build
//! step). It is a chat-ui client of this server's own routes; see `app.js` beside it.
//!
//! Every page response forbids inline and foreign scripts (Content-Security-Policy), so even
//! a bug in the page's Markdown renderer could not run a model's output as code. The assets
//! carry an ETag and are revalidated on each load (`no-cache`): a reload costs a 304.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::compression::CompressionLayer;

use crate::AppState;
use crate::session::{session_of, set_cookie};

/// An embedded file and its validator.
pub struct Asset {
    pub body: &'static str,
    pub content_type: &'static str,
    /// FNV-1a of the bytes, computed at build time.
    hash: u64,
}

impl Asset {
    const fn new(body: &'static str, content_type: &'static str) -> Asset {
        let bytes = body.as_bytes();
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut i = 0;
        while i < bytes.len() {
            hash ^= bytes[i] as u64;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
            i += 1;
        }
        Asset {
            body,
            content_type,
            hash,
        }
    }

    /// A strong ETag (the files are fixed at build time).
    fn etag(&self) -> String {
        format!("\"{:016x}\"", self.hash)
    }
}

pub static INDEX: Asset = Asset::new(include_str!("index.html"), "text/html; charset=utf-8");
pub static SCRIPT: Asset = Asset::new(include_str!("app.js"), "text/javascript; charset=utf-8");
pub static STYLE: Asset = Asset::new(include_str!("app.css"), "text/css; charset=utf-8");

const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The asset, or 304 when the browser's copy is current.
fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let etag = asset.etag();
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The chat-ui hooks check the Referer of form posts: keep it for this origin.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// `GET /`: the page, with the `hf-chat` session cookie (§a.1).
pub async fn page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let session = session_of(&headers, state.config().bounds.max_cookie_len);
    let mut response = serve(&INDEX, &headers);
    if let Some(cookie) = set_cookie(&session, state.config().secure_cookie) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// The page's assets, compressed (the event streams never are). `GET /` itself is merged
/// with TGI's `POST /` by the server.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/assets/app.js", get(script))
        .route("/assets/app.css", get(style))
        .layer(CompressionLayer::new())
}

/// `GET /assets/app.js`.
pub async fn script(headers: HeaderMap) -> Response {
    serve(&SCRIPT, &headers)
}

/// `GET /assets/app.css`.
pub async fn style(headers: HeaderMap) -> Response {
    serve(&STYLE, &headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        for reference in ["assets/app.css", "assets/app.js"] {
            assert!(INDEX.body.contains(reference), "{reference}");
        }
        assert!(
            !INDEX.body.contains("<script>"),
            "no inline script: the policy forbids it"
        );
        assert!(!INDEX.body.contains("http://") && !INDEX.body.contains("https://"));
        assert!(
            !SCRIPT.body.contains("innerHTML"),
            "model output never becomes HTML"
        );
    }

    #[test]
    fn a_current_copy_is_answered_with_304() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&INDEX.etag()).unwrap(),
        );
        assert_eq!(serve(&INDEX, &headers).status(), StatusCode::NOT_MODIFIED);
        assert_eq!(serve(&INDEX, &HeaderMap::new()).status(), StatusCode::OK);
    }
}
