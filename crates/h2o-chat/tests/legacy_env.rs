//! The legacy free function reads `$H2O_CHAT_URL`. Setting a variable is only sound while no
//! other thread reads the environment, so this test has its own binary (its own process)
//! and is its only test.

use h2o_chat_test_support::chat_ui_double as support;

use h2o_chat::Message;
use h2o_chat::legacy::{self, LegacyParams};
use support::TestServer;

#[test]
fn legacy_free_function_reads_the_url_from_the_environment() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(TestServer::start());
    // SAFETY: the only test of this process, before any other thread reads the environment
    // (the runtime's threads do not).
    unsafe { std::env::set_var("H2O_CHAT_URL", &server.url) };
    let text = legacy::create_completion(
        "falcon-40b",
        &[Message::user("Translate to French: Hello, how are you?")],
        false,
        LegacyParams::default(),
    )
    .unwrap()
    .into_text()
    .unwrap();
    assert_eq!(text, "Hello!");
}
