//! A remote OpenAI-compatible server (vLLM's, llama.cpp's `llama-server`, another gateway):
//! a chat goes to `POST /v1/chat/completions` as its messages, so the upstream applies its
//! own template; a raw prompt goes to `POST /v1/completions`. Both stream.
//!
//! TGI's parameters map to OpenAI's: greedy decoding is `temperature` 0, `top_p`, `seed`,
//! `stop`, `max_tokens`, and `repetition_penalty` r > 1 becomes `frequency_penalty`
//! `2 (r − 1)` (capped at 2) — the inverse of the server's own OpenAI mapping. `top_k` and
//! `typical_p` have no OpenAI field and are not sent.

use futures_util::StreamExt;
use h2o_chat_engine::{
    Constraint, EngineError, FinishReason, GenerationEvent, GenerationFailure, GenerationRequest,
    Token,
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
    // The gateway takes only what this relay can pass (`Gateway::check_constraint`).
    if let Some(Constraint::JsonSchema(schema)) = &request.constraint {
        map.insert(
            "response_format".into(),
            json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": true}}),
        );
    }
    match request.prompt.chat() {
        Some(turns) => {
            let messages: Vec<Value> = turns
                .iter()
                .map(|t| json!({"role": t.role, "content": t.content}))
                .collect();
            map.insert("messages".into(), json!(messages));
            ("/v1/chat/completions", body)
        }
        None => {
            map.insert("prompt".into(), json!(request.prompt.text()));
            ("/v1/completions", body)
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
                let piece = if chat {
                    choice
                        .get("delta")
                        .and_then(|d| d.get("content"))
                        .and_then(Value::as_str)
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
                    let token = Token {
                        id: 0,
                        text: piece.to_string(),
                        logprob: None,
                        special: false,
                    };
                    if !forward(&sender, GenerationEvent::Token(token)).await {
                        return;
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
