//! `h2o-chat serve`: the server on a chosen address until SIGINT or SIGTERM.
//!
//! It listens at once: `/health` answers 503 "loading" while the model is fetched and
//! loaded, then 200. The first SIGINT/SIGTERM drains — no new requests, running answers get
//! `--shutdown-timeout` to finish, then end with an error event — and a second signal exits
//! at once.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use h2o_chat_server::{
    Bounds, ROUTES, Server, ServerConfig, SqliteStore, Store, StoreBounds, Timeouts,
};

use crate::catalog;
use crate::cli::{Global, ServeArgs};
use crate::cli_error::CliError;
use crate::upstreams;

/// The exit code of a serve stopped by a second signal.
const FORCED_EXIT: i32 = 130;

pub async fn run(global: &Global, args: &ServeArgs) -> Result<(), CliError> {
    // Installed before anything else, so no signal is missed between the two stages.
    let mut signals = Signals::new()?;
    let shutdown_timeout = Duration::try_from_secs_f64(args.shutdown_timeout)
        .map_err(|_| CliError::Usage("--shutdown-timeout takes a number of seconds".into()))?;
    let pool = upstreams::pool(&args.upstreams)?;
    // Set by the first signal: a model still being fetched stops (pip is ended), so the
    // process exits within seconds instead of waiting for the download.
    let cancel_load = Arc::new(AtomicBool::new(false));
    let (models, served) = match &pool {
        Some(pool) => {
            pool.spawn_health_checks();
            (upstreams::registry(pool), None)
        }
        None => {
            let served = catalog::serve(&global.gguf, global.quiet, args, cancel_load.clone())?;
            (served.registry.clone(), Some(served))
        }
    };
    let config = ServerConfig {
        ethics_gate: !args.no_ethics_gate,
        rate_limit: args.rate_limit,
        public_origin: args.public_origin.clone(),
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        retention: args.retention.0,
        http2: args.http2,
        allowed_hosts: args.allowed_hosts.clone(),
        shared_prompt_cache: args.shared_prompt_cache,
        cors_origins: args.cors_origins.clone(),
        bounds: Bounds {
            max_connections: connection_cap(args.max_connections as usize),
            max_connections_per_client: args.max_connections_per_client as usize,
            store: StoreBounds {
                max_sessions: usize::try_from(args.max_sessions).unwrap_or(usize::MAX),
                ..StoreBounds::default()
            },
            ..Bounds::default()
        },
        timeouts: Timeouts {
            shutdown: shutdown_timeout,
            ..Timeouts::default()
        },
        ..ServerConfig::default()
    };
    let guarded = config.api_key.is_some();
    let lines = models.describe();
    let store = open_store(args.db.as_deref(), config.bounds.store)?;
    let server = Server::with_store(config, models, store);
    for collector in pool.iter().flat_map(h2o_chat_gateway::collectors) {
        server
            .register_metrics(collector)
            .map_err(|e| CliError::Other(format!("the gateway's metrics: {e}")))?;
    }
    let server = server
        .bind(&args.addr)
        .await
        .map_err(|e| CliError::Usage(format!("cannot listen on {}: {e}", args.addr)))?;
    eprintln!("h2o-chat serve: listening on {}", server.url());
    let routes: Vec<String> = ROUTES
        .iter()
        .map(|(family, paths)| format!("{family} ({})", paths.join(", ")))
        .collect();
    eprintln!("routes: {}", routes.join(", "));
    if guarded {
        eprintln!("API key required on the TGI, chat-ui and OpenAI routes");
    }
    eprintln!("models:");
    for line in lines {
        eprintln!("  {line}");
    }
    if pool.is_some() {
        eprintln!("gateway ready");
    } else if args.preload.is_empty() {
        eprintln!("loading now: the default model (the others load on their first request)");
    } else {
        eprintln!(
            "loading now: the default model, {}",
            args.preload.join(", ")
        );
    }
    // The default model, and those `--preload` names, load now; the others on their first
    // request. Each load's failure is its own model's (said once, here or in the log).
    let loader = served.map(|served| {
        served.fleet.spawn_keep_alive();
        let cancel = cancel_load.clone();
        tokio::task::spawn_blocking(move || {
            for model in std::iter::once(&served.default).chain(&served.preload) {
                if let Err(failure) = served.fleet.preload(model)
                    && !cancel.load(Ordering::Acquire)
                {
                    eprintln!("h2o-chat serve: {failure}");
                }
            }
        })
    });
    signals.next().await;
    eprintln!(
        "h2o-chat serve: shutting down (running answers have {} s; a second signal exits now)",
        shutdown_timeout.as_secs_f64()
    );
    cancel_load.store(true, Ordering::Release);
    server.shutdown();
    tokio::spawn(async move {
        signals.next().await;
        eprintln!("h2o-chat serve: second signal, exiting now");
        exit_now(FORCED_EXIT);
    });
    let served = server
        .wait()
        .await
        .map_err(|e| CliError::Other(format!("server error: {e}")));
    // A fetch or load still running ends now that it is cancelled; the runtime would wait for
    // it when the process exits.
    if let Some(loader) = loader {
        let _ = loader.await;
    }
    served
}

/// Files the process keeps open besides its connections: the model, the database and its
/// journal, logs, pipes, the runtime's own.
#[cfg(unix)]
const RESERVED_FILES: u64 = 64;

/// The connection cap within the process's open-file limit: the soft limit is raised to the
/// hard one first; a cap that still does not fit is lowered, with a warning, so that accepting
/// never fails for want of a file descriptor.
fn connection_cap(asked: usize) -> usize {
    #[cfg(unix)]
    {
        let limit = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(limit) => limit,
            Err(err) => {
                eprintln!("h2o-chat serve: cannot read the open-file limit ({err})");
                return asked;
            }
        };
        let fits = usize::try_from(limit.saturating_sub(RESERVED_FILES)).unwrap_or(usize::MAX);
        if asked > fits {
            eprintln!(
                "h2o-chat serve: the open-file limit is {limit}: --max-connections lowered from {asked} to {}",
                fits.max(1)
            );
            return fits.max(1);
        }
        asked
    }
    #[cfg(not(unix))]
    asked
}

/// The conversation store `--db` names: a SQLite file (default `serve.sqlite3` in the cache
/// directory), or `:memory:`.
fn open_store(db: Option<&Path>, bounds: StoreBounds) -> Result<Arc<dyn Store>, CliError> {
    let store = match db {
        Some(path) if path.as_os_str() == ":memory:" => SqliteStore::in_memory(bounds),
        Some(path) => SqliteStore::open(path, bounds),
        None => {
            let dir = h2o_chat_cli::home::create().map_err(|e| {
                CliError::Usage(format!(
                    "cannot create {}: {e}",
                    h2o_chat_cli::home::dir().display()
                ))
            })?;
            SqliteStore::open(&dir.join("serve.sqlite3"), bounds)
        }
    };
    let store = store.map_err(|e| CliError::Usage(format!("--db: {e}")))?;
    eprintln!("conversations: {}", store.location());
    Ok(Arc::new(store))
}

/// Ends the process at once, with `code`. Not `std::process::exit`: that runs llama.cpp's
/// static destructors while its scheduler thread may still be decoding, which can end the
/// process by a signal instead of `code`. What the store committed is on disk already;
/// stdout is flushed first (stderr is unbuffered).
fn exit_now(code: i32) -> ! {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    #[cfg(unix)]
    // SAFETY: `_exit` takes any status and does not return; it runs no destructors and
    // touches no state of this process.
    unsafe {
        libc::_exit(code)
    }
    #[cfg(not(unix))]
    std::process::exit(code)
}

/// SIGINT and SIGTERM, as one stream.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, CliError> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let install = |kind| {
                signal(kind).map_err(|e| CliError::Other(format!("cannot handle signals: {e}")))
            };
            Ok(Signals {
                interrupt: install(SignalKind::interrupt())?,
                terminate: install(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// The next SIGINT or SIGTERM.
    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
