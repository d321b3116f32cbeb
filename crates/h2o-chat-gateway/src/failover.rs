//! One request through the pool: upstreams are tried until one sends a first token (or
//! refuses in a way another would too); after that token the answer comes from that
//! upstream alone, and a failure is the client's error event — never a spliced answer.

use std::sync::Arc;
use std::time::Instant;

use h2o_chat_engine::{GenerationEvent, GenerationFailure, GenerationRequest};
use tokio::sync::mpsc;

use crate::pool::Pool;
use crate::relay::forward;

impl Pool {
    /// Runs one request: tries upstreams until one sends a first token (or refuses in a way
    /// another would too), then forwards the rest.
    pub(crate) async fn run(
        self: Arc<Self>,
        model: String,
        request: GenerationRequest,
        sender: mpsc::Sender<GenerationEvent>,
    ) {
        let hint = request.cache_hint.clone();
        let mut tried: Vec<usize> = Vec::new();
        let mut last_failure: Option<GenerationFailure> = None;
        loop {
            let Some((upstream, _in_flight)) = self.pick(hint.as_deref(), &tried) else {
                let failure = last_failure.unwrap_or(GenerationFailure::Upstream {
                    status: 503,
                    retry_after: self.soonest_available(),
                    message: "no upstream is available".into(),
                });
                forward(&sender, GenerationEvent::Failed(failure)).await;
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
                    last_failure = Some(GenerationFailure::Upstream {
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
                Ok(Some(GenerationEvent::Failed(GenerationFailure::Upstream {
                    status,
                    retry_after,
                    message,
                }))) if status == 429 || status >= 500 => {
                    self.failed_before_first_token(upstream, retry_after);
                    self.metrics.failovers.with_label_values(&[name]).inc();
                    last_failure = Some(GenerationFailure::Upstream {
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
                    // The client's own error (the upstream's validation refused it, a 4xx)
                    // says nothing of the upstream's health: relayed, counted apart, cools
                    // nothing, and another upstream would refuse it too.
                    let stage = match failure {
                        GenerationFailure::Invalid(_) => "refused",
                        GenerationFailure::Upstream { status, .. }
                            if *status != 429 && *status < 500 =>
                        {
                            "refused"
                        }
                        _ => "after_first_token",
                    };
                    self.metrics.errors.with_label_values(&[name, stage]).inc();
                    if matches!(failure, GenerationFailure::Generation(_)) {
                        // A broken stream says something about the upstream too.
                        upstream.failed(None);
                        self.metrics.cooldowns.with_label_values(&[name]).inc();
                    }
                }
                let last = matches!(
                    event,
                    GenerationEvent::Finished(..) | GenerationEvent::Failed(_)
                );
                if !forward(&sender, event).await || last {
                    return;
                }
                event = tokio::select! {
                    next = events.recv() => match next {
                        Some(event) => event,
                        None => GenerationEvent::Failed(GenerationFailure::Generation(
                            "the upstream relay ended without a final event".into(),
                        )),
                    },
                    () = sender.closed() => return,
                };
            }
        }
    }
}
