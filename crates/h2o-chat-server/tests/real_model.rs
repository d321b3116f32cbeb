//! The embedded server with the real model, end to end over loopback: the chat-ui lifecycle
//! through this project's client, TGI's semantics through `/generate`, and TGI's own Python
//! client (`text-generation`, installed by `.ci/run`).

use std::sync::Arc;

use h2o_chat::{FinishReason, H2o, Message, Parameters};
use h2o_chat_engine::fetch::{SMOLLM2, cache_dir, ensure_model};
use h2o_chat_engine::{LlamaConfig, LlamaEngine};
use h2o_chat_server::{LOCAL_MODEL_ID, ModelRegistry, RunningServer, Server, ServerConfig};
use serde_json::{Value, json};

async fn start() -> RunningServer {
    start_with(ServerConfig::default()).await
}

async fn start_with(config: ServerConfig) -> RunningServer {
    let engine = tokio::task::spawn_blocking(|| {
        let gguf = ensure_model(&cache_dir(), &SMOLLM2, &mut |_, _, _| {}).expect("model fetched");
        let mut config = LlamaConfig::new(gguf, LOCAL_MODEL_ID);
        config.parallel = 2;
        config.threads = 1;
        LlamaEngine::load(config).expect("model loads")
    })
    .await
    .unwrap();
    Server::new(config, ModelRegistry::with_h2o_stand_ins(Arc::new(engine)))
        .bind("127.0.0.1:0")
        .await
        .unwrap()
}

fn greedy_client(url: &str) -> H2o {
    H2o::builder()
        .url(url)
        .env_proxy(false)
        .parameters(Parameters::empty().max_new_tokens(48).details(true))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capital_of_france_through_the_chat_ui_lifecycle_names_paris() {
    let server = start().await;
    let h2o = greedy_client(&server.url());
    let answer = h2o
        .complete([Message::user("What is the capital of France?")])
        .await
        .unwrap();
    assert!(answer.text.contains("Paris"), "{:?}", answer.text);
    assert_eq!(
        answer.details.unwrap().finish_reason,
        FinishReason::EosToken
    );
    h2o.wait_for_cleanup().await;
    assert_eq!(server.state().store().conversation_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_sampling_is_reproducible_through_the_provider() {
    let server = start().await;
    let h2o = H2o::builder()
        .url(server.url())
        .env_proxy(false)
        .build()
        .unwrap();
    let run = |seed: u64| {
        let h2o = h2o.clone();
        async move {
            h2o.request([Message::user("Write one sentence about the sea.")])
                .parameters(
                    Parameters::empty()
                        .max_new_tokens(20)
                        .seed(seed)
                        .details(true),
                )
                .complete()
                .await
                .unwrap()
        }
    };
    let a = run(21).await;
    let b = run(21).await;
    assert_eq!(a.text, b.text);
    assert_eq!(a.details.unwrap().seed, Some(21));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_new_tokens_and_stop_sequences_report_their_finish_reason() {
    let server = start().await;
    let h2o = greedy_client(&server.url());
    let short = h2o
        .request([Message::user("Count from one to twenty.")])
        .parameters(Parameters::empty().max_new_tokens(4))
        .complete()
        .await
        .unwrap();
    assert_eq!(short.details.unwrap().finish_reason, FinishReason::Length);
    assert_eq!(short.tokens, 4);
    let stopped = h2o
        .request([Message::user("What is the capital of France?")])
        .parameters(Parameters::empty().stop([" Paris"]))
        .complete()
        .await
        .unwrap();
    assert_eq!(
        stopped.details.unwrap().finish_reason,
        FinishReason::StopSequence
    );
    assert!(stopped.text.ends_with(" Paris"), "{:?}", stopped.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_turn_sees_the_first_answer() {
    let server = start().await;
    let url = server.url();
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .no_proxy()
        .build()
        .unwrap();
    client
        .post(format!("{url}/settings"))
        .header("referer", format!("{url}/"))
        .form(&[
            ("ethicsModalAccepted", "true"),
            ("activeModel", LOCAL_MODEL_ID),
        ])
        .send()
        .await
        .unwrap();
    let created: Value = client
        .post(format!("{url}/conversation"))
        .json(&json!({"model": LOCAL_MODEL_ID}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["conversationId"].as_str().unwrap();
    let turn = |inputs: &str| {
        json!({"inputs": inputs, "parameters": {"max_new_tokens": 32, "return_full_text": false}, "stream": true,
               "options": {"id": uuid_v4(), "response_id": uuid_v4(), "is_retry": false, "use_cache": false, "web_search_id": ""}})
    };
    let first = client
        .post(format!("{url}/conversation/{id}"))
        .json(&turn("What is the capital of France?"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(first.contains("Paris"), "{first}");
    let second = client
        .post(format!("{url}/conversation/{id}"))
        .json(&turn("And of Italy?"))
        .send()
        .await
        .unwrap();
    let characters: usize = second.headers()["x-compute-characters"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    second.text().await.unwrap();
    let owner = server.state().store().owner_of(id).unwrap();
    let messages = server.state().store().get(&owner, id).unwrap().messages;
    assert_eq!(messages.len(), 4);
    assert!(messages[1].content.contains("Paris"));
    let expected_prompt = format!(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n{}<|im_end|>\n<|im_start|>user\nAnd of Italy?<|im_end|>\n<|im_start|>assistant\n",
        messages[1].content
    );
    assert_eq!(
        characters,
        expected_prompt.chars().count(),
        "the second prompt holds the first answer"
    );
}

fn uuid_v4() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tgi_python_client_streams_and_generates() {
    let server = start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/tgi_client.py");
    let url = server.url();
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .arg(&url)
        .env("NO_PROXY", "*")
        .output()
        .await
        .expect("python3 runs (installed by .ci/run)");
    assert!(
        output.status.success(),
        "TGI's Python client failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_python_client_against_the_gateway() {
    let config = ServerConfig {
        api_key: Some("test-key".into()),
        ..ServerConfig::default()
    };
    let server = start_with(config).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_client.py");
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .arg(server.url())
        .arg("test-key")
        .env("NO_PROXY", "*")
        .output()
        .await
        .expect("python3 runs (installed by .ci/run)");
    assert!(
        output.status.success(),
        "the openai client failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
