//! Many users on one model, over HTTP (BENCHMARKS.md): the server with the real model and
//! its default 8 slots, measured the way users feel it.
//!
//! 1. Time to first token, cold (model load included) and warm.
//! 2. Served tokens/s for 1 and 8 concurrent streams (`/generate_stream`, greedy, 64 tokens).
//! 3. Time to first token of a request joining 7 running streams, against the same request
//!    on an idle server: a short question and a 120-token one, new to the prompt cache.
//! 4. A 6-turn chat-ui conversation (~120-token questions, 8-token answers), its first
//!    question new to the prompt cache: time to first token per turn, with the prompt cache
//!    and without; turn 6 / turn 1.
//! 5. The server's own ceiling with a scripted no-op engine: events/s on one connection
//!    through the chat-ui lifecycle, and chunks/s through the OpenAI route.
//! 7. Constrained decoding: 8 streams under a JSON schema beside 8 free ones against 16
//!    free ones (aggregate tokens/s, a 16-slot server), and the time to first token with a
//!    schema new to the server, one it compiled before, and none.
//! 6. What the prompt cache's scoping costs: eight users in turn, one shared ~200-token
//!    system prompt and a question each, named (`user`: each scope evaluates the shared
//!    prompt itself) and anonymous (the shared prompt is reused across them).
//!
//! 8. Several models: time to first token of a model's first request (its load included)
//!    against the same request once it is loaded, and this process's RSS with one and with
//!    two models loaded (the same GGUF under two names).
//!
//! `cargo bench -p h2o-chat-llama --bench serving`; `H2O_CHAT_BENCH_SECTIONS=turns` (a comma
//! list of `latency`, `turns`, `ceiling`, `scope`, `grammar`, `models`) runs only those parts;
//! `H2O_CHAT_BENCH_FAST=1` serves in fast mode (`serve --fast`), `H2O_CHAT_BENCH_KV_CACHE=f16`
//! serves with a 16-bit KV cache instead of the default.

use h2o_chat_test_support::chat_ui;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use h2o_chat::{Event, H2o, Message, Parameters};
use h2o_chat_engine::{Engine, Script, ScriptedEngine};
use h2o_chat_llama::{LlamaConfig, LlamaEngine};
use h2o_chat_server::{LOCAL_MODEL_ID, ModelRegistry, RunningServer, Server, ServerConfig};
use serde_json::json;

const ROUNDS: usize = 5;
const COUNTING: &str = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,";

/// Whether `H2O_CHAT_BENCH_SECTIONS` (default: all) names `section`.
fn runs(section: &str) -> bool {
    std::env::var("H2O_CHAT_BENCH_SECTIONS")
        .map_or(true, |list| list.split(',').any(|s| s.trim() == section))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn chatml(question: &str) -> String {
    format!("<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
}

async fn serve(engine: LlamaEngine) -> RunningServer {
    let engine: Arc<dyn Engine> = Arc::new(engine);
    Server::new(
        ServerConfig::default(),
        ModelRegistry::with_h2o_stand_ins(engine),
    )
    .bind("127.0.0.1:0")
    .await
    .unwrap()
}

async fn load(gguf: std::path::PathBuf, prompt_cache: bool) -> LlamaEngine {
    tokio::task::spawn_blocking(move || {
        let mut config = LlamaConfig::new(gguf, LOCAL_MODEL_ID);
        config.prompt_cache = prompt_cache;
        if let Some(kv_cache) = std::env::var("H2O_CHAT_BENCH_KV_CACHE")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            config.kv_cache = kv_cache;
        }
        // `serve --fast`: a 16-bit cache read by flash attention's tiled kernels.
        if std::env::var_os("H2O_CHAT_BENCH_FAST").is_some() {
            config.fast = true;
            config.kv_cache = h2o_chat_llama::KvCache::F16;
        }
        LlamaEngine::load(config).unwrap()
    })
    .await
    .unwrap()
}

/// A `/generate_stream` request: (ms to its first token, tokens received, ms to the end).
async fn stream(url: &str, inputs: &str, max_new_tokens: u32) -> (f64, usize, f64) {
    stream_telling(url, inputs, max_new_tokens, None).await
}

/// The same, telling `first` when the first token arrives.
async fn stream_telling(
    url: &str,
    inputs: &str,
    max_new_tokens: u32,
    mut first_told: Option<tokio::sync::oneshot::Sender<()>>,
) -> (f64, usize, f64) {
    let started = Instant::now();
    let response = http()
        .post(format!("{url}/generate_stream"))
        .json(&json!({"inputs": inputs, "parameters": {"max_new_tokens": max_new_tokens}}))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let mut first = None;
    let mut tokens = 0;
    let mut seen = Vec::new();
    while let Some(Ok(chunk)) = body.next().await {
        seen.extend_from_slice(&chunk);
        let events = seen.windows(5).filter(|w| w == b"data:").count();
        if events > 0 {
            first.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1000.0);
            if let Some(told) = first_told.take() {
                let _ = told.send(());
            }
        }
        tokens = events;
    }
    (
        first.unwrap_or(0.0),
        tokens,
        started.elapsed().as_secs_f64() * 1000.0,
    )
}

/// `h2o_chat_slots_busy` from `/metrics`.
async fn busy_slots(url: &str) -> f64 {
    let text = http()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("h2o_chat_slots_busy{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Time to the first token of one completion through the chat-ui lifecycle.
async fn ask(h2o: &H2o, question: &str, params: Parameters) -> f64 {
    let started = Instant::now();
    let mut events = h2o
        .request([Message::user(question)])
        .parameters(params)
        .events()
        .await
        .unwrap();
    let mut first = None;
    while let Some(event) = events.next().await {
        first.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1000.0);
        if matches!(event.unwrap(), Event::Final(_)) {
            break;
        }
    }
    first.unwrap_or(0.0)
}

/// Time to first token of each of six turns of one conversation. `round` makes the first
/// question new to the prompt cache, so turn 1 is evaluated in full as a new chat's would be.
async fn six_turns(url: &str, round: usize) -> Vec<f64> {
    let (client, id) = chat_ui::conversation(url, LOCAL_MODEL_ID).await;
    let mut ttft = Vec::new();
    for turn in 0..6 {
        let question = format!(
            "Chat {round}, turn {turn}. Here is a paragraph to keep in mind: the old lighthouse keeper walked along the rocky shore every evening, counting the ships that passed, noting the colour of the sky, the direction of the wind and the height of the waves, and writing it all in a leather notebook that he kept in the pocket of his heavy wool coat. Question: what did he write in the notebook? Answer in a few words."
        );
        let body = json!({"inputs": question, "parameters": {"max_new_tokens": 8}, "stream": true,
            "options": {"id": uuid::Uuid::new_v4().to_string(), "response_id": uuid::Uuid::new_v4().to_string(), "is_retry": false, "use_cache": false, "web_search_id": ""}});
        let started = Instant::now();
        let response = client
            .post(format!("{url}/conversation/{id}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let mut body = response.bytes_stream();
        let mut first = None;
        while let Some(Ok(_)) = body.next().await {
            first.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1000.0);
        }
        ttft.push(first.unwrap_or(0.0));
    }
    ttft
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let gguf = h2o_chat_test_support::model::local_gguf();
    println!(
        "serving bench: SmolLM2-135M-Instruct Q4_1, default server (8 slots), {ROUNDS} rounds (medians), nproc {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    if runs("latency") {
        latency(&gguf).await;
    }
    if runs("turns") {
        turns(&gguf).await;
    }
    if runs("ceiling") {
        no_op_ceiling().await;
    }
    if runs("scope") {
        scope(&gguf).await;
    }
    if runs("grammar") {
        grammar(&gguf).await;
    }
    if runs("models") {
        models(&gguf).await;
    }
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Section 8: a model's first request against a loaded one; memory with one and two models.
async fn models(gguf: &std::path::Path) {
    use h2o_chat_engine::{Fleet, FleetConfig};
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut one = Vec::new();
    let mut two = Vec::new();
    for _ in 0..ROUNDS {
        let fleet = Fleet::new(FleetConfig {
            keep_alive: None,
            max_loaded: 2,
            ..FleetConfig::default()
        });
        let engines: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|name| {
                let gguf = gguf.to_path_buf();
                fleet.add(
                    name,
                    Box::new(move || {
                        LlamaEngine::load(LlamaConfig::new(gguf.clone(), name))
                            .map(|e| Arc::new(e) as Arc<dyn Engine>)
                            .map_err(|e| e.to_string())
                    }),
                )
            })
            .collect();
        let served = engines
            .iter()
            .zip(["a", "b"])
            .map(|(engine, name)| {
                h2o_chat_server::ServedModel::new(name.into(), Vec::new(), engine.clone())
            })
            .collect();
        let server = Server::new(
            ServerConfig::default(),
            h2o_chat_server::ModelRegistry::new(served),
        )
        .bind("127.0.0.1:0")
        .await
        .unwrap();
        let url = server.url();
        let first = |model: &'static str| {
            let url = url.clone();
            async move {
                let started = Instant::now();
                let response = http()
                    .post(format!("{url}/v1/chat/completions"))
                    .json(&json!({"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}))
                    .send()
                    .await
                    .unwrap();
                assert!(response.status().is_success());
                response.bytes().await.unwrap();
                started.elapsed().as_secs_f64() * 1000.0
            }
        };
        cold.push(first("a").await);
        warm.push(first("a").await);
        one.push(rss_mb());
        first("b").await;
        two.push(rss_mb());
        server.shutdown();
        server.wait().await.unwrap();
    }
    println!(
        "a model's first request (load included, 1-token answer): {:.0} ms; once loaded: {:.1} ms",
        median(cold),
        median(warm)
    );
    println!(
        "RSS of the process with one model loaded: {:.0} MB; with two: {:.0} MB (default sizing: 8 slots × 4096 positions each)",
        median(one),
        median(two)
    );
}

/// A schema whose answers run long (so a constrained stream lasts as long as a free one):
/// `salt` makes it new to the server.
fn long_schema(salt: &str) -> serde_json::Value {
    json!({"type": "json", "value": {"type": "object", "properties": {
        format!("story_{salt}"): {"type": "string", "minLength": 400, "maxLength": 800},
        "count": {"type": "integer", "minimum": 0, "maximum": 100}},
        "required": [format!("story_{salt}"), "count"], "additionalProperties": false}})
}

/// A `/generate_stream` request under `grammar`: (ms to its first token, tokens received).
async fn stream_with(
    url: &str,
    inputs: &str,
    grammar: Option<serde_json::Value>,
    max_new_tokens: u32,
) -> (f64, usize) {
    let mut parameters = json!({"max_new_tokens": max_new_tokens});
    if let Some(grammar) = grammar {
        parameters["grammar"] = grammar;
    }
    let started = Instant::now();
    let response = http()
        .post(format!("{url}/generate_stream"))
        .json(&json!({"inputs": inputs, "parameters": parameters}))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let mut first = None;
    let mut seen = Vec::new();
    while let Some(Ok(chunk)) = body.next().await {
        seen.extend_from_slice(&chunk);
        if first.is_none() && seen.windows(5).any(|w| w == b"data:") {
            first = Some(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let tokens = seen.windows(5).filter(|w| w == b"data:").count();
    (first.unwrap_or(0.0), tokens)
}

/// Section 7: constrained decoding beside free decoding, and a schema's first-use cost.
async fn grammar(gguf: &std::path::Path) {
    let engine = tokio::task::spawn_blocking({
        let gguf = gguf.to_path_buf();
        move || {
            let mut config = LlamaConfig::new(gguf, LOCAL_MODEL_ID);
            config.slots = 16;
            config.context_per_slot = 1024;
            LlamaEngine::load(config).unwrap()
        }
    })
    .await
    .unwrap();
    let server = serve(engine).await;
    let url = server.url();
    let question = chatml("Tell me a long story about a lighthouse, as JSON.");
    let mut rates = [Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        for (mixed, rate) in rates.iter_mut().enumerate() {
            let started = Instant::now();
            let runs = futures_util::future::join_all((0..16).map(|i| {
                let grammar = (mixed == 1 && i < 8).then(|| long_schema("bench"));
                // The same question for all 16: the only difference is the grammar.
                let (url, inputs) = (url.clone(), question.clone());
                async move { stream_with(&url, &inputs, grammar, 64).await }
            }))
            .await;
            let tokens: usize = runs.iter().map(|r| r.1).sum();
            rate.push(tokens as f64 / started.elapsed().as_secs_f64());
        }
    }
    let [free, mixed] = rates.map(median);
    println!(
        "16 free streams of 64 tokens: {free:.1} tokens/s; 8 under a JSON schema + 8 free: {mixed:.1} tokens/s; ratio {:.2}",
        mixed / free
    );
    let mut ttft = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        let fresh = format!("r{round}_{}", uuid::Uuid::new_v4().simple());
        ttft[0].push(
            stream_with(&url, &question, Some(long_schema(&fresh)), 1)
                .await
                .0,
        );
        ttft[1].push(
            stream_with(&url, &question, Some(long_schema(&fresh)), 1)
                .await
                .0,
        );
        ttft[2].push(stream_with(&url, &question, None, 1).await.0);
    }
    let [new, known, none] = ttft.map(median);
    println!(
        "time to first token: schema new to the server {new:.1} ms, compiled before {known:.1} ms, no schema {none:.1} ms"
    );
    server.shutdown();
    server.wait().await.unwrap();
}

/// A system prompt every user of a deployment shares, ~200 tokens.
const SHARED_SYSTEM: &str = "You are the help desk of the city library. The library opens at nine in the morning and closes at eight in the evening on weekdays, and at five on Saturdays; it is closed on Sundays and public holidays. Members may borrow up to twelve books, four films and two games at a time, for three weeks, and renew each loan twice online or at the desk unless another member has reserved it. Late returns cost twenty cents a day per item, at most five euros per item. The reading rooms on the second floor are quiet rooms; group study rooms on the third floor can be booked for two hours a day. Printing costs ten cents a page in black and white and fifty cents in colour. Answer members' questions in one short sentence, politely, and never invent a rule that is not written here.";

/// Section 6: eight users in turn with one shared system prompt, named and anonymous.
async fn scope(gguf: &std::path::Path) {
    let server = serve(load(gguf.to_path_buf(), true).await).await;
    let url = server.url();
    let mut medians = Vec::new();
    for named in [false, true] {
        let mut samples = Vec::new();
        for round in 0..ROUNDS {
            for visitor in 0..8 {
                let mut body = json!({
                    "model": "smollm2",
                    "messages": [
                        {"role": "system", "content": SHARED_SYSTEM},
                        {"role": "user", "content": format!("Visitor {round}-{visitor} ({named}): when do you open on Saturday?")},
                    ],
                    "max_tokens": 1,
                    "temperature": 0,
                });
                if named {
                    body["user"] = json!(format!("visitor-{round}-{visitor}"));
                }
                let started = Instant::now();
                let reply: serde_json::Value = http()
                    .post(format!("{url}/v1/chat/completions"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert!(reply["usage"].is_object(), "{reply}");
                samples.push(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
        let ms = median(samples);
        medians.push(ms);
        println!(
            "8 users in turn, one shared ~200-token system prompt, 1-token answers: {} {ms:.1} ms per request (median)",
            if named {
                "each its own scope (`user`):"
            } else {
                "anonymous (shared prefix reused):"
            }
        );
    }
    println!("scoped / shared: {:.2}×", medians[1] / medians[0]);
    server.shutdown();
    server.wait().await.unwrap();
}

/// Sections 1–3: time to first token, served tokens/s, joining a running batch.
async fn latency(gguf: &std::path::Path) {
    // 1. Cold and warm time to first token.
    let cold = Instant::now();
    let server = serve(load(gguf.to_path_buf(), true).await).await;
    let url = server.url();
    let h2o = H2o::builder().url(&url).env_proxy(false).build().unwrap();
    let greedy = Parameters::empty().max_new_tokens(16);
    ask(&h2o, "What is the capital of France?", greedy.clone()).await;
    let cold_ms = cold.elapsed().as_secs_f64() * 1000.0;
    let mut warm = Vec::new();
    for _ in 0..7 {
        warm.push(ask(&h2o, "What is the capital of France?", greedy.clone()).await);
    }
    println!(
        "time to first token: cold (model load + server + whole lifecycle) {cold_ms:.0} ms, warm {:.1} ms",
        median(warm)
    );

    // 2. Served tokens/s for 1 and 8 streams.
    let mut rates = Vec::new();
    for streams in [1usize, 8] {
        let mut samples = Vec::new();
        for _ in 0..ROUNDS {
            let started = Instant::now();
            let runs =
                futures_util::future::join_all((0..streams).map(|_| stream(&url, COUNTING, 64)))
                    .await;
            let tokens: usize = runs.iter().map(|r| r.1).sum();
            samples.push(tokens as f64 / started.elapsed().as_secs_f64());
        }
        let rate = median(samples);
        rates.push(rate);
        println!("{streams} concurrent stream(s) of 64 tokens: {rate:.1} tokens/s served");
    }
    println!("8 streams / 1 stream: {:.2}×", rates[1] / rates[0]);

    // 3. A request joining 7 running streams, against the same request on an idle server:
    //    a short one (its first token is one small step when idle) and a 120-token one
    //    (prompt evaluation dominates). Each round's questions are new to the prompt cache.
    for (kind, question) in [
        ("short question", "Say hello to visitor {round} ({which})."),
        ("120-token question", LONG_QUESTION),
    ] {
        joining(&url, kind, question).await;
    }
    server.shutdown();
    server.wait().await.unwrap();
}

/// Section 4: six turns, with and without the prompt cache.
async fn turns(gguf: &std::path::Path) {
    for prompt_cache in [true, false] {
        let server = serve(load(gguf.to_path_buf(), prompt_cache).await).await;
        let mut per_turn: Vec<Vec<f64>> = vec![Vec::new(); 6];
        for round in 0..ROUNDS {
            for (turn, ms) in six_turns(&server.url(), round)
                .await
                .into_iter()
                .enumerate()
            {
                per_turn[turn].push(ms);
            }
        }
        let medians: Vec<f64> = per_turn.into_iter().map(median).collect();
        println!(
            "6-turn chat, prompt cache {}: TTFT per turn {:?} ms, turn 6 / turn 1 = {:.2}",
            if prompt_cache { "on " } else { "off" },
            medians.iter().map(|m| m.round() as i64).collect::<Vec<_>>(),
            medians[5] / medians[0]
        );
        server.shutdown();
        server.wait().await.unwrap();
    }
}

/// A question about a paragraph, ~120 tokens; `{round}` and `{which}` make it new each time.
const LONG_QUESTION: &str = "Visitor {round} ({which}) asks: here is a paragraph to keep in mind: the old lighthouse keeper walked along the rocky shore every evening, counting the ships that passed, noting the colour of the sky, the direction of the wind and the height of the waves, and writing it all in a leather notebook that he kept in the pocket of his heavy wool coat. Question: what did he write in the notebook? Answer in a few words.";

/// Time to first token of `question` on an idle server and joining 7 running streams.
async fn joining(url: &str, kind: &str, question: &str) {
    let url = url.to_string();
    let ask = |round: usize, which: &str| {
        chatml(
            &question
                .replace("{round}", &round.to_string())
                .replace("{which}", which),
        )
    };
    let (mut idle, mut joined) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        idle.push(stream(&url, &ask(round, "idle"), 4).await.0);
        let mut started = Vec::new();
        let running: Vec<_> = (0..7)
            .map(|_| {
                let url = url.clone();
                let (told, first) = tokio::sync::oneshot::channel();
                started.push(first);
                tokio::spawn(async move { stream_telling(&url, COUNTING, 200, Some(told)).await })
            })
            .collect();
        // The seven are generating before the newcomer arrives.
        for first in started {
            let _ = first.await;
        }
        joined.push(stream(&url, &ask(round, "joining"), 4).await.0);
        for task in running {
            task.abort();
        }
        // Their slots are free again before the next round.
        while busy_slots(&url).await > 0.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (idle, joined) = (median(idle), median(joined));
    println!(
        "time to first token of a {kind}: idle {idle:.0} ms, joining 7 running streams {joined:.0} ms, ratio {:.2}",
        joined / idle
    );
}

/// The server's own ceiling: a no-op engine.
async fn no_op_ceiling() {
    let script = Script {
        tokens: vec!["a".into()],
        endless: true,
        ..Script::default()
    };
    let noop: Arc<dyn Engine> = Arc::new(ScriptedEngine::new(script));
    let server = Server::new(
        ServerConfig::default(),
        ModelRegistry::with_h2o_stand_ins(noop),
    )
    .bind("127.0.0.1:0")
    .await
    .unwrap();
    let h2o = H2o::builder()
        .url(server.url())
        .env_proxy(false)
        .build()
        .unwrap();
    let mut lifecycle = Vec::new();
    let mut gateway = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let completion = h2o
            .request([Message::user("Hi")])
            .parameters(Parameters::empty().max_new_tokens(4000))
            .complete()
            .await
            .unwrap();
        lifecycle.push(completion.tokens as f64 / started.elapsed().as_secs_f64());
        let started = Instant::now();
        let response = http()
            .post(format!("{}/v1/chat/completions", server.url()))
            .json(&json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4000, "stream": true}))
            .send()
            .await
            .unwrap();
        let body = response.text().await.unwrap();
        let chunks = body.matches("data: ").count();
        gateway.push(chunks as f64 / started.elapsed().as_secs_f64());
    }
    println!(
        "no-op engine, one connection, 4,000-token answers: chat-ui lifecycle {:.0} events/s, OpenAI route {:.0} chunks/s",
        median(lifecycle),
        median(gateway)
    );
}
