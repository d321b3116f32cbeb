//! The gateway in front of several upstreams (scripted servers and fault-injecting ones, all
//! on loopback): load spread by outstanding requests, conversation affinity, failover only
//! before the first token (429 with Retry-After, 503, a stalled upstream), errors after it
//! never spliced, health checks taking an upstream out and back, and per-upstream metrics.
//! (Real `h2o-chat serve` processes, killed and restarted, are in the CLI's tests.)

use h2o_chat_test_support::chat_ui_double as fake;
use h2o_chat_test_support::{chat_ui, metrics, server};

use std::sync::Arc;
use std::time::Duration;

use h2o_chat_engine::{Script, ScriptGate, ScriptedEngine};
use h2o_chat_gateway::{GatewayTimeouts, Pool, UpstreamKind, UpstreamSpec};
use h2o_chat_server::{ModelRegistry, RunningServer, Server, ServerConfig};
use h2o_chat_test_support::server::reach;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn upstream(script: Script) -> RunningServer {
    Server::new(
        ServerConfig::default(),
        ModelRegistry::with_h2o_stand_ins(Arc::new(ScriptedEngine::new(script))),
    )
    .bind("127.0.0.1:0")
    .await
    .unwrap()
}

fn timeouts() -> GatewayTimeouts {
    GatewayTimeouts {
        first_token: Duration::from_millis(500),
        check_interval: Duration::from_millis(100),
        check_timeout: Duration::from_millis(500),
    }
}

async fn gateway(specs: Vec<UpstreamSpec>) -> (RunningServer, Arc<Pool>) {
    let pool = Pool::with_timeouts(specs, timeouts()).unwrap();
    let server = h2o_chat_test_support::gateway::serve(ServerConfig::default(), &pool).await;
    (server, pool)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn generate(url: &str) -> reqwest::Response {
    http()
        .post(format!("{url}/generate"))
        .json(&json!({"inputs": "Hi", "parameters": {"max_new_tokens": 4}}))
        .send()
        .await
        .unwrap()
}

/// Requests an upstream server answered on a TGI route.
async fn served(upstream: &RunningServer) -> f64 {
    let text = http()
        .get(format!("{}/metrics", upstream.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("h2o_chat_requests_total{route=\"POST /generate"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn load_is_spread_by_outstanding_requests() {
    let gate = ScriptGate::new();
    let mut upstreams = Vec::new();
    for _ in 0..3 {
        upstreams.push(upstream(server::gated(&gate, true)).await);
    }
    let specs = upstreams
        .iter()
        .map(|u| UpstreamSpec::new(UpstreamKind::Tgi, u.url()))
        .collect();
    let (gateway, _) = gateway(specs).await;
    // Nine streams held open by the gate: each upstream gets three.
    let url = gateway.url();
    let streams: Vec<_> = (0..9)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                http()
                    .post(format!("{url}/generate_stream"))
                    .json(&json!({"inputs": "Hi", "parameters": {"max_new_tokens": 2}}))
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap()
            })
        })
        .collect();
    // All nine are running before any ends, so each choice saw the others' load.
    reach(gate.started(), 9).await;
    gate.release(100);
    for stream in streams {
        assert!(stream.await.unwrap().contains("generated_text"));
    }
    for upstream in &upstreams {
        assert_eq!(served(upstream).await, 3.0, "{}", upstream.url());
    }
}

#[tokio::test]
async fn a_conversation_sticks_to_its_upstream() {
    let a = upstream(Script::default()).await;
    let b = upstream(Script::default()).await;
    let (gateway, _) = gateway(vec![
        UpstreamSpec::new(UpstreamKind::Tgi, a.url()),
        UpstreamSpec::new(UpstreamKind::Tgi, b.url()),
    ])
    .await;
    let url = gateway.url();
    let mut conversations = Vec::new();
    for _ in 0..4 {
        conversations.push(chat_ui::ready_conversation(&url).await);
    }
    for turn in 0..3 {
        for (client, id) in &conversations {
            let body = client
                .post(format!("{url}/conversation/{id}"))
                .json(&chat_ui::g4f_body(&format!("turn {turn}")))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(body.contains("generated_text"), "{body}");
        }
    }
    // Every conversation's three turns went to one upstream: each upstream served a
    // multiple of three requests, twelve in all.
    let (on_a, on_b) = (served(&a).await, served(&b).await);
    assert_eq!(on_a + on_b, 12.0);
    assert_eq!(on_a % 3.0, 0.0, "a: {on_a}, b: {on_b}");
}

#[tokio::test]
async fn a_429_with_retry_after_fails_over_before_the_first_token() {
    let refusing = fake::TestServer::start().await;
    refusing.script_generate_always(fake::Reply::Status(
        429,
        vec![("retry-after", "30".into())],
        r#"{"message":"You are sending too many messages. Try again later."}"#.into(),
    ));
    let fine = upstream(Script::default()).await;
    let (gateway, pool) = gateway(vec![
        UpstreamSpec::new(UpstreamKind::H2o, &refusing.url),
        UpstreamSpec::new(UpstreamKind::Tgi, fine.url()),
    ])
    .await;
    // Equally loaded upstreams are picked at random: ask until the refusing one was tried
    // (the chance that 64 requests all miss it is 2^-64). Every answer is a success.
    let cooling = || {
        pool.upstreams()[0]
            .cooling_until(std::time::Instant::now())
            .is_some()
    };
    for _ in 0..64 {
        let answer: Value = generate(&gateway.url()).await.json().await.unwrap();
        assert_eq!(answer["generated_text"], "Hello!");
        if cooling() {
            break;
        }
    }
    assert!(cooling(), "the refusing upstream was never tried");
    // Then it is left alone for its Retry-After.
    for _ in 0..4 {
        let answer: Value = generate(&gateway.url()).await.json().await.unwrap();
        assert_eq!(answer["generated_text"], "Hello!");
    }
    assert_eq!(
        metrics::fetch(&gateway.url())
            .await
            .sum("h2o_chat_upstream_cooldowns_total"),
        1.0
    );
    refusing.until_conversations(0).await;
}

#[tokio::test]
async fn a_503_and_a_stalled_upstream_fail_over_before_the_first_token() {
    let unavailable = fake::TestServer::start().await;
    unavailable.script_generate_always(fake::Reply::Status(503, vec![], "{}".into()));
    let stalled = fake::TestServer::start().await;
    stalled.script_generate_always(fake::Reply::Stream(
        "text/event-stream",
        vec![fake::Chunk::Sleep(Duration::from_secs(3600))],
    ));
    let fine = upstream(Script::default()).await;
    let (gateway, _) = gateway(vec![
        UpstreamSpec::new(UpstreamKind::H2o, &unavailable.url),
        UpstreamSpec::new(UpstreamKind::H2o, &stalled.url),
        UpstreamSpec::new(UpstreamKind::Tgi, fine.url()),
    ])
    .await;
    for _ in 0..3 {
        let answer: Value = generate(&gateway.url()).await.json().await.unwrap();
        assert_eq!(answer["generated_text"], "Hello!");
    }
    // Nothing is left on the upstreams that failed.
    unavailable.until_conversations(0).await;
    stalled.until_conversations(0).await;
}

#[tokio::test]
async fn a_request_the_upstream_refuses_is_the_clients_error_and_cools_nothing() {
    // The chosen upstream's own validation refuses the first request (an error event of
    // type validation, as TGI sends it); the second is fine.
    let refused = || {
        fake::Reply::Stream(
            "text/event-stream",
            vec![fake::Chunk::Bytes(
                b"data:{\"error\":\"Input validation error: `inputs` must have less than 4 tokens\",\"error_type\":\"validation\"}\n\n".to_vec(),
            )],
        )
    };
    let a = fake::TestServer::start().await;
    let b = fake::TestServer::start().await;
    a.script_generate(refused());
    let mut first_choice = UpstreamSpec::new(UpstreamKind::H2o, &a.url);
    first_choice.weight = 1000; // far lighter loaded per weight: chosen first
    let (gateway, pool) = gateway(vec![
        first_choice,
        UpstreamSpec::new(UpstreamKind::H2o, &b.url),
    ])
    .await;
    let bad = generate(&gateway.url()).await;
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["error_type"], "validation", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("must have less than 4 tokens"),
        "{body}"
    );
    let sent = |s: &fake::TestServer| s.requests_to(reqwest::Method::POST, "/conversation/").len();
    assert_eq!(
        (sent(&a), sent(&b)),
        (1, 0),
        "not re-sent to the other upstream"
    );
    // Nothing cooled: every upstream takes the next request, and it is answered.
    let now = std::time::Instant::now();
    assert!(pool.upstreams().iter().all(|u| u.is_available(now)));
    let good = generate(&gateway.url()).await;
    assert_eq!(good.status(), StatusCode::OK);
    let answer: Value = good.json().await.unwrap();
    assert_eq!(answer["generated_text"], "Hello!");
    let figures = metrics::fetch(&gateway.url()).await;
    assert_eq!(figures.sum("h2o_chat_upstream_cooldowns_total"), 0.0);
    assert_eq!(
        figures.with("h2o_chat_upstream_errors_total", "stage", "refused"),
        1.0
    );
}

#[tokio::test]
async fn when_every_upstream_is_cooling_the_oldest_failure_is_tried_instead_of_refusing() {
    // Both answer one 503 with a minute's Retry-After, then recover.
    let a = fake::TestServer::start().await;
    let b = fake::TestServer::start().await;
    for upstream in [&a, &b] {
        upstream.script_generate(fake::Reply::Status(
            503,
            vec![("retry-after", "60".into())],
            "{}".into(),
        ));
    }
    let (gateway, pool) = gateway(vec![
        UpstreamSpec::new(UpstreamKind::H2o, &a.url),
        UpstreamSpec::new(UpstreamKind::H2o, &b.url),
    ])
    .await;
    let first = generate(&gateway.url()).await;
    assert_eq!(first.status(), StatusCode::SERVICE_UNAVAILABLE);
    let now = std::time::Instant::now();
    assert!(
        pool.upstreams().iter().all(|u| !u.is_available(now)),
        "both cool for a minute"
    );
    // Within that minute: not refused, one is tried, and it has recovered.
    let second = generate(&gateway.url()).await;
    assert_eq!(second.status(), StatusCode::OK);
    let answer: Value = second.json().await.unwrap();
    assert_eq!(answer["generated_text"], "Hello!");
    let sent = |s: &fake::TestServer| s.requests_to(reqwest::Method::POST, "/conversation/").len();
    assert_eq!(sent(&a) + sent(&b), 3);
    let figures = metrics::fetch(&gateway.url()).await;
    assert_eq!(figures.sum("h2o_chat_upstream_panic_attempts_total"), 1.0);
}

#[tokio::test]
async fn a_failure_after_the_first_token_is_an_error_never_a_spliced_answer() {
    let breaking = fake::TestServer::start().await;
    breaking.script_generate_always(fake::Reply::Stream(
        "text/event-stream",
        vec![
            fake::Chunk::Bytes(fake::token_event(1, "Hel", false).into_bytes()),
            // The token goes out before the connection breaks.
            fake::Chunk::Sleep(Duration::from_millis(100)),
            fake::Chunk::Disconnect,
        ],
    ));
    let fine = upstream(Script::default()).await;
    let mut spec = UpstreamSpec::new(UpstreamKind::H2o, &breaking.url);
    spec.weight = 1000; // far lighter loaded per weight: chosen first
    let (gateway, _) = gateway(vec![spec, UpstreamSpec::new(UpstreamKind::Tgi, fine.url())]).await;
    let body = http()
        .post(format!("{}/generate_stream", gateway.url()))
        .json(&json!({"inputs": "Hi"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("\"text\":\"Hel\""), "{body}");
    assert!(
        body.ends_with("\"error_type\":\"generation\"}\n\n"),
        "{body}"
    );
    assert!(
        !body.contains("Hello!"),
        "no answer spliced from another upstream: {body}"
    );
    assert_eq!(served(&fine).await, 0.0);
    breaking.until_conversations(0).await;
}

#[tokio::test]
async fn an_upstream_that_fails_its_health_check_gets_no_traffic_until_it_recovers() {
    let a = upstream(Script::default()).await;
    let b = upstream(Script::default()).await;
    let a_addr = a.addr();
    let (gateway, pool) = gateway(vec![
        UpstreamSpec::new(UpstreamKind::Tgi, a.url()),
        UpstreamSpec::new(UpstreamKind::Tgi, b.url()),
    ])
    .await;
    // A goes away: the check notices, and every request goes to B.
    a.shutdown();
    a.wait().await.unwrap();
    pool.check_all(&http()).await;
    assert!(!pool.upstreams()[0].is_healthy());
    for _ in 0..4 {
        assert_eq!(generate(&gateway.url()).await.status(), StatusCode::OK);
    }
    assert_eq!(served(&b).await, 4.0);
    // A comes back on the same address and takes traffic again.
    let a = Server::new(
        ServerConfig::default(),
        ModelRegistry::with_h2o_stand_ins(Arc::new(ScriptedEngine::new(Script::default()))),
    )
    .bind(&a_addr.to_string())
    .await
    .unwrap();
    pool.check_all(&http()).await;
    assert!(pool.upstreams()[0].is_healthy());
    // Equally loaded upstreams are picked at random: ask until A has answered one (the
    // chance that 64 requests all miss it is 2^-64).
    for _ in 0..64 {
        assert_eq!(generate(&gateway.url()).await.status(), StatusCode::OK);
        if served(&a).await >= 1.0 {
            break;
        }
    }
    assert!(
        served(&a).await >= 1.0,
        "the recovered upstream got no traffic"
    );
    // The background checker does the same on its own (its verdict is the event awaited;
    // the bound only turns a hang into a failure).
    pool.spawn_health_checks();
    b.shutdown();
    b.wait().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while pool.upstreams()[1].is_healthy() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the checker never saw B go"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn gateway_health_is_200_while_any_upstream_is_healthy() {
    let a = upstream(Script::default()).await;
    let (gateway, pool) = gateway(vec![
        UpstreamSpec::new(UpstreamKind::Tgi, a.url()),
        UpstreamSpec::new(UpstreamKind::Tgi, "http://127.0.0.1:9"),
    ])
    .await;
    let health = || async {
        http()
            .get(format!("{}/health", gateway.url()))
            .send()
            .await
            .unwrap()
            .status()
    };
    pool.check_all(&http()).await;
    assert_eq!(health().await, StatusCode::OK);
    a.shutdown();
    a.wait().await.unwrap();
    pool.check_all(&http()).await;
    assert_eq!(health().await, StatusCode::SERVICE_UNAVAILABLE);
    // With none available one is still tried (it may have recovered); unreachable, it is
    // the client's 502 with a reason.
    let refused = generate(&gateway.url()).await;
    assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
    let body = refused.text().await.unwrap();
    assert!(body.contains("127.0.0.1"), "{body}");
}

#[tokio::test]
async fn metrics_report_per_upstream_requests_errors_and_latency() {
    let a = upstream(Script::default()).await;
    let (gateway, _) = gateway(vec![UpstreamSpec::new(UpstreamKind::Tgi, a.url())]).await;
    for _ in 0..3 {
        generate(&gateway.url()).await.text().await.unwrap();
    }
    let url = gateway.url();
    assert_eq!(
        metrics::fetch(&url)
            .await
            .sum("h2o_chat_upstream_requests_total"),
        3.0
    );
    assert_eq!(
        metrics::fetch(&url)
            .await
            .sum("h2o_chat_upstream_first_token_seconds_count"),
        3.0
    );
    assert_eq!(
        metrics::fetch(&url).await.sum("h2o_chat_upstream_healthy"),
        1.0
    );
    assert_eq!(
        metrics::fetch(&url)
            .await
            .sum("h2o_chat_upstream_in_flight"),
        0.0
    );
}

/// User information in an upstream's loopback URL (basic auth).
const CREDENTIALS: &str = "user:s3cret";

#[tokio::test]
async fn credentials_in_an_upstream_url_are_shown_to_nobody() {
    let a = upstream(Script::default()).await;
    let with_password = a
        .url()
        .replace("http://", &format!("http://{CREDENTIALS}@"));
    let (front, _) = gateway(vec![UpstreamSpec::new(UpstreamKind::Tgi, &with_password)]).await;
    // Answered, with the password sent (user information is basic auth)…
    let answer = generate(&front.url()).await;
    assert_eq!(answer.status(), StatusCode::OK);
    for route in ["/info", "/metrics"] {
        let text = http()
            .get(format!("{}{route}", front.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!text.contains("s3cret"), "{route}: {text}");
        assert!(text.contains("tgi:http://***@127.0.0.1"), "{route}: {text}");
    }
    // …and a failure whose message names the URL: a closed loopback port.
    let (unreachable, _) = gateway(vec![UpstreamSpec::new(
        UpstreamKind::OpenAi,
        format!("http://{CREDENTIALS}@127.0.0.1:9/v1"),
    )])
    .await;
    let failed = http()
        .post(format!("{}/v1/chat/completions", unreachable.url()))
        .json(&json!({"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), StatusCode::BAD_GATEWAY);
    let failed = failed.text().await.unwrap();
    assert!(failed.contains("127.0.0.1:9"), "{failed}");
    assert!(!failed.contains("s3cret"), "{failed}");
}
