//! The gateway with real processes (BENCHMARKS.md): `h2o-chat serve` upstreams with the real
//! model (one llama.cpp thread each, four slots) behind `h2o-chat serve --upstream …`.
//!
//! 1. Overhead: time to first token and tokens/s of the same request straight to an
//!    upstream and through a gateway in front of it, alternated.
//! 2. Throughput with 1, 2 and 3 upstream processes: 12 concurrent 64-token streams.
//! 3. Failover: an upstream killed with SIGKILL; how long requests take right after.
//!
//! `cargo bench -p h2o-chat-cli --bench gateway` (it builds the release binary first).

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_h2o-chat");
const COUNTING: &str = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,";

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

struct Process {
    child: Child,
    url: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(args: &[String], ready: &str) -> Process {
    let port = free_port();
    let mut child = Command::new(BINARY)
        .args(["-q", "serve", "--addr", &format!("127.0.0.1:{port}")])
        .args(args)
        .env("NO_PROXY", "*")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains(ready) {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "serve ended");
    }
    std::thread::spawn(move || {
        let mut sink = String::new();
        while stderr.read_line(&mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
    Process {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

fn upstream() -> Process {
    let args: Vec<String> = [
        "--slots",
        "4",
        "--context-per-slot",
        "1024",
        "--threads",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    serve(&args, "model loaded")
}

fn gateway(upstreams: &[&Process]) -> Process {
    let mut args = Vec::new();
    for upstream in upstreams {
        args.push("--upstream".to_string());
        args.push(format!("tgi={}", upstream.url));
    }
    args.extend(["--health-interval".to_string(), "0.5".to_string()]);
    serve(&args, "gateway ready")
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

/// One stream: (ms to the first token, tokens/s after it).
fn stream(url: &str, max_new_tokens: u32) -> (f64, f64) {
    let started = Instant::now();
    let mut response = client()
        .post(format!("{url}/generate_stream"))
        .json(&serde_json::json!({"inputs": COUNTING, "parameters": {"max_new_tokens": max_new_tokens}}))
        .send()
        .unwrap();
    let mut buffer = vec![0u8; 8192];
    let mut seen = Vec::new();
    let mut first = None;
    loop {
        let n = response.read(&mut buffer).unwrap_or(0);
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buffer[..n]);
        if first.is_none() && seen.windows(5).any(|w| w == b"data:") {
            first = Some(started.elapsed());
        }
    }
    let tokens = seen.windows(5).filter(|w| w == b"data:").count();
    let first = first.unwrap_or_default();
    let rest = (started.elapsed() - first).as_secs_f64();
    (
        first.as_secs_f64() * 1000.0,
        (tokens.saturating_sub(1)) as f64 / rest.max(1e-9),
    )
}

/// Aggregate tokens/s of `n` concurrent 64-token streams.
fn throughput(url: &str, n: usize) -> f64 {
    let started = Instant::now();
    let tokens: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                scope.spawn(|| {
                    let body = client()
                        .post(format!("{url}/generate"))
                        .json(&serde_json::json!({"inputs": COUNTING, "parameters": {"max_new_tokens": 64, "details": true}}))
                        .send()
                        .unwrap()
                        .json::<serde_json::Value>()
                        .unwrap();
                    body["details"]["generated_tokens"].as_u64().unwrap_or(0) as usize
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    tokens as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    println!(
        "gateway bench (nproc {}), release binary, upstreams: real model, 1 llama.cpp thread, 4 slots each",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let a = upstream();
    let b = upstream();
    let c = upstream();

    // 1. Overhead.
    let front = gateway(&[&a]);
    stream(&a.url, 8);
    stream(&front.url, 8);
    let (mut direct_first, mut direct_rate, mut via_first, mut via_rate) =
        (vec![], vec![], vec![], vec![]);
    for _ in 0..7 {
        let (f, r) = stream(&a.url, 128);
        direct_first.push(f);
        direct_rate.push(r);
        let (f, r) = stream(&front.url, 128);
        via_first.push(f);
        via_rate.push(r);
    }
    let (df, vf, dr, vr) = (
        median(direct_first),
        median(via_first),
        median(direct_rate),
        median(via_rate),
    );
    println!(
        "overhead, 128-token stream, median of 7: TTFT direct {df:.1} ms, through the gateway {vf:.1} ms ({:+.1} ms); tokens/s direct {dr:.1}, through the gateway {vr:.1} (ratio {:.2})",
        vf - df,
        vr / dr
    );
    drop(front);

    // 2. Throughput with 1, 2, 3 upstreams.
    for upstreams in [vec![&a], vec![&a, &b], vec![&a, &b, &c]] {
        let front = gateway(&upstreams);
        throughput(&front.url, 4);
        let rates: Vec<f64> = (0..3).map(|_| throughput(&front.url, 12)).collect();
        println!(
            "{} upstream process(es), 12 concurrent 64-token requests: {:.1} tokens/s (median of 3)",
            upstreams.len(),
            median(rates)
        );
    }

    // 3. Failover after a kill.
    let mut victim = upstream();
    let front = gateway(&[&a, &victim]);
    let baseline: Vec<f64> = (0..6).map(|_| stream(&front.url, 4).0).collect();
    victim.child.kill().unwrap();
    let _ = victim.child.wait();
    let after: Vec<f64> = (0..6).map(|_| stream(&front.url, 4).0).collect();
    println!(
        "failover: TTFT before the kill, median {:.1} ms; the 6 requests right after it: {:?} ms (worst {:.1} ms)",
        median(baseline),
        after.iter().map(|v| v.round() as i64).collect::<Vec<_>>(),
        after.iter().copied().fold(0.0, f64::max)
    );
}
