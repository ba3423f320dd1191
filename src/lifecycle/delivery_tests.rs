//! Tests of the delivery thread against a real local HTTP backend.

use super::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

/// One request the test backend received.
#[derive(Debug, Clone)]
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn ids(&self) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).expect("JSON body");
        v["events"]
            .as_array()
            .expect("an events array")
            .iter()
            .map(|e| e["id"].as_str().expect("an id").to_string())
            .collect()
    }
}

/// A tiny HTTP/1.1 backend answering 200 to everything (keep-alive).
struct Backend {
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    fn start(listener: TcpListener) -> Backend {
        listener.set_nonblocking(true).unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let r = r.clone();
                        std::thread::spawn(move || serve(stream, &r));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Backend { received, stop }
    }

    fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    fn ids(&self) -> Vec<String> {
        self.requests().iter().flat_map(Received::ids).collect()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(stream: TcpStream, received: &Mutex<Vec<Received>>) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (n, v) = h.split_once(':').expect("a header");
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        received.lock().unwrap().push(Received { headers, body });
        let ok = writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        if ok.is_err() {
            return;
        }
    }
}

fn local() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

fn config(addr: SocketAddr) -> DeliveryConfig {
    DeliveryConfig {
        url: format!("http://{addr}/cinder/events"),
        secret: None,
        batch_ms: 10,
        max_batch: 5,
        queue: 1000,
        timeout_ms: 1000,
    }
}

fn event(shard: usize, n: usize) -> Vec<u8> {
    format!(r#"{{"id":"s{shard}-{n}","n":{n}}}"#).into_bytes()
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

#[test]
fn events_arrive_in_shard_order_signed() {
    let (listener, addr) = local();
    let backend = Backend::start(listener);
    let secret = "s3cret";
    let cfg = DeliveryConfig {
        secret: Some(secret.into()),
        ..config(addr)
    };
    let (producers, thread, metrics) = spawn(cfg, 2).unwrap();
    for n in 0..20 {
        for (shard, p) in producers.iter().enumerate() {
            assert!(p.send(event(shard, n)));
        }
    }
    wait_for("40 events", Duration::from_secs(5), || {
        get(&metrics.delivered) == 40
    });
    thread.stop(Instant::now() + Duration::from_secs(1));

    let requests = backend.requests();
    assert_eq!(get(&metrics.batches), requests.len() as u64);
    assert!(requests.len() >= 8, "at most 5 events a batch");
    for r in &requests {
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("authorization"), Some("Bearer s3cret"));
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(&r.body);
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            r.header("x-cinder-signature"),
            Some(format!("sha256={hex}").as_str())
        );
        assert!(r.body.starts_with(br#"{"events":["#));
    }
    let ids = backend.ids();
    for shard in 0..2 {
        let mine: Vec<String> = ids
            .iter()
            .filter(|id| id.starts_with(&format!("s{shard}-")))
            .cloned()
            .collect();
        let expected: Vec<String> = (0..20).map(|n| format!("s{shard}-{n}")).collect();
        assert_eq!(mine, expected);
    }
    assert_eq!(get(&metrics.produced), 40);
    assert_eq!(get(&metrics.dropped), 0);
    assert_eq!(get(&metrics.retried), 0);
}

#[test]
fn no_secret_no_signature() {
    let (listener, addr) = local();
    let backend = Backend::start(listener);
    let (producers, thread, metrics) = spawn(config(addr), 1).unwrap();
    producers[0].send(event(0, 0));
    wait_for("1 event", Duration::from_secs(5), || {
        get(&metrics.delivered) == 1
    });
    thread.stop(Instant::now());
    let r = &backend.requests()[0];
    assert_eq!(r.header("authorization"), None);
    assert_eq!(r.header("x-cinder-signature"), None);
}

#[test]
fn backend_down_then_up_delivers_everything() {
    let (listener, addr) = local();
    // Nothing listens: connections are refused.
    drop(listener);
    let cfg = DeliveryConfig {
        max_batch: 4,
        batch_ms: 5,
        ..config(addr)
    };
    let (producers, thread, metrics) = spawn(cfg, 1).unwrap();
    for n in 0..30 {
        assert!(producers[0].send(event(0, n)));
    }
    wait_for("a retry", Duration::from_secs(5), || {
        get(&metrics.retried) >= 2
    });
    assert_eq!(get(&metrics.delivered), 0);

    let backend = Backend::start(TcpListener::bind(addr).unwrap());
    wait_for("30 events", Duration::from_secs(10), || {
        get(&metrics.delivered) == 30
    });
    thread.stop(Instant::now() + Duration::from_secs(1));

    let ids = backend.ids();
    let mut first_seen: Vec<String> = Vec::new();
    for id in &ids {
        if !first_seen.contains(id) {
            first_seen.push(id.clone());
        }
    }
    let expected: Vec<String> = (0..30).map(|n| format!("s0-{n}")).collect();
    assert_eq!(first_seen, expected, "everything, in order");
    // A repeated id only ever comes from a re-sent batch (same body).
    let requests = backend.requests();
    for (i, a) in requests.iter().enumerate() {
        for b in &requests[i + 1..] {
            let shared = a.ids().iter().any(|id| b.ids().contains(id));
            assert!(!shared || a.body == b.body, "duplicates only on retry");
        }
    }
    assert_eq!(get(&metrics.dropped), 0);
}

#[test]
fn full_queue_drops_and_counts_without_blocking() {
    let (listener, addr) = local();
    drop(listener);
    let cfg = DeliveryConfig {
        max_batch: 2,
        queue: 4,
        ..config(addr)
    };
    let (producers, thread, metrics) = spawn(cfg, 1).unwrap();
    let started = Instant::now();
    let accepted = (0..1000)
        .filter(|&n| producers[0].send(event(0, n)))
        .count();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "send blocked"
    );
    // The queue (4), a forming batch and one in flight (2 each).
    assert!(accepted <= 8, "accepted {accepted}");
    assert_eq!(get(&metrics.produced), 1000);
    assert_eq!(get(&metrics.dropped), 1000 - accepted as u64);

    let deadline = Instant::now() + Duration::from_millis(200);
    thread.stop(deadline);
    assert!(Instant::now() < deadline + Duration::from_millis(500));
    assert!(!producers[0].send(event(0, 1000)), "refused after stop");
    assert_eq!(get(&metrics.delivered), 0);
    assert_eq!(get(&metrics.produced), get(&metrics.dropped));
}

#[test]
fn stop_flushes_pending_events_before_the_deadline() {
    let (listener, addr) = local();
    let backend = Backend::start(listener);
    let cfg = DeliveryConfig {
        // Batches would otherwise wait a minute to fill.
        batch_ms: 60_000,
        max_batch: 1000,
        ..config(addr)
    };
    let (producers, thread, metrics) = spawn(cfg, 3).unwrap();
    for n in 0..10 {
        for (shard, p) in producers.iter().enumerate() {
            assert!(p.send(event(shard, n)));
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(get(&metrics.delivered), 0, "still batching");
    let deadline = Instant::now() + Duration::from_secs(3);
    thread.stop(deadline);
    assert!(Instant::now() < deadline);
    assert_eq!(get(&metrics.delivered), 30);
    assert_eq!(backend.ids().len(), 30);
    assert_eq!(get(&metrics.dropped), 0);
    assert!(get(&metrics.batch_latency_ms_sum) >= 50);
}

#[test]
fn stop_gives_up_at_the_deadline_when_the_backend_is_down() {
    let (listener, addr) = local();
    drop(listener);
    let (producers, thread, metrics) = spawn(config(addr), 1).unwrap();
    for n in 0..12 {
        producers[0].send(event(0, n));
    }
    let deadline = Instant::now() + Duration::from_millis(300);
    thread.stop(deadline);
    let late = Instant::now().saturating_duration_since(deadline);
    assert!(late < Duration::from_millis(200), "{late:?} late");
    assert_eq!(get(&metrics.dropped), 12);
    assert_eq!(get(&metrics.delivered), 0);
}

#[test]
fn unusable_urls_are_refused_at_start() {
    for url in ["", "not a url", "ftp://x/events", "/cinder/events"] {
        let cfg = DeliveryConfig {
            url: url.into(),
            ..config("127.0.0.1:1".parse().unwrap())
        };
        let err = spawn(cfg, 1).map(|_| ()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{url}");
    }
}
