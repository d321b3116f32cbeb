//! Decoder throughput on a realistic stream of 100k token events (BENCHMARKS.md).
//!
//! Both contenders get the same bytes in the same 16 KiB chunks and must produce parsed
//! tokens: ours (`Decoder`), and the off-the-shelf pair `eventsource-stream` + `serde_json`.
//!
//! `cargo bench -p h2o-chat-protocol --bench decoder`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::StreamExt;
use h2o_chat_protocol::{Decoder, Event};

const EVENTS: usize = 100_000;
const CHUNK: usize = 16 * 1024;

/// Token texts like a real English answer, with a few multi-byte and escaped ones.
fn realistic_stream() -> Vec<u8> {
    let words = [
        " the",
        " capital",
        " of",
        " France",
        " is",
        " Paris",
        ".",
        " It",
        " has",
        " a",
        " population",
        " of",
        " about",
        " 2",
        ".",
        "1",
        " million",
        " people",
        "\n",
        " café",
        " \"quoted\"",
        " 👋",
    ];
    let mut body = String::with_capacity(EVENTS * 120);
    for i in 0..EVENTS - 1 {
        let text = serde_json::to_string(words[i % words.len()]).unwrap();
        body.push_str(&format!(
            "data:{{\"token\":{{\"id\":{},\"text\":{text},\"logprob\":-{}.{:04},\"special\":false}},\"generated_text\":null,\"details\":null}}\n\n",
            1000 + i % 40000,
            i % 3,
            i % 10000
        ));
    }
    body.push_str("data:{\"token\":{\"id\":2,\"text\":\"</s>\",\"logprob\":-0.01,\"special\":true},\"generated_text\":\"...\",\"details\":null}\n\n");
    body.into_bytes()
}

fn ours(body: &[u8]) -> usize {
    let mut decoder = Decoder::new(1 << 20);
    let mut tokens = 0;
    for chunk in body.chunks(CHUNK) {
        decoder.push(chunk);
        while let Ok(Some(event)) = decoder.next_event() {
            if matches!(event, Event::Token(_) | Event::Final(_)) {
                tokens += 1;
            }
        }
    }
    tokens
}

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Wire {
    token: h2o_chat_protocol::Token,
    generated_text: Option<String>,
}

fn off_the_shelf(body: &[u8]) -> usize {
    use eventsource_stream::Eventsource;
    let chunks = body
        .chunks(CHUNK)
        .map(|c| Ok::<_, std::convert::Infallible>(bytes::Bytes::copy_from_slice(c)));
    let stream = futures_util::stream::iter(chunks).eventsource();
    futures_executor::block_on(stream.fold(0usize, |tokens, event| async move {
        match event {
            Ok(event) => match serde_json::from_str::<Wire>(&event.data) {
                Ok(_) => tokens + 1,
                Err(_) => tokens,
            },
            Err(_) => tokens,
        }
    }))
}

fn bench(c: &mut Criterion) {
    let body = realistic_stream();
    assert_eq!(ours(&body), EVENTS);
    assert_eq!(off_the_shelf(&body), EVENTS);
    let mut group = c.benchmark_group("decode_100k_token_events");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.sample_size(20);
    group.bench_function("h2o_chat_protocol::Decoder", |b| b.iter(|| ours(&body)));
    group.bench_function("eventsource_stream+serde_json", |b| {
        b.iter(|| off_the_shelf(&body))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
