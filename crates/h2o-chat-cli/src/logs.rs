//! `h2o-chat logs`, and the log as `chat` uses it: where to continue (`-c`, `--cid`) and
//! where to write.

use std::io::Write;

use crate::cli::{ChatArgs, LogsArgs};
use crate::cli_error::CliError;
use crate::logbook::{self, Exchange, Logbook, Query, Transcript};

/// The log to record this run's exchanges in, or `None` with a warning when it cannot be
/// opened: the answer matters more than its log.
pub fn open_for_writing() -> Option<Logbook> {
    let path = logbook::default_path();
    match Logbook::open(&path) {
        Ok(log) => Some(log),
        Err(err) => {
            eprintln!("h2o-chat: warning: exchanges are not logged: {err}");
            None
        }
    }
}

/// The conversation `chat -c` or `chat --cid ID` continues: its id and its transcript.
pub fn conversation_to_continue(args: &ChatArgs) -> Result<Option<(String, Transcript)>, CliError> {
    if !args.continue_last && args.cid.is_none() {
        return Ok(None);
    }
    let path = logbook::default_path();
    let unreadable = |err| CliError::Usage(format!("cannot continue a conversation: {err}"));
    let log = Logbook::open(&path).map_err(unreadable)?;
    let id = match &args.cid {
        Some(id) => id.clone(),
        None => log
            .last_conversation()
            .map_err(unreadable)?
            .ok_or_else(|| {
                CliError::Usage("no conversation to continue: the log is empty".into())
            })?,
    };
    let transcript = log
        .messages(&id)
        .map_err(unreadable)?
        .ok_or_else(|| CliError::Usage(format!("no conversation {id} in the log")))?;
    Ok(Some((id, transcript)))
}

/// `h2o-chat logs`.
pub fn run(args: &LogsArgs) -> Result<(), CliError> {
    let path = logbook::default_path();
    if !path.exists() {
        if args.json {
            println!("[]");
        } else {
            eprintln!("h2o-chat: nothing logged yet ({})", path.display());
        }
        return Ok(());
    }
    let log = Logbook::open(&path).map_err(|e| CliError::Other(e.to_string()))?;
    let query = Query {
        limit: args.count as usize,
        conversation: args.conversation.as_deref(),
        text: args.query.as_deref(),
    };
    let exchanges = log.recent(&query).map_err(|err| match args.query {
        // A malformed FTS5 query is the user's to fix.
        Some(_) => CliError::Usage(format!("cannot search the log: {err}")),
        None => CliError::Other(err.to_string()),
    })?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &exchanges)
            .map_err(|e| CliError::Other(e.to_string()))?;
        writeln!(out)?;
    } else {
        for (i, exchange) in exchanges.iter().enumerate() {
            if i > 0 {
                writeln!(out)?;
            }
            write_text(&mut out, exchange)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// One exchange as text: a header line, the prompt quoted, the answer.
fn write_text(out: &mut impl Write, exchange: &Exchange) -> std::io::Result<()> {
    let mut header = format!(
        "# {} UTC  conversation {}",
        logbook::format_time(exchange.at),
        exchange.conversation
    );
    if let Some(model) = &exchange.model {
        header.push_str(&format!("  model {model}"));
    }
    if let Some(tokens) = exchange.completion_tokens {
        header.push_str(&format!("  {tokens} tokens"));
    }
    if let Some(ms) = exchange.total_ms {
        header.push_str(&format!("  {ms} ms"));
    }
    if let Some(reason) = &exchange.finish_reason {
        header.push_str(&format!("  ({reason})"));
    }
    writeln!(out, "{header}")?;
    if let Some(system) = &exchange.system {
        writeln!(out, "system: {system}")?;
    }
    for line in exchange.prompt.lines() {
        writeln!(out, "> {line}")?;
    }
    if let Some(answer) = &exchange.answer {
        writeln!(out, "{answer}")?;
    }
    if let Some(error) = &exchange.error {
        writeln!(out, "error: {error}")?;
    }
    Ok(())
}
