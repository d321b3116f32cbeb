//! One generation, from a [`Plan`] to its steps — for every front.
//!
//! Fronts only translate: their wire into a plan, and the [`Step`]s of a [`Run`] back into
//! their wire. Everything else happens here, once: the input rules, preparing the prompt
//! ([`crate::prepare`]), the length rules, the concurrency permit
//! (`max_concurrent_requests`), starting the engine, keep-alive ticks while nothing arrives,
//! the shutdown deadline, time-to-first-token and inter-token metrics, and every way a
//! generation can fail, as one [`Failure`].
//!
//! What a front must do at a run's end — chat-ui stores the turn — is an [`Observer`] of
//! the run: it sees every step and exactly one [`End`], whichever way the run ends (a
//! final event, a failure, stop-generating, or a client that leaves).
//!
//! The run owns the engine's receiver: when the client disconnects, hyper drops the body,
//! the run goes with it, and the engine frees the sequence at its next step.

use std::sync::Arc;
use std::time::{Duration, Instant};

use h2o_chat_engine::{Engine, Finish, GenerationEvent, GenerationRequest, Token};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::failure::Failure;
use crate::metrics::Metrics;
use crate::plan::Plan;
use crate::prepare::{Prepared, prepare};
use crate::shutdown::Shutdown;
use crate::validation::{Budget, check_input, check_lengths};

/// A finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// The last token (special for EOS).
    pub token: Token,
    pub finish: Finish,
}

/// What a run produces, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing arrived for the keep-alive interval.
    KeepAlive,
    Token(Token),
    /// The last step of a good run.
    Finished(Finished),
    /// The last step of a failed run.
    Failed(Failure),
    /// The last step of a run that was asked to stop (chat-ui's stop-generating): the
    /// answer ends where it is, with no final event.
    Aborted,
}

/// How a run ended, as its [`Observer`] hears it.
#[derive(Debug)]
pub enum End<'a> {
    Finished(&'a Finished),
    Failed(&'a Failure),
    /// Stopped on request.
    Aborted,
    /// Dropped before its end: the client left.
    Abandoned,
}

/// What an observer must finish at a run's end (chat-ui storing the answer).
pub type Settle = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Failure>> + Send>>;

/// Watches a run: each token as it is produced, then exactly one [`End`].
pub trait Observer: Send {
    fn token(&mut self, _token: &Token) {}
    /// The run's end. What it returns is awaited before the last step reaches the client,
    /// and when it fails the client gets that failure instead of the last step: a write
    /// that fails is never a silent success. For a run its client left, it is finished in
    /// the background.
    fn end(&mut self, end: End<'_>) -> Option<Settle>;
}

/// A running generation. See the module docs.
pub struct Run {
    events: mpsc::Receiver<GenerationEvent>,
    _permit: OwnedSemaphorePermit,
    prepared: Prepared,
    engine: Arc<dyn Engine>,
    keep_alive: Duration,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
    started: Instant,
    last_token: Option<Instant>,
    peeked: Option<Step>,
    /// The alternatives of the last token step.
    alternatives: Vec<Token>,
    /// The prompt's scored tokens, when the plan asked for them.
    prefill: Vec<Token>,
    done: bool,
    abort: Option<CancellationToken>,
    observer: Option<Box<dyn Observer>>,
}

/// Checks, prepares and starts a plan on `engine`, under the concurrency limit.
pub async fn start(
    state: &AppState,
    engine: &Arc<dyn Engine>,
    plan: Plan,
    started: Instant,
) -> Result<Run, Failure> {
    let limits = state.config().limits;
    check_input(&plan, &limits)?;
    ready(engine).await?;
    let context = engine.info().context_length;
    let budget = Budget::of(&plan, &limits, context);
    let Plan {
        input,
        sampling,
        max_new_tokens,
        stop,
        truncate,
        cache_hint,
        cache_scope,
        constraint,
        top_tokens,
        prompt_logprobs,
    } = plan;
    let cache_scope = if state.config().shared_prompt_cache {
        h2o_chat_engine::CacheScope::anonymous()
    } else {
        cache_scope
    };
    let prepared = prepare(
        engine,
        state.validation_workers(),
        input,
        budget,
        truncate,
        constraint.clone(),
    )
    .await?;
    let max_new_tokens = check_lengths(prepared.tokens.count, max_new_tokens, &limits, context)?;
    let permit = state
        .permits()
        .clone()
        .try_acquire_owned()
        .map_err(|_| Failure::Overloaded)?;
    if state.shutdown().is_draining() {
        return Err(Failure::ShuttingDown);
    }
    let generation = engine.start(GenerationRequest {
        prompt: prepared.prompt.clone(),
        tokens: Some(prepared.tokens.clone()),
        sampling,
        max_new_tokens,
        stop,
        truncate,
        cache_hint,
        cache_scope,
        constraint,
        top_tokens,
        prompt_logprobs,
    })?;
    Ok(Run {
        events: generation.events,
        _permit: permit,
        prepared,
        engine: engine.clone(),
        keep_alive: state.config().timeouts.sse_keep_alive,
        shutdown: state.shutdown().clone(),
        metrics: state.metrics().clone(),
        started,
        last_token: None,
        peeked: None,
        alternatives: Vec::new(),
        prefill: Vec::new(),
        done: false,
        abort: None,
        observer: None,
    })
}

/// Waits, off the runtime and before any permit is taken, until the engine's model is in
/// memory (a model on demand loads on its first request): requests for other models are
/// prepared meanwhile, and the model's own limits are known when the budget is computed.
async fn ready(engine: &Arc<dyn Engine>) -> Result<(), Failure> {
    if engine.is_loaded() {
        return Ok(());
    }
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || engine.load())
        .await
        .map_err(|join| Failure::Unavailable(format!("loading the model failed: {join}")))?
        .map_err(Failure::from)
}

/// The prompt tokens a plan comes to on `engine` (rendered, tokenised, its window fitted),
/// without generating: Anthropic's `count_tokens`.
pub async fn count_tokens(
    state: &AppState,
    engine: &Arc<dyn Engine>,
    plan: Plan,
) -> Result<usize, Failure> {
    let limits = state.config().limits;
    check_input(&plan, &limits)?;
    ready(engine).await?;
    let budget = Budget::of(&plan, &limits, engine.info().context_length);
    let prepared = prepare(
        engine,
        state.validation_workers(),
        plan.input,
        budget,
        plan.truncate,
        plan.constraint,
    )
    .await?;
    Ok(prepared.tokens.count)
}

impl Run {
    /// Lets `observer` watch the rest of the run.
    pub fn observe(&mut self, observer: Box<dyn Observer>) {
        self.observer = Some(observer);
    }

    /// Ends the run with [`Step::Aborted`] when `abort` is cancelled.
    pub fn abort_on(&mut self, abort: CancellationToken) {
        self.abort = Some(abort);
    }

    /// What was prepared for the engine (the prompt, its tokens, the history window).
    pub fn prepared(&self) -> &Prepared {
        &self.prepared
    }

    /// The prompt as the model saw it, for TGI's `return_full_text`: a truncated prompt is
    /// echoed as its kept tokens, never as the megabytes a client may send.
    /// An engine without a tokenizer cannot say what it kept: nothing is echoed then.
    pub fn echo(&self) -> String {
        let prepared = &self.prepared;
        if !prepared.truncated {
            return prepared.prompt.text();
        }
        prepared
            .tokens
            .ids
            .as_ref()
            .and_then(|ids| self.engine.detokenize(ids))
            .unwrap_or_default()
    }

    /// The next step; `None` after the last one.
    pub async fn next(&mut self) -> Option<Step> {
        if let Some(step) = self.peeked.take() {
            return Some(step);
        }
        if self.done {
            return None;
        }
        let step = self.receive().await;
        Some(self.tell(step).await)
    }

    async fn receive(&mut self) -> Step {
        let abort = self.abort.clone();
        let aborted = async {
            match &abort {
                Some(token) => token.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(aborted);
        let received = loop {
            let received = tokio::select! {
                biased;
                () = self.shutdown.deadline_passed() => {
                    self.done = true;
                    return Step::Failed(Failure::ShuttingDown);
                }
                () = &mut aborted => {
                    self.done = true;
                    return Step::Aborted;
                }
                received = tokio::time::timeout(self.keep_alive, self.events.recv()) => received,
            };
            match received {
                // They belong to the token that follows at once.
                Ok(Some(GenerationEvent::Alternatives(top))) => self.alternatives = top,
                // Before the first token: kept for the answer's details.
                Ok(Some(GenerationEvent::Prefill(tokens))) => self.prefill = tokens,
                Ok(Some(GenerationEvent::Token(_) | GenerationEvent::Finished(..))) => {
                    break received;
                }
                other => {
                    self.alternatives.clear();
                    break other;
                }
            }
        };
        match received {
            Err(_) => Step::KeepAlive,
            Ok(Some(GenerationEvent::Token(token))) => {
                self.record_token();
                Step::Token(token)
            }
            Ok(Some(GenerationEvent::Finished(token, finish))) => {
                self.record_token();
                self.done = true;
                Step::Finished(Finished { token, finish })
            }
            Ok(Some(GenerationEvent::Failed(failure))) => {
                self.done = true;
                Step::Failed(failure.into())
            }
            Ok(None) => {
                self.done = true;
                Step::Failed(Failure::Incomplete)
            }
            Ok(Some(GenerationEvent::Alternatives(_) | GenerationEvent::Prefill(_))) => {
                Step::KeepAlive
            }
        }
    }

    /// The likeliest tokens at the position of the last [`Step::Token`] or
    /// [`Step::Finished`] (its own included), when the plan asked for them.
    pub fn alternatives(&self) -> &[Token] {
        &self.alternatives
    }

    /// Tells the observer about a step as it is produced; at the end, waits for what the
    /// observer must finish, whose failure replaces the step (a failed run keeps its own).
    async fn tell(&mut self, step: Step) -> Step {
        let Some(observer) = self.observer.as_mut() else {
            return step;
        };
        let settle = match &step {
            Step::KeepAlive => return step,
            Step::Token(token) => {
                observer.token(token);
                return step;
            }
            Step::Finished(finished) => observer.end(End::Finished(finished)),
            Step::Failed(failure) => observer.end(End::Failed(failure)),
            Step::Aborted => observer.end(End::Aborted),
        };
        self.observer = None;
        match settle {
            Some(settle) => match (settle.await, step) {
                (Err(failure), Step::Finished(_) | Step::Aborted) => Step::Failed(failure),
                (_, step) => step,
            },
            None => step,
        }
    }

    /// Waits for the first step (at most a keep-alive interval) and keeps it for
    /// [`Run::next`]. Streaming fronts look at it before committing to `200`, so a relayed
    /// upstream's error status is answered as that status (§a.4 step 9: chat-ui relays TGI's
    /// status unchanged).
    pub async fn peek(&mut self) -> Option<&Step> {
        if self.peeked.is_none() {
            self.peeked = self.next().await;
        }
        self.peeked.as_ref()
    }

    /// Reads the run to its end (the non-stream replies).
    pub async fn collect(mut self) -> Result<Collected, Failure> {
        let mut tokens = Vec::new();
        let mut alternatives = Vec::new();
        while let Some(step) = self.next().await {
            match step {
                Step::KeepAlive => {}
                Step::Token(token) => {
                    tokens.push(token);
                    alternatives.push(std::mem::take(&mut self.alternatives));
                }
                Step::Finished(finished) => {
                    tokens.push(finished.token.clone());
                    alternatives.push(std::mem::take(&mut self.alternatives));
                    let echo = self.echo();
                    return Ok(Collected {
                        finished,
                        tokens,
                        alternatives,
                        prefill: std::mem::take(&mut self.prefill),
                        echo,
                    });
                }
                Step::Failed(failure) => return Err(failure),
                Step::Aborted => break,
            }
        }
        Err(Failure::Incomplete)
    }

    fn record_token(&mut self) {
        let now = Instant::now();
        match self.last_token {
            None => self.metrics.observe_first_token(now - self.started),
            Some(last) => self.metrics.observe_inter_token(now - last),
        }
        self.last_token = Some(now);
    }
}

impl Drop for Run {
    /// A run dropped before its end was left by its client: what its observer must finish
    /// goes on in the background (a failure is counted where it happens: nobody is left to
    /// tell).
    fn drop(&mut self) {
        if let Some(mut observer) = self.observer.take()
            && let Some(settle) = observer.end(End::Abandoned)
        {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(settle);
                }
                Err(_) => tracing::error!("a run ended outside a runtime; its end is lost"),
            }
        }
    }
}

/// A run read to its end.
#[derive(Debug, Clone)]
pub struct Collected {
    pub finished: Finished,
    /// Every token, the last included.
    pub tokens: Vec<Token>,
    /// Each token's alternatives (empty lists when none were asked for).
    pub alternatives: Vec<Vec<Token>>,
    /// The prompt's tokens with their log-probabilities (empty when not asked for).
    pub prefill: Vec<Token>,
    /// The prompt as the model saw it ([`Run::echo`]).
    pub echo: String,
}

impl Collected {
    /// The non-special text, as a token stream would have shown it.
    pub fn text(&self) -> String {
        self.tokens
            .iter()
            .filter(|t| !t.special)
            .map(|t| t.text.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use h2o_chat_engine::{ChatTurn, SamplingParams, Script, ScriptGate, ScriptedEngine};

    use super::*;
    use crate::plan::{Input, MaxNewTokens};
    use crate::validation::ValidationError;
    use crate::{ModelRegistry, Server, ServerConfig};

    fn state(script: Script, config: ServerConfig) -> (AppState, Arc<dyn Engine>) {
        let engine: Arc<dyn Engine> = Arc::new(ScriptedEngine::new(script));
        let server = Server::new(config, ModelRegistry::with_h2o_stand_ins(engine.clone()));
        (server.state().clone(), engine)
    }

    fn plan(input: Input) -> Plan {
        Plan {
            input,
            sampling: SamplingParams::default(),
            max_new_tokens: MaxNewTokens::given(20),
            stop: Vec::new(),
            truncate: None,
            cache_hint: None,
            cache_scope: h2o_chat_engine::CacheScope::anonymous(),
            constraint: None,
            top_tokens: 0,
            prompt_logprobs: false,
        }
    }

    async fn reach_ended(gate: &ScriptGate, n: usize) {
        let mut ended = gate.ended();
        ended.wait_for(|&value| value >= n).await.unwrap();
    }

    fn chat(text: &str) -> Plan {
        plan(Input::Chat(vec![ChatTurn::new("user", text)]))
    }

    /// What an observer heard: tokens, then ends.
    #[derive(Clone, Default)]
    struct Heard(Arc<Mutex<Vec<String>>>);

    impl Observer for Heard {
        fn token(&mut self, token: &Token) {
            self.0.lock().unwrap().push(token.text.clone());
        }
        fn end(&mut self, end: End<'_>) -> Option<Settle> {
            let what = match end {
                End::Finished(_) => "finished",
                End::Failed(_) => "failed",
                End::Aborted => "aborted",
                End::Abandoned => "abandoned",
            };
            self.0.lock().unwrap().push(format!("<{what}>"));
            None
        }
    }

    impl Heard {
        fn all(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    #[tokio::test]
    async fn a_run_yields_its_tokens_then_one_end_to_its_observer() {
        let (state, engine) = state(Script::default(), ServerConfig::default());
        let mut run = start(&state, &engine, chat("Hi"), Instant::now())
            .await
            .unwrap();
        let heard = Heard::default();
        run.observe(Box::new(heard.clone()));
        let collected = run.collect().await.unwrap();
        assert_eq!(collected.text(), "Hello!");
        assert_eq!(heard.all(), ["Hello", "!", "<finished>"]);
    }

    #[tokio::test]
    async fn an_aborted_run_ends_where_it_is_and_a_dropped_one_is_abandoned() {
        let gate = ScriptGate::new();
        let script = Script {
            tokens: vec!["tok".into()],
            endless: true,
            gate: Some(gate.clone()),
            ..Script::default()
        };
        let (state, engine) = state(script, ServerConfig::default());
        let abort = CancellationToken::new();
        let mut run = start(&state, &engine, chat("Count."), Instant::now())
            .await
            .unwrap();
        let heard = Heard::default();
        run.observe(Box::new(heard.clone()));
        run.abort_on(abort.clone());
        gate.release(1);
        assert!(matches!(run.next().await, Some(Step::Token(_))));
        abort.cancel();
        assert_eq!(run.next().await, Some(Step::Aborted));
        assert_eq!(run.next().await, None);
        assert_eq!(heard.all(), ["tok", "<aborted>"]);
        // Its engine sequence ends with it (else it would take the next permit).
        drop(run);
        reach_ended(&gate, 1).await;

        let mut run = start(&state, &engine, chat("Count."), Instant::now())
            .await
            .unwrap();
        let heard = Heard::default();
        run.observe(Box::new(heard.clone()));
        gate.release(1);
        assert!(matches!(run.next().await, Some(Step::Token(_))));
        drop(run);
        assert_eq!(heard.all(), ["tok", "<abandoned>"]);
    }

    #[tokio::test]
    async fn a_failure_mid_answer_is_the_last_step() {
        let script = Script {
            fail_after: Some((1, "boom".into())),
            ..Script::default()
        };
        let (state, engine) = state(script, ServerConfig::default());
        let mut run = start(&state, &engine, chat("Hi"), Instant::now())
            .await
            .unwrap();
        let heard = Heard::default();
        run.observe(Box::new(heard.clone()));
        assert!(matches!(run.next().await, Some(Step::Token(_))));
        assert_eq!(
            run.next().await,
            Some(Step::Failed(Failure::Generation("boom".into())))
        );
        assert_eq!(heard.all(), ["Hello", "<failed>"]);
    }

    #[tokio::test]
    async fn the_permit_bounds_runs_and_the_rules_come_first() {
        let config = ServerConfig {
            limits: crate::Limits {
                max_concurrent_requests: 1,
                ..crate::Limits::default()
            },
            ..ServerConfig::default()
        };
        let (state, engine) = state(Script::default(), config);
        let first = start(&state, &engine, chat("Hi"), Instant::now())
            .await
            .unwrap();
        let refused = start(&state, &engine, chat("Hi"), Instant::now()).await;
        assert_eq!(refused.err(), Some(Failure::Overloaded));
        // A request the rules refuse is refused for that, even when the server is full.
        let empty = start(
            &state,
            &engine,
            plan(Input::Raw(String::new())),
            Instant::now(),
        );
        assert_eq!(
            empty.await.err(),
            Some(Failure::Invalid(ValidationError::EmptyInputs))
        );
        drop(first);
        assert!(
            start(&state, &engine, chat("Hi"), Instant::now())
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn the_echo_is_the_prompt_unless_truncation_dropped_part_of_it() {
        let (state, engine) = state(Script::default(), ServerConfig::default());
        let run = start(
            &state,
            &engine,
            plan(Input::Raw("0123456789".into())),
            Instant::now(),
        )
        .await
        .unwrap();
        assert_eq!(run.echo(), "0123456789");
        let mut truncated = plan(Input::Raw("0123456789".into()));
        truncated.truncate = Some(4);
        let run = start(&state, &engine, truncated, Instant::now())
            .await
            .unwrap();
        // The scripted engine has no tokenizer: it cannot say which text it kept.
        assert_eq!(run.echo(), "");
        assert_eq!(run.prepared().tokens.count, 4);
    }

    #[tokio::test]
    async fn a_draining_server_starts_nothing() {
        let (state, engine) = state(Script::default(), ServerConfig::default());
        state.shutdown().begin(Duration::from_secs(10));
        let refused = start(&state, &engine, chat("Hi"), Instant::now()).await;
        assert_eq!(refused.err(), Some(Failure::ShuttingDown));
    }
}
