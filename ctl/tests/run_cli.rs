#![allow(clippy::unwrap_used)]
//! `omnigent run` and closed pipes, through the real binary (issue 9 hole 7): a failed turn (the vendor
//! answers 401) exits 1 with its error printed once; `run --json` into a reader that leaves after one line,
//! and `status --json` into a closed pipe, end quietly (exit 141, no panic message).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use std::sync::Arc;

use common::{FakeVendor, Step, WAIT, oa_finish, oa_text, omnigent, openai_env};
use serde_json::json;
use tokio::sync::Notify;

/// A temp home with its own server port, and the vendor settings every command (so the daemon, so each runner)
/// inherits; `omnigent stop` when dropped.
struct Home {
    dir: tempfile::TempDir,
    port: u16,
    vendor_url: String,
}

impl Home {
    fn new(vendor_url: &str) -> Self {
        // Port 0: the daemon's server takes a free port and reports it (status, server.json).
        let port = 0;
        Home {
            dir: tempfile::Builder::new().prefix("og").tempdir().unwrap(),
            port,
            vendor_url: vendor_url.to_owned(),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = omnigent(self.dir.path());
        c.args(args)
            .env("OMNIGENT_SERVER_PORT", self.port.to_string())
            .env_remove("OMNIGENT_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null());
        for (k, v) in openai_env(&self.vendor_url) {
            c.env(k, v);
        }
        c
    }

    fn workspace(&self) -> String {
        let w = self.dir.path().join("ws");
        std::fs::create_dir_all(&w).unwrap();
        w.display().to_string()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = self.cmd(&["stop"]).output();
    }
}

/// Wait for `cmd` to end (bounded), collecting its output.
async fn output(mut cmd: Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::timeout(
        WAIT * 2,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("the command ends in time")
    .unwrap()
    .unwrap()
}

fn no_panic(stderr: &str) {
    assert!(!stderr.contains("panicked"), "a panic: {stderr}");
}

#[tokio::test]
async fn a_failed_turn_exits_1_with_its_error_once_and_a_closed_stdout_ends_quietly() {
    // The first turn (the one piped into `head`) waits for the test before it answers; every later one gets 401.
    let answer = Arc::new(Notify::new());
    let mut first_turn = vec![Step::Wait(answer.clone()), oa_text("a long enough answer")];
    first_turn.extend(oa_finish("stop"));
    let vendor = FakeVendor::then_refusing(
        vec![first_turn],
        401,
        json!({"error": {"message": "Incorrect API key provided: sk-test.", "type": "invalid_request_error",
            "code": "invalid_api_key"}}),
    )
    .await;
    let url = vendor.url.clone();
    let home = Home::new(&url);
    let ws = home.workspace();

    // `run --json | head -1`: the reader leaves after the first line.
    let run_json = [
        "run",
        "--json",
        "--harness",
        "openai",
        "--workspace",
        &ws,
        "hello",
    ];
    let mut child = home
        .cmd(&run_json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line // the reader (and with it the pipe) is dropped here
    });
    let first = tokio::time::timeout(WAIT, first).await.unwrap().unwrap();
    assert!(first.contains("session.created"), "{first}");
    // The reader is gone; now the answer streams.
    vendor.asked(1).await;
    answer.notify_one();
    let status = tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || {
            let mut err = String::new();
            let _ = stderr_pipe.read_to_string(&mut err);
            (child.wait().unwrap(), err)
        }),
    )
    .await
    .unwrap()
    .unwrap();
    no_panic(&status.1);
    assert_eq!(
        status.0.code(),
        Some(141),
        "quiet exit on a closed pipe: {}",
        status.1
    );

    let out = output(home.cmd(&["run", "--harness", "openai", "--workspace", &ws, "hello"])).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    no_panic(&stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed turn exits 1: {stderr}"
    );
    assert_eq!(
        stderr.matches("Incorrect API key provided").count(),
        1,
        "the error once: {stderr}"
    );
    // The same with --json: the events on stdout, the error once on stderr.
    let out = output(home.cmd(&run_json)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.matches("Incorrect API key provided").count(),
        1,
        "{stderr}"
    );
}

#[tokio::test]
async fn status_json_into_a_closed_pipe_exits_quietly() {
    let home = tempfile::tempdir().unwrap();
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let out = omnigent(Path::new(home.path()))
        .args(["status", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    no_panic(&stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}
