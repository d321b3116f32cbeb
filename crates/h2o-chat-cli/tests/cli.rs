//! The `h2o-chat` binary as scripts and people use it: the embedded default, `--url` test
//! servers (the library's fault-injecting one), stdin, `--json`, exit codes per error kind,
//! batch, and `serve` with its signals.

use h2o_chat_test_support::chat_ui_double as support;

mod common;

use common::Serve;

use std::time::{Duration, Instant};

use assert_cmd::Command;
use support::{Chunk, Reply, TestServer, sse_body, stream_reply, token_event};

fn h2o_chat() -> Command {
    let mut cmd = Command::cargo_bin("h2o-chat").unwrap();
    cmd.env_remove("H2O_CHAT_URL")
        .env("H2O_CHAT_NO_LOG", "1")
        .env("NO_PROXY", "*")
        .timeout(Duration::from_secs(240));
    cmd
}

/// A test server on its own runtime (the binary runs in another process).
fn server() -> (TestServer, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(TestServer::start());
    (server, runtime)
}

#[test]
fn one_shot_on_the_embedded_local_model_answers_paris() {
    let output = h2o_chat()
        .args(["chat", "What is the capital of France?"])
        .write_stdin("")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("Paris"), "{stdout}");
    assert!(
        stdout.ends_with('\n') && !stdout.ends_with("\n\n"),
        "one newline after the answer: {stdout:?}"
    );
}

#[test]
fn schema_and_regex_shape_the_embedded_models_answer() {
    let schema = r#"{"type":"object","properties":{"city":{"type":"string","maxLength":30},"country":{"type":"string","maxLength":30}},"required":["city","country"],"additionalProperties":false}"#;
    let output = h2o_chat()
        .args([
            "chat",
            "--schema",
            schema,
            "Name the capital of France as JSON.",
        ])
        .write_stdin("")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("the answer is JSON");
    let keys: Vec<&String> = answer.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["city", "country"], "{answer}");
    let output = h2o_chat()
        .args(["chat", "--regex", "(yes|no)", "Is Paris in France?"])
        .write_stdin("")
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(["yes\n", "no\n"].contains(&stdout.as_str()), "{stdout:?}");
    // A schema that is neither JSON nor a file: a usage error, before any request.
    let output = h2o_chat()
        .args(["chat", "--schema", "/no/such/schema.json", "Hi"])
        .write_stdin("")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--schema"));
}

#[test]
fn json_events_carry_the_alternatives_top_n_tokens_asks_for() {
    let output = h2o_chat()
        .args([
            "--json",
            "--max-new-tokens",
            "6",
            "-p",
            "top_n_tokens=3",
            "chat",
            "What is the capital of France?",
        ])
        .write_stdin("")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let events: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let tokens: Vec<&serde_json::Value> = events.iter().filter(|e| e["type"] == "token").collect();
    assert!(!tokens.is_empty(), "{events:?}");
    for token in tokens {
        let top = token["top_tokens"]
            .as_array()
            .expect("alternatives on every token");
        assert_eq!(top.len(), 3, "{token}");
        let logprobs: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
        assert!(
            logprobs.windows(2).all(|w| w[0] >= w[1]),
            "likeliest first: {token}"
        );
        // The token itself, when among them, has the logprob it was given.
        if let Some(same) = top.iter().find(|t| t["id"] == token["id"]) {
            let (a, b) = (
                same["logprob"].as_f64().unwrap(),
                token["logprob"].as_f64().unwrap(),
            );
            assert!((a - b).abs() < 1e-4, "{token}");
        }
    }
}

#[test]
fn one_shot_against_a_url_with_a_path_prefix_prints_only_the_answer() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(TestServer::start_with_prefix("/chat"));
    server.script_generate(stream_reply(sse_body(&["Bonjour", " le", " monde"])));
    let output = h2o_chat()
        .args(["--url", &server.url, "--model", "falcon-7b", "chat", "Hi"])
        .write_stdin("")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "Bonjour le monde\n"
    );
    let create = server.requests_to(axum::http::Method::POST, "/chat/conversation");
    assert_eq!(
        create[0].json()["model"],
        "h2oai/h2ogpt-gm-oasst1-en-2048-falcon-7b-v3"
    );
    runtime.block_on(server.until_conversations(0));
}

#[test]
fn piped_stdin_is_joined_to_the_prompt() {
    let (server, _rt) = server();
    h2o_chat()
        .args(["--url", &server.url, "chat", "summarise:"])
        .write_stdin("line one\nline two\n")
        .assert()
        .success();
    let generate = server
        .requests_to(axum::http::Method::POST, "/conversation/")
        .pop()
        .unwrap();
    assert_eq!(
        generate.json()["inputs"],
        "summarise:\n\nline one\nline two"
    );
}

#[test]
fn dash_reads_the_prompt_from_stdin_and_system_goes_first() {
    let (server, _rt) = server();
    h2o_chat()
        .args(["--url", &server.url, "--system", "Be brief.", "chat", "-"])
        .write_stdin("Hi\n")
        .assert()
        .success();
    let generate = server
        .requests_to(axum::http::Method::POST, "/conversation/")
        .pop()
        .unwrap();
    assert_eq!(
        generate.json()["inputs"],
        "System: Be brief.\nUser: Hi\nAssistant:"
    );
}

#[test]
fn options_become_parameters() {
    let (server, _rt) = server();
    h2o_chat()
        .args([
            "--url",
            &server.url,
            "--temperature",
            "0.7",
            "--max-new-tokens",
            "5",
            "--seed",
            "3",
            "--stop",
            "\n",
            "-p",
            "top_k=40",
            "-p",
            "note=hello",
            "chat",
            "Hi",
        ])
        .write_stdin("")
        .assert()
        .success();
    let body = server
        .requests_to(axum::http::Method::POST, "/conversation/")
        .pop()
        .unwrap()
        .json();
    assert_eq!(
        serde_json::to_string(&body["parameters"]).unwrap(),
        r#"{"temperature":0.7,"truncate":2048,"max_new_tokens":5,"do_sample":true,"repetition_penalty":1.2,"return_full_text":false,"seed":3,"stop":["\n"],"top_k":40,"note":"hello"}"#
    );
}

#[test]
fn json_events_parse_and_end_with_final() {
    let (server, _rt) = server();
    let output = h2o_chat()
        .args(["--url", &server.url, "--json", "chat", "Hi"])
        .write_stdin("")
        .output()
        .unwrap();
    assert!(output.status.success());
    let events: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["token", "token", "token", "final"]);
    assert_eq!(events[2]["special"], true);
    assert_eq!(events[3]["generated_text"], "Hello!");
}

fn exit_code_for(reply: Reply, extra: &[&str]) -> (i32, String, String) {
    let (server, _rt) = server();
    server.script_generate(reply);
    let mut args = vec!["--url".to_string(), server.url.clone()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(["chat".to_string(), "Hi".to_string()]);
    let output = h2o_chat().args(&args).write_stdin("").output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn server_500_exits_4() {
    let (code, stdout, stderr) = exit_code_for(
        Reply::Status(500, vec![], r#"{"message":"Internal Error"}"#.into()),
        &[],
    );
    assert_eq!(code, 4, "{stderr}");
    assert_eq!(stdout, "");
    assert!(stderr.contains("HTTP 500: Internal Error"), "{stderr}");
}

#[test]
fn error_event_exits_7_and_keeps_the_partial_text_printed_once() {
    let body = format!(
        "{}data:{{\"error\":\"Request failed during generation: boom\",\"error_type\":\"generation\"}}\n\n",
        token_event(1, "Par", false)
    );
    let (code, stdout, stderr) = exit_code_for(stream_reply(body), &[]);
    assert_eq!(code, 7, "{stderr}");
    assert_eq!(stdout, "Par\n");
    assert!(stderr.contains("boom"));
}

#[test]
fn truncated_stream_exits_8() {
    let (code, stdout, stderr) = exit_code_for(stream_reply(token_event(1, "Par", false)), &[]);
    assert_eq!(code, 8, "{stderr}");
    assert_eq!(stdout, "Par\n");
    assert!(stderr.contains("incomplete"), "{stderr}");
}

#[test]
fn stall_with_idle_timeout_one_second_exits_10() {
    let started = Instant::now();
    let reply = Reply::Stream(
        "text/event-stream",
        vec![
            Chunk::Bytes(token_event(1, "Par", false).into_bytes()),
            Chunk::Sleep(Duration::from_secs(60)),
        ],
    );
    let (code, _, stderr) = exit_code_for(reply, &["--idle-timeout", "1"]);
    assert_eq!(code, 10, "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn connection_refused_exits_3() {
    let output = h2o_chat()
        .args(["--url", "http://127.0.0.1:9", "chat", "Hi"])
        .write_stdin("")
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn unknown_alias_in_legacy_mode_exits_2_before_any_request() {
    let (server, _rt) = server();
    let output = h2o_chat()
        .args([
            "--url",
            &server.url,
            "--legacy",
            "--model",
            "gpt-4",
            "chat",
            "Hi",
        ])
        .write_stdin("")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("falcon-40b, falcon-7b, llama-13b"));
    assert!(server.requests().is_empty());
}

#[test]
fn legacy_mode_sends_the_role_content_prompt() {
    let (server, _rt) = server();
    h2o_chat()
        .args([
            "--url",
            &server.url,
            "--legacy",
            "--model",
            "llama-13b",
            "chat",
            "Hi",
        ])
        .write_stdin("")
        .assert()
        .success();
    let body = server
        .requests_to(axum::http::Method::POST, "/conversation/")
        .pop()
        .unwrap()
        .json();
    assert_eq!(
        body["inputs"],
        format!(
            "{}user: Hi\nassistant:",
            h2o_chat::prompt::LEGACY_INSTRUCTION
        )
    );
}

#[test]
fn batch_of_200_at_concurrency_32_keeps_order_and_survives_failures() {
    let (server, _rt) = server();
    for _ in 0..5 {
        server.script_generate(Reply::Status(
            500,
            vec![],
            r#"{"message":"Internal Error"}"#.into(),
        ));
    }
    let mut input = String::new();
    for i in 0..200 {
        if i % 2 == 0 {
            input.push_str(&format!("prompt number {i}\n"));
        } else {
            input.push_str(&format!("{{\"id\":\"item-{i}\",\"messages\":[{{\"role\":\"user\",\"content\":\"q{i}\"}}],\"parameters\":{{\"max_new_tokens\":5}}}}\n"));
        }
    }
    let output = h2o_chat()
        .args([
            "--url",
            &server.url,
            "-q",
            "batch",
            "-",
            "--concurrency",
            "32",
        ])
        .write_stdin(input)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(20),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 200);
    for (i, line) in lines.iter().enumerate() {
        let expected = if i % 2 == 0 {
            serde_json::json!(i + 1)
        } else {
            serde_json::json!(format!("item-{i}"))
        };
        assert_eq!(line["id"], expected);
    }
    assert_eq!(lines.iter().filter(|l| !l["error"].is_null()).count(), 5);
    assert_eq!(lines.iter().filter(|l| l["text"] == "Hello!").count(), 195);
}

#[test]
fn models_lists_stand_ins_and_params_lists_the_legacy_string() {
    let models = h2o_chat().arg("models").output().unwrap();
    let text = String::from_utf8(models.stdout).unwrap();
    assert!(
        text.contains("h2oai/h2ogpt-gm-oasst1-en-2048-falcon-40b-v1")
            && text.contains("stand-in")
            && text.contains("smollm2")
    );
    // The files `--gguf` names are listed as `serve` would offer them.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny.gguf");
    std::fs::write(&file, b"GGUF").unwrap();
    let named = format!("mine={}", file.display());
    let listed = h2o_chat()
        .args(["--gguf", &named, "models"])
        .output()
        .unwrap();
    let text = String::from_utf8(listed.stdout).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("mine ") && l.contains("loaded on its first request")),
        "{text}"
    );
    let params = h2o_chat().arg("params").output().unwrap();
    assert!(
        String::from_utf8(params.stdout)
            .unwrap()
            .starts_with("h2o_chat::legacy supports: (model: &str")
    );
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

/// A long answer, opened and read up to its first event.
fn long_stream(url: &str) -> reqwest::blocking::Response {
    let mut response = client()
        .post(format!("{url}/generate_stream"))
        .json(&serde_json::json!({
            // A raw continuation: the model counts on for as long as it is let.
            "inputs": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,",
            "parameters": {"max_new_tokens": 1900, "repetition_penalty": 1.0}
        }))
        .send()
        .unwrap();
    let mut first = [0u8; 5];
    std::io::Read::read_exact(&mut response, &mut first).unwrap();
    assert_eq!(&first, b"data:");
    response
}

/// `/generate` on the capital of France names Paris; then SIGTERM ends `serve` cleanly.
fn answers_paris_then_stops_on_sigterm(serve: Serve) {
    let answer: serde_json::Value = client()
        .post(format!("{}/generate", serve.url()))
        .json(&serde_json::json!({"inputs": "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n", "parameters": {"max_new_tokens": 12}}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(
        answer["generated_text"].as_str().unwrap().contains("Paris"),
        "{answer}"
    );
    serve.signal("TERM");
    assert!(serve.exit_status(Duration::from_secs(30)).success());
}

#[test]
fn serve_answers_and_stops_cleanly_on_sigterm() {
    let serve = Serve::start(&[]);
    answers_paris_then_stops_on_sigterm(serve);
}

#[test]
fn serve_with_a_16_bit_kv_cache_says_so_and_answers() {
    let serve = Serve::start_on(
        common::free_port(),
        &["--slots", "2", "--kv-cache", "f16"],
        &[],
        "KV cache f16",
    );
    answers_paris_then_stops_on_sigterm(serve);
}

#[test]
fn an_unknown_kv_cache_type_is_a_usage_error() {
    let output = h2o_chat()
        .args(["serve", "--addr", "127.0.0.1:0", "--kv-cache", "q4"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("expected q8_0 or f16"), "{stderr}");
}

#[test]
fn a_malformed_or_tiny_memory_budget_is_a_usage_error() {
    for (given, said) in [("12X", "not a size"), ("1K", "at least 64 MiB")] {
        let output = h2o_chat()
            .args(["serve", "--addr", "127.0.0.1:0", "--max-memory", given])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{given}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(said), "{given}: {stderr}");
    }
}

#[test]
fn sigint_shuts_serve_down_like_sigterm() {
    let serve = Serve::start(&[]);
    serve.signal("INT");
    assert!(serve.exit_status(Duration::from_secs(30)).success());
}

#[test]
fn on_sigterm_running_streams_end_with_an_error_event_after_the_shutdown_timeout() {
    let serve = Serve::start(&["--shutdown-timeout", "1"]);
    let url = serve.url();
    let streams: Vec<_> = (0..2).map(|_| long_stream(&url)).collect();
    serve.signal("TERM");
    for mut stream in streams {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stream, &mut rest).unwrap();
        assert!(
            rest.ends_with("\"error_type\":\"shutdown\"}\n\n"),
            "{}",
            &rest[rest.len().saturating_sub(300)..]
        );
    }
    assert!(serve.exit_status(Duration::from_secs(30)).success());
}

#[test]
fn a_second_signal_exits_at_once() {
    let serve = Serve::start(&["--shutdown-timeout", "3600"]);
    let _stream = long_stream(&serve.url());
    serve.signal("TERM");
    // The first signal has taken effect once the listener is closed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", serve.port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "serve kept listening after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    serve.signal("TERM");
    let status = serve.exit_status(Duration::from_secs(30));
    assert_eq!(status.code(), Some(130), "{status:?}");
}

#[test]
fn a_restarted_serve_with_the_same_db_continues_the_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("serve.sqlite3");
    let db = db.to_str().unwrap();
    let browser = reqwest::blocking::Client::builder()
        .cookie_store(true)
        .no_proxy()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let turn = |url: &str, id: &str, inputs: &str, full_text: bool| -> String {
        let reply: serde_json::Value = browser
            .post(format!("{url}/conversation/{id}"))
            .json(&serde_json::json!({
                "inputs": inputs,
                "parameters": {"max_new_tokens": 24, "do_sample": false, "return_full_text": full_text},
                "options": {"id": uuid_v4(), "is_retry": false}
            }))
            .send()
            .unwrap()
            .json()
            .unwrap();
        reply[0]["generated_text"].as_str().unwrap().to_string()
    };

    let serve = Serve::start(&["--db", db]);
    let url = serve.url();
    let settings = browser
        .post(format!("{url}/settings"))
        .header("referer", format!("{url}/"))
        .form(&[("ethicsModalAccepted", "true")])
        .send()
        .unwrap();
    assert!(settings.status().is_success());
    let created: serde_json::Value = browser
        .post(format!("{url}/conversation"))
        .json(&serde_json::json!({"model": "HuggingFaceTB/SmolLM2-135M-Instruct"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let id = created["conversationId"].as_str().unwrap().to_string();
    let first = turn(&url, &id, "What is the capital of France?", false);
    assert!(first.contains("Paris"), "{first}");
    serve.signal("TERM");
    assert!(serve.exit_status(Duration::from_secs(30)).success());

    // The same database, a new process (and port): the session's cookie still opens it.
    let serve = Serve::start(&["--db", db]);
    let url = serve.url();
    let listed: serde_json::Value = browser
        .get(format!("{url}/conversations"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(listed["conversations"][0]["id"], id.as_str());
    // Turn 2's prompt (echoed with return_full_text) holds turn 1, question and answer.
    let second = turn(&url, &id, "And of Italy?", true);
    assert!(
        second.contains("What is the capital of France?") && second.contains(first.trim()),
        "{second}"
    );
    let stored: serde_json::Value = browser
        .get(format!("{url}/conversation/{id}"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(stored["messages"].as_array().unwrap().len(), 4, "{stored}");
    serve.signal("TERM");
    assert!(serve.exit_status(Duration::from_secs(30)).success());
}

fn uuid_v4() -> String {
    uuid::Uuid::new_v4().to_string()
}
