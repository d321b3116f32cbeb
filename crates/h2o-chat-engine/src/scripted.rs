//! A deterministic engine that plays a script instead of running a model.
//!
//! The server's conformance tests use it to inject faults (a failure after N tokens, slow
//! tokens) and the benchmarks use it to measure the server's own ceiling with no model cost.
//! It follows the same stopping rules as the real engine (length, EOS, stop strings).
//! Token counts are by UTF-8 byte: one byte, one token — a stand-in rule, documented so.
//! It takes every constraint and follows none (its script is its answer: a test scripts
//! what a constrained model would write), and reports the played token and one made-up
//! `<alt>` as the alternatives when asked.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc as channel, watch};

use h2o_chat_protocol::Token;

use crate::constraint::Constraint;
use crate::engine::{Engine, EngineInfo, EngineStats, Generation};
use crate::error::EngineError;
use crate::prompt::{ChatTurn, Prompt, chatml};
use crate::request::{Finish, GenerationEvent, GenerationFailure, GenerationRequest, Tokenized};
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
    /// When set, each token waits for a permit from the gate (tests drive the pace with
    /// events instead of timers).
    pub gate: Option<ScriptGate>,
}

/// Token permits for a scripted engine, and counters of generations started and ended that
/// a test can await.
#[derive(Clone)]
pub struct ScriptGate {
    permits: Arc<(Mutex<u64>, Condvar)>,
    started: Arc<watch::Sender<usize>>,
    ended: Arc<watch::Sender<usize>>,
}

impl std::fmt::Debug for ScriptGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptGate")
            .field("started", &*self.started.borrow())
            .field("ended", &*self.ended.borrow())
            .finish_non_exhaustive()
    }
}

impl Default for ScriptGate {
    fn default() -> Self {
        ScriptGate {
            permits: Arc::new((Mutex::new(0), Condvar::new())),
            started: Arc::new(watch::channel(0).0),
            ended: Arc::new(watch::channel(0).0),
        }
    }
}

impl ScriptGate {
    pub fn new() -> Self {
        ScriptGate::default()
    }

    /// Lets `tokens` more tokens through (shared by every generation).
    pub fn release(&self, tokens: u64) {
        let (permits, changed) = &*self.permits;
        let mut permits = permits.lock().unwrap_or_else(|e| e.into_inner());
        *permits = permits.saturating_add(tokens);
        changed.notify_all();
    }

    /// Generations that have started (their first token is waiting for a permit).
    pub fn started(&self) -> watch::Receiver<usize> {
        self.started.subscribe()
    }

    /// Generations whose thread has ended (finished, failed or cancelled).
    pub fn ended(&self) -> watch::Receiver<usize> {
        self.ended.subscribe()
    }

    /// Takes a permit; `false` when the reader went away while waiting.
    fn pass(&self, events: &channel::Sender<GenerationEvent>) -> bool {
        let (permits, changed) = &*self.permits;
        let mut permits = permits.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if events.is_closed() {
                return false;
            }
            if *permits > 0 {
                *permits -= 1;
                return true;
            }
            // Woken by `release`; the timeout only notices a reader that left.
            permits = changed
                .wait_timeout(permits, Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Default for Script {
    fn default() -> Self {
        Script {
            tokens: vec!["Hello".into(), "!".into()],
            endless: false,
            delay: Duration::ZERO,
            fail_after: None,
            capacity: 128,
            gate: None,
        }
    }
}

/// The scripted engine.
pub struct ScriptedEngine {
    script: Script,
    running: Arc<AtomicUsize>,
    /// Tokens played, for [`Engine::stats`].
    generated: Arc<AtomicU64>,
}

impl ScriptedEngine {
    pub fn new(script: Script) -> Self {
        ScriptedEngine {
            script,
            running: Default::default(),
            generated: Default::default(),
        }
    }
}

impl Engine for ScriptedEngine {
    fn info(&self) -> EngineInfo {
        EngineInfo {
            model_id: "scripted".into(),
            backend: "scripted (no model)".into(),
            compute_type: "cpu+scripted".into(),
            dtype: "none".into(),
            device: "cpu".into(),
            context_length: 8192,
            slots: self.script.capacity,
            batch_total_tokens: 8192 * self.script.capacity,
        }
    }

    /// Generations running and tokens played (each generation is its own "slot").
    fn stats(&self) -> Option<EngineStats> {
        Some(EngineStats {
            slots: self.script.capacity,
            busy_slots: self.running.load(Ordering::Acquire),
            generated_tokens: self.generated.load(Ordering::Acquire),
            ..EngineStats::default()
        })
    }

    /// ChatML, like SmolLM2's template, with no default system message.
    fn render_chat(&self, turns: &[ChatTurn]) -> Result<Prompt, EngineError> {
        Ok(chatml(turns))
    }

    /// One byte, one token (no ids: there is no vocabulary).
    fn tokenize(&self, prompt: &Prompt) -> Result<Tokenized, EngineError> {
        Ok(Tokenized::counted(prompt.len()))
    }

    fn check_constraint(&self, _constraint: &Constraint) -> Result<(), EngineError> {
        Ok(())
    }

    fn start(&self, request: GenerationRequest) -> Result<Generation, EngineError> {
        if self.running.fetch_add(1, Ordering::AcqRel) >= self.script.capacity {
            self.running.fetch_sub(1, Ordering::AcqRel);
            return Err(EngineError::Overloaded);
        }
        let (events, receiver) = channel::channel(64);
        let script = self.script.clone();
        let running = self.running.clone();
        let generated = self.generated.clone();
        std::thread::spawn(move || {
            if let Some(gate) = &script.gate {
                gate.started.send_modify(|n| *n += 1);
            }
            play(&script, &request, &events, &generated);
            running.fetch_sub(1, Ordering::AcqRel);
            if let Some(gate) = &script.gate {
                gate.ended.send_modify(|n| *n += 1);
            }
        });
        Ok(Generation { events: receiver })
    }
}

fn play(
    script: &Script,
    request: &GenerationRequest,
    events: &channel::Sender<GenerationEvent>,
    played: &AtomicU64,
) {
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
    if request.prompt_logprobs {
        // A token per byte of the prompt (how this engine counts them), the last kept.
        let text = request.prompt.text();
        let bytes = &text.as_bytes()[text.len() - input_tokens as usize..];
        let prefill = bytes
            .iter()
            .enumerate()
            .map(|(i, &byte)| Token {
                id: u32::from(byte),
                text: String::from_utf8_lossy(&[byte]).into_owned(),
                logprob: (i > 0).then_some(-1.5),
                special: false,
            })
            .collect();
        if events
            .blocking_send(GenerationEvent::Prefill(prefill))
            .is_err()
        {
            return;
        }
    }
    let mut index = 0usize;
    loop {
        if !script.delay.is_zero() {
            std::thread::sleep(script.delay);
        }
        if let Some(gate) = &script.gate
            && !gate.pass(events)
        {
            return;
        }
        if let Some((after, message)) = &script.fail_after
            && generated as usize >= *after
        {
            let _ = events.blocking_send(GenerationEvent::Failed(GenerationFailure::Generation(
                message.clone(),
            )));
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
        played.fetch_add(1, Ordering::AcqRel);
        let (out, is_eos) = match next {
            Some(piece) => {
                text.push_str(piece);
                (
                    Token {
                        id: 100 + index as u32,
                        text: piece.clone(),
                        logprob: Some(-0.25),
                        special: false,
                    },
                    false,
                )
            }
            None => (
                Token {
                    id: SCRIPTED_EOS_ID,
                    text: "<|im_end|>".into(),
                    logprob: Some(-0.01),
                    special: true,
                },
                true,
            ),
        };
        if request.top_tokens > 0 {
            let alternative = Token {
                id: 1,
                text: "<alt>".into(),
                logprob: Some(-3.0),
                special: false,
            };
            let mut top = vec![out.clone(), alternative];
            top.truncate(usize::from(request.top_tokens));
            if events
                .blocking_send(GenerationEvent::Alternatives(top))
                .is_err()
            {
                return;
            }
        }
        // EOS always finishes: the criteria answer `length` or `eos_token` for it.
        if let Some(reason) = criteria.check(generated, is_eos, &text) {
            let finish = Finish {
                reason,
                generated_tokens: generated,
                seed,
                generated_text: text,
                input_tokens,
                cached_tokens: 0,
            };
            let _ = events.blocking_send(GenerationEvent::Finished(out, finish));
            return;
        }
        if events.blocking_send(GenerationEvent::Token(out)).is_err() {
            return;
        }
    }
}
