//! The gateway's figures for `/metrics`: per-upstream requests, errors (before and after
//! the first token), cooldowns, failovers, panic attempts and time to first token, counted as they happen;
//! requests in flight and health, read at scrape time.

use std::sync::Arc;
use std::time::Instant;

use prometheus::core::Collector;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};

use crate::pool::Pool;

/// Per-upstream metrics, registered by the server's `/metrics`.
pub(crate) struct PoolMetrics {
    pub requests: IntCounterVec,
    pub errors: IntCounterVec,
    pub cooldowns: IntCounterVec,
    pub failovers: IntCounterVec,
    pub panics: IntCounterVec,
    pub first_token: HistogramVec,
}

fn must<T>(result: prometheus::Result<T>) -> T {
    result.unwrap_or_else(|err| panic!("invalid metric definition: {err}"))
}

impl PoolMetrics {
    pub(crate) fn new() -> Self {
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
            panics: counter(
                "h2o_chat_upstream_panic_attempts_total",
                "Requests sent to a cooling or failing upstream because every upstream was.",
                &["upstream"],
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

/// Every collector of a pool's figures, for the server's registry.
pub fn collectors(pool: &Arc<Pool>) -> Vec<Box<dyn Collector>> {
    let metrics = &pool.metrics;
    vec![
        Box::new(metrics.requests.clone()),
        Box::new(metrics.errors.clone()),
        Box::new(metrics.cooldowns.clone()),
        Box::new(metrics.failovers.clone()),
        Box::new(metrics.panics.clone()),
        Box::new(metrics.first_token.clone()),
        Box::new(PoolCollector::new(pool.clone())),
    ]
}
