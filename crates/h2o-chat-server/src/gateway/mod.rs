//! The gateway: one front door (every route family this server speaks) in front of many
//! upstreams — text-generation-inference, vLLM's or llama.cpp's OpenAI-compatible servers,
//! chat-ui deployments, more `h2o-chat serve`.
//!
//! - **Balancing**: among the available upstreams (healthy, not cooling down, below their
//!   in-flight cap), the one with the fewest requests in flight per unit of weight; with more
//!   than two, the better of two chosen at random (power of two choices).
//! - **Affinity**: requests with the same hint — a chat-ui conversation id, an OpenAI
//!   `user` — go to the upstream that served the last one while it is available, so its prompt
//!   cache is reused there.
//! - **Health**: an active check every few seconds ([`Pool::spawn_health_checks`]); passive:
//!   an unreachable upstream, a 5xx or a 429 puts it in cooldown (its `Retry-After`, else
//!   1 s doubling per failure in a row, at most a minute). Recovered upstreams come back on
//!   their own.
//! - **Failover** only before the first token reaches the client — the provider library's
//!   own retry rule. After that a failure is the client's error event or error chunk, never a
//!   spliced answer. A chat-ui upstream's conversation is deleted however the attempt ends.
//!
//! ```no_run
//! use h2o_chat_server::gateway::{Pool, UpstreamKind, UpstreamSpec};
//! use h2o_chat_server::{ModelRegistry, Server, ServerConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = Pool::new(vec![
//!     UpstreamSpec::new(UpstreamKind::Tgi, "http://gpu-a:8080"),
//!     UpstreamSpec::new(UpstreamKind::OpenAi, "http://gpu-b:8000"),
//! ])?;
//! pool.spawn_health_checks();
//! let server = Server::new(ServerConfig::default(), ModelRegistry::gateway(pool));
//! server.bind("127.0.0.1:8080").await?.wait().await?;
//! # Ok(()) }
//! ```

mod spec;
mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use h2o_chat_engine::{
    ChatTurn, Cleanup, Engine, EngineError, EngineInfo, Failure, Generation, GenerationEvent,
    GenerationRequest, Health, Prompt, Tokenized, chatml,
};
use prometheus::core::Collector;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use tokio::sync::mpsc;

pub use spec::{SpecError, UpstreamKind, UpstreamSpec};
pub use upstream::Upstream;

use crate::relay::{EVENT_BUFFER, estimate_tokens, relay};
use upstream::{InFlight, Relay};

/// Hints remembered for affinity; the least recently used is forgotten beyond.
const AFFINITY_CAP: usize = 10_000;
/// Up to this many candidates, the least loaded is found exactly; beyond, the better of two
/// random ones (power of two choices: near-best at constant cost, no herd on one upstream).
const FEW: usize = 4;

/// How the gateway waits on upstreams.
#[derive(Debug, Clone, Copy)]
pub struct GatewayTimeouts {
    /// From sending a request to its first token; past it, the next upstream is tried.
    pub first_token: Duration,
    /// Between active health checks.
    pub check_interval: Duration,
    /// One active check.
    pub check_timeout: Duration,
}

impl Default for GatewayTimeouts {
    fn default() -> Self {
        GatewayTimeouts {
            first_token: Duration::from_secs(60),
            check_interval: Duration::from_secs(5),
            check_timeout: Duration::from_secs(5),
        }
    }
}

/// Per-upstream metrics, registered by the server's `/metrics`.
pub(crate) struct PoolMetrics {
    pub requests: IntCounterVec,
    pub errors: IntCounterVec,
    pub cooldowns: IntCounterVec,
    pub failovers: IntCounterVec,
    pub first_token: HistogramVec,
}

fn must<T>(result: prometheus::Result<T>) -> T {
    result.unwrap_or_else(|err| panic!("invalid metric definition: {err}"))
}

impl PoolMetrics {
    fn new() -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            must(IntCounterVec::new(Opts::new(name, help), labels))
        };
        PoolMetrics {
            requests: counter(
                "h2o_chat_upstream_requests_total",
                "Requests sent to each upstream.",
                &["upstream"],
            ),
            errors: counter(
                "h2o_chat_upstream_errors_total",
                "Failed requests per upstream, by when they failed.",
                &["upstream", "stage"],
            ),
            cooldowns: counter(
                "h2o_chat_upstream_cooldowns_total",
                "Times an upstream was put in cooldown.",
                &["upstream"],
            ),
            failovers: counter(
                "h2o_chat_upstream_failovers_total",
                "Requests moved to another upstream before their first token.",
                &["from"],
            ),
            first_token: must(HistogramVec::new(
                HistogramOpts::new(
                    "h2o_chat_upstream_first_token_seconds",
                    "From sending a request to an upstream to its first token.",
                )
                .buckets(vec![
                    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ]),
                &["upstream"],
            )),
        }
    }
}

/// The upstreams and what the gateway remembers about them.
pub struct Pool {
    upstreams: Vec<Upstream>,
    affinity: Mutex<Affinity>,
    timeouts: GatewayTimeouts,
    pub(crate) metrics: PoolMetrics,
}

/// Hint → upstream, least recently used forgotten first.
#[derive(Default)]
struct Affinity {
    clock: u64,
    map: HashMap<String, (usize, u64)>,
}

impl Affinity {
    fn get(&mut self, hint: &str) -> Option<usize> {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.map.get_mut(hint)?;
        entry.1 = clock;
        Some(entry.0)
    }

    fn set(&mut self, hint: &str, upstream: usize) {
        self.clock += 1;
        if !self.map.contains_key(hint)
            && self.map.len() >= AFFINITY_CAP
            && let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
        {
            self.map.remove(&oldest);
        }
        self.map.insert(hint.to_string(), (upstream, self.clock));
    }
}

/// A small random number (for the power of two choices).
fn random(below: usize) -> usize {
    (uuid::Uuid::new_v4().as_u128() % below.max(1) as u128) as usize
}

impl Pool {
    /// A pool of these upstreams, with the default timeouts.
    pub fn new(specs: Vec<UpstreamSpec>) -> Result<Arc<Pool>, EngineError> {
        Pool::with_timeouts(specs, GatewayTimeouts::default())
    }

    pub fn with_timeouts(
        specs: Vec<UpstreamSpec>,
        timeouts: GatewayTimeouts,
    ) -> Result<Arc<Pool>, EngineError> {
        if specs.is_empty() {
            return Err(EngineError::Load {
                path: "upstreams".into(),
                detail: "no upstream given".into(),
            });
        }
        let upstreams = specs
            .into_iter()
            .enumerate()
            .map(|(index, spec)| Upstream::new(index, spec))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(Pool {
            upstreams,
            affinity: Mutex::new(Affinity::default()),
            timeouts,
            metrics: PoolMetrics::new(),
        }))
    }

    pub fn upstreams(&self) -> &[Upstream] {
        &self.upstreams
    }

    /// Whether any upstream can take a request now.
    pub fn any_available(&self) -> bool {
        let now = Instant::now();
        self.upstreams
            .iter()
            .any(|u| u.is_healthy() && u.cooling_until(now).is_none())
    }

    /// Checks every upstream once, now.
    pub async fn check_all(&self, http: &reqwest::Client) {
        let checks = self.upstreams.iter().map(|upstream| async move {
            let mut request = http
                .get(upstream.check_url())
                .timeout(self.timeouts.check_timeout);
            if let Some(key) = &upstream.spec.api_key {
                request = request.bearer_auth(key);
            }
            let healthy = matches!(request.send().await, Ok(r) if r.status().is_success());
            if !healthy && upstream.is_healthy() {
                tracing::warn!(upstream = %upstream.name, "upstream failed its health check");
            }
            if healthy && !upstream.is_healthy() {
                tracing::info!(upstream = %upstream.name, "upstream is healthy again");
            }
            upstream.checked(healthy);
        });
        futures_util::future::join_all(checks).await;
    }

    /// Checks every upstream every few seconds, for as long as the pool lives.
    pub fn spawn_health_checks(self: &Arc<Self>) {
        let pool: Weak<Pool> = Arc::downgrade(self);
        let interval = self.timeouts.check_interval;
        let http = reqwest::Client::builder()
            .connect_timeout(self.timeouts.check_timeout)
            .build()
            .unwrap_or_default();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                pool.check_all(&http).await;
            }
        });
    }

    /// The upstream for a request, with the request counted in its load: affinity first,
    /// then the least loaded (the better of two random ones among many). `tried` are
    /// skipped. Choosing and counting happen under one lock, so concurrent requests see each
    /// other's load.
    fn pick(&self, hint: Option<&str>, tried: &[usize]) -> Option<(&Upstream, InFlight<'_>)> {
        let now = Instant::now();
        let candidates: Vec<&Upstream> = self
            .upstreams
            .iter()
            .filter(|u| !tried.contains(&u.index) && u.is_available(now))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let mut affinity = self.affinity.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hint) = hint
            && let Some(index) = affinity.get(hint)
            && let Some(upstream) = candidates.iter().find(|u| u.index == index)
            && let Some(claim) = upstream.claim()
        {
            return Some((upstream, claim));
        }
        let chosen = if candidates.len() <= FEW {
            // The least loaded; among equals, one at random, so that requests one after
            // another still visit every upstream.
            let least = candidates
                .iter()
                .map(|u| u.load())
                .fold(f64::INFINITY, f64::min);
            let equals: Vec<&Upstream> = candidates
                .iter()
                .filter(|u| u.load() <= least)
                .copied()
                .collect();
            equals[random(equals.len())]
        } else {
            let first = random(candidates.len());
            let mut second = random(candidates.len() - 1);
            if second >= first {
                second += 1;
            }
            let (a, b) = (candidates[first], candidates[second]);
            if b.load() < a.load() { b } else { a }
        };
        let claim = chosen.claim()?;
        if let Some(hint) = hint {
            affinity.set(hint, chosen.index);
        }
        Some((chosen, claim))
    }

    /// The soonest an upstream leaves its cooldown (for `Retry-After` when none is free).
    fn soonest_available(&self) -> Option<Duration> {
        let now = Instant::now();
        self.upstreams
            .iter()
            .filter_map(|u| u.cooling_until(now))
            .min()
            .map(|until| until - now)
    }

    /// Marks a failure of `upstream` before any token.
    fn failed_before_first_token(&self, upstream: &Upstream, retry_after: Option<Duration>) {
        let wait = upstream.failed(retry_after);
        self.metrics
            .errors
            .with_label_values(&[upstream.name.as_str(), "before_first_token"])
            .inc();
        self.metrics
            .cooldowns
            .with_label_values(&[upstream.name.as_str()])
            .inc();
        tracing::warn!(upstream = %upstream.name, cooldown_ms = wait.as_millis(), "upstream failed; trying another");
    }

    /// Runs one request: tries upstreams until one sends a first token (or refuses in a way
    /// another would too), then forwards the rest.
    async fn run(
        self: Arc<Self>,
        model: String,
        request: GenerationRequest,
        sender: mpsc::Sender<GenerationEvent>,
    ) {
        let hint = request.cache_hint.clone();
        let mut tried: Vec<usize> = Vec::new();
        let mut last_failure: Option<Failure> = None;
        loop {
            let Some((upstream, _in_flight)) = self.pick(hint.as_deref(), &tried) else {
                let failure = last_failure.unwrap_or(Failure::Upstream {
                    status: 503,
                    retry_after: self.soonest_available(),
                    message: "no upstream is available".into(),
                });
                relay(&sender, GenerationEvent::Failed(failure)).await;
                return;
            };
            tried.push(upstream.index);
            let name = upstream.name.as_str();
            self.metrics.requests.with_label_values(&[name]).inc();
            let started = Instant::now();
            let mut events = upstream.start(&model, &request);
            let first = tokio::select! {
                first = tokio::time::timeout(self.timeouts.first_token, events.recv()) => first,
                () = sender.closed() => return,
            };
            let first = match first {
                Err(_) => {
                    // Stalled before its first token: give it up (a chat-ui upstream's
                    // conversation is deleted as the relay's receiver drops) and move on.
                    drop(events);
                    self.failed_before_first_token(upstream, None);
                    self.metrics.failovers.with_label_values(&[name]).inc();
                    last_failure = Some(Failure::Upstream {
                        status: 504,
                        retry_after: None,
                        message: format!(
                            "{name} sent no token within {:?}",
                            self.timeouts.first_token
                        ),
                    });
                    continue;
                }
                Ok(None) => {
                    self.failed_before_first_token(upstream, None);
                    self.metrics.failovers.with_label_values(&[name]).inc();
                    continue;
                }
                Ok(Some(GenerationEvent::Failed(Failure::Upstream {
                    status,
                    retry_after,
                    message,
                }))) if status == 429 || status >= 500 => {
                    self.failed_before_first_token(upstream, retry_after);
                    self.metrics.failovers.with_label_values(&[name]).inc();
                    last_failure = Some(Failure::Upstream {
                        status,
                        retry_after,
                        message,
                    });
                    continue;
                }
                Ok(Some(event)) => event,
            };
            // The client's answer comes from this upstream now; no more failover.
            if !matches!(first, GenerationEvent::Failed(_)) {
                upstream.succeeded();
                self.metrics
                    .first_token
                    .with_label_values(&[name])
                    .observe(started.elapsed().as_secs_f64());
            }
            let mut event = first;
            loop {
                if let GenerationEvent::Failed(failure) = &event {
                    self.metrics
                        .errors
                        .with_label_values(&[name, "after_first_token"])
                        .inc();
                    if matches!(failure, Failure::Generation(_)) {
                        // A broken stream says something about the upstream too.
                        upstream.failed(None);
                        self.metrics.cooldowns.with_label_values(&[name]).inc();
                    }
                }
                let last = !matches!(event, GenerationEvent::Token(_));
                if !relay(&sender, event).await || last {
                    return;
                }
                event = tokio::select! {
                    next = events.recv() => match next {
                        Some(event) => event,
                        None => GenerationEvent::Failed(Failure::Generation(
                            "the upstream relay ended without a final event".into(),
                        )),
                    },
                    () = sender.closed() => return,
                };
            }
        }
    }
}

/// The gateway as the engine of one served model id: every request goes to the pool.
pub struct Gateway {
    pool: Arc<Pool>,
    model: String,
}

impl Gateway {
    pub fn new(pool: Arc<Pool>, model: impl Into<String>) -> Self {
        Gateway {
            pool,
            model: model.into(),
        }
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }
}

impl Engine for Gateway {
    fn info(&self) -> EngineInfo {
        EngineInfo {
            model_id: self.model.clone(),
            backend: format!(
                "gateway to {} upstream(s): {}",
                self.pool.upstreams.len(),
                self.pool
                    .upstreams
                    .iter()
                    .map(|u| u.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            source: "upstreams".into(),
            context_length: 0,
            slots: self
                .pool
                .upstreams
                .iter()
                .map(|u| u.spec.max_in_flight)
                .sum(),
            batch_total_tokens: 0,
        }
    }

    fn health(&self) -> Health {
        if self.pool.any_available() {
            Health::Ready
        } else {
            Health::Failed("no upstream is healthy".into())
        }
    }

    /// ChatML text (what a TGI upstream gets), with the messages kept for upstreams that
    /// take messages (OpenAI) or format them themselves (chat-ui).
    fn render_chat(&self, turns: &[ChatTurn]) -> Result<Prompt, EngineError> {
        Ok(chatml(turns))
    }

    fn tokenize(&self, prompt: &Prompt) -> Result<Tokenized, EngineError> {
        Ok(Tokenized::counted(estimate_tokens(&prompt.text())))
    }

    fn start(&self, request: GenerationRequest) -> Result<Generation, EngineError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| EngineError::Stopped("the gateway needs a tokio runtime".into()))?;
        let (sender, events) = mpsc::channel(EVENT_BUFFER);
        runtime.spawn(self.pool.clone().run(self.model.clone(), request, sender));
        Ok(Generation { events })
    }

    fn pending_cleanup(&self) -> Option<Cleanup> {
        let pool = self.pool.clone();
        Some(Box::pin(async move {
            for upstream in &pool.upstreams {
                if let Relay::H2o(relay) = &upstream.relay {
                    relay.cleanup().await;
                }
            }
        }))
    }
}

/// Reads the upstreams' load and health at scrape time.
pub(crate) struct PoolCollector {
    pool: Arc<Pool>,
    descs: Vec<prometheus::core::Desc>,
}

impl PoolCollector {
    pub(crate) fn new(pool: Arc<Pool>) -> Self {
        let descs = [
            (
                "h2o_chat_upstream_in_flight",
                "Requests in flight per upstream.",
            ),
            (
                "h2o_chat_upstream_healthy",
                "1 when the upstream can take requests.",
            ),
        ]
        .iter()
        .filter_map(|(name, help)| {
            prometheus::core::Desc::new(
                (*name).into(),
                (*help).into(),
                vec!["upstream".into()],
                Default::default(),
            )
            .ok()
        })
        .collect();
        PoolCollector { pool, descs }
    }
}

impl Collector for PoolCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let gauge = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["upstream"]);
        let (Ok(in_flight), Ok(healthy)) = (
            gauge(
                "h2o_chat_upstream_in_flight",
                "Requests in flight per upstream.",
            ),
            gauge(
                "h2o_chat_upstream_healthy",
                "1 when the upstream can take requests.",
            ),
        ) else {
            return Vec::new();
        };
        let now = Instant::now();
        for upstream in &self.pool.upstreams {
            let labels = [upstream.name.as_str()];
            in_flight
                .with_label_values(&labels)
                .set(upstream.in_flight() as i64);
            healthy.with_label_values(&labels).set(i64::from(
                upstream.is_healthy() && upstream.cooling_until(now).is_none(),
            ));
        }
        let mut families = in_flight.collect();
        families.extend(healthy.collect());
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Arc<Pool> {
        Pool::new(
            (0..n)
                .map(|i| {
                    UpstreamSpec::new(UpstreamKind::Tgi, format!("http://127.0.0.1:{}", 9000 + i))
                })
                .collect(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn the_least_loaded_upstream_is_chosen() {
        let pool = pool(2);
        let _busy = pool.upstreams[0].claim().unwrap();
        assert_eq!(pool.pick(None, &[]).unwrap().0.index, 1);
    }

    #[tokio::test]
    async fn a_hint_sticks_to_its_upstream_while_it_is_available() {
        let pool = pool(3);
        let first = pool.pick(Some("conversation"), &[]).unwrap().0.index;
        // Its own load does not move it…
        let _load: Vec<_> = (0..5)
            .map(|_| pool.upstreams[first].claim().unwrap())
            .collect();
        assert_eq!(pool.pick(Some("conversation"), &[]).unwrap().0.index, first);
        // …a cooldown does.
        pool.upstreams[first].failed(Some(Duration::from_secs(30)));
        assert_ne!(pool.pick(Some("conversation"), &[]).unwrap().0.index, first);
    }

    #[tokio::test]
    async fn cooldowns_honour_retry_after_and_grow_without_it() {
        let pool = pool(1);
        let upstream = &pool.upstreams[0];
        assert_eq!(
            upstream.failed(Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(upstream.failed(None), Duration::from_secs(2));
        assert_eq!(upstream.failed(None), Duration::from_secs(4));
        assert!(pool.pick(None, &[]).is_none());
        assert!(pool.soonest_available().is_some());
        upstream.checked(false);
        upstream.checked(true);
        assert!(
            pool.pick(None, &[]).is_some(),
            "a recovered upstream comes back"
        );
    }

    #[tokio::test]
    async fn the_in_flight_cap_is_respected() {
        let mut spec = UpstreamSpec::new(UpstreamKind::Tgi, "http://127.0.0.1:9000");
        spec.max_in_flight = 1;
        let pool = Pool::new(vec![spec]).unwrap();
        let _one = pool.upstreams[0].claim().unwrap();
        assert!(pool.upstreams[0].claim().is_none());
        assert!(pool.pick(None, &[]).is_none());
    }
}
