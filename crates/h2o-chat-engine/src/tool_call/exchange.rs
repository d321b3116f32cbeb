//! A chat's turns read back as calls and results, for whatever takes them as structured
//! messages (an upstream's OpenAI `tool_calls` and `tool` messages, a model's own template).
//!
//! An assistant turn of calls [`written`](super::written) is calls; a user turn of
//! [`response`](super::response)s answers, in order, the calls of the assistant turn just
//! before it not answered yet — results with no call waiting for them stay a turn of text.
//!
//! ```
//! use h2o_chat_engine::ChatTurn;
//! use h2o_chat_engine::tool_call::{self, Exchange, exchanges};
//!
//! let turns = [
//!     ChatTurn::new("assistant", tool_call::written("get_weather", r#"{"city": "Paris"}"#)),
//!     ChatTurn::new("user", tool_call::response("18 C")),
//! ];
//! let read = exchanges(&turns);
//! assert!(matches!(&read[0], Exchange::Calls { turn: 0, calls, .. } if calls.len() == 1));
//! assert!(matches!(&read[1], Exchange::Result { call: (0, 0), name, content } if name == "get_weather" && content == "18 C"));
//! ```

use std::collections::VecDeque;

use crate::ChatTurn;

/// One step of a chat, read back.
#[derive(Debug, Clone, PartialEq)]
pub enum Exchange<'a> {
    /// A turn as it is.
    Turn(&'a ChatTurn),
    /// Turn `turn`, an assistant's: its words before the calls, and the calls as (name,
    /// arguments).
    Calls {
        turn: usize,
        words: String,
        calls: Vec<(String, String)>,
    },
    /// A tool's result, answering call `call.1` of turn `call.0` (named `name`).
    Result {
        call: (usize, usize),
        name: String,
        content: String,
    },
}

/// `turns` read back (see the module docs).
pub fn exchanges(turns: &[ChatTurn]) -> Vec<Exchange<'_>> {
    let mut read = Vec::with_capacity(turns.len());
    // The calls of the last assistant turn not answered yet: (turn, index, name).
    let mut unanswered: VecDeque<(usize, usize, String)> = VecDeque::new();
    for (i, turn) in turns.iter().enumerate() {
        match turn.role.as_str() {
            "assistant" => {
                if let Some((words, calls)) = super::read_written(&turn.content) {
                    unanswered = calls
                        .iter()
                        .enumerate()
                        .map(|(k, (name, _))| (i, k, name.clone()))
                        .collect();
                    read.push(Exchange::Calls {
                        turn: i,
                        words,
                        calls,
                    });
                    continue;
                }
            }
            "user" => {
                if let Some(results) = super::read_responses(&turn.content)
                    && results.len() <= unanswered.len()
                {
                    for content in results {
                        if let Some((turn, index, name)) = unanswered.pop_front() {
                            read.push(Exchange::Result {
                                call: (turn, index),
                                name,
                                content,
                            });
                        }
                    }
                    continue;
                }
            }
            _ => {}
        }
        // Results answer only the calls just before them.
        unanswered.clear();
        read.push(Exchange::Turn(turn));
    }
    read
}
