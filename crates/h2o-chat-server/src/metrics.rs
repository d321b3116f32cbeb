//! Prometheus metrics (`GET /metrics`), through the `prometheus` crate.
//!
//! - `h2o_chat_requests_total{route,status}`: every answered request, by matched route.
//! - `h2o_chat_time_to_first_token_seconds`, `h2o_chat_inter_token_latency_seconds`:
//!   histograms, measured where every route's tokens pass (the pipeline).
//! - `h2o_chat_conversations`, `h2o_chat_conversations_limit`, `h2o_chat_sessions`: what the
//!   store holds and may hold; `h2o_chat_conversations_refused_total{reason}` (a session's
//!   cap, the server's, the store); `h2o_chat_store_failures_total{operation}`: store
//!   operations that failed (each answered to its client as an error).
//! - `h2o_chat_connections` (open), `h2o_chat_connections_refused_total`,
//!   `h2o_chat_connections_evicted_total`.
//! - Per model engine, read at scrape time: `h2o_chat_slots`, `h2o_chat_slots_busy`,
//!   `h2o_chat_queue_depth`, `h2o_chat_prompt_tokens_evaluated_total`,
//!   `h2o_chat_prompt_tokens_cached_total`, `h2o_chat_generated_tokens_total`,
//!   `h2o_chat_batches_total`, `h2o_chat_prefill_first_steps_total`, `h2o_chat_engine_ready`,
//!   `h2o_chat_model_loaded`.
//!
//! - Anything else registered with [`Metrics::register`]: a gateway's per-upstream figures
//!   (`h2o-chat-gateway`).
//!
//! Each server has its own registry, so several servers in one process (tests, the
//! gateway) never mix their figures.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use h2o_chat_engine::{Engine, Health};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::AppState;

/// Latency buckets, in seconds: from a warm token (~10 ms) to a long queue.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The server's metrics. Cheap to share.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    first_token: Histogram,
    inter_token: Histogram,
    pub(crate) connections: IntGauge,
    pub(crate) connections_refused: IntCounter,
    pub(crate) connections_evicted: IntCounter,
    pub(crate) conversations: IntGauge,
    pub(crate) sessions: IntGauge,
    pub(crate) store_failures: IntCounterVec,
    pub(crate) conversations_refused: IntCounterVec,
}

fn must<T>(result: prometheus::Result<T>) -> T {
    // The names and labels below are constants that are valid; a failure here is a bug.
    result.unwrap_or_else(|err| panic!("invalid metric definition: {err}"))
}

impl Metrics {
    /// Metrics for a server whose models are served by `engines` (named by model id), and
    /// which stores at most `max_conversations` conversations.
    pub fn new(engines: Vec<(String, Arc<dyn Engine>)>, max_conversations: usize) -> Self {
        let registry = Registry::new();
        let requests = must(IntCounterVec::new(
            Opts::new(
                "h2o_chat_requests_total",
                "Requests answered, by route and status.",
            ),
            &["route", "status"],
        ));
        let first_token = must(Histogram::with_opts(
            HistogramOpts::new(
                "h2o_chat_time_to_first_token_seconds",
                "From the request's arrival to its first generated token.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        ));
        let inter_token = must(Histogram::with_opts(
            HistogramOpts::new(
                "h2o_chat_inter_token_latency_seconds",
                "Between two generated tokens of one request.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        ));
        let connections = must(IntGauge::new("h2o_chat_connections", "Open connections."));
        let connections_refused = must(IntCounter::new(
            "h2o_chat_connections_refused_total",
            "Connections refused at the connection cap (503).",
        ));
        let connections_evicted = must(IntCounter::new(
            "h2o_chat_connections_evicted_total",
            "Idle connections closed to make room at the connection cap.",
        ));
        let conversations = must(IntGauge::new(
            "h2o_chat_conversations",
            "Conversations the server holds.",
        ));
        let sessions = must(IntGauge::new(
            "h2o_chat_sessions",
            "Sessions the server remembers.",
        ));
        let conversations_limit = must(IntGauge::new(
            "h2o_chat_conversations_limit",
            "Conversations the server stores at most (creating more is refused with 429).",
        ));
        conversations_limit.set(i64::try_from(max_conversations).unwrap_or(i64::MAX));
        let conversations_refused = must(IntCounterVec::new(
            Opts::new(
                "h2o_chat_conversations_refused_total",
                "Conversations not created, by why: the session's cap, the server's, the store.",
            ),
            &["reason"],
        ));
        let store_failures = must(IntCounterVec::new(
            Opts::new(
                "h2o_chat_store_failures_total",
                "Conversation-store operations that failed (each one answered as an error).",
            ),
            &["operation"],
        ));
        let mut collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(conversations.clone()),
            Box::new(conversations_limit),
            Box::new(conversations_refused.clone()),
            Box::new(store_failures.clone()),
            Box::new(sessions.clone()),
            Box::new(requests.clone()),
            Box::new(first_token.clone()),
            Box::new(inter_token.clone()),
            Box::new(connections.clone()),
            Box::new(connections_refused.clone()),
            Box::new(connections_evicted.clone()),
        ];
        collectors.push(Box::new(EngineCollector::new(engines)));
        for collector in collectors {
            must(registry.register(collector));
        }
        Metrics {
            registry,
            requests,
            first_token,
            inter_token,
            connections,
            connections_refused,
            connections_evicted,
            conversations,
            sessions,
            store_failures,
            conversations_refused,
        }
    }

    /// Adds figures kept elsewhere (a gateway's per-upstream metrics) to `/metrics`.
    pub fn register(&self, collector: Box<dyn Collector>) -> prometheus::Result<()> {
        self.registry.register(collector)
    }

    /// A conversation not created, and why (`session`, `server`, `store`).
    pub fn refused_conversation(&self, reason: &str) {
        self.conversations_refused
            .with_label_values(&[reason])
            .inc();
    }

    pub fn observe_first_token(&self, elapsed: Duration) {
        self.first_token.observe(elapsed.as_secs_f64());
    }

    pub fn observe_inter_token(&self, elapsed: Duration) {
        self.inter_token.observe(elapsed.as_secs_f64());
    }

    pub fn record_request(&self, route: &str, status: u16) {
        self.requests
            .with_label_values(&[route, &status.to_string()])
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%err, "cannot encode the metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// Counts every routed request by its route template (never by id, so the label set stays
/// small).
pub async fn count_requests(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().clone();
    let response = next.run(request).await;
    state
        .metrics()
        .record_request(&format!("{method} {route}"), response.status().as_u16());
    response
}

/// Reads the engines' own counters at scrape time.
struct EngineCollector {
    engines: Vec<(String, Arc<dyn Engine>)>,
    descs: Vec<Desc>,
}

const ENGINE_METRICS: &[(&str, &str)] = &[
    ("h2o_chat_slots", "Sequences the engine generates at once."),
    ("h2o_chat_slots_busy", "Slots running a generation."),
    ("h2o_chat_queue_depth", "Requests waiting for a slot."),
    (
        "h2o_chat_prompt_tokens_evaluated_total",
        "Prompt tokens run through the model.",
    ),
    (
        "h2o_chat_prompt_tokens_cached_total",
        "Prompt tokens reused from a slot's cache instead of being evaluated.",
    ),
    ("h2o_chat_generated_tokens_total", "Tokens generated."),
    ("h2o_chat_batches_total", "Decode steps run."),
    ("h2o_chat_engine_ready", "1 when the engine takes requests."),
    (
        "h2o_chat_model_loaded",
        "1 when the model is in memory (a model on demand unloads when idle).",
    ),
    (
        "h2o_chat_prefill_first_steps_total",
        "Steps given to finishing a newcomer's prompt alone (the running slots waited one step).",
    ),
];

impl EngineCollector {
    fn new(mut engines: Vec<(String, Arc<dyn Engine>)>) -> Self {
        // Stand-in ids share one engine: report each engine once, and only engines that
        // keep figures (a gateway's are its upstreams', registered on their own).
        let mut seen: Vec<*const ()> = Vec::new();
        engines.retain(|(_, engine)| {
            let ptr = Arc::as_ptr(engine) as *const ();
            let fresh = !seen.contains(&ptr) && engine.stats().is_some();
            seen.push(ptr);
            fresh
        });
        let descs = ENGINE_METRICS
            .iter()
            .filter_map(|(name, help)| {
                Desc::new(
                    (*name).to_string(),
                    (*help).to_string(),
                    vec!["model".to_string()],
                    Default::default(),
                )
                .ok()
            })
            .collect();
        EngineCollector { engines, descs }
    }
}

impl Collector for EngineCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let gauge = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["model"]);
        let counter =
            |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), &["model"]);
        let (Ok(slots), Ok(busy), Ok(queued), Ok(ready), Ok(loaded)) = (
            gauge(ENGINE_METRICS[0].0, ENGINE_METRICS[0].1),
            gauge(ENGINE_METRICS[1].0, ENGINE_METRICS[1].1),
            gauge(ENGINE_METRICS[2].0, ENGINE_METRICS[2].1),
            gauge(ENGINE_METRICS[7].0, ENGINE_METRICS[7].1),
            gauge(ENGINE_METRICS[8].0, ENGINE_METRICS[8].1),
        ) else {
            return Vec::new();
        };
        let (Ok(evaluated), Ok(cached), Ok(generated), Ok(batches), Ok(prefill_first)) = (
            counter(ENGINE_METRICS[3].0, ENGINE_METRICS[3].1),
            counter(ENGINE_METRICS[4].0, ENGINE_METRICS[4].1),
            counter(ENGINE_METRICS[5].0, ENGINE_METRICS[5].1),
            counter(ENGINE_METRICS[6].0, ENGINE_METRICS[6].1),
            counter(ENGINE_METRICS[9].0, ENGINE_METRICS[9].1),
        ) else {
            return Vec::new();
        };
        for (model, engine) in &self.engines {
            let Some(stats) = engine.stats() else {
                continue;
            };
            let labels = [model.as_str()];
            slots.with_label_values(&labels).set(stats.slots as i64);
            busy.with_label_values(&labels).set(stats.busy_slots as i64);
            queued.with_label_values(&labels).set(stats.queued as i64);
            ready
                .with_label_values(&labels)
                .set(i64::from(engine.health() == Health::Ready));
            loaded
                .with_label_values(&labels)
                .set(i64::from(engine.is_loaded()));
            evaluated
                .with_label_values(&labels)
                .inc_by(stats.prompt_tokens_evaluated);
            cached
                .with_label_values(&labels)
                .inc_by(stats.prompt_tokens_cached);
            generated
                .with_label_values(&labels)
                .inc_by(stats.generated_tokens);
            batches.with_label_values(&labels).inc_by(stats.batches);
            prefill_first
                .with_label_values(&labels)
                .inc_by(stats.prefill_first_steps);
        }
        let mut families = Vec::new();
        for collector in [
            &slots as &dyn Collector,
            &busy,
            &queued,
            &evaluated,
            &cached,
            &generated,
            &batches,
            &prefill_first,
            &ready,
            &loaded,
        ] {
            families.extend(collector.collect());
        }
        families
    }
}
