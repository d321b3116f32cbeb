//! The log of exchanges as people use it: `h2o-chat logs` after some chats, search, `chat
//! -c` and `--cid` continuing with context, `--no-log`, and a log that cannot be written
//! never costing the answer. Each test has its own `$H2O_CHAT_HOME` and a scripted server.

use h2o_chat_test_support::chat_ui_double as support;

use std::path::Path;
use std::time::Duration;

use assert_cmd::Command;
use axum::http::Method;
use support::{TestServer, sse_body, stream_reply, token_event};

fn h2o_chat(home: &Path) -> Command {
    let mut cmd = Command::cargo_bin("h2o-chat").unwrap();
    cmd.env_remove("H2O_CHAT_URL")
        .env_remove("H2O_CHAT_NO_LOG")
        .env("H2O_CHAT_HOME", home)
        .env("NO_PROXY", "*")
        .timeout(Duration::from_secs(120));
    cmd
}

fn server() -> (TestServer, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(TestServer::start());
    (server, runtime)
}

/// `chat PROMPT` against `server`, answered with `tokens`; returns stdout.
fn chat(home: &Path, server: &TestServer, args: &[&str], tokens: &[&str]) -> String {
    server.script_generate(stream_reply(sse_body(tokens)));
    let output = h2o_chat(home)
        .args(["--url", &server.url, "chat"])
        .args(args)
        .write_stdin("")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn logs_json(home: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let output = h2o_chat(home)
        .args(["logs", "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice::<Vec<serde_json::Value>>(&output.stdout).unwrap()
}

fn last_inputs(server: &TestServer) -> String {
    server
        .requests_to(Method::POST, "/conversation/")
        .pop()
        .unwrap()
        .json()["inputs"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn logs_lists_every_exchange_newest_first_with_its_conversation() {
    let (server, _rt) = server();
    let home = tempfile::tempdir().unwrap();
    chat(
        home.path(),
        &server,
        &["What is the capital of France?"],
        &["Paris", "."],
    );
    chat(
        home.path(),
        &server,
        &["--", "Name a colour."],
        &["Blue", "."],
    );
    chat(
        home.path(),
        &server,
        &["Count to three."],
        &["1", " 2", " 3"],
    );

    let rows = logs_json(home.path(), &[]);
    let prompts: Vec<&str> = rows.iter().map(|r| r["prompt"].as_str().unwrap()).collect();
    assert_eq!(
        prompts,
        [
            "Count to three.",
            "Name a colour.",
            "What is the capital of France?"
        ]
    );
    let newest = &rows[0];
    assert_eq!(newest["answer"], "1 2 3");
    assert_eq!(
        newest["finish_reason"],
        serde_json::Value::Null,
        "the scripted final has no details"
    );
    assert_eq!(
        newest["completion_tokens"], 4,
        "three tokens and the final one"
    );
    assert_eq!(newest["url"], server.url.as_str());
    assert_eq!(newest["error"], serde_json::Value::Null);
    assert!(newest["model"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(
        newest["parameters"]["max_new_tokens"], 1024,
        "g4f's defaults for a remote server"
    );
    assert!(newest["total_ms"].as_i64().is_some());
    let conversations: std::collections::HashSet<&str> = rows
        .iter()
        .map(|r| r["conversation"].as_str().unwrap())
        .collect();
    assert_eq!(
        conversations.len(),
        3,
        "each one-shot chat is its own conversation"
    );

    assert_eq!(logs_json(home.path(), &["-n", "2"]).len(), 2);

    let text = h2o_chat(home.path())
        .args(["logs", "-n", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("> Count to three.\n1 2 3\n"), "{text}");
    assert!(!text.contains("France"), "{text}");
}

#[test]
fn logs_q_searches_prompts_and_answers() {
    let (server, _rt) = server();
    let home = tempfile::tempdir().unwrap();
    chat(
        home.path(),
        &server,
        &["What is the capital of France?"],
        &["Paris", "."],
    );
    chat(home.path(), &server, &["Name a colour."], &["Blue", "."]);
    let by_answer = logs_json(home.path(), &["-q", "paris"]);
    assert_eq!(by_answer.len(), 1);
    assert_eq!(by_answer[0]["prompt"], "What is the capital of France?");
    let by_prompt = logs_json(home.path(), &["-q", "colour"]);
    assert_eq!(by_prompt[0]["answer"], "Blue.");
    assert!(logs_json(home.path(), &["-q", "nowhere"]).is_empty());
    // A malformed search is the user's to fix: a usage error, not a crash.
    h2o_chat(home.path())
        .args(["logs", "-q", "\"unbalanced"])
        .assert()
        .code(2);
}

#[test]
fn chat_c_continues_the_last_conversation_with_its_context() {
    let (server, _rt) = server();
    let home = tempfile::tempdir().unwrap();
    chat(
        home.path(),
        &server,
        &["--system", "Be brief.", "My name is Ada."],
        &["Nice", " to", " meet", " you."],
    );
    chat(
        home.path(),
        &server,
        &["-c", "What is my name?"],
        &["Ada", "."],
    );
    assert_eq!(
        last_inputs(&server),
        "System: Be brief.\nUser: My name is Ada.\nAssistant: Nice to meet you.\nUser: What is my name?\nAssistant:",
        "the logged system message and turn come first"
    );
    let rows = logs_json(home.path(), &[]);
    assert_eq!(rows[0]["conversation"], rows[1]["conversation"]);
    let first = rows[1]["conversation"].as_str().unwrap().to_string();

    // Another conversation, then `--cid` goes back to the first one.
    chat(home.path(), &server, &["Unrelated."], &["Ok", "."]);
    chat(
        home.path(),
        &server,
        &["--cid", &first, "And again?"],
        &["Ada", "."],
    );
    let inputs = last_inputs(&server);
    assert!(
        inputs.contains("User: What is my name?\nAssistant: Ada.\nUser: And again?"),
        "{inputs}"
    );
    assert!(!inputs.contains("Unrelated"), "{inputs}");
    assert_eq!(logs_json(home.path(), &["--conversation", &first]).len(), 3);

    // Unknown ids and an empty log are usage errors, before any request.
    let before = server.requests().len();
    h2o_chat(home.path())
        .args(["--url", &server.url, "chat", "--cid", "no-such-id", "Hi"])
        .assert()
        .code(2);
    let empty = tempfile::tempdir().unwrap();
    h2o_chat(empty.path())
        .args(["--url", &server.url, "chat", "-c", "Hi"])
        .assert()
        .code(2);
    assert_eq!(server.requests().len(), before);
}

#[test]
fn no_log_by_flag_or_environment_writes_nothing() {
    let (server, _rt) = server();
    let home = tempfile::tempdir().unwrap();
    chat(home.path(), &server, &["Logged."], &["Yes", "."]);
    chat(
        home.path(),
        &server,
        &["--no-log", "Secret one."],
        &["No", "."],
    );
    server.script_generate(stream_reply(sse_body(&["No", "."])));
    h2o_chat(home.path())
        .env("H2O_CHAT_NO_LOG", "1")
        .args(["--url", &server.url, "chat", "Secret two."])
        .assert()
        .success()
        .stdout("No.\n");
    let rows = logs_json(home.path(), &[]);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["prompt"], "Logged.");
}

#[test]
fn a_failed_exchange_is_logged_with_its_error_and_partial_answer() {
    let (server, _rt) = server();
    let home = tempfile::tempdir().unwrap();
    let body = format!(
        "{}data:{{\"error\":\"Model is overloaded\",\"error_type\":\"overloaded\"}}\n\n",
        token_event(1, "Part", false)
    );
    server.script_generate(stream_reply(body));
    h2o_chat(home.path())
        .args(["--url", &server.url, "chat", "Fail please."])
        .assert()
        .code(7);
    let rows = logs_json(home.path(), &[]);
    assert_eq!(rows[0]["prompt"], "Fail please.");
    assert_eq!(rows[0]["answer"], "Part");
    assert!(
        rows[0]["error"].as_str().unwrap().contains("overloaded"),
        "{}",
        rows[0]
    );
    // A failed exchange is not context for the next one.
    chat(home.path(), &server, &["-c", "Again."], &["Ok", "."]);
    assert_eq!(last_inputs(&server), "Again.");
}

#[test]
fn a_corrupt_log_is_a_warning_and_the_answer_still_prints() {
    let (server, _rt) = server();
    let home = tempfile::tempdir().unwrap();
    let path = home.path().join("logs.sqlite3");
    let garbage = b"not a database, but someone's file all the same".repeat(100);
    std::fs::write(&path, &garbage).unwrap();
    server.script_generate(stream_reply(sse_body(&["Still", " here", "."])));
    let output = h2o_chat(home.path())
        .args(["--url", &server.url, "chat", "Hello?"])
        .write_stdin("")
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8(output.stdout).unwrap(), "Still here.\n");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("warning: exchanges are not logged"),
        "{stderr}"
    );
    assert!(stderr.contains("logs.sqlite3"), "names the file: {stderr}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        garbage,
        "the file is left as it was"
    );
    // Reading it is a clear error too.
    h2o_chat(home.path()).arg("logs").assert().code(1);
}

#[test]
fn a_locked_log_is_a_warning_and_the_answer_still_prints() {
    let (server, _rt) = server();
    let home = tempfile::tempdir().unwrap();
    chat(home.path(), &server, &["First."], &["One", "."]);
    // Another writer holds the log past the busy timeout.
    let holder = h2o_chat_db::rusqlite::Connection::open(home.path().join("logs.sqlite3")).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    server.script_generate(stream_reply(sse_body(&["Two", "."])));
    let output = h2o_chat(home.path())
        .args(["--url", &server.url, "chat", "Second."])
        .write_stdin("")
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8(output.stdout).unwrap(), "Two.\n");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("warning: this exchange is not logged"),
        "{stderr}"
    );
    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);
    assert_eq!(logs_json(home.path(), &[]).len(), 1);
}

#[test]
fn logs_on_a_fresh_machine_is_empty_not_an_error() {
    let home = tempfile::tempdir().unwrap();
    let rows = logs_json(home.path(), &[]);
    assert!(rows.is_empty());
    assert!(
        !home.path().join("logs.sqlite3").exists(),
        "reading creates nothing"
    );
}
