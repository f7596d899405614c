//! Benchmark of the real `omnigent` binary (not a test): `status` and `server status` with the daemon up,
//! cold `start` until the server is healthy, `stop` until every process is gone, daemon and server idle RSS.
//! Each run uses its own OMNIGENT_HOME in a temp dir and a free port. Prints median and p90.
//!
//! `cargo bench -p omnigent --bench cli [-- ITERATIONS]`
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_omnigent");

fn omnigent(home: &std::path::Path, port: u16, args: &[&str]) -> std::process::Output {
    let out = Command::new(EXE)
        .args(args)
        .env("OMNIGENT_HOME", home)
        .env("OMNIGENT_SERVER_PORT", port.to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "omnigent {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn timed(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

fn healthy(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut r = String::new();
    let _ = s.read_to_string(&mut r);
    r.starts_with("HTTP/1.1 200")
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

fn report(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{name:<28} n={:<4} median {:>8.2} ms   p90 {:>8.2} ms   min {:>8.2} ms",
        v.len(),
        p(0.5).as_secs_f64() * 1e3,
        p(0.9).as_secs_f64() * 1e3,
        v[0].as_secs_f64() * 1e3
    );
}

fn main() {
    let iterations: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20);
    let (mut start, mut stop, mut status, mut server_status) = (vec![], vec![], vec![], vec![]);
    let (mut daemon_rss, mut server_rss) = (vec![], vec![]);
    for _ in 0..iterations {
        let home = tempfile::tempdir().unwrap();
        // Held for the daemon's server (no bind-drop-reuse race).
        let reserved = omnigent_testkit::net::PortReservation::new();
        let port = reserved.port;
        let mut out = None;
        // Cold: no daemon, no server, empty home. `start` returns once the server answers.
        start.push(timed(|| {
            out = Some(omnigent(home.path(), port, &["start", "--json"]))
        }));
        assert!(
            healthy(port),
            "start returned before the server was healthy"
        );
        let v: serde_json::Value = serde_json::from_slice(&out.unwrap().stdout).unwrap();
        let daemon_pid = v["daemon"]["pid"].as_u64().unwrap() as u32;
        let server_pid = v["server"]["pid"].as_u64().unwrap() as u32;
        for _ in 0..10 {
            status.push(timed(|| drop(omnigent(home.path(), port, &["status"]))));
            server_status.push(timed(|| {
                drop(omnigent(home.path(), port, &["server", "status"]))
            }));
        }
        daemon_rss.push(rss_kib(daemon_pid));
        server_rss.push(rss_kib(server_pid));
        stop.push(timed(|| drop(omnigent(home.path(), port, &["stop"]))));
        assert!(
            !alive(daemon_pid) && !alive(server_pid),
            "stop returned with a process alive"
        );
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "stop returned with the port open"
        );
    }
    report("status", status);
    report("server status", server_status);
    report("cold start → server healthy", start);
    report("stop → every process gone", stop);
    daemon_rss.sort();
    server_rss.sort();
    println!(
        "daemon idle RSS: median {:.1} MiB (max {:.1});  server idle RSS: median {:.1} MiB",
        daemon_rss[daemon_rss.len() / 2] as f64 / 1024.0,
        daemon_rss[daemon_rss.len() - 1] as f64 / 1024.0,
        server_rss[server_rss.len() / 2] as f64 / 1024.0
    );
}
