//! The interactive chat on a real terminal (tmux): two turns keep their context, Ctrl-C
//! stops a reply — deleting its conversation — without leaving the chat, and the typed lines
//! and the logged turns outlive the session.

use h2o_chat_test_support::chat_ui_double as support;

use std::process::Command;
use std::time::{Duration, Instant};

use axum::http::Method;
use support::{Chunk, Reply, TestServer, token_event};

struct Tmux {
    session: String,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        let session = format!("h2o-chat-test-{}-{}", std::process::id(), rand_suffix());
        let status = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-x",
                "200",
                "-y",
                "50",
                "-s",
                &session,
                command,
            ])
            .status()
            .expect("tmux is installed (.ci/run installs it)");
        assert!(status.success());
        Tmux { session }
    }

    fn send(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.session];
        args.extend_from_slice(keys);
        assert!(Command::new("tmux").args(&args).status().unwrap().success());
    }

    fn screen(&self) -> String {
        let output = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn wait_for(&self, what: &str, count: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen();
            if screen.matches(what).count() >= count {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "waited for {count}× {what:?}; screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.session])
            .status();
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn binary() -> String {
    assert_cmd::cargo::cargo_bin("h2o-chat")
        .display()
        .to_string()
}

#[test]
fn two_turns_keep_the_conversation() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(TestServer::start());
    let home = tempfile::tempdir().unwrap();
    let tmux = Tmux::start(&format!(
        "NO_PROXY='*' H2O_CHAT_HOME={} {} --url {} chat",
        home.path().display(),
        binary(),
        server.url
    ));
    tmux.wait_for(">>>", 1);
    tmux.send(&["What is 2+2?", "Enter"]);
    tmux.wait_for(">>>", 2);
    tmux.send(&["And 3+3?", "Enter"]);
    tmux.wait_for(">>>", 3);
    let bodies: Vec<serde_json::Value> = server
        .requests_to(Method::POST, "/conversation/")
        .iter()
        .map(|r| r.json())
        .collect();
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0]["inputs"], "What is 2+2?");
    assert_eq!(
        bodies[1]["inputs"],
        "User: What is 2+2?\nAssistant: Hello!\nUser: And 3+3?\nAssistant:"
    );
    tmux.send(&["C-d"]);
}

#[test]
fn ctrl_c_stops_the_reply_deletes_its_conversation_and_stays() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(TestServer::start());
    let home = tempfile::tempdir().unwrap();
    let mut slow = Vec::new();
    for i in 0..600 {
        slow.push(Chunk::Bytes(token_event(i, "la ", false).into_bytes()));
        slow.push(Chunk::Sleep(Duration::from_millis(50)));
    }
    server.script_generate(Reply::Stream("text/event-stream", slow));
    let tmux = Tmux::start(&format!(
        "NO_PROXY='*' H2O_CHAT_HOME={} {} --url {} chat",
        home.path().display(),
        binary(),
        server.url
    ));
    tmux.wait_for(">>>", 1);
    tmux.send(&["Sing", "Enter"]);
    tmux.wait_for("la la la", 1);
    tmux.send(&["C-c"]);
    tmux.wait_for("(stopped)", 1);
    tmux.wait_for(">>>", 2);
    // The stopped reply's conversation is deleted (the test server's own event).
    runtime.block_on(server.until_conversations(0));
    // Still in the chat: the next question is answered.
    tmux.send(&["Hi", "Enter"]);
    tmux.wait_for("Hello!", 1);
    tmux.send(&["C-d"]);
}

#[test]
fn typed_lines_and_logged_turns_outlive_the_session() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(TestServer::start());
    let home = tempfile::tempdir().unwrap();
    let command = |extra: &str| {
        format!(
            "NO_PROXY='*' H2O_CHAT_HOME={} {} --url {} chat {extra}",
            home.path().display(),
            binary(),
            server.url
        )
    };
    let tmux = Tmux::start(&command(""));
    tmux.wait_for(">>>", 1);
    tmux.send(&["Remember the number 42.", "Enter"]);
    tmux.wait_for(">>>", 2);
    tmux.send(&["C-d"]);
    drop(tmux);

    // A new session: the arrow key brings back the line typed in the last one, and `-c`
    // sends the logged turn as context.
    let tmux = Tmux::start(&command("-c"));
    tmux.wait_for(">>>", 1);
    tmux.send(&["Up"]);
    tmux.wait_for("Remember the number 42.", 1);
    tmux.send(&["C-u", "Which number?", "Enter"]);
    tmux.wait_for(">>>", 2);
    let bodies: Vec<serde_json::Value> = server
        .requests_to(Method::POST, "/conversation/")
        .iter()
        .map(|r| r.json())
        .collect();
    assert_eq!(bodies.len(), 2);
    assert_eq!(
        bodies[1]["inputs"],
        "User: Remember the number 42.\nAssistant: Hello!\nUser: Which number?\nAssistant:"
    );
    tmux.send(&["C-d"]);
}
