//! A streamed answer: the run driven by its own task, its frames handed to the response
//! body through a small bounded channel.
//!
//! The run — and with it the generation's permit and the engine's sequence — belongs to that
//! task, not to the response body. So it ends when the answer ends, whatever the client does
//! with the body: a client that leaves is noticed at once (the channel closes), and one that
//! stops reading (a full TCP window, an HTTP/2 stream whose window stays at zero) gets its
//! answer given up after the write-stall timeout instead of holding a permit for as long as
//! its connection lives.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use h2o_chat_engine::Token;

use crate::pipeline::{Run, Step};

/// Frames buffered between a run's task and its response body.
const FRAMES: usize = 32;

/// What one step becomes on the wire.
pub struct Frames {
    pub bytes: Vec<Bytes>,
    /// The stream ends after these.
    pub last: bool,
}

impl Frames {
    pub fn one(bytes: Bytes, last: bool) -> Self {
        Frames {
            bytes: vec![bytes],
            last,
        }
    }

    pub fn none() -> Self {
        Frames {
            bytes: Vec::new(),
            last: false,
        }
    }

    /// The end, with nothing more to say (a run stopped on request).
    pub fn end() -> Self {
        Frames {
            bytes: Vec::new(),
            last: true,
        }
    }
}

/// The tasks of the streamed answers, for a graceful shutdown to wait for.
#[derive(Clone)]
pub struct Streams {
    tracker: TaskTracker,
    stall: Duration,
}

impl Streams {
    /// Answers whose frames the client does not take within `stall` are given up.
    pub fn new(stall: Duration) -> Self {
        Streams {
            tracker: TaskTracker::new(),
            stall,
        }
    }

    /// Drives `run` on its own task, encoding each step with `encode`; the body the client
    /// reads.
    pub fn body(
        &self,
        run: Run,
        encode: impl FnMut(Step, &Run) -> Frames + Send + 'static,
    ) -> Body {
        body(run, &self.tracker, self.stall, encode)
    }

    /// Drives several runs at once on one task (an answer of several choices), encoding
    /// each step with `encode` (the choice's index, the step, the alternatives of its
    /// token); when every run has ended, `end` gives the last frames. A step encoded as the
    /// last ends the whole answer (a failure ends every choice).
    pub fn merged(
        &self,
        runs: Vec<Run>,
        mut encode: impl FnMut(usize, Step, &[Token]) -> Frames + Send + 'static,
        end: impl FnOnce() -> Vec<Bytes> + Send + 'static,
    ) -> Body {
        let (sender, frames) = mpsc::channel::<Bytes>(FRAMES);
        let stall = self.stall;
        self.tracker.spawn(async move {
            let steps = runs.into_iter().enumerate().map(|(index, run)| {
                Box::pin(futures_util::stream::unfold(
                    run,
                    move |mut run| async move {
                        let step = run.next().await?;
                        let alternatives = run.alternatives().to_vec();
                        Some(((index, step, alternatives), run))
                    },
                ))
            });
            let mut steps = futures_util::stream::select_all(steps);
            loop {
                let next = tokio::select! {
                    next = steps.next() => next,
                    () = sender.closed() => return,
                };
                // Every run has ended: the answer's last frames follow.
                let Some((index, step, alternatives)) = next else {
                    break;
                };
                let Frames { bytes, last } = encode(index, step, &alternatives);
                for frame in bytes {
                    if !send(&sender, frame, stall).await {
                        return;
                    }
                }
                if last {
                    return;
                }
            }
            for frame in end() {
                if !send(&sender, frame, stall).await {
                    return;
                }
            }
        });
        let mut frames = frames;
        let frames = futures_util::stream::poll_fn(move |cx| frames.poll_recv(cx));
        Body::from_stream(frames.map(Ok::<Bytes, Infallible>))
    }

    /// Waits until every answer's task has ended (each ends at the shutdown deadline at the
    /// latest, with its run).
    pub async fn ended(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Hands one frame to the body; `false` when the client left or stopped reading.
async fn send(sender: &mpsc::Sender<Bytes>, frame: Bytes, stall: Duration) -> bool {
    match tokio::time::timeout(stall, sender.send(frame)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            tracing::warn!(
                stalled_ms = stall.as_millis(),
                "a client stopped reading its answer; the answer is given up"
            );
            false
        }
    }
}

fn body(
    mut run: Run,
    tracker: &TaskTracker,
    stall: Duration,
    mut encode: impl FnMut(Step, &Run) -> Frames + Send + 'static,
) -> Body {
    let (sender, frames) = mpsc::channel::<Bytes>(FRAMES);
    tracker.spawn(async move {
        loop {
            let step = tokio::select! {
                step = run.next() => step,
                // The client left: the run ends now, not at its next token.
                () = sender.closed() => return,
            };
            let Some(step) = step else { return };
            let Frames { bytes, last } = encode(step, &run);
            for frame in bytes {
                if !send(&sender, frame, stall).await {
                    return;
                }
            }
            if last {
                return;
            }
        }
    });
    let mut frames = frames;
    let frames = futures_util::stream::poll_fn(move |cx| frames.poll_recv(cx));
    Body::from_stream(frames.map(Ok::<Bytes, Infallible>))
}
