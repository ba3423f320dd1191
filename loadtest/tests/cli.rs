//! The `cinder-load` binary as a user runs it: exit codes and what it says
//! on stderr. No server is needed: these are the failure paths.

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output};

/// Runs the binary under test.
fn cinder_load(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cinder-load"))
        .args(args)
        .output()
        .expect("cinder-load runs")
}

/// A loopback port nothing listens on (bound once, then released).
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn sweep_refuses_a_port_held_by_a_reuseport_server() {
    // Held the way a running Cinder holds it: SO_REUSEPORT, listening. A
    // new server would bind too and share the connections with it.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_reuse_port(true).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    socket.listen(8).unwrap();
    let port = socket.local_addr().unwrap().as_socket().unwrap().port();
    let svg = std::env::temp_dir().join(format!("cinder-load-cli-{}.svg", std::process::id()));
    // /bin/true would "start" and exit at once: the refusal must come first.
    let out = cinder_load(&[
        "sweep",
        "--shards",
        "1",
        "--port",
        &port.to_string(),
        "--server-bin",
        "/bin/true",
        "--svg",
        svg.to_str().unwrap(),
        "fanout",
        "--conns",
        "1",
        "--quiet",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port} is already in use")),
        "{stderr}"
    );
    assert!(!svg.exists());
}

#[test]
fn a_server_pid_that_does_not_exist_is_warned_about_and_reported_as_na() {
    let url = format!("ws://127.0.0.1:{}/socket/websocket", closed_port());
    let out = cinder_load(&[
        "connect",
        "--url",
        &url,
        "--conns",
        "2",
        "--server-pid",
        "999999999",
        "--quiet",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: --server-pid 999999999: cannot read /proc/999999999"),
        "{stderr}"
    );
    assert!(
        stdout.contains("server rss   before n/a  joined n/a  end n/a  per connection n/a"),
        "{stdout}"
    );
    assert!(!stdout.contains("0.0 MiB"), "{stdout}");
}

#[test]
fn a_server_pid_that_is_not_cinder_is_warned_about() {
    // This test binary is certainly not a Cinder server.
    let me = std::process::id().to_string();
    let url = format!("ws://127.0.0.1:{}/socket/websocket", closed_port());
    let out = cinder_load(&[
        "connect",
        "--url",
        &url,
        "--conns",
        "1",
        "--server-pid",
        &me,
        "--quiet",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("warning: --server-pid {me} is `"))
            && stderr.contains("not a Cinder server"),
        "{stderr}"
    );
    // It exists, so its figures are still read (they may be wanted, e.g.
    // a Phoenix server's beam.smp).
    assert!(stdout.contains(" MiB"), "{stdout}");
}

#[test]
fn a_run_without_loss_exits_zero_and_says_nothing_of_loss() {
    let url = format!("ws://127.0.0.1:{}/socket/websocket", closed_port());
    let out = cinder_load(&["connect", "--url", &url, "--conns", "1", "--quiet"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(!text(&out.stderr).contains("LOST"));
}

#[test]
fn a_soak_without_a_server_fails_at_once_and_writes_nothing() {
    let port = closed_port();
    let dir = std::env::temp_dir().join(format!("cinder-load-soak-{}", std::process::id()));
    let (json, svg) = (dir.join("soak.json"), dir.join("soak.svg"));
    let out = cinder_load(&[
        "soak",
        "--url",
        &format!("ws://127.0.0.1:{port}/socket/websocket"),
        "--publish",
        &format!("http://127.0.0.1:{port}/api/broadcast"),
        "--conns",
        "3",
        "--rate",
        "10",
        "--minutes",
        "1",
        "--json",
        json.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no healthy subscriber joined"), "{stderr}");
    assert!(stderr.contains("connect"), "{stderr}");
    assert!(!json.exists() && !svg.exists());
}

#[test]
fn a_soak_refuses_settings_that_cannot_work() {
    for (flag, value, complaint) in [
        ("--minutes", "0", "--minutes must be at least 1"),
        (
            "--presence-share",
            "1.5",
            "--presence-share must be between 0 and 1",
        ),
        ("--settle", "55s", "--settle must be shorter than 50 s"),
    ] {
        let out = cinder_load(&["soak", "--rate", "10", flag, value]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flag}: {stderr}");
        assert!(stderr.contains(complaint), "{flag}: {stderr}");
    }
    // A rate is required: the script computes it from a measured maximum.
    let out = cinder_load(&["soak"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--rate"));
}

#[test]
fn several_urls_are_all_used_and_a_split_must_match_them() {
    let (a, b) = (
        format!("ws://127.0.0.1:{}/socket/websocket", closed_port()),
        format!("ws://127.0.0.1:{}/socket/websocket", closed_port()),
    );
    let both = format!("{a},{b}");
    let out = cinder_load(&["connect", "--url", &both, "--conns", "4", "--quiet"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains(&format!("connect against {both}")),
        "{stdout}"
    );
    assert!(stdout.contains("failed 4"), "{stdout}");

    let out = cinder_load(&[
        "connect", "--url", &a, "--url", &b, "--split", "1", "--conns", "4", "--quiet",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--split gives 1 shares for 2 --url"),
        "{stderr}"
    );
}

#[test]
fn recover_without_a_server_fails_at_once_and_writes_nothing() {
    let url = format!("ws://127.0.0.1:{}/socket/websocket", closed_port());
    let json =
        std::env::temp_dir().join(format!("cinder-load-recover-{}.json", std::process::id()));
    let out = cinder_load(&[
        "recover",
        "--url",
        &url,
        "--conns",
        "3",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no client joined"), "{stderr}");
    assert!(stderr.contains("connect"), "{stderr}");
    assert!(!json.exists());
}

#[test]
fn recover_refuses_settings_that_cannot_work() {
    let url = format!("ws://127.0.0.1:{}/socket/websocket", closed_port());
    for (flag, value, complaint) in [
        ("--messages", "0", "--messages must be at least 1"),
        ("--batch", "0", "--batch must be at least 1"),
        (
            "--publish",
            "https://x/api/broadcast",
            "only http:// publish URLs",
        ),
        (
            "--conns",
            "0",
            "--conns, --topics and --threads must be at least 1",
        ),
        ("--conns", "100000", "needs more file descriptors"),
    ] {
        let out = cinder_load(&["recover", "--url", &url, flag, value, "--quiet"]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flag}: {stderr}");
        assert!(stderr.contains(complaint), "{flag}: {stderr}");
    }
    for (flag, value) in [
        ("--rejoin-after", "3h"),
        ("--recover-timeout", "soon"),
        ("--src-ips", "127.0.0.9-127.0.0.2"),
        ("--watch-pid", "42"),
    ] {
        let out = cinder_load(&["recover", flag, value]);
        assert_eq!(out.status.code(), Some(2), "{flag}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(flag), "{flag}");
    }
}

#[test]
fn recover_is_documented_with_its_defaults() {
    let out = cinder_load(&["recover", "--help"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    for expected in [
        "[default: 10000]",
        "[default: hist:bench]",
        "[default: 127.0.0.2-127.0.0.9]",
        "--messages",
        "--rejoin-after",
        "--recover-timeout",
        "next one",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected} missing from\n{stdout}"
        );
    }
}
