//! The `claude-sdk` harness with the real Claude Code CLI (testkit's pinned install) against a fake Anthropic
//! Messages API on 127.0.0.1, HOME and its config dir in the test's temp dir: one process kept across turns,
//! its Write tool really writing, interrupts, a killed CLI resumed, missing binary and credentials. The
//! line mapping is checked against transcripts recorded from the real CLI (tests/golden/claude-code-*.jsonl).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{Canned, FakeVendor, user};
use omnigent_runner::harness::claude_code::{ClaudeCode, Options, lines};
use omnigent_runner::harness::{
    self, HarnessConfig, HarnessError, HarnessKind, HistoryEntry, Turn, TurnOutcome,
};
use omnigent_testkit::vendor::Step;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

fn event(payload: Value) -> String {
    format!(
        "event: {}\ndata: {payload}\n\n",
        payload["type"].as_str().unwrap()
    )
}

fn message_start(id: &str) -> String {
    event(json!({"type": "message_start", "message": {
        "id": id, "type": "message", "role": "assistant", "content": [], "model": "claude-test",
        "stop_reason": null, "usage": {"input_tokens": 12, "output_tokens": 1}}}))
}

fn text_block(index: u64, parts: &[&str]) -> Vec<String> {
    let mut events = vec![event(
        json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
    )];
    for part in parts {
        events.push(event(json!({"type": "content_block_delta", "index": index,
            "delta": {"type": "text_delta", "text": part}})));
    }
    events.push(event(json!({"type": "content_block_stop", "index": index})));
    events
}

fn tool_block(index: u64, id: &str, name: &str, input: &Value) -> Vec<String> {
    vec![
        event(json!({"type": "content_block_start", "index": index,
            "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}})),
        event(json!({"type": "content_block_delta", "index": index,
            "delta": {"type": "input_json_delta", "partial_json": input.to_string()}})),
        event(json!({"type": "content_block_stop", "index": index})),
    ]
}

fn message_end(stop_reason: &str) -> Vec<String> {
    vec![
        event(
            json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
            "usage": {"output_tokens": 7}}),
        ),
        event(json!({"type": "message_stop"})),
    ]
}

/// A whole streamed answer of text `parts`.
fn answer(id: &str, parts: &[&str]) -> Canned {
    let mut chunks = vec![message_start(id)];
    chunks.extend(text_block(0, parts));
    chunks.extend(message_end("end_turn"));
    Canned::stream(chunks)
}

/// A temp dir with a workspace and a home for the CLI (never the real one).
struct Place {
    _base: tempfile::TempDir,
    ws: PathBuf,
    home: PathBuf,
}

fn place() -> Place {
    let base = tempfile::tempdir().unwrap();
    let ws = base.path().join("ws");
    let home = base.path().join("home");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::create_dir_all(home.join(".claude")).unwrap();
    // Canonical: the CLI reports and resolves paths through symlinks (/tmp may be one).
    let ws = ws.canonicalize().unwrap();
    Place {
        _base: base,
        ws,
        home,
    }
}

fn options(home: &Path, binary: &Path) -> Options {
    Options {
        env: vec![
            ("HOME".into(), home.display().to_string()),
            (
                "CLAUDE_CONFIG_DIR".into(),
                home.join(".claude").display().to_string(),
            ),
            ("OMNIGENT_CLAUDE_PATH".into(), binary.display().to_string()),
        ],
        interrupt_grace: Some(Duration::from_secs(2)),
        ..Options::default()
    }
}

fn config(vendor: &FakeVendor) -> HarnessConfig {
    HarnessConfig {
        model: Some("claude-sonnet-4-5".into()),
        base_url: Some(vendor.url.clone()),
        api_key: Some("test".into()),
        ..HarnessConfig::default()
    }
}

fn turn(ws: &Path, config: HarnessConfig, prompt: &str, agent: &ClaudeCode) -> Turn {
    let mut turn = common::turn(ws, config, vec![user(prompt)]);
    turn.claude_code = Some(agent.clone());
    turn
}

async fn run(turn: &Turn) -> (Result<TurnOutcome, HarnessError>, Vec<Value>) {
    let (sink, mut rx) = common::sink();
    let result = common::within(
        60,
        harness::run_turn(
            HarnessKind::ClaudeCode,
            turn,
            &sink,
            &CancellationToken::new(),
        ),
    )
    .await;
    (result, common::drain(&mut rx))
}

/// The model requests the vendor got (Claude Code may call other endpoints; none are expected offline).
fn model_requests(vendor: &FakeVendor) -> Vec<Value> {
    vendor
        .requests()
        .into_iter()
        .inspect(|r| assert!(r.path.starts_with("/v1/messages"), "unexpected {}", r.path))
        .map(|r| r.body)
        .collect()
}

fn texts(request: &Value) -> String {
    request["messages"].to_string()
}

#[tokio::test]
async fn two_turns_share_one_process_and_the_second_request_carries_the_first() {
    let p = place();
    let vendor = FakeVendor::start(vec![
        answer("msg_1", &["Nice to ", "meet you, Ada."]),
        answer("msg_2", &["Your name is Ada."]),
    ])
    .await;
    let agent = ClaudeCode::spawn(options(&p.home, &omnigent_testkit::agent_cli("claude")));
    let (first, events) = run(&turn(&p.ws, config(&vendor), "My name is Ada.", &agent)).await;
    let first = first.unwrap();
    assert_eq!(
        common::summarize(&events),
        ["delta:Nice to ", "delta:meet you, Ada."]
    );
    assert_eq!(
        first.new_history,
        [HistoryEntry::Assistant {
            text: "Nice to meet you, Ada.".into()
        }]
    );
    assert_eq!(first.usage.as_ref().unwrap()["output_tokens"], 7);
    let info = agent.info().await;
    assert!(info.claude_session.is_some());
    let pid = info.pid.unwrap();

    let (second, events) = run(&turn(&p.ws, config(&vendor), "What is my name?", &agent)).await;
    second.unwrap();
    assert_eq!(common::summarize(&events), ["delta:Your name is Ada."]);
    let requests = model_requests(&vendor);
    assert_eq!(requests.len(), 2);
    let carried = texts(&requests[1]);
    assert!(carried.contains("My name is Ada."), "{carried}");
    assert!(carried.contains("Nice to meet you, Ada."), "{carried}");
    assert!(carried.contains("What is my name?"), "{carried}");
    assert_eq!(requests[1]["model"], "claude-sonnet-4-5");
    // One process for both turns.
    let info = agent.info().await;
    assert_eq!((info.pid, info.spawns), (Some(pid), 1));
}

#[tokio::test]
async fn the_write_tool_really_writes_and_is_streamed_as_call_and_output() {
    let p = place();
    let target = p.ws.join("hello.txt");
    let input = json!({"file_path": target.display().to_string(), "content": "hi from claude\n"});
    let mut tool = vec![message_start("msg_1")];
    tool.extend(text_block(0, &["Writing it."]));
    tool.extend(tool_block(1, "toolu_01", "Write", &input));
    tool.extend(message_end("tool_use"));
    let vendor = FakeVendor::start(vec![
        Canned::stream(tool),
        answer("msg_2", &["Wrote hello.txt."]),
    ])
    .await;
    let agent = ClaudeCode::spawn(options(&p.home, &omnigent_testkit::agent_cli("claude")));
    let (result, events) = run(&turn(&p.ws, config(&vendor), "write hello.txt", &agent)).await;
    let outcome = result.unwrap();
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "hi from claude\n"
    );
    let summary = common::summarize(&events);
    assert_eq!(summary[0], "delta:Writing it.");
    assert_eq!(summary[1], format!("call:toolu_01:Write:{input}"));
    assert!(summary[2].starts_with("output:toolu_01:"), "{summary:?}");
    assert!(summary[2].contains("hello.txt"), "{summary:?}");
    assert_eq!(summary[3..], ["delta:Wrote hello.txt."]);
    assert!(matches!(
        &outcome.new_history[..],
        [
            HistoryEntry::Assistant { .. },
            HistoryEntry::ToolCall { name, .. },
            HistoryEntry::ToolResult { call_id, .. },
            HistoryEntry::Assistant { .. },
        ] if name == "Write" && call_id == "toolu_01"
    ));
    // The tool's result went back to the model.
    let requests = model_requests(&vendor);
    assert!(
        texts(&requests[1]).contains("tool_result"),
        "{}",
        texts(&requests[1])
    );
}

#[tokio::test]
async fn an_interrupt_mid_stream_ends_the_turn_and_the_agent_stays_usable() {
    let p = place();
    let hold = Arc::new(Notify::new());
    let mut steps = vec![Step::Chunk(message_start("msg_1"))];
    steps.extend(
        text_block(0, &["Counting: 1, 2, "])
            .into_iter()
            .take(2)
            .map(Step::Chunk),
    );
    steps.push(Step::Wait(hold.clone()));
    let vendor =
        FakeVendor::start(vec![Canned::from(steps), answer("msg_2", &["Still here."])]).await;
    let agent = ClaudeCode::spawn(options(&p.home, &omnigent_testkit::agent_cli("claude")));
    let t = turn(&p.ws, config(&vendor), "count forever", &agent);
    let (sink, mut rx) = common::sink();
    let cancel = CancellationToken::new();
    let running = harness::run_turn(HarnessKind::ClaudeCode, &t, &sink, &cancel);
    tokio::pin!(running);
    // The first delta arrives: the turn is mid-stream.
    let first = tokio::select! {
        e = common::next_event(&mut rx) => e,
        r = &mut running => panic!("the turn ended before streaming: {r:?}"),
    };
    assert_eq!(first["delta"], "Counting: 1, 2, ");
    cancel.cancel();
    let result = common::within(30, running).await;
    assert!(
        matches!(result, Err(HarnessError::Interrupted)),
        "{result:?}"
    );
    let (next, events) = run(&turn(&p.ws, config(&vendor), "are you there?", &agent)).await;
    next.unwrap();
    assert_eq!(common::summarize(&events), ["delta:Still here."]);
    hold.notify_waiters();
}

#[tokio::test]
async fn a_cli_killed_between_turns_is_resumed_with_its_context() {
    let p = place();
    let vendor = FakeVendor::start(vec![
        answer("msg_1", &["Noted: the code word is heron."]),
        answer("msg_2", &["It was heron."]),
    ])
    .await;
    let agent = ClaudeCode::spawn(options(&p.home, &omnigent_testkit::agent_cli("claude")));
    let (first, _) = run(&turn(
        &p.ws,
        config(&vendor),
        "The code word is heron.",
        &agent,
    ))
    .await;
    first.unwrap();
    let info = agent.info().await;
    let pid = i32::try_from(info.pid.unwrap()).unwrap();
    let watch = common::watch(pid);
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    watch.gone().await;

    let (second, events) = run(&turn(
        &p.ws,
        config(&vendor),
        "What was the code word?",
        &agent,
    ))
    .await;
    second.unwrap();
    assert_eq!(common::summarize(&events), ["delta:It was heron."]);
    let requests = model_requests(&vendor);
    let carried = texts(&requests[1]);
    assert!(carried.contains("The code word is heron."), "{carried}");
    assert!(
        carried.contains("Noted: the code word is heron."),
        "{carried}"
    );
    let after = agent.info().await;
    assert_eq!(after.spawns, 2);
    assert_ne!(after.pid, info.pid);
    assert_eq!(after.claude_session, info.claude_session);
}

#[tokio::test]
async fn a_missing_binary_and_missing_credentials_fail_the_turn_naming_the_fix() {
    let p = place();
    let vendor = FakeVendor::start(Vec::<Canned>::new()).await;
    let missing = ClaudeCode::spawn(options(&p.home, Path::new("/nonexistent/claude")));
    let (result, _) = run(&turn(&p.ws, config(&vendor), "hi", &missing)).await;
    match result {
        Err(HarnessError::NotConfigured(m)) => {
            assert!(
                m.contains("npm install -g @anthropic-ai/claude-code"),
                "{m}"
            );
            assert!(m.contains("OMNIGENT_CLAUDE_PATH"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    let agent = ClaudeCode::spawn(options(&p.home, &omnigent_testkit::agent_cli("claude")));
    let no_key = HarnessConfig {
        api_key: None,
        ..config(&vendor)
    };
    let (result, _) = run(&turn(&p.ws, no_key.clone(), "hi", &agent)).await;
    match result {
        Err(HarnessError::NotConfigured(m)) => {
            assert!(m.contains("claude login"), "{m}");
            assert!(m.contains("ANTHROPIC_API_KEY"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    // An existing login counts as credentials (the CLI then fails against the fake, which has no answers).
    std::fs::write(p.home.join(".claude/.credentials.json"), "{}").unwrap();
    let (result, _) = run(&turn(&p.ws, no_key, "hi", &agent)).await;
    assert!(
        !matches!(result, Err(HarnessError::NotConfigured(_))),
        "{result:?}"
    );
    assert!(vendor.requests().is_empty() || result.is_err());
}

/// The transcripts in tests/golden were recorded from the real CLI against a fake Messages API.
fn golden(name: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn map(lines_in: &[Value]) -> (Vec<String>, Option<lines::Ended>, lines::Lines<'static>) {
    let (sink, mut rx) = common::sink();
    let sink: &'static _ = Box::leak(Box::new(sink));
    let mut mapper = lines::Lines::new("resp_test", sink);
    let mut ended = None;
    for line in lines_in {
        if let Some(e) = mapper.line(line) {
            ended = Some(e);
            break;
        }
    }
    (common::summarize(&common::drain(&mut rx)), ended, mapper)
}

#[test]
fn golden_text_turn_maps_to_deltas_history_and_usage() {
    let (summary, ended, mapper) = map(&golden("claude-code-text.jsonl"));
    assert_eq!(summary, ["delta:Hello ", "delta:there"]);
    assert_eq!(ended, Some(lines::Ended::Done));
    assert_eq!(
        mapper.new_history,
        [HistoryEntry::Assistant {
            text: "Hello there".into()
        }]
    );
    assert_eq!(
        mapper.usage,
        Some(json!({"input_tokens": 10, "output_tokens": 5}))
    );
    assert!(mapper.session_id.is_some());
}

#[test]
fn golden_tool_turn_maps_to_call_and_output_items() {
    let (summary, ended, mapper) = map(&golden("claude-code-tool.jsonl"));
    assert_eq!(ended, Some(lines::Ended::Done));
    assert_eq!(summary.len(), 4, "{summary:?}");
    assert_eq!(summary[0], "delta:Writing it.");
    assert!(
        summary[1].starts_with("call:toolu_01:Write:{"),
        "{summary:?}"
    );
    assert!(summary[2].starts_with("output:toolu_01:"), "{summary:?}");
    assert_eq!(summary[3], "delta:Done.");
    assert_eq!(mapper.new_history.len(), 4);
}

#[test]
fn golden_error_turn_fails_with_the_cli_message() {
    let (summary, ended, _) = map(&golden("claude-code-error.jsonl"));
    assert!(summary.is_empty(), "{summary:?}");
    match ended {
        Some(lines::Ended::Failed(m)) => assert!(!m.is_empty()),
        other => panic!("{other:?}"),
    }
}
