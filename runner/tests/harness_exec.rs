//! The exec harness with fake agent CLIs: small sh scripts the tests write, printing Claude Code stream-json
//! or Codex exec --json lines, failing, or refusing to die.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::user;
use omnigent_runner::harness::{
    self, HarnessConfig, HarnessError, HarnessKind, HistoryEntry, TurnOutcome,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A workspace with the fake agent `script` beside it; the config runs it with `sh` (executing a file just
/// written can fail with ETXTBSY while other test threads fork).
fn agent(script: &str) -> (tempfile::TempDir, std::path::PathBuf, HarnessConfig) {
    let base = tempfile::tempdir().unwrap();
    let ws = base.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let path = base.path().join("agent.sh");
    std::fs::write(&path, script).unwrap();
    let config = HarnessConfig {
        exec_command: Some(vec![
            "sh".into(),
            path.display().to_string(),
            "--flag".into(),
        ]),
        kill_grace: Some(Duration::from_millis(300)),
        ..HarnessConfig::default()
    };
    (base, ws, config)
}

async fn run(
    ws: &Path,
    config: HarnessConfig,
    prompt: &str,
) -> (Result<TurnOutcome, HarnessError>, Vec<Value>) {
    let turn = common::turn(ws, config, vec![user(prompt)]);
    let (sink, mut rx) = common::sink();
    let result = common::within(
        20,
        harness::run_turn(HarnessKind::Exec, &turn, &sink, &CancellationToken::new()),
    )
    .await;
    (result, common::drain(&mut rx))
}

#[tokio::test]
async fn claude_stream_json_maps_to_events_and_history() {
    let script = r#"
[ "$1" = "--flag" ] || { echo "flags lost: $*" >&2; exit 9; }
echo '{"type":"system","subtype":"init","session_id":"s1","tools":["Bash"]}'
printf '{"type":"assistant","message":{"content":[{"type":"text","text":"You said: %s"},{"type":"tool_use","id":"toolu_9","name":"Bash","input":{"command":"echo hi > out.txt"}}]}}\n' "$2"
echo hi > out.txt
echo '{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"toolu_9","content":[{"type":"text","text":"(no output)"}]}]}}'
echo '{"type":"assistant","message":{"content":[{"type":"text","text":"Wrote out.txt."}]}}'
echo '{"type":"result","subtype":"success","is_error":false,"result":"Wrote out.txt.","usage":{"input_tokens":11,"output_tokens":7}}'
"#;
    let (_base, ws, config) = agent(script);
    let (result, events) = run(&ws, config, "make out").await;
    let outcome = result.unwrap();
    assert_eq!(
        common::summarize(&events),
        [
            "delta:You said: make out",
            r#"call:toolu_9:Bash:{"command":"echo hi > out.txt"}"#,
            "output:toolu_9:(no output)",
            "delta:Wrote out.txt.",
        ]
    );
    // It ran in the workspace.
    assert_eq!(std::fs::read_to_string(ws.join("out.txt")).unwrap(), "hi\n");
    assert_eq!(
        outcome.new_history,
        [
            HistoryEntry::Assistant {
                text: "You said: make out".into()
            },
            HistoryEntry::ToolCall {
                call_id: "toolu_9".into(),
                name: "Bash".into(),
                arguments: r#"{"command":"echo hi > out.txt"}"#.into()
            },
            HistoryEntry::ToolResult {
                call_id: "toolu_9".into(),
                output: "(no output)".into()
            },
            HistoryEntry::Assistant {
                text: "Wrote out.txt.".into()
            },
        ]
    );
    assert_eq!(
        outcome.usage,
        Some(json!({"input_tokens": 11, "output_tokens": 7}))
    );
}

#[tokio::test]
async fn claude_partial_messages_are_not_doubled() {
    let script = r#"
echo '{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}}'
echo '{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo"}}}'
echo '{"type":"assistant","message":{"content":[{"type":"text","text":"Hello"}]}}'
echo '{"type":"result","subtype":"success","is_error":false,"result":"Hello"}'
"#;
    let (_base, ws, config) = agent(script);
    let (result, events) = run(&ws, config, "hi").await;
    assert_eq!(common::summarize(&events), ["delta:Hel", "delta:lo"]);
    assert_eq!(
        result.unwrap().new_history,
        [HistoryEntry::Assistant {
            text: "Hello".into()
        }]
    );
}

#[tokio::test]
async fn codex_json_and_plain_lines_map_to_events() {
    let script = r#"
# A heredoc: the echo of dash would turn the \n in the JSON into a real newline.
cat <<'EOF'
{"type":"thread.started","thread_id":"t1"}
{"type":"turn.started"}
{"type":"item.started","item":{"id":"item_1","type":"command_execution","command":"ls","aggregated_output":"","status":"in_progress"}}
{"type":"item.completed","item":{"id":"item_0","type":"reasoning","text":"**Looking around**"}}
{"type":"item.completed","item":{"id":"item_1","type":"command_execution","command":"ls","aggregated_output":"a.txt\n","exit_code":0,"status":"completed"}}
some plain words
{"type":"item.completed","item":{"id":"item_2","type":"agent_message","text":"There is a.txt."}}
{"type":"turn.completed","usage":{"input_tokens":100,"cached_input_tokens":20,"output_tokens":9}}
EOF
"#;
    let (_base, ws, config) = agent(script);
    let (result, events) = run(&ws, config, "look").await;
    let outcome = result.unwrap();
    assert_eq!(
        common::summarize(&events),
        [
            "response.reasoning_text.delta",
            r#"call:item_1:shell:{"command":"ls"}"#,
            "output:item_1:a.txt\n[exit code 0]",
            "delta:some plain words\n",
            "delta:There is a.txt.",
        ]
    );
    assert_eq!(outcome.new_history.len(), 3);
    assert_eq!(
        outcome.new_history[2],
        HistoryEntry::Assistant {
            text: "some plain words\nThere is a.txt.".into()
        }
    );
    assert_eq!(
        outcome.usage,
        Some(json!({"input_tokens": 100, "output_tokens": 9}))
    );
}

#[tokio::test]
async fn a_non_zero_exit_fails_with_the_stderr_tail() {
    let script = r#"
echo 'partial answer'
i=0; while [ $i -lt 30 ]; do echo "noise $i" >&2; i=$((i+1)); done
echo 'error: unknown flag --flag' >&2
exit 3
"#;
    let (_base, ws, config) = agent(script);
    let (result, events) = run(&ws, config, "hi").await;
    assert_eq!(common::summarize(&events), ["delta:partial answer\n"]);
    match result {
        Err(HarnessError::Exec(message)) => {
            assert!(message.contains("exited with code 3"), "{message}");
            assert!(message.ends_with("error: unknown flag --flag"), "{message}");
            assert!(
                message.contains("noise 29") && !message.contains("noise 5\n"),
                "only the tail: {message}"
            );
        }
        other => panic!("expected an exec error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_reported_failure_fails_the_turn() {
    let script = r#"
echo '{"type":"turn.failed","error":{"message":"stream disconnected before completion"}}'
"#;
    let (_base, ws, config) = agent(script);
    match run(&ws, config, "hi").await.0 {
        Err(HarnessError::Exec(message)) => {
            assert!(
                message.contains("stream disconnected before completion"),
                "{message}"
            )
        }
        other => panic!("expected an exec error, got {other:?}"),
    }
    let script = r#"echo '{"type":"result","subtype":"error_max_turns","is_error":true}'"#;
    let (_base, ws, config) = agent(script);
    match run(&ws, config, "hi").await.0 {
        Err(HarnessError::Exec(message)) => {
            assert!(message.contains("error_max_turns"), "{message}")
        }
        other => panic!("expected an exec error, got {other:?}"),
    }
}

#[tokio::test]
async fn missing_or_broken_commands_say_what_to_fix() {
    let ws = tempfile::tempdir().unwrap();
    match run(ws.path(), HarnessConfig::default(), "hi").await.0 {
        Err(HarnessError::NotConfigured(message)) => {
            assert!(message.contains("OMNIGENT_EXEC_COMMAND"), "{message}")
        }
        other => panic!("expected NotConfigured, got {other:?}"),
    }
    let config = HarnessConfig {
        exec_command: Some(vec!["/nonexistent/agent-cli".into()]),
        ..HarnessConfig::default()
    };
    match run(ws.path(), config, "hi").await.0 {
        Err(HarnessError::Exec(message)) => {
            assert!(
                message.contains("cannot start") && message.contains("OMNIGENT_EXEC_COMMAND"),
                "{message}"
            )
        }
        other => panic!("expected an exec error, got {other:?}"),
    }
}

/// Start `script`, wait for the pid it reports as text, interrupt, and check the turn ends and the pid dies.
async fn interrupt_kills(script: &str) {
    let (_base, ws, config) = agent(script);
    let turn = common::turn(&ws, config, vec![user("hi")]);
    let (sink, mut rx) = common::sink();
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let cancel = cancel.clone();
        async move { harness::run_turn(HarnessKind::Exec, &turn, &sink, &cancel).await }
    });
    let event = common::next_event(&mut rx).await;
    let pid: i32 = event["delta"]
        .as_str()
        .unwrap()
        .trim()
        .strip_prefix("child ")
        .unwrap()
        .parse()
        .unwrap();
    let watch = common::watch(pid);
    assert!(
        watch.is_alive(),
        "the background child died before the interrupt"
    );
    cancel.cancel();
    let result = common::within(10, task).await.unwrap();
    assert!(
        matches!(result, Err(HarnessError::Interrupted)),
        "{result:?}"
    );
    watch.gone().await;
}

#[tokio::test]
async fn an_interrupt_kills_the_process_group() {
    interrupt_kills("sleep 300 &\necho \"child $!\"\nwait\n").await;
}

#[tokio::test]
async fn an_agent_ignoring_sigterm_is_killed_after_the_grace() {
    // Ignored signals are inherited: the background child ignores SIGTERM too.
    interrupt_kills("trap '' TERM\nsleep 300 &\necho \"child $!\"\nwait\n").await;
}

#[tokio::test]
async fn background_jobs_do_not_keep_a_finished_turn_open() {
    // The job holds stdout open after the agent exits; the turn ends after the grace and kills it.
    let (_base, ws, config) = agent("sleep 300 &\necho \"child $!\"\n");
    let (result, events) = run(&ws, config, "hi").await;
    result.unwrap();
    let pid: i32 = events[0]["delta"]
        .as_str()
        .unwrap()
        .trim()
        .strip_prefix("child ")
        .unwrap()
        .parse()
        .unwrap();
    common::watch(pid).gone().await;
}

#[tokio::test]
async fn an_oversized_line_is_skipped_not_buffered() {
    let (_base, ws, config) = agent("head -c 9437184 /dev/zero | tr '\\0' x\necho\necho after\n");
    let (result, events) = run(&ws, config, "hi").await;
    result.unwrap();
    assert_eq!(
        common::summarize(&events),
        ["delta:[a line over 8 MiB was skipped]\n", "delta:after\n"]
    );
}

/// Two turns of one session (one [`ExecMemory`]): what the command got as arguments at each turn (one per
/// line, written by the script to `args.txt` in the workspace) and the second turn's outcome.
async fn two_turns(script: &str) -> (Vec<Vec<String>>, TurnOutcome) {
    let (_base, ws, config) = agent(script);
    let memory = harness::exec::ExecMemory::default();
    let mut history = vec![user("first")];
    let mut args = Vec::new();
    let mut last = None;
    for next in ["second", ""] {
        let mut turn = common::turn(&ws, config.clone(), history.clone());
        turn.exec = Some(memory.clone());
        let (sink, _rx) = common::sink();
        let outcome = common::within(
            20,
            harness::run_turn(HarnessKind::Exec, &turn, &sink, &CancellationToken::new()),
        )
        .await
        .unwrap();
        let written = std::fs::read_to_string(ws.join("args.txt")).unwrap();
        args.push(
            written
                .split('\u{1}')
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        );
        history.extend(outcome.new_history.clone());
        last = Some(outcome);
        if next.is_empty() {
            break;
        }
        history.push(user(next));
    }
    (args, last.unwrap())
}

/// Writes its arguments to args.txt, separated by \x01 (a prompt may hold newlines).
const LOG_ARGS: &str = r#"
shift  # the script's own --flag
out=""; sep=""
for a in "$@"; do out="$out$sep$a"; sep=$(printf '\001'); done
printf '%s' "$out" > args.txt
"#;

#[tokio::test]
async fn claude_code_resumes_its_session_at_the_next_turn() {
    let script = format!(
        "{LOG_ARGS}\n{}",
        r#"
echo '{"type":"system","subtype":"init","session_id":"sess-42"}'
echo '{"type":"assistant","message":{"content":[{"type":"text","text":"ok"}]}}'
echo '{"type":"result","subtype":"success","is_error":false,"session_id":"sess-42"}'
"#
    );
    let (args, _) = two_turns(&script).await;
    assert_eq!(args[0], ["first"]);
    assert_eq!(args[1], ["--resume", "sess-42", "second"]);
}

#[tokio::test]
async fn codex_exec_resumes_its_thread_at_the_next_turn() {
    let script = format!(
        "{LOG_ARGS}\n{}",
        r#"
echo '{"type":"thread.started","thread_id":"th-7"}'
echo '{"type":"item.completed","item":{"id":"i1","type":"agent_message","text":"ok"}}'
echo '{"type":"turn.completed","usage":{"input_tokens":1,"output_tokens":1}}'
"#
    );
    let (args, _) = two_turns(&script).await;
    assert_eq!(args[0], ["first"]);
    assert_eq!(args[1], ["resume", "th-7", "second"]);
}

#[tokio::test]
async fn a_command_without_sessions_gets_the_conversation_in_its_prompt() {
    let script = format!("{LOG_ARGS}\necho \"reply to turn $#\"\n");
    let (args, outcome) = two_turns(&script).await;
    assert_eq!(args[0], ["first"]);
    assert_eq!(
        args[1],
        [
            "This conversation continues; here is what was said so far.\n\n\
          User: first\n\n\
          Assistant: reply to turn 1\n\n\
          The user's new message:\nsecond"
        ]
    );
    assert_eq!(
        outcome.new_history,
        [HistoryEntry::Assistant {
            text: "reply to turn 1\n".into()
        }]
    );
}
