//! The upstreams and the choice among them: the least loaded available upstream per unit of
//! weight (the better of two random ones among many), after affinity; passive health
//! (cooldowns) and the active checks.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use h2o_chat_engine::EngineError;

use crate::affinity::Affinity;
use crate::metrics::PoolMetrics;
use crate::spec::UpstreamSpec;
use crate::timeouts::GatewayTimeouts;
use crate::upstream::{InFlight, Upstream};

/// Up to this many candidates, the least loaded is found exactly; beyond, the better of two
/// random ones (power of two choices: near-best at constant cost, no herd on one upstream).
const FEW: usize = 4;
/// The upstreams and what the gateway remembers about them.
pub struct Pool {
    pub(crate) upstreams: Vec<Upstream>,
    affinity: Mutex<Affinity>,
    pub(crate) timeouts: GatewayTimeouts,
    pub(crate) metrics: PoolMetrics,
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
    ///
    /// When none is available for a request's first attempt, every upstream is cooling down
    /// or failing its checks: rather than refuse, the one that failed longest ago is tried
    /// (the panic mode of Envoy's load balancers: a pool that is all "down" is more likely
    /// wrong about itself than entirely broken, and one of them may have recovered).
    pub(crate) fn pick(
        &self,
        hint: Option<&str>,
        tried: &[usize],
    ) -> Option<(&Upstream, InFlight<'_>)> {
        let now = Instant::now();
        let candidates: Vec<&Upstream> = self
            .upstreams
            .iter()
            .filter(|u| !tried.contains(&u.index) && u.is_available(now))
            .collect();
        if candidates.is_empty() {
            return if tried.is_empty() {
                self.panic_pick(now)
            } else {
                None
            };
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

    /// The upstream that failed longest ago among those below their in-flight cap (see
    /// [`Pool::pick`]).
    fn panic_pick(&self, now: Instant) -> Option<(&Upstream, InFlight<'_>)> {
        let mut by_age: Vec<&Upstream> = self.upstreams.iter().collect();
        by_age.sort_by_key(|u| u.last_failure(now));
        let (upstream, claim) = by_age.into_iter().find_map(|u| Some((u, u.claim()?)))?;
        self.metrics
            .panics
            .with_label_values(&[upstream.name.as_str()])
            .inc();
        tracing::warn!(upstream = %upstream.name, "every upstream is cooling down or failing its checks; trying the one that failed longest ago");
        Some((upstream, claim))
    }

    /// The soonest an upstream leaves its cooldown (for `Retry-After` when none is free).
    pub(crate) fn soonest_available(&self) -> Option<Duration> {
        let now = Instant::now();
        self.upstreams
            .iter()
            .filter_map(|u| u.cooling_until(now))
            .min()
            .map(|until| until - now)
    }

    /// Marks a failure of `upstream` before any token.
    pub(crate) fn failed_before_first_token(
        &self,
        upstream: &Upstream,
        retry_after: Option<Duration>,
    ) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::UpstreamKind;

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
        assert!(!upstream.is_available(Instant::now()));
        assert!(pool.soonest_available().is_some());
        upstream.checked(false);
        upstream.checked(true);
        assert!(
            pool.pick(None, &[]).is_some(),
            "a recovered upstream comes back"
        );
    }

    #[tokio::test]
    async fn when_every_upstream_cools_the_one_that_failed_longest_ago_is_tried_once() {
        let pool = pool(3);
        pool.upstreams[1].failed(Some(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(2));
        pool.upstreams[0].failed(Some(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(2));
        pool.upstreams[2].failed(Some(Duration::from_secs(30)));
        let (chosen, _claim) = pool.pick(None, &[]).expect("the panic choice");
        assert_eq!(chosen.index, 1, "the oldest failure");
        assert!(
            pool.pick(None, &[1]).is_none(),
            "a failover after the panic attempt refuses instead of trying every cooling upstream"
        );
        let name = pool.upstreams[1].name.as_str();
        assert_eq!(pool.metrics.panics.with_label_values(&[name]).get(), 1);
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
