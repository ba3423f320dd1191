//! Rate limits over real sockets: client events per connection and accepts
//! per shard.

mod common;

use common::{Client, TestServer};

#[test]
fn events_over_the_rate_get_errors_and_sustained_excess_closes_1008() {
    let server =
        TestServer::start("[socket]\nclient_events_per_second = 10\nclient_events_burst = 5\n");
    let mut client = Client::connect(&server.ws_url(Some("2.0.0")));
    client.join("quiet:1", "j");
    // A burst of 5 is allowed (the route denies the events, but they count).
    for i in 0..5 {
        client.send(&format!(r#"["j","{i}","quiet:1","ping",{{}}]"#));
        let reply = client.recv_json();
        assert_eq!(reply[4]["response"]["reason"], "unhandled event", "{reply}");
    }
    client.send(r#"["j","x","quiet:1","ping",{}]"#);
    let reply = client.recv_json();
    assert_eq!(reply[0], "j", "{reply}");
    assert_eq!(reply[4]["response"]["reason"], "rate limited", "{reply}");
    // Heartbeats are never limited.
    client.send(r#"[null,"hb","phoenix","heartbeat",{}]"#);
    assert_eq!(client.recv_json()[4]["status"], "ok");
    // Ignoring the refusals: closed with 1008.
    for i in 0..40 {
        client.send(&format!(r#"["j","y{i}","quiet:1","ping",{{}}]"#));
    }
    assert_eq!(client.expect_close(), 1008);
    assert!(server.metric("cinder_client_events_rate_limited_total") >= 10);
    // Others are unaffected.
    Client::connect(&server.ws_url(Some("2.0.0"))).join("room:1", "1");
}

#[test]
fn the_accept_rate_spreads_a_connect_storm_without_refusing_anyone() {
    let config = cinder::Config::parse(
        "[server]\nbind = \"127.0.0.1:0\"\nshards = 1\naccept_rate_per_shard = 5\n",
        "test",
    )
    .unwrap();
    let handle = cinder::start(config).unwrap();
    let url = format!("ws://{}/socket/websocket?vsn=2.0.0", handle.local_addr());
    let started = std::time::Instant::now();
    let clients: Vec<Client> = (0..12).map(|_| Client::connect(&url)).collect();
    assert_eq!(clients.len(), 12);
    // 5 at once, then 5 per second: the last ones waited in the backlog.
    assert!(started.elapsed() >= std::time::Duration::from_millis(700));
    let (_, metrics) = common::http_exchange(
        handle.local_addr(),
        b"GET /metrics HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
    );
    assert!(
        metrics.contains("cinder_accept_throttled_total{shard=\"0\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("cinder_accept_throttled_total{shard=\"0\"} 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cinder_connections_refused_total{shard=\"0\"} 0"),
        "{metrics}"
    );
    drop(clients);
    handle.stop().unwrap();
}
