//! The generate step (§a.4) and the event stream it opens (§b).
//!
//! Opening a generation means: POST the body, check the reply, and read until the first
//! event. That whole unit is what gets retried — so a server that fails before saying
//! anything is asked again with `options.is_retry = true` and the same `options.id` — and
//! nothing after it ever is: once a token has been seen, a failure is the caller's to see.
//!
//! After the first event, [`Generation::next`] reads events with the idle timeout between
//! them, keeps the text received so far, and turns every way the stream can end badly into a
//! typed error that carries that text.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use futures_util::StreamExt;
use reqwest::{Client, Response, header};
use tokio::time::{Instant, timeout_at};

use crate::client::Inner;
use crate::client::conversation::Conversation;
use crate::client::reply::{read_capped, status_error, transport};
use crate::error::{Error, Step, TimeoutKind};
use crate::protocol::wire::GenerateRequest;
use crate::protocol::{DecodeError, Decoder, ErrorEvent, Event, FinalEvent};

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// How long the rest of a finished body may take to arrive before the connection is given up
/// (reading it to its end returns the connection to the pool).
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// A generation in progress: the open response and what has been received.
pub(crate) struct GenerateStream {
    /// Deleted (by its drop) as soon as the stream ends in any way.
    conversation: Option<Conversation>,
    url: String,
    body: Option<Body>,
    decoder: Decoder,
    /// The first event, read while opening, not yet handed out.
    first: Option<Event>,
    /// The non-special text received so far.
    partial: String,
    idle_timeout: Duration,
    inner: Arc<Inner>,
    finished: bool,
}

/// How a reply to the generate POST is read.
enum Framing {
    /// `text/event-stream` (SSE) or the later NDJSON, told apart by the first line.
    Stream,
    /// `application/json`: the non-stream reply of §b.7.
    Json,
}

impl GenerateStream {
    /// POSTs the generate body and waits for the first event, retrying while nothing has
    /// arrived. The first-event deadline covers every attempt.
    pub(crate) async fn open(
        inner: &Arc<Inner>,
        client: &Client,
        conversation: Conversation,
        request: &GenerateRequest,
    ) -> Result<GenerateStream, Error> {
        let config = &inner.config;
        let url = conversation.url().to_string();
        let first_body = serde_json::to_vec(request).map_err(|e| Error::Config(e.to_string()))?;
        let mut retry = request.clone();
        retry.options.is_retry = true;
        let retry_body = serde_json::to_vec(&retry).map_err(|e| Error::Config(e.to_string()))?;
        let deadline = Instant::now() + config.first_event_timeout;
        let attempts = AtomicUsize::new(0);

        let (body, decoder, first) = config
            .retry
            .run("generate", || {
                let payload = if attempts.fetch_add(1, Ordering::Relaxed) == 0 {
                    first_body.clone()
                } else {
                    retry_body.clone()
                };
                attempt(inner, client, &url, payload, deadline)
            })
            .await?;
        Ok(GenerateStream {
            conversation: Some(conversation),
            url,
            body,
            decoder,
            first: Some(first),
            partial: String::new(),
            idle_timeout: config.idle_timeout,
            inner: inner.clone(),
            finished: false,
        })
    }

    /// The next event; `None` after the final event or an error.
    pub(crate) async fn next(&mut self) -> Option<Result<Event, Error>> {
        if self.finished {
            return None;
        }
        if let Some(first) = self.first.take() {
            return Some(self.deliver(first));
        }
        let deadline = Instant::now() + self.idle_timeout;
        loop {
            match self.decoder.next_event() {
                Ok(Some(event)) => return Some(self.deliver(event)),
                Ok(None) => {}
                Err(err) => return Some(Err(self.decode_failure(err))),
            }
            let Some(body) = self.body.as_mut() else {
                // A JSON reply is whole: nothing follows its one event.
                return Some(Err(self.incomplete(None)));
            };
            match timeout_at(deadline, body.next()).await {
                Err(_) => {
                    let err = Error::Timeout {
                        step: Step::Generate,
                        url: self.url.clone(),
                        kind: TimeoutKind::Idle,
                        after: self.idle_timeout,
                        partial: self.partial.clone(),
                    };
                    return Some(Err(self.end_with(err)));
                }
                Ok(Some(Ok(bytes))) => self.decoder.push(&bytes),
                Ok(Some(Err(err))) => return Some(Err(self.incomplete(Some(err.to_string())))),
                Ok(None) => {
                    return Some(match self.decoder.finish() {
                        Ok(Some(event)) => self.deliver(event),
                        Ok(None) => Err(self.incomplete(None)),
                        Err(err) => Err(self.decode_failure(err)),
                    });
                }
            }
        }
    }

    fn deliver(&mut self, event: Event) -> Result<Event, Error> {
        match event {
            Event::Token(token) => {
                if !token.special {
                    self.partial.push_str(&token.text);
                }
                Ok(Event::Token(token))
            }
            Event::Final(final_event) => {
                self.finish_cleanly();
                Ok(Event::Final(final_event))
            }
            Event::Alternatives(top) => Ok(Event::Alternatives(top)),
            Event::Error(ErrorEvent { error, error_type }) => {
                let err = Error::Stream {
                    error_type,
                    message: error,
                    partial: std::mem::take(&mut self.partial),
                };
                Err(self.end_with(err))
            }
        }
    }

    /// After the final event: read what is left of the body (normally nothing but the end of
    /// the chunked encoding) so the connection goes back to the pool, then delete the
    /// conversation — both off the caller's path.
    fn finish_cleanly(&mut self) {
        self.finished = true;
        let body = self.body.take();
        let conversation = self.conversation.take();
        let task = async move {
            if let Some(mut body) = body {
                let drain = async {
                    let mut left = 64 * 1024usize;
                    while let Some(Ok(chunk)) = body.next().await {
                        left = left.saturating_sub(chunk.len());
                        if left == 0 {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(DRAIN_LIMIT, drain).await;
            }
            drop(conversation);
        };
        self.inner.cleanup.spawn(task);
    }

    fn incomplete(&mut self, cause: Option<String>) -> Error {
        let err = Error::Incomplete {
            partial: std::mem::take(&mut self.partial),
            cause,
        };
        self.end_with(err)
    }

    fn decode_failure(&mut self, err: DecodeError) -> Error {
        let partial = std::mem::take(&mut self.partial);
        let err = match err {
            DecodeError::EventTooLarge { limit } => Error::EventTooLarge {
                step: Step::Generate,
                url: self.url.clone(),
                limit,
                partial,
            },
            DecodeError::Event(err) => {
                tracing::warn!(%err, "malformed stream event");
                Error::Protocol {
                    step: Step::Generate,
                    url: self.url.clone(),
                    detail: err.to_string(),
                    partial,
                }
            }
        };
        self.end_with(err)
    }

    /// Ends the stream on an error: the body is dropped (closing its connection) and the
    /// conversation deleted.
    fn end_with(&mut self, err: Error) -> Error {
        self.finished = true;
        self.body = None;
        self.conversation = None;
        err
    }
}

/// One attempt: POST, check the reply, read up to the first event.
async fn attempt(
    inner: &Inner,
    client: &Client,
    url: &str,
    payload: Vec<u8>,
    deadline: Instant,
) -> Result<(Option<Body>, Decoder, Event), Error> {
    let config = &inner.config;
    let first_event_timeout = || Error::Timeout {
        step: Step::Generate,
        url: url.to_string(),
        kind: TimeoutKind::FirstEvent,
        after: config.first_event_timeout,
        partial: String::new(),
    };
    let send = client
        .post(url)
        .header(header::REFERER, config.referer())
        .header(header::CONTENT_TYPE, "application/json")
        .body(payload)
        .send();
    let response = timeout_at(deadline, send)
        .await
        .map_err(|_| first_event_timeout())?
        .map_err(|err| transport(Step::Generate, url, err, config.first_event_timeout))?;
    if !response.status().is_success() {
        let left = deadline.saturating_duration_since(Instant::now());
        return Err(status_error(
            Step::Generate,
            url,
            response,
            left.min(config.request_timeout),
        )
        .await);
    }
    let mut decoder = Decoder::new(config.max_event_size);
    match framing(url, &response)? {
        Framing::Json => {
            let event = timeout_at(
                deadline,
                read_json_reply(url, response, config.max_event_size),
            )
            .await
            .map_err(|_| first_event_timeout())??;
            Ok((None, decoder, event))
        }
        Framing::Stream => {
            let mut body: Body = Box::pin(response.bytes_stream());
            loop {
                match decoder.next_event() {
                    Ok(Some(event)) => return Ok((Some(body), decoder, event)),
                    Ok(None) => {}
                    Err(err) => return Err(opening_decode_error(url, err)),
                }
                match timeout_at(deadline, body.next()).await {
                    Err(_) => return Err(first_event_timeout()),
                    Ok(Some(Ok(bytes))) => decoder.push(&bytes),
                    Ok(Some(Err(err))) => {
                        return Err(Error::Incomplete {
                            partial: String::new(),
                            cause: Some(err.to_string()),
                        });
                    }
                    Ok(None) => {
                        return match decoder.finish() {
                            Ok(Some(event)) => Ok((None, decoder, event)),
                            Ok(None) => Err(Error::Incomplete {
                                partial: String::new(),
                                cause: None,
                            }),
                            Err(err) => Err(opening_decode_error(url, err)),
                        };
                    }
                }
            }
        }
    }
}

fn opening_decode_error(url: &str, err: DecodeError) -> Error {
    match err {
        DecodeError::EventTooLarge { limit } => Error::EventTooLarge {
            step: Step::Generate,
            url: url.to_string(),
            limit,
            partial: String::new(),
        },
        DecodeError::Event(err) => Error::Protocol {
            step: Step::Generate,
            url: url.to_string(),
            detail: err.to_string(),
            partial: String::new(),
        },
    }
}

/// Decides how to read the reply from its Content-Type (§a.4, §b.5 step 9).
fn framing(url: &str, response: &Response) -> Result<Framing, Error> {
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/json" => Ok(Framing::Json),
        // The SSE label; the NDJSON era used it too (§g), and the first line tells them apart.
        "text/event-stream" | "application/x-ndjson" | "application/jsonl" | "text/plain" | "" => {
            Ok(Framing::Stream)
        }
        _ => Err(Error::Protocol {
            step: Step::Generate,
            url: url.to_string(),
            detail: format!("unexpected content type `{content_type}` for the answer stream"),
            partial: String::new(),
        }),
    }
}

/// §b.7: `[{"generated_text": "...", "details": ...}]`, a bare object, or an error object.
async fn read_json_reply(url: &str, response: Response, limit: usize) -> Result<Event, Error> {
    let protocol = |detail: String| Error::Protocol {
        step: Step::Generate,
        url: url.to_string(),
        detail,
        partial: String::new(),
    };
    let body = read_capped(response, limit)
        .await
        .map_err(|err| Error::Incomplete {
            partial: String::new(),
            cause: Some(err.to_string()),
        })?
        .ok_or_else(|| Error::EventTooLarge {
            step: Step::Generate,
            url: url.to_string(),
            limit,
            partial: String::new(),
        })?;
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|err| protocol(format!("unreadable JSON answer: {err}")))?;
    let object = match &value {
        serde_json::Value::Array(items) => items.first().cloned().unwrap_or_default(),
        other => other.clone(),
    };
    if let Some(error) = object.get("error").and_then(|e| e.as_str()) {
        return Ok(Event::Error(ErrorEvent {
            error: error.to_string(),
            error_type: object
                .get("error_type")
                .and_then(|t| t.as_str())
                .map(str::to_string),
        }));
    }
    let Some(text) = object.get("generated_text").and_then(|t| t.as_str()) else {
        return Err(protocol("JSON answer without `generated_text`".into()));
    };
    let details = object
        .get("details")
        .cloned()
        .and_then(|d| serde_json::from_value(d).ok());
    Ok(Event::Final(FinalEvent {
        token: None,
        generated_text: text.to_string(),
        details,
    }))
}
