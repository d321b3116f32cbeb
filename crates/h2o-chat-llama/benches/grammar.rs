//! What a grammar costs per token (BENCHMARKS.md): the time to compute the mask of allowed
//! tokens over SmolLM2's 49,152-token vocabulary, for a typical JSON schema (a person) and
//! a large one (60 properties, nested objects, arrays and enums), and the time to compile
//! each — new to the server, and found among the compiled ones.
//!
//! Each walk takes an allowed token at random (seeded) at every step until the grammar is
//! complete or 300 tokens are written, timing each mask; 20 walks per schema.
//!
//! `cargo bench -p h2o-chat-llama --bench grammar`

use std::time::Instant;

use h2o_chat_engine::Constraint;
use h2o_chat_engine::sampling::SplitMix64;
use h2o_chat_llama::{LlamaConfig, LlamaEngine};
use serde_json::{Value, json};

const WALKS: usize = 20;
const MAX_TOKENS: usize = 300;

fn typical() -> Value {
    json!({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "email": {"type": "string", "maxLength": 60},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 5}},
        "required": ["name", "age"], "additionalProperties": false})
}

fn large() -> Value {
    let mut properties = serde_json::Map::new();
    for i in 0..60 {
        let schema = match i % 6 {
            0 => json!({"type": "string", "maxLength": 30}),
            1 => json!({"type": "integer", "minimum": -1000, "maximum": 1000}),
            2 => json!({"enum": ["alpha", "beta", "gamma", "delta", "epsilon"]}),
            3 => {
                json!({"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}, "maxItems": 4})
            }
            4 => json!({"type": "object", "properties": {
                "street": {"type": "string", "maxLength": 30},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["zip"], "additionalProperties": false}),
            _ => json!({"type": "boolean"}),
        };
        properties.insert(format!("field_{i:02}"), schema);
    }
    let required: Vec<String> = (0..60)
        .step_by(3)
        .map(|i| format!("field_{i:02}"))
        .collect();
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let gguf = h2o_chat_test_support::model::local_gguf();
    let mut config = LlamaConfig::new(gguf, "HuggingFaceTB/SmolLM2-135M-Instruct");
    config.slots = 1;
    let engine = LlamaEngine::load(config).expect("the model loads");
    let grammars = engine.grammars();
    println!(
        "grammar bench: SmolLM2-135M-Instruct's vocabulary, {WALKS} random walks per schema, nproc {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for (name, schema) in [
        ("typical (person, 4 fields)", typical()),
        ("large (60 fields)", large()),
    ] {
        let constraint = Constraint::JsonSchema(schema.clone());
        let bytes = schema.to_string().len();
        let started = Instant::now();
        grammars.compile(&constraint).expect("compiles");
        let new_ms = started.elapsed().as_secs_f64() * 1000.0;
        let started = Instant::now();
        grammars.compile(&constraint).expect("compiles");
        let known_ms = started.elapsed().as_secs_f64() * 1000.0;
        let mut masks = Vec::new();
        let mut rng = SplitMix64::new(7);
        let mut lengths = Vec::new();
        for _ in 0..WALKS {
            let mut grammar = grammars.compile(&constraint).expect("compiles");
            let mut written = 0;
            while written < MAX_TOKENS && !grammar.is_done() {
                let started = Instant::now();
                let mask = grammar.mask().expect("a mask");
                masks.push(started.elapsed().as_secs_f64() * 1e6);
                let allowed: Vec<u32> = mask
                    .iter()
                    .enumerate()
                    .flat_map(|(word, bits)| {
                        (0..32)
                            .filter(move |b| bits & (1 << b) != 0)
                            .map(move |b| (word * 32 + b) as u32)
                    })
                    .collect();
                let token = allowed[(rng.next_u64() % allowed.len() as u64) as usize];
                if grammar.advance(token).is_err() {
                    break;
                }
                written += 1;
            }
            lengths.push(written);
        }
        masks.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{name}: {bytes} bytes; compile new {new_ms:.1} ms, known {known_ms:.2} ms; mask per token median {:.0} µs, p99 {:.0} µs, max {:.0} µs over {} masks (walks of {}–{} tokens)",
            percentile(&masks, 0.5),
            percentile(&masks, 0.99),
            masks[masks.len() - 1],
            masks.len(),
            lengths.iter().min().unwrap_or(&0),
            lengths.iter().max().unwrap_or(&0),
        );
    }
}
