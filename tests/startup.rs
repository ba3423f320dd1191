//! Starting the binary: refusing an address another process holds, checking
//! `--log-level`, and plain (uncoloured) logs when stderr is no terminal.
//!
//! Every test runs the real `cinder` as a child process; a [`Cinder`] guard
//! kills its child (by its own PID) on every path, a failed assertion too.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long any single wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

/// The valid levels, as the `--log-level` error lists them.
const LEVELS: &str = "error, warn, info, debug, trace, off";

/// A running `cinder` whose stderr is read line by line on a thread (so a
/// chatty child never blocks on a full pipe); killed when dropped.
struct Cinder {
    child: Child,
    lines: Receiver<String>,
    /// Every stderr line received so far.
    seen: Vec<String>,
}

impl Cinder {
    /// Starts `cinder ARGS` with stderr piped, `NO_COLOR` and `RUST_LOG`
    /// unset (so neither decides what the test sees).
    fn spawn(args: &[&str]) -> Cinder {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cinder"))
            .args(args)
            .env_remove("NO_COLOR")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cinder");
        let stderr = child.stderr.take().expect("piped stderr");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Cinder {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// `cinder serve --bind ADDR --shards 2 EXTRA`.
    fn serve(bind: &str, extra: &[&str]) -> Cinder {
        let mut args = vec!["serve", "--bind", bind, "--shards", "2"];
        args.extend_from_slice(extra);
        Cinder::spawn(&args)
    }

    /// Waits for the "listening on ADDR" line and returns ADDR.
    fn wait_listening(&mut self) -> SocketAddr {
        let line = self.wait_line(|line| line.contains("listening on"));
        let rest = &line[line.find("listening on ").unwrap() + "listening on ".len()..];
        let addr = rest.split_whitespace().next().expect("an address");
        addr.parse()
            .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"))
    }

    /// Waits for a stderr line matching `wanted`; fails on timeout or when
    /// the child closes stderr first (it exited).
    fn wait_line(&mut self, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no such line from cinder in {WAIT:?}; stderr: {:#?}",
                        self.seen
                    )
                }
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "cinder exited ({:?}) before the line; stderr: {:#?}",
                    self.child.try_wait(),
                    self.seen
                ),
            }
        }
    }

    /// Waits for the child to exit on its own; returns its status and all
    /// of its stderr.
    fn wait_exit(&mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "cinder still running after {WAIT:?}; stderr so far: {:#?}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends at EOF, after the last line.
        while let Ok(line) = self.lines.recv_timeout(WAIT) {
            self.seen.push(line);
        }
        (status, self.seen.join("\n"))
    }

    /// Whether the child is still running.
    fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Cinder {
    fn drop(&mut self) {
        // `Child::kill` signals this child's own PID (SIGKILL), nothing else.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago (bound to port 0, then released).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

/// Connects until the server accepts, or fails after [`WAIT`].
fn wait_accepting(addr: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{addr} never accepted");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET /healthz`: the status code.
fn healthz(addr: SocketAddr) -> u16 {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no HTTP response: {response:?}"));
    status.parse().expect("a status code")
}

/// Asserts that `cinder serve --bind ADDR` refuses to start: exit code 1
/// and an error naming the address and saying another process holds it.
fn assert_refused(addr: SocketAddr) {
    let started = Instant::now();
    let mut second = Cinder::serve(&addr.to_string(), &[]);
    let (status, stderr) = second.wait_exit();
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(stderr.contains(&addr.to_string()), "stderr: {stderr}");
    assert!(stderr.contains("another process"), "stderr: {stderr}");
    assert!(!stderr.contains("listening on"), "stderr: {stderr}");
}

#[test]
fn a_second_cinder_on_the_same_port_exits_1_and_the_first_keeps_serving() {
    let bind = format!("127.0.0.1:{}", free_port());
    let mut first = Cinder::serve(&bind, &[]);
    let addr = first.wait_listening();
    assert_eq!(addr.to_string(), bind);
    wait_accepting(addr);

    assert_refused(addr);

    assert!(first.running(), "the first cinder stopped");
    // Every connection still reaches the first server: none is left queued
    // on a listener of the second.
    for _ in 0..20 {
        assert_eq!(healthz(addr), 200);
    }
}

#[test]
fn a_port_held_by_a_plain_listener_is_refused() {
    // No SO_REUSEPORT on this one (std sets only SO_REUSEADDR).
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    assert_refused(addr);
    // The holder still owns its port.
    let _client = TcpStream::connect(addr).unwrap();
    holder.set_nonblocking(false).unwrap();
    holder.accept().expect("the holder still accepts");
}

#[test]
fn a_port_held_by_a_reuseport_listener_of_the_same_user_is_refused() {
    // What another cinder looks like to the kernel: the same user, with
    // SO_REUSEPORT, so a shard socket alone would have joined its group.
    use socket2::{Domain, Protocol, Socket, Type};
    let holder = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    holder.set_reuse_address(true).unwrap();
    holder.set_reuse_port(true).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    holder.bind(&any.into()).unwrap();
    holder.listen(16).unwrap();
    let addr = holder.local_addr().unwrap().as_socket().unwrap();
    assert_refused(addr);
}

#[test]
fn a_restart_on_the_same_port_is_not_blocked_by_old_connections() {
    let bind = format!("127.0.0.1:{}", free_port());
    let mut first = Cinder::serve(&bind, &[]);
    let addr = first.wait_listening();
    wait_accepting(addr);
    // Connections the server closed linger in TIME_WAIT on its port.
    for _ in 0..5 {
        assert_eq!(healthz(addr), 200);
    }
    drop(first);
    let mut second = Cinder::serve(&bind, &[]);
    assert_eq!(second.wait_listening(), addr);
    assert_eq!(healthz(addr), 200);
}

#[test]
fn an_unknown_log_level_exits_2_naming_the_valid_levels() {
    for level in ["verbose", "loud", "cinder=loud", ""] {
        let mut cinder = Cinder::serve("127.0.0.1:0", &["--log-level", level]);
        let (status, stderr) = cinder.wait_exit();
        assert_eq!(status.code(), Some(2), "--log-level {level:?}: {stderr}");
        assert!(stderr.contains(LEVELS), "--log-level {level:?}: {stderr}");
        assert!(
            stderr.contains(&format!("{level:?}")),
            "--log-level {level:?}: {stderr}"
        );
        assert!(!stderr.contains("listening on"), "{stderr}");
    }
}

#[test]
fn levels_and_filter_directives_are_accepted() {
    for level in [
        "cinder=debug",
        "warn,cinder=info",
        "info, cinder=debug",
        "INFO",
    ] {
        let mut cinder = Cinder::serve("127.0.0.1:0", &["--log-level", level]);
        let addr = cinder.wait_listening();
        assert_eq!(healthz(addr), 200, "--log-level {level:?}");
    }
    // A level that hides the startup line still starts the server.
    let mut quiet = Cinder::serve("127.0.0.1:0", &["--log-level", "off"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(quiet.running(), "--log-level off: {:#?}", quiet.seen);
}

#[test]
fn human_logs_to_a_pipe_have_no_colour_codes() {
    let mut cinder = Cinder::serve(
        "127.0.0.1:0",
        &["--log-level", "debug", "--log-format", "human"],
    );
    cinder.wait_listening();
    let logs = cinder.seen.join("\n");
    assert!(cinder.seen.len() >= 2, "{logs}");
    assert!(
        !logs.contains("\x1b["),
        "ANSI codes in piped logs: {logs:?}"
    );
    assert!(logs.contains("INFO"), "{logs}");
}
