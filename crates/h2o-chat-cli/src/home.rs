//! The tool's home directory: `$H2O_CHAT_HOME`, else `$XDG_CACHE_HOME/h2o-chat`, else
//! `~/.cache/h2o-chat`.

use std::path::PathBuf;

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
}
