//! The Anthropic Messages and OpenAI Responses doors with a scripted model: their event
//! streams byte for byte as curl receives them, their error objects and statuses
//! (overloaded is Anthropic's 529 and OpenAI's 429), the key as `x-api-key`, and
//! `count_tokens` agreeing with `usage`.

use h2o_chat_test_support::server::*;

use h2o_chat_engine::Script;
use h2o_chat_server::ServerConfig;
use serde_json::{Value, json};

/// What curl receives for a POST of `body` to `path`.
fn curl(url: &str, path: &str, body: &Value) -> String {
    let output = std::process::Command::new("curl")
        .args([
            "-sN",
            "--noproxy",
            "*",
            "-H",
            "content-type: application/json",
            "-d",
        ])
        .arg(body.to_string())
        .arg(format!("{url}{path}"))
        .output()
        .expect("curl runs (installed by .ci/run)");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// The stream with its ids and times made stable.
fn stable(stream: &str) -> String {
    let mut out = String::new();
    let mut rest = stream;
    while let Some(at) = rest.find(['"']) {
        let (before, after) = rest.split_at(at + 1);
        out.push_str(before);
        rest = after;
        for prefix in ["msg_", "resp_", "toolu_"] {
            if rest.starts_with(prefix) {
                let end = rest.find('"').unwrap_or(rest.len());
                out.push_str(prefix);
                out.push('…');
                rest = &rest[end..];
            }
        }
    }
    out.push_str(rest);
    stable_times(&out)
}

/// `"created_at":<digits>` → `"created_at":0`.
fn stable_times(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("\"created_at\":") {
        let (before, after) = rest.split_at(at + "\"created_at\":".len());
        out.push_str(before);
        out.push('0');
        rest = after.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn anthropic_stream_is_anthropics_events_byte_for_byte() {
    let server = start().await;
    let url = server.url();
    let body = json!({"model": "falcon-7b", "max_tokens": 16, "stream": true,
                      "messages": [{"role": "user", "content": "Hi"}]});
    let stream = tokio::task::spawn_blocking(move || curl(&url, "/v1/messages", &body))
        .await
        .unwrap();
    let expected = concat!(
        "event: message_start\n",
        r#"data: {"type":"message_start","message":{"id":"msg_…","type":"message","role":"assistant","model":"falcon-7b","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":52,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":0}}}"#,
        "\n\nevent: ping\ndata: {\"type\":\"ping\"}\n\n",
        "event: content_block_start\n",
        r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        "\n\nevent: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
        "\n\nevent: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"!"}}"#,
        "\n\nevent: content_block_stop\n",
        r#"data: {"type":"content_block_stop","index":0}"#,
        "\n\nevent: message_delta\n",
        r#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":3}}"#,
        "\n\nevent: message_stop\n",
        r#"data: {"type":"message_stop"}"#,
        "\n\n",
    );
    assert_eq!(stable(&stream), expected);
}

#[tokio::test]
async fn responses_stream_is_openais_events_in_order_with_sequence_numbers() {
    let server = start().await;
    let url = server.url();
    let body = json!({"model": "falcon-7b", "input": "Hi", "stream": true});
    let stream = tokio::task::spawn_blocking(move || curl(&url, "/v1/responses", &body))
        .await
        .unwrap();
    let events: Vec<(&str, Value)> = stream
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            (name.strip_prefix("event: ").unwrap(), data)
        })
        .collect();
    let names: Vec<&str> = events.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], *name);
        assert_eq!(data["sequence_number"], i);
    }
    let done = &events[9].1["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], "Hello!");
    assert_eq!(done["usage"]["output_tokens"], 3);
    assert!(stable(&stream).contains(r#""id":"resp_…""#));
}

#[tokio::test]
async fn each_door_answers_in_its_own_error_shape_and_status() {
    let overloaded = start_with(
        ServerConfig::default(),
        Script {
            capacity: 0,
            ..Script::default()
        },
    )
    .await;
    let client = h2o_chat_test_support::http::client();
    let url = overloaded.url();
    let message = json!({"model": "falcon-7b", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]});
    let response = client
        .post(format!("{url}/v1/messages"))
        .json(&message)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 529);
    let error: Value = response.json().await.unwrap();
    assert_eq!(
        error,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );
    let response = client
        .post(format!("{url}/v1/responses"))
        .json(&json!({"model": "falcon-7b", "input": "Hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert!(response.headers().contains_key("retry-after"));
    // The key as Anthropic's SDK sends it, and Anthropic's 401.
    let guarded = start_with(
        ServerConfig {
            api_key: Some("k".into()),
            ..ServerConfig::default()
        },
        Script::default(),
    )
    .await;
    let url = guarded.url();
    let refused = client
        .post(format!("{url}/v1/messages"))
        .json(&message)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["type"], "authentication_error");
    let answered = client
        .post(format!("{url}/v1/messages"))
        .header("x-api-key", "k")
        .header("anthropic-version", "2023-06-01")
        .json(&message)
        .send()
        .await
        .unwrap();
    assert_eq!(answered.status().as_u16(), 200);
    let answered: Value = answered.json().await.unwrap();
    assert_eq!(answered["content"][0]["text"], "Hello!");
    // count_tokens agrees with what the message used.
    let counted: Value = client
        .post(format!("{url}/v1/messages/count_tokens"))
        .header("x-api-key", "k")
        .json(&json!({"model": "falcon-7b", "messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counted["input_tokens"], answered["usage"]["input_tokens"]);
    // Kept responses are refused by name; none can be read back.
    let stored = client
        .get(format!("{url}/v1/responses/resp_123"))
        .bearer_auth("k")
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status().as_u16(), 404);
}

#[tokio::test]
async fn stop_sequences_are_bounded_whichever_door_sends_them() {
    let server = start().await;
    let client = h2o_chat_test_support::http::client();
    let url = server.url();
    for stops in [
        (0..7).map(|i| format!("s{i}")).collect::<Vec<_>>(),
        vec!["x".repeat(300)],
    ] {
        let response = client
            .post(format!("{url}/v1/messages"))
            .json(
                &json!({"model": "falcon-7b", "max_tokens": 8, "stop_sequences": stops,
                          "messages": [{"role": "user", "content": "Hi"}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400);
        let error: Value = response.json().await.unwrap();
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("`stop`"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn an_empty_answer_is_still_a_message_in_a_streamed_response() {
    let server = start_with(
        ServerConfig::default(),
        Script {
            tokens: Vec::new(),
            ..Script::default()
        },
    )
    .await;
    let url = server.url();
    let body = json!({"model": "falcon-7b", "input": "Hi", "stream": true});
    let stream = tokio::task::spawn_blocking(move || curl(&url, "/v1/responses", &body))
        .await
        .unwrap();
    assert!(
        stream.contains("event: response.output_item.added"),
        "{stream}"
    );
    let last = stream.trim_end().rsplit("\n\n").next().unwrap();
    let done: Value = serde_json::from_str(last.split_once("data: ").unwrap().1).unwrap();
    assert_eq!(done["type"], "response.completed");
    assert_eq!(done["response"]["output"][0]["type"], "message");
    assert_eq!(done["response"]["output"][0]["content"][0]["text"], "");
}
