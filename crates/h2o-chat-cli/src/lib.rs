//! The `h2o-chat` tool's home: where it keeps the local model, the log of exchanges, the
//! line history and `serve`'s conversations. (The tool itself is the `h2o-chat` binary.)
//!
//! ```
//! let dir = h2o_chat_cli::home::dir();
//! assert!(dir.is_absolute() || dir.starts_with("."));
//! ```

pub mod home;
