//! A remote H2o (chat-ui) server, through the provider library: settings once per session, a
//! conversation per request, and the conversation deleted however the request ends —
//! including when the server's own client disconnects. Graceful shutdown waits for those
//! deletions ([`RemoteH2o::cleanup`]).

use futures_util::StreamExt;
use h2o_chat::{Event, H2o, Message, Parameters};
use h2o_chat_engine::{
    EngineError, FinishReason, GenerationEvent, GenerationFailure, GenerationRequest, Token,
};
use tokio::sync::mpsc;

use crate::relay::{AnswerBudget, EVENT_BUFFER, error_event_failure, estimate_tokens, forward};

/// See the module docs.
pub struct RemoteH2o {
    client: H2o,
}

/// A provider error as a failure: HTTP statuses stay statuses, an unreachable server is a
/// 502 and a silent one a 504.
fn failure_of(err: &h2o_chat::Error) -> GenerationFailure {
    let upstream = |status: u16, retry_after, message: &str| GenerationFailure::Upstream {
        status,
        retry_after,
        message: message.to_string(),
    };
    match err {
        h2o_chat::Error::RateLimited {
            retry_after,
            message,
            ..
        } => upstream(429, *retry_after, message),
        h2o_chat::Error::Http {
            status, message, ..
        }
        | h2o_chat::Error::Session {
            status, message, ..
        } => upstream(*status, None, message),
        h2o_chat::Error::Transport { .. } => upstream(502, None, &shown(err)),
        h2o_chat::Error::Timeout { partial, .. } if partial.is_empty() => {
            upstream(504, None, &shown(err))
        }
        h2o_chat::Error::Stream {
            message,
            error_type,
            ..
        } => error_event_failure(message.clone(), error_type.as_deref()),
        other => GenerationFailure::Generation(shown(other)),
    }
}

/// An error's text as a client may see it: no credentials of the upstream's URL.
fn shown(err: &h2o_chat::Error) -> String {
    crate::redact::credentials(&err.to_string())
}

impl RemoteH2o {
    /// Relays to the H2o server at `url` (a path prefix is kept).
    pub fn new(url: &str) -> Result<Self, EngineError> {
        // No retries here: an upstream's error (a 429 with its Retry-After, a 503) goes back
        // to the gateway at once, which fails over or tells the client.
        let client = H2o::builder()
            .url(url)
            .parameters(Parameters::empty())
            .retry(h2o_chat::RetryPolicy::none())
            .connect_timeout(crate::relay::CONNECT_TIMEOUT)
            .idle_timeout(crate::relay::READ_TIMEOUT)
            .build()
            .map_err(|e| EngineError::Load {
                path: crate::redact::credentials(url).into(),
                detail: e.to_string(),
            })?;
        Ok(RemoteH2o { client })
    }

    pub fn url(&self) -> &str {
        self.client.url()
    }

    /// Waits until every upstream conversation is deleted.
    pub async fn cleanup(&self) {
        self.client.wait_for_cleanup().await;
    }

    /// Relays one request; `model` is the upstream's model id (`None`: its default).
    pub fn start(
        &self,
        model: Option<&str>,
        request: &GenerationRequest,
    ) -> mpsc::Receiver<GenerationEvent> {
        let (sender, events) = mpsc::channel(EVENT_BUFFER);
        // A chat goes as its messages (the provider formats them, the upstream applies its
        // own template); anything else as one user message.
        let messages: Vec<Message> = match request.prompt.chat() {
            Some(turns) => turns
                .iter()
                .map(|t| Message::new(t.role.clone(), t.content.clone()))
                .collect(),
            None => vec![Message::user(request.prompt.text())],
        };
        let input_tokens = estimate_tokens(&request.prompt.text()) as u32;
        let mut call = self.client.request(messages).parameters(Parameters::from(
            crate::relay::tgi_parameters(request)
                .as_object()
                .cloned()
                .unwrap_or_default(),
        ));
        if let Some(model) = model {
            call = call.model(model.to_string());
        }
        let mut budget = AnswerBudget::for_request(request);
        tokio::spawn(async move {
            let opened = tokio::select! {
                opened = call.events() => opened,
                () = sender.closed() => return,
            };
            let mut stream = match opened {
                Ok(stream) => stream,
                Err(err) => {
                    forward(&sender, GenerationEvent::Failed(failure_of(&err))).await;
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
                        generated = generated.saturating_add(1);
                        match budget.spend(&token.text) {
                            Ok(()) => GenerationEvent::Token(token),
                            Err(failure) => GenerationEvent::Failed(failure),
                        }
                    }
                    Some(Ok(Event::Final(final_event))) => {
                        let details = final_event.details.clone();
                        let token = final_event.token.unwrap_or(Token {
                            id: 0,
                            text: String::new(),
                            logprob: None,
                            special: true,
                        });
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
                    Some(Ok(Event::Alternatives(top))) => GenerationEvent::Alternatives(top),
                    Some(Ok(Event::Error(err))) => GenerationEvent::Failed(error_event_failure(
                        err.error,
                        err.error_type.as_deref(),
                    )),
                    Some(Err(err)) => GenerationEvent::Failed(failure_of(&err)),
                    None => GenerationEvent::Failed(GenerationFailure::Generation(
                        "the upstream stream ended without a final event".into(),
                    )),
                };
                let failed = matches!(event, GenerationEvent::Failed(_));
                if !forward(&sender, event).await || failed {
                    return;
                }
            }
        });
        events
    }
}
