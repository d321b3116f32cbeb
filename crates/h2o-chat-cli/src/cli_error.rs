//! How the tool fails: one type for every command, each with its exit code (see `--help`).

use h2o_chat::{Error, ErrorKind};

/// A failure the tool reports on stderr before exiting with [`CliError::code`].
#[derive(Debug)]
pub enum CliError {
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

impl CliError {
    pub fn code(&self) -> i32 {
        match self {
            CliError::Provider(err) => match err.kind() {
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
            CliError::Model(_) => 12,
            CliError::Usage(_) => 2,
            CliError::Other(_) => 1,
            CliError::Batch { .. } => 20,
            CliError::Interrupted => 130,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Provider(err) => write!(f, "{err}"),
            CliError::Model(message) => write!(f, "local model unavailable: {message}"),
            CliError::Usage(message) | CliError::Other(message) => f.write_str(message),
            CliError::Batch { failed, total } => write!(
                f,
                "{failed} of {total} prompts failed (see their `error` fields)"
            ),
            CliError::Interrupted => f.write_str("interrupted"),
        }
    }
}

impl From<Error> for CliError {
    fn from(err: Error) -> Self {
        CliError::Provider(err)
    }
}

impl From<std::io::Error> for CliError {
    fn from(err: std::io::Error) -> Self {
        CliError::Other(format!("I/O error: {err}"))
    }
}
