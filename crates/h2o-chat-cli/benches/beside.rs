//! `h2o-chat serve` (exact, and `--fast`) beside llama.cpp's own `llama-server` on the same
//! GGUF (BENCHMARKS.md): the same OpenAI streaming requests to each server, one server
//! running at a time, rounds alternating between them, medians.
//!
//! 1. Time to first token of a short question on an idle server.
//! 2. One stream's decode rate (a counting answer, 64 tokens).
//! 3. Eight streams at once, aggregate tokens/s.
//! 4. Time to first token of a short question joining seven running streams.
//! 5. A six-turn chat (~120-token questions, 8-token answers): time to first token of turn
//!    1 and turn 6.
//! 6. The server process's peak RSS.
//!
//! `LLAMA_SERVER=/path/to/llama-server cargo bench -p h2o-chat-cli --bench beside`; without
//! `LLAMA_SERVER` only `serve`'s two modes run. llama-server gets `-np 8 -c 32768 -t 2`:
//! eight slots of 4,096 positions, like `serve`'s defaults on this machine.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_h2o-chat");
const ROUNDS: usize = 5;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Exact,
    Fast,
    LlamaServer,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Exact => "serve (exact)",
            Kind::Fast => "serve --fast",
            Kind::LlamaServer => "llama-server",
        }
    }
}

/// The figures of one server in one round.
#[derive(Default, Clone)]
struct Figures {
    ttft_ms: f64,
    decode_tps: f64,
    eight_tps: f64,
    join_ms: f64,
    turn1_ms: f64,
    turn6_ms: f64,
    rss_mb: f64,
}

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn start(kind: Kind, gguf: &std::path::Path, llama_server: Option<&str>) -> Server {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut command = match kind {
        Kind::Exact | Kind::Fast => {
            let mut command = Command::new(BINARY);
            command.args([
                "--gguf",
                &gguf.to_string_lossy(),
                "serve",
                "--addr",
                &addr,
                "--db",
                ":memory:",
            ]);
            if kind == Kind::Fast {
                command.arg("--fast");
            }
            command.env("NO_PROXY", "*");
            command
        }
        Kind::LlamaServer => {
            let mut command = Command::new(llama_server.unwrap());
            command.args([
                "-m",
                &gguf.to_string_lossy(),
                "-np",
                "8",
                "-c",
                "32768",
                "-t",
                "2",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ]);
            command
        }
    };
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the server");
    let server = Server {
        child,
        url: format!("http://{addr}"),
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(response) = http().get(format!("{}/health", server.url)).send().await
            && response.status().is_success()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not get ready",
            kind.name()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
}

/// One streamed chat completion, as its client saw it.
struct Reply {
    /// Milliseconds to the first content.
    first_ms: f64,
    /// Completion tokens (from `usage`, else content chunks).
    tokens: u64,
    /// Milliseconds to the end.
    end_ms: f64,
    text: String,
}

async fn chat(url: &str, messages: &[Value], max_tokens: u32) -> Reply {
    chat_telling(url, messages, max_tokens, None).await
}

/// The same, telling `first_told` when the first content arrives.
async fn chat_telling(
    url: &str,
    messages: &[Value],
    max_tokens: u32,
    mut first_told: Option<tokio::sync::oneshot::Sender<()>>,
) -> Reply {
    let started = Instant::now();
    let response = http()
        .post(format!("{url}/v1/chat/completions"))
        .json(
            &json!({"model": "smollm2", "messages": messages, "max_tokens": max_tokens,
                      "temperature": 0, "stream": true,
                      "stream_options": {"include_usage": true}}),
        )
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let mut body = response.bytes_stream();
    let mut seen = Vec::new();
    let mut first = None;
    let mut chunks = 0u64;
    let mut usage = None;
    let mut text = String::new();
    while let Some(Ok(bytes)) = body.next().await {
        seen.extend_from_slice(&bytes);
        while let Some(end) = seen.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = seen.drain(..end + 2).collect();
            let Some(data) = std::str::from_utf8(&event)
                .ok()
                .and_then(|e| e.trim().strip_prefix("data:"))
                .map(str::trim)
            else {
                continue;
            };
            let Ok(chunk) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            let content = chunk["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or("");
            if !content.is_empty() {
                chunks += 1;
                text.push_str(content);
                if first.is_none() {
                    first = Some(started.elapsed());
                    if let Some(told) = first_told.take() {
                        let _ = told.send(());
                    }
                }
            }
            if let Some(tokens) = chunk["usage"]["completion_tokens"].as_u64() {
                usage = Some(tokens);
            }
        }
    }
    let first = first.unwrap_or_else(|| started.elapsed());
    Reply {
        first_ms: first.as_secs_f64() * 1e3,
        tokens: usage.unwrap_or(chunks),
        end_ms: started.elapsed().as_secs_f64() * 1e3,
        text,
    }
}

/// Every chat starts with this system message: without one, the GGUF's own template (which
/// llama-server renders) adds SmolLM2's default system prompt and `serve`'s does not, and
/// the two servers would read different prompts.
const SYSTEM: &str = "You are a helpful assistant.";

fn user(text: String) -> Vec<Value> {
    vec![
        json!({"role": "system", "content": SYSTEM}),
        json!({"role": "user", "content": text}),
    ]
}

/// A question no earlier request began like (its own system message): evaluated whole by
/// both servers, so that the figure measures prompt evaluation, not the two prompt caches'
/// rules for taking over a slot that shares a few tokens (`serve`: from 16 tokens up, or a
/// tenth of the prompt when every slot holds a conversation; llama-server: more than a
/// tenth of the prompt).
fn fresh(tag: &str, question: &str) -> Vec<Value> {
    vec![
        json!({"role": "system", "content": format!("{tag} You are a helpful assistant.")}),
        json!({"role": "user", "content": question}),
    ]
}

fn counting(tag: &str) -> Vec<Value> {
    user(format!(
        "({tag}) Count from 1 to 300, separated by commas, and say nothing else."
    ))
}

async fn measure(url: &str, round: usize) -> Figures {
    let mut figures = Figures::default();
    // Warm up (first request paths, page faults).
    chat(url, &user(format!("({round}) Hello!")), 4).await;
    // 1. Time to first token, idle.
    let reply = chat(
        url,
        &fresh(&format!("[{round}]"), "What is the capital of France?"),
        1,
    )
    .await;
    figures.ttft_ms = reply.first_ms;
    // 2. One stream's decode rate.
    let reply = chat(url, &counting(&format!("solo {round}")), 64).await;
    figures.decode_tps =
        reply.tokens.saturating_sub(1) as f64 / ((reply.end_ms - reply.first_ms) / 1e3);
    // 3. Eight streams at once.
    let started = Instant::now();
    let runs: Vec<_> = (0..8)
        .map(|i| {
            let url = url.to_string();
            tokio::spawn(
                async move { chat(&url, &counting(&format!("eight {round}.{i}")), 64).await },
            )
        })
        .collect();
    let mut total = 0;
    for run in runs {
        total += run.await.unwrap().tokens;
    }
    figures.eight_tps = total as f64 / started.elapsed().as_secs_f64();
    // 4. A short question joining seven running streams.
    let mut running = Vec::new();
    let mut firsts = Vec::new();
    for i in 0..7 {
        let (told, first) = tokio::sync::oneshot::channel();
        firsts.push(first);
        let url = url.to_string();
        running.push(tokio::spawn(async move {
            chat_telling(
                &url,
                &counting(&format!("join {round}.{i}")),
                200,
                Some(told),
            )
            .await
        }));
    }
    for first in firsts {
        let _ = first.await;
    }
    let reply = chat(
        url,
        &fresh(&format!("<{round}>"), "What is the capital of Italy?"),
        1,
    )
    .await;
    figures.join_ms = reply.first_ms;
    for run in running {
        run.await.unwrap();
    }
    // 5. Six turns.
    let mut messages = vec![json!({"role": "system", "content": SYSTEM})];
    for turn in 0..6 {
        messages.push(json!({"role": "user", "content": format!(
            "Chat {round}, turn {turn}. Here is a paragraph to keep in mind: the old lighthouse keeper walked along the rocky shore every evening, counting the ships that passed, noting the colour of the sky, the direction of the wind and the height of the waves, and writing it all in a leather notebook that he kept in the pocket of his heavy wool coat. Question: what did he write in the notebook? Answer in a few words."
        )}));
        let reply = chat(url, &messages, 8).await;
        match turn {
            0 => figures.turn1_ms = reply.first_ms,
            5 => figures.turn6_ms = reply.first_ms,
            _ => {}
        }
        let answer = reply.text;
        messages.push(json!({"role": "assistant", "content": answer}));
    }
    figures
}

fn peak_rss_mb(child: &Child) -> f64 {
    std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// A figure's name, how to read it, and whether higher is better.
type Row = (&'static str, fn(&Figures) -> f64, bool);

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let llama_server = std::env::var("LLAMA_SERVER").ok();
    let gguf = h2o_chat_test_support::model::local_gguf();
    let mut kinds = vec![Kind::Exact, Kind::Fast];
    match &llama_server {
        Some(_) => kinds.push(Kind::LlamaServer),
        None => println!("LLAMA_SERVER is not set: only serve's two modes run"),
    }
    let mut results: Vec<Vec<Figures>> = vec![Vec::new(); kinds.len()];
    for round in 0..ROUNDS {
        for (i, &kind) in kinds.iter().enumerate() {
            let server = start(kind, &gguf, llama_server.as_deref()).await;
            let mut figures = measure(&server.url, round).await;
            figures.rss_mb = peak_rss_mb(&server.child);
            drop(server);
            results[i].push(figures);
        }
    }
    let column = |i: usize, f: fn(&Figures) -> f64| median(results[i].iter().map(f).collect());
    let rows: [Row; 7] = [
        ("solo time to first token (ms)", |f| f.ttft_ms, false),
        ("solo decode (tok/s)", |f| f.decode_tps, true),
        ("8 streams aggregate (tok/s)", |f| f.eight_tps, true),
        (
            "short question joining 7 streams, TTFT (ms)",
            |f| f.join_ms,
            false,
        ),
        ("6-turn chat, turn 1 TTFT (ms)", |f| f.turn1_ms, false),
        ("6-turn chat, turn 6 TTFT (ms)", |f| f.turn6_ms, false),
        ("peak RSS (MB)", |f| f.rss_mb, false),
    ];
    print!("| figure |");
    for kind in &kinds {
        print!(" {} |", kind.name());
    }
    if kinds.len() == 3 {
        print!(" exact vs llama-server | fast vs llama-server |");
    }
    println!();
    println!(
        "|---|{}",
        "---|".repeat(kinds.len() + if kinds.len() == 3 { 2 } else { 0 })
    );
    for (name, f, higher_is_better) in rows {
        print!("| {name} |");
        for i in 0..kinds.len() {
            print!(" {:.1} |", column(i, f));
        }
        if kinds.len() == 3 {
            // ≥ 1.0: at least as good as llama-server.
            let reference = column(2, f);
            for i in 0..2 {
                let ours = column(i, f);
                let ratio = if higher_is_better {
                    ours / reference
                } else {
                    reference / ours
                };
                print!(" {ratio:.2}× |");
            }
        }
        println!();
    }
    println!(
        "({ROUNDS} rounds, medians; nproc {})",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}
