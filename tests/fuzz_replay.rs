//! Replays the committed fuzz corpora on stable: every file under
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` goes through the
//! same function its `cargo fuzz` target calls (`cinder::fuzzing::<target>`),
//! so an input that once passed and now breaks an invariant fails the
//! ordinary `cargo test`, no nightly toolchain needed. Fuzzing itself (which
//! grows the corpora) is described in `fuzz/README.md`.

use std::panic;
use std::path::{Path, PathBuf};

/// Runs every input of `target` through `body`; fails listing each input
/// that panicked (the panic messages are printed above).
fn replay(target: &str, body: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs: Vec<PathBuf> = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("a readable directory").path();
            if path.is_file() {
                inputs.push(path);
            }
        }
    }
    inputs.sort();
    assert!(
        !inputs.is_empty(),
        "no committed corpus for {target} under {}",
        fuzz.display()
    );
    let failed: Vec<String> = inputs
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).expect("a readable input");
            panic::catch_unwind(|| body(&data)).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} {target} inputs broke an invariant:\n{}",
        failed.len(),
        inputs.len(),
        failed.join("\n")
    );
}

#[test]
fn http_request() {
    replay("http_request", cinder::fuzzing::http_request);
}

#[test]
fn ws_frames() {
    replay("ws_frames", cinder::fuzzing::ws_frames);
}

#[test]
fn client_message() {
    replay("client_message", cinder::fuzzing::client_message);
}

#[test]
fn channels() {
    replay("channels", cinder::fuzzing::channels);
}

#[test]
fn longpoll() {
    replay("longpoll", cinder::fuzzing::longpoll);
}

#[test]
fn cluster_envelope() {
    replay("cluster_envelope", cinder::fuzzing::cluster_envelope);
}

#[test]
fn config() {
    replay("config", cinder::fuzzing::config);
}

#[test]
fn phoenix_term() {
    replay("phoenix_term", cinder::fuzzing::phoenix_term);
}
