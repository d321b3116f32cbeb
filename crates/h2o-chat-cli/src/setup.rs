//! From global options to a configured client, parameters and messages.

use std::time::Duration;

use h2o_chat::{H2o, Message, Parameters, PromptFormat, models};
use serde_json::Value;

use crate::cli::Global;
use crate::cli_error::CliError;

/// The model to use: `--model` (checked against the alias table with `--legacy`), else
/// the server's default. For the embedded server the default is its own model.
pub fn model(global: &Global, embedded: bool) -> Result<Option<String>, CliError> {
    match &global.model {
        Some(name) if global.legacy => models::resolve_alias(name)
            .map(|id| Some(id.to_string()))
            .map_err(|e| CliError::Usage(e.to_string())),
        Some(name) => Ok(Some(models::resolve(name).to_string())),
        None if embedded => Ok(Some(h2o_chat_server::LOCAL_MODEL_ID.to_string())),
        None => Ok(None),
    }
}

/// The starting parameters for the embedded local model (the page's too).
pub fn local_defaults() -> Parameters {
    h2o_chat_server::models::local_parameters()
}

/// The defaults (g4f's six for a remote server, [`local_defaults`] for the embedded one)
/// overridden by the options, then every `-p KEY=VALUE`.
pub fn parameters(global: &Global, embedded: bool) -> Result<Parameters, CliError> {
    let mut params = if embedded {
        local_defaults()
    } else {
        Parameters::default()
    };
    if let Some(v) = global.temperature {
        params.insert("temperature", v);
    }
    if let Some(v) = global.max_new_tokens {
        params.insert("max_new_tokens", v);
    }
    if let Some(v) = global.top_k {
        params.insert("top_k", v);
    }
    if let Some(v) = global.top_p {
        params.insert("top_p", v);
    }
    if let Some(v) = global.repetition_penalty {
        params.insert("repetition_penalty", v);
    }
    if let Some(v) = global.seed {
        params.insert("seed", v);
    }
    if !global.stop.is_empty() {
        params.insert("stop", global.stop.clone());
    }
    if let Some(schema) = &global.schema {
        params.insert(
            "grammar",
            serde_json::json!({"type": "json", "value": schema_of(schema)?}),
        );
    }
    if let Some(regex) = &global.regex {
        params.insert(
            "grammar",
            serde_json::json!({"type": "regex", "value": regex}),
        );
    }
    for pair in &global.params {
        let (key, raw) = pair
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--param `{pair}`: expected KEY=VALUE")))?;
        if key.is_empty() {
            return Err(CliError::Usage(format!(
                "--param `{pair}`: the key is empty"
            )));
        }
        let value =
            serde_json::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
        params.insert(key, value);
    }
    Ok(params)
}

/// `--schema`: the JSON itself, or a file holding it.
fn schema_of(given: &str) -> Result<Value, CliError> {
    if let Ok(schema) = serde_json::from_str::<Value>(given) {
        return Ok(schema);
    }
    let text = std::fs::read_to_string(given).map_err(|e| {
        CliError::Usage(format!(
            "--schema `{given}` is neither JSON nor a readable file: {e}"
        ))
    })?;
    serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("--schema {given}: not JSON: {e}")))
}

/// The client for `url` (`embedded`: the tool's own local server).
pub fn client(global: &Global, url: &str, embedded: bool) -> Result<H2o, CliError> {
    let mut builder = H2o::builder().url(url);
    if let Some(proxy) = &global.proxy {
        builder = builder.proxy(proxy);
    }
    if let Some(secs) = global.timeout {
        let timeout = seconds("--timeout", secs)?;
        builder = builder
            .request_timeout(timeout)
            .first_event_timeout(timeout);
    }
    if let Some(secs) = global.idle_timeout {
        builder = builder.idle_timeout(seconds("--idle-timeout", secs)?);
    }
    if global.legacy {
        builder = builder.prompt_format(PromptFormat::Legacy);
    }
    builder = builder.parameters(parameters(global, embedded)?);
    Ok(builder.build()?)
}

fn seconds(flag: &str, secs: f64) -> Result<Duration, CliError> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            CliError::Usage(format!(
                "{flag} takes a positive number of seconds, not {secs}"
            ))
        })
}

/// `--system` first, then the rest.
pub fn with_system(global: &Global, rest: Vec<Message>) -> Vec<Message> {
    let mut messages = Vec::with_capacity(rest.len() + 1);
    if let Some(system) = &global.system {
        messages.push(Message::system(system.clone()));
    }
    messages.extend(rest);
    messages
}
