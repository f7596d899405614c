//! Issue 9, hole 1, through the real binary on a real full file system: `OMNIGENT_HOME` on a small tmpfs
//! mounted by the test, `omnigent server run`, an echo `omnigent runner`, and a daemon that adopts the server
//! so `omnigent status` can be read. Fill the disk, write, free it, write, restart, read back: a write that
//! could not be stored is refused (507 `storage_full`), never forwarded to the runner, and shown in
//! `/health` and `status`; once space returns the same server takes writes again, and after a restart
//! everything acknowledged is there and nothing refused is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Output;

use serde_json::{Value, json};

use common::{Tmpfs, omnigent, start_runner, start_server, summary, token_and_id};

/// `omnigent <args>` against the daemon of `home` whose server port is `port`.
fn cli(home: &Path, port: u16, args: &[&str]) -> Output {
    omnigent(home)
        .args(args)
        .env("OMNIGENT_SERVER_PORT", port.to_string())
        .env_remove("NOTIFY_SOCKET")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn cli_json(home: &Path, port: u16, args: &[&str]) -> Value {
    let out = cli(home, port, args);
    assert!(
        out.status.success(),
        "omnigent {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Stops the daemon (and the server it adopted) however the test ends.
struct Daemon<'a> {
    home: &'a Path,
    port: u16,
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        let _ = cli(self.home, self.port, &["stop", "--json"]);
    }
}

fn message(text: &str) -> Value {
    json!({"type": "message", "data": {"role": "user", "content": [{"type": "input_text", "text": text}]}})
}

fn is_idle(kind: &str, v: &Value) -> bool {
    kind == "session.status" && v["status"] == "idle"
}

#[tokio::test]
async fn a_full_disk_refuses_writes_shows_in_status_and_recovers_without_a_restart() {
    let Some(fs) = Tmpfs::mount("24m") else {
        return;
    };
    let home = fs.path();
    let ws = tempfile::tempdir().unwrap();
    let mut server = start_server(home, 0, 10_000).await;
    let port = server.port();
    // A daemon on the same port adopts this server: `omnigent status` then reads the server's storage.
    let started = cli_json(home, port, &["start", "--json"]);
    let _daemon = Daemon { home, port };
    assert_eq!(started["server"]["state"], "adopted", "{started:#}");
    let st = cli_json(home, port, &["status", "--json"]);
    assert_eq!(st["server"]["storage"]["ok"], true, "{st:#}");
    let server_pid = st["server"]["pid"].clone();

    let (token, runner_id) = token_and_id("full");
    let mut runner = start_runner(home, &server.url, &token, "echo", ws.path(), &[]);
    let session = server
        .session_on_runner("echo", ws.path(), &runner_id)
        .await;
    let mut sse = server.stream(&session).await;
    let events = format!("/v1/sessions/{session}/events");
    let (status, body) = server.post(&events, message("before")).await;
    assert_eq!(status, 202, "{body}");
    sse.until(is_idle).await;
    runner
        .wait_log(&[omnigent_runner::TURN_ENDED, "turn=1"])
        .await;

    // Full: every write is refused with 507, naming the file system and its free space.
    let filler = fs.fill();
    for n in 0..4 {
        let (status, body) = server.post(&events, message(&format!("refused{n}"))).await;
        assert_eq!(status, 507, "write {n} on a full disk: {body}");
        assert_eq!(body["error"]["code"], "storage_full", "{body}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains(&home.display().to_string()), "{msg}");
        assert!(msg.contains("free"), "{msg}");
    }
    let (status, body) = server
        .post("/v1/sessions", json!({"agent_id": "echo"}))
        .await;
    assert_eq!(status, 507, "a session created on a full disk: {body}");
    let (status, health) = server.get("/health").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["storage"]["ok"], false, "{health}");
    assert_eq!(health["storage"]["code"], "storage_full", "{health}");
    let (_, info) = server.get("/v1/info").await;
    assert_eq!(info["storage"]["ok"], false, "{info}");
    let st = cli_json(home, port, &["status", "--json"]);
    assert_eq!(st["server"]["storage"]["ok"], false, "{st:#}");
    assert_eq!(st["server"]["storage"]["code"], "storage_full", "{st:#}");
    // Shown, not "cured" by a restart: the same server keeps running.
    assert_eq!(st["server"]["pid"], server_pid, "{st:#}");
    assert_eq!(st["server"]["restarts"], 0, "{st:#}");
    let text = cli(home, port, &["status"]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("STORAGE IS FAILING"), "{text}");
    assert!(text.contains("storage failing: not stored"), "{text}");

    // Space returns: the same server recovers by itself.
    std::fs::remove_file(filler).unwrap();
    let (status, health) = server.get("/health").await;
    assert_eq!((status, health.clone()), (200, json!({"status": "ok"})));
    let st = cli_json(home, port, &["status", "--json"]);
    assert_eq!(st["server"]["storage"]["ok"], true, "{st:#}");
    let (status, body) = server.post(&events, message("after")).await;
    assert_eq!(status, 202, "{body}");
    // Everything the stream showed since the disk filled belongs to this turn: the runner never got (and so
    // never echoed) a refused message.
    let seen = sse.until(is_idle).await;
    let all = format!("{seen:?}");
    assert!(
        !all.contains("refused"),
        "a refused message reached the runner: {all}"
    );
    assert!(all.contains("after"), "{all}");
    let (status, created) = server
        .post("/v1/sessions", json!({"agent_id": "echo"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let second = created["id"].as_str().unwrap().to_owned();
    let (status, _) = server
        .patch(&format!("/v1/sessions/{second}"), json!({"title": "kept"}))
        .await;
    assert_eq!(status, 200);

    // Restart: everything acknowledged was stored, nothing refused was.
    drop(sse);
    drop(runner);
    let _ = cli(home, port, &["stop", "--json"]);
    server.proc.kill();
    let server = start_server(home, 0, 10_000).await;
    assert_eq!(
        summary(&server.transcript(&session).await),
        [
            "user:before",
            "assistant:before",
            "user:after",
            "assistant:after"
        ]
    );
    let (status, kept) = server.get(&format!("/v1/sessions/{second}")).await;
    assert_eq!(status, 200, "{kept}");
    assert_eq!(kept["title"], "kept");
    let (_, list) = server.get("/v1/sessions?limit=100").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "{list}");
}
