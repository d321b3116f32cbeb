//! More than one machine, with real processes on loopback: three `h2o-chat serve` with the
//! real model as upstreams — one reached as chat-ui (`h2o`), one as TGI, one as OpenAI —
//! behind a fourth `h2o-chat serve --upstream …`. Load is spread (each upstream's own
//! `/metrics` says how much it served), a conversation sticks to one upstream, an upstream
//! killed with SIGKILL loses only the answers it was streaming, and once restarted it takes
//! traffic again.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::time::{Duration, Instant};

use common::{Serve, free_port};
use serde_json::{Value, json};

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

/// An upstream: the real model, small and single-threaded (four processes share two cores).
fn upstream(port: u16) -> Serve {
    Serve::start_on(
        port,
        &[
            "--slots",
            "4",
            "--context-per-slot",
            "1024",
            "--threads",
            "1",
        ],
        &[],
        "model loaded",
    )
}

/// What a server's `/metrics` says, summed over labels, by metric and route.
fn metrics(url: &str) -> HashMap<String, f64> {
    let text = client()
        .get(format!("{url}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let mut figures = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let name = key.split('{').next().unwrap_or(key).to_string();
        *figures.entry(name).or_insert(0.0) += value;
        if let Some(route) = key
            .split("route=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
        {
            *figures.entry(format!("route {route}")).or_insert(0.0) += value;
        }
    }
    figures
}

/// Generations an upstream served, whatever route the gateway used for its kind.
fn served(upstream: &Serve) -> f64 {
    let figures = metrics(&upstream.url());
    [
        "POST /conversation/{id}",
        "POST /generate_stream",
        "POST /v1/completions",
        "POST /v1/chat/completions",
    ]
    .iter()
    .map(|route| {
        figures
            .get(&format!("route {route}"))
            .copied()
            .unwrap_or(0.0)
    })
    .sum()
}

fn generate(url: &str) -> reqwest::blocking::Response {
    client()
        .post(format!("{url}/generate"))
        .json(&json!({"inputs": "1, 2, 3, 4,", "parameters": {"max_new_tokens": 2}}))
        .send()
        .unwrap()
}

#[test]
fn a_gateway_spreads_load_keeps_affinity_and_survives_a_killed_upstream() {
    let ports = [free_port(), free_port(), free_port()];
    let mut upstreams: Vec<Serve> = ports.iter().map(|&p| upstream(p)).collect();
    let kinds = ["h2o", "tgi", "openai"];
    let specs: Vec<String> = kinds
        .iter()
        .zip(&ports)
        .map(|(kind, port)| format!("{kind}=http://127.0.0.1:{port}"))
        .collect();
    let mut args: Vec<&str> = Vec::new();
    for spec in &specs {
        args.extend(["--upstream", spec.as_str()]);
    }
    args.extend(["--health-interval", "0.2", "--no-ethics-gate"]);
    let gateway = Serve::start_on(free_port(), &args, &[], "gateway ready");
    let url = gateway.url();

    // 1. 200 requests at concurrency 32: every one answered, spread over the three.
    let answered = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..32 {
            scope.spawn(|| {
                while answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 200 {
                    let response = generate(&url);
                    assert_eq!(response.status(), 200);
                    let answer: Value = response.json().unwrap();
                    assert!(answer["generated_text"].is_string(), "{answer}");
                }
            });
        }
    });
    let counts: Vec<f64> = upstreams.iter().map(served).collect();
    assert_eq!(counts.iter().sum::<f64>(), 200.0, "{counts:?}");
    for count in &counts {
        assert!(*count >= 20.0, "load is not spread: {counts:?}");
    }

    // 2. A chat-ui conversation's turns stick to one upstream.
    let session = reqwest::blocking::Client::builder()
        .cookie_store(true)
        .no_proxy()
        .build()
        .unwrap();
    let created: Value = session
        .post(format!("{url}/conversation"))
        .json(&json!({"model": "HuggingFaceTB/SmolLM2-135M-Instruct"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let id = created["conversationId"].as_str().unwrap();
    let before: Vec<f64> = upstreams.iter().map(served).collect();
    for question in ["Hi.", "What is two plus two?", "Thanks."] {
        let body = session
            .post(format!("{url}/conversation/{id}"))
            .json(&json!({"inputs": question, "parameters": {"max_new_tokens": 4}, "stream": true, "options": {}}))
            .send()
            .unwrap()
            .text()
            .unwrap();
        assert!(body.contains("generated_text"), "{body}");
    }
    let grew: Vec<f64> = upstreams
        .iter()
        .zip(&before)
        .map(|(u, b)| served(u) - b)
        .collect();
    assert!(grew.contains(&3.0), "the turns were spread: {grew:?}");

    // 3. Streams running on every upstream; the TGI upstream is killed.
    let mut streams: Vec<reqwest::blocking::Response> = (0..6)
        .map(|_| {
            let mut response = client()
                .post(format!("{url}/generate_stream"))
                .json(&json!({"inputs": "1, 2, 3, 4, 5, 6, 7, 8,", "parameters": {"max_new_tokens": 400}}))
                .send()
                .unwrap();
            let mut first = [0u8; 5];
            response.read_exact(&mut first).unwrap();
            assert_eq!(&first, b"data:");
            response
        })
        .collect();
    let killed = &mut upstreams[1];
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    // Requests sent now that land on the dead upstream before any token fail over.
    for _ in 0..12 {
        assert_eq!(generate(&url).status(), 200);
    }
    // The streams it carried end with a clear error; the others are still answering.
    let mut broken = 0;
    for stream in &mut streams {
        let mut chunk = vec![0u8; 4096];
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        // Read until the stream ends or shows it is alive past the kill.
        loop {
            let n = stream.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&chunk[..n]);
            if seen.windows(5).filter(|w| w == b"data:").count() > 20 || Instant::now() > deadline {
                break;
            }
        }
        let text = String::from_utf8_lossy(&seen);
        if text.contains("\"error\"") {
            assert!(text.contains("error_type"), "{text}");
            broken += 1;
        }
    }
    assert!(broken >= 1, "no stream was on the killed upstream");
    assert!(broken < 6, "every stream broke");
    drop(streams);

    // Nothing is left on the chat-ui upstream once the broken conversations are deleted.
    let survivor = &upstreams[0];
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics(&survivor.url())
        .get("h2o_chat_conversations")
        .copied()
        .unwrap_or(0.0)
        > 0.0
    {
        assert!(
            Instant::now() < deadline,
            "conversations were left on the survivor"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // 4. Restarted on its port, it takes traffic again.
    upstreams[1] = upstream(ports[1]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while served(&upstreams[1]) == 0.0 {
        assert!(
            Instant::now() < deadline,
            "the restarted upstream never took traffic"
        );
        assert_eq!(generate(&url).status(), 200);
    }
}
