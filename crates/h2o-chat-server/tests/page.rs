//! The page's files over HTTP: the page and its two assets, compressed when the browser
//! accepts gzip (event streams never are), revalidated with their ETag, and served under a
//! policy that allows no script but the page's own.

use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH,
};
use serde_json::json;

fn plain() -> reqwest::Client {
    // No automatic decompression: the test sees the bytes on the wire.
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test]
async fn the_page_and_its_assets_are_compressed_cached_and_script_locked() {
    let server = h2o_chat_test_support::server::start().await;
    let url = server.url();
    for (path, kind) in [
        ("/", "text/html"),
        ("/assets/app.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
    ] {
        let response = plain()
            .get(format!("{url}{path}"))
            .header(ACCEPT_ENCODING, "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers().clone();
        assert!(
            headers[CONTENT_TYPE].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        assert_eq!(headers[CONTENT_ENCODING], "gzip", "{path}");
        let policy = headers[CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(policy.contains("script-src 'self'") && !policy.contains("unsafe-inline"));
        let etag = headers[ETAG].clone();
        let again = plain()
            .get(format!("{url}{path}"))
            .header(IF_NONE_MATCH, etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
    }
}

#[tokio::test]
async fn event_streams_are_never_compressed() {
    let server = h2o_chat_test_support::server::start().await;
    let response = plain()
        .post(format!("{}/generate_stream", server.url()))
        .header(ACCEPT_ENCODING, "gzip")
        .json(&json!({"inputs": "Hi", "parameters": {"max_new_tokens": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get(CONTENT_ENCODING).is_none());
    assert!(response.text().await.unwrap().starts_with("data:"));
}
