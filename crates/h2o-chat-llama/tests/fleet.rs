//! Several models on one server, loaded on demand, with the real model over loopback: two
//! at once (the same GGUF under two names, for the mechanics; a real second model when
//! `H2O_CHAT_SECOND_GGUF` names one), a first request that waits for its model, an idle
//! model unloaded after its keep-alive with its memory given back, the least recently used
//! idle model making room, and a corrupt GGUF failing only its own requests.

use std::sync::Arc;
use std::time::Duration;

use h2o_chat_engine::{Engine, Fleet, FleetConfig, OnDemand};
use h2o_chat_llama::{LlamaConfig, LlamaEngine};
use h2o_chat_server::{ModelRegistry, RunningServer, ServedModel, Server, ServerConfig};
use serde_json::{Value, json};

fn loader(path: std::path::PathBuf, name: &'static str) -> h2o_chat_engine::Loader {
    Box::new(move || {
        let mut config = LlamaConfig::new(path.clone(), name);
        config.slots = 2;
        config.context_per_slot = 2048;
        config.threads = 1;
        LlamaEngine::load(config)
            .map(|engine| Arc::new(engine) as Arc<dyn Engine>)
            .map_err(|e| e.to_string())
    })
}

async fn serve(models: &[(&'static str, Arc<OnDemand>)]) -> RunningServer {
    let served = models
        .iter()
        .map(|(name, engine)| ServedModel::new(name.to_string(), Vec::new(), engine.clone()))
        .collect();
    Server::new(ServerConfig::default(), ModelRegistry::new(served))
        .bind("127.0.0.1:0")
        .await
        .unwrap()
}

async fn ask(url: &str, model: &str) -> (u16, Value) {
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{url}/v1/chat/completions"))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "What is the capital of France?"}],
                      "max_tokens": 12, "temperature": 0}))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// `h2o_chat_model_loaded` of `model` from `/metrics`.
async fn loaded(url: &str, model: &str) -> f64 {
    h2o_chat_test_support::metrics::fetch(url)
        .await
        .with("h2o_chat_model_loaded", "model", model)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_load_on_their_first_requests_and_answer_at_once() {
    let gguf = h2o_chat_test_support::model::local_gguf();
    let fleet = Fleet::new(FleetConfig {
        keep_alive: None,
        max_loaded: 2,
        ..FleetConfig::default()
    });
    let a = fleet.add("a", loader(gguf.clone(), "a"));
    let b = fleet.add("b", loader(gguf, "b"));
    let server = serve(&[("a", a), ("b", b)]).await;
    let url = server.url();
    assert_eq!(
        (loaded(&url, "a").await, loaded(&url, "b").await),
        (0.0, 0.0)
    );
    // Both first requests at once: each waits for its model, neither is refused.
    let (first, second) = tokio::join!(ask(&url, "a"), ask(&url, "b"));
    assert_eq!(first.0, 200, "{}", first.1);
    assert_eq!(second.0, 200, "{}", second.1);
    assert_eq!(
        first.1["choices"][0]["message"],
        second.1["choices"][0]["message"]
    );
    assert_eq!(
        (loaded(&url, "a").await, loaded(&url, "b").await),
        (1.0, 1.0)
    );
    assert_eq!(fleet.loaded(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_model_unloads_after_its_keep_alive_and_gives_its_memory_back() {
    let fleet = Fleet::new(FleetConfig {
        keep_alive: Some(Duration::from_secs(1)),
        max_loaded: 2,
        ..FleetConfig::default()
    });
    fleet.spawn_keep_alive();
    let model = fleet.add("a", loader(h2o_chat_test_support::model::local_gguf(), "a"));
    let server = serve(&[("a", model.clone())]).await;
    let url = server.url();
    let before = rss_kib();
    let (status, reply) = ask(&url, "a").await;
    assert_eq!(status, 200, "{reply}");
    let with_model = rss_kib();
    assert!(with_model > before + 50_000, "{before} → {with_model} KiB");
    // Unloaded once idle past its keep-alive: said by /metrics (watched, no fixed sleep).
    let unloaded = async {
        while loaded(&url, "a").await != 0.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), unloaded)
        .await
        .expect("unloaded within its keep-alive and the check's period");
    // The scheduler thread lets go of the model and its caches as it ends.
    let given_back = async {
        while rss_kib() > with_model - 50_000 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), given_back)
        .await
        .unwrap_or_else(|_| panic!("RSS stayed at {} KiB (loaded: {with_model})", rss_kib()));
    // And it loads again on the next request.
    let (status, _) = ask(&url, "a").await;
    assert_eq!(status, 200);
    assert!(model.is_loaded());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_recently_used_idle_model_makes_room_and_a_corrupt_one_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("corrupt.gguf");
    std::fs::write(&corrupt, b"GGUF\x03\x00\x00\x00 this is not a model").unwrap();
    let gguf = h2o_chat_test_support::model::local_gguf();
    let fleet = Fleet::new(FleetConfig {
        keep_alive: None,
        max_loaded: 1,
        ..FleetConfig::default()
    });
    let a = fleet.add("a", loader(gguf.clone(), "a"));
    let b = fleet.add("b", loader(gguf, "b"));
    let broken = fleet.add("broken", loader(corrupt, "broken"));
    let server = serve(&[("a", a.clone()), ("b", b.clone()), ("broken", broken)]).await;
    let url = server.url();
    assert_eq!(ask(&url, "a").await.0, 200);
    // a is idle (past the grace): loading b unloads it.
    tokio::time::sleep(h2o_chat_engine::GRACE).await;
    assert_eq!(ask(&url, "b").await.0, 200);
    assert!(!a.is_loaded() && b.is_loaded());
    // The corrupt file: its requests fail with the reason; the others keep serving.
    let (status, error) = ask(&url, "broken").await;
    assert_eq!(status, 503, "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("could not be loaded"),
        "{error}"
    );
    let health: Value = reqwest::get(format!("{url}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    assert!(
        health["models"][2]["status"]
            .as_str()
            .unwrap()
            .starts_with("failed"),
        "{health}"
    );
    assert_eq!(ask(&url, "b").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_budget_counts_each_models_weights_and_caches() {
    let gguf = h2o_chat_test_support::model::local_gguf();
    // What one model takes, as the engine reports it.
    let one = tokio::task::spawn_blocking({
        let gguf = gguf.clone();
        move || loader(gguf, "probe")().unwrap().footprint().unwrap()
    })
    .await
    .unwrap();
    let file = std::fs::metadata(&gguf).unwrap().len();
    assert!(one > file, "weights and caches: {one} vs the file's {file}");
    // Room for one and a half: by count three may be loaded, by bytes only one.
    let fleet = Fleet::new(FleetConfig {
        keep_alive: None,
        max_bytes: Some(one * 3 / 2),
        ..FleetConfig::default()
    });
    let a = fleet.add_sized("a", file, loader(gguf.clone(), "a"));
    let b = fleet.add_sized("b", file, loader(gguf.clone(), "b"));
    let huge = fleet.add_sized("huge", one * 2, loader(gguf, "huge"));
    let server = serve(&[("a", a.clone()), ("b", b.clone()), ("huge", huge)]).await;
    let url = server.url();
    assert_eq!(ask(&url, "a").await.0, 200);
    tokio::time::sleep(h2o_chat_engine::GRACE).await;
    // b does not fit beside a: a, idle, is unloaded first.
    assert_eq!(ask(&url, "b").await.0, 200);
    assert!(!a.is_loaded() && b.is_loaded());
    // A model larger than the whole budget fails alone, with the reason.
    let (status, error) = ask(&url, "huge").await;
    assert_eq!(status, 503, "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("memory budget"),
        "{error}"
    );
    assert_eq!(ask(&url, "b").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_second_model_answers_with_its_own_tokenizer_when_one_is_given() {
    let Some(second) = std::env::var_os("H2O_CHAT_SECOND_GGUF") else {
        eprintln!("H2O_CHAT_SECOND_GGUF is not set: the second-model test has nothing to load");
        return;
    };
    let fleet = Fleet::new(FleetConfig::default());
    let a = fleet.add("a", loader(h2o_chat_test_support::model::local_gguf(), "a"));
    let b = fleet.add("b", loader(second.into(), "b"));
    let server = serve(&[("a", a), ("b", b)]).await;
    let url = server.url();
    let (first, second) = tokio::join!(ask(&url, "a"), ask(&url, "b"));
    assert_eq!((first.0, second.0), (200, 200));
    assert_ne!(
        first.1["usage"]["prompt_tokens"], second.1["usage"]["prompt_tokens"],
        "the same messages, rendered and tokenised by each model's own template and vocabulary"
    );
}
