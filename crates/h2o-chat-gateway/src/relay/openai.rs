//! A remote OpenAI-compatible server (vLLM's, llama.cpp's `llama-server`, another gateway):
//! a chat goes to `POST /v1/chat/completions` as its messages, so the upstream applies its
//! own template; a raw prompt goes to `POST /v1/completions`. Both stream.
//!
//! TGI's parameters map to OpenAI's: greedy decoding is `temperature` 0, `top_p`, `seed`,
//! `stop`, `max_tokens`, and `repetition_penalty` r > 1 becomes `frequency_penalty`
//! `2 (r − 1)` (capped at 2) — the inverse of the server's own OpenAI mapping. `top_k` and
//! `typical_p` have no OpenAI field and are not sent.
//!
//! Tools go as OpenAI's own `tools`, `tool_choice` and `parallel_tool_calls`: the upstream
//! shows them to its model in its model's format, so the system section written for a model
//! without one is taken out of the messages. The calls it streams back (`tool_calls`
//! deltas: a name, then argument fragments) are written in the [`tool_call`] format as they
//! arrive, which the fronts read like the local model's calls.

use futures_util::StreamExt;
use h2o_chat_engine::{
    Constraint, EngineError, FinishReason, GenerationEvent, GenerationFailure, GenerationRequest,
    Token, ToolUse, tool_call,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::relay::{
    AnswerBudget, EVENT_BUFFER, chain, estimate_tokens, forward, http_client, successful_reply,
};

/// Largest event line read from an upstream.
const MAX_LINE: usize = 1 << 20;

/// See the module docs.
pub struct RemoteOpenAi {
    url: String,
    http: reqwest::Client,
    api_key: Option<String>,
}

/// The request body for `model`.
fn body_of(model: &str, request: &GenerationRequest) -> (&'static str, Value) {
    let sampling = &request.sampling;
    let mut body = json!({
        "model": model,
        "max_tokens": request.max_new_tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let map = body.as_object_mut().expect("an object");
    if sampling.is_sampling() {
        map.insert(
            "temperature".into(),
            json!(sampling.temperature.unwrap_or(1.0)),
        );
        if let Some(p) = sampling.top_p {
            map.insert("top_p".into(), json!(p));
        }
    } else {
        map.insert("temperature".into(), json!(0));
    }
    if let Some(seed) = sampling.seed {
        map.insert("seed".into(), json!(seed));
    }
    if let Some(r) = sampling.repetition_penalty.filter(|&r| r > 1.0) {
        map.insert(
            "frequency_penalty".into(),
            json!(((r - 1.0) * 2.0).min(2.0)),
        );
    }
    if !request.stop.is_empty() {
        map.insert("stop".into(), json!(request.stop));
    }
    let top = request.top_tokens;
    let response_format = |schema: &Value| json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": true}});
    // The gateway takes only what this relay can pass (`Gateway::check_constraint`).
    let mut native = None;
    match &request.constraint {
        Some(Constraint::JsonSchema(schema)) => {
            map.insert("response_format".into(), response_format(schema));
        }
        Some(Constraint::Tools(tools)) => {
            map.insert("tools".into(), json!(tools.tools));
            map.insert("tool_choice".into(), tools.choice.clone());
            map.insert("parallel_tool_calls".into(), json!(tools.parallel));
            if let Some(schema) = &tools.text_schema {
                map.insert("response_format".into(), response_format(schema));
            }
            native = Some(tools);
        }
        Some(Constraint::Regex(_)) | None => {}
    }
    match request.prompt.chat() {
        Some(turns) => {
            let messages = match native {
                Some(tools) => native_messages(turns, tools),
                None => turns
                    .iter()
                    .map(|t| json!({"role": t.role, "content": t.content}))
                    .collect(),
            };
            map.insert("messages".into(), json!(messages));
            if top > 0 {
                map.insert("logprobs".into(), json!(true));
                map.insert("top_logprobs".into(), json!(top));
            }
            ("/v1/chat/completions", body)
        }
        None => {
            map.insert("prompt".into(), json!(request.prompt.text()));
            if top > 0 {
                map.insert("logprobs".into(), json!(top));
            }
            ("/v1/completions", body)
        }
    }
}

/// The messages for an upstream that takes the tools natively: the system message without
/// the tools' section, earlier calls as the assistant's `tool_calls` and their results as
/// `tool` messages answering them in order (ids made up here, as the history written for
/// the model keeps none). A turn that does not read back whole stays text.
fn native_messages(turns: &[h2o_chat_engine::ChatTurn], tools: &ToolUse) -> Vec<Value> {
    let turns = tools.without_section(turns);
    let id = |(turn, index): (usize, usize)| format!("call_{turn}_{index}");
    tool_call::exchanges(&turns)
        .into_iter()
        .map(|exchange| match exchange {
            tool_call::Exchange::Turn(turn) => {
                json!({"role": turn.role, "content": turn.content})
            }
            tool_call::Exchange::Calls { turn, words, calls } => {
                let calls: Vec<Value> = calls
                    .into_iter()
                    .enumerate()
                    .map(|(k, (name, arguments))| {
                        json!({"id": id((turn, k)), "type": "function",
                               "function": {"name": name, "arguments": arguments}})
                    })
                    .collect();
                let content = (!words.is_empty()).then_some(words);
                json!({"role": "assistant", "content": content, "tool_calls": calls})
            }
            tool_call::Exchange::Result { call, content, .. } => {
                json!({"role": "tool", "tool_call_id": id(call), "content": content})
            }
        })
        .collect()
}

/// The tokens of a chunk's `logprobs`, each with its alternatives (empty when none were
/// sent): chat's `content[]` of `{token, logprob, top_logprobs}`, or the legacy
/// completions' parallel lists.
fn scored_tokens(logprobs: &Value) -> Vec<(Token, Vec<Token>)> {
    let token = |text: &str, logprob: Option<f64>| Token {
        id: 0,
        text: text.to_string(),
        logprob: logprob.map(|l| l as f32),
        special: false,
    };
    if let Some(content) = logprobs.get("content").and_then(Value::as_array) {
        return content
            .iter()
            .map(|entry| {
                let of = |e: &Value| {
                    token(
                        e.get("token").and_then(Value::as_str).unwrap_or(""),
                        e.get("logprob").and_then(Value::as_f64),
                    )
                };
                let top = entry
                    .get("top_logprobs")
                    .and_then(Value::as_array)
                    .map(|top| top.iter().map(of).collect())
                    .unwrap_or_default();
                (of(entry), top)
            })
            .collect();
    }
    let texts = logprobs.get("tokens").and_then(Value::as_array);
    let logprobs_of = logprobs.get("token_logprobs").and_then(Value::as_array);
    let tops = logprobs.get("top_logprobs").and_then(Value::as_array);
    texts
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, text)| {
            let logprob = logprobs_of.and_then(|l| l.get(i)).and_then(Value::as_f64);
            let mut top: Vec<Token> = tops
                .and_then(|t| t.get(i))
                .and_then(Value::as_object)
                .map(|top| top.iter().map(|(t, l)| token(t, l.as_f64())).collect())
                .unwrap_or_default();
            top.sort_by(|a, b| {
                b.logprob
                    .unwrap_or(f32::MIN)
                    .total_cmp(&a.logprob.unwrap_or(f32::MIN))
            });
            (token(text.as_str().unwrap_or(""), logprob), top)
        })
        .collect()
}

/// Writes a streamed answer's content and `tool_calls` deltas in the [`tool_call`] format,
/// as they arrive.
#[derive(Default)]
struct CallWriter {
    /// The call being written: its index, and whether it has arguments yet.
    open: Option<(Option<u64>, bool)>,
}

impl CallWriter {
    /// The text of one delta: its words (closing a call first), then its calls. A call
    /// begins at a new `index`, or at a name while one is open (servers that number every
    /// call 0, or none).
    fn delta(&mut self, delta: &Value) -> String {
        let mut text = String::new();
        if let Some(content) = delta.get("content").and_then(Value::as_str)
            && !content.is_empty()
        {
            text.push_str(&self.close());
            text.push_str(content);
        }
        let calls = delta.get("tool_calls").and_then(Value::as_array);
        for call in calls.into_iter().flatten() {
            let index = call.get("index").and_then(Value::as_u64);
            let function = call.get("function");
            let name = function
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let arguments = match function.and_then(|f| f.get("arguments")) {
                Some(Value::String(fragment)) => fragment.clone(),
                // Some servers send the arguments as an object, whole.
                Some(object @ Value::Object(_)) => object.to_string(),
                _ => String::new(),
            };
            let same = matches!(self.open, Some((open, _)) if open == index) && name.is_empty();
            if !same {
                if self.open.is_some() {
                    text.push_str(&self.close());
                    text.push_str(tool_call::BETWEEN);
                }
                text.push_str(tool_call::OPEN);
                text.push_str(name);
                text.push_str(tool_call::AFTER_NAME);
                self.open = Some((index, false));
            }
            if !arguments.is_empty() {
                text.push_str(&arguments);
                self.open = Some((index, true));
            }
        }
        text
    }

    /// Closes the call being written, if any (arguments never sent are an empty object).
    fn close(&mut self) -> String {
        match self.open.take() {
            Some((_, true)) => tool_call::CLOSE.to_string(),
            Some((_, false)) => format!("{{}}{}", tool_call::CLOSE),
            None => String::new(),
        }
    }
}

/// Splits an event stream into its `data:` payloads.
#[derive(Default)]
struct DataLines {
    buffer: Vec<u8>,
}

impl DataLines {
    fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete `data:` payload; `Err` when a line exceeds the cap.
    fn next(&mut self) -> Result<Option<String>, String> {
        loop {
            let Some(end) = self.buffer.iter().position(|&b| b == b'\n') else {
                if self.buffer.len() > MAX_LINE {
                    return Err(format!("an event line is longer than {MAX_LINE} bytes"));
                }
                return Ok(None);
            };
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(data) = line.strip_prefix("data:") {
                return Ok(Some(data.strip_prefix(' ').unwrap_or(data).to_string()));
            }
        }
    }
}

impl RemoteOpenAi {
    /// Relays to the OpenAI-compatible server at `url` (its base, without `/v1`), with
    /// `Authorization: Bearer` when a key is given.
    pub fn new(url: &str, api_key: Option<String>) -> Result<Self, EngineError> {
        let http = http_client(url)?;
        let url = url.trim_end_matches('/');
        let url = url.strip_suffix("/v1").unwrap_or(url).to_string();
        Ok(RemoteOpenAi { url, http, api_key })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Relays one request to `model`.
    pub fn start(
        &self,
        model: &str,
        request: &GenerationRequest,
    ) -> mpsc::Receiver<GenerationEvent> {
        let (sender, events) = mpsc::channel(EVENT_BUFFER);
        let (path, body) = body_of(model, request);
        let chat = path.ends_with("chat/completions");
        let input_tokens = estimate_tokens(&request.prompt.text()) as u32;
        let seed = request
            .sampling
            .seed
            .filter(|_| request.sampling.is_sampling());
        let post = self.http.post(format!("{}{path}", self.url)).json(&body);
        let api_key = self.api_key.clone();
        let mut budget = AnswerBudget::for_request(request);
        tokio::spawn(async move {
            let fail =
                |message: String| GenerationEvent::Failed(GenerationFailure::Generation(message));
            let Some(response) = successful_reply(post, api_key.as_deref(), &sender).await else {
                return;
            };
            let mut body = response.bytes_stream();
            let mut lines = DataLines::default();
            let mut text = String::new();
            let mut generated = 0u32;
            let mut reason = None;
            let mut completion_tokens = None;
            let mut calls = CallWriter::default();
            loop {
                let data = match lines.next() {
                    Ok(Some(data)) => data,
                    Ok(None) => {
                        let chunk = tokio::select! {
                            chunk = body.next() => chunk,
                            () = sender.closed() => return,
                        };
                        match chunk {
                            Some(Ok(bytes)) => {
                                lines.push(&bytes);
                                continue;
                            }
                            Some(Err(err)) => {
                                let message = format!("upstream stream broke: {}", chain(&err));
                                forward(&sender, fail(message)).await;
                                return;
                            }
                            None => {
                                let message = "the upstream stream ended without [DONE]".into();
                                forward(&sender, fail(message)).await;
                                return;
                            }
                        }
                    }
                    Err(message) => {
                        forward(&sender, fail(message)).await;
                        return;
                    }
                };
                if data.trim() == "[DONE]" {
                    let rest = calls.close();
                    if !rest.is_empty() {
                        text.push_str(&rest);
                        let token = Token {
                            id: 0,
                            text: rest,
                            logprob: None,
                            special: false,
                        };
                        if !forward(&sender, GenerationEvent::Token(token)).await {
                            return;
                        }
                    }
                    let finish = crate::relay::finish(
                        match reason.as_deref() {
                            Some("length") => FinishReason::Length,
                            _ => FinishReason::EosToken,
                        },
                        completion_tokens.unwrap_or(generated.saturating_add(1)),
                        text,
                        input_tokens,
                        seed,
                    );
                    let end = crate::relay::end_token();
                    forward(&sender, GenerationEvent::Finished(end, finish)).await;
                    return;
                }
                let Ok(chunk) = serde_json::from_str::<Value>(&data) else {
                    let message = format!("upstream sent a malformed chunk: {data:.200}");
                    forward(&sender, fail(message)).await;
                    return;
                };
                if let Some(error) = chunk.get("error") {
                    let message = error
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("upstream error")
                        .to_string();
                    // An OpenAI server names a refused request `invalid_request_error`.
                    let kind = error.get("type").and_then(Value::as_str);
                    let failure = if kind == Some("invalid_request_error") {
                        GenerationFailure::Invalid(message)
                    } else {
                        GenerationFailure::Generation(message)
                    };
                    forward(&sender, GenerationEvent::Failed(failure)).await;
                    return;
                }
                if let Some(tokens) = chunk
                    .get("usage")
                    .and_then(|u| u.get("completion_tokens"))
                    .and_then(Value::as_u64)
                {
                    completion_tokens = Some(tokens as u32);
                }
                let Some(choice) = chunk.get("choices").and_then(|c| c.get(0)) else {
                    continue;
                };
                if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
                    reason = Some(finish.to_string());
                }
                let written;
                let piece = if chat {
                    written = choice
                        .get("delta")
                        .map(|d| calls.delta(d))
                        .unwrap_or_default();
                    Some(written.as_str())
                } else {
                    choice.get("text").and_then(Value::as_str)
                };
                if let Some(piece) = piece.filter(|p| !p.is_empty()) {
                    generated = generated.saturating_add(1);
                    if let Err(failure) = budget.spend(piece) {
                        forward(&sender, GenerationEvent::Failed(failure)).await;
                        return;
                    }
                    text.push_str(piece);
                    // The piece's tokens with their scores when the upstream sent them (and
                    // they spell the piece), else the piece as one token.
                    let scored = choice
                        .get("logprobs")
                        .map(scored_tokens)
                        .unwrap_or_default();
                    let spelled: String = scored.iter().map(|(t, _)| t.text.as_str()).collect();
                    let tokens = if !scored.is_empty() && spelled == piece {
                        scored
                    } else {
                        let whole = Token {
                            id: 0,
                            text: piece.to_string(),
                            logprob: None,
                            special: false,
                        };
                        vec![(whole, Vec::new())]
                    };
                    for (token, top) in tokens {
                        if !top.is_empty()
                            && !forward(&sender, GenerationEvent::Alternatives(top)).await
                        {
                            return;
                        }
                        if !forward(&sender, GenerationEvent::Token(token)).await {
                            return;
                        }
                    }
                }
            }
        });
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use h2o_chat_engine::{ChatTurn, Prompt, SamplingParams, chatml};

    #[test]
    fn a_chat_goes_as_messages_and_greedy_as_temperature_zero() {
        let prompt = chatml(&[ChatTurn::new("user", "Hi")]);
        let request = GenerationRequest::new(prompt, 8);
        let (path, body) = body_of("m", &request);
        assert_eq!(path, "/v1/chat/completions");
        assert_eq!(body["messages"], json!([{"role": "user", "content": "Hi"}]));
        assert_eq!(body["temperature"], 0);
        assert_eq!(body["max_tokens"], 8);
    }

    #[test]
    fn a_raw_prompt_goes_to_completions_with_its_sampling() {
        let mut request = GenerationRequest::new(Prompt::raw("Once"), 4);
        request.sampling = SamplingParams {
            temperature: Some(0.5),
            repetition_penalty: Some(1.5),
            seed: Some(3),
            ..Default::default()
        };
        let (path, body) = body_of("m", &request);
        assert_eq!(path, "/v1/completions");
        assert_eq!(body["prompt"], "Once");
        assert_eq!(body["temperature"], 0.5);
        assert_eq!(body["frequency_penalty"], 1.0);
        assert_eq!(body["seed"], 3);
    }

    #[test]
    fn tools_go_natively_without_the_section_written_for_the_local_model() {
        let section = "You can call functions: get_weather.";
        let prompt = chatml(&[
            ChatTurn::new("system", format!("Be brief.\n\n{section}")),
            ChatTurn::new("user", "Weather in Paris?"),
        ]);
        let mut request = GenerationRequest::new(prompt, 8);
        let tool = json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}});
        request.constraint = Some(Constraint::Tools(h2o_chat_engine::ToolUse {
            section: section.into(),
            tools: vec![tool.clone()],
            choice: json!("required"),
            parallel: false,
            text_schema: None,
        }));
        let (_, body) = body_of("m", &request);
        assert_eq!(body["tools"], json!([tool]));
        assert_eq!(body["tool_choice"], "required");
        assert_eq!(body["parallel_tool_calls"], false);
        assert_eq!(
            body["messages"],
            json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}])
        );
        // A system message that was only the section is left out.
        let prompt = chatml(&[
            ChatTurn::new("system", section),
            ChatTurn::new("user", "Hi"),
        ]);
        request.prompt = prompt;
        let (_, body) = body_of("m", &request);
        assert_eq!(body["messages"], json!([{"role": "user", "content": "Hi"}]));
    }

    #[test]
    fn earlier_calls_and_their_results_go_as_openais_own_messages() {
        let section = "You can call functions.";
        let turns = [
            ChatTurn::new("system", section),
            ChatTurn::new("user", "Weather in Paris and Rome?"),
            ChatTurn::new(
                "assistant",
                format!(
                    "Let me look.\n{}\n{}",
                    tool_call::written("get_weather", r#"{"city": "Paris"}"#),
                    tool_call::written("get_weather", r#"{"city": "Rome"}"#)
                ),
            ),
            ChatTurn::new(
                "user",
                format!(
                    "{}\n{}",
                    tool_call::response("18 C"),
                    tool_call::response("21 C")
                ),
            ),
            ChatTurn::new("assistant", "Paris 18 C, Rome 21 C."),
            ChatTurn::new("user", "Thanks!"),
            // No call is waiting for it: text, not a `tool` message.
            ChatTurn::new("user", tool_call::response("late")),
        ];
        assert_eq!(
            json!(native_messages(
                &turns,
                &ToolUse {
                    section: section.into(),
                    tools: Vec::new(),
                    choice: json!("auto"),
                    parallel: false,
                    text_schema: None,
                }
            )),
            json!([
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": "Let me look.", "tool_calls": [
                    {"id": "call_1_0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
                    {"id": "call_1_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1_0", "content": "18 C"},
                {"role": "tool", "tool_call_id": "call_1_1", "content": "21 C"},
                {"role": "assistant", "content": "Paris 18 C, Rome 21 C."},
                {"role": "user", "content": "Thanks!"},
                {"role": "user", "content": "<tool_response>\nlate\n</tool_response>"},
            ])
        );
    }

    #[test]
    fn a_result_answers_only_the_calls_just_before_it() {
        let turns = [
            ChatTurn::new("user", "Weather?"),
            ChatTurn::new(
                "assistant",
                format!(
                    "{}\n{}",
                    tool_call::written("get_weather", r#"{"city": "Paris"}"#),
                    tool_call::written("get_weather", r#"{"city": "Rome"}"#)
                ),
            ),
            ChatTurn::new("user", tool_call::response("18 C")),
            ChatTurn::new("assistant", "Rome is still to come."),
            // The Rome call was not answered in its turn: this is text now.
            ChatTurn::new("user", tool_call::response("21 C")),
        ];
        let messages = native_messages(
            &turns,
            &ToolUse {
                section: String::new(),
                tools: Vec::new(),
                choice: json!("auto"),
                parallel: false,
                text_schema: None,
            },
        );
        let roles: Vec<&str> = messages
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["user", "assistant", "tool", "assistant", "user"]);
    }

    #[test]
    fn streamed_tool_calls_are_written_as_the_local_model_writes_them() {
        let mut calls = CallWriter::default();
        let mut text = String::new();
        for delta in [
            json!({"role": "assistant", "content": "Let me look."}),
            json!({"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": "}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
            json!({"tool_calls": [{"index": 1, "id": "c2", "type": "function", "function": {"name": "get_time"}}]}),
            // Numbered 1 again, but a name: a call of its own (its arguments an object).
            json!({"tool_calls": [{"index": 1, "id": "c3", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]}),
            json!({"content": "Done."}),
        ] {
            text.push_str(&calls.delta(&delta));
        }
        text.push_str(&calls.close());
        assert_eq!(
            text,
            format!(
                "Let me look.{}\n{}\n{}Done.",
                tool_call::written("get_weather", r#"{"city": "Paris"}"#),
                tool_call::written("get_time", ""),
                tool_call::written("get_weather", r#"{"city":"Rome"}"#),
            )
        );
        assert_eq!(calls.close(), "", "closed once");
    }

    #[test]
    fn data_lines_are_split_and_capped() {
        let mut lines = DataLines::default();
        lines.push(b"data: {\"a\":1}\n\n: comment\ndata:[DO");
        assert_eq!(lines.next().unwrap().as_deref(), Some("{\"a\":1}"));
        assert_eq!(lines.next().unwrap(), None);
        lines.push(b"NE]\n\n");
        assert_eq!(lines.next().unwrap().as_deref(), Some("[DONE]"));
        lines.push(&vec![b'x'; MAX_LINE + 1]);
        assert!(lines.next().is_err());
    }
}
