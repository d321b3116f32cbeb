//! Seed 001's examples: the blocking `create_completion` with each alias.
//!
//! `cargo run -p h2o-chat --example legacy -- [URL]`

use std::io::Write;

use h2o_chat::Message;
use h2o_chat::legacy::{self, Legacy, LegacyParams};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("H2O_CHAT_URL").ok())
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let provider = Legacy::new(&url)?;
    println!("{}", legacy::params());

    // falcon-7b, streaming, with a short history and overridden parameters.
    let messages = [
        Message::user("Напиши короткое стихотворение о весне."),
        Message::assistant("Весна пришла, природа оживает,\nСолнце светит, птички поют."),
    ];
    let params = LegacyParams {
        temperature: Some(0.5),
        max_new_tokens: Some(50),
        ..Default::default()
    };
    println!("\n[falcon-7b]");
    for token in provider.create_completion("falcon-7b", &messages, true, params)? {
        print!("{}", token?);
        std::io::stdout().flush()?;
    }

    // llama-13b, streaming.
    let params = LegacyParams {
        max_new_tokens: Some(200),
        ..Default::default()
    };
    println!("\n[llama-13b]");
    for token in provider.create_completion(
        "llama-13b",
        &[Message::user("Расскажи о себе.")],
        true,
        params,
    )? {
        print!("{}", token?);
        std::io::stdout().flush()?;
    }

    // falcon-40b, the whole text at once.
    println!("\n[falcon-40b]");
    let text = provider
        .create_completion(
            "falcon-40b",
            &[Message::user("Translate to French: Hello, how are you?")],
            false,
            LegacyParams::default(),
        )?
        .into_text()?;
    println!("{text}");
    Ok(())
}
