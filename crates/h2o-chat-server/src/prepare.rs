//! The one costly step every request takes before the engine: compile its constraint (a
//! grammar) if it has one, render the messages with the model's template, tokenise, and for
//! a conversation's history find the window of newest messages that fits the [`Budget`] — in
//! one hop off the async runtime, holding one of the `validation_workers` permits (TGI's
//! validation workers), however many renderings the window takes.
//!
//! The window is found with as few renderings as possible: the whole history first (it
//! usually fits), then a binary search over where the window starts — the token count only
//! falls as messages are dropped. When even the last message alone is over budget it is
//! kept anyway, and the length rules refuse it with TGI's message.

use std::sync::Arc;

use h2o_chat_engine::{ChatTurn, Constraint, Engine, EngineError, Prompt, Tokenized, ToolUse};
use tokio::sync::Semaphore;

use crate::failure::Failure;
use crate::plan::Input;
use crate::validation::{Budget, ValidationError};

/// A prompt ready for the engine.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub prompt: Prompt,
    /// Its tokens, after `truncate`.
    pub tokens: Tokenized,
    /// Whether `truncate` dropped prompt tokens.
    pub truncated: bool,
    /// For a history: the index of the first message the model sees (0 otherwise).
    pub first_message: usize,
}

/// Prepares `input` for `engine` (see the module docs).
pub async fn prepare(
    engine: &Arc<dyn Engine>,
    workers: &Arc<Semaphore>,
    input: Input,
    budget: Budget,
    truncate: Option<usize>,
    constraint: Option<Constraint>,
) -> Result<Prepared, Failure> {
    let _permit = workers
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| Failure::Unavailable("the server is shutting down".into()))?;
    let engine = engine.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        if let Some(constraint) = &constraint {
            engine
                .check_constraint(constraint)
                .map_err(|err| match err {
                    EngineError::Input(message) => {
                        Failure::Invalid(ValidationError::Grammar(message))
                    }
                    other => Failure::from(other),
                })?;
        }
        let tools = match &constraint {
            Some(Constraint::Tools(tools)) => Some(tools),
            _ => None,
        };
        prepare_now(engine.as_ref(), input, budget, tools).map_err(|err| match err {
            EngineError::Input(message) => Failure::Invalid(ValidationError::Prompt(message)),
            other => Failure::from(other),
        })
    })
    .await
    .map_err(|join| Failure::Unavailable(format!("preparing the prompt failed: {join}")))?;
    let (prompt, tokens, first_message) = prepared?;
    let counted = tokens.count;
    let tokens = match truncate {
        Some(keep) => tokens.keep_last(keep),
        None => tokens,
    };
    Ok(Prepared {
        truncated: tokens.count < counted,
        prompt,
        tokens,
        first_message,
    })
}

/// The blocking part: render, tokenise, fit.
fn prepare_now(
    engine: &dyn Engine,
    input: Input,
    budget: Budget,
    tools: Option<&ToolUse>,
) -> Result<(Prompt, Tokenized, usize), EngineError> {
    match input {
        Input::Raw(text) => {
            let prompt = Prompt::raw(text);
            let tokens = engine.tokenize(&prompt)?;
            Ok((prompt, tokens, 0))
        }
        Input::Chat(turns) => {
            let (prompt, tokens) = measure(engine, &turns, tools)?;
            Ok((prompt, tokens, 0))
        }
        Input::History(turns) => fit(engine, &turns, budget, tools),
    }
}

/// Renders and tokenises `turns`: with tools, the model's own way when its template has one
/// ([`Engine::render_chat_with_tools`]), else with the generic section the front wrote.
fn measure(
    engine: &dyn Engine,
    turns: &[ChatTurn],
    tools: Option<&ToolUse>,
) -> Result<(Prompt, Tokenized), EngineError> {
    let own = match tools {
        Some(tools) => engine.render_chat_with_tools(&tools.without_section(turns), tools)?,
        None => None,
    };
    let prompt = match own {
        Some(prompt) => prompt,
        None => engine.render_chat(turns)?,
    };
    let tokens = engine.tokenize(&prompt)?;
    Ok((prompt, tokens))
}

/// The newest turns (at least the last one) whose prompt has at most `budget` tokens.
fn fit(
    engine: &dyn Engine,
    turns: &[ChatTurn],
    Budget(budget): Budget,
    tools: Option<&ToolUse>,
) -> Result<(Prompt, Tokenized, usize), EngineError> {
    let last = turns.len().saturating_sub(1);
    let (prompt, tokens) = measure(engine, turns, tools)?;
    if tokens.count <= budget || last == 0 {
        return Ok((prompt, tokens, 0));
    }
    // `lo` is known not to fit; find the smallest start in (lo, last] that fits.
    let mut lo = 0;
    let mut hi = last;
    let mut best: Option<(Prompt, Tokenized)> = None;
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let (prompt, tokens) = measure(engine, &turns[mid..], tools)?;
        if tokens.count <= budget {
            hi = mid;
            best = Some((prompt, tokens));
        } else {
            lo = mid;
        }
    }
    let (prompt, tokens) = match best {
        Some(found) => found,
        None => measure(engine, &turns[hi..], tools)?,
    };
    Ok((prompt, tokens, hi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use h2o_chat_engine::{Script, ScriptedEngine};

    fn history() -> Vec<ChatTurn> {
        (0..10)
            .map(|i| ChatTurn::new("user", format!("{i}").repeat(50)))
            .collect()
    }

    #[tokio::test]
    async fn the_newest_messages_that_fit_are_kept() {
        // The scripted engine counts one token per byte of the ChatML prompt.
        let engine: Arc<dyn Engine> = Arc::new(ScriptedEngine::new(Script::default()));
        let workers = Arc::new(Semaphore::new(1));
        let prepare = |budget| {
            prepare(
                &engine,
                &workers,
                Input::History(history()),
                Budget(budget),
                None,
                None,
            )
        };
        let whole = prepare(usize::MAX).await.unwrap();
        assert_eq!(whole.first_message, 0);
        // Each turn is `<|im_start|>user\n` + 50 bytes + `<|im_end|>\n` = 78 bytes, plus 22
        // for the open assistant turn.
        assert_eq!(whole.tokens.count, 10 * 78 + 22);
        let window = prepare(3 * 78 + 22 + 10).await.unwrap();
        assert_eq!(window.first_message, 7);
        assert_eq!(window.tokens.count, 3 * 78 + 22);
        assert!(window.prompt.text().contains(&"9".repeat(50)));
        let too_long = prepare(5).await.unwrap();
        assert_eq!(too_long.first_message, 9, "the last message is always kept");
    }

    #[tokio::test]
    async fn truncation_keeps_the_last_tokens_and_says_so() {
        let engine: Arc<dyn Engine> = Arc::new(ScriptedEngine::new(Script::default()));
        let workers = Arc::new(Semaphore::new(1));
        let raw = Input::Raw("0123456789".into());
        let kept = prepare(&engine, &workers, raw.clone(), Budget(0), Some(4), None)
            .await
            .unwrap();
        assert_eq!(kept.tokens.count, 4);
        assert!(kept.truncated);
        let whole = prepare(&engine, &workers, raw, Budget(0), Some(40), None)
            .await
            .unwrap();
        assert!(!whole.truncated);
    }

    #[tokio::test]
    async fn one_permit_serves_the_whole_window_search() {
        // With a single permit held elsewhere, preparing waits; released, it completes with
        // its binary search inside the one hop.
        let engine: Arc<dyn Engine> = Arc::new(ScriptedEngine::new(Script::default()));
        let workers = Arc::new(Semaphore::new(1));
        let held = workers.clone().acquire_owned().await.unwrap();
        let task = {
            let (engine, workers) = (engine.clone(), workers.clone());
            tokio::spawn(async move {
                prepare(
                    &engine,
                    &workers,
                    Input::History(history()),
                    Budget(200),
                    None,
                    None,
                )
                .await
            })
        };
        tokio::task::yield_now().await;
        assert!(!task.is_finished(), "waits for the permit");
        drop(held);
        let window = task.await.unwrap().unwrap();
        assert_eq!(window.first_message, 8);
        assert_eq!(workers.available_permits(), 1, "the one permit is back");
    }
}
