//! One request on a slot: its prompt (evaluated in chunks), TGI's sampling and stopping
//! state, the incremental text, and the events it owes its reader.
//!
//! A reader that stops reading must not stall the batch. Events go out with `try_send`;
//! the last [`RESERVED`] places of the channel are kept for the ending (the final or failure
//! event, and the alternatives before it), so when a token does not fit the sequence
//! *pauses* — it leaves the batch, holding its events — and the scheduler gives it up after
//! the stall timeout with a failure event that still fits.
//!
//! A constrained sequence carries its [`Grammar`]: the mask of what may come next is taken
//! before each token is chosen, and the grammar moves past the token chosen.

use std::time::{Duration, Instant};

use h2o_chat_engine::detokenize::TextAssembler;
use h2o_chat_engine::stopping::StoppingCriteria;
use h2o_chat_engine::{
    Choice, Finish, GenerationEvent, GenerationFailure, GenerationRequest, Sampler, Token,
};
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;

use crate::grammar::Grammar;
use h2o_chat_engine::tool_call::Translator;

/// Places of a reader's channel kept for a sequence's ending: the prompt's scores (when a
/// one-token answer ends at once), its last token's alternatives and its final (or failure)
/// event.
pub(crate) const RESERVED: usize = 3;

/// Where a sequence stands after a token.
pub(crate) enum Progress {
    /// It goes on: `next` is decoded in the next step.
    Continue,
    /// It ended (finished, failed or its reader left): the slot is free. The last events, if
    /// any, are sent with [`Sequence::deliver`] once the scheduler has freed the slot, so a
    /// reader that sees the end also sees the engine's counters after it.
    Ended(Vec<GenerationEvent>),
}

impl Progress {
    fn failed(failure: GenerationFailure) -> Self {
        Progress::Ended(vec![GenerationEvent::Failed(failure)])
    }
}

/// What a constrained request's answer goes through.
pub(crate) struct Constrained {
    /// What the answer must follow.
    pub grammar: Option<Grammar>,
    /// For tool calls in the model's own syntax: their translation into the shared format.
    pub translator: Option<Translator>,
}

pub(crate) struct Sequence {
    events: Sender<GenerationEvent>,
    /// The prompt, after truncation.
    pub prompt: Vec<LlamaToken>,
    /// Prompt tokens whose K/V are in the slot (reused + evaluated so far).
    pub prefilled: usize,
    /// Prompt tokens reused from the slot's cache.
    pub reused: usize,
    sampler: Sampler,
    criteria: StoppingCriteria,
    assembler: TextAssembler,
    text: String,
    generated: u32,
    /// The last sampled token, not yet decoded.
    pub next: Option<LlamaToken>,
    /// What the answer must follow.
    grammar: Option<Grammar>,
    /// Rewrites tool calls in the model's own syntax into the shared format as they are
    /// sampled (`h2o_chat_engine::tool_call`); the text reported is the rewritten one.
    translator: Option<Translator>,
    /// Alternatives reported with each token.
    top_tokens: usize,
    /// The prompt's tokens scored so far, when the request asked for them; sent before the
    /// first token.
    prefill: Option<Vec<Token>>,
    /// Events that did not fit the reader's channel (sent together, in order).
    pending: Vec<GenerationEvent>,
    paused_since: Option<Instant>,
    /// When the request arrived (admission order = prefill order).
    pub arrived: Instant,
}

impl Sequence {
    pub fn new(
        request: &GenerationRequest,
        prompt: Vec<LlamaToken>,
        reused: usize,
        n_vocab: usize,
        events: Sender<GenerationEvent>,
        arrived: Instant,
        Constrained {
            grammar,
            translator,
        }: Constrained,
    ) -> Self {
        let mut sampler = Sampler::new(&request.sampling, n_vocab);
        // TGI's repetition penalty looks at every distinct prompt token.
        for token in &prompt {
            sampler.observe(token.0 as u32);
        }
        Sequence {
            events,
            prefilled: reused,
            reused,
            prompt,
            sampler,
            criteria: StoppingCriteria::new(request.max_new_tokens, request.stop.clone()),
            assembler: TextAssembler::default(),
            text: String::new(),
            generated: 0,
            next: None,
            grammar,
            translator,
            top_tokens: usize::from(request.top_tokens),
            prefill: None,
            pending: Vec::new(),
            paused_since: None,
            arrived,
        }
    }

    /// Scores every prompt token (the request asked for it): the prompt is evaluated
    /// whole, with logits at every position. The first token has nothing before it.
    pub fn score_prompt(&mut self, model: &LlamaModel) {
        let first = self.prompt.first().map(|&token| Token {
            id: token.0 as u32,
            text: piece(model, token),
            logprob: None,
            special: is_special(model, token),
        });
        self.prefill = Some(first.into_iter().collect());
    }

    /// Whether the prompt's tokens are being scored.
    pub fn scores_prompt(&self) -> bool {
        self.prefill.is_some()
    }

    /// The logits at prompt position `position` score the prompt token that follows it.
    pub fn score_next_prompt_token(&mut self, model: &LlamaModel, position: usize, logits: &[f32]) {
        let (Some(prefill), Some(&token)) = (self.prefill.as_mut(), self.prompt.get(position + 1))
        else {
            return;
        };
        prefill.push(Token {
            id: token.0 as u32,
            text: piece(model, token),
            logprob: log_softmax_at(logits, token.0 as usize),
            special: is_special(model, token),
        });
    }

    pub fn is_prefilling(&self) -> bool {
        self.prefilled < self.prompt.len()
    }

    /// Generating, with its next token ready and its reader keeping up.
    pub fn wants_decode(&self) -> bool {
        !self.is_prefilling() && self.next.is_some() && self.pending.is_empty()
    }

    pub fn reader_left(&self) -> bool {
        self.events.is_closed()
    }

    /// Chooses the next token from `logits`, checks TGI's stopping rules in order, and sends
    /// the token's event (or holds it when the reader is behind).
    pub fn advance(&mut self, model: &LlamaModel, logits: &[f32]) -> Progress {
        let vocab = model.vocab();
        let mask = match self.grammar.as_mut().map(Grammar::mask) {
            None => None,
            Some(Ok(mask)) => Some(mask),
            Some(Err(err)) => {
                return Progress::failed(GenerationFailure::Generation(format!(
                    "the grammar cannot go on: {err}"
                )));
            }
        };
        let Some(Choice {
            token: id,
            logprob,
            top,
        }) = self
            .sampler
            .choose_from(logits, mask.as_deref(), self.top_tokens)
        else {
            return Progress::failed(GenerationFailure::Generation(
                "the grammar allows no token here".into(),
            ));
        };
        if let Some(Err(err)) = self.grammar.as_mut().map(|g| g.advance(id)) {
            return Progress::failed(GenerationFailure::Generation(format!(
                "the grammar cannot go on: {err}"
            )));
        }
        let alternatives = (!top.is_empty()).then(|| {
            GenerationEvent::Alternatives(
                top.into_iter()
                    .map(|(id, logprob)| alternative(model, id, logprob))
                    .collect(),
            )
        });
        let token = LlamaToken(id as i32);
        self.generated += 1;
        let is_eos = vocab.is_eog(token);
        let is_control = vocab.is_control(token);
        // A control token that is part of a call's frame (Mistral's `[TOOL_CALLS]`) is text
        // to the translator.
        let framing = self.translator.is_some() && !is_eos && is_control;
        let special = !framing && (is_eos || is_control);
        let text = if special {
            String::from_utf8_lossy(&vocab.token_to_piece(token, true, None)).into_owned()
        } else {
            let piece = if framing {
                String::from_utf8_lossy(&vocab.token_to_piece(token, true, None)).into_owned()
            } else {
                self.assembler
                    .push(&vocab.token_to_piece(token, false, None))
            };
            let piece = match &mut self.translator {
                Some(translator) => translator.push(&piece),
                None => piece,
            };
            self.text.push_str(&piece);
            piece
        };
        let mut out = Token {
            id,
            text,
            logprob: logprob.is_finite().then_some(logprob),
            special,
        };
        if let Some(reason) = self.criteria.check(self.generated, is_eos, &self.text) {
            let mut rest = self.assembler.finish();
            if let Some(translator) = &mut self.translator {
                rest = translator.push(&rest);
                rest.push_str(&translator.finish());
            }
            if !special {
                out.text.push_str(&rest);
            } else if !rest.is_empty() && self.translator.is_some() {
                // Words the translator held (they began like a call) end with the end of
                // sequence: they go out as the last token's text, or a stream would lose
                // them.
                out.text = rest.clone();
                out.special = false;
            }
            self.text.push_str(&rest);
            let finish = Finish {
                reason,
                generated_tokens: self.generated,
                seed: self.sampler.seed(),
                generated_text: std::mem::take(&mut self.text),
                input_tokens: self.prompt.len() as u32,
                cached_tokens: self.reused as u32,
            };
            let mut last: Vec<GenerationEvent> = self
                .prefill
                .take()
                .map(GenerationEvent::Prefill)
                .into_iter()
                .collect();
            last.extend(alternatives);
            last.push(GenerationEvent::Finished(out, finish));
            return Progress::Ended(last);
        }
        self.next = Some(token);
        let mut events: Vec<GenerationEvent> = self
            .prefill
            .take()
            .map(GenerationEvent::Prefill)
            .into_iter()
            .collect();
        events.extend(alternatives);
        events.push(GenerationEvent::Token(out));
        self.pending = events;
        self.flush(Instant::now())
    }

    /// Sends the pending events together if they fit beside the reserved places; else the
    /// sequence pauses, holding them.
    fn flush(&mut self, now: Instant) -> Progress {
        if self.events.is_closed() {
            return Progress::Ended(Vec::new());
        }
        if self.events.capacity() < self.pending.len() + RESERVED {
            self.paused_since.get_or_insert(now);
            return Progress::Continue;
        }
        for event in self.pending.drain(..) {
            // The room was checked and only this thread sends: `Full` cannot happen.
            if let Err(TrySendError::Closed(_)) = self.events.try_send(event) {
                return Progress::Ended(Vec::new());
            }
        }
        self.paused_since = None;
        Progress::Continue
    }

    /// For a paused sequence: delivers the held events if the reader made room, or gives up
    /// after `stall_timeout`.
    pub fn resume(&mut self, stall_timeout: Duration, now: Instant) -> Progress {
        if self.pending.is_empty() {
            return Progress::Continue;
        }
        let progress = self.flush(now);
        if !self.pending.is_empty() && matches!(progress, Progress::Continue) {
            let paused = self.paused_since.map_or(Duration::ZERO, |t| now - t);
            if paused >= stall_timeout {
                tracing::warn!(
                    paused_ms = paused.as_millis(),
                    "a reader stopped reading; its generation is given up"
                );
                return Progress::failed(GenerationFailure::Stalled { waited: paused });
            }
        }
        progress
    }

    pub fn is_paused(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Sends the last events. The channel's reserved places always take them.
    pub fn deliver(self, events: Vec<GenerationEvent>) {
        for event in events {
            let _ = self.events.try_send(event);
        }
    }
}

/// A prompt token's text alone, special tokens by name.
fn piece(model: &LlamaModel, token: LlamaToken) -> String {
    String::from_utf8_lossy(&model.vocab().token_to_piece(token, true, None)).into_owned()
}

fn is_special(model: &LlamaModel, token: LlamaToken) -> bool {
    let vocab = model.vocab();
    vocab.is_eog(token) || vocab.is_control(token)
}

/// `logits[index]`'s log-probability under the softmax of `logits` (no warper: the model's
/// own distribution, as TGI scores a prompt), or `None` when it is not a finite number.
fn log_softmax_at(logits: &[f32], index: usize) -> Option<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let logprob = f64::from(*logits.get(index)? - max) - sum.ln();
    let logprob = logprob as f32;
    logprob.is_finite().then_some(logprob)
}

/// An alternative token: its text alone (special tokens by name), its log-probability.
fn alternative(model: &LlamaModel, id: u32, logprob: f32) -> Token {
    let vocab = model.vocab();
    let token = LlamaToken(id as i32);
    let special = vocab.is_eog(token) || vocab.is_control(token);
    Token {
        id,
        text: String::from_utf8_lossy(&vocab.token_to_piece(token, special, None)).into_owned(),
        logprob: logprob.is_finite().then_some(logprob),
        special,
    }
}
