//! `h2o-chat chat`: one-shot streaming, or an interactive multi-turn chat.
//!
//! stdout carries only the answer (or NDJSON events with `--json`), byte for byte as
//! streamed and flushed per token; everything else goes to stderr.

use std::io::{IsTerminal, Read, Write};

use futures_util::StreamExt;
use h2o_chat::{Error, Event, H2o, Message};
use serde_json::json;

use crate::cli::Global;
use crate::failure::Failure;

/// The prompt from the argument and/or standard input.
pub fn read_prompt(arg: Option<&str>) -> Result<Option<String>, Failure> {
    let stdin = std::io::stdin();
    let piped = arg == Some("-") || (!stdin.is_terminal() && arg.is_some());
    let mut input = String::new();
    if piped {
        stdin
            .lock()
            .read_to_string(&mut input)
            .map_err(|e| Failure::Usage(format!("cannot read standard input: {e}")))?;
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

/// Writes one token: its text, or its NDJSON line.
fn write_token(out: &mut Vec<u8>, json_mode: bool, token: &h2o_chat::Token) {
    if json_mode {
        let line = json!({"type": "token", "id": token.id, "text": token.text, "logprob": token.logprob, "special": token.special});
        let _ = serde_json::to_writer(&mut *out, &line);
        out.push(b'\n');
    } else if !token.special {
        out.extend_from_slice(token.text.as_bytes());
    }
}

/// Streams one answer to stdout. Returns the text (for the interactive history).
///
/// Tokens are written as they arrive, but what has already arrived is written together:
/// one write and one flush per network chunk, not per token.
pub async fn stream_answer(
    h2o: &H2o,
    global: &Global,
    model: Option<&str>,
    messages: Vec<Message>,
) -> Result<String, Failure> {
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
    while let Some(batch) = batches.next().await {
        for event in batch {
            match event {
                Ok(Event::Token(token)) => {
                    first_token.get_or_insert_with(|| started.elapsed());
                    write_token(&mut out, global.json, &token);
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
                            write_token(&mut out, true, token);
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
                    return Ok(text);
                }
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
fn report(stdout: &mut impl Write, global: &Global, err: Error, partial: &str) -> Failure {
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
    Failure::Provider(err)
}

const HELP: &str = "commands: /system TEXT  /model NAME  /reset  /save FILE  /help  /exit   (Ctrl-C stops a reply, Ctrl-D leaves)";

/// The interactive chat: the conversation's messages are kept and sent each turn.
pub async fn interactive(
    h2o: &H2o,
    global: &Global,
    mut model: Option<String>,
) -> Result<(), Failure> {
    let mut system = global.system.clone();
    let mut history: Vec<Message> = Vec::new();
    let mut editor = rustyline::DefaultEditor::new()
        .map_err(|e| Failure::Other(format!("cannot open the line editor: {e}")))?;
    eprintln!(
        "h2o-chat — {}. {HELP}",
        model.as_deref().unwrap_or(h2o.model())
    );
    loop {
        let (returned, line) = tokio::task::spawn_blocking(move || {
            let line = editor.readline(">>> ");
            (editor, line)
        })
        .await
        .map_err(|e| Failure::Other(format!("line editor failed: {e}")))?;
        editor = returned;
        let line = match line {
            Ok(line) => line,
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(err) => return Err(Failure::Other(format!("cannot read a line: {err}"))),
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
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
                    .map_err(|e| Failure::Other(e.to_string()))?;
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
                Err(Failure::Interrupted)
            }
        };
        match answer {
            Ok(text) => history.push(Message::assistant(text)),
            Err(Failure::Interrupted) => {
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
