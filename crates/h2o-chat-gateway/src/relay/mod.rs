//! Relays: one request answered by another server, one module per protocol the other server
//! speaks — chat-ui through the provider library ([`h2o`]), text-generation-inference
//! ([`tgi`]), an OpenAI-compatible server such as vLLM or llama.cpp's `llama-server`
//! ([`openai`]). The pool (`crate::Pool`) chooses the server; a relay only talks to it.
//!
//! What every relay promises:
//!
//! - Errors stay typed: an HTTP error status before the first token is
//!   [`GenerationFailure::Upstream`] with its status and `Retry-After`; a server that cannot be reached
//!   is a 502, one that does not answer in time a 504 — so the gateway can fail over, and a
//!   client sees the status the upstream gave.
//! - Nothing hangs: connect and read deadlines, error bodies read with a cap and a deadline,
//!   and a reader that stops taking events is given up after [`READER_STALL`].
//! - Leaving is cheap: when the receiver is dropped the relay stops reading at once (and the
//!   h2o relay deletes its upstream conversation).

pub mod h2o;
pub mod openai;
pub mod tgi;

use std::time::Duration;

use futures_util::StreamExt;
use h2o_chat_engine::{
    Constraint, Finish, FinishReason, GenerationEvent, GenerationFailure, GenerationRequest, Token,
};
use tokio::sync::mpsc;

pub use h2o::RemoteH2o;
pub use openai::RemoteOpenAi;
pub use tgi::RemoteTgi;

/// Events buffered between a relay task and the server.
pub(crate) const EVENT_BUFFER: usize = 64;
/// How long a relay waits for the server's reader before giving the request up.
pub const READER_STALL: Duration = Duration::from_secs(60);
/// How much of an upstream error body is read.
pub(crate) const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// How long an error body may take.
pub(crate) const ERROR_BODY_DEADLINE: Duration = Duration::from_secs(10);
/// Connecting to an upstream.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Silence on an upstream's stream (its own keep-alives included) before it is given up.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// The most an upstream may send of one answer beyond what was asked, in tokens (it may
/// count differently), and in bytes whatever the tokens.
const EXTRA_TOKENS: u32 = 64;
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// One token per four bytes: relays do not know the remote tokenizer.
pub fn estimate_tokens(text: &str) -> usize {
    text.len().div_ceil(4)
}

/// What an upstream may still send of one answer: a little more than the tokens asked for,
/// and never more than 16 MiB, whatever it says about itself.
pub(crate) struct AnswerBudget {
    tokens: u32,
    bytes: usize,
}

impl AnswerBudget {
    pub(crate) fn for_request(request: &GenerationRequest) -> Self {
        AnswerBudget {
            tokens: request.max_new_tokens.saturating_add(EXTRA_TOKENS),
            bytes: MAX_ANSWER_BYTES,
        }
    }

    /// Counts one token of `text`; the failure to relay when the upstream sent too much.
    pub(crate) fn spend(&mut self, text: &str) -> Result<(), GenerationFailure> {
        self.tokens = self.tokens.checked_sub(1).ok_or_else(|| {
            GenerationFailure::Generation(
                "the upstream sent more tokens than were asked for".into(),
            )
        })?;
        self.bytes = self.bytes.checked_sub(text.len()).ok_or_else(|| {
            GenerationFailure::Generation(format!(
                "the upstream's answer is larger than {MAX_ANSWER_BYTES} bytes"
            ))
        })?;
        Ok(())
    }
}

/// An error event from an upstream: its own validation refusing the request is the
/// client's error (relayed, no upstream is blamed); anything else failed the generation.
pub(crate) fn error_event_failure(message: String, error_type: Option<&str>) -> GenerationFailure {
    if error_type == Some("validation") {
        let message = message
            .strip_prefix("Input validation error: ")
            .map(str::to_string)
            .unwrap_or(message);
        GenerationFailure::Invalid(message)
    } else {
        GenerationFailure::Generation(message)
    }
}

/// An HTTP client for an upstream: deadlines, and no redirects (a redirect would send the
/// prompt, and the key, somewhere nobody configured).
pub(crate) fn http_client(url: &str) -> Result<reqwest::Client, h2o_chat_engine::EngineError> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| h2o_chat_engine::EngineError::Load {
            path: crate::redact::credentials(url).into(),
            detail: e.to_string(),
        })
}

/// The whole cause chain of an error, for messages (without the credentials of any URL in
/// it: reqwest names the URL it failed to reach).
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    crate::redact::credentials(&causes(err))
}

fn causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A request that could not be sent: unreachable (502) or too slow (504).
pub(crate) fn transport_failure(err: &reqwest::Error) -> GenerationFailure {
    GenerationFailure::Upstream {
        status: if err.is_timeout() { 504 } else { 502 },
        retry_after: None,
        message: format!("upstream unreachable: {}", chain(err)),
    }
}

/// Sends an event, unless the server's reader is gone or stalled.
pub(crate) async fn forward(
    sender: &mpsc::Sender<GenerationEvent>,
    event: GenerationEvent,
) -> bool {
    sender.send_timeout(event, READER_STALL).await.is_ok()
}

/// Sends `post` with the upstream's key and waits for a successful reply. A refusal or an
/// unreachable upstream is relayed as a failure; a reader that leaves first ends the wait.
/// `None`: there is nothing more to relay.
pub(crate) async fn successful_reply(
    post: reqwest::RequestBuilder,
    api_key: Option<&str>,
    sender: &mpsc::Sender<GenerationEvent>,
) -> Option<reqwest::Response> {
    let post = match api_key {
        Some(key) => post.bearer_auth(key),
        None => post,
    };
    let posted = tokio::select! {
        posted = post.send() => posted,
        () = sender.closed() => return None,
    };
    let failure = match posted {
        Ok(response) if response.status().is_success() => return Some(response),
        Ok(response) => status_failure(response).await,
        Err(err) => transport_failure(&err),
    };
    forward(sender, GenerationEvent::Failed(failure)).await;
    None
}

/// `Retry-After` in seconds.
pub(crate) fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?;
    value
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
        .map(Duration::from_secs)
}

/// An error reply as a failure: its status, its `Retry-After`, and its message (JSON
/// `error`, `error.message` or `message`, else the text), read with a cap and a deadline.
pub(crate) async fn status_failure(response: reqwest::Response) -> GenerationFailure {
    let status = response.status().as_u16();
    if !(400..600).contains(&status) {
        // A redirect (relays follow none) or another status that is no answer: the upstream
        // is misconfigured, which the client sees as a bad gateway, not as a redirect.
        return GenerationFailure::Upstream {
            status: 502,
            retry_after: None,
            message: format!(
                "the upstream answered {status}{}; relays follow no redirects",
                response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .map(|l| format!(" to {}", crate::redact::credentials(l)))
                    .unwrap_or_default()
            ),
        };
    }
    let retry_after = retry_after(&response);
    let read = async {
        let mut body = Vec::new();
        let mut chunks = response.bytes_stream();
        while let Some(Ok(chunk)) = chunks.next().await {
            let room = ERROR_BODY_LIMIT - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= ERROR_BODY_LIMIT {
                break;
            }
        }
        body
    };
    let body = tokio::time::timeout(ERROR_BODY_DEADLINE, read)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let json = serde_json::from_str::<serde_json::Value>(&text).ok();
    let message = json
        .as_ref()
        .and_then(|v| {
            v.get("error")
                .and_then(|e| e.as_str().or_else(|| e.get("message")?.as_str()))
                .or_else(|| v.get("message")?.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| text.trim().chars().take(500).collect());
    GenerationFailure::Upstream {
        status,
        retry_after,
        message,
    }
}

/// The end marker for streams whose last event carries no token (OpenAI's `[DONE]`).
pub(crate) fn end_token() -> Token {
    Token {
        id: 0,
        text: String::new(),
        logprob: None,
        special: true,
    }
}

/// A finish from what a relay counted, when the upstream says less.
pub(crate) fn finish(
    reason: FinishReason,
    generated_tokens: u32,
    generated_text: String,
    input_tokens: u32,
    seed: Option<u64>,
) -> Finish {
    Finish {
        reason,
        generated_tokens,
        seed,
        generated_text,
        input_tokens,
        cached_tokens: 0,
    }
}

/// What the request asks of the sampler, in TGI's terms (for relays that speak TGI).
pub(crate) fn tgi_parameters(request: &GenerationRequest) -> serde_json::Value {
    let sampling = &request.sampling;
    let mut params = serde_json::json!({
        "max_new_tokens": request.max_new_tokens,
        "do_sample": sampling.do_sample,
        "details": true,
        "return_full_text": false,
    });
    let map = params.as_object_mut().expect("an object");
    let mut put = |key: &str, value: serde_json::Value| {
        map.insert(key.to_string(), value);
    };
    if let Some(t) = sampling.temperature {
        put("temperature", t.into());
    }
    if let Some(k) = sampling.top_k {
        put("top_k", k.into());
    }
    if let Some(p) = sampling.top_p {
        put("top_p", p.into());
    }
    if let Some(p) = sampling.typical_p {
        put("typical_p", p.into());
    }
    if let Some(p) = sampling.repetition_penalty {
        put("repetition_penalty", p.into());
    }
    if request.top_tokens > 0 {
        put("top_n_tokens", request.top_tokens.into());
    }
    if let Some(seed) = sampling.seed {
        put("seed", seed.into());
    }
    if !request.stop.is_empty() {
        put("stop", request.stop.clone().into());
    }
    if let Some(truncate) = request.truncate {
        put("truncate", (truncate as u64).into());
    }
    // The gateway takes only what this relay can pass (`Gateway::check_constraint`).
    match &request.constraint {
        Some(Constraint::JsonSchema(schema)) => {
            put(
                "grammar",
                serde_json::json!({"type": "json", "value": schema}),
            );
        }
        Some(Constraint::Regex(regex)) => {
            put(
                "grammar",
                serde_json::json!({"type": "regex", "value": regex}),
            );
        }
        Some(Constraint::Tools(_)) | None => {}
    }
    params
}
