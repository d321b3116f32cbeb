//! A GGUF whose chat template has its own tool section: the local model's weights with
//! Qwen2.5-Instruct's template (`tests/templates/`), written here by the `gguf` package's
//! `gguf_new_metadata` (installed by `.ci/run`). Its tools are shown the template's way, the
//! calls are still enforced, and the local model's own template keeps the generic section.

use std::sync::Arc;

use h2o_chat_engine::{ChatTurn, Engine};
use h2o_chat_llama::{LlamaConfig, LlamaEngine};
use h2o_chat_server::tools::Tools;
use h2o_chat_server::{ModelRegistry, ServedModel, Server, ServerConfig};
use serde_json::{Value, json};

const TEMPLATE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/templates/qwen2.5-instruct.jinja"
);

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
    let copy = dir.path().join("qwen-style.gguf");
    let made = std::process::Command::new("python3")
        .args(["-m", "gguf.scripts.gguf_new_metadata"])
        .arg(&gguf)
        .arg(&copy)
        .args([
            "--chat-template-file",
            TEMPLATE,
            "--general-name",
            "qwen-style",
        ])
        .output()
        .expect("python3 runs");
    assert!(
        made.status.success(),
        "the gguf package writes the copy (pip install gguf; .ci/run installs it): {}",
        String::from_utf8_lossy(&made.stderr)
    );
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
