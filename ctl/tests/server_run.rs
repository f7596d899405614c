//! `omnigent server run` as a real process: the ready line, refusals, and a clean SIGTERM stop.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

fn omnigent(home: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_omnigent"));
    cmd.env("OMNIGENT_HOME", home)
        .env_remove("OMNIGENT_DATABASE_URL")
        .env("RUST_LOG", "warn");
    cmd
}

/// Start the server on a free port and wait for its ready line (a signal, not a sleep).
fn start(home: &std::path::Path) -> (Child, Value) {
    let mut child = omnigent(home)
        .args(["server", "run", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn omnigent");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("ready line in time");
    let ready: Value =
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("ready line {line:?}: {e}"));
    (child, ready)
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

#[tokio::test]
async fn prints_one_ready_line_serves_and_stops_on_sigterm() {
    let home = tempfile::tempdir().expect("tmp");
    let (mut child, ready) = start(home.path());
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["pid"], child.id());
    let db = ready["database"].as_str().expect("database");
    assert_eq!(
        std::path::Path::new(db),
        home.path().join("data/omnigent.db")
    );
    let url = ready["url"].as_str().expect("url").to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let info: Value = reqwest::get(format!("{url}/v1/info"))
        .await
        .expect("info")
        .json()
        .await
        .expect("json");
    assert_eq!(info["implementation"], "omnigent-rs");
    assert_eq!(info["pid"], child.id());

    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    let t = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("kill");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}: {}", stderr_of(&mut child));
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "stopped in {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn refuses_a_taken_port_a_locked_database_and_a_bind_that_is_no_address() {
    let home = tempfile::tempdir().expect("tmp");
    let (mut first, ready) = start(home.path());
    let port = ready["url"]
        .as_str()
        .expect("url")
        .rsplit(':')
        .next()
        .expect("port")
        .to_owned();

    let other = tempfile::tempdir().expect("tmp");
    let out = omnigent(other.path())
        .args(["server", "run", "--port", &port])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("port {port}")) && err.contains("--port"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "no ready line on failure");

    let out = omnigent(home.path())
        .args(["server", "run", "--port", "0"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("omnigent.db") && err.contains("another omnigent server"),
        "{err}"
    );

    let out = omnigent(other.path())
        .args(["server", "run", "--bind", "not-an-address", "--port", "0"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not an IP address"), "{err}");

    let _ = first.kill();
    let _ = first.wait();
}

/// The daemon that started the server was SIGKILLed, so the read end of the server's stderr pipe is gone:
/// logging must not panic on the broken pipe, the server keeps serving, and SIGTERM still stops it cleanly.
#[tokio::test]
async fn stops_on_sigterm_after_its_stderr_pipe_is_closed() {
    let home = tempfile::tempdir().expect("tmp");
    let mut child = omnigent(home.path())
        .env("RUST_LOG", "debug")
        .args(["server", "run", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn omnigent");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("ready line");
    let ready: Value =
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("ready line {line:?}: {e}"));
    let url = ready["url"].as_str().expect("url").to_owned();

    // Close the only read end of the stderr pipe: every log write from now on fails with EPIPE.
    drop(child.stderr.take());

    // Still serving (and logging into the dead pipe while doing so).
    for _ in 0..3 {
        let info: Value = reqwest::get(format!("{url}/v1/info"))
            .await
            .expect("info")
            .json()
            .await
            .expect("json");
        assert_eq!(info["implementation"], "omnigent-rs");
    }

    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    let t = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("kill");
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send(status);
        child
    });
    let status = match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(status) => status.expect("wait"),
        Err(_) => {
            // Hung: kill it so the test process does not leak it, then fail.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = waiter.join();
            panic!("`server run` did not stop within 5 s of SIGTERM with a closed stderr");
        }
    };
    assert!(status.success(), "{status:?}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "stopped in {:?}",
        t.elapsed()
    );
    let _ = waiter.join();
}
