//! Structured output, tool calls, log-probabilities and several choices with the real model,
//! over loopback: answers that claim to follow a schema or a pattern always do (drawn
//! schemas, TGI's own client, OpenAI's own SDK), a constrained answer batched beside free
//! ones changes none of them, and a grammar that cannot be compiled is the client's error.

use std::sync::Arc;

use h2o_chat_llama::{LlamaConfig, LlamaEngine};
use h2o_chat_server::{LOCAL_MODEL_ID, ModelRegistry, RunningServer, Server, ServerConfig};
use serde_json::{Value, json};

async fn start(slots: usize) -> RunningServer {
    let mut config = LlamaConfig::new(h2o_chat_test_support::model::local_gguf(), LOCAL_MODEL_ID);
    config.slots = slots;
    config.context_per_slot = 2048;
    // Tests run two at a time on two cores.
    config.threads = 1;
    let engine = tokio::task::spawn_blocking(move || LlamaEngine::load(config).expect("loads"))
        .await
        .unwrap();
    Server::new(
        ServerConfig::default(),
        ModelRegistry::with_h2o_stand_ins(Arc::new(engine)),
    )
    .bind("127.0.0.1:0")
    .await
    .unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn post(url: &str, path: &str, body: &Value) -> (u16, Value) {
    let response = http()
        .post(format!("{url}{path}"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Runs a Python client script; what it saw (its last line, JSON).
async fn python(script: &str, args: &[&str]) -> Value {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python");
    h2o_chat_test_support::python::run(dir, script, args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_structured_answer_validates_against_its_drawn_schema() {
    let server = start(2).await;
    let seen = python("schema_property.py", &[&server.url(), "12", "20261207"]).await;
    assert_eq!(seen["checked"], 12, "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_calls_tools_parses_models_and_reads_logprobs_and_choices() {
    let server = start(4).await;
    let seen = python("openai_agents.py", &[&server.url()]).await;
    assert_eq!(seen["named"], "get_time", "{seen}");
    assert_eq!(seen["required"], seen["streamed"], "{seen}");
    assert!(seen["parallel"].as_u64().unwrap() >= 1, "{seen}");
    assert_eq!(seen["choices"].as_array().unwrap().len(), 2, "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tgis_client_follows_json_and_regex_grammars_and_its_top_tokens_match_openais() {
    let server = start(2).await;
    let url = server.url();
    let seen = python("tgi_grammar.py", &[&url]).await;
    assert!(seen["json"].is_object(), "{seen}");
    // The same prompt through OpenAI's completions: the same alternatives, the same
    // log-probabilities.
    let (status, reply) = post(
        &url,
        "/v1/completions",
        &json!({
            "model": "smollm2",
            "prompt": "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
            "max_tokens": 4, "temperature": 0, "logprobs": 3,
        }),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let openai: Vec<f64> = reply["choices"][0]["logprobs"]["top_logprobs"][0]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let tgi: Vec<f64> = seen["first_top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t[1].as_f64().unwrap())
        .collect();
    assert_eq!(openai.len(), tgi.len(), "{openai:?} {tgi:?}");
    for (a, b) in openai.iter().zip(&tgi) {
        assert!((a - b).abs() < 1e-4, "{openai:?} {tgi:?}");
    }
}

/// `/generate` with greedy decoding, optionally under a grammar: the answer.
async fn generate(url: &str, inputs: &str, grammar: Option<Value>) -> String {
    let mut parameters = json!({"max_new_tokens": 48});
    if let Some(grammar) = grammar {
        parameters["grammar"] = grammar;
    }
    let (status, reply) = post(
        url,
        "/generate",
        &json!({"inputs": inputs, "parameters": parameters}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    reply["generated_text"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_constrained_answer_batched_beside_free_ones_changes_none_of_them() {
    let server = start(8).await;
    let url = server.url();
    let chat = |q: &str| format!("<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n");
    let grammar = json!({"type": "json", "value": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 20}, "population": {"type": "integer", "minimum": 0, "maximum": 50000000}},
        "required": ["city", "population"], "additionalProperties": false}});
    let questions: Vec<String> = (0..7)
        .map(|i| chat(&format!("Count from {i} to {} in words.", i + 5)))
        .collect();
    let constrained = chat("Describe Paris as JSON.");
    // Alone, one after another.
    let mut alone = vec![generate(&url, &constrained, Some(grammar.clone())).await];
    for question in &questions {
        alone.push(generate(&url, question, None).await);
    }
    // Together, in one batch.
    let mut together = vec![tokio::spawn({
        let (url, constrained, grammar) = (url.clone(), constrained.clone(), grammar.clone());
        async move { generate(&url, &constrained, Some(grammar)).await }
    })];
    for question in questions {
        let url = url.clone();
        together.push(tokio::spawn(async move {
            generate(&url, &question, None).await
        }));
    }
    let mut batched = Vec::new();
    for answer in together {
        batched.push(answer.await.unwrap());
    }
    assert_eq!(batched, alone);
    let parsed: Value = serde_json::from_str(&alone[0]).unwrap();
    assert!(
        parsed["city"].is_string() && parsed["population"].is_u64(),
        "{parsed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grammar_that_cannot_be_compiled_is_refused_by_name_and_the_server_is_unharmed() {
    let server = start(2).await;
    let url = server.url();
    let mut deep = json!({"type": "string"});
    for _ in 0..70 {
        deep = json!({"type": "array", "items": deep});
    }
    for (grammar, wanted) in [
        (
            json!({"type": "json", "value": {"type": "nonsense"}}),
            "nonsense",
        ),
        (
            json!({"type": "json", "value": {"type": "string", "format": "no-such-format"}}),
            "no-such-format",
        ),
        (
            json!({"type": "json", "value": {"type": "string", "pattern": "(?<=a)b"}}),
            "look-around",
        ),
        (json!({"type": "regex", "value": "(unclosed"}), "unclosed"),
        (json!({"type": "json", "value": deep}), "deeper than 64"),
        (
            json!({"type": "json", "value": {"type": "string", "minLength": 5, "maxLength": 2}}),
            "Unsatisfiable",
        ),
    ] {
        let (status, reply) = post(
            &url,
            "/generate",
            &json!({"inputs": "Hi", "parameters": {"max_new_tokens": 4, "grammar": grammar}}),
        )
        .await;
        assert_eq!(status, 422, "{grammar}: {reply}");
        assert_eq!(reply["error_type"], "validation", "{reply}");
        let message = reply["error"].as_str().unwrap();
        assert!(
            message.starts_with("Input validation error: grammar is not valid: ")
                && message.contains(wanted),
            "{grammar}: {message}"
        );
    }
    // OpenAI's words for the same: 400 naming the field the grammar came from.
    let tools: Vec<Value> = (0..65)
        .map(|i| json!({"type": "function", "function": {"name": format!("f{i}")}}))
        .collect();
    for (extra, param) in [
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}}),
            "response_format",
        ),
        (json!({"tools": tools}), "tools"),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}}]}),
            "tools",
        ),
    ] {
        let mut body = json!({"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, reply) = post(&url, "/v1/chat/completions", &body).await;
        assert_eq!(status, 400, "{reply}");
        assert_eq!(reply["error"]["param"], param, "{reply}");
    }
    // Nothing was generated, and the next request is answered.
    let (status, reply) = post(
        &url,
        "/generate",
        &json!({"inputs": "Hi", "parameters": {"max_new_tokens": 4}}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let metrics = h2o_chat_test_support::metrics::fetch(&url).await;
    assert_eq!(metrics.sum("h2o_chat_generated_tokens_total"), 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropics_and_openais_sdks_speak_messages_and_responses_with_tools() {
    let config = ServerConfig {
        api_key: Some("test-key".into()),
        ..ServerConfig::default()
    };
    let mut llama = LlamaConfig::new(h2o_chat_test_support::model::local_gguf(), LOCAL_MODEL_ID);
    llama.slots = 2;
    llama.context_per_slot = 2048;
    llama.threads = 1;
    let engine = tokio::task::spawn_blocking(move || LlamaEngine::load(llama).expect("loads"))
        .await
        .unwrap();
    let server = Server::new(config, ModelRegistry::with_h2o_stand_ins(Arc::new(engine)))
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let url = server.url();
    let anthropic = python("anthropic_client.py", &[&url, "test-key"]).await;
    assert!(
        anthropic["answer"].as_str().unwrap().contains("Paris"),
        "{anthropic}"
    );
    assert_eq!(anthropic["answer"], anthropic["streamed"], "{anthropic}");
    let responses = python("responses_client.py", &[&url, "test-key"]).await;
    assert_eq!(responses["call"][0], "get_weather", "{responses}");
    assert!(responses["structured"].is_object(), "{responses}");
    // Each door counted by its route.
    let metrics = h2o_chat_test_support::metrics::fetch(&url).await;
    assert!(metrics.with("h2o_chat_requests_total", "route", "POST /v1/messages") >= 6.0);
    assert!(metrics.with("h2o_chat_requests_total", "route", "POST /v1/responses") >= 6.0);
}
