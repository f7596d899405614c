//! The built-in tools against a real temp workspace: confinement, shell limits, output caps.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use omnigent_runner::harness::HarnessError;
use omnigent_runner::harness::tools::{self, OUTPUT_CAP, TRUNCATED_MARKER};
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn run(name: &str, args: serde_json::Value, workspace: &Path) -> String {
    run_with(name, args, workspace, Duration::from_secs(20)).await
}

async fn run_with(
    name: &str,
    args: serde_json::Value,
    workspace: &Path,
    timeout: Duration,
) -> String {
    common::within(
        30,
        tools::run(
            name,
            &args.to_string(),
            workspace,
            timeout,
            &CancellationToken::new(),
        ),
    )
    .await
    .unwrap()
}

/// A workspace and, beside it, a directory the tools must never reach.
fn dirs() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let base = tempfile::tempdir().unwrap();
    let workspace = base.path().join("ws");
    let outside = base.path().join("outside");
    std::fs::create_dir(&workspace).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "top secret").unwrap();
    (base, workspace, outside)
}

fn assert_refused(output: &str) {
    assert!(
        output.starts_with("error: ") && output.contains("outside the workspace"),
        "expected a refusal, got {output:?}"
    );
}

#[tokio::test]
async fn write_read_and_list_stay_in_the_workspace() {
    let (_base, ws, _outside) = dirs();
    let out = run(
        "write_file",
        json!({"path": "src/deep/a.txt", "content": "hello"}),
        &ws,
    )
    .await;
    assert_eq!(out, "wrote 5 bytes to src/deep/a.txt");
    assert_eq!(
        std::fs::read_to_string(ws.join("src/deep/a.txt")).unwrap(),
        "hello"
    );

    assert_eq!(
        run("read_file", json!({"path": "src/deep/a.txt"}), &ws).await,
        "hello"
    );
    assert_eq!(
        run(
            "read_file",
            json!({"path": "src/./deep/../deep/a.txt"}),
            &ws
        )
        .await,
        "hello"
    );
    // An absolute path inside the workspace is fine.
    let absolute = ws.join("src/deep/a.txt");
    assert_eq!(
        run("read_file", json!({"path": absolute}), &ws).await,
        "hello"
    );

    std::fs::write(ws.join("top.txt"), "").unwrap();
    assert_eq!(run("list_dir", json!({}), &ws).await, "src/\ntop.txt");
    assert_eq!(
        run("list_dir", json!({"path": "src/deep"}), &ws).await,
        "a.txt"
    );

    let missing = run("read_file", json!({"path": "nope.txt"}), &ws).await;
    assert!(
        missing.starts_with("error: ") && missing.contains("does not exist"),
        "{missing}"
    );
    let dir = run("read_file", json!({"path": "src"}), &ws).await;
    assert!(dir.contains("is a directory"), "{dir}");
    let dir = run("write_file", json!({"path": "src", "content": "x"}), &ws).await;
    assert!(dir.contains("is a directory"), "{dir}");
    // A FIFO would block a read or a write forever.
    common::fifo(&ws, "pipe");
    let pipe = run("read_file", json!({"path": "pipe"}), &ws).await;
    assert!(pipe.contains("is not a regular file"), "{pipe}");
    let pipe = run("write_file", json!({"path": "pipe", "content": "x"}), &ws).await;
    assert!(pipe.contains("is not a regular file"), "{pipe}");
}

#[tokio::test]
async fn dot_dot_escapes_are_refused() {
    let (base, ws, _outside) = dirs();
    assert_refused(&run("read_file", json!({"path": "../outside/secret.txt"}), &ws).await);
    assert_refused(&run("list_dir", json!({"path": ".."}), &ws).await);
    assert_refused(
        &run(
            "write_file",
            json!({"path": "../escaped.txt", "content": "x"}),
            &ws,
        )
        .await,
    );
    // Through a directory that does not exist yet: create_dir_all must not be reached.
    assert_refused(
        &run(
            "write_file",
            json!({"path": "new/../../escaped2.txt", "content": "x"}),
            &ws,
        )
        .await,
    );
    assert_refused(&run("write_file", json!({"path": "..", "content": "x"}), &ws).await);
    assert!(!base.path().join("escaped.txt").exists());
    assert!(!base.path().join("escaped2.txt").exists());
    assert!(
        !ws.join("new").exists(),
        "a refused write created a directory"
    );
}

#[tokio::test]
async fn absolute_paths_outside_are_refused() {
    let (_base, ws, outside) = dirs();
    assert_refused(
        &run(
            "read_file",
            json!({"path": outside.join("secret.txt")}),
            &ws,
        )
        .await,
    );
    assert_refused(&run("read_file", json!({"path": "/etc/hostname"}), &ws).await);
    assert_refused(&run("list_dir", json!({"path": "/"}), &ws).await);
    let target = outside.join("written.txt");
    assert_refused(&run("write_file", json!({"path": target, "content": "x"}), &ws).await);
    assert!(!target.exists());
}

#[tokio::test]
async fn symlinks_leading_outside_are_refused() {
    let (_base, ws, outside) = dirs();
    std::os::unix::fs::symlink(&outside, ws.join("door")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), ws.join("secret-link")).unwrap();
    std::os::unix::fs::symlink(outside.join("not-yet.txt"), ws.join("dangling")).unwrap();

    assert_refused(&run("read_file", json!({"path": "door/secret.txt"}), &ws).await);
    assert_refused(&run("read_file", json!({"path": "secret-link"}), &ws).await);
    assert_refused(&run("list_dir", json!({"path": "door"}), &ws).await);
    // A write whose parent is a symlink out, a write through a symlinked file, a new dir under the link.
    assert_refused(
        &run(
            "write_file",
            json!({"path": "door/new.txt", "content": "x"}),
            &ws,
        )
        .await,
    );
    assert_refused(
        &run(
            "write_file",
            json!({"path": "door/sub/new.txt", "content": "x"}),
            &ws,
        )
        .await,
    );
    assert_refused(
        &run(
            "write_file",
            json!({"path": "secret-link", "content": "x"}),
            &ws,
        )
        .await,
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("secret.txt")).unwrap(),
        "top secret"
    );
    assert!(!outside.join("new.txt").exists() && !outside.join("sub").exists());
    // A dangling symlink would create its target outside.
    let dangling = run(
        "write_file",
        json!({"path": "dangling", "content": "x"}),
        &ws,
    )
    .await;
    assert!(dangling.starts_with("error: "), "{dangling}");
    assert!(!outside.join("not-yet.txt").exists());
    // The listing shows links, without following them.
    assert_eq!(
        run("list_dir", json!({}), &ws).await,
        "dangling@\ndoor@\nsecret-link@"
    );
}

#[tokio::test]
async fn symlinks_inside_the_workspace_work() {
    let (_base, ws, _outside) = dirs();
    std::fs::create_dir(ws.join("real")).unwrap();
    std::os::unix::fs::symlink(ws.join("real"), ws.join("alias")).unwrap();
    let out = run(
        "write_file",
        json!({"path": "alias/f.txt", "content": "via link"}),
        &ws,
    )
    .await;
    assert_eq!(out, "wrote 8 bytes to real/f.txt");
    assert_eq!(
        run("read_file", json!({"path": "real/f.txt"}), &ws).await,
        "via link"
    );
}

#[tokio::test]
async fn shell_runs_in_the_workspace_with_exit_code_and_stderr() {
    let (_base, ws, _outside) = dirs();
    let out = run(
        "shell",
        json!({"command": "pwd; echo oops >&2; echo made > made.txt; exit 3"}),
        &ws,
    )
    .await;
    let real = std::fs::canonicalize(&ws).unwrap();
    assert!(out.contains(&format!("{}\n", real.display())), "{out}");
    assert!(out.contains("oops\n"), "{out}");
    assert!(out.ends_with("[exit code 3]"), "{out}");
    assert_eq!(
        std::fs::read_to_string(ws.join("made.txt")).unwrap(),
        "made\n"
    );
    // stdin is closed, not inherited: a read gets EOF at once.
    let out = run("shell", json!({"command": "cat; echo after-cat"}), &ws).await;
    assert_eq!(out, "after-cat\n[exit code 0]");
}

#[tokio::test]
async fn shell_timeout_kills_the_whole_group() {
    let (_base, ws, _outside) = dirs();
    // The background sleep holds the output pipe open: only a group kill ends it.
    let out = run_with(
        "shell",
        json!({"command": "sleep 300 & echo bg=$!; wait"}),
        &ws,
        Duration::from_millis(300),
    )
    .await;
    assert!(
        out.contains("[killed: the command did not finish within 0.3 s"),
        "{out}"
    );
    let pid: i32 = out
        .split("bg=")
        .nth(1)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    common::watch(pid).gone().await;
}

#[tokio::test]
async fn leftover_background_jobs_do_not_hold_the_tool() {
    let (_base, ws, _outside) = dirs();
    let out = run("shell", json!({"command": "sleep 300 & echo bg=$!"}), &ws).await;
    assert!(out.ends_with("[exit code 0]"), "{out}");
    let pid: i32 = out
        .split("bg=")
        .nth(1)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    common::watch(pid).gone().await;
}

#[tokio::test]
async fn shell_cancel_interrupts_and_kills() {
    let (_base, ws, _outside) = dirs();
    let cancel = CancellationToken::new();
    let fifo = common::fifo(&ws, "pid.fifo");
    let args = json!({"command": "echo $$ > pid.fifo; exec sleep 300"}).to_string();
    let run = tokio::spawn({
        let (ws, cancel) = (ws.clone(), cancel.clone());
        async move { tools::run("shell", &args, &ws, Duration::from_secs(60), &cancel).await }
    });
    let pid: i32 = common::read_line(fifo).await.parse().unwrap();
    let watch = common::watch(pid);
    cancel.cancel();
    let result = common::within(5, run).await.unwrap();
    assert!(
        matches!(result, Err(HarnessError::Interrupted)),
        "{result:?}"
    );
    watch.gone().await;
}

#[tokio::test]
async fn outputs_are_capped_with_a_marker() {
    let (_base, ws, _outside) = dirs();
    let out = run(
        "shell",
        json!({"command": "head -c 200000 /dev/zero | tr '\\0' a"}),
        &ws,
    )
    .await;
    assert!(out.contains(TRUNCATED_MARKER), "no marker");
    assert!(
        out.len() <= OUTPUT_CAP + 100,
        "output of {} bytes",
        out.len()
    );
    assert!(out.ends_with("[exit code 0]"));

    std::fs::write(ws.join("big.txt"), "b".repeat(100_000)).unwrap();
    let out = run("read_file", json!({"path": "big.txt"}), &ws).await;
    assert_eq!(out.len(), OUTPUT_CAP + TRUNCATED_MARKER.len());
    assert!(out.ends_with(TRUNCATED_MARKER));

    std::fs::write(ws.join("exact.txt"), "c".repeat(OUTPUT_CAP)).unwrap();
    let out = run("read_file", json!({"path": "exact.txt"}), &ws).await;
    assert_eq!(
        out.len(),
        OUTPUT_CAP,
        "a file of exactly the cap is not truncated"
    );
}

#[tokio::test]
async fn bad_calls_become_tool_errors() {
    let (_base, ws, _outside) = dirs();
    let out = common::within(
        5,
        tools::run(
            "rm_rf",
            "{}",
            &ws,
            Duration::from_secs(5),
            &CancellationToken::new(),
        ),
    )
    .await
    .unwrap();
    assert!(out.starts_with("error: unknown tool \"rm_rf\""), "{out}");
    let out = common::within(
        5,
        tools::run(
            "read_file",
            "{not json",
            &ws,
            Duration::from_secs(5),
            &CancellationToken::new(),
        ),
    )
    .await
    .unwrap();
    assert!(
        out.starts_with("error: the arguments of read_file are not valid JSON"),
        "{out}"
    );
    let out = run("write_file", json!({"path": "x.txt"}), &ws).await;
    assert_eq!(out, "error: missing string argument \"content\"");
}

#[test]
fn definitions_name_every_tool_for_both_vendors() {
    let names = ["shell", "read_file", "write_file", "list_dir"];
    let openai = tools::openai_definitions();
    let anthropic = tools::anthropic_definitions();
    for (i, name) in names.iter().enumerate() {
        assert_eq!(openai[i]["type"], "function");
        assert_eq!(openai[i]["function"]["name"], *name);
        assert_eq!(openai[i]["function"]["parameters"]["type"], "object");
        assert_eq!(anthropic[i]["name"], *name);
        assert_eq!(anthropic[i]["input_schema"]["type"], "object");
    }
    assert_eq!(openai.as_array().unwrap().len(), 4);
    assert_eq!(anthropic.as_array().unwrap().len(), 4);
}
