//! Tests of configuration parsing and validation.

use super::*;
use crate::routes::{ClientEventPolicy, JoinPolicy};

#[test]
fn empty_file_gives_the_defaults() {
    let config = Config::parse("", "test").unwrap();
    assert_eq!(config.server.bind.to_string(), "127.0.0.1:4000");
    assert_eq!(config.socket.max_channels, 100);
    assert_eq!(config.routes.len(), 1);
    assert_eq!(config.websocket_path(), "/socket/websocket");
}

#[test]
fn the_documented_example_parses() {
    let text = r#"
        [server]
        bind = "127.0.0.1:4000"
        shards = 2

        [[channel]]
        pattern = "room:forbidden"
        join = "deny"

        [[channel]]
        pattern = "room:*"
        join = "public"
        client_events = "broadcast"
    "#;
    let config = Config::parse(text, "test").unwrap();
    assert_eq!(config.shard_count(), 2);
    let (_, route) = config.routes.find("room:forbidden").unwrap();
    assert_eq!(route.join, JoinPolicy::Deny);
    let (_, route) = config.routes.find("room:lobby").unwrap();
    assert_eq!(route.client_events, ClientEventPolicy::Broadcast);
    assert!(config.routes.find("other").is_none());
}

#[test]
fn an_open_api_is_refused_off_loopback() {
    let err = Config::parse("[server]\nbind = \"0.0.0.0:4000\"\n", "test").unwrap_err();
    assert!(err.to_string().contains("api.api_key"), "{err}");
    let ok = "[server]\nbind = \"0.0.0.0:4000\"\n[api]\napi_key = \"k\"\n";
    assert_eq!(
        Config::parse(ok, "test").unwrap().api.api_key.as_deref(),
        Some("k")
    );
    let err = Config::parse("[api]\napi_key = \" \"\n", "test").unwrap_err();
    assert!(err.to_string().contains("api.api_key"), "{err}");
}

#[test]
fn errors_name_the_key() {
    let err = Config::parse("[server]\nshards = 0\n", "test").unwrap_err();
    assert!(err.to_string().contains("server.shards"), "{err}");
    let err = Config::parse("[socket]\npath = \"socket\"\n", "test").unwrap_err();
    assert!(err.to_string().contains("socket.path"), "{err}");
    let err = Config::parse(
        "[[channel]]\npattern = \"a*b\"\njoin = \"public\"\n",
        "test",
    )
    .unwrap_err();
    assert!(err.to_string().contains("channel[0].pattern"), "{err}");
    let err = Config::parse("[server]\nbnd = 1\n", "test").unwrap_err();
    assert!(err.to_string().contains("bnd"), "{err}");
    let err =
        Config::parse("[[channel]]\npattern = \"x\"\njoin = \"maybe\"\n", "test").unwrap_err();
    assert!(err.to_string().contains("maybe"), "{err}");
}

#[test]
fn the_cluster_section_is_checked_and_needs_a_shared_long_poll_secret() {
    let cluster = "[cluster]\nredis = \"redis://127.0.0.1:6390\"\n";
    let err = Config::parse(cluster, "test").unwrap_err();
    assert!(err.to_string().contains("socket.longpoll.secret"), "{err}");
    let ok = format!("{cluster}[socket.longpoll]\nsecret = \"shared by all nodes\"\n");
    let config = Config::parse(&ok, "test").unwrap();
    assert!(config.cluster.enabled());
    assert_eq!(config.cluster.namespace, "cinder");
    let no_longpoll = format!("{cluster}[socket.longpoll]\nenabled = false\n");
    assert!(Config::parse(&no_longpoll, "test").is_ok());
    for (bad, key) in [
        ("redis = \"http://x\"", "cluster.redis"),
        ("redis = \"rediss://x\"", "cluster.redis"),
        (
            "redis = \"redis://x\"\nheartbeat_ms = 10",
            "cluster.heartbeat_ms",
        ),
        (
            "redis = \"redis://x\"\nheartbeat_ms = 1000\nnode_timeout_ms = 1000",
            "cluster.node_timeout_ms",
        ),
        (
            "redis = \"redis://x\"\nnamespace = \"a b\"",
            "cluster.namespace",
        ),
        ("redis = \"redis://x\"\nnodes = 3", "nodes"),
    ] {
        let text = format!("[cluster]\n{bad}\n[socket.longpoll]\nsecret = \"s\"\n");
        let err = Config::parse(&text, "test").unwrap_err();
        assert!(err.to_string().contains(key), "{bad}: {err}");
    }
    // Without `redis` the section changes nothing.
    assert!(!Config::parse("[cluster]\nnamespace = \"x\"\n", "test")
        .unwrap()
        .cluster
        .enabled());
}
