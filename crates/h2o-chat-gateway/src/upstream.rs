//! One upstream: its relay, its load (requests in flight) and its health — active (the
//! periodic check) and passive (a cooldown after a failure, honouring `Retry-After`, growing
//! exponentially while failures repeat).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use h2o_chat_engine::{Constraint, EngineError, GenerationEvent, GenerationRequest};
use tokio::sync::mpsc;

use crate::relay::{RemoteH2o, RemoteOpenAi, RemoteTgi};
use crate::spec::{UpstreamKind, UpstreamSpec};

/// The first cooldown after a failure without `Retry-After`; it doubles per repeat.
const FIRST_COOLDOWN: Duration = Duration::from_secs(1);
/// The longest cooldown.
const MAX_COOLDOWN: Duration = Duration::from_secs(60);

/// The client for an upstream's kind (its relay).
pub(crate) enum Client {
    H2o(RemoteH2o),
    Tgi(RemoteTgi),
    OpenAi(RemoteOpenAi),
}

/// Passive health.
#[derive(Default)]
struct Cooldown {
    until: Option<Instant>,
    /// Failures in a row.
    failures: u32,
    /// When the last failure was seen (for the panic choice: the oldest failure first).
    last_failure: Option<Instant>,
}

/// See the module docs.
pub struct Upstream {
    pub spec: UpstreamSpec,
    /// Its place in the pool (metrics label and affinity value).
    pub index: usize,
    /// A short stable name for logs, metrics and `/info`: `kind:url`, without the URL's
    /// credentials.
    pub name: String,
    pub(crate) client: Client,
    in_flight: AtomicUsize,
    /// The last active check's verdict (optimistic until the first one).
    healthy: AtomicBool,
    cooldown: Mutex<Cooldown>,
}

/// Holds a request against an upstream's in-flight count.
pub(crate) struct InFlight<'a>(&'a Upstream);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Upstream {
    pub(crate) fn new(index: usize, spec: UpstreamSpec) -> Result<Self, EngineError> {
        let client = match spec.kind {
            UpstreamKind::H2o => Client::H2o(RemoteH2o::new(&spec.url)?),
            UpstreamKind::Tgi => Client::Tgi(RemoteTgi::new(&spec.url, spec.api_key.clone())?),
            UpstreamKind::OpenAi => {
                Client::OpenAi(RemoteOpenAi::new(&spec.url, spec.api_key.clone())?)
            }
        };
        Ok(Upstream {
            name: format!(
                "{}:{}",
                spec.kind.name(),
                crate::redact::credentials(&spec.url)
            ),
            index,
            spec,
            client,
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            cooldown: Mutex::new(Cooldown::default()),
        })
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Its load per unit of weight once one more request is added (least-outstanding choice
    /// weighs the request to come, so a heavier upstream wins ties).
    pub(crate) fn load(&self) -> f64 {
        (self.in_flight() + 1) as f64 / f64::from(self.spec.weight.max(1))
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// When its cooldown ends, if it is cooling down.
    pub fn cooling_until(&self, now: Instant) -> Option<Instant> {
        let cooldown = self.cooldown.lock().unwrap_or_else(|e| e.into_inner());
        cooldown.until.filter(|&until| until > now)
    }

    /// Healthy, not cooling down, and below its in-flight cap.
    pub fn is_available(&self, now: Instant) -> bool {
        self.is_healthy()
            && self.cooling_until(now).is_none()
            && self.in_flight() < self.spec.max_in_flight
    }

    /// When it last failed (a request or, as `now`, an active check that is still failing);
    /// `None` when it never has.
    pub(crate) fn last_failure(&self, now: Instant) -> Option<Instant> {
        let cooldown = self.cooldown.lock().unwrap_or_else(|e| e.into_inner());
        match cooldown.last_failure {
            Some(at) => Some(at),
            None if !self.is_healthy() => Some(now),
            None => None,
        }
    }

    /// Counts a request in flight, unless the cap is reached.
    pub(crate) fn claim(&self) -> Option<InFlight<'_>> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.spec.max_in_flight).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlight(self))
    }

    /// A failure: cool down for `retry_after` when the upstream said, else exponentially
    /// longer per failure in a row. Returns the cooldown.
    pub(crate) fn failed(&self, retry_after: Option<Duration>) -> Duration {
        let mut cooldown = self.cooldown.lock().unwrap_or_else(|e| e.into_inner());
        cooldown.failures = cooldown.failures.saturating_add(1);
        let backoff = FIRST_COOLDOWN
            .saturating_mul(1u32 << (cooldown.failures - 1).min(16))
            .min(MAX_COOLDOWN);
        let wait = retry_after.map_or(backoff, |r| r.min(MAX_COOLDOWN));
        let now = Instant::now();
        cooldown.until = Some(now + wait);
        cooldown.last_failure = Some(now);
        wait
    }

    /// A success: the failure streak is over.
    pub(crate) fn succeeded(&self) {
        let mut cooldown = self.cooldown.lock().unwrap_or_else(|e| e.into_inner());
        cooldown.failures = 0;
    }

    /// The active check's verdict. A recovered upstream leaves its cooldown.
    pub(crate) fn checked(&self, healthy: bool) {
        let was = self.healthy.swap(healthy, Ordering::AcqRel);
        if healthy && !was {
            let mut cooldown = self.cooldown.lock().unwrap_or_else(|e| e.into_inner());
            cooldown.until = None;
            cooldown.failures = 0;
        }
    }

    /// Whether this upstream's protocol can carry `constraint`: TGI's `grammar` takes a JSON
    /// schema or a regular expression, OpenAI's `response_format` a JSON schema; chat-ui's
    /// generate body takes neither, and no protocol takes this server's own grammars (tool
    /// calls).
    pub fn carries(&self, constraint: &Constraint) -> bool {
        matches!(
            (self.spec.kind, constraint),
            (
                UpstreamKind::Tgi,
                Constraint::JsonSchema(_) | Constraint::Regex(_)
            ) | (
                UpstreamKind::OpenAi,
                Constraint::JsonSchema(_) | Constraint::Tools(_)
            )
        )
    }

    /// Starts one request on this upstream for the client's `model`.
    pub(crate) fn start(
        &self,
        model: &str,
        request: &GenerationRequest,
    ) -> mpsc::Receiver<GenerationEvent> {
        let model = self.spec.model.as_deref().unwrap_or(model);
        match &self.client {
            Client::H2o(client) => client.start(Some(model), request),
            Client::Tgi(client) => client.start(request),
            Client::OpenAi(client) => client.start(model, request),
        }
    }

    /// The route of the active check: `/health` for TGI, `/v1/models` for OpenAI kinds, the
    /// page for chat-ui.
    pub(crate) fn check_url(&self) -> String {
        let base = self.spec.url.trim_end_matches('/');
        match self.spec.kind {
            UpstreamKind::Tgi => format!("{base}/health"),
            UpstreamKind::OpenAi => {
                let base = base.strip_suffix("/v1").unwrap_or(base);
                format!("{base}/v1/models")
            }
            UpstreamKind::H2o => format!("{base}/"),
        }
    }
}
