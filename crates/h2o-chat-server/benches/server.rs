//! The server end to end (BENCHMARKS.md): time to first token through the whole chat-ui
//! lifecycle, cold (model load included) and warm; tokens/s served to 8 concurrent streams
//! with the real model; and with the scripted no-op engine, the events/s one connection can
//! receive — the server's own ceiling.
//!
//! `cargo bench -p h2o-chat-server --bench server`

use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use h2o_chat::{Event, H2o, Message, Parameters};
use h2o_chat_engine::fetch::{SMOLLM2, cache_dir, ensure_model};
use h2o_chat_engine::{LlamaConfig, LlamaEngine, Script, ScriptedEngine};
use h2o_chat_server::{LOCAL_MODEL_ID, ModelRegistry, Server, ServerConfig};

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// (ms to the first token, tokens received) for one completion.
const SHORT: &str = "What is the capital of France?";
const LONG: &str = "Write a long story about a dragon who learns to fly.";

async fn first_token(h2o: &H2o, params: Parameters) -> (f64, usize) {
    ask(h2o, SHORT, params).await
}

/// (ms to the first token, tokens received) for one completion of `question`.
async fn ask(h2o: &H2o, question: &str, params: Parameters) -> (f64, usize) {
    let started = Instant::now();
    let mut events = h2o
        .request([Message::user(question)])
        .parameters(params)
        .events()
        .await
        .unwrap();
    let mut first = None;
    let mut count = 0;
    while let Some(event) = events.next().await {
        count += 1;
        first.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1000.0);
        if matches!(event.unwrap(), Event::Final(_)) {
            break;
        }
    }
    (first.unwrap_or(0.0), count)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let gguf = ensure_model(&cache_dir(), &SMOLLM2, &mut |_, _, _| {}).expect("model");
    let greedy = Parameters::empty().max_new_tokens(32);

    // Cold: load the model, start the server, first completion.
    let cold_started = Instant::now();
    let engine = tokio::task::spawn_blocking(move || {
        LlamaEngine::load(LlamaConfig::new(gguf, LOCAL_MODEL_ID)).unwrap()
    })
    .await
    .unwrap();
    let server = Server::new(
        ServerConfig::default(),
        ModelRegistry::with_h2o_stand_ins(Arc::new(engine)),
    )
    .bind("127.0.0.1:0")
    .await
    .unwrap();
    let h2o = H2o::builder()
        .url(server.url())
        .env_proxy(false)
        .parameters(greedy.clone())
        .build()
        .unwrap();
    let setup_ms = cold_started.elapsed().as_secs_f64() * 1000.0;
    let (cold_first, _) = first_token(&h2o, greedy.clone()).await;
    let cold_ms = setup_ms + cold_first;
    let mut warm = Vec::new();
    for _ in 0..7 {
        warm.push(first_token(&h2o, greedy.clone()).await.0);
    }
    h2o.wait_for_cleanup().await;
    println!(
        "server bench (nproc {})",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "TTFT through the chat-ui lifecycle, cold (model load + server start + settings + create + generate): {cold_ms:.0} ms"
    );
    println!(
        "TTFT through the chat-ui lifecycle, warm (create + generate), median of 7: {:.1} ms",
        median(warm)
    );

    // 8 concurrent streams of 64 tokens each.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let h2o = h2o.clone();
        let params = Parameters::empty()
            .max_new_tokens(64)
            .set("temperature", 0.7)
            .seed(1);
        tasks.push(tokio::spawn(async move { ask(&h2o, LONG, params).await.1 }));
    }
    let mut tokens = 0;
    for task in tasks {
        tokens += task.await.unwrap();
    }
    println!(
        "8 concurrent streams (64 new tokens each, one generation at a time on 2 threads): {tokens} tokens in {:.2} s = {:.1} tokens/s served",
        started.elapsed().as_secs_f64(),
        tokens as f64 / started.elapsed().as_secs_f64()
    );
    // The OpenAI gateway against the chat-ui routes: same engine, same greedy request.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut gateway_ttft = Vec::new();
    let mut gateway_rate = Vec::new();
    let mut chat_ui_ttft = Vec::new();
    let mut chat_ui_rate = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let mut response = http
            .post(format!("{}/v1/chat/completions", server.url()))
            .json(&serde_json::json!({"model": "smollm2", "messages": [{"role": "user", "content": "Write a long story about a dragon who learns to fly."}], "temperature": 0, "max_tokens": 64, "stream": true}))
            .send()
            .await
            .unwrap();
        let mut first = None;
        let mut chunks = 0usize;
        while let Some(bytes) = response.chunk().await.unwrap() {
            let text = String::from_utf8_lossy(&bytes);
            if text.contains("\"content\":\"") && !text.contains("\"content\":\"\"") {
                first.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1000.0);
            }
            chunks +=
                text.matches("\"content\":\"").count() - text.matches("\"content\":\"\"").count();
        }
        gateway_ttft.push(first.unwrap_or(0.0));
        gateway_rate.push(chunks as f64 / started.elapsed().as_secs_f64());
        let started = Instant::now();
        let (ttft, count) = ask(&h2o, LONG, Parameters::empty().max_new_tokens(64)).await;
        chat_ui_ttft.push(ttft);
        chat_ui_rate.push(count as f64 / started.elapsed().as_secs_f64());
    }
    let (g_ttft, c_ttft) = (median(gateway_ttft), median(chat_ui_ttft));
    let (g_rate, c_rate) = (median(gateway_rate), median(chat_ui_rate));
    println!(
        "OpenAI gateway vs chat-ui routes, same engine, greedy 64 tokens, medians of 5: TTFT {g_ttft:.1} ms vs {c_ttft:.1} ms (ratio {:.2}); tokens/s {g_rate:.1} vs {c_rate:.1} (ratio {:.2})",
        g_ttft / c_ttft,
        g_rate / c_rate
    );
    server.shutdown();

    // The ceiling: a no-op engine, one connection, the whole lifecycle per completion.
    let script = Script {
        tokens: vec![" word".into()],
        endless: true,
        ..Script::default()
    };
    let noop = Server::new(
        ServerConfig::default(),
        ModelRegistry::with_h2o_stand_ins(Arc::new(ScriptedEngine::new(script))),
    )
    .bind("127.0.0.1:0")
    .await
    .unwrap();
    let h2o = H2o::builder()
        .url(noop.url())
        .env_proxy(false)
        .build()
        .unwrap();
    let mut rates = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let (_, count) = first_token(&h2o, Parameters::empty().max_new_tokens(4000)).await;
        rates.push(count as f64 / started.elapsed().as_secs_f64());
    }
    println!(
        "no-op engine, one connection, 4,000-token completions: {:.0} events/s (median of 5)",
        median(rates)
    );
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut relayed = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let mut response = http
            .post(format!("{}/v1/chat/completions", noop.url()))
            .json(&serde_json::json!({"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4000, "stream": true}))
            .send()
            .await
            .unwrap();
        let mut chunks = 0usize;
        while let Some(bytes) = response.chunk().await.unwrap() {
            chunks += bytes.windows(6).filter(|w| w == b"data: ").count();
        }
        relayed.push(chunks as f64 / started.elapsed().as_secs_f64());
    }
    println!(
        "no-op engine, one client, 4,000-token streams through /v1/chat/completions: {:.0} chunks/s (median of 5)",
        median(relayed)
    );
}
