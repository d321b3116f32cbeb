//! The local engine on this machine (BENCHMARKS.md), each figure beside a bare llama-cpp-2
//! loop doing the same work on the same GGUF, build and thread count, measured alternately
//! in the same process:
//!
//! 1. One stream: prompt evaluation and decode speed (what the TGI layer costs).
//! 2. B streams at once (B = 1, 2, 4, 8, 16): aggregate decode tokens/s through the
//!    scheduler, beside a bare loop that decodes the same B sequences in one batch per step —
//!    for a per-slot KV cache (the default) and a unified one.
//!
//! 3. What the 8-bit KV cache changes: greedy answers to 32 questions with an 8-bit and a
//!    16-bit cache, token by token; then, with the history held fixed (each 16-bit answer
//!    fed back as the prompt), how often the next-token choice agrees with the 16-bit
//!    cache's, beside what other number formats and kernels change (the noise floor).
//!
//! `cargo bench -p h2o-chat-llama --bench engine`; for a quick look or a profile,
//! `H2O_CHAT_BENCH_SECTIONS` (a comma list of `one-stream`, `streams`, `kv-cache`) runs only
//! those parts and `H2O_CHAT_BENCH_STREAMS=1,8` measures only those B, per-slot KV only;
//! `H2O_CHAT_BENCH_KV_CACHE=f16` runs both contenders with a 16-bit cache and no flash
//! attention instead of the default 8-bit one with it.

use std::num::NonZeroU32;
use std::time::Instant;

use h2o_chat_engine::{ChatTurn, Engine, GenerationEvent, GenerationRequest, Prompt};
use h2o_chat_llama::{KvCache, LlamaConfig, LlamaEngine, backend};
use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;

const THREADS: usize = 2;
const DECODE_TOKENS: usize = 64;
const ROUNDS: usize = 5;
/// A raw continuation that goes on without an end-of-sequence token.
const COUNTING: &str = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,";

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The KV cache both contenders use: the engine's default, or `H2O_CHAT_BENCH_KV_CACHE`
/// (`q8_0`, `f16`).
fn kv_cache() -> KvCache {
    std::env::var("H2O_CHAT_BENCH_KV_CACHE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_default()
}

/// The engine's tokens for `prompt`, as the bindings take them.
fn prompt_tokens(engine: &LlamaEngine, prompt: &Prompt) -> Vec<LlamaToken> {
    engine
        .tokenize(prompt)
        .unwrap()
        .ids
        .unwrap()
        .iter()
        .map(|&id| LlamaToken(id as i32))
        .collect()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn argmax(logits: &[f32]) -> LlamaToken {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    LlamaToken(best as i32)
}

fn engine(gguf: &std::path::Path, slots: usize, unified: bool) -> LlamaEngine {
    let mut config = LlamaConfig::new(gguf, "SmolLM2-135M-Instruct");
    config.threads = THREADS;
    config.slots = slots;
    config.context_per_slot = 1024;
    config.kv_unified = unified;
    config.kv_cache = kv_cache();
    LlamaEngine::load(config).expect("model loads")
}

/// `streams` generations at once; returns (seconds to the first token of the slowest
/// stream, aggregate decode tokens/s after that).
fn engine_round(
    engine: &LlamaEngine,
    prompt: &Prompt,
    streams: usize,
    tokens: usize,
) -> (f64, f64) {
    let started = Instant::now();
    let mut generations: Vec<_> = (0..streams)
        .map(|_| {
            let mut request = GenerationRequest::new(prompt.clone(), tokens as u32);
            request.max_new_tokens = tokens as u32;
            engine.start(request).expect("starts")
        })
        .collect();
    // Wait for every stream's first token, then time the rest.
    for generation in &mut generations {
        assert!(matches!(
            generation.events.blocking_recv(),
            Some(GenerationEvent::Token(_))
        ));
    }
    let first = started.elapsed().as_secs_f64();
    let decoding = Instant::now();
    let mut produced = 0usize;
    for generation in &mut generations {
        while let Some(event) = generation.events.blocking_recv() {
            produced += 1;
            if !matches!(event, GenerationEvent::Token(_)) {
                break;
            }
        }
    }
    (first, produced as f64 / decoding.elapsed().as_secs_f64())
}

/// The same work with the bindings alone: B sequences, one prefill batch, then one batch of B
/// tokens per step, greedy. Returns (prefill seconds, aggregate decode tokens/s).
fn bare_round(
    model: &LlamaModel,
    prompt: &[LlamaToken],
    streams: usize,
    tokens: usize,
    unified: bool,
) -> (f64, f64) {
    let kv_cache = kv_cache();
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new((streams * 1024) as u32))
        .with_n_batch(512)
        .with_n_ubatch(512)
        .with_n_seq_max(streams as u32)
        .with_kv_unified(unified)
        .with_type_k(kv_cache.llama_type())
        .with_type_v(kv_cache.llama_type())
        .with_flash_attention_policy(i32::from(kv_cache.flash_attention()))
        .with_n_threads(THREADS as i32)
        .with_n_threads_batch(THREADS as i32);
    let backend = backend().expect("backend");
    let mut context = model.new_context(backend, params).expect("context");
    let mut batch = LlamaBatch::new(512.max(streams * prompt.len()), 1);
    let started = Instant::now();
    // Prefill in chunks of at most 512 tokens, every sequence's prompt.
    let mut next: Vec<LlamaToken> = Vec::with_capacity(streams);
    for seq in 0..streams {
        batch.clear();
        for (i, &token) in prompt.iter().enumerate() {
            batch
                .add(token, i as i32, &[seq as i32], i == prompt.len() - 1)
                .unwrap();
        }
        context.decode(&mut batch).expect("prefill");
        next.push(argmax(context.get_logits_ith(batch.n_tokens() - 1)));
    }
    let prefill = started.elapsed().as_secs_f64();
    let decoding = Instant::now();
    for step in 0..tokens - 1 {
        batch.clear();
        for (seq, &token) in next.iter().enumerate() {
            batch
                .add(token, (prompt.len() + step) as i32, &[seq as i32], true)
                .unwrap();
        }
        context.decode(&mut batch).expect("decode");
        for (seq, token) in next.iter_mut().enumerate() {
            *token = argmax(context.get_logits_ith(seq as i32));
            let _ = model.vocab().token_to_piece(*token, false, None);
        }
    }
    (
        prefill,
        (streams * (tokens - 1)) as f64 / decoding.elapsed().as_secs_f64(),
    )
}

fn main() {
    let gguf = h2o_chat_test_support::model::local_gguf();
    let load_started = Instant::now();
    let single = engine(&gguf, 1, false);
    let load_ms = load_started.elapsed().as_millis();
    let model = LlamaModel::load_from_file(
        backend().expect("backend"),
        &gguf,
        &LlamaModelParams::default(),
    )
    .expect("model loads for the bare loop");
    println!(
        "engine bench: SmolLM2-135M-Instruct Q4_1, {THREADS} threads, {ROUNDS} rounds (medians), nproc {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("model load (mmap + scheduler start, 1 slot): {load_ms} ms");

    let only: Option<Vec<usize>> = std::env::var("H2O_CHAT_BENCH_STREAMS").ok().map(|list| {
        list.split(',')
            .filter_map(|b| b.trim().parse().ok())
            .collect()
    });

    // 1. One stream: a ~256-token chat prompt, then greedy decoding.
    let text = "The quick brown fox jumps over the lazy dog near the river bank in the morning. "
        .repeat(14);
    let chat = single
        .render_chat(&[ChatTurn::new(
            "user",
            format!("{text}\nSummarise this in one sentence."),
        )])
        .unwrap();
    let chat_tokens = prompt_tokens(&single, &chat);
    let counting = Prompt::raw(COUNTING);
    let counting_tokens = prompt_tokens(&single, &counting);
    engine_round(&single, &chat, 1, 8);
    let quick = only.is_some();
    let runs = |section: &str| {
        std::env::var("H2O_CHAT_BENCH_SECTIONS")
            .map_or(true, |list| list.split(',').any(|s| s.trim() == section))
    };
    let (mut e_prefill, mut b_prefill, mut e_decode, mut b_decode) =
        (vec![], vec![], vec![], vec![]);
    for _ in 0..if runs("one-stream") { ROUNDS } else { 0 } {
        let (first, _) = engine_round(&single, &chat, 1, 2);
        e_prefill.push(chat_tokens.len() as f64 / first);
        let (prefill, _) = bare_round(&model, &chat_tokens, 1, 2, false);
        b_prefill.push(chat_tokens.len() as f64 / prefill);
        e_decode.push(engine_round(&single, &counting, 1, 128).1);
        b_decode.push(bare_round(&model, &counting_tokens, 1, 128, false).1);
    }
    if runs("one-stream") {
        println!(
            "one stream, prompt {} tokens: engine {:.0} tok/s, bare {:.0} tok/s, ratio {:.2}",
            chat_tokens.len(),
            median(e_prefill.clone()),
            median(b_prefill.clone()),
            median(e_prefill) / median(b_prefill)
        );
        println!(
            "one stream, decode 128 tokens: engine {:.1} tok/s, bare {:.1} tok/s, ratio {:.2}",
            median(e_decode.clone()),
            median(b_decode.clone()),
            median(e_decode) / median(b_decode)
        );
    }
    drop(single);

    // 2. B streams at once, per-slot and unified KV caches.
    let kv_layouts: &[bool] = match (runs("streams"), quick) {
        (false, _) => &[],
        (true, true) => &[false],
        (true, false) => &[false, true],
    };
    for &unified in kv_layouts {
        println!(
            "B streams of {DECODE_TOKENS} tokens, {} KV cache: aggregate decode tok/s",
            if unified { "unified" } else { "per-slot" }
        );
        let mut one = None;
        let all = vec![1usize, 2, 4, 8, 16];
        for &streams in only.as_ref().unwrap_or(&all) {
            let engine = engine(&gguf, streams, unified);
            engine_round(&engine, &counting, streams, 4);
            let (mut ours, mut bare) = (vec![], vec![]);
            for _ in 0..ROUNDS {
                ours.push(engine_round(&engine, &counting, streams, DECODE_TOKENS).1);
                bare.push(bare_round(&model, &counting_tokens, streams, DECODE_TOKENS, unified).1);
            }
            let (ours, bare) = (median(ours), median(bare));
            let base = *one.get_or_insert(ours);
            println!(
                "  B={streams:>2}: engine {ours:>6.1} ({:.2}× one stream), bare batched loop {bare:>6.1}, engine/bare {:.2}",
                ours / base,
                ours / bare
            );
        }
    }
    if runs("kv-cache") {
        kv_cache_agreement(&gguf);
    }
    println!(
        "peak RSS of the process (all engines above, in turn, and the bare loop's model): {:.0} MB",
        peak_rss_mb()
    );
}

/// Questions of many kinds, for the KV cache agreement.
const QUESTIONS: [&str; 32] = [
    "What is the capital of France?",
    "Name three colours.",
    "What is 2 + 2?",
    "Write a haiku about snow.",
    "Who wrote Hamlet?",
    "What is the largest ocean?",
    "Say hello in Spanish.",
    "What do bees make?",
    "Explain photosynthesis in one sentence.",
    "Give me a tip for learning to cook.",
    "Why is the sky blue?",
    "What is a prime number?",
    "Write a short poem about the sea.",
    "How many legs does a spider have?",
    "What is the boiling point of water?",
    "Describe a cat to someone who has never seen one.",
    "What is the difference between weather and climate?",
    "Suggest a name for a small bakery.",
    "What does a computer's memory do?",
    "How do I make a cup of tea?",
    "What is gravity?",
    "List three fruits that are red.",
    "Translate 'good morning' into French.",
    "What is the tallest mountain on Earth?",
    "Tell me a fun fact about octopuses.",
    "Why do leaves change colour in autumn?",
    "What is an email?",
    "How can I sleep better?",
    "What is the square root of 81?",
    "Write one sentence about friendship.",
    "What are the three states of matter?",
    "What is the main language spoken in Brazil?",
];

/// Greedy answers (token ids) to `QUESTIONS`, eight at a time.
fn greedy_answers(gguf: &std::path::Path, kv_cache: KvCache, tokens: u32) -> Vec<Vec<u32>> {
    let mut config = LlamaConfig::new(gguf, "SmolLM2-135M-Instruct");
    config.threads = THREADS;
    config.slots = 8;
    config.context_per_slot = 1024;
    config.kv_cache = kv_cache;
    let engine = LlamaEngine::load(config).expect("model loads");
    let mut answers = Vec::new();
    for questions in QUESTIONS.chunks(8) {
        let generations: Vec<_> = questions
            .iter()
            .map(|q| {
                let prompt = engine.render_chat(&[ChatTurn::new("user", *q)]).unwrap();
                engine
                    .start(GenerationRequest::new(prompt, tokens))
                    .expect("starts")
            })
            .collect();
        for mut generation in generations {
            let mut ids = Vec::new();
            while let Some(event) = generation.events.blocking_recv() {
                match event {
                    GenerationEvent::Token(token) => ids.push(token.id),
                    GenerationEvent::Finished(token, _) => {
                        ids.push(token.id);
                        break;
                    }
                    GenerationEvent::Failed(failure) => panic!("{failure}"),
                    GenerationEvent::Alternatives(_) | GenerationEvent::Prefill(_) => {}
                }
            }
            answers.push(ids);
        }
    }
    answers
}

/// How often an 8-bit KV cache changes a greedy answer, and how far in.
fn kv_cache_agreement(gguf: &std::path::Path) {
    const TOKENS: u32 = 64;
    let q8 = greedy_answers(gguf, KvCache::Q8_0, TOKENS);
    let f16 = greedy_answers(gguf, KvCache::F16, TOKENS);
    let mut identical = 0;
    let mut first_differences = Vec::new();
    let (mut same_tokens, mut all_tokens) = (0usize, 0usize);
    for (a, b) in q8.iter().zip(&f16) {
        let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
        if a == b {
            identical += 1;
        } else {
            first_differences.push(common as f64);
        }
        same_tokens += common;
        all_tokens += b.len();
    }
    teacher_forced_agreement(gguf, &f16);
    println!(
        "8-bit vs 16-bit KV cache, greedy answers of up to {TOKENS} tokens to {} questions: {identical} identical; \
         the others first differ at token {} (median); {:.1} % of the 16-bit answers' tokens come before any difference",
        QUESTIONS.len(),
        if first_differences.is_empty() {
            "-".to_string()
        } else {
            format!("{:.0}", median(first_differences))
        },
        100.0 * same_tokens as f64 / all_tokens.max(1) as f64
    );
}

/// Next-token arg-maxes at every answer position of `prompt + answer`, in one context.
fn forced_choices(
    model: &LlamaModel,
    tokens: &[LlamaToken],
    answer_from: usize,
    kv: KvCacheType,
    flash: bool,
) -> Vec<LlamaToken> {
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(1024))
        .with_n_batch(1024)
        .with_n_ubatch(1024)
        .with_type_k(kv)
        .with_type_v(kv)
        .with_flash_attention_policy(i32::from(flash))
        .with_n_threads(THREADS as i32)
        .with_n_threads_batch(THREADS as i32);
    let mut context = model
        .new_context(backend().expect("backend"), params)
        .expect("context");
    let mut batch = LlamaBatch::new(tokens.len(), 1);
    for (i, &token) in tokens.iter().enumerate() {
        batch
            .add(token, i as i32, &[0], i + 1 >= answer_from)
            .unwrap();
    }
    context.decode(&mut batch).expect("decode");
    (answer_from - 1..tokens.len() - 1)
        .map(|i| argmax(context.get_logits_ith(i as i32)))
        .collect()
}

/// With the 16-bit answers as fixed histories: how often each format's next-token choice
/// agrees with the 16-bit cache's (llama.cpp's own kernels, one pass over the whole text).
fn teacher_forced_agreement(gguf: &std::path::Path, answers: &[Vec<u32>]) {
    let model = LlamaModel::load_from_file(
        backend().expect("backend"),
        gguf,
        &LlamaModelParams::default(),
    )
    .expect("model loads");
    let renderer = engine(gguf, 1, false);
    let contenders = [
        (
            "8-bit cache, flash attention (the default)",
            KvCacheType::Q8_0,
            true,
        ),
        ("16-bit cache, flash attention", KvCacheType::F16, true),
        ("32-bit cache", KvCacheType::F32, false),
    ];
    let mut agree = [0usize; 3];
    let (mut total, mut reproduced) = (0usize, 0usize);
    for (question, answer) in QUESTIONS.iter().zip(answers) {
        let prompt = renderer
            .render_chat(&[ChatTurn::new("user", *question)])
            .unwrap();
        let mut tokens = prompt_tokens(&renderer, &prompt);
        let answer_from = tokens.len();
        tokens.extend(answer.iter().map(|&id| LlamaToken(id as i32)));
        let reference = forced_choices(&model, &tokens, answer_from, KvCacheType::F16, false);
        total += reference.len();
        reproduced += reference
            .iter()
            .zip(answer)
            .filter(|(r, a)| r.0 as u32 == **a)
            .count();
        for (n, &(_, kv, flash)) in contenders.iter().enumerate() {
            let choices = forced_choices(&model, &tokens, answer_from, kv, flash);
            agree[n] += choices
                .iter()
                .zip(&reference)
                .filter(|(a, b)| a == b)
                .count();
        }
    }
    println!(
        "the 16-bit cache in one pass over each question and answer reproduces {:.2} % of the answers' tokens (100: the kernels do not depend on the batch)",
        100.0 * reproduced as f64 / total.max(1) as f64
    );
    for (n, (name, _, _)) in contenders.iter().enumerate() {
        println!(
            "next-token choice on the 16-bit answers' histories ({total} positions), {name}: {:.2} % agree with the 16-bit cache",
            100.0 * agree[n] as f64 / total.max(1) as f64
        );
    }
}
