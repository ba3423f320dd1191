//! `ceiling`: what this machine's kernel and loopback allow without any
//! protocol work — one pre-encoded broadcast frame per `write()` (or K frames
//! per `writev()`), round-robin over C sockets, read by a child process. Every
//! server figure can then be quoted as a fraction of this one, measured in
//! the same run on the same machine.

use std::io::{BufRead, BufReader, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mio::{Events, Interest, Poll, Token};
use serde::Serialize;

use crate::cli::{CeilingArgs, DrainArgs};
use crate::payload::{self, Stamp};
use crate::report::{median, write_json};
use crate::{clock, system};

/// One measured window of the ceiling.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CeilingWindow {
    /// Length in seconds.
    pub seconds: f64,
    /// write()/writev() calls that wrote something.
    pub writes: u64,
    /// Calls that found the socket full.
    pub would_block: u64,
    /// Whole frames written (bytes ÷ frame size).
    pub deliveries: u64,
    /// Deliveries per second.
    pub deliveries_per_sec: f64,
    /// Writer threads' CPU time, ms.
    pub writer_cpu_ms: f64,
    /// Writer CPU per successful write call, µs.
    pub cpu_per_write_us: f64,
    /// Writer CPU per delivered frame, µs.
    pub cpu_per_delivery_us: f64,
}

/// The ceiling's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CeilingReport {
    /// Sockets written to.
    pub conns: usize,
    /// Payload bytes.
    pub payload_bytes: usize,
    /// Whole frame size in bytes (header included).
    pub frame_bytes: usize,
    /// Frames per write call.
    pub coalesce: usize,
    /// Writer threads.
    pub writers: usize,
    /// Every window.
    pub windows: Vec<CeilingWindow>,
    /// Median deliveries per second.
    pub median_deliveries_per_sec: f64,
    /// Median writer CPU per write call, µs.
    pub median_cpu_per_write_us: f64,
    /// Median writer CPU per delivery, µs.
    pub median_cpu_per_delivery_us: f64,
    /// Bytes the reading child reported (checks that writes were read).
    pub drained_bytes: u64,
}

/// The frame a server would send for a V2 text broadcast of this size.
pub fn broadcast_frame(payload_bytes: usize) -> Vec<u8> {
    let mut body = b"[null,null,\"bench:0\",\"msg\",".to_vec();
    payload::write(
        &mut body,
        Stamp {
            sender: 0,
            seq: 0,
            window: 0,
            sent_ns: 0,
        },
        payload_bytes,
    );
    body.push(b']');
    let mut frame = vec![0x81];
    if body.len() < 126 {
        frame.push(body.len() as u8);
    } else if body.len() <= u16::MAX as usize {
        frame.push(126);
        frame.extend_from_slice(&(body.len() as u16).to_be_bytes());
    } else {
        frame.push(127);
        frame.extend_from_slice(&(body.len() as u64).to_be_bytes());
    }
    frame.extend_from_slice(&body);
    frame
}

/// Runs the ceiling measurement.
pub fn run(args: &CeilingArgs) -> Result<CeilingReport, String> {
    if args.conns == 0 || args.writers == 0 || args.runs == 0 || args.coalesce == 0 {
        return Err("--conns, --writers, --runs and --coalesce must be at least 1".into());
    }
    let limit = system::raise_fd_limit().map_err(|e| e.to_string())?;
    if args.conns as u64 + 64 > limit {
        return Err(format!(
            "--conns {} exceeds this process's fd limit {limit}",
            args.conns
        ));
    }
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args([
            "drain",
            "--addr",
            &addr.to_string(),
            "--conns",
            &args.conns.to_string(),
        ])
        .args(["--threads", &args.threads.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the draining child: {e}"))?;
    let mut sockets = Vec::with_capacity(args.conns);
    for _ in 0..args.conns {
        let (socket, _) = listener.accept().map_err(|e| e.to_string())?;
        socket.set_nodelay(true).map_err(|e| e.to_string())?;
        socket.set_nonblocking(true).map_err(|e| e.to_string())?;
        sockets.push(socket);
    }
    let frame = Arc::new(broadcast_frame(args.payload_bytes));
    let mut groups: Vec<Vec<TcpStream>> = (0..args.writers).map(|_| Vec::new()).collect();
    for (i, socket) in sockets.into_iter().enumerate() {
        groups[i % args.writers].push(socket);
    }
    let groups: Vec<Arc<Vec<TcpStream>>> = groups.into_iter().map(Arc::new).collect();
    let mut report = CeilingReport {
        conns: args.conns,
        payload_bytes: args.payload_bytes,
        frame_bytes: frame.len(),
        coalesce: args.coalesce,
        writers: args.writers,
        ..CeilingReport::default()
    };
    for run in 0..args.runs {
        if !args.quiet {
            eprintln!(
                "ceiling window {run}: {} sockets, {} B frames, {} per write",
                args.conns,
                frame.len(),
                args.coalesce
            );
        }
        let handles: Vec<_> = groups
            .iter()
            .map(|group| {
                let (group, frame, coalesce, duration) =
                    (group.clone(), frame.clone(), args.coalesce, args.duration);
                std::thread::spawn(move || write_loop(&group, &frame, coalesce, duration))
            })
            .collect();
        let started = clock::now_ns();
        let mut window = CeilingWindow::default();
        let mut bytes = 0u64;
        for handle in handles {
            let (writes, would_block, written, cpu_ns) =
                handle.join().map_err(|_| "writer panicked")?;
            window.writes += writes;
            window.would_block += would_block;
            bytes += written;
            window.writer_cpu_ms += cpu_ns as f64 / 1e6;
        }
        window.seconds = (clock::now_ns() - started) as f64 / 1e9;
        window.deliveries = bytes / frame.len() as u64;
        window.deliveries_per_sec = window.deliveries as f64 / window.seconds;
        window.cpu_per_write_us = window.writer_cpu_ms * 1000.0 / window.writes.max(1) as f64;
        window.cpu_per_delivery_us =
            window.writer_cpu_ms * 1000.0 / window.deliveries.max(1) as f64;
        report.windows.push(window);
        // Let the reader empty the socket buffers between windows.
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(child.stdin.take());
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    let _ = child.wait();
    report.drained_bytes = out.trim().parse().unwrap_or(0);
    report.median_deliveries_per_sec = median(
        report
            .windows
            .iter()
            .map(|w| w.deliveries_per_sec)
            .collect(),
    );
    report.median_cpu_per_write_us =
        median(report.windows.iter().map(|w| w.cpu_per_write_us).collect());
    report.median_cpu_per_delivery_us = median(
        report
            .windows
            .iter()
            .map(|w| w.cpu_per_delivery_us)
            .collect(),
    );
    if let Some(path) = &args.json {
        write_json(&report, path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(report)
}

/// Writes `frame` round-robin for `duration`; returns (writes, would-block
/// calls, bytes, thread CPU ns).
fn write_loop(
    sockets: &[TcpStream],
    frame: &[u8],
    coalesce: usize,
    duration: Duration,
) -> (u64, u64, u64, u64) {
    let slices: Vec<IoSlice<'_>> = (0..coalesce).map(|_| IoSlice::new(frame)).collect();
    let cpu_start = system::thread_cpu_ns();
    let end = clock::now_ns() + duration.as_nanos() as u64;
    let (mut writes, mut would_block, mut bytes) = (0u64, 0u64, 0u64);
    'outer: loop {
        for mut socket in sockets {
            let result = if coalesce == 1 {
                socket.write(frame)
            } else {
                socket.write_vectored(&slices)
            };
            match result {
                Ok(n) => {
                    writes += 1;
                    bytes += n as u64;
                }
                Err(_) => would_block += 1,
            }
        }
        if clock::now_ns() >= end {
            break 'outer;
        }
    }
    (
        writes,
        would_block,
        bytes,
        system::thread_cpu_ns() - cpu_start,
    )
}

/// The child side: connect, read everything until stdin closes, print the
/// byte count.
pub fn drain(args: &DrainArgs) -> Result<(), String> {
    system::raise_fd_limit().map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let threads = args.threads.max(1);
    let mut groups: Vec<Vec<mio::net::TcpStream>> = (0..threads).map(|_| Vec::new()).collect();
    for i in 0..args.conns {
        let stream = TcpStream::connect(args.addr).map_err(|e| format!("drain connect: {e}"))?;
        stream.set_nonblocking(true).map_err(|e| e.to_string())?;
        groups[i % threads].push(mio::net::TcpStream::from_std(stream));
    }
    let handles: Vec<_> = groups
        .into_iter()
        .map(|mut group| {
            let (stop, total) = (stop.clone(), total.clone());
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut poll = Poll::new()?;
                for (i, stream) in group.iter_mut().enumerate() {
                    poll.registry()
                        .register(stream, Token(i), Interest::READABLE)?;
                }
                let mut events = Events::with_capacity(1024);
                let mut buf = vec![0u8; 256 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    poll.poll(&mut events, Some(Duration::from_millis(50)))?;
                    let mut read = 0u64;
                    for event in events.iter() {
                        let stream = &mut group[event.token().0];
                        loop {
                            match stream.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => read += n as u64,
                                Err(_) => break,
                            }
                        }
                    }
                    total.fetch_add(read, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    let mut line = String::new();
    let _ = BufReader::new(std::io::stdin()).read_line(&mut line);
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        let _ = handle.join();
    }
    println!("{}", total.load(Ordering::Relaxed));
    let _ = std::io::stdout().flush();
    Ok(())
}

impl CeilingReport {
    /// Prints the human table.
    pub fn print(&self) {
        println!(
            "ceiling: {} sockets, {} B frames ({} B payload), {} frame(s) per write, {} writer(s)",
            self.conns, self.frame_bytes, self.payload_bytes, self.coalesce, self.writers
        );
        println!(
            "{:<8} {:>12} {:>14} {:>12} {:>14} {:>12}",
            "window", "writes", "deliveries/s", "µs/write", "µs/delivery", "full socket"
        );
        for (i, w) in self.windows.iter().enumerate() {
            println!(
                "{:<8} {:>12} {:>14.0} {:>12.3} {:>14.3} {:>12}",
                i,
                w.writes,
                w.deliveries_per_sec,
                w.cpu_per_write_us,
                w.cpu_per_delivery_us,
                w.would_block
            );
        }
        println!(
            "{:<8} {:>12} {:>14.0} {:>12.3} {:>14.3}",
            "median",
            "",
            self.median_deliveries_per_sec,
            self.median_cpu_per_write_us,
            self.median_cpu_per_delivery_us
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_matches_a_v2_broadcast_of_the_payload_size() {
        let frame = broadcast_frame(64);
        assert_eq!(frame[0], 0x81);
        let body = &frame[2..];
        assert_eq!(frame[1] as usize, body.len());
        let value: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(value[4].to_string().len(), 64);
        assert_eq!(broadcast_frame(1024)[1], 126);
    }
}
