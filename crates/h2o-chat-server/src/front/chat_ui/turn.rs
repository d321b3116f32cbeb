//! A chat-ui turn as it is stored: an [`Observer`] of the run that writes the question and
//! the answer into the conversation when the run ends — the whole answer, cleaned as
//! chat-ui cleaned it (§a.4 step 10), or as far as it went when it was stopped or its client
//! left (chat-ui's `abortedGenerations`). Each finished or cut turn counts for the rate
//! limit.

use std::sync::Arc;

use h2o_chat_engine::Token;

use crate::front::chat_ui::aborts::AbortGuard;
use crate::pipeline::{End, Observer};
use crate::store::{Author, Store, StoredMessage};

/// See the module docs.
pub struct Turn {
    store: Arc<dyn Store>,
    session: String,
    conversation: String,
    /// The messages the model saw, the question last.
    messages: Vec<StoredMessage>,
    /// The request's stop sequences (stripped from the stored answer).
    stop: Vec<String>,
    /// The answer so far.
    partial: String,
    /// Registered for stop-generating while the turn runs (a streamed one).
    _abort: Option<AbortGuard>,
}

impl Turn {
    pub fn new(
        store: Arc<dyn Store>,
        session: String,
        conversation: String,
        messages: Vec<StoredMessage>,
        stop: Vec<String>,
        abort: Option<AbortGuard>,
    ) -> Self {
        Turn {
            store,
            session,
            conversation,
            messages,
            stop,
            partial: String::new(),
            _abort: abort,
        }
    }

    fn save(&mut self, answer: Option<String>) {
        let mut messages = std::mem::take(&mut self.messages);
        if let Some(answer) = answer {
            messages.push(StoredMessage {
                from: Author::Assistant,
                content: answer,
                id: uuid::Uuid::new_v4().to_string(),
            });
        }
        self.store
            .set_messages(&self.session, &self.conversation, messages);
        self.store.record_generation(&self.session);
    }
}

impl Observer for Turn {
    fn token(&mut self, token: &Token) {
        if !token.special {
            self.partial.push_str(&token.text);
        }
    }

    fn end(&mut self, end: End<'_>) {
        match end {
            End::Finished(finished) => {
                let answer = clean_answer(&finished.finish.generated_text, &self.stop);
                self.save(Some(answer));
            }
            End::Aborted | End::Abandoned => {
                let partial = self.partial.trim_end();
                let answer = (!partial.is_empty()).then(|| partial.to_string());
                self.save(answer);
            }
            End::Failed(_) => {}
        }
    }
}

/// chat-ui's cleaning of the stored answer (§a.4 step 10).
fn clean_answer(generated: &str, stop: &[String]) -> String {
    let mut text = generated
        .strip_prefix("<|startoftext|>")
        .unwrap_or(generated);
    text = text.strip_suffix("</s>").unwrap_or(text);
    let mut text = text.trim_end().to_string();
    loop {
        let before = text.len();
        for stop in stop.iter().map(String::as_str).chain(["<|endoftext|>"]) {
            if !stop.is_empty()
                && let Some(stripped) = text.strip_suffix(stop)
            {
                text = stripped.trim_end().to_string();
            }
        }
        if text.len() == before {
            return text;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_answer_is_cleaned_like_chat_ui() {
        assert_eq!(clean_answer("<|startoftext|>Hi</s>", &[]), "Hi");
        assert_eq!(
            clean_answer("Hi there\nUser:", &["\nUser:".into()]),
            "Hi there"
        );
        assert_eq!(clean_answer("Hi<|endoftext|>  ", &[]), "Hi");
    }
}
