//! A deterministic engine that plays a script instead of running a model.
//!
//! The server's conformance tests use it to inject faults (a failure after N tokens, slow
//! tokens) and the benchmarks use it to measure the server's own ceiling with no model cost.
//! It follows the same stopping rules as the real engine (length, EOS, stop strings).
//! Token counts are by UTF-8 byte: one byte, one token — a stand-in rule, documented so.

use std::time::Duration;

use tokio::sync::mpsc as channel;

use crate::engine::{ChatTurn, Engine, EngineInfo, Generation};
use crate::error::EngineError;
use crate::request::{Finish, GenerationEvent, GenerationRequest, TokenOut};
use crate::stopping::StoppingCriteria;

/// The id of the scripted end-of-sequence token.
pub const SCRIPTED_EOS_ID: u32 = 2;

/// What the scripted engine does.
#[derive(Debug, Clone)]
pub struct Script {
    /// The answer, one token per item; EOS follows the last one.
    pub tokens: Vec<String>,
    /// Repeat the tokens until `max_new_tokens` instead of ending with EOS.
    pub endless: bool,
    /// Pause before each token.
    pub delay: Duration,
    /// Fail with this message after this many tokens.
    pub fail_after: Option<(usize, String)>,
    /// Generations that may wait; more are `overloaded`.
    pub capacity: usize,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            tokens: vec!["Hello".into(), "!".into()],
            endless: false,
            delay: Duration::ZERO,
            fail_after: None,
            capacity: 128,
        }
    }
}

/// The scripted engine.
pub struct ScriptedEngine {
    script: Script,
    running: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl ScriptedEngine {
    pub fn new(script: Script) -> Self {
        ScriptedEngine {
            script,
            running: Default::default(),
        }
    }
}

impl Engine for ScriptedEngine {
    fn info(&self) -> EngineInfo {
        EngineInfo {
            model_id: "scripted".into(),
            backend: "scripted (no model)".into(),
            source: "script".into(),
            context_length: 8192,
        }
    }

    /// ChatML, like SmolLM2's template, with no default system message.
    fn render_chat(&self, turns: &[ChatTurn]) -> Result<String, EngineError> {
        Ok(crate::engine::chatml(turns))
    }

    fn count_tokens(&self, text: &str) -> Result<usize, EngineError> {
        Ok(text.len())
    }

    fn start(&self, request: GenerationRequest) -> Result<Generation, EngineError> {
        use std::sync::atomic::Ordering;
        if self.running.fetch_add(1, Ordering::AcqRel) >= self.script.capacity {
            self.running.fetch_sub(1, Ordering::AcqRel);
            return Err(EngineError::Overloaded);
        }
        let (events, receiver) = channel::channel(64);
        let script = self.script.clone();
        let running = self.running.clone();
        std::thread::spawn(move || {
            play(&script, &request, &events);
            running.fetch_sub(1, Ordering::AcqRel);
        });
        Ok(Generation { events: receiver })
    }
}

fn play(script: &Script, request: &GenerationRequest, events: &channel::Sender<GenerationEvent>) {
    let criteria = StoppingCriteria::new(request.max_new_tokens, request.stop.clone());
    let mut text = String::new();
    let mut generated = 0u32;
    let input_tokens = request
        .truncate
        .map_or(request.prompt.len(), |t| request.prompt.len().min(t))
        as u32;
    let seed = request
        .sampling
        .is_sampling()
        .then(|| request.sampling.seed.unwrap_or(0));
    let mut index = 0usize;
    loop {
        if !script.delay.is_zero() {
            std::thread::sleep(script.delay);
        }
        if let Some((after, message)) = &script.fail_after
            && generated as usize >= *after
        {
            let _ = events.blocking_send(GenerationEvent::Failed(message.clone()));
            return;
        }
        let next = if script.tokens.is_empty() {
            None
        } else if script.endless {
            Some(&script.tokens[index % script.tokens.len()])
        } else {
            script.tokens.get(index)
        };
        index += 1;
        generated += 1;
        let (out, is_eos) = match next {
            Some(piece) => {
                text.push_str(piece);
                (
                    TokenOut {
                        id: 100 + index as u32,
                        text: piece.clone(),
                        logprob: -0.25,
                        special: false,
                    },
                    false,
                )
            }
            None => (
                TokenOut {
                    id: SCRIPTED_EOS_ID,
                    text: "<|im_end|>".into(),
                    logprob: -0.01,
                    special: true,
                },
                true,
            ),
        };
        // EOS always finishes: the criteria answer `length` or `eos_token` for it.
        if let Some(reason) = criteria.check(generated, is_eos, &text) {
            let finish = Finish {
                reason,
                generated_tokens: generated,
                seed,
                generated_text: text,
                input_tokens,
            };
            let _ = events.blocking_send(GenerationEvent::Finished(out, finish));
            return;
        }
        if events.blocking_send(GenerationEvent::Token(out)).is_err() {
            return;
        }
    }
}
