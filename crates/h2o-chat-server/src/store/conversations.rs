//! The store as the async server uses it: every call that may wait on I/O runs on a
//! blocking thread, never on the runtime's threads (on two cores one slow disk write would
//! otherwise stall every stream), within a deadline; every failure is counted in `/metrics`
//! (`h2o_chat_store_failures_total{operation}`) and logged, and returned to the caller to
//! answer for.

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounterVec;
use tokio::sync::Semaphore;

use super::{
    ConversationSummary, CreateError, Store, StoreError, StoredConversation, StoredMessage, Sweep,
    TurnStart,
};

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct Conversations {
    store: Arc<dyn Store>,
    deadline: Duration,
    failures: IntCounterVec,
    /// Calls on blocking threads at once. SQLite serves one writer and a few readers at a
    /// time; more threads would only wait on its locks, and on two cores their switching
    /// halves what the store answers.
    in_flight: Arc<Semaphore>,
}

/// See [`Conversations::in_flight`]: the writer, the readers, and room for a few more.
const BLOCKING_CALLS: usize = 6;

impl Conversations {
    /// `store`, each call answering within `deadline`, failures counted in `failures`
    /// (labelled by operation).
    pub fn new(store: Arc<dyn Store>, deadline: Duration, failures: IntCounterVec) -> Self {
        Conversations {
            store,
            deadline,
            failures,
            in_flight: Arc::new(Semaphore::new(BLOCKING_CALLS)),
        }
    }

    /// The store itself, for what never waits (its counts) and for tests.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Runs `call` off the runtime (inline for a store that never blocks), within the
    /// deadline.
    async fn run<T, E>(
        &self,
        operation: &'static str,
        call: impl FnOnce(&dyn Store) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        if !self.store.blocks() {
            return call(self.store.as_ref());
        }
        let store = self.store.clone();
        let in_flight = self.in_flight.clone();
        // The deadline covers the wait for a turn too.
        let task = async move {
            let permit = in_flight.acquire_owned().await;
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                call(store.as_ref())
            })
            .await
        };
        match tokio::time::timeout(self.deadline, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(StoreError::new(operation, join).into()),
            Err(_) => Err(StoreError::new(
                operation,
                format!("no answer within {} ms", self.deadline.as_millis()),
            )
            .into()),
        }
    }

    /// Counts and logs a failure, and passes it on.
    fn failed(&self, err: StoreError) -> StoreError {
        self.failures.with_label_values(&[err.operation]).inc();
        tracing::error!(%err, "conversation store");
        err
    }

    async fn call<T: Send + 'static>(
        &self,
        operation: &'static str,
        call: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.run(operation, call).await.map_err(|e| self.failed(e))
    }

    pub async fn accept_ethics(&self, session: String) -> Result<(), StoreError> {
        self.call("accept_ethics", move |s| s.accept_ethics(&session))
            .await
    }

    pub async fn ethics_accepted(&self, session: String) -> Result<bool, StoreError> {
        self.call("ethics_accepted", move |s| s.ethics_accepted(&session))
            .await
    }

    pub async fn create(&self, session: String, model: String) -> Result<String, CreateError> {
        let created = self
            .run::<_, CreateError>("create", move |s| s.create(&session, &model))
            .await;
        match created {
            Err(CreateError::Unavailable(err)) => Err(CreateError::Unavailable(self.failed(err))),
            other => other,
        }
    }

    pub async fn get(
        &self,
        session: String,
        id: String,
    ) -> Result<Option<StoredConversation>, StoreError> {
        self.call("get", move |s| s.get(&session, &id)).await
    }

    pub async fn list(&self, session: String) -> Result<Vec<ConversationSummary>, StoreError> {
        self.call("list", move |s| s.list(&session)).await
    }

    pub async fn begin_turn(
        &self,
        session: String,
        id: String,
        turn: TurnStart,
    ) -> Result<bool, StoreError> {
        self.call("begin_turn", move |s| s.begin_turn(&session, &id, &turn))
            .await
    }

    pub async fn end_turn(
        &self,
        session: String,
        id: String,
        question_id: String,
        answer: StoredMessage,
    ) -> Result<bool, StoreError> {
        self.call("end_turn", move |s| {
            s.end_turn(&session, &id, &question_id, &answer)
        })
        .await
    }

    pub async fn set_title(
        &self,
        session: String,
        id: String,
        title: String,
    ) -> Result<bool, StoreError> {
        self.call("set_title", move |s| s.set_title(&session, &id, &title))
            .await
    }

    pub async fn delete(&self, session: String, id: String) -> Result<bool, StoreError> {
        self.call("delete", move |s| s.delete(&session, &id)).await
    }

    pub async fn record_generation(&self, session: String) -> Result<(), StoreError> {
        self.call("record_generation", move |s| s.record_generation(&session))
            .await
    }

    pub async fn recent_generations(
        &self,
        session: String,
        window: Duration,
    ) -> Result<(usize, Option<Duration>), StoreError> {
        self.call("recent_generations", move |s| {
            s.recent_generations(&session, window)
        })
        .await
    }

    pub async fn sweep(&self, sweep: Sweep) -> Result<usize, StoreError> {
        self.call("sweep", move |s| s.sweep(&sweep)).await
    }
}

impl From<StoreError> for CreateError {
    fn from(err: StoreError) -> Self {
        CreateError::Unavailable(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, StoreBounds};

    /// A store whose calls wait until the test lets them go, as a stuck disk would.
    struct Stuck(MemoryStore, std::sync::Mutex<std::sync::mpsc::Receiver<()>>);

    impl Stuck {
        fn wait<T>(&self, value: T) -> T {
            let gate = self.1.lock().unwrap();
            // Bounded only so that a broken test ends.
            let _ = gate.recv_timeout(Duration::from_secs(30));
            value
        }
    }

    impl Store for Stuck {
        fn blocks(&self) -> bool {
            true
        }
        fn accept_ethics(&self, session: &str) -> Result<(), StoreError> {
            self.wait(self.0.accept_ethics(session))
        }
        fn ethics_accepted(&self, session: &str) -> Result<bool, StoreError> {
            self.wait(self.0.ethics_accepted(session))
        }
        fn create(&self, session: &str, model: &str) -> Result<String, CreateError> {
            self.wait(self.0.create(session, model))
        }
        fn get(&self, s: &str, id: &str) -> Result<Option<StoredConversation>, StoreError> {
            self.wait(self.0.get(s, id))
        }
        fn list(&self, session: &str) -> Result<Vec<ConversationSummary>, StoreError> {
            self.0.list(session)
        }
        fn begin_turn(&self, s: &str, id: &str, turn: &TurnStart) -> Result<bool, StoreError> {
            self.0.begin_turn(s, id, turn)
        }
        fn end_turn(
            &self,
            s: &str,
            id: &str,
            q: &str,
            a: &StoredMessage,
        ) -> Result<bool, StoreError> {
            self.0.end_turn(s, id, q, a)
        }
        fn set_title(&self, s: &str, id: &str, title: &str) -> Result<bool, StoreError> {
            self.0.set_title(s, id, title)
        }
        fn delete(&self, s: &str, id: &str) -> Result<bool, StoreError> {
            self.0.delete(s, id)
        }
        fn record_generation(&self, session: &str) -> Result<(), StoreError> {
            self.0.record_generation(session)
        }
        fn recent_generations(
            &self,
            s: &str,
            window: Duration,
        ) -> Result<(usize, Option<Duration>), StoreError> {
            self.0.recent_generations(s, window)
        }
        fn sweep(&self, sweep: &Sweep) -> Result<usize, StoreError> {
            self.0.sweep(sweep)
        }
        fn conversation_count(&self) -> usize {
            self.0.conversation_count()
        }
        fn session_count(&self) -> usize {
            self.0.session_count()
        }
        fn owner_of(&self, id: &str) -> Result<Option<String>, StoreError> {
            self.0.owner_of(id)
        }
    }

    fn failures() -> IntCounterVec {
        IntCounterVec::new(prometheus::Opts::new("f", "f"), &["operation"]).unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_stuck_store_leaves_the_runtime_free_and_misses_its_deadline_visibly() {
        let failures = failures();
        let (release, gate) = std::sync::mpsc::channel();
        let stuck = Stuck(MemoryStore::new(StoreBounds::default()), gate.into());
        let conversations =
            Conversations::new(Arc::new(stuck), Duration::from_millis(50), failures.clone());
        // This runtime has one thread: the deadline's timer can only fire while the store is
        // still stuck if the store's call is not running on it.
        let err = conversations.ethics_accepted("s".into()).await.unwrap_err();
        assert_eq!(err.operation, "ethics_accepted");
        assert!(err.detail.contains("no answer within 50 ms"), "{err}");
        assert_eq!(failures.with_label_values(&["ethics_accepted"]).get(), 1);
        release.send(()).unwrap();
        let refused = conversations.create("s".into(), "m".into()).await;
        assert!(matches!(refused, Err(CreateError::Unavailable(_))));
        assert_eq!(failures.with_label_values(&["create"]).get(), 1);
        release.send(()).unwrap();
    }
}
