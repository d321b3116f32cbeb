//! The blocking face of the provider, for code without an async runtime (seed 001's world).
//!
//! Like `reqwest::blocking`, it is not a second implementation: it drives the async
//! [`crate::H2o`] on a small background runtime of its own. Calling it from inside an async
//! runtime would block that runtime's worker thread, so it refuses with
//! [`Error::BlockingInsideRuntime`] instead of panicking somewhere deep inside tokio.
//!
//! ```no_run
//! use h2o_chat::{blocking, H2o, Message};
//!
//! let h2o = blocking::H2o::new(H2o::builder().url("http://127.0.0.1:8080"))?;
//! for token in h2o.stream([Message::user("Hello, how are you?")])? {
//!     print!("{}", token?);
//! }
//! # Ok::<(), h2o_chat::Error>(())
//! ```

use std::sync::Arc;

use futures_util::StreamExt;
use tokio::runtime::Runtime;

use crate::client::{CompletionRequest, H2oBuilder};
use crate::error::Error;
use crate::{Completion, Message, TokenStream};

/// Owns the background runtime; the last owner waits for outstanding DELETEs before
/// shutting it down, so a blocking program that exits right after an answer leaks nothing.
struct Driver {
    runtime: Option<Runtime>,
    client: crate::H2o,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            // Dropped inside some async context: waiting here would block it.
            runtime.shutdown_background();
            return;
        }
        let wait = self.client.inner_request_timeout();
        let client = self.client.clone();
        runtime.block_on(async move {
            let _ = tokio::time::timeout(wait, client.wait_for_cleanup()).await;
        });
    }
}

impl Driver {
    fn runtime(&self) -> Result<&Runtime, Error> {
        refuse_inside_runtime()?;
        self.runtime
            .as_ref()
            .ok_or_else(|| Error::Config("the blocking runtime is gone".into()))
    }
}

fn refuse_inside_runtime() -> Result<(), Error> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::BlockingInsideRuntime);
    }
    Ok(())
}

/// The blocking provider. Cheap to clone; clones share the session and the runtime.
#[derive(Clone)]
pub struct H2o {
    driver: Arc<Driver>,
}

impl std::fmt::Debug for H2o {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("blocking::H2o")
            .field(&self.driver.client)
            .finish()
    }
}

impl H2o {
    /// Builds the client from an async builder and starts its background runtime.
    pub fn new(builder: H2oBuilder) -> Result<H2o, Error> {
        refuse_inside_runtime()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("h2o-chat-blocking")
            .enable_all()
            .build()
            .map_err(|err| Error::Config(format!("cannot start the blocking runtime: {err}")))?;
        // reqwest's client must be made where a runtime is current for some of its parts.
        let client = {
            let _entered = runtime.enter();
            builder.build()?
        };
        Ok(H2o {
            driver: Arc::new(Driver {
                runtime: Some(runtime),
                client,
            }),
        })
    }

    /// The async client underneath.
    pub fn as_async(&self) -> &crate::H2o {
        &self.driver.client
    }

    /// Streams the answer's text with the client's defaults.
    pub fn stream(&self, messages: impl IntoIterator<Item = Message>) -> Result<TokenIter, Error> {
        self.run_stream(self.driver.client.request(messages))
    }

    /// The whole answer.
    pub fn complete(
        &self,
        messages: impl IntoIterator<Item = Message>,
    ) -> Result<Completion, Error> {
        self.run_complete(self.driver.client.request(messages))
    }

    /// Streams the answer of a configured request (see [`crate::H2o::request`]).
    pub fn run_stream(&self, request: CompletionRequest) -> Result<TokenIter, Error> {
        let stream = self.driver.runtime()?.block_on(request.stream())?;
        Ok(TokenIter {
            driver: self.driver.clone(),
            stream: Some(stream),
        })
    }

    /// The whole answer of a configured request.
    pub fn run_complete(&self, request: CompletionRequest) -> Result<Completion, Error> {
        self.driver.runtime()?.block_on(request.complete())
    }

    /// A request to configure; run it with [`run_stream`](H2o::run_stream) or
    /// [`run_complete`](H2o::run_complete).
    pub fn request(&self, messages: impl IntoIterator<Item = Message>) -> CompletionRequest {
        self.driver.client.request(messages)
    }

    /// Waits until every finished conversation has been deleted.
    pub fn wait_for_cleanup(&self) -> Result<(), Error> {
        self.driver
            .runtime()?
            .block_on(self.driver.client.wait_for_cleanup());
        Ok(())
    }
}

/// The answer's text as an iterator; it ends at the final event. Dropping it early deletes
/// the conversation in the background.
pub struct TokenIter {
    driver: Arc<Driver>,
    /// `None` once the stream has ended.
    stream: Option<TokenStream>,
}

impl Iterator for TokenIter {
    type Item = Result<String, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let stream = self.stream.as_mut()?;
        let runtime = match self.driver.runtime() {
            Ok(runtime) => runtime,
            Err(err) => {
                self.stream = None;
                return Some(Err(err));
            }
        };
        let item = runtime.block_on(stream.next());
        if !matches!(item, Some(Ok(_))) {
            self.stream = None;
        }
        item
    }
}

impl TokenIter {
    /// Reads to the end and returns the whole text.
    pub fn collect_text(self) -> Result<String, Error> {
        let mut text = String::new();
        for token in self {
            text.push_str(&token?);
        }
        Ok(text)
    }
}

impl Drop for TokenIter {
    fn drop(&mut self) {
        // Drop the async stream inside the runtime so its cleanup is spawned there.
        if let (Some(stream), Some(runtime)) = (self.stream.take(), self.driver.runtime.as_ref()) {
            let _entered = runtime.enter();
            drop(stream);
        }
    }
}
