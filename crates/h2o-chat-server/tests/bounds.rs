//! "Bounded everywhere": what a hostile or careless client can make the server hold —
//! cookies, sessions, conversations, history, echoes, connections, bodies — each has a cap,
//! tested over real sockets. Waits are on the server's own events (a closed socket, an
//! answer); their bounds only turn a hang into a failure.

use std::time::Duration;

use h2o_chat_engine::{Script, ScriptGate};
use h2o_chat_server::{Bounds, Limits, ServerConfig, StoreBounds, Timeouts};
use h2o_chat_test_support::chat_ui::*;
use h2o_chat_test_support::http::session;
use h2o_chat_test_support::metrics;
use h2o_chat_test_support::server::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Long enough that a closed socket means the server closed it.
const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_cookie_longer_than_the_cap_is_no_session_and_is_never_echoed() {
    let server = start().await;
    let long = "a".repeat(200);
    let response = session()
        .get(server.url())
        .header("cookie", format!("hf-chat={long}"))
        .send()
        .await
        .unwrap();
    let cookie = response.headers()["set-cookie"].to_str().unwrap();
    assert!(!cookie.contains(&long), "the long value was echoed");
    let value = cookie
        .strip_prefix("hf-chat=")
        .and_then(|c| c.split(';').next())
        .unwrap();
    assert_eq!(value.len(), 36, "a fresh UUID: {cookie}");
}

#[tokio::test]
async fn sessions_are_capped_and_the_least_recently_seen_is_forgotten() {
    let config = ServerConfig {
        bounds: Bounds {
            store: StoreBounds {
                max_sessions: 3,
                ..StoreBounds::default()
            },
            ..Bounds::default()
        },
        ..ServerConfig::default()
    };
    let server = start_with(config, Script::default()).await;
    let url = server.url();
    let clients: Vec<reqwest::Client> = (0..4).map(|_| session()).collect();
    for client in &clients {
        accept_settings(client, &url, FALCON).await;
    }
    assert_eq!(server.state().store().session_count(), 3);
    // The first session was the least recently seen: its acceptance is gone (405).
    let forgotten = clients[0]
        .post(format!("{url}/conversation"))
        .json(&json!({"model": FALCON}))
        .send()
        .await
        .unwrap();
    assert_eq!(forgotten.status(), StatusCode::METHOD_NOT_ALLOWED);
    create(&clients[3], &url, FALCON).await;
}

#[tokio::test]
async fn conversations_are_capped_server_wide_with_429() {
    let config = ServerConfig {
        bounds: Bounds {
            store: StoreBounds {
                max_conversations: 2,
                ..StoreBounds::default()
            },
            ..Bounds::default()
        },
        ..ServerConfig::default()
    };
    let server = start_with(config, Script::default()).await;
    let url = server.url();
    ready_conversation(&url).await;
    ready_conversation(&url).await;
    let client = session();
    accept_settings(&client, &url, FALCON).await;
    let refused = client
        .post(format!("{url}/conversation"))
        .header("accept", "*/*")
        .json(&json!({"model": FALCON}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("limit"),
        "{body}"
    );
}

#[tokio::test]
async fn the_model_sees_the_newest_window_and_the_conversation_keeps_every_turn() {
    // The scripted engine counts a token per byte: a 400-token window holds about four
    // 60-byte turns of ChatML.
    let config = ServerConfig {
        limits: Limits {
            max_input_length: 400,
            max_total_tokens: 500,
            ..Limits::default()
        },
        ..ServerConfig::default()
    };
    let server = start_with(config, Script::default()).await;
    let url = server.url();
    let (client, id) = ready_conversation(&url).await;
    for turn in 0..12 {
        let mut body = g4f_body(&format!("Turn {turn:02}: {}", "x".repeat(40)));
        body["parameters"] = json!({"max_new_tokens": 10, "return_full_text": false});
        let response = client
            .post(format!("{url}/conversation/{id}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let characters: usize = response.headers()["x-compute-characters"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            characters <= 400,
            "turn {turn}: a {characters}-token prompt"
        );
        let text = response.text().await.unwrap();
        assert!(text.contains("\"generated_text\""), "turn {turn}: {text}");
    }
    // What the user stored stays, whatever the model could see of it (within the
    // conversation's byte cap, 256 KiB here).
    let stored = stored_messages(&server, &id);
    assert_eq!(stored.len(), 24, "every question and answer");
    assert!(stored[0].content.starts_with("Turn 00"));
    assert!(stored.last().unwrap().content == "Hello!");
    assert!(stored[stored.len() - 2].content.starts_with("Turn 11"));
}

#[tokio::test]
async fn the_final_event_never_echoes_megabytes() {
    let server = start().await;
    let inputs = "word ".repeat(300_000);
    let answer: Value = session()
        .post(format!("{}/", server.url()))
        .json(&json!({"inputs": inputs, "parameters": {"truncate": 100, "max_new_tokens": 2}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let echoed = answer[0]["generated_text"].as_str().unwrap();
    assert!(echoed.len() < 10_000, "{} bytes echoed", echoed.len());
}

fn timeouts() -> Timeouts {
    Timeouts {
        header_read: Duration::from_millis(300),
        keep_alive_idle: Duration::from_millis(300),
        ..Timeouts::default()
    }
}

#[tokio::test]
async fn a_half_sent_request_is_closed_after_the_header_timeout() {
    let config = ServerConfig {
        timeouts: timeouts(),
        ..ServerConfig::default()
    };
    let server = start_with(config, Script::default()).await;
    let mut socket = raw(&server, b"POST /generate HTTP/1.1\r\nhost: 127.0.0.1\r\n").await;
    let received = read_until_closed(&mut socket, PATIENCE).await;
    assert_eq!(received, Some(Vec::new()), "closed without an answer");
}

#[tokio::test]
async fn a_silent_new_connection_is_closed_after_the_header_timeout() {
    let config = ServerConfig {
        timeouts: timeouts(),
        ..ServerConfig::default()
    };
    let server = start_with(config, Script::default()).await;
    let mut socket = raw(&server, b"").await;
    assert!(read_until_closed(&mut socket, PATIENCE).await.is_some());
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed() {
    let config = ServerConfig {
        timeouts: Timeouts {
            keep_alive_idle: Duration::from_millis(300),
            ..Timeouts::default()
        },
        ..ServerConfig::default()
    };
    let server = start_with(config, Script::default()).await;
    let mut socket = raw(&server, b"GET /info HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").await;
    let received = read_until_closed(&mut socket, PATIENCE)
        .await
        .expect("the idle connection was closed");
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
}

#[tokio::test]
async fn at_the_connection_cap_the_longest_idle_connection_makes_room() {
    let config = ServerConfig {
        bounds: Bounds {
            max_connections: 4,
            ..Bounds::default()
        },
        ..ServerConfig::default()
    };
    let server = start_with(config, Script::default()).await;
    let url = server.url();
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(raw(&server, b"").await);
    }
    // Every request still gets its answer: idle sockets are closed to make room.
    for _ in 0..5 {
        let info = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("{url}/info"))
            .send()
            .await
            .unwrap();
        assert_eq!(info.status(), StatusCode::OK);
    }
    let mut closed = 0;
    for socket in &mut idle {
        if read_until_closed(socket, Duration::from_millis(50))
            .await
            .is_some()
        {
            closed += 1;
        }
    }
    assert!(closed >= 16, "{closed} idle connections were closed");
    assert!(
        metrics::fetch(&url)
            .await
            .sum("h2o_chat_connections_evicted_total")
            >= 16.0
    );
}

#[tokio::test]
async fn at_the_connection_cap_with_none_idle_a_newcomer_gets_503() {
    let config = ServerConfig {
        bounds: Bounds {
            max_connections: 1,
            ..Bounds::default()
        },
        ..ServerConfig::default()
    };
    let gate = ScriptGate::new();
    let server = start_with(config, gated(&gate, true)).await;
    gate.release(1);
    // The only connection is busy with a stream.
    let mut busy = raw(
        &server,
        b"POST /generate_stream HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{\"inputs\":\"Hi\"}",
    )
    .await;
    reach(gate.started(), 1).await;
    let mut newcomer = raw(&server, b"GET /info HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").await;
    let answer = read_until_closed(&mut newcomer, PATIENCE).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    busy.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_content_length_over_the_limit_is_refused_at_once_with_413() {
    let server = start().await;
    // Only the head: the server must answer without waiting for 10 MB.
    let mut socket = raw(
        &server,
        b"POST /generate HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 10000000\r\n\r\n",
    )
    .await;
    let answer = read_until_closed(&mut socket, PATIENCE).await.unwrap();
    let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 413"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
}

#[tokio::test]
async fn an_early_403_or_405_says_connection_close_when_the_body_is_unread() {
    let server = start().await;
    let url = server.url();
    let forbidden = session()
        .post(format!("{url}/settings"))
        .form(&[("ethicsModalAccepted", "true")])
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    assert_eq!(forbidden.headers()["connection"], "close");
    let not_allowed = session()
        .post(format!("{url}/conversation"))
        .json(&json!({"model": FALCON}))
        .send()
        .await
        .unwrap();
    assert_eq!(not_allowed.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(not_allowed.headers()["connection"], "close");
}

/// Sends a `POST /generate` head announcing a 100,000-byte body, then a byte every 50 ms:
/// never idle long, never done.
async fn trickle(server: &h2o_chat_server::RunningServer) -> tokio::net::TcpStream {
    let mut socket = raw(
        server,
        b"POST /generate HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{",
    )
    .await;
    socket.write_all(b" ").await.unwrap();
    socket
}

#[tokio::test]
async fn a_body_trickling_in_is_cut_at_its_absolute_deadline() {
    let config = ServerConfig {
        timeouts: Timeouts {
            body_read: Duration::from_millis(300),
            ..Timeouts::default()
        },
        ..ServerConfig::default()
    };
    let server = start_with(config, Script::default()).await;
    let mut socket = trickle(&server).await;
    // Keep sending while waiting for the server to give up on the body.
    let mut buffer = [0u8; 1024];
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            tokio::select! {
                read = socket.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                () = tokio::time::sleep(Duration::from_millis(50)) => {
                    if socket.write_all(b" ").await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the trickling connection was dropped");
}

#[tokio::test]
async fn at_the_cap_trickling_bodies_past_their_deadline_make_room() {
    let config = ServerConfig {
        bounds: Bounds {
            max_connections: 4,
            ..Bounds::default()
        },
        timeouts: Timeouts {
            body_read: Duration::from_millis(300),
            ..Timeouts::default()
        },
        ..ServerConfig::default()
    };
    let server = start_with(config, Script::default()).await;
    let url = server.url();
    let mut trickling = Vec::new();
    for _ in 0..4 {
        trickling.push(trickle(&server).await);
    }
    // Four busy connections fill the cap; once their bodies are overdue a newcomer gets in
    // (they are evicted to make room, or dropped by the watchdog, whichever comes first).
    let answered = tokio::time::timeout(PATIENCE, async {
        loop {
            for socket in &mut trickling {
                let _ = socket.write_all(b" ").await;
            }
            let info = reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap()
                .get(format!("{url}/info"))
                .send()
                .await;
            if info.is_ok_and(|r| r.status() == StatusCode::OK) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(answered.is_ok(), "a newcomer was served within the bound");
}

#[tokio::test]
async fn one_client_at_its_cap_is_refused_without_closing_anyone_else() {
    let config = ServerConfig {
        bounds: Bounds {
            max_connections: 10,
            max_connections_per_client: 3,
            ..Bounds::default()
        },
        ..ServerConfig::default()
    };
    let server = start_with(config, Script::default()).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(raw(&server, b"").await);
    }
    let mut fourth = raw(&server, b"GET /info HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").await;
    let answer = read_until_closed(&mut fourth, PATIENCE).await.unwrap();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 503"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // The three it holds were not closed for it: each still answers.
    for socket in &mut held {
        socket
            .write_all(b"GET /info HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_until_closed(socket, PATIENCE).await.unwrap();
        assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    }
}

/// A client that speaks HTTP/2 with prior knowledge, and sets each stream's window to
/// `window` bytes.
fn h2_client(window: u32) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .http2_initial_stream_window_size(window)
        .http2_adaptive_window(false)
        .build()
        .unwrap()
}

#[tokio::test]
async fn http2_is_off_unless_asked_for() {
    let server = start().await;
    let refused = h2_client(65_535)
        .get(format!("{}/info", server.url()))
        .send()
        .await;
    assert!(refused.is_err(), "an HTTP/2 preface was answered");
    let config = ServerConfig {
        http2: true,
        ..ServerConfig::default()
    };
    let server = start_with(config, Script::default()).await;
    let info = h2_client(65_535)
        .get(format!("{}/info", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(info.version(), reqwest::Version::HTTP_2);
    assert_eq!(info.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_http2_client_that_never_opens_its_window_gives_its_permits_back() {
    let config = ServerConfig {
        http2: true,
        limits: Limits {
            max_concurrent_requests: 2,
            ..Limits::default()
        },
        timeouts: Timeouts {
            write_stall: Duration::from_millis(300),
            ..Timeouts::default()
        },
        ..ServerConfig::default()
    };
    let script = Script {
        tokens: vec!["tok".into()],
        endless: true,
        ..Script::default()
    };
    let server = start_with(config, script).await;
    let url = server.url();
    let stuck = h2_client(0);
    let body = json!({"inputs": "Hi", "parameters": {"max_new_tokens": 4000}});
    let mut held = Vec::new();
    for _ in 0..2 {
        // Headers arrive; no byte of the bodies can.
        let response = stuck
            .post(format!("{url}/generate_stream"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        held.push(response);
    }
    let generate = || async {
        session()
            .post(format!("{url}/generate"))
            .json(&json!({"inputs": "Hi", "parameters": {"max_new_tokens": 2}}))
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(
        generate().await,
        StatusCode::TOO_MANY_REQUESTS,
        "both permits held"
    );
    // The two answers are given up once they cannot be written: their permits come back
    // although the connection and its streams stay open.
    let served = tokio::time::timeout(PATIENCE, async {
        while generate().await != StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(served.is_ok(), "the permits came back");
    drop(held);
}
