//! The Messages and Responses doors in front of upstreams, read by Anthropic's and OpenAI's
//! official SDKs: answers relayed from an OpenAI-kind upstream (which receives chat
//! completions), and each SDK's own error types for a wrong key, a request it cannot
//! serve, and an upstream's 429 with its Retry-After.

use h2o_chat_test_support::chat_ui_double as fake;

use std::sync::Arc;

use h2o_chat_engine::{Script, ScriptedEngine};
use h2o_chat_gateway::{Pool, UpstreamKind, UpstreamSpec};
use h2o_chat_server::{ModelRegistry, Server, ServerConfig};
use serde_json::json;

const KEY: &str = "gateway-key";

fn guarded() -> ServerConfig {
    ServerConfig {
        api_key: Some(KEY.into()),
        ..ServerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropics_and_openais_sdks_read_the_doors_through_the_gateway() {
    let upstream = Server::new(
        ServerConfig::default(),
        ModelRegistry::with_h2o_stand_ins(Arc::new(ScriptedEngine::new(Script::default()))),
    )
    .bind("127.0.0.1:0")
    .await
    .unwrap();
    // The upstream serves the H2o ids: it is asked for one of them, whatever the client named.
    let mut spec = UpstreamSpec::new(UpstreamKind::OpenAi, upstream.url());
    spec.model = Some("falcon-40b".into());
    let pool = Pool::new(vec![spec]).unwrap();
    let gateway = h2o_chat_test_support::gateway::serve(guarded(), &pool).await;
    let limited = fake::TestServer::start().await;
    limited.script_generate_always(fake::Reply::Status(
        429,
        vec![("retry-after", "7".into())],
        r#"{"error":"Model is overloaded"}"#.into(),
    ));
    let limited_pool = Pool::new(vec![UpstreamSpec::new(UpstreamKind::H2o, &limited.url)]).unwrap();
    let limited_gateway = h2o_chat_test_support::gateway::serve(guarded(), &limited_pool).await;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python");
    let seen = h2o_chat_test_support::python::run(
        dir,
        "sdk_doors.py",
        &[&gateway.url(), &limited_gateway.url(), KEY],
    )
    .await;
    assert_eq!(seen["message"], "Hello!", "{seen}");
    assert_eq!(seen["response"], "Hello!", "{seen}");
    assert_eq!(
        seen["errors"],
        json!([
            ["anthropic", 401],
            ["openai", 401],
            ["anthropic", 400],
            ["openai", 400],
            ["anthropic", 429],
            ["openai", 429]
        ]),
        "{seen}"
    );
    // The upstream was asked in its own protocol: chat completions.
    let relayed = h2o_chat_test_support::metrics::fetch(&upstream.url()).await;
    assert_eq!(
        relayed.with(
            "h2o_chat_requests_total",
            "route",
            "POST /v1/chat/completions"
        ),
        4.0
    );
}
