//! The fuzz target over the TOML configuration.

use super::*;

/// Configuration parsing: the input as TOML text.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let table = toml::from_str::<toml::Table>(text).ok();
    if !key_file_is_harmless(table.as_ref()) {
        return;
    }
    let verdict = check_config(text);
    // The same values written out by the TOML library (keys sorted,
    // formatting normalised) must get the same verdict.
    if let Some(normalised) = table.and_then(|t| toml::to_string(&t).ok()) {
        let again = check_config(&normalised);
        assert_eq!(
            verdict, again,
            "the config's verdict changed with its formatting:\n{text}\n---\n{normalised}"
        );
    }
}

/// A config's verdict: accepted with its routes, or the error's kind and
/// the key it names.
#[derive(Debug, PartialEq)]
enum ConfigVerdict {
    Accepted(Routes),
    Syntax,
    Invalid(String),
    Read,
}

fn check_config(text: &str) -> ConfigVerdict {
    match Config::parse(text, "fuzz.toml") {
        Ok(config) => {
            if let Err(e) = config.validate() {
                panic!("an accepted config fails validation: {e}\n{text}");
            }
            assert!(
                !config.routes.is_empty(),
                "an accepted config without routes"
            );
            assert!(
                config.shard_count() >= 1 && config.server.shards.is_none_or(|n| n <= 1024),
                "shards out of range"
            );
            for (path, suffix) in [
                (config.websocket_path(), "/websocket"),
                (config.longpoll_path(), "/longpoll"),
            ] {
                assert!(
                    path.starts_with('/') && path.ends_with(suffix) && !path.starts_with("//"),
                    "endpoint path {path:?}"
                );
            }
            assert!(config.socket.send_buffer_max >= config.socket.send_buffer_limit);
            assert!(config.socket.websocket || config.socket.longpoll.enabled);
            ConfigVerdict::Accepted(config.routes)
        }
        Err(error) => {
            assert!(!error.to_string().is_empty());
            match error {
                ConfigError::Syntax { .. } => ConfigVerdict::Syntax,
                ConfigError::Invalid { key, problem } => {
                    assert!(
                        !key.is_empty() && !problem.is_empty(),
                        "an error naming nothing"
                    );
                    ConfigVerdict::Invalid(key)
                }
                ConfigError::Read { .. } => ConfigVerdict::Read,
            }
        }
    }
}

/// `socket.auth.public_key_file` is read at parse time: only small regular
/// files outside `/proc`, `/sys` and `/dev` are worth reading (a FIFO would
/// block, `/dev/zero` never ends).
fn key_file_is_harmless(table: Option<&toml::Table>) -> bool {
    let Some(path) = table
        .and_then(|t| t.get("socket"))
        .and_then(|s| s.get("auth"))
        .and_then(|a| a.get("public_key_file"))
    else {
        return true;
    };
    let Some(path) = path.as_str() else {
        return true;
    };
    let Ok(real) = std::fs::canonicalize(path) else {
        return !std::path::Path::new(path).exists();
    };
    let special = ["/proc", "/sys", "/dev"]
        .iter()
        .any(|p| real.starts_with(p));
    !special
        && std::fs::metadata(&real).is_ok_and(|m| m.is_file() && m.len() > 0 && m.len() <= 65536)
}
