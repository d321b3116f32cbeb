//! GGUFs whose chat templates have their own tool sections: the local model's weights with
//! Qwen2.5-Instruct's, Llama 3.2's and Ministral 3's templates (`tests/templates/`), written
//! here by the `gguf` package's `gguf_new_metadata` (installed by `.ci/run`). Their tools
//! are shown the template's way, the calls are enforced in each family's own syntax and read
//! back as OpenAI's calls, and the local model's own template keeps the generic section.

use std::sync::Arc;

use h2o_chat_engine::{ChatTurn, Engine};
use h2o_chat_llama::{LlamaConfig, LlamaEngine};
use h2o_chat_server::tools::Tools;
use h2o_chat_server::{ModelRegistry, ServedModel, Server, ServerConfig};
use serde_json::{Value, json};

/// A copy of the local model with `template` (a file of `tests/templates/`) as its chat
/// template, in `dir`.
fn with_template(dir: &std::path::Path, template: &str, name: &str) -> std::path::PathBuf {
    let copy = dir.join(format!("{name}.gguf"));
    let template = format!("{}/tests/templates/{template}", env!("CARGO_MANIFEST_DIR"));
    let made = std::process::Command::new("python3")
        .args(["-m", "gguf.scripts.gguf_new_metadata"])
        .arg(h2o_chat_test_support::model::local_gguf())
        .arg(&copy)
        .args(["--chat-template-file", &template, "--general-name", name])
        .output()
        .expect("python3 runs");
    assert!(
        made.status.success(),
        "the gguf package writes the copy (pip install gguf; .ci/run installs it): {}",
        String::from_utf8_lossy(&made.stderr)
    );
    copy
}

fn load(path: &std::path::Path, name: &str) -> Arc<LlamaEngine> {
    let mut config = LlamaConfig::new(path.to_path_buf(), name);
    config.slots = 2;
    config.context_per_slot = 2048;
    config.threads = 1;
    Arc::new(LlamaEngine::load(config).expect("the model loads"))
}

fn weather() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                           "required": ["city"], "additionalProperties": false}}}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_with_its_own_tool_section_shows_the_tools_its_way_and_calls_stay_enforced() {
    let gguf = h2o_chat_test_support::model::local_gguf();
    let dir = tempfile::tempdir().unwrap();
    let copy = with_template(dir.path(), "qwen2.5-instruct.jinja", "qwen-style");
    let (own, plain) =
        tokio::task::spawn_blocking(move || (load(&copy, "qwen-style"), load(&gguf, "plain")))
            .await
            .unwrap();

    // The engine: the template's own section for the copy, none for the local model's.
    let tools = Tools::parse(Some(&weather()), Some(&json!("required")), None)
        .unwrap()
        .unwrap()
        .tool_use(None);
    let turns = [ChatTurn::new("user", "What is the weather in Paris?")];
    let shown = own
        .render_chat_with_tools(&turns, &tools)
        .unwrap()
        .expect("the copy's template shows the tools");
    let text = shown.text();
    assert!(text.contains("# Tools"), "{text}");
    assert!(text.contains(r#""name": "get_weather""#), "{text}");
    assert_eq!(plain.render_chat_with_tools(&turns, &tools).unwrap(), None);

    // Over the server: both answer with an enforced call, from different prompts.
    let served = vec![
        ServedModel::new("qwen-style".into(), Vec::new(), own as Arc<dyn Engine>),
        ServedModel::new("plain".into(), Vec::new(), plain as Arc<dyn Engine>),
    ];
    let server = Server::new(ServerConfig::default(), ModelRegistry::new(served))
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut prompt_tokens = Vec::new();
    for model in ["qwen-style", "plain"] {
        let reply: Value = http
            .post(format!("{}/v1/chat/completions", server.url()))
            .json(&json!({"model": model, "tools": weather(), "tool_choice": "required",
                          "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
                          "max_tokens": 48, "temperature": 0}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let choice = &reply["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{model}: {reply}");
        let call = &choice["message"]["tool_calls"][0]["function"];
        assert_eq!(call["name"], "get_weather", "{model}: {reply}");
        let arguments: Value = serde_json::from_str(call["arguments"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{model}: arguments are JSON ({e}): {reply}"));
        assert!(arguments["city"].is_string(), "{model}: {reply}");
        prompt_tokens.push(reply["usage"]["prompt_tokens"].as_u64().unwrap());
    }
    assert_ne!(
        prompt_tokens[0], prompt_tokens[1],
        "each model reads its tools its own way"
    );
}

/// A chat completion's reply from `server`, which must succeed.
async fn complete(server: &str, body: Value) -> Value {
    let (status, reply) =
        h2o_chat_test_support::http::post_json(&format!("{server}/v1/chat/completions"), &body)
            .await;
    assert!(status.is_success(), "{status}: {reply}");
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_and_mistral_templates_get_calls_in_their_own_syntax_read_back_as_openai_calls() {
    let dir = tempfile::tempdir().unwrap();
    let llama = with_template(dir.path(), "llama-3.2-instruct.jinja", "llama-style");
    let mistral = with_template(dir.path(), "ministral-3.jinja", "mistral-style");
    let (llama, mistral) = tokio::task::spawn_blocking(move || {
        (load(&llama, "llama-style"), load(&mistral, "mistral-style"))
    })
    .await
    .unwrap();
    assert_eq!(llama.tool_syntax(), h2o_chat_engine::tool_call::LLAMA3);
    assert_eq!(mistral.tool_syntax(), h2o_chat_engine::tool_call::MISTRAL);

    // Each is shown its tools its own way.
    let tools = Tools::parse(Some(&weather()), Some(&json!("required")), None)
        .unwrap()
        .unwrap()
        .tool_use(None);
    let turns = [ChatTurn::new("user", "What is the weather in Paris?")];
    let shown = llama
        .render_chat_with_tools(&turns, &tools)
        .unwrap()
        .unwrap()
        .text();
    assert!(shown.contains("Given the following functions"), "{shown}");
    let shown = mistral
        .render_chat_with_tools(&turns, &tools)
        .unwrap()
        .unwrap()
        .text();
    assert!(shown.contains("[AVAILABLE_TOOLS]"), "{shown}");

    let served = vec![
        ServedModel::new("llama-style".into(), Vec::new(), llama as Arc<dyn Engine>),
        ServedModel::new(
            "mistral-style".into(),
            Vec::new(),
            mistral as Arc<dyn Engine>,
        ),
    ];
    let server = Server::new(ServerConfig::default(), ModelRegistry::new(served))
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let question = json!({"role": "user", "content": "What is the weather in Paris?"});
    for model in ["llama-style", "mistral-style"] {
        // A call, enforced in the model's syntax and read back in OpenAI's shape.
        let reply = complete(
            &server.url(),
            json!({"model": model, "tools": weather(),
            "tool_choice": "required", "messages": [question], "max_tokens": 48, "temperature": 0}),
        )
        .await;
        let choice = &reply["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{model}: {reply}");
        assert!(choice["message"]["content"].is_null(), "{model}: {reply}");
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "get_weather", "{model}: {reply}");
        let arguments: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap())
                .unwrap_or_else(|e| panic!("{model}: arguments are JSON ({e}): {reply}"));
        assert!(arguments["city"].is_string(), "{model}: {reply}");

        // The call and its result sent back: the model reads them its way and answers.
        let history = json!([question,
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "18 C and sunny"}]);
        let answer = complete(
            &server.url(),
            json!({"model": model, "tools": weather(),
            "messages": history, "max_tokens": 24, "temperature": 0}),
        )
        .await;
        let choice = &answer["choices"][0];
        assert!(
            choice["finish_reason"] == "stop" || choice["finish_reason"] == "length",
            "{model}: {answer}"
        );
        assert!(
            choice["message"]["content"].is_string(),
            "{model}: {answer}"
        );
    }

    // Mistral's syntax takes several calls in one answer, streamed as OpenAI streams them.
    let two = json!([weather()[0], {"type": "function", "function": {"name": "get_time",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                       "required": ["city"], "additionalProperties": false}}}]);
    let body = json!({"model": "mistral-style", "tools": two, "tool_choice": "required",
        "parallel_tool_calls": true, "stream": true, "max_tokens": 96, "temperature": 0,
        "messages": [{"role": "user", "content": "Weather and time in Paris and in Rome?"}]});
    let stream = http
        .post(format!("{}/v1/chat/completions", server.url()))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut calls: Vec<(String, String)> = Vec::new();
    let mut finish = Value::Null;
    for line in stream.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(line).unwrap();
        let choice = &chunk["choices"][0];
        if !choice["finish_reason"].is_null() {
            finish = choice["finish_reason"].clone();
        }
        for delta in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let index = delta["index"].as_u64().unwrap() as usize;
            if index == calls.len() {
                calls.push((
                    delta["function"]["name"].as_str().unwrap().to_string(),
                    String::new(),
                ));
            }
            if let Some(piece) = delta["function"]["arguments"].as_str() {
                calls[index].1.push_str(piece);
            }
        }
    }
    // A small model given the choice repeats calls: the length limit may cut the last.
    assert!(finish == "tool_calls" || finish == "length", "{stream}");
    if finish == "length" {
        calls.pop();
    }
    assert!(calls.len() >= 2, "several calls in one answer: {stream}");
    for (name, arguments) in &calls {
        assert!(name == "get_weather" || name == "get_time", "{stream}");
        let arguments: Value = serde_json::from_str(arguments)
            .unwrap_or_else(|e| panic!("arguments are JSON ({e}): {stream}"));
        assert!(arguments["city"].is_string(), "{stream}");
    }
}
