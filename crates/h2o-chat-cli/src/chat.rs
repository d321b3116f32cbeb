//! `h2o-chat chat`: one-shot streaming, or an interactive multi-turn chat.
//!
//! stdout carries only the answer (or NDJSON events with `--json`), byte for byte as
//! streamed and flushed per token; everything else goes to stderr.

use std::io::{IsTerminal, Read, Write};

use futures_util::StreamExt;
use h2o_chat::{Error, Event, H2o, Message};
use serde_json::json;

use crate::cli::Global;
use crate::cli_error::CliError;
use crate::logbook::{Exchange, Logbook, Transcript, now_ms};

/// The prompt from the argument and/or standard input.
pub fn read_prompt(arg: Option<&str>) -> Result<Option<String>, CliError> {
    let stdin = std::io::stdin();
    let piped = arg == Some("-") || (!stdin.is_terminal() && arg.is_some());
    let mut input = String::new();
    if piped {
        stdin
            .lock()
            .read_to_string(&mut input)
            .map_err(|e| CliError::Usage(format!("cannot read standard input: {e}")))?;
    }
    let input = input.trim_end_matches(['\n', '\r']);
    Ok(match arg {
        Some("-") => Some(input.to_string()),
        Some(prompt) if input.is_empty() => Some(prompt.to_string()),
        Some(prompt) => Some(format!("{prompt}\n\n{input}")),
        None => None,
    })
}

/// Events taken at once from the stream: everything already received, up to this many.
const COALESCE: usize = 4096;

/// Writes one token: its text, or its NDJSON line (with the alternatives at its position,
/// when `-p top_n_tokens=N` asked for them).
fn write_token(
    out: &mut Vec<u8>,
    json_mode: bool,
    token: &h2o_chat::Token,
    top: Vec<h2o_chat::Token>,
) {
    if json_mode {
        let mut line = json!({"type": "token", "id": token.id, "text": token.text, "logprob": token.logprob, "special": token.special});
        if !top.is_empty() {
            line["top_tokens"] = json!(top);
        }
        let _ = serde_json::to_writer(&mut *out, &line);
        out.push(b'\n');
    } else if !token.special {
        out.extend_from_slice(token.text.as_bytes());
    }
}

/// An answer that reached stdout whole.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub text: String,
    pub finish_reason: Option<String>,
    /// Tokens received, the final one included.
    pub tokens: usize,
    pub first_token_ms: Option<u128>,
    pub total_ms: u128,
}

/// Streams one answer to stdout.
///
/// Tokens are written as they arrive, but what has already arrived is written together:
/// one write and one flush per network chunk, not per token.
pub async fn stream_answer(
    h2o: &H2o,
    global: &Global,
    model: Option<&str>,
    messages: Vec<Message>,
) -> Result<Reply, CliError> {
    let mut request = h2o.request(messages);
    if let Some(model) = model {
        request = request.model(model);
    }
    let started = std::time::Instant::now();
    let mut stdout = std::io::stdout().lock();
    let mut text = String::new();
    let events = match request.events().await {
        Ok(events) => events,
        Err(err) => return Err(report(&mut stdout, global, err, &text)),
    };
    let mut batches = events.ready_chunks(COALESCE);
    let mut out: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut first_token = None;
    let mut tokens = 0usize;
    // The alternatives of the token that comes next.
    let mut top = Vec::new();
    while let Some(batch) = batches.next().await {
        for event in batch {
            match event {
                Ok(Event::Token(token)) => {
                    tokens += 1;
                    first_token.get_or_insert_with(|| started.elapsed());
                    write_token(&mut out, global.json, &token, std::mem::take(&mut top));
                    if !token.special {
                        text.push_str(&token.text);
                    }
                }
                Ok(Event::Final(final_event)) => {
                    let final_text = match &final_event.token {
                        Some(token) if !token.special => token.text.clone(),
                        None if text.is_empty() => final_event.generated_text.clone(),
                        _ => String::new(),
                    };
                    text.push_str(&final_text);
                    if global.json {
                        if let Some(token) = &final_event.token {
                            write_token(&mut out, true, token, std::mem::take(&mut top));
                        }
                        let line = json!({"type": "final", "generated_text": final_event.generated_text, "details": final_event.details});
                        let _ = serde_json::to_writer(&mut out, &line);
                        out.push(b'\n');
                    } else {
                        out.extend_from_slice(final_text.as_bytes());
                        out.push(b'\n');
                    }
                    stdout.write_all(&out)?;
                    stdout.flush()?;
                    tracing::info!(
                        first_token_ms = first_token.map(|d| d.as_millis()),
                        total_ms = started.elapsed().as_millis(),
                        "answer complete"
                    );
                    return Ok(Reply {
                        text,
                        finish_reason: final_event
                            .details
                            .map(|d| d.finish_reason.as_str().to_string()),
                        tokens: tokens + usize::from(final_event.token.is_some()),
                        first_token_ms: first_token.map(|d| d.as_millis()),
                        total_ms: started.elapsed().as_millis(),
                    });
                }
                Ok(Event::Alternatives(given)) => top = given,
                Ok(Event::Error(err)) => {
                    stdout.write_all(&out)?;
                    let err = Error::Stream {
                        error_type: err.error_type,
                        message: err.error,
                        partial: text.clone(),
                    };
                    return Err(report(&mut stdout, global, err, &text));
                }
                Err(err) => {
                    stdout.write_all(&out)?;
                    return Err(report(&mut stdout, global, err, &text));
                }
            }
        }
        stdout.write_all(&out)?;
        stdout.flush()?;
        out.clear();
    }
    Err(report(
        &mut stdout,
        global,
        Error::Incomplete {
            partial: text.clone(),
            cause: None,
        },
        &text,
    ))
}

/// Ends the partial line (text mode) or writes the error event (JSON mode).
fn report(stdout: &mut impl Write, global: &Global, err: Error, partial: &str) -> CliError {
    if global.json {
        let kind = format!("{:?}", err.kind()).to_lowercase();
        let _ = writeln!(
            stdout,
            "{}",
            json!({"type": "error", "kind": kind, "message": err.to_string(), "partial": partial})
        );
    } else if !partial.is_empty() {
        let _ = stdout.write_all(b"\n");
    }
    let _ = stdout.flush();
    CliError::Provider(err)
}

const HELP: &str = "commands: /system TEXT  /model NAME  /reset  /save FILE  /help  /exit   (Ctrl-C stops a reply, Ctrl-D leaves)";

/// Lines kept in the line editor's history file.
const HISTORY_LINES: usize = 1000;

/// The line editor's history file.
fn history_path() -> std::path::PathBuf {
    h2o_chat_cli::home::dir().join("history.txt")
}

/// The interactive chat: the conversation's messages are kept and sent each turn, each turn
/// is logged, and the typed lines are kept between runs.
pub async fn interactive(
    h2o: &H2o,
    global: &Global,
    mut model: Option<String>,
    recorder: &Recorder,
    continued: Option<Transcript>,
) -> Result<(), CliError> {
    // An explicit --system wins over the one the continued conversation was logged with.
    let (mut system, mut history) = match continued {
        Some(t) => (global.system.clone().or(t.system), t.messages),
        None => (global.system.clone(), Vec::new()),
    };
    let config = rustyline::Config::builder()
        .max_history_size(HISTORY_LINES)
        .map_err(|e| CliError::Other(format!("cannot configure the line editor: {e}")))?
        .auto_add_history(false)
        .build();
    let mut editor = rustyline::DefaultEditor::with_config(config)
        .map_err(|e| CliError::Other(format!("cannot open the line editor: {e}")))?;
    let history_file = history_path();
    // A missing history file is the first run; an unreadable one only costs the old lines.
    let _ = editor.load_history(&history_file);
    eprintln!(
        "h2o-chat — {}, conversation {} (h2o-chat chat --cid … continues it). {HELP}",
        model.as_deref().unwrap_or(h2o.model()),
        recorder.conversation()
    );
    loop {
        let (returned, line) = tokio::task::spawn_blocking(move || {
            let line = editor.readline(">>> ");
            (editor, line)
        })
        .await
        .map_err(|e| CliError::Other(format!("line editor failed: {e}")))?;
        editor = returned;
        let line = match line {
            Ok(line) => line,
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(err) => return Err(CliError::Other(format!("cannot read a line: {err}"))),
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
        if let Some(dir) = history_file.parent() {
            let _ = h2o_chat_cli::home::create_private_dir(dir);
            let _ = h2o_chat_cli::home::create_private_file(&history_file);
        }
        if let Err(err) = editor.save_history(&history_file) {
            tracing::debug!(%err, "the line history is not kept");
        }
        if let Some(command) = line.strip_prefix('/') {
            let (name, argument) = command
                .split_once(' ')
                .map_or((command, ""), |(n, a)| (n, a.trim()));
            match name {
                "exit" | "quit" => break,
                "help" => eprintln!("{HELP}"),
                "reset" => {
                    history.clear();
                    eprintln!("(conversation cleared)");
                }
                "system" => {
                    system = (!argument.is_empty()).then(|| argument.to_string());
                    eprintln!(
                        "(system message {})",
                        if system.is_some() { "set" } else { "cleared" }
                    );
                }
                "model" if !argument.is_empty() => {
                    model = Some(h2o_chat::models::resolve(argument).to_string());
                    eprintln!("(model: {})", model.as_deref().unwrap_or_default());
                }
                "save" if !argument.is_empty() => {
                    let saved: Vec<&Message> = history.iter().collect();
                    let json = serde_json::to_string_pretty(
                        &json!({"system": system, "model": model, "messages": saved}),
                    )
                    .map_err(|e| CliError::Other(e.to_string()))?;
                    match std::fs::write(argument, json) {
                        Ok(()) => eprintln!("(saved to {argument})"),
                        Err(err) => eprintln!("cannot save to {argument}: {err}"),
                    }
                }
                _ => eprintln!("unknown command /{name}. {HELP}"),
            }
            continue;
        }
        history.push(Message::user(line));
        let mut messages: Vec<Message> =
            system.iter().map(|s| Message::system(s.clone())).collect();
        messages.extend(history.iter().cloned());
        let answer = tokio::select! {
            answer = stream_answer(h2o, global, model.as_deref(), messages) => answer,
            _ = tokio::signal::ctrl_c() => {
                // Dropping the stream deletes its conversation in the background.
                println!();
                eprintln!("(stopped)");
                Err(CliError::Interrupted)
            }
        };
        recorder.record(
            line,
            system.as_deref(),
            Some(model.as_deref().unwrap_or(h2o.model())),
            &answer,
        );
        match answer {
            Ok(reply) => history.push(Message::assistant(reply.text)),
            Err(CliError::Interrupted) => {
                history.pop();
            }
            Err(err) => {
                eprintln!("error: {err}");
                history.pop();
            }
        }
    }
    h2o.wait_for_cleanup().await;
    Ok(())
}

/// Writes each exchange to the log, when there is one. Never fails: a log that cannot be
/// written is a warning, once.
pub struct Recorder {
    log: Option<Logbook>,
    conversation: String,
    url: String,
    parameters: Option<serde_json::Value>,
    warned: std::sync::atomic::AtomicBool,
}

impl Recorder {
    pub fn new(
        log: Option<Logbook>,
        conversation: String,
        url: String,
        parameters: Option<serde_json::Value>,
    ) -> Self {
        Recorder {
            log,
            conversation,
            url,
            parameters,
            warned: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn conversation(&self) -> &str {
        &self.conversation
    }

    /// Logs `prompt` and what came of it.
    pub fn record(
        &self,
        prompt: &str,
        system: Option<&str>,
        model: Option<&str>,
        outcome: &Result<Reply, CliError>,
    ) {
        let Some(log) = &self.log else { return };
        let mut exchange = Exchange {
            conversation: self.conversation.clone(),
            at: now_ms(),
            model: model.map(str::to_string),
            system: system.map(str::to_string),
            prompt: prompt.to_string(),
            parameters: self.parameters.clone(),
            url: Some(self.url.clone()),
            ..Exchange::default()
        };
        match outcome {
            Ok(reply) => {
                exchange.answer = Some(reply.text.clone());
                exchange.finish_reason = reply.finish_reason.clone();
                exchange.completion_tokens = Some(reply.tokens as i64);
                exchange.first_token_ms = reply.first_token_ms.map(|ms| ms as i64);
                exchange.total_ms = Some(reply.total_ms as i64);
            }
            Err(failure) => {
                if let CliError::Provider(err) = failure {
                    exchange.answer = err.partial().map(str::to_string);
                }
                exchange.error = Some(failure.to_string());
            }
        }
        if let Err(err) = log.record(&exchange)
            && !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            eprintln!("h2o-chat: warning: this exchange is not logged: {err}");
        }
    }
}
