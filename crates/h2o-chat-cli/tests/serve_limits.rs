//! `h2o-chat serve` as an operator meets it on a bad day: a signal while the model is still
//! being fetched, a low open-file limit, and a shutdown in the middle of an answer — each a
//! real process on loopback.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Serve, free_port};

/// Reads `child`'s stderr until a line contains `wanted`; every line read.
fn stderr_until(stderr: &mut impl BufRead, wanted: &str) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let read = stderr.read_line(&mut line).unwrap();
        assert!(read > 0, "serve exited before saying {wanted:?}: {lines:?}");
        let found = line.contains(wanted);
        lines.push(line);
        if found {
            return lines;
        }
    }
}

/// Waits for `child` to exit (the bound only turns a hang into a failure).
fn exit_within(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(unix)]
#[test]
fn a_signal_during_the_model_fetch_ends_pip_and_the_process_within_seconds() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    // A pip that never answers, found before the machine's own.
    let python = bin.path().join("python3");
    std::fs::write(&python, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("h2o-chat"))
        .args([
            "-q",
            "serve",
            "--addr",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .args(["--db", ":memory:"])
        .env("H2O_CHAT_HOME", home.path())
        .env("PATH", path)
        .env_remove("H2O_CHAT_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    stderr_until(&mut stderr, "listening on");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = exit_within(&mut child, Duration::from_secs(10));
    assert!(status.success(), "{status}");
    // No pip was left behind.
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(!rest.contains("panicked"), "{rest}");
}

#[cfg(unix)]
#[test]
fn a_low_open_file_limit_lowers_the_connection_cap_and_the_server_keeps_answering() {
    let port = free_port();
    let script = format!(
        "ulimit -n 256 && exec '{}' -q serve --addr 127.0.0.1:{port} --db :memory: --slots 1",
        assert_cmd::cargo::cargo_bin("h2o-chat").display()
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .env_remove("H2O_CHAT_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let said = stderr_until(&mut stderr, "listening on");
    assert!(
        said.iter()
            .any(|l| l.contains("--max-connections lowered from 1024 to 192")),
        "{said:?}"
    );
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = stderr.read_to_string(&mut sink);
    });
    // More idle connections than the process can hold files.
    let idle: Vec<_> = (0..300)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    let health = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{port}/health"))
        .send();
    // Loading or ready: what matters is that it answers at once, not after the accept
    // loop ran out of file descriptors.
    assert!(health.is_ok(), "{health:?}");
    drop(idle);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_shutdown_mid_answer_keeps_the_question_and_the_answer_so_far_for_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("serve.sqlite3");
    let db = db.to_str().unwrap();
    let browser = reqwest::blocking::Client::builder()
        .cookie_store(true)
        .no_proxy()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let serve = Serve::start(&["--db", db, "--shutdown-timeout", "0.5"]);
    let url = serve.url();
    browser
        .post(format!("{url}/settings"))
        .header("referer", format!("{url}/"))
        .form(&[("ethicsModalAccepted", "true")])
        .send()
        .unwrap();
    let created: serde_json::Value = browser
        .post(format!("{url}/conversation"))
        .json(&serde_json::json!({"model": "HuggingFaceTB/SmolLM2-135M-Instruct"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let id = created["conversationId"].as_str().unwrap().to_string();
    // Greedy with no repetition penalty, this model repeats itself to the length limit.
    let mut answer = browser
        .post(format!("{url}/conversation/{id}"))
        .json(&serde_json::json!({
            "inputs": "Write the numbers 1 2 3 4 5 6 7 8 9 10 11 12 and continue to 1000.",
            "parameters": {"max_new_tokens": 1500, "do_sample": false, "repetition_penalty": 1.0},
            "stream": true,
            "options": {"id": uuid::Uuid::new_v4().to_string(), "is_retry": false}
        }))
        .send()
        .unwrap();
    let mut seen = String::new();
    let mut buffer = [0u8; 4096];
    while seen.matches("\"token\"").count() < 5 {
        let n = answer.read(&mut buffer).unwrap();
        assert!(n > 0, "the answer ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    serve.signal("TERM");
    answer.read_to_string(&mut seen).unwrap();
    assert!(
        seen.ends_with("\"error_type\":\"shutdown\"}\n\n"),
        "{}",
        &seen[seen.len().saturating_sub(300)..]
    );
    let status = serve.exit_status(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");

    let serve = Serve::start(&["--db", db]);
    let stored: serde_json::Value = browser
        .get(format!("{}/conversation/{id}", serve.url()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let messages = stored["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{stored}");
    assert!(
        messages[0]["content"]
            .as_str()
            .unwrap()
            .starts_with("Write the numbers"),
        "{stored}"
    );
    let partial = messages[1]["content"].as_str().unwrap();
    assert!(partial.len() >= 5, "the answer as far as it went: {stored}");
    serve.signal("TERM");
    assert!(serve.exit_status(Duration::from_secs(30)).success());
}

#[test]
fn serve_offers_every_gguf_it_is_given_and_a_corrupt_one_fails_alone() {
    let model = h2o_chat_cli::home::dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(model.is_file(), "the main job fetched the model first");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("corrupt.gguf"), b"GGUF not a model").unwrap();
    let other = format!("other={}", model.display());
    let serve = Serve::start(&[
        "--gguf",
        &other,
        "--models-dir",
        dir.path().to_str().unwrap(),
        "--stand-in",
        "falcon-7b=other",
        "--keep-alive",
        "-1",
    ]);
    let url = serve.url();
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let listed: serde_json::Value = http
        .get(format!("{url}/v1/models"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let entry = |id: &str| {
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} is not listed: {listed}"))
    };
    assert_eq!(
        entry("other")["h2o_chat"]["loaded"],
        false,
        "loads on demand"
    );
    assert_eq!(entry("corrupt")["h2o_chat"]["loaded"], false);
    assert_eq!(
        entry("h2oai/h2ogpt-gm-oasst1-en-2048-falcon-7b-v3")["h2o_chat"]["served_by"],
        "other"
    );
    // The stand-in loads `other` on its first request, which waits for it.
    let answer = |model: &str| {
        http.post(format!("{url}/v1/chat/completions"))
            .json(&serde_json::json!({"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}))
            .send()
            .unwrap()
    };
    assert_eq!(answer("falcon-7b").status().as_u16(), 200);
    let listed: serde_json::Value = http
        .get(format!("{url}/v1/models"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let other = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "other")
        .unwrap()
        .clone();
    assert_eq!(other["h2o_chat"]["loaded"], true);
    let broken = answer("corrupt");
    assert_eq!(broken.status().as_u16(), 503);
    assert!(broken.text().unwrap().contains("could not be loaded"));
    assert_eq!(answer("smollm2").status().as_u16(), 200);
    assert_eq!(
        http.get(format!("{url}/health"))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    serve.signal("TERM");
}

#[test]
fn fast_mode_is_said_where_the_model_is_described() {
    let serve = common::Serve::start_on(
        common::free_port(),
        &["--slots", "2", "--fast"],
        &[],
        "fast mode: answers may depend on the batch and the prompt cache",
    );
    let info: serde_json::Value = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{}/info", serve.url()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let backend = info["backend"].as_str().unwrap();
    assert!(backend.contains("f16 KV cache, fast mode"), "{backend}");
    serve.signal("TERM");
}
