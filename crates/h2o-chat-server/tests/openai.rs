//! The OpenAI-compatible gateway with the scripted engine: exact reply shapes, streaming
//! chunks ending in `[DONE]`, errors in OpenAI's shape, the API key, curl, disconnects.

use h2o_chat_engine::{Script, ScriptGate};
use h2o_chat_server::{Limits, ServerConfig};
use h2o_chat_test_support::server::{gated, reach, start, start_with};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn chat(extra: Value) -> Value {
    let mut body = json!({"model": "falcon-40b", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

/// The `data:` payloads of an SSE body.
fn payloads(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn models_list_flags_stand_ins() {
    let server = start().await;
    let list: Value = client()
        .get(format!("{}/v1/models", server.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["object"], "list");
    assert_eq!(
        list["data"][0]["id"],
        "h2oai/h2ogpt-gm-oasst1-en-2048-falcon-40b-v1"
    );
    assert_eq!(list["data"][0]["object"], "model");
    assert_eq!(list["data"][0]["owned_by"], "h2o-chat (stand-in)");
    assert_eq!(list["data"][0]["h2o_chat"]["stand_in"], true);
    assert_eq!(list["data"][3]["h2o_chat"]["stand_in"], false);
}

#[tokio::test]
async fn chat_completion_shape_and_usage() {
    let server = start().await;
    let reply: Value = client()
        .post(format!("{}/v1/chat/completions", server.url()))
        .json(&chat(json!({})))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(reply["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(reply["object"], "chat.completion");
    assert_eq!(
        reply["model"],
        "h2oai/h2ogpt-gm-oasst1-en-2048-falcon-40b-v1"
    );
    assert_eq!(
        reply["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "logprobs": null, "finish_reason": "stop"}])
    );
    let prompt = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(
        reply["usage"],
        json!({"prompt_tokens": prompt.len(), "completion_tokens": 3, "total_tokens": prompt.len() + 3,
               "prompt_tokens_details": {"cached_tokens": 0}})
    );
}

#[tokio::test]
async fn max_tokens_ends_with_length() {
    let server = start().await;
    let reply: Value = client()
        .post(format!("{}/v1/chat/completions", server.url()))
        .json(&chat(json!({"max_tokens": 1})))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply["choices"][0]["finish_reason"], "length");
    assert_eq!(reply["choices"][0]["message"]["content"], "Hello");
}

#[tokio::test]
async fn streaming_chunks_end_with_finish_usage_and_done() {
    let server = start().await;
    let body = client()
        .post(format!("{}/v1/chat/completions", server.url()))
        .json(&chat(
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let payloads = payloads(&body);
    assert_eq!(payloads.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    let deltas: Vec<Value> = chunks
        .iter()
        .filter(|c| !c["choices"].as_array().unwrap().is_empty())
        .map(|c| c["choices"][0].clone())
        .collect();
    // The role first, with no content yet; no later delta has empty content.
    assert_eq!(
        deltas[0]["delta"],
        json!({"role": "assistant", "content": null})
    );
    assert_eq!(deltas[1]["delta"], json!({"content": "Hello"}));
    assert_eq!(deltas[2]["delta"], json!({"content": "!"}));
    assert_eq!(deltas[3]["delta"], json!({}));
    let reasons: Vec<&Value> = deltas.iter().map(|d| &d["finish_reason"]).collect();
    assert_eq!(
        reasons,
        [&Value::Null, &Value::Null, &Value::Null, &json!("stop")]
    );
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"])
    );
}

#[tokio::test]
async fn failure_mid_stream_is_an_error_chunk_then_done() {
    let server = start_with(
        ServerConfig::default(),
        Script {
            fail_after: Some((1, "boom".into())),
            ..Script::default()
        },
    )
    .await;
    let body = client()
        .post(format!("{}/v1/chat/completions", server.url()))
        .json(&chat(json!({"stream": true})))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let payloads = payloads(&body);
    assert_eq!(payloads.last().unwrap(), "[DONE]");
    let error: Value = serde_json::from_str(&payloads[payloads.len() - 2]).unwrap();
    assert_eq!(
        error["error"]["message"],
        "Request failed during generation: boom"
    );
}

#[tokio::test]
async fn legacy_completions_use_the_prompt_as_is() {
    let server = start().await;
    let reply: Value = client()
        .post(format!("{}/v1/completions", server.url()))
        .json(&json!({"model": "smollm2", "prompt": "Once upon"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply["object"], "text_completion");
    assert_eq!(reply["choices"][0]["text"], "Hello!");
    assert_eq!(reply["usage"]["prompt_tokens"], 9);
}

#[tokio::test]
async fn invalid_requests_get_openai_shaped_errors() {
    let server = start().await;
    let url = format!("{}/v1/chat/completions", server.url());
    for (body, status, param) in [
        (
            chat(json!({"temperature": 3})),
            StatusCode::BAD_REQUEST,
            "temperature",
        ),
        (
            chat(json!({"stop": ["a", "b", "c", "d", "e"]})),
            StatusCode::BAD_REQUEST,
            "stop",
        ),
        (
            chat(json!({"max_tokens": 100000})),
            StatusCode::BAD_REQUEST,
            "max_tokens",
        ),
        (
            json!({"model": "smollm2", "messages": []}),
            StatusCode::BAD_REQUEST,
            "messages",
        ),
        (
            json!({"model": "smollm2", "messages": [{"role": "function", "content": "x"}]}),
            StatusCode::BAD_REQUEST,
            "messages",
        ),
        (
            json!({"model": "smollm2", "messages": [{"content": "x"}]}),
            StatusCode::BAD_REQUEST,
            "messages",
        ),
        (chat(json!({"n": 9})), StatusCode::BAD_REQUEST, "n"),
        (
            chat(json!({"model": "gpt-9"})),
            StatusCode::NOT_FOUND,
            "model",
        ),
    ] {
        let response = client().post(&url).json(&body).send().await.unwrap();
        assert_eq!(response.status(), status, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["param"], param, "{error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert!(error["error"]["type"].is_string());
    }
    let response = client().post(&url).body("{oops").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn api_key_is_required_when_configured() {
    let server = start_with(
        ServerConfig {
            api_key: Some("sekret".into()),
            ..ServerConfig::default()
        },
        Script::default(),
    )
    .await;
    let url = format!("{}/v1/models", server.url());
    let denied = client().get(&url).send().await.unwrap();
    assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
    let wrong = client()
        .get(&url)
        .bearer_auth("sekreT")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let ok = client()
        .get(&url)
        .bearer_auth("sekret")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn curl_streams_the_chunks() {
    let server = start().await;
    let output = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-N",
            "--noproxy",
            "*",
            "-H",
            "content-type: application/json",
            "-d",
        ])
        .arg(chat(json!({"stream": true})).to_string())
        .arg(format!("{}/v1/chat/completions", server.url()))
        .output()
        .await
        .expect("curl runs");
    assert!(output.status.success());
    let body = String::from_utf8(output.stdout).unwrap();
    assert!(body.starts_with("data: {"), "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
}

#[tokio::test]
async fn a_client_that_disconnects_frees_the_only_generation_slot() {
    let config = ServerConfig {
        limits: Limits {
            max_concurrent_requests: 1,
            ..Limits::default()
        },
        ..ServerConfig::default()
    };
    let gate = ScriptGate::new();
    let script = Script {
        capacity: 1,
        ..gated(&gate, true)
    };
    let server = start_with(config, script).await;
    gate.release(1);
    let mut response = client()
        .post(format!("{}/v1/chat/completions", server.url()))
        .json(&chat(json!({"stream": true, "max_tokens": 3000})))
        .send()
        .await
        .unwrap();
    assert!(response.chunk().await.unwrap().is_some());
    drop(response);
    reach(gate.ended(), 1).await;
    gate.release(10);
    let answer: Value = client()
        .post(format!("{}/v1/chat/completions", server.url()))
        .json(&chat(json!({"max_tokens": 2})))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "toktok");
}

#[tokio::test]
async fn options_that_are_not_implemented_get_a_clear_400() {
    let server = start().await;
    let url = format!("{}/v1/chat/completions", server.url());
    for (extra, param) in [
        (json!({"top_logprobs": 3}), "top_logprobs"),
        (json!({"tools": [{"type": "retrieval"}]}), "tools"),
        (
            json!({"response_format": {"type": "xml"}}),
            "response_format",
        ),
        (json!({"min_p": 0.05}), "min_p"),
        (json!({"logit_bias": {"50256": -100}}), "logit_bias"),
        (json!({"some_new_option": true}), "some_new_option"),
    ] {
        let response = client()
            .post(&url)
            .json(&chat(extra.clone()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{extra}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["param"], param, "{error}");
        assert!(
            error["error"]["message"].as_str().unwrap().contains(param),
            "{error}"
        );
    }
}

/// A server whose model "answers" with this call.
async fn calling(arguments_pieces: &[&str]) -> h2o_chat_server::RunningServer {
    let mut tokens: Vec<String> = vec![
        "<tool_call>\n".into(),
        "{\"name\": \"get_".into(),
        "weather\", \"arguments\": ".into(),
    ];
    tokens.extend(arguments_pieces.iter().map(|p| p.to_string()));
    tokens.push("}\n</tool_call>".into());
    start_with(
        h2o_chat_server::ServerConfig::default(),
        h2o_chat_engine::Script {
            tokens,
            ..Default::default()
        },
    )
    .await
}

fn weather_tools() -> Value {
    json!({
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "required",
    })
}

#[tokio::test]
async fn a_tool_call_is_message_tool_calls_with_string_arguments_and_finish_reason_tool_calls() {
    let server = calling(&["{\"city\": ", "\"Paris\"}"]).await;
    let reply: Value = client()
        .post(format!("{}/v1/chat/completions", server.url()))
        .json(&chat(weather_tools()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let choice = &reply["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{reply}");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], r#"{"city": "Paris"}"#);
}

#[tokio::test]
async fn a_streamed_tool_call_sends_its_name_once_then_argument_fragments() {
    let server = calling(&["{\"city\"", ": \"Pa", "ris\"}"]).await;
    let mut body = chat(weather_tools());
    body["stream"] = json!(true);
    let text = client()
        .post(format!("{}/v1/chat/completions", server.url()))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let payloads = payloads(&text);
    assert_eq!(payloads.last().unwrap(), "[DONE]");
    let deltas: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str::<Value>(p).unwrap()["choices"][0].clone())
        .collect();
    assert_eq!(
        deltas[0]["delta"],
        json!({"role": "assistant", "content": null})
    );
    let calls: Vec<&Value> = deltas
        .iter()
        .filter_map(|d| d["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert!(calls[0]["id"].is_string());
    assert!(
        calls[1..]
            .iter()
            .all(|c| c.get("id").is_none() && c["function"].get("name").is_none())
    );
    let arguments: String = calls
        .iter()
        .map(|c| c["function"]["arguments"].as_str().unwrap())
        .collect();
    assert_eq!(arguments, r#"{"city": "Paris"}"#);
    assert!(
        calls.len() >= 3,
        "the arguments came in fragments: {calls:?}"
    );
    assert_eq!(deltas.last().unwrap()["finish_reason"], "tool_calls");
    assert!(
        deltas.iter().all(|d| d["delta"]
            .get("content")
            .is_none_or(|c| c.is_null() || c.as_str().is_some_and(|c| !c.is_empty()))),
        "no empty content"
    );
}

#[tokio::test]
async fn logprobs_and_n_choices_have_openai_shapes() {
    let server = start().await;
    let url = server.url();
    let reply: Value = client()
        .post(format!("{url}/v1/chat/completions"))
        .json(&chat(
            json!({"logprobs": true, "top_logprobs": 2, "n": 2, "seed": 5}),
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let choices = reply["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(
        (choices[0]["index"].as_u64(), choices[1]["index"].as_u64()),
        (Some(0), Some(1))
    );
    let content = choices[0]["logprobs"]["content"].as_array().unwrap();
    let tokens: String = content
        .iter()
        .map(|t| t["token"].as_str().unwrap())
        .collect();
    assert_eq!(tokens, choices[0]["message"]["content"].as_str().unwrap());
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);
    assert_eq!(content[0]["bytes"], json!(b"Hello".to_vec()));
    assert_eq!(
        reply["usage"]["completion_tokens"], 6,
        "both choices' tokens"
    );
    // Completions: the legacy shape.
    let reply: Value = client()
        .post(format!("{url}/v1/completions"))
        .json(&json!({"model": "smollm2", "prompt": "Hi", "logprobs": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let logprobs = &reply["choices"][0]["logprobs"];
    assert_eq!(logprobs["tokens"], json!(["Hello", "!"]));
    assert_eq!(logprobs["text_offset"], json!([0, 5]));
    assert_eq!(logprobs["top_logprobs"][0], json!({"Hello": -0.25}));
    // Streamed with n = 2: each choice's chunks carry its index and end with its reason.
    let text = client()
        .post(format!("{url}/v1/chat/completions"))
        .json(&chat(json!({"n": 2, "stream": true})))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let payloads = payloads(&text);
    for index in [0, 1] {
        let mine: Vec<Value> = payloads[..payloads.len() - 1]
            .iter()
            .map(|p| serde_json::from_str::<Value>(p).unwrap()["choices"][0].clone())
            .filter(|c| c["index"] == index)
            .collect();
        assert_eq!(mine[0]["delta"]["role"], "assistant");
        assert_eq!(mine.last().unwrap()["finish_reason"], "stop");
        let content: String = mine
            .iter()
            .filter_map(|c| c["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, "Hello!");
    }
}

#[tokio::test]
async fn an_unknown_v1_route_answers_in_openais_envelope_and_a_long_request_in_openais_words() {
    let server = start().await;
    let response = client()
        .get(format!("{}/v1/embeddings", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/embeddings"),
        "{error}"
    );
    assert_eq!(error["error"]["type"], "invalid_request_error");
    let response = client()
        .post(format!("{}/v1/chat/completions", server.url()))
        .json(&chat(json!({"max_tokens": 4090})))
        .send()
        .await
        .unwrap();
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "context_length_exceeded", "{error}");
    assert_eq!(error["error"]["param"], "max_tokens");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length is 4096 tokens"),
        "{error}"
    );
}
