//! The tool's home directory: `$H2O_CHAT_HOME`, else `$XDG_CACHE_HOME/h2o-chat`, else
//! `~/.cache/h2o-chat`. What the tool keeps there — the log of exchanges, the line history,
//! `serve`'s conversations — is other people's business on a shared machine: the directory
//! is created owner-only (`0700`), and the files in it `0600`.

use std::io;
use std::path::{Path, PathBuf};

/// See the module docs.
pub fn dir() -> PathBuf {
    if let Some(home) = std::env::var_os("H2O_CHAT_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home);
    }
    if let Some(cache) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(cache).join("h2o-chat");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".cache").join("h2o-chat");
    }
    std::env::temp_dir().join("h2o-chat")
}

/// Creates `dir` (and its parents) owner-only if it does not exist.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// The home, created owner-only if it does not exist.
pub fn create() -> io::Result<PathBuf> {
    let home = dir();
    create_private_dir(&home)?;
    Ok(home)
}

/// Creates `path` empty and owner-only if it does not exist (a file another program then
/// writes keeps that mode).
pub fn create_private_file(path: &Path) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_home_honours_h2o_chat_home() {
        // Read-only check of the rule with the variable as the process has it.
        let home = dir();
        if let Some(set) = std::env::var_os("H2O_CHAT_HOME").filter(|v| !v.is_empty()) {
            assert_eq!(home, PathBuf::from(set));
        } else {
            assert!(home.ends_with("h2o-chat"));
        }
    }

    #[cfg(unix)]
    #[test]
    fn what_the_tool_creates_is_its_owner_s_only() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let home = base.path().join("a/b/h2o-chat");
        create_private_dir(&home).unwrap();
        let file = home.join("history.txt");
        create_private_file(&file).unwrap();
        create_private_file(&file).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&home), 0o700);
        assert_eq!(mode(&file), 0o600);
    }
}
