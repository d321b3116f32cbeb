//! Seed 000, example 1: stream an answer with the minimal parameters.
//!
//! `cargo run -p h2o-chat --example stream -- [URL] [QUESTION]`
//! (URL defaults to `$H2O_CHAT_URL`, then to `http://127.0.0.1:8080`, e.g. `h2o-chat serve`).

use std::io::Write;

use futures_util::StreamExt;
use h2o_chat::{H2o, Message, Parameters};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .or_else(|| std::env::var("H2O_CHAT_URL").ok())
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let question = args.next().unwrap_or_else(|| "Hello, how are you?".into());

    let h2o = H2o::builder().url(url).build()?;
    let mut tokens = h2o
        .create_async_generator(
            "h2oai/h2ogpt-gm-oasst1-en-2048-falcon-40b-v1",
            &[Message::user(question)],
            None,
            Parameters::empty(),
        )
        .await?;
    let mut stdout = std::io::stdout();
    while let Some(token) = tokens.next().await {
        write!(stdout, "{}", token?)?;
        stdout.flush()?;
    }
    writeln!(stdout)?;
    h2o.wait_for_cleanup().await;
    Ok(())
}
