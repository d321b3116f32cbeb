//! The streams a completion hands out: events for callers who want everything, text tokens
//! for everyone else, and [`Completion`] for the whole answer.
//!
//! Dropping a stream early is allowed at any point: the conversation is deleted in the
//! background.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_util::StreamExt;

use crate::client::generate_stream::GenerateStream;
use crate::error::Error;
use crate::protocol::{Details, Event};

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Error>> + Send>>;

/// Every event of the answer: tokens (special ones included) and the final event. A server
/// error event arrives as `Err(Error::Stream)`; the stream ends after the final event or the
/// first error.
pub struct EventStream {
    inner: Boxed<Event>,
}

impl EventStream {
    pub(crate) fn new(generation: GenerateStream) -> Self {
        let inner = futures_util::stream::unfold(generation, |mut generation| async move {
            let item = generation.next().await?;
            Some((item, generation))
        });
        EventStream {
            inner: Box::pin(inner),
        }
    }

    /// Reads the stream to its end.
    pub async fn collect_completion(mut self) -> Result<Completion, Error> {
        let mut completion = Completion::default();
        while let Some(event) = self.next().await {
            match event? {
                Event::Token(token) => {
                    completion.tokens += 1;
                    if !token.special {
                        completion.text.push_str(&token.text);
                    }
                }
                Event::Final(final_event) => {
                    match &final_event.token {
                        Some(token) => {
                            completion.tokens += 1;
                            if !token.special {
                                completion.text.push_str(&token.text);
                            }
                        }
                        None if completion.text.is_empty() => {
                            completion.text.clone_from(&final_event.generated_text);
                        }
                        None => {}
                    }
                    completion.generated_text = final_event.generated_text;
                    completion.details = final_event.details;
                    return Ok(completion);
                }
                Event::Alternatives(_) => {}
                Event::Error(err) => {
                    // Generation turns error events into `Err`; kept for exhaustiveness.
                    return Err(Error::Stream {
                        error_type: err.error_type,
                        message: err.error,
                        partial: completion.text,
                    });
                }
            }
        }
        Err(Error::Incomplete {
            partial: completion.text,
            cause: None,
        })
    }
}

impl Stream for EventStream {
    type Item = Result<Event, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// The answer's text, one item per token that has text. Special tokens (EOS and other
/// control tokens) never appear; the stream ends at the final event (§b.5 step 6).
pub struct TokenStream {
    inner: Boxed<String>,
}

impl TokenStream {
    pub(crate) fn new(events: EventStream) -> Self {
        // Whether any text was yielded: a final event without a token (the JSON and NDJSON
        // replies) then carries the whole answer, which must not be repeated.
        let inner = events.scan(false, |yielded, event| {
            let item = match event {
                Ok(Event::Token(token)) if !token.special && !token.text.is_empty() => {
                    *yielded = true;
                    Some(Ok(token.text))
                }
                Ok(Event::Token(_) | Event::Alternatives(_)) => None,
                Ok(Event::Final(final_event)) => match final_event.token {
                    Some(token) if !token.special && !token.text.is_empty() => Some(Ok(token.text)),
                    Some(_) => None,
                    None if !*yielded && !final_event.generated_text.is_empty() => {
                        Some(Ok(final_event.generated_text))
                    }
                    None => None,
                },
                Ok(Event::Error(err)) => Some(Err(Error::Stream {
                    error_type: err.error_type,
                    message: err.error,
                    partial: String::new(),
                })),
                Err(err) => Some(Err(err)),
            };
            std::future::ready(Some(item))
        });
        TokenStream {
            inner: Box::pin(inner.filter_map(std::future::ready)),
        }
    }

    /// Reads the stream to its end and returns the text.
    pub async fn collect_text(mut self) -> Result<String, Error> {
        let mut text = String::new();
        while let Some(token) = self.next().await {
            text.push_str(&token?);
        }
        Ok(text)
    }
}

impl Stream for TokenStream {
    type Item = Result<String, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// A whole answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    /// The non-special token texts, joined: exactly what a token stream would have shown.
    pub text: String,
    /// The final event's `generated_text`, as the server decoded it (it may differ from
    /// `text` in leading whitespace, §b.3).
    pub generated_text: String,
    /// `finish_reason`, token count and seed, when the request asked for `details`.
    pub details: Option<Details>,
    /// Tokens received, the final one included.
    pub tokens: usize,
}
