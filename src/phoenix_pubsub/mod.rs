//! Phoenix PubSub's Redis format, sans I/O: what a Phoenix application
//! using `phoenix_pubsub_redis` (3.x) publishes, read as Cinder broadcasts,
//! and Cinder's broadcasts written as such a Phoenix node would publish
//! them.
//!
//! Every Phoenix node publishes every broadcast to one Redis channel,
//! [`channel_name`], as an Erlang term (`term_to_binary/2`):
//! `{3, Mode, NodeName, Topic, Message, Dispatcher}`. A bridge subscribes
//! to that channel and calls [`classify`] once per message: it returns a
//! broadcast for this node's subscribers ([`Incoming`]: topic, event and a
//! JSON object's text or binary bytes, all owned) or why the message is not
//! one ([`Ignored`], with a stable label for metrics). The other way,
//! [`encode()`] writes the bytes to `PUBLISH` for a broadcast made on Cinder,
//! marked `except` this node so its own echo is recognised.
//!
//! | file | what it does |
//! | --- | --- |
//! | `term.rs` | a bounded reader of the external term format (the subset the adapter sends, compressed or not) |
//! | `json.rs` | a decoded payload as the JSON Phoenix's encoder (Jason) would write, or why it could not |
//! | `message.rs` | [`classify`]: the adapter's envelope, its routing (`except`/`only`), dispatcher and broadcast struct |
//! | `encode.rs` | [`encode()`]: a Cinder broadcast as the adapter's term, optionally compressed |
//! | [`config`] | `[phoenix_pubsub]` |
//! | [`bridge`] | the bridge thread: the app's channel on Redis, read and written; the shards' handle |
//! | [`status`] | `/healthz` and `/metrics` of the bridge |
//! | `*_tests.rs` | each file's tests: the shared fixtures, and terms made and read by Erlang/OTP (`erl`, which they require) |
//!
//! The codec (`term`, `json`, `message`, `encode`) opens no connection and
//! reads no configuration: the Redis side (subscribing, publishing,
//! counting the [`Ignored`] labels) is the bridge thread's, which calls it
//! once per message, off the shards.

pub mod bridge;
pub mod config;
pub mod encode;
pub mod json;
pub mod message;
pub mod status;
pub mod term;

/// The tags of the external term format: what `term.rs` reads and
/// `encode.rs` writes.
pub(crate) mod tag {
    pub const VERSION: u8 = 131;
    pub const COMPRESSED: u8 = 80;
    pub const NEW_FLOAT: u8 = 70;
    pub const BIT_BINARY: u8 = 77;
    pub const SMALL_INTEGER: u8 = 97;
    pub const INTEGER: u8 = 98;
    pub const FLOAT: u8 = 99;
    pub const ATOM: u8 = 100;
    pub const SMALL_ATOM: u8 = 115;
    pub const ATOM_UTF8: u8 = 118;
    pub const SMALL_ATOM_UTF8: u8 = 119;
    pub const REFERENCE: u8 = 101;
    pub const NEW_REFERENCE: u8 = 114;
    pub const NEWER_REFERENCE: u8 = 90;
    pub const PORT: u8 = 102;
    pub const NEW_PORT: u8 = 89;
    pub const V4_PORT: u8 = 120;
    pub const PID: u8 = 103;
    pub const NEW_PID: u8 = 88;
    pub const SMALL_TUPLE: u8 = 104;
    pub const LARGE_TUPLE: u8 = 105;
    pub const NIL: u8 = 106;
    pub const STRING: u8 = 107;
    pub const LIST: u8 = 108;
    pub const BINARY: u8 = 109;
    pub const SMALL_BIG: u8 = 110;
    pub const LARGE_BIG: u8 = 111;
    pub const NEW_FUN: u8 = 112;
    pub const EXPORT: u8 = 113;
    pub const MAP: u8 = 116;
    pub const FUN: u8 = 117;
    pub const ATOM_CACHE_REF: u8 = 82;
    pub const LOCAL: u8 = 121;
}

pub use encode::{encode, CompressionLevel, EncodeError};
pub use message::{classify, Ignored, Incoming};

/// The Redis channel of a Phoenix PubSub named `pubsub_name` (as written in
/// Elixir, `MyApp.PubSub`, or as its atom's text, `Elixir.MyApp.PubSub`).
///
/// The adapter uses `"phx:#{adapter_name}"`, where Phoenix.PubSub names the
/// adapter `Module.concat(name, "Adapter")`. `Module.concat` gives every
/// name the `Elixir.` prefix unless it already has it, so a plain atom
/// name (`:my_pubsub`) becomes `phx:Elixir.my_pubsub.Adapter` too.
pub fn channel_name(pubsub_name: &str) -> String {
    let name = if pubsub_name == "Elixir" || pubsub_name.starts_with("Elixir.") {
        pubsub_name.to_owned()
    } else {
        // A leading dot is dropped when a part is joined on.
        let part = pubsub_name.strip_prefix('.').unwrap_or(pubsub_name);
        format!("Elixir.{part}")
    };
    format!("phx:{name}.Adapter")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_follow_module_concat() {
        // The fixtures' application, `Peer.PubSub`, used exactly this one.
        assert_eq!(
            channel_name("Peer.PubSub"),
            "phx:Elixir.Peer.PubSub.Adapter"
        );
        assert_eq!(
            channel_name("MyApp.PubSub"),
            "phx:Elixir.MyApp.PubSub.Adapter"
        );
        assert_eq!(
            channel_name("Elixir.MyApp.PubSub"),
            "phx:Elixir.MyApp.PubSub.Adapter"
        );
        assert_eq!(channel_name("my_pubsub"), "phx:Elixir.my_pubsub.Adapter");
    }
}

/// What the tests of this module share: the fixtures and a way to ask
/// Erlang/OTP itself.
#[cfg(test)]
pub(crate) mod testkit {
    use std::path::PathBuf;
    use std::process::Command;

    /// The name this node has in the tests (the fixtures' README uses it).
    pub const NODE: &str = "cinder-1";

    /// The fixtures folder (real messages of a Phoenix app, copied into
    /// the repository with their README); panics, saying so, if missing.
    pub fn fixtures_dir() -> PathBuf {
        let dir =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/phoenix-pubsub-redis");
        assert!(
            dir.is_dir(),
            "the Phoenix PubSub fixtures are missing: expected them in {}",
            dir.display()
        );
        dir
    }

    /// One fixture's bytes, by its path under the fixtures folder without
    /// `.bin` (`captured/http-broadcast`).
    pub fn fixture(name: &str) -> Vec<u8> {
        let path = fixtures_dir().join(format!("{name}.bin"));
        std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
    }

    /// Every fixture: its name (as [`fixture`] takes it) and bytes.
    pub fn all_fixtures() -> Vec<(String, Vec<u8>)> {
        let mut all = Vec::new();
        for folder in ["captured", "generated"] {
            let dir = fixtures_dir().join(folder);
            let entries =
                std::fs::read_dir(&dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display()));
            for entry in entries {
                let path = entry.expect("a fixture entry").path();
                let Some(stem) = path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                if let Some(stem) = stem.strip_suffix(".bin") {
                    let name = format!("{folder}/{stem}");
                    all.push((name.clone(), fixture(&name)));
                }
            }
        }
        all.sort();
        all
    }

    /// Runs Erlang expressions (a sequence ending without a full stop) in
    /// a fresh `erl` and returns what they print. Panics if `erl` is not
    /// installed, or the code fails.
    pub fn erl(code: &str) -> String {
        let program = format!(
            "try\n{code}\ncatch C:R:S -> io:format(standard_error, \"~p~n\", [{{C, R, S}}]), \
             halt(3) end, halt(0)."
        );
        let output = Command::new("erl")
            .args(["-noshell", "-eval", &program, "-s", "init", "stop"])
            // A failed boot would otherwise leave an erl_crash.dump behind.
            .env("ERL_CRASH_DUMP_SECONDS", "0")
            .output()
            .unwrap_or_else(|err| {
                panic!("these tests need Erlang/OTP's `erl` on the PATH, and it failed to start: {err}")
            });
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "erl failed ({}) on:\n{code}\nstdout: {stdout}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// `term_to_binary(Expr, Options)` computed by `erl`.
    pub fn erl_term_to_binary(expr: &str, options: &str) -> Vec<u8> {
        let out = erl(&format!(
            "io:format(\"~w\", [binary_to_list(term_to_binary({expr}, {options}))])"
        ));
        parse_byte_list(&out)
    }

    /// `term_to_binary(Expr, Options)` of each expression, from one `erl`.
    pub fn erl_terms_to_binary<S: AsRef<str>>(exprs: &[S], options: &str) -> Vec<Vec<u8>> {
        let code: Vec<String> = exprs
            .iter()
            .map(|expr| {
                format!(
                    "io:format(\"~w~n\", [binary_to_list(term_to_binary({}, {options}))])",
                    expr.as_ref()
                )
            })
            .collect();
        let out = erl(&code.join(", "));
        let terms: Vec<Vec<u8>> = out.lines().map(parse_byte_list).collect();
        assert_eq!(terms.len(), exprs.len(), "one line per term:\n{out}");
        terms
    }

    /// Parses Erlang's `~w` of a list of bytes: `[131,104,...]`.
    pub fn parse_byte_list(text: &str) -> Vec<u8> {
        let text = text.trim().trim_start_matches('[').trim_end_matches(']');
        if text.is_empty() {
            return Vec::new();
        }
        text.split(',')
            .map(|b| {
                b.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("not a byte: {b:?}"))
            })
            .collect()
    }

    /// Bytes as an Erlang binary literal.
    pub fn erl_binary(bytes: &[u8]) -> String {
        let list: Vec<String> = bytes.iter().map(u8::to_string).collect();
        format!("<<{}>>", list.join(","))
    }
}
