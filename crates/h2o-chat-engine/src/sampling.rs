//! Choosing the next token with TGI's semantics (protocol §c).
//!
//! TGI's `NextTokenChooser` applies, in this order: the repetition penalty (over every
//! distinct token of prompt and output), then — only when sampling — temperature, top-k,
//! top-p and typical-p as Hugging Face's logits warpers define them; then it samples from
//! the softmax with a seeded generator, or takes the arg-max. The reported log-probability
//! is the chosen token's under the final distribution, and so are the alternatives reported
//! beside it ([`Choice::top`]).
//!
//! A grammar's mask ([`Sampler::choose_from`]) comes first: tokens it forbids are not
//! candidates at all, so the penalty, the warpers and the draw see only what the grammar
//! allows, and sampling keeps TGI's semantics within it.
//!
//! This is written here rather than taken from llama.cpp's sampler chain because TGI's rules
//! are the contract: llama.cpp's top-p keeps a different boundary token, its seed is 32-bit,
//! and its repetition penalty looks only at a window. The cost is one pass over the logits
//! per token (a sort only for top-p beyond the top 1,024 candidates, or typical-p).
//!
//! ```
//! use h2o_chat_engine::{Sampler, SamplingParams};
//!
//! let mut sampler = Sampler::new(&SamplingParams::default(), 4);
//! let (token, _logprob) = sampler.choose(&[0.1, 2.0, 0.3, -1.0]);
//! assert_eq!(token, 1); // greedy: the arg-max
//! ```

use crate::request::SamplingParams;

/// A small, fast, seedable generator (SplitMix64). Same seed, same sequence.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A seed for requests that give none: different for every request.
fn random_seed() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// A token chosen, with its log-probability and the likeliest alternatives at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub token: u32,
    pub logprob: f32,
    /// Most likely first, the chosen token among them when it is likely enough; empty
    /// unless asked for.
    pub top: Vec<(u32, f32)>,
}

/// Whether bit `token` of a mask (32 tokens a word, as llguidance lays it out) is set.
fn allowed(mask: &[u32], token: usize) -> bool {
    mask.get(token / 32)
        .is_some_and(|word| word & (1 << (token % 32)) != 0)
}

/// How many top candidates are sorted before falling back to a full sort for top-p.
const TOP_P_WINDOW: usize = 1024;

/// Chooses tokens for one generation; remembers the tokens seen for the repetition penalty.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    sampling: bool,
    seed: Option<u64>,
    rng: SplitMix64,
    /// Which token ids are in prompt + output (the penalty applies once per distinct id).
    seen: Vec<bool>,
    seen_ids: Vec<u32>,
    scratch: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler for a vocabulary of `vocab_size` tokens.
    pub fn new(params: &SamplingParams, vocab_size: usize) -> Self {
        let sampling = params.is_sampling();
        let seed = sampling.then(|| params.seed.unwrap_or_else(random_seed));
        Sampler {
            params: params.clone(),
            sampling,
            seed,
            rng: SplitMix64::new(seed.unwrap_or(0)),
            seen: vec![false; vocab_size],
            seen_ids: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// The seed in use; `None` when decoding greedily (TGI reports `seed: null` then).
    pub fn seed(&self) -> Option<u64> {
        self.seed
    }

    /// Records a prompt or output token for the repetition penalty.
    pub fn observe(&mut self, token: u32) {
        if let Some(seen) = self.seen.get_mut(token as usize)
            && !*seen
        {
            *seen = true;
            self.seen_ids.push(token);
        }
    }

    /// Picks the next token from the model's logits; returns it with its log-probability.
    /// The chosen token is observed.
    pub fn choose(&mut self, logits: &[f32]) -> (u32, f32) {
        let (token, logprob) = self.pick(logits);
        self.observe(token);
        (token, logprob)
    }

    /// Picks the next token among those `mask` allows (all when `None`; bit `i` of the
    /// words is token `i`), with the `top` likeliest alternatives. `None` when the mask
    /// allows no token at all. The chosen token is observed.
    pub fn choose_from(
        &mut self,
        logits: &[f32],
        mask: Option<&[u32]>,
        top: usize,
    ) -> Option<Choice> {
        if mask.is_none() && top == 0 && !self.sampling && !self.penalizes() {
            if logits.is_empty() {
                return None;
            }
            let (token, logprob) = greedy_over_logits(logits);
            self.observe(token);
            return Some(Choice {
                token,
                logprob,
                top: Vec::new(),
            });
        }
        let mut candidates = std::mem::take(&mut self.scratch);
        candidates.clear();
        match mask {
            None => candidates.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l))),
            Some(mask) => candidates.extend(
                logits
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| allowed(mask, *i))
                    .map(|(i, &l)| (i as u32, l)),
            ),
        }
        if candidates.is_empty() {
            self.scratch = candidates;
            return None;
        }
        self.penalize(&mut candidates, mask.is_some());
        let ((token, logprob), denominator) = if self.sampling {
            self.warp(&mut candidates);
            self.draw(&candidates)
        } else {
            greedy(&candidates)
        };
        let top = ranked(&mut candidates, top, denominator);
        self.scratch = candidates;
        self.observe(token);
        Some(Choice {
            token,
            logprob,
            top,
        })
    }

    fn pick(&mut self, logits: &[f32]) -> (u32, f32) {
        let mut candidates = std::mem::take(&mut self.scratch);
        candidates.clear();
        candidates.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        self.penalize(&mut candidates, false);
        let (choice, _) = if self.sampling {
            self.warp(&mut candidates);
            self.draw(&candidates)
        } else {
            greedy(&candidates)
        };
        self.scratch = candidates;
        choice
    }

    /// Whether a repetition penalty changes any logit.
    fn penalizes(&self) -> bool {
        self.params.repetition_penalty.is_some_and(|p| p != 1.0)
    }

    /// The repetition penalty over every token seen. `sparse`: the candidates are a subset
    /// (a grammar's), so a seen token is looked up rather than indexed.
    fn penalize(&self, candidates: &mut [(u32, f32)], sparse: bool) {
        let Some(penalty) = self.params.repetition_penalty.filter(|&p| p != 1.0) else {
            return;
        };
        let apply = |logit: &mut f32| {
            *logit = if *logit < 0.0 {
                *logit * penalty
            } else {
                *logit / penalty
            };
        };
        if sparse {
            for (id, logit) in candidates.iter_mut() {
                if self.seen.get(*id as usize).copied().unwrap_or(false) {
                    apply(logit);
                }
            }
        } else {
            for &id in &self.seen_ids {
                if let Some((_, logit)) = candidates.get_mut(id as usize) {
                    apply(logit);
                }
            }
        }
    }

    /// Temperature, top-k, top-p, typical-p, in TGI's order. Removed candidates are dropped
    /// from the list.
    fn warp(&self, candidates: &mut Vec<(u32, f32)>) {
        if let Some(t) = self.params.temperature.filter(|&t| t != 1.0) {
            for (_, logit) in candidates.iter_mut() {
                *logit /= t;
            }
        }
        if let Some(k) = self.params.top_k {
            let k = (k as usize).max(1);
            if k < candidates.len() {
                candidates.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
                candidates.truncate(k);
            }
        }
        if let Some(p) = self.params.top_p.filter(|&p| p < 1.0) {
            top_p(candidates, p);
        }
        if let Some(p) = self.params.typical_p.filter(|&p| p < 1.0) {
            typical_p(candidates, p);
        }
    }

    fn draw(&mut self, candidates: &[(u32, f32)]) -> ((u32, f32), Denominator) {
        let max = candidates
            .iter()
            .map(|c| c.1)
            .fold(f32::NEG_INFINITY, f32::max);
        let total: f64 = candidates.iter().map(|c| ((c.1 - max) as f64).exp()).sum();
        let mut target = self.rng.next_f64() * total;
        let mut chosen = candidates[candidates.len() - 1];
        for &candidate in candidates {
            let weight = ((candidate.1 - max) as f64).exp();
            if target < weight {
                chosen = candidate;
                break;
            }
            target -= weight;
        }
        // Reported with the same denominator as the alternatives ([`ranked`]), so that the
        // chosen token's entry among them is its log-probability exactly.
        let denominator = Denominator::of(candidates, |candidate| candidate.1, max);
        ((chosen.0, denominator.logprob(chosen.1)), denominator)
    }
}

fn greedy(candidates: &[(u32, f32)]) -> ((u32, f32), Denominator) {
    let mut best = candidates[0];
    for &candidate in &candidates[1..] {
        if candidate.1 > best.1 {
            best = candidate;
        }
    }
    let denominator = Denominator::of(candidates, |candidate| candidate.1, best.1);
    ((best.0, denominator.logprob(best.1)), denominator)
}

/// The softmax's denominator over the final candidates, as `ln Σ exp(logit − max)`: the
/// chosen token and its alternatives are reported with the one computed for the choice.
#[derive(Debug, Clone, Copy)]
struct Denominator {
    max: f32,
    log_total: f64,
}

impl Denominator {
    /// Over the logits `logit` reads from `items` (logits, or candidates).
    fn of<T>(items: &[T], logit: impl Fn(&T) -> f32, max: f32) -> Self {
        let mut total = ExpTotal::new(max);
        total.push_each(items, logit);
        Denominator {
            max,
            log_total: total.total().ln(),
        }
    }

    fn logprob(self, logit: f32) -> f32 {
        ((logit - self.max) as f64 - self.log_total) as f32
    }
}

/// [`greedy`] over every token's logit, without a candidate list: the common case (no mask,
/// no penalty, no alternatives) reads the logits once and copies nothing. The same choice
/// and the same log-probability as [`greedy`] over the same logits (a NaN logit, which no
/// model gives, is passed over here where [`greedy`] could stop at it).
fn greedy_over_logits(logits: &[f32]) -> (u32, f32) {
    // The largest logit by lanes (so that it vectorizes), then the first token holding it.
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let blocks = logits.chunks_exact(LANES);
    let mut max = f32::NEG_INFINITY;
    for &logit in blocks.remainder() {
        if logit > max {
            max = logit;
        }
    }
    for block in blocks {
        for (lane, &logit) in lanes.iter_mut().zip(block) {
            if logit > *lane {
                *lane = logit;
            }
        }
    }
    for lane in lanes {
        if lane > max {
            max = lane;
        }
    }
    let best = logits.iter().position(|&logit| logit == max).unwrap_or(0);
    let denominator = Denominator::of(logits, |logit| *logit, logits[best]);
    (best as u32, denominator.logprob(logits[best]))
}

/// Σ exp(value − max), the softmax's denominator for reported log-probabilities, over a whole
/// vocabulary every step. The exponentials are taken in `f32` by a polynomial the compiler
/// vectorizes (Cephes' `expf`: within 8 × 10⁻⁸ relative), eight at a time, and summed in
/// `f64` lanes, so the total is as exact as the `f32` result needs: `f64::exp` per token
/// made choosing a greedy token cost 260 µs, 2–4 % of a step. The same values in the same
/// order give the same total, whether they come as logits or as candidates.
struct ExpTotal {
    max: f32,
    sums: [f64; LANES],
    block: [f32; LANES],
    filled: usize,
}

const LANES: usize = 8;

impl ExpTotal {
    fn new(max: f32) -> Self {
        ExpTotal {
            max,
            sums: [0.0; LANES],
            block: [0.0; LANES],
            filled: 0,
        }
    }

    fn push(&mut self, value: f32) {
        self.block[self.filled] = value;
        self.filled += 1;
        if self.filled == LANES {
            add_block(&mut self.sums, &self.block, self.max);
            self.filled = 0;
        }
    }

    /// The values `value` reads from `items`, in blocks of [`LANES`]: the same values give
    /// the same blocks (so the same total) whatever holds them — logits, or candidates.
    #[inline(always)]
    fn push_each<T>(&mut self, items: &[T], value: impl Fn(&T) -> f32) {
        let mut items = items;
        while self.filled != 0 {
            let Some((first, rest)) = items.split_first() else {
                return;
            };
            self.push(value(first));
            items = rest;
        }
        let blocks = items.chunks_exact(LANES);
        let rest = blocks.remainder();
        for block in blocks {
            let block: [f32; LANES] = std::array::from_fn(|i| value(&block[i]));
            add_block(&mut self.sums, &block, self.max);
        }
        for item in rest {
            self.push(value(item));
        }
    }

    fn total(mut self) -> f64 {
        if self.filled > 0 {
            // exp(−∞ − max) adds 1.2 × 10⁻³⁸ a lane: nothing, and the same either way.
            self.block[self.filled..].fill(f32::NEG_INFINITY);
            add_block(&mut self.sums, &self.block, self.max);
        }
        self.sums.iter().sum()
    }
}

#[inline(always)]
fn add_block(sums: &mut [f64; LANES], block: &[f32; LANES], max: f32) {
    for (sum, &value) in sums.iter_mut().zip(block) {
        *sum += exp_at_most_zero(value - max) as f64;
    }
}

/// exp(x) for x ≤ 0 (a logit minus the largest), without a branch so that it vectorizes.
/// Cephes' `expf`: x = n·ln 2 + r with |r| ≤ ln 2 / 2, a degree-6 polynomial for exp(r),
/// 2ⁿ built in the exponent bits. Below `f32`'s normal range (x < −87.3, −∞ included) it
/// gives about 1.2 × 10⁻³⁸: nothing against a sum that holds exp(0) = 1. NaN stays NaN.
#[inline(always)]
fn exp_at_most_zero(x: f32) -> f32 {
    const LOWEST: f32 = -87.336_55; // ln of the smallest normal f32
    const ROUND: f32 = 12_582_912.0; // 1.5 × 2²³: adding it rounds to an integer
    let x = x.clamp(LOWEST, 0.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    // n in the low bits of the shifted float, as an integer.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let n = shifted - ROUND;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits((n_bits.wrapping_add(127) as u32) << 23)
}

/// The `n` likeliest candidates with their log-probabilities under the candidates'
/// distribution, most likely first (ties by id, so the order is stable).
/// Up to this many alternatives are kept in one pass; more (a client asking for hundreds)
/// are selected.
const FEW_ALTERNATIVES: usize = 32;

fn ranked(candidates: &mut [(u32, f32)], n: usize, denominator: Denominator) -> Vec<(u32, f32)> {
    if n == 0 || candidates.is_empty() {
        return Vec::new();
    }
    let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let n = n.min(candidates.len());
    let top = if n <= FEW_ALTERNATIVES {
        // One pass keeping the n best in order: most candidates cost one comparison with the
        // last kept, where a selection moves every candidate around.
        let mut top: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
        for &candidate in candidates.iter() {
            if top.len() == n
                && top
                    .last()
                    .is_some_and(|last| by_logit(&candidate, last).is_ge())
            {
                continue;
            }
            let at = top.partition_point(|kept| by_logit(kept, &candidate).is_lt());
            top.insert(at, candidate);
            top.truncate(n);
        }
        top
    } else {
        candidates.select_nth_unstable_by(n - 1, by_logit);
        let mut top = candidates[..n].to_vec();
        top.sort_unstable_by(by_logit);
        top
    };
    top.into_iter()
        .map(|(id, logit)| (id, denominator.logprob(logit)))
        .collect()
}

fn softmax_total(candidates: &[(u32, f32)], max: f32) -> f64 {
    candidates.iter().map(|c| ((c.1 - max) as f64).exp()).sum()
}

/// Hugging Face's TopPLogitsWarper: keep a token when the probability of the tokens more
/// likely than it is below `p` (so the token that crosses `p` stays), at least one.
fn top_p(candidates: &mut Vec<(u32, f32)>, p: f32) {
    let max = candidates
        .iter()
        .map(|c| c.1)
        .fold(f32::NEG_INFINITY, f32::max);
    let total = softmax_total(candidates, max);
    let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
    let keep_in = |sorted: &[(u32, f32)]| -> Option<usize> {
        let mut before = 0.0f64;
        for (i, c) in sorted.iter().enumerate() {
            if before >= p as f64 {
                return Some(i.max(1));
            }
            before += ((c.1 - max) as f64).exp() / total;
        }
        None
    };
    if candidates.len() > TOP_P_WINDOW {
        candidates.select_nth_unstable_by(TOP_P_WINDOW - 1, by_logit);
        candidates[..TOP_P_WINDOW].sort_unstable_by(by_logit);
        if let Some(keep) = keep_in(&candidates[..TOP_P_WINDOW]) {
            candidates.truncate(keep);
            return;
        }
    }
    candidates.sort_unstable_by(by_logit);
    if let Some(keep) = keep_in(candidates) {
        candidates.truncate(keep);
    }
}

/// Hugging Face's TypicalLogitsWarper: sort by how far each token's surprisal is from the
/// entropy, keep the closest ones until their mass reaches `p` (the crossing token stays).
fn typical_p(candidates: &mut Vec<(u32, f32)>, p: f32) {
    let max = candidates
        .iter()
        .map(|c| c.1)
        .fold(f32::NEG_INFINITY, f32::max);
    let log_total = softmax_total(candidates, max).ln();
    let logprob = |c: &(u32, f32)| (c.1 - max) as f64 - log_total;
    let entropy: f64 = -candidates
        .iter()
        .map(|c| {
            let lp = logprob(c);
            lp * lp.exp()
        })
        .sum::<f64>();
    let mut scored: Vec<(f64, (u32, f32))> = candidates
        .iter()
        .map(|c| ((-logprob(c) - entropy).abs(), *c))
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut mass = 0.0;
    let mut keep = scored.len();
    for (i, (_, c)) in scored.iter().enumerate() {
        mass += logprob(c).exp();
        if mass >= p as f64 {
            keep = i + 1;
            break;
        }
    }
    candidates.clear();
    candidates.extend(scored[..keep.max(1)].iter().map(|(_, c)| *c));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SamplingParams {
        SamplingParams::default()
    }

    #[test]
    fn greedy_takes_the_argmax_with_its_logprob() {
        let mut sampler = Sampler::new(&params(), 3);
        let (token, logprob) = sampler.choose(&[0.0, 1.0, 0.0]);
        assert_eq!(token, 1);
        let expected = 1.0f64 - (2.0 + 1.0f64.exp()).ln();
        assert!((logprob as f64 - expected).abs() < 1e-5);
        assert_eq!(sampler.seed(), None);
    }

    #[test]
    fn the_vectorized_exponential_is_as_exact_as_f32_below_zero() {
        let mut worst = 0.0f64;
        for i in 0..=1_000_000 {
            let x = -87.3 * i as f32 / 1e6;
            let exact = (x as f64).exp();
            let relative = ((exp_at_most_zero(x) as f64 - exact) / exact).abs();
            worst = worst.max(relative);
        }
        assert!(worst < 1.5e-7, "worst relative error {worst:e}");
        assert_eq!(exp_at_most_zero(0.0), 1.0);
        let smallest_normal = f32::MIN_POSITIVE as f64;
        for x in [-88.0, -100.0, f32::NEG_INFINITY] {
            assert!(
                (exp_at_most_zero(x) as f64 - smallest_normal).abs() < 1e-43,
                "{x}"
            );
        }
    }

    #[test]
    fn a_whole_vocabulary_gets_the_same_choice_and_logprob_with_or_without_a_candidate_list() {
        // 49,152 logits (SmolLM2's vocabulary), spread like a model's, not a multiple of 8.
        let mut rng = SplitMix64::new(7);
        let logits: Vec<f32> = (0..49_151)
            .map(|_| (rng.next_f64() * 30.0 - 20.0) as f32)
            .collect();
        let candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        let (token, logprob) = greedy_over_logits(&logits);
        assert_eq!((token, logprob), greedy(&candidates).0);
        let max = logits[token as usize];
        assert!(logits.iter().all(|&l| l <= max));
        let exact = -logits
            .iter()
            .map(|&l| ((l - max) as f64).exp())
            .sum::<f64>()
            .ln();
        assert!(
            (logprob as f64 - exact).abs() < 1e-6,
            "{logprob} against {exact}"
        );
        // The alternatives report the chosen token with the same log-probability.
        let mut sampler = Sampler::new(&params(), logits.len());
        let choice = sampler.choose_from(&logits, None, 3).unwrap();
        assert_eq!((choice.token, choice.logprob), (token, logprob));
        assert_eq!(choice.top[0], (token, logprob));
    }

    #[test]
    fn the_plain_greedy_path_still_applies_the_penalty_and_observes_its_choice() {
        let mut sampler = Sampler::new(
            &SamplingParams {
                repetition_penalty: Some(2.0),
                ..params()
            },
            2,
        );
        let logits = [1.0, 0.9];
        assert_eq!(sampler.choose_from(&logits, None, 0).unwrap().token, 0);
        // Token 0 was seen: 1.0 / 2 < 0.9.
        assert_eq!(sampler.choose_from(&logits, None, 0).unwrap().token, 1);
        // Without a penalty, the path without a candidate list gives what `choose` gives.
        let mut plain = Sampler::new(&params(), 2);
        let mut reference = Sampler::new(&params(), 2);
        let choice = plain.choose_from(&logits, None, 0).unwrap();
        assert_eq!((choice.token, choice.logprob), reference.choose(&logits));
    }

    #[test]
    fn a_few_alternatives_in_one_pass_are_those_a_full_sort_ranks_first() {
        let mut rng = SplitMix64::new(5);
        // Coarse logits, so that many tie and the id decides.
        let candidates: Vec<(u32, f32)> = (0..3_000)
            .map(|i| (i, (rng.next_f64() * 40.0).floor() as f32))
            .collect();
        let mut sorted = candidates.clone();
        sorted.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for n in [1, 5, 20, FEW_ALTERNATIVES, FEW_ALTERNATIVES + 1, 3_000] {
            let denominator = Denominator::of(&candidates, |candidate| candidate.1, sorted[0].1);
            let top = ranked(&mut candidates.clone(), n, denominator);
            let ids: Vec<u32> = top.iter().map(|(id, _)| *id).collect();
            let expected: Vec<u32> = sorted[..n].iter().map(|(id, _)| *id).collect();
            assert_eq!(ids, expected, "{n}");
        }
    }

    #[test]
    fn ties_go_to_the_first_token_across_blocks_and_the_remainder() {
        // 8-lane blocks, then a remainder of 3: equal maxima in a later block, an earlier
        // block and the remainder; the earliest wins, as with the candidate list.
        let mut logits = vec![0.0f32; 19];
        for i in [17, 12, 5] {
            logits[i] = 3.0;
        }
        let candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        assert_eq!(greedy_over_logits(&logits).0, 5);
        assert_eq!(greedy_over_logits(&logits), greedy(&candidates).0);
        logits[5] = 0.0;
        logits[12] = 0.0;
        assert_eq!(greedy_over_logits(&logits).0, 17);
    }

    #[test]
    fn a_sampled_token_reports_the_logprob_its_alternative_entry_shows() {
        // Small vocabularies with log-probabilities near 0, where an f32 shows the smallest
        // difference in the softmax's denominator.
        let mut rng = SplitMix64::new(11);
        for round in 0..300 {
            let size = 2 + round % 30;
            let spread = [0.5, 2.0, 6.0][round % 3];
            let logits: Vec<f32> = (0..size)
                .map(|_| (rng.next_f64() * spread) as f32)
                .collect();
            let mut sampler = Sampler::new(
                &SamplingParams {
                    temperature: Some(1.3),
                    seed: Some(round as u64),
                    ..params()
                },
                size,
            );
            for _ in 0..10 {
                let choice = sampler.choose_from(&logits, None, size).unwrap();
                let entry = choice.top.iter().find(|(id, _)| *id == choice.token);
                assert_eq!(entry, Some(&(choice.token, choice.logprob)), "{logits:?}");
            }
        }
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let mut sampler = Sampler::new(
            &SamplingParams {
                repetition_penalty: Some(2.0),
                ..params()
            },
            3,
        );
        sampler.observe(0);
        // 3.0 / 2 = 1.5 < 2.0: the seen token loses.
        assert_eq!(sampler.choose(&[3.0, 2.0, -1.0]).0, 1);
        // Negative logits of seen tokens get more negative.
        let mut sampler = Sampler::new(
            &SamplingParams {
                repetition_penalty: Some(2.0),
                ..params()
            },
            3,
        );
        sampler.observe(2);
        assert_eq!(sampler.choose(&[-1.0, -3.0, -0.6]).0, 0);
    }

    #[test]
    fn same_seed_same_choices() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut sampler = Sampler::new(
                &SamplingParams {
                    do_sample: true,
                    seed: Some(seed),
                    ..params()
                },
                100,
            );
            (0..50)
                .map(|_| sampler.choose(&logits).0)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn top_k_one_is_greedy_even_when_sampling() {
        let mut sampler = Sampler::new(
            &SamplingParams {
                top_k: Some(1),
                seed: Some(7),
                ..params()
            },
            4,
        );
        for _ in 0..20 {
            assert_eq!(sampler.choose(&[0.5, 0.4, 0.6, 0.1]).0, 2);
        }
    }

    #[test]
    fn top_p_keeps_the_token_that_crosses_p() {
        // Probabilities about 0.5, 0.3, 0.2 (logits are their logs).
        let mut candidates = vec![(0, 0.5f32.ln()), (1, 0.3f32.ln()), (2, 0.2f32.ln())];
        top_p(&mut candidates, 0.6);
        let ids: Vec<u32> = candidates.iter().map(|c| c.0).collect();
        assert_eq!(ids, [0, 1]);
        let mut candidates = vec![(0, 0.5f32.ln()), (1, 0.3f32.ln()), (2, 0.2f32.ln())];
        top_p(&mut candidates, 0.4);
        assert_eq!(candidates.len(), 1);
    }

    #[test]
    fn top_p_over_a_large_vocabulary_matches_the_full_sort() {
        let logits: Vec<(u32, f32)> = (0..5000)
            .map(|i| (i, ((i * 7919) % 1000) as f32 / 100.0))
            .collect();
        let mut windowed = logits.clone();
        top_p(&mut windowed, 0.9);
        // Reference: full sort.
        let mut full = logits.clone();
        full.sort_by(|a, b| b.1.total_cmp(&a.1));
        let max = full[0].1;
        let total: f64 = full.iter().map(|c| ((c.1 - max) as f64).exp()).sum();
        let mut before = 0.0;
        let mut keep = full.len();
        for (i, c) in full.iter().enumerate() {
            if before >= 0.9 {
                keep = i;
                break;
            }
            before += ((c.1 - max) as f64).exp() / total;
        }
        assert_eq!(windowed.len(), keep);
    }

    #[test]
    fn typical_p_keeps_the_tokens_nearest_the_entropy() {
        // Entropy 1.33 nats: the arg-max (surprisal 0.92) is less typical than the others (1.61).
        let mut candidates = vec![
            (0, 0.4f32.ln()),
            (1, 0.2f32.ln()),
            (2, 0.2f32.ln()),
            (3, 0.2f32.ln()),
        ];
        typical_p(&mut candidates, 0.15);
        assert_eq!(candidates.len(), 1);
        assert_ne!(
            candidates[0].0, 0,
            "the typical token is not the arg-max here"
        );
    }

    #[test]
    fn a_mask_leaves_only_what_it_allows_and_alternatives_agree_with_the_choice() {
        let logits = [5.0, 1.0, 3.0, 2.0, 4.0];
        // Tokens 1, 2 and 3 allowed: 0 and 4 (the two likeliest) are not candidates.
        let mask = [0b01110u32];
        let mut sampler = Sampler::new(&params(), 5);
        let choice = sampler.choose_from(&logits, Some(&mask), 2).unwrap();
        assert_eq!(choice.token, 2);
        assert_eq!(choice.top.iter().map(|t| t.0).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(
            choice.top[0].1, choice.logprob,
            "the chosen token's own logprob"
        );
        let total: f64 = [1.0f64, 3.0, 2.0].iter().map(|l| (l - 3.0).exp()).sum();
        assert!((choice.logprob as f64 + total.ln()).abs() < 1e-5);
        // A mask that allows nothing is not a choice.
        assert!(sampler.choose_from(&logits, Some(&[0]), 0).is_none());
        // Without a mask: the same as `choose`, alternatives over the whole vocabulary.
        let mut free = Sampler::new(&params(), 5);
        let choice = free.choose_from(&logits, None, 3).unwrap();
        assert_eq!(choice.token, 0);
        assert_eq!(
            choice.top.iter().map(|t| t.0).collect::<Vec<_>>(),
            [0, 4, 2]
        );
        assert!(choice.top.windows(2).all(|w| w[0].1 >= w[1].1));
    }

    #[test]
    fn the_penalty_applies_within_a_mask_too() {
        let mut sampler = Sampler::new(
            &SamplingParams {
                repetition_penalty: Some(4.0),
                ..params()
            },
            3,
        );
        sampler.observe(1);
        // 3.0 / 4 < 1.0: the seen token loses to token 2 inside the mask.
        let choice = sampler
            .choose_from(&[9.0, 3.0, 1.0], Some(&[0b110]), 0)
            .unwrap();
        assert_eq!(choice.token, 2);
    }

    #[test]
    fn temperature_alone_switches_sampling_on() {
        // Greedy decoding would always take the arg-max (token 1); sampling at a temperature
        // also draws the runner-up, and reports the seed it drew with.
        let mut sampler = Sampler::new(
            &SamplingParams {
                temperature: Some(0.5),
                seed: Some(3),
                ..params()
            },
            2,
        );
        let drawn: Vec<u32> = (0..200).map(|_| sampler.choose(&[0.9, 1.0]).0).collect();
        assert!(drawn.contains(&0) && drawn.contains(&1), "{drawn:?}");
        assert_eq!(sampler.seed(), Some(3));
    }
}
