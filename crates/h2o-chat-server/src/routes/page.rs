//! `GET /`: the page (§a.1), with the session cookie.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::session::{session_of, set_cookie};
use crate::wire::chat_ui::escape_html;

/// A small page naming the models, and the `hf-chat` cookie.
pub async fn page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let items: String = state
        .models()
        .describe()
        .iter()
        .map(|line| format!("<li>{}</li>", escape_html(line)))
        .collect();
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>h2o-chat</title></head><body>\
         <h1>h2o-chat</h1><p>An H2o-compatible chat-ui server (protocol of gpt-gm.h2o.ai, mid-2023), \
         with text-generation-inference and OpenAI-compatible routes.</p><h2>Models</h2><ul>{items}</ul></body></html>"
    );
    let session = session_of(&headers, state.config().bounds.max_cookie_len);
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response();
    if let Some(cookie) = set_cookie(&session, state.config().secure_cookie) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}
