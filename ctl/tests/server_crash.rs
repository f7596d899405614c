//! The server SIGKILLed at random points of long turns, many times: after each restart the stored assistant
//! message is byte for byte what the runner produced, `completed`, once.
//!
//! Real processes over real sockets: `omnigent server run` (killed and restarted on the same port) and one
//! `omnigent runner` that lives through every crash. The `exec` turns run a script that prints a line each
//! time the test writes to a fifo, so the test decides exactly where in the turn the server dies; the `echo`
//! turns stream an 850 KB prompt back and the server dies after a random number of its deltas. Every wait is
//! on a signal (a log line, an SSE event, a fifo write being read); never a sleep.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use common::{Server, start_runner, start_server, token_and_id};

/// Turns per harness, each with the server killed at a random point (`CRASH_ITERATIONS` to change).
const ITERATIONS: usize = 20;

fn iterations() -> usize {
    std::env::var("CRASH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ITERATIONS)
}
/// Lines each `exec` turn prints.
const LINES: usize = 20;

/// A small xorshift generator: the seed is printed, so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("CRASH_SEED={seed}");
        Rng(seed)
    }

    /// Uniform in `0..=max`.
    fn upto(&mut self, max: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % (max as u64 + 1)) as usize
    }
}

fn is_idle(kind: &str, v: &Value) -> bool {
    kind == "session.status" && v["status"] == "idle"
}

/// Kill the server and start a new one on the same port; returns once it has the runner back and has
/// re-opened the session's relay.
async fn crash_and_restart(server: Server, home: &Path, runner_id: &str, session: &str) -> Server {
    let port = server.port();
    let mut server = server;
    server.proc.kill();
    drop(server);
    let mut server = start_server(home, port, 30_000).await;
    server
        .proc
        .wait_log(&[omnigent_tunnel::server::RUNNER_CONNECTED, runner_id])
        .await;
    server
        .proc
        .wait_log(&[omnigent_server::relay::RELAY_SUBSCRIBED, session])
        .await;
    server
}

/// Wait until turn `turn` has its reply stored: subscribe first, then read the transcript, so a reply stored
/// after the read is on the stream.
async fn wait_reply(server: &Server, session: &str, turn: usize) {
    let mut sse = server.stream(session).await;
    if server.transcript(session).await.len() > 2 * turn + 1 {
        return;
    }
    sse.until(|k, v| k == "response.output_item.done" && v["item"]["role"] == "assistant")
        .await;
}

/// The session's last turn stored exactly `want` as one completed assistant message after its user input.
async fn assert_reply(server: &Server, session: &str, turn: usize, want: &str, seed_note: &str) {
    let items = server.transcript(session).await;
    let brief: Vec<String> = items
        .iter()
        .map(|i| {
            let text = i["content"][0]["text"].as_str().unwrap_or("");
            format!(
                "{}:{}:{}:{} bytes:{}",
                i["type"].as_str().unwrap_or(""),
                i["role"].as_str().unwrap_or(""),
                i["status"].as_str().unwrap_or(""),
                text.len(),
                text.chars().take(24).collect::<String>()
            )
        })
        .collect();
    assert_eq!(
        items.len(),
        2 * (turn + 1),
        "turn {turn} ({seed_note}): {brief:#?}"
    );
    let reply = &items[2 * turn + 1];
    assert_eq!(reply["role"], "assistant", "turn {turn} ({seed_note})");
    assert_eq!(reply["status"], "completed", "turn {turn} ({seed_note})");
    let got = reply["content"][0]["text"].as_str().unwrap();
    assert!(
        got == want,
        "turn {turn} ({seed_note}): stored {} bytes, the runner produced {}; first difference at byte {}",
        got.len(),
        want.len(),
        got.bytes()
            .zip(want.bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()))
    );
}

/// The script of the `exec` turns: line `i` of `LINES` is printed once the test writes a newline to the
/// fifo (held open by both sides for the whole turn, so no write is lost between two reads).
fn exec_script(dir: &Path) -> (PathBuf, PathBuf) {
    let fifo = dir.join("go");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo {}", fifo.display());
    let script = dir.join("lines.sh");
    std::fs::write(
        &script,
        format!(
            "exec 3< {fifo}\n# The new message is the prompt's last line (exec passes the conversation before it).\nmsg=$(printf '%s\\n' \"$1\" | tail -n 1)\ni=1\nwhile [ $i -le {LINES} ]; do\n  read -r _ <&3\n  echo \"line $i of $msg: {pad}\"\n  \
             i=$((i + 1))\ndone\n",
            fifo = fifo.display(),
            pad = "x".repeat(200),
        ),
    )
    .unwrap();
    (script, fifo)
}

/// The test's end of the fifo, opened for a turn once its script has opened the other end.
struct Gate {
    fifo: PathBuf,
    writer: Option<std::fs::File>,
}

impl Gate {
    /// Let the script print one more line.
    async fn release(&mut self) {
        let mut writer = match self.writer.take() {
            Some(writer) => writer,
            None => {
                let fifo = self.fifo.clone();
                tokio::time::timeout(
                    common::WAIT,
                    tokio::task::spawn_blocking(move || {
                        std::fs::OpenOptions::new().write(true).open(fifo).unwrap()
                    }),
                )
                .await
                .expect("the script opens the fifo in time")
                .unwrap()
            }
        };
        writer.write_all(b"\n").unwrap();
        self.writer = Some(writer);
    }
}

#[tokio::test]
async fn a_server_killed_at_any_point_of_an_exec_turn_loses_nothing_of_the_reply() {
    let home = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let (script, fifo) = exec_script(ws.path());
    let mut gate = Gate { fifo, writer: None };
    let mut rng = Rng::new();
    // The port is held for the server across its restarts (nothing else can take it in between).
    let reserved = omnigent_testkit::net::PortReservation::new();
    let mut server = start_server(home.path(), reserved.port, 30_000).await;
    let (token, runner_id) = token_and_id("crash-exec");
    let _runner = start_runner(
        home.path(),
        &server.url,
        &token,
        "exec",
        ws.path(),
        &[(
            "OMNIGENT_EXEC_COMMAND",
            format!("/bin/sh {}", script.display()),
        )],
    );
    let session = server
        .session_on_runner("exec", ws.path(), &runner_id)
        .await;
    for turn in 0..iterations() {
        let prompt = format!("turn-{turn}");
        let want: String = (1..=LINES)
            .map(|i| format!("line {i} of {prompt}: {}\n", "x".repeat(200)))
            .collect();
        // Killed once `kill_at` lines were released; the last one released is still in flight.
        let kill_at = rng.upto(LINES);
        let note = format!("killed after releasing {kill_at} of {LINES} lines");
        let mut sse = server.stream(&session).await;
        let (status, body) = server.message(&session, &prompt).await;
        assert_eq!(status, 202, "{body}");
        for i in 1..=LINES {
            if i > kill_at {
                break;
            }
            gate.release().await;
            if i < kill_at {
                let line = format!("line {i} of {prompt}:");
                sse.until(|k, v| {
                    k == "response.output_text.delta"
                        && v["delta"].as_str().is_some_and(|d| d.contains(&line))
                })
                .await;
            }
        }
        drop(sse);
        server = crash_and_restart(server, home.path(), &runner_id, &session).await;
        for _ in kill_at..LINES {
            gate.release().await;
        }
        gate.writer = None;
        wait_reply(&server, &session, turn).await;
        assert_reply(&server, &session, turn, &want, &note).await;
    }
}

#[tokio::test]
async fn a_server_killed_at_any_point_of_a_long_echo_turn_loses_nothing_of_the_reply() {
    let home = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let mut rng = Rng::new();
    // The port is held for the server across its restarts (nothing else can take it in between).
    let reserved = omnigent_testkit::net::PortReservation::new();
    let mut server = start_server(home.path(), reserved.port, 30_000).await;
    let (token, runner_id) = token_and_id("crash-echo");
    let _runner = start_runner(home.path(), &server.url, &token, "echo", ws.path(), &[]);
    let session = server
        .session_on_runner("echo", ws.path(), &runner_id)
        .await;
    for turn in 0..iterations() {
        // 850 KB of words (about 9,000, one delta each), different each turn.
        let mut prompt = String::with_capacity(870_000);
        let pad = "y".repeat(80);
        let mut w = 0;
        while prompt.len() < 850_000 {
            prompt.push_str(&format!("t{turn}w{w}{pad} "));
            w += 1;
        }
        let kill_after = rng.upto(2000);
        let note = format!("killed after {kill_after} deltas");
        let mut sse = server.stream(&session).await;
        let (status, body) = server.message(&session, &prompt).await;
        assert_eq!(status, 202, "{body}");
        let seen = std::cell::Cell::new(0);
        if kill_after > 0 {
            sse.until(|k, v| {
                if k == "response.output_text.delta" {
                    seen.set(seen.get() + 1);
                }
                seen.get() >= kill_after || is_idle(k, v)
            })
            .await;
        }
        drop(sse);
        server = crash_and_restart(server, home.path(), &runner_id, &session).await;
        wait_reply(&server, &session, turn).await;
        assert_reply(&server, &session, turn, &prompt, &note).await;
    }
}
