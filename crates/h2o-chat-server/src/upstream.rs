//! Remote engines: the server relaying to another server instead of a local model.
//!
//! - [`RemoteH2o`] talks to an H2o (chat-ui) server through the provider library, so its
//!   whole lifecycle applies: settings once, a conversation per request, retries before the
//!   first token, and the conversation deleted however the request ends — including when the
//!   server's own client disconnects. Graceful shutdown waits for those deletions.
//! - [`RemoteTgi`] posts to a text-generation-inference server's `/generate_stream` and reads
//!   it with the protocol's stream decoder.
//!
//! Errors stay typed: an upstream's HTTP status (a 429 with its `Retry-After`, a 503) reaches
//! the client as that status. Neither relay knows the remote tokenizer, so `tokenize`
//! estimates one token per four bytes (the remote server does its own validation and its
//! errors are relayed).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use h2o_chat::{H2o, Message, Parameters};
use h2o_chat_engine::{
    ChatTurn, Cleanup, Engine, EngineError, EngineInfo, Failure, Finish, FinishReason, Generation,
    GenerationEvent, GenerationRequest, Prompt, Token, Tokenized, chatml,
};
use h2o_chat_protocol::{Decoder, Event, FinalEvent};
use tokio::sync::mpsc;

/// Events buffered between the relay task and the server.
const EVENT_BUFFER: usize = 64;
/// How long the relay waits for the server's reader before giving the request up.
const READER_STALL: Duration = Duration::from_secs(60);
/// How much of an upstream error body is read.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

fn parameters_of(request: &GenerationRequest) -> Parameters {
    let sampling = &request.sampling;
    let mut params = Parameters::empty()
        .max_new_tokens(request.max_new_tokens)
        .do_sample(sampling.do_sample)
        .details(true)
        .return_full_text(false);
    if let Some(t) = sampling.temperature {
        params.insert("temperature", f64::from(t));
    }
    if let Some(k) = sampling.top_k {
        params.insert("top_k", k);
    }
    if let Some(p) = sampling.top_p {
        params.insert("top_p", f64::from(p));
    }
    if let Some(p) = sampling.typical_p {
        params.insert("typical_p", f64::from(p));
    }
    if let Some(p) = sampling.repetition_penalty {
        params.insert("repetition_penalty", f64::from(p));
    }
    if let Some(seed) = sampling.seed {
        params.insert("seed", seed);
    }
    if !request.stop.is_empty() {
        params.insert("stop", request.stop.clone());
    }
    if let Some(truncate) = request.truncate {
        params.insert("truncate", truncate as u64);
    }
    params
}

/// Turns the final event into the engine's.
fn finish_of(final_event: FinalEvent, generated: u32, input_tokens: u32) -> (Token, Finish) {
    let token = final_event.token.unwrap_or(Token {
        id: 0,
        text: String::new(),
        logprob: None,
        special: true,
    });
    let details = final_event.details;
    let finish = Finish {
        reason: details
            .as_ref()
            .map_or(FinishReason::EosToken, |d| d.finish_reason),
        generated_tokens: details.as_ref().map_or(generated, |d| d.generated_tokens),
        seed: details.and_then(|d| d.seed),
        generated_text: final_event.generated_text,
        input_tokens,
        cached_tokens: 0,
    };
    (token, finish)
}

fn estimate_tokens(text: &str) -> usize {
    text.len().div_ceil(4)
}

/// The whole cause chain of an error, for messages.
fn chain(err: &dyn std::error::Error) -> String {
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

/// A provider error as a failure: HTTP statuses stay statuses.
fn failure_of(err: &h2o_chat::Error) -> Failure {
    match err {
        h2o_chat::Error::RateLimited {
            retry_after,
            message,
            ..
        } => Failure::Upstream {
            status: 429,
            retry_after: *retry_after,
            message: message.clone(),
        },
        h2o_chat::Error::Http {
            status, message, ..
        }
        | h2o_chat::Error::Session {
            status, message, ..
        } => Failure::Upstream {
            status: *status,
            retry_after: None,
            message: message.clone(),
        },
        h2o_chat::Error::Stream { message, .. } => Failure::Generation(message.clone()),
        other => Failure::Generation(chain(other)),
    }
}

/// Sends an event, unless the server's reader is gone or stalled.
async fn relay(sender: &mpsc::Sender<GenerationEvent>, event: GenerationEvent) -> bool {
    sender.send_timeout(event, READER_STALL).await.is_ok()
}

/// A remote H2o (chat-ui) server, through the provider library.
pub struct RemoteH2o {
    client: H2o,
    model: Option<String>,
    runtime: tokio::runtime::Handle,
}

impl RemoteH2o {
    /// Relays to the H2o server at `url` (a path prefix is kept); `model` is the remote
    /// model id (default: the remote default). Must be created inside a tokio runtime.
    pub fn new(url: &str, model: Option<String>) -> Result<Self, EngineError> {
        // No retries here: an upstream's error (a 429 with its Retry-After, a 503) goes back
        // to the client at once, and the client decides.
        let client = H2o::builder()
            .url(url)
            .parameters(Parameters::empty())
            .retry(h2o_chat::RetryPolicy::none())
            .build()
            .map_err(|e| EngineError::Load {
                path: url.into(),
                detail: e.to_string(),
            })?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| EngineError::Load {
            path: url.into(),
            detail: "the relay needs a tokio runtime".into(),
        })?;
        Ok(RemoteH2o {
            client,
            model,
            runtime,
        })
    }

    /// The provider client (for waiting on its cleanup).
    pub fn client(&self) -> &H2o {
        &self.client
    }
}

impl Engine for RemoteH2o {
    fn info(&self) -> EngineInfo {
        EngineInfo {
            model_id: self
                .model
                .clone()
                .unwrap_or_else(|| self.client.model().to_string()),
            backend: format!("relay to the H2o server {}", self.client.url()),
            source: self.client.url().to_string(),
            context_length: 0,
            slots: 0,
            batch_total_tokens: 0,
        }
    }

    /// The provider's own `format_prompt` (§e.1): the remote server applies its template.
    fn render_chat(&self, turns: &[ChatTurn]) -> Result<Prompt, EngineError> {
        let messages: Vec<Message> = turns
            .iter()
            .map(|t| Message::new(t.role.clone(), t.content.clone()))
            .collect();
        h2o_chat::prompt::format_prompt(&messages)
            .map(Prompt::raw)
            .map_err(|e| EngineError::Input(e.to_string()))
    }

    fn tokenize(&self, prompt: &Prompt) -> Result<Tokenized, EngineError> {
        Ok(Tokenized::counted(estimate_tokens(&prompt.text())))
    }

    fn start(&self, request: GenerationRequest) -> Result<Generation, EngineError> {
        let (sender, events) = mpsc::channel(EVENT_BUFFER);
        let prompt = request.prompt.text();
        let input_tokens = estimate_tokens(&prompt) as u32;
        let mut call = self
            .client
            .request([Message::user(prompt)])
            .parameters(parameters_of(&request));
        if let Some(model) = &self.model {
            call = call.model(model.clone());
        }
        self.runtime.spawn(async move {
            let opened = tokio::select! {
                opened = call.events() => opened,
                () = sender.closed() => return,
            };
            let mut stream = match opened {
                Ok(stream) => stream,
                Err(err) => {
                    relay(&sender, GenerationEvent::Failed(failure_of(&err))).await;
                    return;
                }
            };
            let mut generated = 0u32;
            loop {
                // Stop as soon as the server's client is gone: dropping the stream deletes
                // the remote conversation.
                let next = tokio::select! {
                    next = stream.next() => next,
                    () = sender.closed() => return,
                };
                let event = match next {
                    Some(Ok(Event::Token(token))) => {
                        generated += 1;
                        GenerationEvent::Token(token)
                    }
                    Some(Ok(Event::Final(final_event))) => {
                        let (token, finish) = finish_of(final_event, generated + 1, input_tokens);
                        relay(&sender, GenerationEvent::Finished(token, finish)).await;
                        return;
                    }
                    Some(Ok(Event::Error(err))) => {
                        GenerationEvent::Failed(Failure::Generation(err.error))
                    }
                    Some(Err(err)) => GenerationEvent::Failed(failure_of(&err)),
                    None => GenerationEvent::Failed(Failure::Generation(
                        "the upstream stream ended without a final event".into(),
                    )),
                };
                let failed = matches!(event, GenerationEvent::Failed(_));
                if !relay(&sender, event).await || failed {
                    return;
                }
            }
        });
        Ok(Generation { events })
    }

    fn pending_cleanup(&self) -> Option<Cleanup> {
        let client = self.client.clone();
        Some(Box::pin(async move { client.wait_for_cleanup().await }))
    }
}

/// A remote text-generation-inference server (`/generate_stream`).
pub struct RemoteTgi {
    url: String,
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl RemoteTgi {
    /// Relays to the TGI server at `url`. Must be created inside a tokio runtime.
    pub fn new(url: &str) -> Result<Self, EngineError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| EngineError::Load {
            path: url.into(),
            detail: "the relay needs a tokio runtime".into(),
        })?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| EngineError::Load {
                path: url.into(),
                detail: e.to_string(),
            })?;
        Ok(RemoteTgi {
            url: url.trim_end_matches('/').to_string(),
            http,
            runtime,
        })
    }
}

/// Reads at most `limit` bytes of an error body, within `deadline`.
async fn error_body(response: reqwest::Response, limit: usize, deadline: Duration) -> String {
    let read = async {
        let mut body = Vec::new();
        let mut chunks = response.bytes_stream();
        while let Some(Ok(chunk)) = chunks.next().await {
            body.extend_from_slice(&chunk[..chunk.len().min(limit - body.len())]);
            if body.len() >= limit {
                break;
            }
        }
        body
    };
    let body = tokio::time::timeout(deadline, read)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| text.trim().to_string())
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?;
    value
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
        .map(Duration::from_secs)
}

impl Engine for RemoteTgi {
    fn info(&self) -> EngineInfo {
        EngineInfo {
            model_id: "tgi".into(),
            backend: format!("relay to the TGI server {}", self.url),
            source: self.url.clone(),
            context_length: 0,
            slots: 0,
            batch_total_tokens: 0,
        }
    }

    /// ChatML, the common instruction format; the remote model may expect another.
    fn render_chat(&self, turns: &[ChatTurn]) -> Result<Prompt, EngineError> {
        Ok(chatml(turns))
    }

    fn tokenize(&self, prompt: &Prompt) -> Result<Tokenized, EngineError> {
        Ok(Tokenized::counted(estimate_tokens(&prompt.text())))
    }

    fn start(&self, request: GenerationRequest) -> Result<Generation, EngineError> {
        let (sender, events) = mpsc::channel(EVENT_BUFFER);
        let prompt = request.prompt.text();
        let input_tokens = estimate_tokens(&prompt) as u32;
        let body = serde_json::json!({"inputs": prompt, "parameters": parameters_of(&request)});
        let post = self
            .http
            .post(format!("{}/generate_stream", self.url))
            .json(&body)
            .send();
        self.runtime.spawn(async move {
            let fail = |failure: Failure| GenerationEvent::Failed(failure);
            let posted = tokio::select! {
                posted = post => posted,
                () = sender.closed() => return,
            };
            let response = match posted {
                Ok(response) if response.status().is_success() => response,
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after = retry_after(&response);
                    let message =
                        error_body(response, ERROR_BODY_LIMIT, Duration::from_secs(10)).await;
                    relay(
                        &sender,
                        fail(Failure::Upstream {
                            status,
                            retry_after,
                            message,
                        }),
                    )
                    .await;
                    return;
                }
                Err(err) => {
                    relay(
                        &sender,
                        fail(Failure::Upstream {
                            status: 502,
                            retry_after: None,
                            message: format!("upstream unreachable: {}", chain(&err)),
                        }),
                    )
                    .await;
                    return;
                }
            };
            let mut body = response.bytes_stream();
            let mut decoder = Decoder::new(1 << 20);
            let mut generated = 0u32;
            loop {
                let event = match decoder.next_event() {
                    Ok(Some(event)) => event,
                    Ok(None) => {
                        let chunk = tokio::select! {
                            chunk = body.next() => chunk,
                            () = sender.closed() => return,
                        };
                        match chunk {
                            Some(Ok(bytes)) => {
                                decoder.push(&bytes);
                                continue;
                            }
                            Some(Err(err)) => {
                                let message = format!("upstream stream broke: {}", chain(&err));
                                relay(&sender, fail(Failure::Generation(message))).await;
                                return;
                            }
                            None => match decoder.finish() {
                                Ok(Some(event)) => event,
                                _ => {
                                    let message =
                                        "the upstream stream ended without a final event".into();
                                    relay(&sender, fail(Failure::Generation(message))).await;
                                    return;
                                }
                            },
                        }
                    }
                    Err(err) => {
                        let message = format!("upstream sent a malformed event: {err}");
                        relay(&sender, fail(Failure::Generation(message))).await;
                        return;
                    }
                };
                match event {
                    Event::Token(token) => {
                        generated += 1;
                        if !relay(&sender, GenerationEvent::Token(token)).await {
                            return;
                        }
                    }
                    Event::Final(final_event) => {
                        let (token, finish) = finish_of(final_event, generated + 1, input_tokens);
                        relay(&sender, GenerationEvent::Finished(token, finish)).await;
                        return;
                    }
                    Event::Error(err) => {
                        relay(&sender, fail(Failure::Generation(err.error))).await;
                        return;
                    }
                }
            }
        });
        Ok(Generation { events })
    }
}

/// A shared handle, for registries.
pub fn shared<E: Engine>(engine: E) -> Arc<dyn Engine> {
    Arc::new(engine)
}
