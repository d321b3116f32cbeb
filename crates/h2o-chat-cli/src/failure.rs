//! How the tool fails: one type for every command, each with its exit code (see `--help`).

use h2o_chat::{Error, ErrorKind};

/// A failure the tool reports on stderr before exiting with [`Failure::code`].
#[derive(Debug)]
pub enum Failure {
    /// From the provider library.
    Provider(Error),
    /// The local model could not be fetched or loaded.
    Model(String),
    /// A bad argument or input.
    Usage(String),
    /// Anything else (I/O on stdout, …).
    Other(String),
    /// Some batch items failed; the others were written.
    Batch { failed: usize, total: usize },
    /// Ctrl-C.
    Interrupted,
}

impl Failure {
    pub fn code(&self) -> i32 {
        match self {
            Failure::Provider(err) => match err.kind() {
                ErrorKind::Transport => 3,
                ErrorKind::Http => 4,
                ErrorKind::RateLimited => 5,
                ErrorKind::Session => 6,
                ErrorKind::Stream => 7,
                ErrorKind::Incomplete => 8,
                ErrorKind::Protocol => 9,
                ErrorKind::Timeout => 10,
                ErrorKind::TooLarge => 11,
                ErrorKind::Usage => 2,
            },
            Failure::Model(_) => 12,
            Failure::Usage(_) => 2,
            Failure::Other(_) => 1,
            Failure::Batch { .. } => 20,
            Failure::Interrupted => 130,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Provider(err) => write!(f, "{err}"),
            Failure::Model(message) => write!(f, "local model unavailable: {message}"),
            Failure::Usage(message) | Failure::Other(message) => f.write_str(message),
            Failure::Batch { failed, total } => write!(
                f,
                "{failed} of {total} prompts failed (see their `error` fields)"
            ),
            Failure::Interrupted => f.write_str("interrupted"),
        }
    }
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        Failure::Provider(err)
    }
}

impl From<std::io::Error> for Failure {
    fn from(err: std::io::Error) -> Self {
        Failure::Other(format!("I/O error: {err}"))
    }
}
