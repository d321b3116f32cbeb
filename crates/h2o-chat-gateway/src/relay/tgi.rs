//! A remote text-generation-inference server: `POST /generate_stream`, read with the
//! protocol's stream decoder. The prompt goes as TGI's `inputs` (a chat rendered as ChatML,
//! the common instruction format; the remote model may expect another).

use futures_util::StreamExt;
use h2o_chat_engine::{
    EngineError, FinishReason, GenerationEvent, GenerationFailure, GenerationRequest,
};
use h2o_chat_protocol::{Decoder, Event};
use tokio::sync::mpsc;

use crate::relay::{
    AnswerBudget, EVENT_BUFFER, chain, error_event_failure, estimate_tokens, forward, http_client,
    successful_reply, tgi_parameters,
};

/// Largest event read from an upstream.
const MAX_EVENT: usize = 1 << 20;

/// See the module docs.
pub struct RemoteTgi {
    url: String,
    http: reqwest::Client,
    api_key: Option<String>,
}

impl RemoteTgi {
    /// Relays to the TGI server at `url`, with `Authorization: Bearer` when a key is given.
    pub fn new(url: &str, api_key: Option<String>) -> Result<Self, EngineError> {
        let http = http_client(url)?;
        Ok(RemoteTgi {
            url: url.trim_end_matches('/').to_string(),
            http,
            api_key,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Relays one request.
    pub fn start(&self, request: &GenerationRequest) -> mpsc::Receiver<GenerationEvent> {
        let (sender, events) = mpsc::channel(EVENT_BUFFER);
        let prompt = request.prompt.text();
        let input_tokens = estimate_tokens(&prompt) as u32;
        let body = serde_json::json!({"inputs": prompt, "parameters": tgi_parameters(request)});
        let post = self
            .http
            .post(format!("{}/generate_stream", self.url))
            .json(&body);
        let api_key = self.api_key.clone();
        let mut budget = AnswerBudget::for_request(request);
        tokio::spawn(async move {
            let fail =
                |message: String| GenerationEvent::Failed(GenerationFailure::Generation(message));
            let Some(response) = successful_reply(post, api_key.as_deref(), &sender).await else {
                return;
            };
            let mut body = response.bytes_stream();
            let mut decoder = Decoder::new(MAX_EVENT);
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
                                forward(&sender, fail(message)).await;
                                return;
                            }
                            None => match decoder.finish() {
                                Ok(Some(event)) => event,
                                _ => {
                                    let message =
                                        "the upstream stream ended without a final event".into();
                                    forward(&sender, fail(message)).await;
                                    return;
                                }
                            },
                        }
                    }
                    Err(err) => {
                        let message = format!("upstream sent a malformed event: {err}");
                        forward(&sender, fail(message)).await;
                        return;
                    }
                };
                match event {
                    Event::Token(token) => {
                        generated = generated.saturating_add(1);
                        if let Err(failure) = budget.spend(&token.text) {
                            forward(&sender, GenerationEvent::Failed(failure)).await;
                            return;
                        }
                        if !forward(&sender, GenerationEvent::Token(token)).await {
                            return;
                        }
                    }
                    Event::Final(final_event) => {
                        let details = final_event.details.clone();
                        let token = final_event.token.unwrap_or_else(crate::relay::end_token);
                        let finish = crate::relay::finish(
                            details
                                .as_ref()
                                .map_or(FinishReason::EosToken, |d| d.finish_reason),
                            details
                                .as_ref()
                                .map_or(generated.saturating_add(1), |d| d.generated_tokens),
                            final_event.generated_text,
                            input_tokens,
                            details.and_then(|d| d.seed),
                        );
                        forward(&sender, GenerationEvent::Finished(token, finish)).await;
                        return;
                    }
                    Event::Alternatives(top) => {
                        if !forward(&sender, GenerationEvent::Alternatives(top)).await {
                            return;
                        }
                    }
                    Event::Error(err) => {
                        let failure = error_event_failure(err.error, err.error_type.as_deref());
                        forward(&sender, GenerationEvent::Failed(failure)).await;
                        return;
                    }
                }
            }
        });
        events
    }
}
