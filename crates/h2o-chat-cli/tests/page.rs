//! The web page in a real browser: `tests/page/test_page.py` drives Debian's headless
//! Chromium with Selenium against `h2o-chat serve` processes on loopback (the real local
//! model, SQLite conversations). Screenshots of the main states are kept in
//! `target/page-screenshots/`.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_web_page_works_in_a_real_browser() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let screenshots = dir.join("../../target/page-screenshots");
    let output = Command::new("python3")
        .arg(dir.join("tests/page/test_page.py"))
        .env("H2O_CHAT_BIN", assert_cmd::cargo::cargo_bin("h2o-chat"))
        .env(
            "H2O_CHAT_TEST_GGUF",
            h2o_chat_test_support::model::local_gguf(),
        )
        .env("SCREENSHOTS", &screenshots)
        .env_remove("H2O_CHAT_URL")
        .env("NO_PROXY", "*")
        .output()
        .expect("python3 runs (selenium and chromium are installed by .ci/run)");
    let report = String::from_utf8_lossy(&output.stderr);
    println!("{report}");
    assert!(
        output.status.success(),
        "the browser tests failed:\n{report}"
    );
    assert!(
        !report.contains("skipped"),
        "a skipped browser test is not a pass:\n{report}"
    );
}
