//! Several models on one server, each loaded on its first request and unloaded when idle —
//! as ollama and llama.cpp's router serve every model a user has from one address.
//!
//! A [`Fleet`] holds the models; each is an [`Engine`] ([`OnDemand`]) the server serves like
//! any other. Its first request that needs the model (preparing a prompt needs its template
//! and tokenizer) loads it — that request waits, within [`FleetConfig::wait`], and so do
//! others that arrive meanwhile — unless it was loaded at start ([`Fleet::preload`]). A
//! model idle for [`FleetConfig::keep_alive`] is unloaded (its memory given back); before a
//! load, when [`FleetConfig::max_loaded`] models are loaded, or when the model would not fit
//! beside the loaded ones in [`FleetConfig::max_bytes`], the least recently used idle one is
//! unloaded to make room. A model with requests running is never unloaded: a load that finds
//! no idle model to unload waits for one, then fails as overloaded. A model that cannot load
//! (a model larger than the whole budget included) fails its own requests with the reason
//! (and is tried again after [`RETRY_FAILED`]), and the others keep serving.
//!
//! A model's size is what its engine reports once loaded ([`Engine::footprint`]: weights
//! and caches); before its first load, the size given with it ([`Fleet::add_sized`], its
//! file's size), the least it can take. A model that turns out larger than announced makes
//! room after its load, by the same rule.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use h2o_chat_engine::{Engine, Fleet, FleetConfig, Script, ScriptedEngine};
//!
//! let fleet = Fleet::new(FleetConfig { keep_alive: Some(Duration::from_secs(300)), max_loaded: 1, ..FleetConfig::default() });
//! let a = fleet.add("a", Box::new(|| Ok(Arc::new(ScriptedEngine::new(Script::default())) as Arc<dyn Engine>)));
//! let b = fleet.add("b", Box::new(|| Ok(Arc::new(ScriptedEngine::new(Script::default())) as Arc<dyn Engine>)));
//! assert!(!a.is_loaded());
//! a.render_chat(&[]).unwrap();      // loads a
//! assert!(a.is_loaded());
//! b.render_chat(&[]).unwrap();      // one at most: a (idle) makes room for b
//! assert!(!a.is_loaded() && b.is_loaded());
//! ```

use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::constraint::Constraint;
use crate::engine::{Engine, EngineInfo, EngineStats, Generation, Health};
use crate::error::EngineError;
use crate::prompt::{ChatTurn, Prompt};
use crate::request::{GenerationRequest, Tokenized};

/// Loads one model (fetching it first if need be): the engine, or why not.
pub type Loader = Box<dyn Fn() -> Result<Arc<dyn Engine>, String> + Send + Sync>;

/// How a fleet keeps its models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetConfig {
    /// Idle time after which a model is unloaded; `None` never unloads. Zero unloads a
    /// model as soon as its last request ends (within [`GRACE`]).
    pub keep_alive: Option<Duration>,
    /// Models loaded at once.
    pub max_loaded: usize,
    /// How long a request waits for its model to load, or for room to load it.
    pub wait: Duration,
    /// Bytes the loaded models may hold together; `None` for no bound but `max_loaded`.
    pub max_bytes: Option<u64>,
}

impl Default for FleetConfig {
    /// ollama's five minutes, three models, two minutes' wait.
    fn default() -> Self {
        FleetConfig {
            keep_alive: Some(Duration::from_secs(300)),
            max_loaded: 3,
            wait: Duration::from_secs(120),
            max_bytes: None,
        }
    }
}

/// A model used this recently is not unloaded, whatever its keep-alive: the request that
/// just prepared its prompt is about to start it.
pub const GRACE: Duration = Duration::from_secs(1);

/// Where a model stands.
enum State {
    Unloaded,
    Loading,
    Loaded(Arc<dyn Engine>),
    /// Why it could not load, and when: tried again after [`RETRY_FAILED`].
    Failed(String, Instant),
}

const MB: u64 = 1024 * 1024;

/// How long a model that failed to load answers with its failure before it is tried again
/// (a download or memory shortage may pass; a corrupt file fails again, cheaply).
pub const RETRY_FAILED: Duration = Duration::from_secs(30);

struct Member {
    name: String,
    /// Shared, so that it is called without the fleet's lock.
    loader: Arc<dyn Fn() -> Result<Arc<dyn Engine>, String> + Send + Sync>,
    state: State,
    last_used: Instant,
    in_flight: usize,
    /// What the model said of itself when last loaded (its limits stay known unloaded).
    info: Option<EngineInfo>,
    /// Its size before its first load (see the module docs).
    announced: u64,
    /// Its size as its engine reported it when last loaded.
    footprint: Option<u64>,
}

impl Member {
    /// The bytes it takes, or will take, loaded.
    fn size(&self) -> u64 {
        self.footprint.unwrap_or(self.announced)
    }

    fn holds_memory(&self) -> bool {
        matches!(self.state, State::Loaded(_) | State::Loading)
    }
}

/// The models and what the fleet remembers of them. See the module docs.
pub struct Fleet {
    config: FleetConfig,
    members: Mutex<Vec<Member>>,
    changed: Condvar,
}

/// One model of a fleet, as an [`Engine`].
pub struct OnDemand {
    fleet: Arc<Fleet>,
    index: usize,
}

impl Fleet {
    pub fn new(config: FleetConfig) -> Arc<Fleet> {
        Arc::new(Fleet {
            config,
            members: Mutex::new(Vec::new()),
            changed: Condvar::new(),
        })
    }

    pub fn config(&self) -> FleetConfig {
        self.config
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Member>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A model named `name`, loaded by `loader` when first needed.
    pub fn add(self: &Arc<Self>, name: impl Into<String>, loader: Loader) -> Arc<OnDemand> {
        self.add_sized(name, 0, loader)
    }

    /// The same, announcing the bytes it takes at least once loaded (its file's size), for
    /// the memory budget before it first loads.
    pub fn add_sized(
        self: &Arc<Self>,
        name: impl Into<String>,
        announced: u64,
        loader: Loader,
    ) -> Arc<OnDemand> {
        let mut members = self.lock();
        members.push(Member {
            name: name.into(),
            loader: Arc::from(loader),
            state: State::Unloaded,
            last_used: Instant::now(),
            in_flight: 0,
            info: None,
            announced,
            footprint: None,
        });
        Arc::new(OnDemand {
            fleet: self.clone(),
            index: members.len() - 1,
        })
    }

    /// Loads a model now (at start: `--preload`); its failure is its own.
    pub fn preload(&self, model: &OnDemand) -> Result<(), EngineError> {
        self.acquire(model.index).map(drop)
    }

    /// The model's engine, loading it first if need be (blocking; see the module docs).
    fn acquire(&self, index: usize) -> Result<Arc<dyn Engine>, EngineError> {
        let deadline = Instant::now() + self.config.wait;
        let mut members = self.lock();
        loop {
            let member = &mut members[index];
            match &member.state {
                State::Loaded(engine) => {
                    member.last_used = Instant::now();
                    return Ok(engine.clone());
                }
                State::Failed(_, at) if at.elapsed() >= RETRY_FAILED => {
                    member.state = State::Unloaded;
                }
                State::Failed(reason, _) => {
                    return Err(EngineError::Stopped(format!(
                        "{} could not be loaded: {reason}",
                        member.name
                    )));
                }
                State::Loading => {
                    let name = member.name.clone();
                    members =
                        self.wait(members, deadline, || format!("{name} is still loading"))?;
                }
                State::Unloaded => {
                    // Refused outright only when its file alone exceeds the budget: a model
                    // that has loaded before but whose caches took it over the budget still
                    // loads alone (every other model idle unloaded first), as it did then.
                    let announced = members[index].announced;
                    if let Some(budget) = self.config.max_bytes
                        && announced > budget
                    {
                        let reason = format!(
                            "its file takes {} MB, more than the memory budget of {} MB",
                            announced.div_ceil(MB),
                            budget / MB
                        );
                        tracing::error!(model = %members[index].name, %reason, "the model cannot be loaded");
                        let message =
                            format!("{} could not be loaded: {reason}", members[index].name);
                        members[index].state = State::Failed(reason, Instant::now());
                        return Err(EngineError::Stopped(message));
                    }
                    let others = || {
                        members
                            .iter()
                            .enumerate()
                            .filter(|(i, m)| *i != index && m.holds_memory())
                    };
                    let busy = others().count();
                    let held: u64 = others().map(|(_, m)| m.size()).sum();
                    let need = members[index].size();
                    let over_budget = self.config.max_bytes.is_some_and(|budget| {
                        held > 0 && held.saturating_add(need.min(budget)) > budget
                    });
                    if busy >= self.config.max_loaded.max(1) || over_budget {
                        match least_recently_used_idle(&members, index) {
                            Some(victim) => {
                                let engine = unload(&mut members[victim]);
                                drop(members);
                                drop(engine);
                                members = self.lock();
                            }
                            // Looked at again when a request ends, or when a recently used
                            // model's grace has passed.
                            None => {
                                if Instant::now() >= deadline {
                                    tracing::warn!(model = %members[index].name, "every loaded model is busy; none can make room");
                                    return Err(EngineError::Overloaded);
                                }
                                members =
                                    self.wait_at_most(members, deadline, GRACE / 4, || {
                                        "every loaded model is busy; none can make room".to_string()
                                    })?;
                            }
                        }
                        continue;
                    }
                    members[index].state = State::Loading;
                    let name = members[index].name.clone();
                    let loader = members[index].loader.clone();
                    tracing::info!(model = %name, "loading the model for its first request");
                    let started = Instant::now();
                    // Loaded without the fleet's lock: the other models keep serving.
                    drop(members);
                    let loaded =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loader()))
                            .unwrap_or_else(|_| Err("the loader panicked".into()));
                    members = self.lock();
                    let member = &mut members[index];
                    match loaded {
                        Ok(engine) => {
                            member.info = Some(engine.info());
                            member.footprint = engine.footprint().or(member.footprint);
                            member.last_used = Instant::now();
                            member.state = State::Loaded(engine);
                            tracing::info!(model = %name, load_ms = started.elapsed().as_millis(), bytes = member.size(), "model loaded");
                            let unloaded = self.fit_budget(&mut members, index);
                            if !unloaded.is_empty() {
                                drop(members);
                                drop(unloaded);
                                members = self.lock();
                            }
                        }
                        Err(reason) => {
                            tracing::error!(model = %name, %reason, "the model could not be loaded");
                            member.state = State::Failed(reason, Instant::now());
                        }
                    }
                    self.changed.notify_all();
                }
            }
        }
    }

    /// After `index` loaded larger than it was announced: unloads the least recently used
    /// idle others until the loaded models fit the budget again (their engines, to be
    /// dropped once the lock is released). Busy ones stay: the budget is then over until
    /// they end, which the log says.
    fn fit_budget(&self, members: &mut [Member], index: usize) -> Vec<Arc<dyn Engine>> {
        let Some(budget) = self.config.max_bytes else {
            return Vec::new();
        };
        let mut unloaded = Vec::new();
        loop {
            let held: u64 = members
                .iter()
                .filter(|m| m.holds_memory())
                .map(Member::size)
                .sum();
            if held <= budget {
                return unloaded;
            }
            match least_recently_used_idle(members, index) {
                Some(victim) => {
                    tracing::info!(model = %members[victim].name, "unloading the model (memory budget)");
                    unloaded.extend(unload(&mut members[victim]));
                }
                None => {
                    tracing::warn!(
                        held_mb = held / MB,
                        budget_mb = budget / MB,
                        "the loaded models exceed the memory budget; none is idle to unload"
                    );
                    return unloaded;
                }
            }
        }
    }

    /// Waits for any change until `deadline`; the error `why` describes past it.
    fn wait<'a>(
        &'a self,
        members: MutexGuard<'a, Vec<Member>>,
        deadline: Instant,
        why: impl FnOnce() -> String,
    ) -> Result<MutexGuard<'a, Vec<Member>>, EngineError> {
        self.wait_at_most(members, deadline, Duration::MAX, why)
    }

    /// The same, waking after `step` at the latest.
    fn wait_at_most<'a>(
        &'a self,
        members: MutexGuard<'a, Vec<Member>>,
        deadline: Instant,
        step: Duration,
        why: impl FnOnce() -> String,
    ) -> Result<MutexGuard<'a, Vec<Member>>, EngineError> {
        let now = Instant::now();
        if now >= deadline {
            return Err(EngineError::Stopped(why()));
        }
        let (members, _) = self
            .changed
            .wait_timeout(members, (deadline - now).min(step))
            .unwrap_or_else(|e| e.into_inner());
        Ok(members)
    }

    /// Unloads the models idle past their keep-alive (see [`Fleet::spawn_keep_alive`]).
    pub fn unload_idle(&self) -> usize {
        let Some(keep_alive) = self.config.keep_alive else {
            return 0;
        };
        let keep_alive = keep_alive.max(GRACE);
        let now = Instant::now();
        let mut members = self.lock();
        let mut unloaded = Vec::new();
        for member in members.iter_mut() {
            if matches!(member.state, State::Loaded(_))
                && member.in_flight == 0
                && now.duration_since(member.last_used) >= keep_alive
            {
                tracing::info!(model = %member.name, "unloading the model (idle)");
                unloaded.extend(unload(member));
            }
        }
        let count = unloaded.len();
        if count > 0 {
            self.changed.notify_all();
        }
        drop(members);
        drop(unloaded);
        count
    }

    /// Checks the keep-alives every quarter second, for as long as the fleet lives.
    pub fn spawn_keep_alive(self: &Arc<Self>) {
        if self.config.keep_alive.is_none() {
            return;
        }
        let fleet: Weak<Fleet> = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("h2o-chat-keep-alive".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(250));
                    let Some(fleet) = fleet.upgrade() else { return };
                    fleet.unload_idle();
                }
            });
        if let Err(err) = spawned {
            tracing::error!(%err, "cannot start the keep-alive thread: models stay loaded");
        }
    }

    /// How many models are loaded now.
    pub fn loaded(&self) -> usize {
        self.lock()
            .iter()
            .filter(|m| matches!(m.state, State::Loaded(_)))
            .count()
    }

    fn finished(&self, index: usize) {
        let mut members = self.lock();
        let member = &mut members[index];
        member.in_flight = member.in_flight.saturating_sub(1);
        member.last_used = Instant::now();
        self.changed.notify_all();
    }
}

/// Unloads a member: its engine, to be dropped once the lock is released.
fn unload(member: &mut Member) -> Option<Arc<dyn Engine>> {
    match std::mem::replace(&mut member.state, State::Unloaded) {
        State::Loaded(engine) => Some(engine),
        other => {
            member.state = other;
            None
        }
    }
}

/// The loaded model, other than `except`, idle and least recently used.
fn least_recently_used_idle(members: &[Member], except: usize) -> Option<usize> {
    let now = Instant::now();
    members
        .iter()
        .enumerate()
        .filter(|(i, m)| {
            *i != except
                && matches!(m.state, State::Loaded(_))
                && m.in_flight == 0
                && now.duration_since(m.last_used) >= GRACE
        })
        .min_by_key(|(_, m)| m.last_used)
        .map(|(i, _)| i)
}

impl OnDemand {
    /// Whether the model is loaded now.
    pub fn is_loaded(&self) -> bool {
        matches!(self.fleet.lock()[self.index].state, State::Loaded(_))
    }

    /// Its engine if loaded now, without counting as a use (`/metrics` reads it).
    fn peek(&self) -> Option<Arc<dyn Engine>> {
        match &self.fleet.lock()[self.index].state {
            State::Loaded(engine) => Some(engine.clone()),
            _ => None,
        }
    }

    /// Its engine if loaded now (never loads: for callers on the async runtime).
    fn loaded_now(&self) -> Option<Arc<dyn Engine>> {
        let mut members = self.fleet.lock();
        let member = &mut members[self.index];
        match &member.state {
            State::Loaded(engine) => {
                member.last_used = Instant::now();
                Some(engine.clone())
            }
            _ => None,
        }
    }

    fn engine(&self) -> Result<Arc<dyn Engine>, EngineError> {
        self.fleet.acquire(self.index)
    }
}

impl Engine for OnDemand {
    fn info(&self) -> EngineInfo {
        let members = self.fleet.lock();
        let member = &members[self.index];
        if let State::Loaded(engine) = &member.state {
            return engine.info();
        }
        let mut info = member.info.clone().unwrap_or_else(|| EngineInfo {
            model_id: member.name.clone(),
            backend: String::new(),
            compute_type: "cpu+llama.cpp".into(),
            dtype: "gguf".into(),
            device: "cpu".into(),
            context_length: 0,
            slots: 0,
            batch_total_tokens: 0,
        });
        info.backend = match &member.state {
            State::Failed(reason, _) => format!("failed to load: {reason}"),
            State::Loading => "loading".into(),
            _ => "not loaded: loads on its first request".into(),
        };
        info
    }

    /// Ready while it can answer: loaded, or loadable on demand.
    fn health(&self) -> Health {
        let members = self.fleet.lock();
        match &members[self.index].state {
            State::Loaded(engine) => engine.health(),
            State::Unloaded => Health::Ready,
            State::Loading => Health::Loading,
            State::Failed(reason, _) => Health::Failed(reason.clone()),
        }
    }

    /// The loaded engine's figures; zeros while unloaded (a reloaded model counts anew).
    /// Reading them is not a use: a scraped model still unloads when idle.
    fn stats(&self) -> Option<EngineStats> {
        Some(
            self.peek()
                .and_then(|engine| engine.stats())
                .unwrap_or_default(),
        )
    }

    fn is_loaded(&self) -> bool {
        OnDemand::is_loaded(self)
    }

    fn load(&self) -> Result<(), EngineError> {
        self.engine().map(drop)
    }

    fn render_chat(&self, turns: &[ChatTurn]) -> Result<Prompt, EngineError> {
        self.engine()?.render_chat(turns)
    }

    fn render_chat_with_tools(
        &self,
        turns: &[ChatTurn],
        tools: &crate::ToolUse,
    ) -> Result<Option<Prompt>, EngineError> {
        self.engine()?.render_chat_with_tools(turns, tools)
    }

    fn tokenize(&self, prompt: &Prompt) -> Result<Tokenized, EngineError> {
        self.engine()?.tokenize(prompt)
    }

    fn detokenize(&self, ids: &[u32]) -> Option<String> {
        self.loaded_now()?.detokenize(ids)
    }

    fn check_constraint(&self, constraint: &Constraint) -> Result<(), EngineError> {
        self.engine()?.check_constraint(constraint)
    }

    /// Starts on the loaded model (the request's preparation loaded it), counted in flight
    /// until its events end, so that it is never unloaded under a running request.
    fn start(&self, request: GenerationRequest) -> Result<Generation, EngineError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| EngineError::Stopped("a model on demand needs a tokio runtime".into()))?;
        let engine = {
            let mut members = self.fleet.lock();
            let member = &mut members[self.index];
            let State::Loaded(engine) = &member.state else {
                return Err(EngineError::Stopped(format!(
                    "{} was unloaded before its request started; try again",
                    member.name
                )));
            };
            let engine = engine.clone();
            member.in_flight += 1;
            member.last_used = Instant::now();
            engine
        };
        let in_flight = InFlight {
            fleet: self.fleet.clone(),
            index: self.index,
        };
        let inner = match engine.start(request) {
            Ok(generation) => generation.events,
            Err(err) => return Err(err),
        };
        let (sender, events) = mpsc::channel(64);
        runtime.spawn(async move {
            let _in_flight = in_flight;
            // Declared after `_in_flight`, so dropped before it on every path (a return, or
            // the task dropped when the runtime ends): this task may hold the last user of
            // the model, and an engine's drop waits for its running sequences, which wait
            // for their reader to go.
            let mut inner = inner;
            loop {
                let event = tokio::select! {
                    event = inner.recv() => event,
                    () = sender.closed() => return,
                };
                let Some(event) = event else { return };
                if sender.send(event).await.is_err() {
                    return;
                }
            }
        });
        Ok(Generation { events })
    }
}

/// A request running on a model: ends its count when dropped.
struct InFlight {
    fleet: Arc<Fleet>,
    index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.fleet.finished(self.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scripted::{Script, ScriptGate, ScriptedEngine};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counted_loader(loads: Arc<AtomicUsize>, script: Script) -> Loader {
        Box::new(move || {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok(Arc::new(ScriptedEngine::new(script.clone())) as Arc<dyn Engine>)
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_model_is_never_unloaded_to_make_room() {
        let fleet = Fleet::new(FleetConfig {
            keep_alive: None,
            max_loaded: 1,
            wait: Duration::from_millis(300),
            max_bytes: None,
        });
        let gate = ScriptGate::new();
        let loads = Arc::new(AtomicUsize::new(0));
        let script = Script {
            gate: Some(gate.clone()),
            ..Script::default()
        };
        let a = fleet.add("a", counted_loader(loads.clone(), script));
        let b = fleet.add("b", counted_loader(loads.clone(), Script::default()));
        a.render_chat(&[]).unwrap();
        let running = a
            .start(GenerationRequest::new(Prompt::raw("Hi"), 4))
            .unwrap();
        // b cannot load: a is busy, and one model at most is loaded.
        let refused = tokio::task::spawn_blocking({
            let b = b.clone();
            move || b.render_chat(&[])
        })
        .await
        .unwrap();
        assert!(
            matches!(refused, Err(EngineError::Overloaded)),
            "{refused:?}"
        );
        assert!(a.is_loaded() && !b.is_loaded());
        // Once a's request ends (and the grace passes), b loads in a's place.
        gate.release(100);
        drop(running);
        std::thread::sleep(GRACE + Duration::from_millis(100));
        let loaded = tokio::task::spawn_blocking({
            let b = b.clone();
            move || b.render_chat(&[]).map(drop)
        })
        .await
        .unwrap();
        assert!(loaded.is_ok(), "{loaded:?}");
        assert!(!a.is_loaded() && b.is_loaded());
        assert_eq!(loads.load(Ordering::SeqCst), 2);
    }

    /// A model whose drop records whether the reader of its one generation was gone by then.
    struct Holding {
        script: ScriptedEngine,
        writer: std::sync::Mutex<Option<mpsc::Sender<crate::request::GenerationEvent>>>,
        reader_gone_at_drop: Arc<std::sync::Mutex<Option<bool>>>,
    }

    impl Engine for Holding {
        fn info(&self) -> EngineInfo {
            self.script.info()
        }
        fn render_chat(&self, turns: &[ChatTurn]) -> Result<Prompt, EngineError> {
            self.script.render_chat(turns)
        }
        fn tokenize(&self, prompt: &Prompt) -> Result<Tokenized, EngineError> {
            self.script.tokenize(prompt)
        }
        fn start(&self, _: GenerationRequest) -> Result<Generation, EngineError> {
            let (writer, events) = mpsc::channel(4);
            if let Ok(mut held) = self.writer.lock() {
                *held = Some(writer);
            }
            Ok(Generation { events })
        }
    }

    impl Drop for Holding {
        fn drop(&mut self) {
            let gone = self
                .writer
                .lock()
                .ok()
                .and_then(|held| held.as_ref().map(mpsc::Sender::is_closed));
            if let Ok(mut seen) = self.reader_gone_at_drop.lock() {
                *seen = gone;
            }
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_last_user_of_a_model_lets_go_of_its_reader_before_the_engine() {
        // A real engine's drop waits for its running sequences, and they for their reader:
        // the task relaying a generation, when it holds the model's last user, must drop
        // the engine's reader first, or the drop waits for a reader it holds itself.
        let seen = Arc::new(std::sync::Mutex::new(None));
        let fleet = Fleet::new(FleetConfig {
            keep_alive: None,
            ..FleetConfig::default()
        });
        let model = fleet.add("a", {
            let seen = seen.clone();
            Box::new(move || {
                Ok(Arc::new(Holding {
                    script: ScriptedEngine::new(Script::default()),
                    writer: std::sync::Mutex::new(None),
                    reader_gone_at_drop: seen.clone(),
                }) as Arc<dyn Engine>)
            })
        });
        model.render_chat(&[]).unwrap();
        let generation = model
            .start(GenerationRequest::new(Prompt::raw("Hi"), 4))
            .unwrap();
        // The client leaves, and every other holder of the model goes: the relay, on its
        // next turn, is the last.
        drop(generation);
        drop(model);
        drop(fleet);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(*seen.lock().unwrap(), Some(true));
    }

    /// A scripted model that says it holds `bytes`.
    struct Weighing(ScriptedEngine, u64);

    impl Engine for Weighing {
        fn info(&self) -> EngineInfo {
            self.0.info()
        }
        fn footprint(&self) -> Option<u64> {
            Some(self.1)
        }
        fn render_chat(&self, turns: &[ChatTurn]) -> Result<Prompt, EngineError> {
            self.0.render_chat(turns)
        }
        fn tokenize(&self, prompt: &Prompt) -> Result<Tokenized, EngineError> {
            self.0.tokenize(prompt)
        }
        fn start(&self, request: GenerationRequest) -> Result<Generation, EngineError> {
            self.0.start(request)
        }
    }

    fn weighing(loads: Arc<AtomicUsize>, bytes: u64) -> Loader {
        Box::new(move || {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok(
                Arc::new(Weighing(ScriptedEngine::new(Script::default()), bytes))
                    as Arc<dyn Engine>,
            )
        })
    }

    fn budget(bytes: u64) -> Arc<Fleet> {
        Fleet::new(FleetConfig {
            keep_alive: None,
            max_bytes: Some(bytes),
            ..FleetConfig::default()
        })
    }

    #[test]
    fn the_memory_budget_unloads_the_idle_model_the_next_does_not_fit_beside() {
        let fleet = budget(100 * MB);
        let loads = Arc::new(AtomicUsize::new(0));
        let a = fleet.add("a", weighing(loads.clone(), 60 * MB));
        // Whether a was still loaded while b loaded.
        let beside = Arc::new(std::sync::Mutex::new(None));
        let b = fleet.add_sized("b", 60 * MB, {
            let (a, beside, inner) = (a.clone(), beside.clone(), weighing(loads.clone(), 60 * MB));
            Box::new(move || {
                *beside.lock().unwrap() = Some(a.is_loaded());
                inner()
            })
        });
        let c = fleet.add_sized("c", 30 * MB, weighing(loads.clone(), 30 * MB));
        a.render_chat(&[]).unwrap();
        std::thread::sleep(GRACE + Duration::from_millis(50));
        // 60 + 60 > 100: a, idle, makes room for b before b loads (three models may be
        // loaded by count).
        b.render_chat(&[]).unwrap();
        assert_eq!(*beside.lock().unwrap(), Some(false), "a was unloaded first");
        assert!(!a.is_loaded() && b.is_loaded());
        // 60 + 30 fits: both stay.
        c.render_chat(&[]).unwrap();
        assert!(b.is_loaded() && c.is_loaded());
        assert_eq!(loads.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_model_larger_than_the_whole_budget_fails_alone_without_loading() {
        let fleet = budget(100 * MB);
        let loads = Arc::new(AtomicUsize::new(0));
        let big = fleet.add_sized("big", 150 * MB, weighing(loads.clone(), 150 * MB));
        let small = fleet.add("small", weighing(loads.clone(), 10 * MB));
        let err = big.render_chat(&[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("more than the memory budget of 100 MB"),
            "{err}"
        );
        assert!(matches!(big.health(), Health::Failed(_)));
        assert_eq!(loads.load(Ordering::SeqCst), 0, "never tried");
        small.render_chat(&[]).unwrap();
        assert!(small.is_loaded());
    }

    #[test]
    fn a_model_whose_caches_exceed_the_budget_loads_again_alone() {
        let fleet = Fleet::new(FleetConfig {
            keep_alive: Some(Duration::ZERO),
            max_bytes: Some(100 * MB),
            ..FleetConfig::default()
        });
        let loads = Arc::new(AtomicUsize::new(0));
        // Its file fits; with its caches it takes more than the whole budget.
        let a = fleet.add_sized("a", 50 * MB, weighing(loads.clone(), 150 * MB));
        let b = fleet.add("b", weighing(loads.clone(), 10 * MB));
        a.render_chat(&[]).unwrap();
        std::thread::sleep(GRACE + Duration::from_millis(50));
        assert_eq!(fleet.unload_idle(), 1);
        b.render_chat(&[]).unwrap();
        std::thread::sleep(GRACE + Duration::from_millis(50));
        // Not refused for good: it loads again, alone (b, idle, unloaded first).
        a.render_chat(&[]).unwrap();
        assert!(a.is_loaded() && !b.is_loaded());
        assert_eq!(loads.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_model_larger_than_announced_makes_room_after_its_load() {
        let fleet = budget(100 * MB);
        let loads = Arc::new(AtomicUsize::new(0));
        let a = fleet.add("a", weighing(loads.clone(), 60 * MB));
        // Announced as 10 MB (its file), it takes 60 once loaded.
        let b = fleet.add_sized("b", 10 * MB, weighing(loads.clone(), 60 * MB));
        a.render_chat(&[]).unwrap();
        std::thread::sleep(GRACE + Duration::from_millis(50));
        b.render_chat(&[]).unwrap();
        assert!(b.is_loaded());
        assert!(
            !a.is_loaded(),
            "a, idle, was unloaded once b's size was known"
        );
        // Known now: b's next load counts its 60 MB.
        assert_eq!(fleet.lock()[1].size(), 60 * MB);
    }

    #[test]
    fn idle_models_unload_after_their_keep_alive_and_load_again_when_asked() {
        let fleet = Fleet::new(FleetConfig {
            keep_alive: Some(Duration::ZERO),
            ..FleetConfig::default()
        });
        let loads = Arc::new(AtomicUsize::new(0));
        let a = fleet.add("a", counted_loader(loads.clone(), Script::default()));
        a.render_chat(&[]).unwrap();
        assert_eq!(fleet.unload_idle(), 0, "within the grace");
        std::thread::sleep(GRACE + Duration::from_millis(50));
        assert_eq!(fleet.unload_idle(), 1);
        assert!(!a.is_loaded());
        a.render_chat(&[]).unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_loader_that_panics_fails_its_model_instead_of_leaving_it_loading() {
        let fleet = Fleet::new(FleetConfig {
            max_loaded: 1,
            ..FleetConfig::default()
        });
        let broken = fleet.add("broken", Box::new(|| panic!("the GGUF reader fell over")));
        let fine = fleet.add(
            "fine",
            counted_loader(Arc::new(AtomicUsize::new(0)), Script::default()),
        );
        let err = broken.render_chat(&[]).unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
        // Not stuck "loading": it holds no place, and the other model loads at once.
        assert!(matches!(broken.health(), Health::Failed(_)));
        assert!(fine.render_chat(&[]).is_ok());
    }

    #[test]
    fn a_model_that_cannot_load_fails_only_its_own_requests() {
        let fleet = Fleet::new(FleetConfig::default());
        let broken = fleet.add("broken", Box::new(|| Err("not a GGUF".into())));
        let fine = fleet.add(
            "fine",
            counted_loader(Arc::new(AtomicUsize::new(0)), Script::default()),
        );
        let err = broken.render_chat(&[]).unwrap_err();
        assert!(err.to_string().contains("not a GGUF"), "{err}");
        assert!(matches!(broken.health(), Health::Failed(_)));
        assert!(fine.render_chat(&[]).is_ok());
        assert_eq!(fine.health(), Health::Ready);
    }
}
