//! `h2o-chat batch`: many prompts over one warm client, results as JSONL in input order.
//! One failure never loses the others: it becomes that line's `error`.

use std::io::{BufRead, Write};
use std::time::Instant;

use futures_util::StreamExt;
use h2o_chat::{H2o, Message, Parameters};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cli::{BatchArgs, Global};
use crate::cli_error::CliError;
use crate::setup;

#[derive(Deserialize)]
struct Item {
    id: Option<Value>,
    prompt: Option<String>,
    messages: Option<Vec<Message>>,
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
}

/// One input line: its id, messages and extra parameters, or why it is unusable.
type Parsed = (Value, Result<(Vec<Message>, Parameters), String>);

fn parse_line(index: usize, line: &str, global: &Global) -> Parsed {
    let default_id = Value::from(index + 1);
    if !line.trim_start().starts_with('{') {
        return (
            default_id,
            Ok((
                setup::with_system(global, vec![Message::user(line)]),
                Parameters::empty(),
            )),
        );
    }
    match serde_json::from_str::<Item>(line) {
        Err(err) => (default_id, Err(format!("invalid JSON line: {err}"))),
        Ok(item) => {
            let id = item.id.unwrap_or(default_id);
            let messages = match (item.messages, item.prompt) {
                (Some(messages), _) if !messages.is_empty() => messages,
                (_, Some(prompt)) => setup::with_system(global, vec![Message::user(prompt)]),
                _ => {
                    return (
                        id,
                        Err("a line needs `prompt` or non-empty `messages`".into()),
                    );
                }
            };
            (id, Ok((messages, Parameters::from(item.parameters))))
        }
    }
}

pub async fn run(
    h2o: &H2o,
    global: &Global,
    model: Option<String>,
    args: &BatchArgs,
) -> Result<(), CliError> {
    let lines: Vec<String> = if args.input == "-" {
        std::io::stdin().lock().lines().collect::<Result<_, _>>()?
    } else {
        let file = std::fs::File::open(&args.input)
            .map_err(|e| CliError::Usage(format!("cannot open {}: {e}", args.input)))?;
        std::io::BufReader::new(file)
            .lines()
            .collect::<Result<_, _>>()?
    };
    let items: Vec<Parsed> = lines
        .iter()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| parse_line(index, line, global))
        .collect();
    let total = items.len();
    let bar = if global.quiet {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(total as u64);
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} prompts, {elapsed} elapsed, {eta} left",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    };
    let results = futures_util::stream::iter(items.into_iter().map(|(id, parsed)| {
        let h2o = h2o.clone();
        let model = model.clone();
        let bar = bar.clone();
        async move {
            let started = Instant::now();
            let outcome = match parsed {
                Err(message) => Err(message),
                Ok((messages, parameters)) => {
                    let mut request = h2o.request(messages).parameters(parameters);
                    if let Some(model) = &model {
                        request = request.model(model);
                    }
                    request.complete().await.map_err(|e| e.to_string())
                }
            };
            bar.inc(1);
            let elapsed_ms = started.elapsed().as_millis() as u64;
            match outcome {
                Ok(answer) => (true, json!({"id": id, "text": answer.text, "error": null, "details": answer.details, "elapsed_ms": elapsed_ms})),
                Err(error) => (false, json!({"id": id, "text": null, "error": error, "details": null, "elapsed_ms": elapsed_ms})),
            }
        }
    }))
    .buffered(args.concurrency as usize);
    futures_util::pin_mut!(results);
    let mut failed = 0;
    let mut stdout = std::io::stdout().lock();
    while let Some((ok, line)) = results.next().await {
        if !ok {
            failed += 1;
        }
        writeln!(stdout, "{line}")?;
        stdout.flush()?;
    }
    bar.finish_and_clear();
    h2o.wait_for_cleanup().await;
    if failed > 0 {
        return Err(CliError::Batch { failed, total });
    }
    Ok(())
}
