//! Shutdown in two stages, with a deadline.
//!
//! 1. **Draining** (the first SIGINT/SIGTERM, or [`crate::RunningServer::shutdown`]): no new
//!    connections or generations; idle connections close; running generations go on.
//! 2. **Deadline** (`--shutdown-timeout` later, or at once with [`Shutdown::force`]): every
//!    generation still running ends with an error event, and the remaining connections close.
//!
//! ```
//! use std::time::Duration;
//! use h2o_chat_server::shutdown::Shutdown;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let shutdown = Shutdown::new();
//! assert!(!shutdown.is_draining());
//! shutdown.begin(Duration::from_millis(1));
//! assert!(shutdown.is_draining());
//! shutdown.deadline_passed().await; // within the deadline
//! # }
//! ```

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The server's shutdown state; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    draining: CancellationToken,
    deadline: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Shutdown::default()
    }

    /// Starts draining; the deadline passes `timeout` later. Only the first call counts.
    pub fn begin(&self, timeout: Duration) {
        if self.draining.is_cancelled() {
            return;
        }
        self.draining.cancel();
        let deadline = self.deadline.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    tokio::select! {
                        () = tokio::time::sleep(timeout) => deadline.cancel(),
                        () = deadline.cancelled() => {}
                    }
                });
            }
            // No runtime to time it: the deadline is now.
            Err(_) => deadline.cancel(),
        }
    }

    /// Ends everything now (a second signal).
    pub fn force(&self) {
        self.draining.cancel();
        self.deadline.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    pub fn is_past_deadline(&self) -> bool {
        self.deadline.is_cancelled()
    }

    /// Resolves when draining starts.
    pub async fn draining(&self) {
        self.draining.cancelled().await;
    }

    /// Resolves when the deadline passes.
    pub async fn deadline_passed(&self) {
        self.deadline.cancelled().await;
    }
}
