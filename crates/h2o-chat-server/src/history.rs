//! What of a chat-ui conversation the model sees: the newest messages whose rendered
//! prompt fits the token budget. Older messages are dropped whole (never cut mid-turn), and
//! only the window is stored back, so stored history is bounded by what the model can see.
//!
//! The window is found with as few renderings as possible: the whole history first (it
//! usually fits), then a binary search over where the window starts — the token count only
//! falls as messages are dropped.

use std::sync::Arc;

use h2o_chat_engine::{ChatTurn, Engine, Prompt, Tokenized};
use tokio::sync::Semaphore;

use crate::store::StoredMessage;
use crate::validation::{Rejection, render_chat, tokenize};

/// The messages the model sees and their prompt.
pub struct Window {
    /// Index of the first message kept.
    pub first: usize,
    pub prompt: Prompt,
    pub tokens: Tokenized,
}

fn turns(messages: &[StoredMessage]) -> Vec<ChatTurn> {
    messages
        .iter()
        .map(|m| ChatTurn::new(m.from.role(), m.content.clone()))
        .collect()
}

async fn measure(
    engine: &Arc<dyn Engine>,
    workers: &Arc<Semaphore>,
    messages: &[StoredMessage],
) -> Result<(Prompt, Tokenized), Rejection> {
    let prompt = render_chat(engine, workers, turns(messages)).await?;
    tokenize(engine, workers, prompt).await
}

/// The newest messages (at least the last one) whose prompt has at most `budget` tokens.
/// When even the last message alone is over budget, it is returned anyway: validation then
/// refuses it with TGI's message.
pub async fn fit(
    engine: &Arc<dyn Engine>,
    workers: &Arc<Semaphore>,
    messages: &[StoredMessage],
    budget: usize,
) -> Result<Window, Rejection> {
    let last = messages.len().saturating_sub(1);
    let (prompt, tokens) = measure(engine, workers, messages).await?;
    if tokens.count <= budget || last == 0 {
        return Ok(Window {
            first: 0,
            prompt,
            tokens,
        });
    }
    // `lo` is known not to fit; find the smallest start in (lo, last] that fits.
    let mut lo = 0;
    let mut hi = last;
    let mut best: Option<(Prompt, Tokenized)> = None;
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let (prompt, tokens) = measure(engine, workers, &messages[mid..]).await?;
        if tokens.count <= budget {
            hi = mid;
            best = Some((prompt, tokens));
        } else {
            lo = mid;
        }
    }
    let (prompt, tokens) = match best {
        Some(found) => found,
        None => measure(engine, workers, &messages[hi..]).await?,
    };
    Ok(Window {
        first: hi,
        prompt,
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Author;
    use h2o_chat_engine::{Script, ScriptedEngine};

    fn message(content: &str) -> StoredMessage {
        StoredMessage {
            from: Author::User,
            content: content.into(),
            id: String::new(),
        }
    }

    #[tokio::test]
    async fn the_newest_messages_that_fit_are_kept() {
        // The scripted engine counts one token per byte of the ChatML prompt.
        let engine: Arc<dyn Engine> = Arc::new(ScriptedEngine::new(Script::default()));
        let workers = Arc::new(Semaphore::new(1));
        let messages: Vec<StoredMessage> = (0..10)
            .map(|i| message(&format!("{i}").repeat(50)))
            .collect();
        let whole = fit(&engine, &workers, &messages, usize::MAX).await.unwrap();
        assert_eq!(whole.first, 0);
        // Each turn is `<|im_start|>user\n` + 50 bytes + `<|im_end|>\n` = 78 bytes, plus 22
        // for the open assistant turn.
        assert_eq!(whole.tokens.count, 10 * 78 + 22);
        let window = fit(&engine, &workers, &messages, 3 * 78 + 22 + 10)
            .await
            .unwrap();
        assert_eq!(window.first, 7);
        assert_eq!(window.tokens.count, 3 * 78 + 22);
        assert!(window.prompt.text().contains(&"9".repeat(50)));
        let too_long = fit(&engine, &workers, &messages, 5).await.unwrap();
        assert_eq!(too_long.first, 9, "the last message is always kept");
    }
}
