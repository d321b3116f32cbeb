//! The client end to end over loopback: the test server streams 100k tokens as fast as it
//! can; the client reads them through the whole lifecycle (BENCHMARKS.md).
//!
//! The server runs on its own runtime thread; the client on a current-thread runtime on the
//! main thread, so the main thread's CPU time is the client's own.
//!
//! `cargo bench -p h2o-chat --bench client_loopback`

use h2o_chat_test_support::chat_ui_double as support;

use std::collections::HashSet;
use std::time::Instant;

use futures_util::StreamExt;
use h2o_chat::{H2o, Message};
use support::{Chunk, Reply, TestServer, final_event, token_event};

const TOKENS: usize = 100_000;
const ROUNDS: usize = 5;

/// utime + stime of the calling thread, in seconds (from /proc, 10 ms resolution).
fn thread_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields after the name start at index 0 = state; utime is field 14 overall → 11 here.
    (ticks(11) + ticks(12)) / 100.0
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn main() {
    let server_runtime = tokio::runtime::Runtime::new().expect("server runtime");
    let server = server_runtime.block_on(TestServer::start());
    let mut body = String::with_capacity(TOKENS * 110);
    for i in 0..TOKENS - 1 {
        body.push_str(&token_event(1000 + (i % 40000) as u32, " word", false));
    }
    body.push_str(&final_event("..."));
    let chunks: Vec<Chunk> = body
        .as_bytes()
        .chunks(16 * 1024)
        .map(|c| Chunk::Bytes(c.to_vec()))
        .collect();
    server.script_generate_always(Reply::Stream("text/event-stream", chunks));

    let client_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let h2o = H2o::builder()
        .url(&server.url)
        .env_proxy(false)
        .build()
        .expect("client");

    let mut rates = Vec::new();
    let mut cpu_per_token_ns = Vec::new();
    let mut first_token_ms = Vec::new();
    let mut per_completion = Vec::new();
    for round in 0..ROUNDS {
        let before_requests = server.requests();
        let known_peers: HashSet<_> = before_requests.iter().map(|r| r.peer).collect();
        let cpu_start = thread_cpu_seconds();
        let started = Instant::now();
        let tokens = client_runtime.block_on(async {
            let mut stream = h2o.stream([Message::user("bench")]).await.expect("stream");
            let mut count = 0usize;
            let mut first = None;
            while let Some(token) = stream.next().await {
                token.expect("token");
                if first.is_none() {
                    first = Some(started.elapsed());
                }
                count += 1;
            }
            first_token_ms.push(first.map_or(0.0, |d| d.as_secs_f64() * 1000.0));
            count
        });
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = thread_cpu_seconds() - cpu_start;
        client_runtime.block_on(h2o.wait_for_cleanup());
        assert_eq!(tokens, TOKENS - 1, "the EOS token is not text");
        let requests: Vec<_> = server
            .requests()
            .into_iter()
            .skip(before_requests.len())
            .collect();
        let critical = requests.iter().filter(|r| r.method != "DELETE").count();
        let new_connections = requests
            .iter()
            .map(|r| r.peer)
            .collect::<HashSet<_>>()
            .difference(&known_peers)
            .count();
        per_completion.push((round, critical, requests.len(), new_connections));
        rates.push(TOKENS as f64 / elapsed);
        cpu_per_token_ns.push(cpu * 1e9 / TOKENS as f64);
    }
    println!("client end to end over loopback, {TOKENS} tokens per completion, {ROUNDS} rounds");
    println!("tokens/s (median):           {:.0}", median(&mut rates));
    println!(
        "client CPU ns/token (median): {:.0}",
        median(&mut cpu_per_token_ns)
    );
    println!(
        "time to first token ms (median): {:.2}",
        median(&mut first_token_ms)
    );
    println!(
        "peak RSS of the process (client + server + the 11 MB scripted body): {:.1} MB",
        peak_rss_mb()
    );
    for (round, critical, all, new_connections) in per_completion {
        let label = if round == 0 { "cold" } else { "warm" };
        println!(
            "round {round} ({label}): {critical} requests on the critical path, {all} in all (DELETE included), {new_connections} new TCP connections"
        );
    }
}
