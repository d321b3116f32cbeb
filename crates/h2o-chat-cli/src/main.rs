//! `h2o-chat`, the command-line face of the H2o provider: one-shot and interactive chat,
//! batch, and the embedded server. Thin over the library (`h2o-chat`) and the server
//! (`h2o-chat-server`).

mod batch;
mod catalog;
mod chat;
mod cli;
mod cli_error;
mod info;
mod local;
mod logbook;
mod logs;
mod serve;
mod setup;
mod upstreams;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use h2o_chat::Message;

use cli::EngineArgs;
use cli::{Cli, Command};
use cli_error::CliError;

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    cli.global.quiet |= cli.quiet_short;
    init_tracing(cli.global.verbose);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("h2o-chat: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("h2o-chat: {failure}");
            ExitCode::from(u8::try_from(failure.code()).unwrap_or(1))
        }
    }
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "h2o_chat=debug,h2o_chat_cli=debug,h2o_chat_server=info,h2o_chat_engine=info,warn",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("H2O_CHAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let global = &cli.global;
    match &cli.command {
        Command::Models => {
            info::models(&catalog::Files::of(&global.gguf, None)?);
            Ok(())
        }
        Command::Params => {
            info::params();
            Ok(())
        }
        Command::Serve(args) => serve::run(global, args).await,
        Command::Upstreams(args) => upstreams::run(&args.upstreams).await,
        Command::Chat(args) => {
            let prompt = chat::read_prompt(args.prompt.as_deref())?;
            let interactive =
                args.interactive || (prompt.is_none() && std::io::stdin().is_terminal());
            if prompt.is_none() && !interactive {
                return Err(CliError::Usage("no prompt: give one as an argument, pipe it on standard input, or run on a terminal for an interactive chat".into()));
            }
            if prompt.as_deref().is_some_and(|p| p.trim().is_empty()) {
                return Err(CliError::Usage("the prompt is empty".into()));
            }
            let conversation = logs::conversation_to_continue(args)?;
            let log = if global.no_log {
                None
            } else {
                logs::open_for_writing()
            };
            let parameters = setup::parameters(global, global.url.is_none())?;
            with_client(global, EngineArgs::one_slot(), |h2o, model| async move {
                let (id, continued) = match conversation {
                    Some((id, transcript)) => (id, Some(transcript)),
                    None => (uuid::Uuid::new_v4().to_string(), None),
                };
                let recorder = chat::Recorder::new(
                    log,
                    id,
                    h2o.url().to_string(),
                    serde_json::to_value(&parameters).ok(),
                );
                let result = match prompt {
                    Some(prompt) if !interactive => {
                        let (system, mut messages) = match continued {
                            Some(t) => (global.system.clone().or(t.system), t.messages),
                            None => (global.system.clone(), Vec::new()),
                        };
                        if let Some(system) = &system {
                            messages.insert(0, Message::system(system.clone()));
                        }
                        messages.push(Message::user(prompt.clone()));
                        let model_name = model.clone().unwrap_or_else(|| h2o.model().to_string());
                        let answer =
                            chat::stream_answer(&h2o, global, model.as_deref(), messages).await;
                        recorder.record(&prompt, system.as_deref(), Some(&model_name), &answer);
                        answer.map(|_| ())
                    }
                    _ => chat::interactive(&h2o, global, model, &recorder, continued).await,
                };
                h2o.wait_for_cleanup().await;
                result
            })
            .await
        }
        Command::Logs(args) => logs::run(args),
        Command::Batch(args) => {
            // One slot per concurrent prompt, up to the server's default.
            let knobs = EngineArgs::slots(args.concurrency.min(8));
            with_client(global, knobs, |h2o, model| async move {
                batch::run(&h2o, global, model, args).await
            })
            .await
        }
    }
}

/// Runs `work` with a client for `--url`, or for the embedded server started for it.
async fn with_client<F, Fut>(
    global: &cli::Global,
    knobs: EngineArgs,
    work: F,
) -> Result<(), CliError>
where
    F: FnOnce(h2o_chat::H2o, Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<(), CliError>>,
{
    match &global.url {
        Some(url) => {
            let h2o = setup::client(global, url, false)?;
            let model = setup::model(global, false)?;
            work(h2o, model).await
        }
        None => {
            let gguf = catalog::default_gguf(&global.gguf)?;
            let server = local::start(gguf, global.quiet, knobs).await?;
            let h2o = setup::client(global, &server.url(), true)?;
            let model = setup::model(global, true)?;
            let result = work(h2o, model).await;
            server.shutdown();
            result
        }
    }
}
