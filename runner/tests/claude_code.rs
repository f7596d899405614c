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
use omnigent_proto::elicitation::{Action, Resolution};
use omnigent_runner::harness::claude_code::{ClaudeCode, Options, lines};
use omnigent_runner::harness::{
    self, HarnessConfig, HarnessError, HarnessKind, HistoryEntry, Turn, TurnOutcome,
};
use omnigent_testkit::vendor::Step;
use omnigent_testkit::vendor::anthropic::{
    answer, message_end, message_start, text_block, tool_block, tool_use,
};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

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
    let agent = ClaudeCode::spawn(Options {
        append_system_prompt: Some("You are the omnigent test agent.".into()),
        mcp_servers: Some(json!({"nothing": {"command": "/nonexistent/mcp-server"}})),
        state_dir: Some(p.home.join("state")),
        ..options(&p.home, &omnigent_testkit::agent_cli("claude"))
    });
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
    // The spec's instructions are appended to Claude Code's system prompt; its MCP servers are in a file.
    let system = requests[0]["system"].to_string();
    assert!(
        system.contains("You are the omnigent test agent."),
        "{system}"
    );
    let mcp: Vec<_> = std::fs::read_dir(p.home.join("state")).unwrap().collect();
    assert_eq!(mcp.len(), 1);
    // One process for both turns.
    let info = agent.info().await;
    assert_eq!((info.pid, info.spawns), (Some(pid), 1));
}

#[tokio::test]
async fn the_process_dies_with_the_last_handle() {
    let p = place();
    let vendor = FakeVendor::start(vec![answer("msg_1", &["Hi."])]).await;
    let agent = ClaudeCode::spawn(options(&p.home, &omnigent_testkit::agent_cli("claude")));
    run(&turn(&p.ws, config(&vendor), "hi", &agent))
        .await
        .0
        .unwrap();
    let pid = i32::try_from(agent.info().await.pid.unwrap()).unwrap();
    let watch = common::watch(pid);
    assert!(watch.is_alive());
    drop(agent);
    watch.gone().await;
}

#[tokio::test]
async fn the_write_tool_really_writes_and_is_streamed_as_call_and_output() {
    let p = place();
    let target = p.ws.join("hello.txt");
    let input = json!({"file_path": target.display().to_string(), "content": "hi from claude\n"});
    let mut tool = vec![message_start("msg_1", 12)];
    tool.extend(text_block(0, &["Writing it."]));
    tool.extend(tool_block(1, "toolu_01", "Write", &[&input.to_string()]));
    tool.extend(message_end("tool_use", 7));
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
    let mut steps = vec![Step::Chunk(message_start("msg_1", 12))];
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

#[tokio::test]
async fn a_vendor_refusal_fails_the_turn_with_its_message_and_the_agent_stays_usable() {
    let p = place();
    let vendor = FakeVendor::then_refusing(
        vec![answer("msg_1", &["Fine."])],
        401,
        json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}),
    )
    .await;
    // Claude Code retries a refusal with backoff for minutes by default.
    let mut opts = options(&p.home, &omnigent_testkit::agent_cli("claude"));
    opts.env
        .push(("CLAUDE_CODE_MAX_RETRIES".into(), "0".into()));
    let agent = ClaudeCode::spawn(opts);
    let (ok, _) = run(&turn(&p.ws, config(&vendor), "hi", &agent)).await;
    ok.unwrap();
    let (refused, events) = run(&turn(&p.ws, config(&vendor), "again", &agent)).await;
    match refused {
        Err(HarnessError::Exec(m)) => assert!(m.contains("401"), "{m}"),
        other => panic!("{other:?}"),
    }
    // The CLI's own "API Error" text is not streamed as the model's.
    assert!(common::summarize(&events).is_empty(), "{events:?}");
    assert_eq!(agent.info().await.spawns, 1);
}

// --- Approvals: Claude Code's permission prompts (`--permission-prompt-tool stdio`). ---

/// A Bash call that `acceptEdits` does not allow by itself (a plain `touch` it would), then `text`.
async fn bash_then(text: &str) -> FakeVendor {
    let input = json!({"command": "sh -c \"touch approved.txt\"", "description": "Make the file"});
    FakeVendor::start(vec![
        tool_use("msg_1", "toolu_01", "Bash", &input),
        answer("msg_2", &[text]),
    ])
    .await
}

/// Events until the agent asks, kept in `seen`: the request (after `session.status waiting`).
async fn until_asked(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Value>,
    seen: &mut Vec<Value>,
) -> Value {
    let mut waiting = false;
    loop {
        let event = common::next_event(rx).await;
        seen.push(event.clone());
        match event["type"].as_str().unwrap() {
            "session.status" if event["status"] == "waiting" => waiting = true,
            "response.elicitation_request" => {
                assert!(waiting, "the status did not become waiting first");
                return event;
            }
            _ => {}
        }
    }
}

fn resolution(request: &Value, action: Action) -> Resolution {
    Resolution::from_event(&json!({
        "type": "approval",
        "data": {"elicitation_id": request["elicitation_id"], "action": action.as_str()},
    }))
    .unwrap()
}

/// The tool result the model got back in the request after the tool call.
fn tool_result(vendor: &FakeVendor) -> String {
    let requests = model_requests(vendor);
    assert_eq!(requests.len(), 2, "{requests:?}");
    requests[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .find(|c| c["type"] == "tool_result")
        .map(|c| c.to_string())
        .unwrap_or_else(|| panic!("no tool_result in {}", requests[1]))
}

/// Run a Bash turn that asks, answer it with `action` once asked; the turn's result and all its events.
async fn answered(
    p: &Place,
    vendor: &FakeVendor,
    action: Action,
) -> (Result<TurnOutcome, HarnessError>, Vec<Value>) {
    let agent = ClaudeCode::spawn(options(&p.home, &omnigent_testkit::agent_cli("claude")));
    let t = turn(&p.ws, config(vendor), "make the file", &agent);
    let approvals = t.approvals.clone();
    let (sink, mut rx) = common::sink();
    let cancel = CancellationToken::new();
    let running = harness::run_turn(HarnessKind::ClaudeCode, &t, &sink, &cancel);
    tokio::pin!(running);
    let mut seen = Vec::new();
    let request = tokio::select! {
        request = until_asked(&mut rx, &mut seen) => request,
        r = &mut running => panic!("the turn ended without asking: {r:?}"),
    };
    assert_eq!(request["params"]["tool_name"], "Bash");
    assert_eq!(request["params"]["policy_name"], "claude-code");
    assert_eq!(request["call_id"], "toolu_01");
    let message = request["params"]["message"].as_str().unwrap();
    assert!(message.contains("touch approved.txt"), "{message}");
    assert_eq!(approvals.pending(), 1);
    // As the server's forward does: `post_event` → the session → `Approvals::resolve`.
    approvals.resolve(resolution(&request, action)).unwrap();
    assert!(
        approvals
            .resolve(resolution(&request, Action::Accept))
            .is_err()
    );
    let result = common::within(60, running).await;
    seen.extend(common::drain(&mut rx));
    (result, seen)
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] != "response.output_text.delta")
        .map(|e| match e["type"].as_str().unwrap() {
            "response.output_item.done" => e["item"]["type"].as_str().unwrap().to_owned(),
            "session.status" => format!("status:{}", e["status"].as_str().unwrap()),
            "response.elicitation_resolved" => {
                format!("resolved:{}", e["action"].as_str().unwrap())
            }
            other => other.to_owned(),
        })
        .collect()
}

#[tokio::test]
async fn an_approved_bash_call_runs_after_the_answer() {
    let p = place();
    let vendor = bash_then("Done.").await;
    let (result, events) = answered(&p, &vendor, Action::Accept).await;
    let outcome = result.unwrap();
    assert!(p.ws.join("approved.txt").exists());
    assert_eq!(
        kinds(&events),
        [
            "function_call",
            "status:waiting",
            "response.elicitation_request",
            "resolved:accept",
            "status:running",
            "function_call_output",
        ]
    );
    assert!(matches!(
        &outcome.new_history[..],
        [HistoryEntry::ToolCall { name, .. }, HistoryEntry::ToolResult { .. }, HistoryEntry::Assistant { .. }]
            if name == "Bash"
    ));
    let result = tool_result(&vendor);
    assert!(!result.contains("\"is_error\":true"), "{result}");
}

#[tokio::test]
async fn a_denied_bash_call_does_not_run_and_the_model_is_told() {
    let p = place();
    let vendor = bash_then("Done.").await;
    let (result, events) = answered(&p, &vendor, Action::Decline).await;
    result.unwrap();
    assert!(!p.ws.join("approved.txt").exists());
    assert_eq!(kinds(&events)[3], "resolved:decline");
    let result = tool_result(&vendor);
    assert!(
        result.contains("Denied by a user from omnigent"),
        "{result}"
    );
    let output = common::tool_output(&events);
    assert!(
        output.contains("Denied by a user from omnigent"),
        "{output}"
    );
}

#[tokio::test]
async fn a_permission_mode_that_skips_approvals_runs_the_call_without_asking() {
    let p = place();
    let vendor = bash_then("Done.").await;
    let agent = ClaudeCode::spawn(options(&p.home, &omnigent_testkit::agent_cli("claude")));
    // The spec's `permission_mode` (as `LoadedAgent::apply` puts it on the config); this runs as root too.
    let skip = HarnessConfig {
        permission_mode: Some("bypassPermissions".into()),
        ..config(&vendor)
    };
    let t = turn(&p.ws, skip, "make the file", &agent);
    let (result, events) = run(&t).await;
    result.unwrap();
    assert!(p.ws.join("approved.txt").exists());
    assert!(
        !kinds(&events)
            .iter()
            .any(|k| k.contains("elicitation") || k.contains("resolved")),
        "{events:?}"
    );
    assert_eq!(t.approvals.pending(), 0);
}

#[tokio::test]
async fn an_interrupt_while_asking_ends_the_turn_and_the_agent_stays_usable() {
    let p = place();
    let vendor = bash_then("Still here.").await;
    let agent = ClaudeCode::spawn(options(&p.home, &omnigent_testkit::agent_cli("claude")));
    let t = turn(&p.ws, config(&vendor), "make the file", &agent);
    let (sink, mut rx) = common::sink();
    let cancel = CancellationToken::new();
    let running = harness::run_turn(HarnessKind::ClaudeCode, &t, &sink, &cancel);
    tokio::pin!(running);
    let mut before = Vec::new();
    let request = tokio::select! {
        request = until_asked(&mut rx, &mut before) => request,
        r = &mut running => panic!("the turn ended without asking: {r:?}"),
    };
    cancel.cancel();
    let result = common::within(30, running).await;
    assert!(
        matches!(result, Err(HarnessError::Interrupted)),
        "{result:?}"
    );
    let events = common::drain(&mut rx);
    let resolved = common::first(&events, "response.elicitation_resolved");
    assert_eq!(resolved["elicitation_id"], request["elicitation_id"]);
    assert_eq!(resolved["action"], "cancel");
    assert_eq!(resolved["reason"], "unanswered");
    assert_eq!(t.approvals.pending(), 0);
    assert!(!p.ws.join("approved.txt").exists());
    let (next, events) = run(&turn(&p.ws, config(&vendor), "are you there?", &agent)).await;
    next.unwrap();
    assert_eq!(common::summarize(&events), ["delta:Still here."]);
}

#[test]
fn golden_permission_prompt_maps_to_a_question_and_the_sdks_answers() {
    let lines_in = golden("claude-code-permission.jsonl");
    let Some(lines::Control::Permission(request)) = lines::Control::parse(&lines_in[0]) else {
        panic!("not a permission prompt: {}", lines_in[0]);
    };
    assert_eq!(request.tool_name, "Bash");
    assert_eq!(request.tool_use_id.as_deref(), Some("toolu_01"));
    let params = request.params();
    assert_eq!(
        params.message,
        "Allow Bash: `sh -c \"touch approved.txt\"`? (make file)"
    );
    assert_eq!(params.tool_name.as_deref(), Some("Bash"));
    assert_eq!(
        params.content_preview.as_deref(),
        Some(request.input.to_string().as_str())
    );
    let id = "63d01991-9722-4bba-91d3-547174150e6b";
    assert_eq!(
        request.respond(&omnigent_proto::elicitation::Answer::new(Action::Accept)),
        json!({"type": "control_response", "response": {"subtype": "success", "request_id": id,
            "response": {"behavior": "allow", "updatedInput": request.input}}})
    );
    assert_eq!(
        request.respond(&omnigent_proto::elicitation::Answer::new(Action::Decline))["response"]["response"],
        json!({"behavior": "deny", "message": "Denied by a user from omnigent"})
    );
    assert_eq!(
        lines::Control::parse(&lines_in[1]),
        Some(lines::Control::Cancel {
            request_id: id.into()
        })
    );
    assert_eq!(lines::Control::parse(&lines_in[2]), None);
}
