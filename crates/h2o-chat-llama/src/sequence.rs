//! One request on a slot: its prompt (evaluated in chunks), TGI's sampling and stopping
//! state, the incremental text, and the events it owes its reader.
//!
//! A reader that stops reading must not stall the batch. Events go out with `try_send`;
//! the last place of the channel is kept for the final (or failure) event, so when a token
//! does not fit the sequence *pauses* — it leaves the batch, holding that one event — and
//! the scheduler gives it up after the stall timeout with a failure event that still fits.

use std::time::{Duration, Instant};

use h2o_chat_engine::detokenize::TextAssembler;
use h2o_chat_engine::stopping::StoppingCriteria;
use h2o_chat_engine::{
    Finish, GenerationEvent, GenerationFailure, GenerationRequest, Sampler, Token,
};
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;

/// Where a sequence stands after a token.
pub(crate) enum Progress {
    /// It goes on: `next` is decoded in the next step.
    Continue,
    /// It ended (finished, failed or its reader left): the slot is free. The last event, if
    /// any, is sent with [`Sequence::deliver`] once the scheduler has freed the slot, so a
    /// reader that sees the end also sees the engine's counters after it.
    Ended(Option<GenerationEvent>),
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
    /// An event that did not fit the reader's channel.
    pending: Option<GenerationEvent>,
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
            pending: None,
            paused_since: None,
            arrived,
        }
    }

    pub fn is_prefilling(&self) -> bool {
        self.prefilled < self.prompt.len()
    }

    /// Generating, with its next token ready and its reader keeping up.
    pub fn wants_decode(&self) -> bool {
        !self.is_prefilling() && self.next.is_some() && self.pending.is_none()
    }

    pub fn reader_left(&self) -> bool {
        self.events.is_closed()
    }

    /// Chooses the next token from `logits`, checks TGI's stopping rules in order, and sends
    /// the token's event (or holds it when the reader is behind).
    pub fn advance(&mut self, model: &LlamaModel, logits: &[f32]) -> Progress {
        let vocab = model.vocab();
        let (id, logprob) = self.sampler.choose(logits);
        let token = LlamaToken(id as i32);
        self.generated += 1;
        let is_eos = vocab.is_eog(token);
        let special = is_eos || vocab.is_control(token);
        let text = if special {
            String::from_utf8_lossy(&vocab.token_to_piece(token, true, None)).into_owned()
        } else {
            let piece = self
                .assembler
                .push(&vocab.token_to_piece(token, false, None));
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
            let rest = self.assembler.finish();
            if !special {
                out.text.push_str(&rest);
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
            return Progress::Ended(Some(GenerationEvent::Finished(out, finish)));
        }
        self.next = Some(token);
        self.send(GenerationEvent::Token(out))
    }

    /// Sends a token event, keeping the channel's last place for the final one.
    fn send(&mut self, event: GenerationEvent) -> Progress {
        if self.events.capacity() < 2 {
            if self.events.is_closed() {
                return Progress::Ended(None);
            }
            self.pending = Some(event);
            self.paused_since = Some(Instant::now());
            return Progress::Continue;
        }
        match self.events.try_send(event) {
            Ok(()) => Progress::Continue,
            Err(TrySendError::Closed(_)) => Progress::Ended(None),
            Err(TrySendError::Full(event)) => {
                self.pending = Some(event);
                self.paused_since = Some(Instant::now());
                Progress::Continue
            }
        }
    }

    /// For a paused sequence: delivers the held event if the reader made room, or gives up
    /// after `stall_timeout`.
    pub fn resume(&mut self, stall_timeout: Duration, now: Instant) -> Progress {
        let Some(event) = self.pending.take() else {
            return Progress::Continue;
        };
        if self.events.is_closed() {
            return Progress::Ended(None);
        }
        let event = if self.events.capacity() >= 2 {
            match self.events.try_send(event) {
                Ok(()) => {
                    self.paused_since = None;
                    return Progress::Continue;
                }
                Err(TrySendError::Closed(_)) => return Progress::Ended(None),
                Err(TrySendError::Full(event)) => event,
            }
        } else {
            event
        };
        let paused = self.paused_since.map_or(Duration::ZERO, |t| now - t);
        if paused >= stall_timeout {
            tracing::warn!(
                paused_ms = paused.as_millis(),
                "a reader stopped reading; its generation is given up"
            );
            return Progress::Ended(Some(GenerationEvent::Failed(GenerationFailure::Stalled {
                waited: paused,
            })));
        }
        self.pending = Some(event);
        Progress::Continue
    }

    pub fn is_paused(&self) -> bool {
        self.pending.is_some()
    }

    /// Sends the last event. The channel's reserved place always takes it.
    pub fn deliver(self, event: GenerationEvent) {
        let _ = self.events.try_send(event);
    }
}
