//! When and how often a failed step is tried again (DESIGN "Retries where they are safe").
//!
//! Settings and conversation creation are idempotent enough to repeat. The generate POST is
//! repeated only while no event has arrived, and then with `options.is_retry = true` and the
//! same `options.id`: chat-ui then cuts the stored messages before that id, so the message is
//! never duplicated (§a.4 step 7).

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use crate::error::Error;

/// Backoff and limits for retries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 disables retries).
    pub max_retries: usize,
    /// The first backoff delay; it doubles with each retry, with jitter.
    pub min_delay: Duration,
    /// The longest backoff delay.
    pub max_delay: Duration,
    /// The longest `Retry-After` honoured; a server asking for more gets an error instead.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        }
    }

    /// Runs `attempt` until it succeeds, fails with a permanent error, or the policy is spent.
    /// A 429's `Retry-After` replaces the backoff delay when it is within `max_retry_after`.
    pub(crate) async fn run<T, F, Fut>(&self, what: &'static str, attempt: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_retries)
            .with_jitter();
        let max_retry_after = self.max_retry_after;
        attempt
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|err: &Error| {
                err.is_transient() && err.retry_after().is_none_or(|d| d <= max_retry_after)
            })
            .adjust(|err: &Error, delay| match (err.retry_after(), delay) {
                (_, None) => None,
                (Some(wait), Some(_)) => Some(wait),
                (None, delay) => delay,
            })
            .notify(|err: &Error, delay| {
                tracing::debug!(%err, ?delay, "{what}: retrying");
            })
            .await
    }
}
