//! Seed 000, example 2: a proxy and an extra parameter (`temperature=0.7`).
//!
//! `cargo run -p h2o-chat --example proxy_temperature -- URL PROXY`
//! e.g. `... -- http://127.0.0.1:8080 socks5://127.0.0.1:1080`.

use std::io::Write;

use futures_util::StreamExt;
use h2o_chat::{H2o, Message, Parameters};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(proxy)) = (args.next(), args.next()) else {
        eprintln!("usage: proxy_temperature URL PROXY   (PROXY: http://, https:// or socks5://)");
        std::process::exit(2);
    };
    let h2o = H2o::new(url)?;
    let mut tokens = h2o
        .create_async_generator(
            "h2oai/h2ogpt-gm-oasst1-en-2048-falcon-40b-v1",
            &[Message::user("Tell me a joke.")],
            Some(&proxy),
            Parameters::empty().temperature(0.7),
        )
        .await?;
    while let Some(token) = tokens.next().await {
        print!("{}", token?);
        std::io::stdout().flush()?;
    }
    println!();
    h2o.wait_for_cleanup().await;
    Ok(())
}
