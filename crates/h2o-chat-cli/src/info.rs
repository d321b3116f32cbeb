//! `h2o-chat models` and `h2o-chat params`: what the provider knows, without a server.

use h2o_chat::{legacy, models, params};
use h2o_chat_server::{LOCAL_ALIAS, LOCAL_MODEL_ID};

/// The built-in ids, then the GGUFs `--gguf` names (as `serve` would offer them, each
/// loaded on its first request).
pub fn models(files: &crate::catalog::Files) {
    println!("{:<48} {:<11} served locally by", "id", "alias");
    for model in models::MODELS {
        let default = if model.id == models::DEFAULT_MODEL {
            " (default)"
        } else {
            ""
        };
        println!(
            "{:<48} {:<11} {LOCAL_MODEL_ID} — stand-in{default}",
            model.id, model.alias
        );
    }
    match &files.default {
        Some(path) => println!(
            "{LOCAL_MODEL_ID:<48} {LOCAL_ALIAS:<11} {} (llama.cpp)",
            path.display()
        ),
        None => println!(
            "{LOCAL_MODEL_ID:<48} {LOCAL_ALIAS:<11} {LOCAL_MODEL_ID} (GGUF Q4_1, llama.cpp)"
        ),
    }
    for (name, path) in &files.named {
        println!(
            "{name:<48} {:<11} {} (llama.cpp, loaded on its first request by `serve`)",
            "",
            path.display()
        );
    }
    println!();
    println!(
        "With --url, the server decides which ids it serves; aliases are mapped to ids locally."
    );
}

pub fn params() {
    println!("{}", legacy::params());
    println!();
    println!("{:<20} {:<16} meaning", "parameter", "type");
    for (name, kind, meaning) in params::KNOWN {
        println!("{name:<20} {kind:<16} {meaning}");
    }
    println!();
    println!("Any other key can be sent with -p KEY=VALUE; servers ignore keys they do not know.");
}
