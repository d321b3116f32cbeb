//! The `h2o-chat` binary as a person feels it (BENCHMARKS.md): cold start to the first
//! answer byte on the local model, warm time to first byte against a loopback server, a
//! batch of 64 × 2,000-token completions at concurrency 64 (wall time, peak RSS), 100,000
//! tokens through `chat` into a pipe beside the library reading the same stream, and the
//! peak RSS of `serve` with its default slots under 8 streams.
//!
//! `cargo bench -p h2o-chat-cli --bench cli` (it builds the release binary first).

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use h2o_chat::{H2o, Message};
use h2o_chat_engine::{Script, ScriptedEngine};
use h2o_chat_server::{ModelRegistry, Server, ServerConfig};

use h2o_chat_test_support::chat_ui_double as support;

const BINARY: &str = env!("CARGO_BIN_EXE_h2o-chat");

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Milliseconds from spawning the binary to the first byte on its stdout.
fn first_byte_ms(args: &[&str]) -> f64 {
    let started = Instant::now();
    let mut child = Command::new(BINARY)
        .args(args)
        .env("NO_PROXY", "*")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn h2o-chat");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut byte = [0u8; 1];
    let _ = stdout.read(&mut byte);
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut rest = Vec::new();
    let _ = stdout.read_to_end(&mut rest);
    let status = child.wait().expect("wait");
    assert!(status.success(), "h2o-chat {args:?} failed: {status}");
    ms
}

/// Runs the binary to its end with `input` on stdin; returns (wall s, peak RSS MB).
fn run_with_rss(args: &[&str], input: String) -> (f64, f64) {
    let started = Instant::now();
    let mut child = Command::new(BINARY)
        .args(args)
        .env("NO_PROXY", "*")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn h2o-chat");
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("stdin");
    std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(input.as_bytes());
    });
    let mut peak_kb = 0f64;
    loop {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        {
            peak_kb = peak_kb.max(kb);
        }
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "batch failed: {status}");
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (started.elapsed().as_secs_f64(), peak_kb / 1024.0)
}

fn main() {
    println!(
        "cli bench (nproc {}), release binary",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // Fetch the model first so the cold figure is a start, not a download.
    first_byte_ms(&["-q", "--max-new-tokens", "1", "chat", "Hi"]);
    let cold: Vec<f64> = (0..5)
        .map(|_| {
            first_byte_ms(&[
                "-q",
                "--max-new-tokens",
                "8",
                "chat",
                "What is the capital of France?",
            ])
        })
        .collect();
    println!(
        "cold start to first answer byte, local model (load + embedded server + lifecycle), median of 5: {:.0} ms",
        median(cold)
    );

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let script = Script {
        tokens: vec![" word".into()],
        endless: true,
        ..Script::default()
    };
    let server = runtime
        .block_on(
            Server::new(
                ServerConfig::default(),
                ModelRegistry::with_h2o_stand_ins(Arc::new(ScriptedEngine::new(script))),
            )
            .bind("127.0.0.1:0"),
        )
        .expect("server");
    let url = server.url();
    let warm: Vec<f64> = (0..10)
        .map(|_| first_byte_ms(&["-q", "--url", &url, "--max-new-tokens", "4", "chat", "Hi"]))
        .collect();
    println!(
        "process start to first answer byte against a loopback server (scripted engine), median of 10: {:.1} ms",
        median(warm)
    );

    let input: String = (0..64)
        .map(|i| format!("{{\"id\":{i},\"prompt\":\"question {i}\",\"parameters\":{{\"max_new_tokens\":2000}}}}\n"))
        .collect();
    let mut walls = Vec::new();
    let mut peaks = Vec::new();
    for _ in 0..3 {
        let (wall, peak) = run_with_rss(
            &["-q", "--url", &url, "batch", "-", "--concurrency", "64"],
            input.clone(),
        );
        walls.push(wall);
        peaks.push(peak);
    }
    println!(
        "batch of 64 × 2,000-token completions at concurrency 64 (128,000 tokens), median of 3: {:.2} s wall, {:.0} tokens/s, peak RSS {:.1} MB",
        median(walls.clone()),
        128_000.0 / median(walls),
        median(peaks)
    );

    // 100,000 tokens into a pipe, beside the library on the same stream.
    let tokens = 100_000;
    let body = support::sse_body(&vec![" word"; tokens]);
    let stream_server = runtime.block_on(support::TestServer::start());
    // The log is written once the answer is out, but stdout ends with the process, so the
    // default run's figure includes logging the 100,000-token exchange (FTS5 indexing).
    let (mut cli, mut logged, mut library) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        stream_server.script_generate(support::stream_reply(body.clone()));
        cli.push(tokens as f64 / pipe_seconds(&stream_server.url, false));
        stream_server.script_generate(support::stream_reply(body.clone()));
        logged.push(tokens as f64 / pipe_seconds(&stream_server.url, true));
        stream_server.script_generate(support::stream_reply(body.clone()));
        library.push(tokens as f64 / runtime.block_on(library_seconds(&stream_server.url)));
    }
    let (cli, logged, library) = (median(cli), median(logged), median(library));
    println!(
        "the same with the exchange logged (the default): {:.2} M tokens/s",
        logged / 1e6
    );
    println!(
        "100,000 tokens through `chat --no-log` into a pipe, median of 5: {:.2} M tokens/s; the library on the same stream: {:.2} M tokens/s; CLI / library {:.2}",
        cli / 1e6,
        library / 1e6,
        cli / library
    );

    // `serve` with its defaults (8 slots) under 8 concurrent streams.
    let (peak, slots) = serve_peak_rss();
    println!(
        "peak RSS of `serve` with its default {slots} slots, 8 streams of 256 tokens: {peak:.0} MB"
    );
}

/// Seconds for `chat` to write a whole answer into a pipe (first byte to end of output).
fn pipe_seconds(url: &str, log: bool) -> f64 {
    // Its own home, so that the log written is not the person's.
    let home = tempfile::tempdir().expect("a temporary home");
    let mut child = Command::new(BINARY)
        .env("H2O_CHAT_HOME", home.path())
        .args(["-q", "--url", url, "chat", "Hi"])
        .env("NO_PROXY", "*")
        .env("H2O_CHAT_NO_LOG", if log { "0" } else { "1" })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn h2o-chat");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut byte = [0u8; 1];
    let _ = stdout.read(&mut byte);
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = stdout.read_to_end(&mut rest);
    let seconds = started.elapsed().as_secs_f64();
    assert!(child.wait().expect("wait").success());
    seconds
}

/// Seconds for the library to read the same answer (first token to end).
async fn library_seconds(url: &str) -> f64 {
    let h2o = H2o::builder().url(url).env_proxy(false).build().unwrap();
    let mut tokens = h2o.stream([Message::user("Hi")]).await.unwrap();
    let mut started = None;
    let mut bytes = 0usize;
    while let Some(token) = tokens.next().await {
        started.get_or_insert_with(Instant::now);
        bytes += token.unwrap().len();
    }
    assert!(bytes > 0);
    started.map_or(0.0, |s| s.elapsed().as_secs_f64())
}

/// Peak RSS (MB) of `h2o-chat serve` with its defaults while 8 streams run, and its slots.
fn serve_peak_rss() -> (f64, u64) {
    use std::io::BufRead;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut child = Command::new(BINARY)
        .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .env("NO_PROXY", "*")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("model loaded") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "serve ended");
    }
    let slots: u64 = line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or(0);
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/generate");
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                client
                    .post(&url)
                    .json(&serde_json::json!({"inputs": "1, 2, 3, 4, 5, 6, 7, 8,", "parameters": {"max_new_tokens": 256}}))
                    .send()
                    .unwrap()
                    .text()
                    .unwrap();
            });
        }
    });
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let peak_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    let _ = child.kill();
    let _ = child.wait();
    (peak_kb / 1024.0, slots)
}
