//! A chat-ui turn as it is stored: the question before the answer streams (the route calls
//! [`Turn::begin`]), then the answer when the run ends, by an [`Observer`] of the run — the
//! whole answer, cleaned as chat-ui cleaned it (§a.4 step 10), or as far as it went at every
//! other end: stop-generating (chat-ui's `abortedGenerations`), a client that left, a reader
//! given up, an engine or upstream failure, shutdown. A write that fails is the client's
//! error (an error event instead of the final one), never a silent success. Each finished or
//! cut turn counts for the rate limit.

use h2o_chat_engine::Token;

use crate::failure::Failure;
use crate::front::chat_ui::aborts::AbortGuard;
use crate::pipeline::{End, Observer, Settle};
use crate::store::{Author, Conversations, StoredMessage, TurnStart};

/// See the module docs.
pub struct Turn {
    conversations: Conversations,
    session: String,
    conversation: String,
    /// The question's message id: the answer is stored right after it.
    question: String,
    /// The request's stop sequences (stripped from the stored answer).
    stop: Vec<String>,
    /// The answer so far.
    partial: String,
    /// Registered for stop-generating while the turn runs (a streamed one).
    _abort: Option<AbortGuard>,
}

impl Turn {
    /// Stores the question (a retry replaces the retried message and what follows it);
    /// `None` when the conversation is gone.
    pub async fn begin(
        conversations: &Conversations,
        session: &str,
        conversation: &str,
        start: TurnStart,
    ) -> Result<Option<String>, Failure> {
        let question = start.question.id.clone();
        let stored = conversations
            .begin_turn(session.to_string(), conversation.to_string(), start)
            .await?;
        Ok(stored.then_some(question))
    }

    /// The observer of the run answering `question`.
    pub fn new(
        conversations: Conversations,
        session: String,
        conversation: String,
        question: String,
        stop: Vec<String>,
        abort: Option<AbortGuard>,
    ) -> Self {
        Turn {
            conversations,
            session,
            conversation,
            question,
            stop,
            partial: String::new(),
            _abort: abort,
        }
    }

    /// Stores `answer` after the question and counts the turn for the rate limit.
    fn save(&mut self, answer: Option<String>) -> Settle {
        let conversations = self.conversations.clone();
        let session = std::mem::take(&mut self.session);
        let conversation = std::mem::take(&mut self.conversation);
        let question = std::mem::take(&mut self.question);
        Box::pin(async move {
            if let Some(answer) = answer {
                let answer = StoredMessage {
                    from: Author::Assistant,
                    content: answer,
                    id: uuid::Uuid::new_v4().to_string(),
                };
                // `false`: the question is no longer there (deleted, retried): nothing to keep.
                conversations
                    .end_turn(session.clone(), conversation, question, answer)
                    .await?;
            }
            conversations.record_generation(session).await?;
            Ok(())
        })
    }
}

impl Observer for Turn {
    fn token(&mut self, token: &Token) {
        if !token.special {
            self.partial.push_str(&token.text);
        }
    }

    fn end(&mut self, end: End<'_>) -> Option<Settle> {
        let answer = match end {
            End::Finished(finished) => clean_answer(&finished.finish.generated_text, &self.stop),
            End::Aborted | End::Abandoned | End::Failed(_) => self.partial.trim_end().to_string(),
        };
        Some(self.save((!answer.is_empty()).then_some(answer)))
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
