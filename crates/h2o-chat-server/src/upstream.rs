//! Remote engines: the gateway relaying to another server instead of a local model.
//!
//! - [`RemoteH2o`] talks to an H2o (chat-ui) server through the provider library, so its
//!   whole lifecycle applies: settings once, a conversation per request, retries before the
//!   first token, and the conversation deleted however the request ends — including when the
//!   gateway's own client disconnects.
//! - [`RemoteTgi`] posts to a text-generation-inference server's `/generate_stream` and reads
//!   it with the library's stream decoder.
//!
//! Neither knows the remote tokenizer, so `count_tokens` estimates one token per four bytes
//! (the remote server does its own validation and its errors are relayed).

use std::sync::Arc;

use futures_util::StreamExt;
use h2o_chat::protocol::{Decoder, Event};
use h2o_chat::{H2o, Message, Parameters};
use h2o_chat_engine::{
    ChatTurn, Engine, EngineError, EngineInfo, Finish, FinishReason, Generation, GenerationEvent,
    GenerationRequest, TokenOut,
};
use tokio::sync::mpsc;

/// Events buffered between the relay task and the gateway.
const EVENT_BUFFER: usize = 64;

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

fn token_out(token: h2o_chat::Token) -> TokenOut {
    TokenOut {
        id: token.id,
        text: token.text,
        logprob: token.logprob.unwrap_or(f32::NAN),
        special: token.special,
    }
}

/// Turns the provider's final event into the engine's.
fn finish_of(
    final_event: h2o_chat::FinalEvent,
    generated: u32,
    input_tokens: u32,
) -> (TokenOut, Finish) {
    let token = final_event.token.map(token_out).unwrap_or(TokenOut {
        id: 0,
        text: String::new(),
        logprob: f32::NAN,
        special: true,
    });
    let details = final_event.details;
    let finish = Finish {
        reason: match details.as_ref().map(|d| d.finish_reason) {
            Some(h2o_chat::FinishReason::Length) => FinishReason::Length,
            Some(h2o_chat::FinishReason::StopSequence) => FinishReason::StopSequence,
            _ => FinishReason::EosToken,
        },
        generated_tokens: details.as_ref().map_or(generated, |d| d.generated_tokens),
        seed: details.and_then(|d| d.seed),
        generated_text: final_event.generated_text,
        input_tokens,
    };
    (token, finish)
}

fn estimate_tokens(text: &str) -> usize {
    text.len().div_ceil(4)
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
        let client = H2o::builder()
            .url(url)
            .parameters(Parameters::empty())
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
            context_length: 4096,
        }
    }

    /// The provider's own `format_prompt` (§e.1): the remote server applies its template.
    fn render_chat(&self, turns: &[ChatTurn]) -> Result<String, EngineError> {
        let messages: Vec<Message> = turns
            .iter()
            .map(|t| Message::new(t.role.clone(), t.content.clone()))
            .collect();
        h2o_chat::prompt::format_prompt(&messages).map_err(|e| EngineError::Input(e.to_string()))
    }

    fn count_tokens(&self, text: &str) -> Result<usize, EngineError> {
        Ok(estimate_tokens(text))
    }

    fn start(&self, request: GenerationRequest) -> Result<Generation, EngineError> {
        let (sender, events) = mpsc::channel(EVENT_BUFFER);
        let mut call = self
            .client
            .request([Message::user(request.prompt.clone())])
            .parameters(parameters_of(&request));
        if let Some(model) = &self.model {
            call = call.model(model.clone());
        }
        let input_tokens = estimate_tokens(&request.prompt) as u32;
        self.runtime.spawn(async move {
            let mut stream = match call.events().await {
                Ok(stream) => stream,
                Err(err) => {
                    let _ = sender.send(GenerationEvent::Failed(err.to_string())).await;
                    return;
                }
            };
            let mut generated = 0u32;
            loop {
                // Stop as soon as the gateway's client is gone: dropping the stream deletes
                // the remote conversation.
                let next = tokio::select! {
                    next = stream.next() => next,
                    () = sender.closed() => return,
                };
                let event = match next {
                    Some(Ok(Event::Token(token))) => {
                        generated += 1;
                        GenerationEvent::Token(token_out(token))
                    }
                    Some(Ok(Event::Final(final_event))) => {
                        let (token, finish) = finish_of(final_event, generated + 1, input_tokens);
                        let _ = sender.send(GenerationEvent::Finished(token, finish)).await;
                        return;
                    }
                    Some(Ok(Event::Error(err))) => GenerationEvent::Failed(err.error),
                    Some(Err(err)) => GenerationEvent::Failed(err.to_string()),
                    None => GenerationEvent::Failed(
                        "the upstream stream ended without a final event".into(),
                    ),
                };
                let failed = matches!(event, GenerationEvent::Failed(_));
                if sender.send(event).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Generation { events })
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
            .connect_timeout(std::time::Duration::from_secs(10))
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

impl Engine for RemoteTgi {
    fn info(&self) -> EngineInfo {
        EngineInfo {
            model_id: "tgi".into(),
            backend: format!("relay to the TGI server {}", self.url),
            source: self.url.clone(),
            context_length: 4096,
        }
    }

    /// ChatML, the common instruction format; the remote model may expect another.
    fn render_chat(&self, turns: &[ChatTurn]) -> Result<String, EngineError> {
        Ok(h2o_chat_engine::chatml(turns))
    }

    fn count_tokens(&self, text: &str) -> Result<usize, EngineError> {
        Ok(estimate_tokens(text))
    }

    fn start(&self, request: GenerationRequest) -> Result<Generation, EngineError> {
        let (sender, events) = mpsc::channel(EVENT_BUFFER);
        let body =
            serde_json::json!({"inputs": request.prompt, "parameters": parameters_of(&request)});
        let post = self
            .http
            .post(format!("{}/generate_stream", self.url))
            .json(&body)
            .send();
        let input_tokens = estimate_tokens(&request.prompt) as u32;
        self.runtime.spawn(async move {
            let fail = |message: String| GenerationEvent::Failed(message);
            let response = match post.await {
                Ok(response) if response.status().is_success() => response,
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    let _ = sender
                        .send(fail(format!("upstream HTTP {status}: {}", text.trim())))
                        .await;
                    return;
                }
                Err(err) => {
                    let _ = sender
                        .send(fail(format!("upstream unreachable: {err}")))
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
                                let _ = sender
                                    .send(fail(format!("upstream stream broke: {err}")))
                                    .await;
                                return;
                            }
                            None => match decoder.finish() {
                                Ok(Some(event)) => event,
                                _ => {
                                    let _ = sender
                                        .send(fail(
                                            "the upstream stream ended without a final event"
                                                .into(),
                                        ))
                                        .await;
                                    return;
                                }
                            },
                        }
                    }
                    Err(err) => {
                        let _ = sender
                            .send(fail(format!("upstream sent a malformed event: {err}")))
                            .await;
                        return;
                    }
                };
                match event {
                    Event::Token(token) => {
                        generated += 1;
                        if sender
                            .send(GenerationEvent::Token(token_out(token)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Event::Final(final_event) => {
                        let (token, finish) = finish_of(final_event, generated + 1, input_tokens);
                        let _ = sender.send(GenerationEvent::Finished(token, finish)).await;
                        return;
                    }
                    Event::Error(err) => {
                        let _ = sender.send(fail(err.error)).await;
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
