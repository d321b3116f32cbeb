//! The engine on this machine (BENCHMARKS.md): model load, prompt evaluation and decode
//! speed, peak RSS — beside a bare llama-cpp-2 greedy loop on the same GGUF, thread count and
//! prompt, measured in the same run, so the ratio shows what the TGI layer costs.
//!
//! `cargo bench -p h2o-chat-engine --bench engine`

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use h2o_chat_engine::fetch::{SMOLLM2, cache_dir, ensure_model};
use h2o_chat_engine::{
    ChatTurn, Engine, GenerationEvent, GenerationRequest, LlamaConfig, LlamaEngine, SamplingParams,
};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;

const THREADS: usize = 2;
const DECODE_TOKENS: u32 = 128;
const ROUNDS: usize = 5;

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// (prefill seconds for the prompt, decode tokens/s) through the engine.
fn engine_round(engine: &LlamaEngine, prompt: &str) -> (f64, f64) {
    let started = Instant::now();
    let mut generation = engine
        .start(GenerationRequest {
            prompt: prompt.to_string(),
            sampling: SamplingParams::default(),
            max_new_tokens: DECODE_TOKENS,
            stop: vec![],
            truncate: None,
        })
        .unwrap();
    let mut first = None;
    let mut count = 0u32;
    while let Some(event) = generation.events.blocking_recv() {
        count += 1;
        let now = Instant::now();
        first.get_or_insert(now);
        if let GenerationEvent::Finished(..) | GenerationEvent::Failed(_) = event {
            break;
        }
    }
    let first = first.unwrap();
    let prefill = first.duration_since(started).as_secs_f64();
    let decode = (count - 1) as f64 / Instant::now().duration_since(first).as_secs_f64().max(1e-9);
    (prefill, decode)
}

/// The same work with the bindings alone: tokenize, decode the prompt, greedy-sample.
fn bare_round(backend: &LlamaBackend, model: &LlamaModel, prompt: &str) -> (f64, f64) {
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(4096))
        .with_n_batch(512)
        .with_n_ubatch(512)
        .with_n_threads(THREADS as i32)
        .with_n_threads_batch(THREADS as i32);
    let mut context = model.new_context(backend, params).unwrap();
    let tokens = model.vocab().tokenize(prompt.as_bytes(), true, true);
    let mut sampler = LlamaSampler::greedy();
    let started = Instant::now();
    let mut batch = LlamaBatch::new(512, 1);
    for (i, &token) in tokens.iter().enumerate() {
        batch
            .add(token, i as i32, &[0], i == tokens.len() - 1)
            .unwrap();
    }
    context.decode(&mut batch).unwrap();
    let mut token = sampler.sample(&context, batch.n_tokens() - 1);
    let first = Instant::now();
    let first_position = tokens.len() as i32;
    for position in first_position..first_position + DECODE_TOKENS as i32 - 1 {
        batch.clear();
        batch.add(token, position, &[0], true).unwrap();
        context.decode(&mut batch).unwrap();
        token = sampler.sample(&context, batch.n_tokens() - 1);
        let _ = model.vocab().token_to_piece(token, false, None);
    }
    let prefill = first.duration_since(started).as_secs_f64();
    let decode = (DECODE_TOKENS - 1) as f64 / Instant::now().duration_since(first).as_secs_f64();
    (prefill, decode)
}

fn main() {
    let gguf = ensure_model(&cache_dir(), &SMOLLM2, &mut |_, _, _| {}).expect("model");
    let load_started = Instant::now();
    let mut config = LlamaConfig::new(&gguf, "SmolLM2-135M-Instruct");
    config.threads = THREADS;
    let engine = LlamaEngine::load(config).expect("load");
    let load_ms = load_started.elapsed().as_millis();
    // A ~256-token prompt: a paragraph repeated, then a question.
    let text = "The quick brown fox jumps over the lazy dog near the river bank in the morning. "
        .repeat(14);
    let prompt = engine
        .render_chat(&[ChatTurn {
            role: "user".into(),
            content: format!("{text}\nSummarise this in one sentence."),
        }])
        .unwrap();
    let prompt_tokens = engine.count_tokens(&prompt).unwrap();
    // Warm up both paths once.
    engine_round(&engine, &prompt);
    let backend = h2o_chat_engine::llama_backend().ok();
    let model = backend
        .as_ref()
        .map(|b| LlamaModel::load_from_file(b, &gguf, &LlamaModelParams::default()).unwrap());
    let (mut e_prefill, mut e_decode, mut b_prefill, mut b_decode) =
        (vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        let (p, d) = engine_round(&engine, &prompt);
        e_prefill.push(prompt_tokens as f64 / p);
        e_decode.push(d);
        if let (Some(backend), Some(model)) = (backend, &model) {
            let (p, d) = bare_round(backend, model, &prompt);
            b_prefill.push(prompt_tokens as f64 / p);
            b_decode.push(d);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "engine bench: SmolLM2-135M-Instruct Q4_1, {THREADS} threads, {ROUNDS} rounds (medians), prompt {prompt_tokens} tokens, {DECODE_TOKENS} greedy tokens"
    );
    println!("model load (mmap + worker start): {load_ms} ms");
    println!(
        "h2o-chat-engine: prompt {:.0} tok/s, decode {:.1} tok/s",
        median(e_prefill.clone()),
        median(e_decode.clone())
    );
    if !b_decode.is_empty() {
        println!(
            "bare llama-cpp-2 loop: prompt {:.0} tok/s, decode {:.1} tok/s",
            median(b_prefill.clone()),
            median(b_decode.clone())
        );
        println!(
            "ratio engine / bare: prompt {:.2}, decode {:.2}",
            median(e_prefill) / median(b_prefill),
            median(e_decode) / median(b_decode)
        );
    } else {
        println!(
            "(the bare loop needs its own llama.cpp backend, which this process could not init)"
        );
    }
    println!(
        "peak RSS of the process (engine + a second copy of the model for the bare loop): {:.0} MB",
        peak_rss_mb()
    );
}
