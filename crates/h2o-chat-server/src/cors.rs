//! Cross-origin access to the APIs (`serve --cors-origin`): a browser app served from
//! another origin may call the OpenAI and TGI routes when the operator names its origin
//! (or `*`). Preflight requests are answered without the API key — they carry none, and
//! the request that follows still needs it. Without origins there is no cross-origin access
//! at all (no CORS headers: the browser refuses), which is the default. chat-ui's routes
//! are never cross-origin: they hold a session cookie.
//!
//! ```
//! use h2o_chat_server::cors;
//!
//! assert!(cors::layer(&[]).is_none());
//! assert!(cors::layer(&["https://app.example.org".into()]).is_some());
//! ```

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

/// The CORS layer for these origins; `None` when there are none.
pub fn layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers([
                header::RETRY_AFTER,
                HeaderName::from_static("x-compute-type"),
                HeaderName::from_static("x-compute-characters"),
            ])
            .max_age(Duration::from_secs(3600)),
    )
}
