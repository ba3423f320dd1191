//! A real `redis-server` of the test's own, on a free port (so the test can
//! kill and restart it), and Cinder nodes as child processes joined to it.
//! Both are killed (by their own PIDs) when dropped, on every path.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use super::{http_exchange, Client};

/// How long a cluster-wide change may take to show before a test fails.
pub const CONVERGE: Duration = Duration::from_secs(10);

/// The `redis-server` binary, or a failure saying how to get one.
fn redis_server_binary() -> String {
    let candidates = [
        "redis-server",
        "/usr/bin/redis-server",
        "/usr/local/bin/redis-server",
    ];
    for candidate in candidates {
        if Command::new(candidate)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return candidate.to_string();
        }
    }
    panic!(
        "the cluster tests need redis-server (Debian package redis-server; .ci/run installs it) \
         and none was found on PATH"
    );
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A `redis-server` started by the test, keeping nothing on disk.
pub struct Redis {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
}

impl Redis {
    /// Starts one on a free port and waits until it answers.
    pub fn start() -> Redis {
        let mut redis = Redis {
            child: None,
            port: free_port(),
        };
        redis.restart();
        redis
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL: an outage, not a shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty: it keeps nothing).
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port.to_string();
        let child = Command::new(redis_server_binary())
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--loglevel",
                "warning",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + CONVERGE;
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it answers PING.
    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// Runs one command (inline form) and returns the raw reply (and the
    /// `+OK` of the `QUIT` that makes Redis close the connection after it).
    pub fn command(&self, command: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("redis connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        stream
            .write_all(format!("{command}\r\nQUIT\r\n").as_bytes())
            .unwrap();
        let mut reply = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stream.read(&mut chunk) {
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&reply).to_string()
    }
}

impl Redis {
    /// Runs one command given as binary-safe arguments (RESP) and returns
    /// the raw reply.
    pub fn command_args(&self, args: &[&[u8]]) -> String {
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"*1\r\n$4\r\nQUIT\r\n");
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("redis connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        stream.write_all(&request).unwrap();
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        String::from_utf8_lossy(&reply).to_string()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Cinder node: the real binary as a child process.
pub struct Node {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    _log: Receiver<String>,
}

impl Node {
    /// `cinder serve` on a free port, one of the cluster on `redis`, named
    /// `name`, with `shards` shards and the test routes plus `extra` TOML.
    pub fn start(redis: &str, name: &str, shards: usize, extra: &str) -> Node {
        Node::start_with(redis, name, shards, "", extra)
    }

    /// [`Node::start`] with more `[cluster]` keys.
    pub fn start_with(
        redis: &str,
        name: &str,
        shards: usize,
        cluster_keys: &str,
        extra: &str,
    ) -> Node {
        let dir = std::env::temp_dir().join(format!(
            "cinder-cluster-test-{}-{name}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("cinder.toml");
        std::fs::write(
            &config,
            format!(
                "[cluster]\nheartbeat_ms = 200\nnode_timeout_ms = 1500\n{cluster_keys}\n\
                 [socket.longpoll]\nsecret = \"one secret for the cluster\"\nwindow_ms = 2000\n{extra}\n{}",
                super::TEST_ROUTES
            ),
        )
        .unwrap();
        let shards = shards.to_string();
        let mut child = Command::new(env!("CARGO_BIN_EXE_cinder"))
            .args(["serve", "--bind", "127.0.0.1:0", "--shards", &shards])
            .arg("--config")
            .arg(&config)
            .args(["--cluster-redis", redis, "--node-name", name])
            .args(["--log-format", "json", "--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cinder");
        let stderr = child.stderr.take().unwrap();
        let (lines_in, lines) = mpsc::channel();
        let (addr_in, addr_out) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(log) = serde_json::from_str::<serde_json::Value>(&line) {
                    if let Some(addr) = log["fields"]["local_addr"].as_str() {
                        let _ = addr_in.send(addr.parse::<SocketAddr>().unwrap());
                    }
                }
                if lines_in.send(line).is_err() {
                    // Nobody reads the log any more: keep draining the pipe.
                    continue;
                }
            }
        });
        let Ok(addr) = addr_out.recv_timeout(CONVERGE) else {
            let log: Vec<String> = lines.try_iter().collect();
            panic!("the node did not start:\n{}", log.join("\n"));
        };
        Node {
            child,
            addr,
            _log: lines,
        }
    }

    /// Kills the node with SIGKILL: no goodbye to the cluster.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the node with SIGTERM (a graceful stop) and waits for it.
    pub fn terminate(&mut self) {
        // SAFETY: signalling our own child process by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }

    /// `ws://ADDR/socket/websocket?vsn=2.0.0`, with `query` appended.
    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/socket/websocket?vsn=2.0.0{query}", self.addr)
    }

    /// A V2 client.
    pub fn connect(&self) -> Client {
        Client::connect(&self.ws_url(""))
    }

    /// A GET; returns (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_exchange(
            self.addr,
            format!("GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").as_bytes(),
        )
    }

    /// A POST of a JSON body; returns (status, body).
    pub fn post(&self, path: &str, body: &str) -> (u16, String) {
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        http_exchange(self.addr, request.as_bytes())
    }

    /// The `cluster` object of `/healthz`.
    pub fn cluster_health(&self) -> serde_json::Value {
        let (status, body) = self.get("/healthz");
        assert_eq!(status, 200, "{body}");
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        health["cluster"].clone()
    }

    /// A metric without labels (or summed over shards), from `/metrics`.
    pub fn metric(&self, name: &str) -> u64 {
        let (_, body) = self.get("/metrics");
        body.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Waits until this node has Redis up and sees `nodes` nodes.
    pub fn wait_cluster(&self, nodes: u64) {
        wait_until(&format!("{} sees {nodes} nodes", self.addr), || {
            let health = self.cluster_health();
            health["redis"] == "up" && health["nodes"] == nodes
        });
    }

    /// Waits until this node listens to `topics` topic channels.
    pub fn wait_topics(&self, topics: u64) {
        wait_until(&format!("{} listens to {topics} topics", self.addr), || {
            self.metric("cinder_cluster_topics") == topics
        });
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `done` until it holds, failing after [`CONVERGE`].
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + CONVERGE;
    while !done() {
        assert!(Instant::now() < deadline, "not within {CONVERGE:?}: {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A Redis Cluster of three masters (no replicas), made by the test on
/// free ports, its slots spread by `redis-cli --cluster create`.
pub struct RedisCluster {
    nodes: Vec<Child>,
    /// The masters' ports.
    pub ports: Vec<u16>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Starts three `redis-server --cluster-enabled yes` and joins them.
    pub fn start() -> RedisCluster {
        let dir = std::env::temp_dir().join(format!(
            "cinder-redis-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        // Each node also listens on port + 10000 (the cluster bus).
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 3 {
            let port = free_port();
            if port < 55_000
                && !ports.contains(&port)
                && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
            {
                ports.push(port);
            }
        }
        let mut nodes = Vec::new();
        for port in &ports {
            let port = port.to_string();
            let config = dir.join(format!("nodes-{port}.conf"));
            nodes.push(
                Command::new(redis_server_binary())
                    .args([
                        "--port",
                        &port,
                        "--bind",
                        "127.0.0.1",
                        "--protected-mode",
                        "no",
                    ])
                    .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                    .arg("--cluster-config-file")
                    .arg(&config)
                    .arg("--dir")
                    .arg(&dir)
                    .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn redis-server"),
            );
        }
        let cluster = RedisCluster { nodes, ports, dir };
        for port in &cluster.ports {
            let redis = Redis {
                child: None,
                port: *port,
            };
            wait_until("a cluster node answers", || redis.answers());
        }
        let addresses: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli (package redis-tools, installed with redis-server)");
        assert!(created.success(), "redis-cli --cluster create failed");
        for port in &cluster.ports {
            let redis = Redis {
                child: None,
                port: *port,
            };
            wait_until("the Redis Cluster is ok", || {
                redis.command("CLUSTER INFO").contains("cluster_state:ok")
            });
        }
        cluster
    }

    /// The URL of one master (the client learns the rest).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.ports[0])
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
