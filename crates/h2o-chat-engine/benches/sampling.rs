//! What choosing a token costs over SmolLM2's 49,152-token vocabulary (BENCHMARKS.md), per
//! token, on the inference thread while the model's other threads wait: greedy (the path
//! without a candidate list), greedy with five alternatives, greedy under a repetition
//! penalty, and sampling with temperature and top-p; beside a reference loop doing greedy
//! the way it was done before, with `f64::exp` for the log-probability's denominator.
//!
//! `cargo bench -p h2o-chat-engine --bench sampling`

use std::hint::black_box;
use std::time::Instant;

use h2o_chat_engine::sampling::SplitMix64;
use h2o_chat_engine::{Sampler, SamplingParams};

const VOCABULARY: usize = 49_152;
const TOKENS: usize = 4_000;
const ROUNDS: usize = 5;

/// Logits shaped like a model's: five likely tokens (20 down to 16), the rest around 0
/// (normal, standard deviation 2), so that top-p stops among the first few hundred.
fn logits(seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    let mut logits: Vec<f32> = (0..VOCABULARY)
        .map(|_| {
            // Box–Muller.
            let (u, v) = (1.0 - rng.next_f64(), rng.next_f64());
            (2.0 * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        })
        .collect();
    for (i, likely) in [20.0, 19.0, 18.0, 17.0, 16.0].into_iter().enumerate() {
        logits[i * 9_973] = likely;
    }
    logits
}

/// Microseconds per token, the median of [`ROUNDS`].
fn per_token(mut choose: impl FnMut() -> f32) -> f64 {
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..TOKENS {
                black_box(choose());
            }
            started.elapsed().as_secs_f64() * 1e6 / TOKENS as f64
        })
        .collect();
    rounds.sort_by(|a, b| a.total_cmp(b));
    rounds[ROUNDS / 2]
}

/// Greedy with a copied candidate list and `f64::exp` per token.
fn reference(logits: &[f32], candidates: &mut Vec<(u32, f32)>) -> f32 {
    candidates.clear();
    candidates.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
    let mut best = candidates[0];
    for &candidate in &candidates[1..] {
        if candidate.1 > best.1 {
            best = candidate;
        }
    }
    let total: f64 = candidates
        .iter()
        .map(|c| ((c.1 - best.1) as f64).exp())
        .sum();
    -(total.ln()) as f32
}

fn main() {
    let logits = logits(3);
    let logits = black_box(logits.as_slice());
    let mut candidates = Vec::new();
    let reference = per_token(|| reference(logits, &mut candidates));
    // One sampler per path, `top` alternatives asked for.
    let time = |params: SamplingParams, top: usize| {
        let mut sampler = Sampler::new(&params, VOCABULARY);
        per_token(|| {
            sampler
                .choose_from(logits, None, top)
                .map_or(0.0, |c| c.logprob)
        })
    };
    let plain = time(SamplingParams::default(), 0);
    let alternatives = time(SamplingParams::default(), 5);
    let penalty = time(
        SamplingParams {
            repetition_penalty: Some(1.2),
            ..SamplingParams::default()
        },
        0,
    );
    let sampling = time(
        SamplingParams {
            temperature: Some(0.7),
            top_p: Some(0.9),
            seed: Some(1),
            ..SamplingParams::default()
        },
        0,
    );
    println!("| choosing a token over {VOCABULARY} logits | µs per token |");
    println!("|---|---|");
    println!("| reference: greedy with a candidate list and f64::exp | {reference:.1} |");
    println!("| greedy (no mask, penalty or alternatives) | {plain:.1} |");
    println!("| greedy with 5 alternatives | {alternatives:.1} |");
    println!("| greedy with a repetition penalty | {penalty:.1} |");
    println!("| sampling: temperature 0.7, top-p 0.9 | {sampling:.1} |");
    println!(
        "({TOKENS} tokens a round, median of {ROUNDS} rounds; nproc {})",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}
