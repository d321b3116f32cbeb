//! The official clients' own test scripts (Python: `openai`, `anthropic`, `text-generation`,
//! installed by `.ci/run`), run against a loopback server. Each script exits non-zero on any
//! mismatch and prints what it saw as one JSON line last, for the Rust test to check too.

use serde_json::Value;

/// Runs `dir/script` with `args`; what it saw (its last line, as JSON). Panics with the
/// script's output when it fails.
pub async fn run(dir: &str, script: &str, args: &[&str]) -> Value {
    let script = format!("{dir}/{script}");
    let output = tokio::process::Command::new("python3")
        .arg(&script)
        .args(args)
        .env("NO_PROXY", "*")
        .output()
        .await
        .expect("python3 runs (installed by .ci/run)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{script} printed {last:?}: {e}"))
}
