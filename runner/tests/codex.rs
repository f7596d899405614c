//! The codex harness with the real Codex CLI (`codex app-server`, installed by testkit/agent-clis/install)
//! against a fake Responses API on loopback: a temp HOME and CODEX_HOME whose config.toml points a model
//! provider at the fake.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/responses.rs"]
mod responses;

use std::path::PathBuf;
use std::sync::Arc;

use common::{Canned, FakeVendor, user};
use omnigent_proto::elicitation::{Action, Resolution};
use omnigent_runner::harness::codex::CodexHandle;
use omnigent_runner::harness::{
    self, HarnessConfig, HarnessError, HarnessKind, HistoryEntry, Turn, TurnOutcome,
};
use omnigent_testkit::vendor::Step;
use responses::{delta, exec_command, message_start, text};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The key variable the fake provider's config names.
const KEY_VAR: &str = "OMNIGENT_TEST_CODEX_KEY";

// --- The setup. ---

struct Codex {
    _base: tempfile::TempDir,
    ws: PathBuf,
    config: HarnessConfig,
}

/// A workspace, a temp HOME and a CODEX_HOME; with `vendor`, its config.toml points Codex at it.
fn codex(vendor: Option<&FakeVendor>) -> Codex {
    let base = tempfile::tempdir().unwrap();
    let ws = base.path().join("ws");
    let home = base.path().join("home");
    let codex_home = home.join(".codex");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::create_dir_all(&codex_home).unwrap();
    if let Some(vendor) = vendor {
        omnigent_testkit::agent_clis::write_codex_config(&codex_home, &vendor.url, KEY_VAR);
    }
    let config = HarnessConfig {
        agent_env: vec![
            (
                "OMNIGENT_CODEX_PATH".into(),
                omnigent_testkit::agent_cli("codex").display().to_string(),
            ),
            ("HOME".into(), home.display().to_string()),
            ("CODEX_HOME".into(), codex_home.display().to_string()),
            (KEY_VAR.into(), "test-key".into()),
            // Whatever the machine has, these tests bring their own credentials or none.
            ("OPENAI_API_KEY".into(), String::new()),
        ],
        ..HarnessConfig::default()
    };
    Codex {
        _base: base,
        ws,
        config,
    }
}

/// The session's side: its history and its agent.
struct Session<'a> {
    codex: &'a Codex,
    handle: CodexHandle,
    history: Vec<HistoryEntry>,
}

impl<'a> Session<'a> {
    fn new(codex: &'a Codex) -> Self {
        Session {
            codex,
            handle: CodexHandle::spawn(),
            history: Vec::new(),
        }
    }

    fn turn(&mut self, prompt: &str) -> Turn {
        self.history.push(user(prompt));
        let mut turn = common::turn(
            &self.codex.ws,
            self.codex.config.clone(),
            self.history.clone(),
        );
        turn.codex = Some(self.handle.clone());
        turn
    }

    async fn run(&mut self, prompt: &str) -> (Result<TurnOutcome, HarnessError>, Vec<Value>) {
        let turn = self.turn(prompt);
        let (sink, mut rx) = common::sink();
        let result = common::within(
            60,
            harness::run_turn(HarnessKind::Codex, &turn, &sink, &CancellationToken::new()),
        )
        .await;
        if let Ok(outcome) = &result {
            self.history.extend(outcome.new_history.clone());
        }
        (result, common::drain(&mut rx))
    }
}

/// The texts of the `input` items of a recorded Responses request, as `role:text` / `type:call_id`.
fn inputs(body: &Value) -> Vec<String> {
    body["input"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|item| match item["type"].as_str().unwrap_or("message") {
            "message" => {
                let role = item["role"].as_str().unwrap();
                let text: Vec<&str> = item["content"]
                    .as_array()?
                    .iter()
                    .filter_map(|c| c["text"].as_str())
                    .collect();
                (role != "developer").then(|| format!("{role}:{}", text.join("")))
            }
            other => Some(format!(
                "{other}:{}",
                item["call_id"].as_str().unwrap_or("")
            )),
        })
        .filter(|s| !s.contains("<environment_context>"))
        .collect()
}

#[tokio::test]
async fn two_turns_on_one_app_server_keep_the_conversation() {
    let vendor =
        FakeVendor::start(vec![text("1", "Noted: blue."), text("2", "You said blue.")]).await;
    let codex = codex(Some(&vendor));
    let mut session = Session::new(&codex);
    let (result, events) = session.run("remember: blue").await;
    let outcome = result.unwrap();
    assert_eq!(
        common::summarize(&events),
        ["delta:Noted:", "delta: blue."],
        "{events:?}"
    );
    assert_eq!(
        outcome.new_history,
        [HistoryEntry::Assistant {
            text: "Noted: blue.".into()
        }]
    );
    assert_eq!(
        outcome.usage,
        Some(json!({"input_tokens": 10, "output_tokens": 3}))
    );
    let pid = session.handle.pid().await.unwrap();

    let (result, events) = session.run("what colour?").await;
    result.unwrap();
    assert_eq!(
        common::summarize(&events),
        ["delta:You sai", "delta:d blue."]
    );
    // The same process, and the second request carries the first turn.
    assert_eq!(session.handle.pid().await, Some(pid));
    let requests = vendor.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].path, "/v1/responses");
    assert_eq!(
        inputs(&requests[1].body),
        [
            "user:remember: blue",
            "assistant:Noted: blue.",
            "user:what colour?"
        ]
    );
    assert_eq!(
        requests[1].headers["authorization"], "Bearer test-key",
        "the provider's key reaches the vendor"
    );
}

#[tokio::test]
async fn a_scripted_command_really_runs_and_is_recorded_as_a_function_call() {
    let vendor = FakeVendor::start(vec![
        exec_command("1", "call_1", "echo hi > out.txt"),
        text("2", "Wrote out.txt."),
    ])
    .await;
    let codex = codex(Some(&vendor));
    let mut session = Session::new(&codex);
    let (result, events) = session.run("make out.txt").await;
    let outcome = result.unwrap();
    assert_eq!(
        std::fs::read_to_string(codex.ws.join("out.txt")).unwrap(),
        "hi\n"
    );
    let summary = common::summarize(&events);
    assert_eq!(summary.len(), 4, "{summary:?}");
    assert!(
        summary[0].starts_with("call:call_1:shell:") && summary[0].contains("echo hi > out.txt"),
        "{summary:?}"
    );
    assert_eq!(summary[1], "output:call_1:[exit code 0]");
    assert_eq!(summary[2..], ["delta:Wrote o", "delta:ut.txt."]);
    match &outcome.new_history[..] {
        [
            HistoryEntry::ToolCall { call_id, name, .. },
            HistoryEntry::ToolResult {
                call_id: result_id,
                output,
            },
            HistoryEntry::Assistant { text },
        ] => {
            assert_eq!((call_id.as_str(), name.as_str()), ("call_1", "shell"));
            assert_eq!(result_id, "call_1");
            assert_eq!(output, "[exit code 0]");
            assert_eq!(text, "Wrote out.txt.");
        }
        other => panic!("unexpected history {other:?}"),
    }
    // The command's result went back to the model.
    let requests = vendor.requests();
    assert_eq!(
        inputs(&requests[1].body)[1..],
        ["function_call:call_1", "function_call_output:call_1"]
    );
}

#[tokio::test]
async fn an_interrupt_mid_stream_ends_the_turn_and_the_agent_stays_usable() {
    let hold = Arc::new(Notify::new());
    let mut stalled: Vec<Step> = message_start("1").into_iter().map(Step::Chunk).collect();
    stalled.push(Step::Chunk(delta("1", "Thinking")));
    stalled.push(Step::Wait(hold.clone())); // never released
    let vendor = FakeVendor::start(vec![Canned::from(stalled), text("2", "Still here.")]).await;
    let codex = codex(Some(&vendor));
    let mut session = Session::new(&codex);

    let turn = session.turn("think long");
    let (sink, mut rx) = common::sink();
    let cancel = CancellationToken::new();
    let run = harness::run_turn(HarnessKind::Codex, &turn, &sink, &cancel);
    let interrupt = async {
        loop {
            let event = common::next_event(&mut rx).await;
            if event["type"] == "response.output_text.delta" {
                assert_eq!(event["delta"], "Thinking");
                break;
            }
        }
        cancel.cancel();
    };
    let (result, ()) = common::within(30, async { tokio::join!(run, interrupt) }).await;
    assert!(
        matches!(result, Err(HarnessError::Interrupted)),
        "{result:?}"
    );
    let pid = session.handle.pid().await;
    assert!(pid.is_some(), "Codex ended the turn itself: not killed");

    let (result, events) = session.run("are you there?").await;
    result.unwrap();
    assert_eq!(common::summarize(&events), ["delta:Still", "delta: here."]);
    assert_eq!(session.handle.pid().await, pid);
}

#[tokio::test]
async fn codex_killed_between_turns_is_restarted_and_resumes_the_thread() {
    let vendor = FakeVendor::start(vec![
        text("1", "Noted: green."),
        text("2", "You said green."),
    ])
    .await;
    let codex = codex(Some(&vendor));
    let mut session = Session::new(&codex);
    session.run("remember: green").await.0.unwrap();
    let pid = session.handle.pid().await.unwrap();
    let watch = common::watch(i32::try_from(pid).unwrap());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    watch.gone().await;

    let (result, events) = session.run("what colour?").await;
    result.unwrap();
    assert_eq!(
        common::summarize(&events),
        ["delta:You sai", "delta:d green."]
    );
    let new_pid = session.handle.pid().await.unwrap();
    assert_ne!(new_pid, pid);
    assert_eq!(
        inputs(&vendor.requests()[1].body),
        [
            "user:remember: green",
            "assistant:Noted: green.",
            "user:what colour?"
        ]
    );
}

/// Set (or replace) a variable of the agent's environment.
fn set(config: &mut HarnessConfig, var: &str, value: &str) {
    config.agent_env.retain(|(k, _)| k != var);
    config.agent_env.push((var.to_owned(), value.to_owned()));
}

async fn failed_turn(codex: &Codex) -> String {
    let mut session = Session::new(codex);
    match session.run("hello").await {
        (Err(err @ HarnessError::NotConfigured(_)), events) => {
            assert!(events.is_empty(), "{events:?}");
            err.to_string()
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_missing_binary_fails_the_turn_naming_the_install() {
    let mut codex = codex(None);
    set(
        &mut codex.config,
        "OMNIGENT_CODEX_PATH",
        "/nonexistent/codex",
    );
    let message = failed_turn(&codex).await;
    assert!(message.contains("OMNIGENT_CODEX_PATH"), "{message}");
    assert!(
        message.contains("npm install -g @openai/codex"),
        "{message}"
    );

    set(&mut codex.config, "OMNIGENT_CODEX_PATH", "");
    let empty = codex._base.path().join("empty-bin");
    std::fs::create_dir(&empty).unwrap();
    codex
        .config
        .agent_env
        .push(("PATH".into(), empty.display().to_string()));
    let message = failed_turn(&codex).await;
    assert!(message.contains("`codex` is not installed"), "{message}");
    assert!(
        message.contains("npm install -g @openai/codex"),
        "{message}"
    );
}

#[tokio::test]
async fn missing_credentials_fail_the_turn_naming_the_login() {
    let codex = codex(None); // no config.toml, no auth.json, OPENAI_API_KEY blank
    let message = failed_turn(&codex).await;
    assert!(message.contains("OPENAI_API_KEY"), "{message}");
    assert!(message.contains("codex login"), "{message}");
}

// --- Approvals: the app-server's approval requests, asked of the session's clients. ---

/// A shell call that asks to leave the sandbox (so `on-request` asks), then a text answer.
async fn escalated_then_done() -> FakeVendor {
    let arguments = json!({"cmd": "touch approved.txt", "sandbox_permissions": "require_escalated",
        "justification": "Make the file"});
    FakeVendor::start(vec![
        responses::function_call("1", "call_1", "exec_command", arguments),
        text("2", "Done."),
    ])
    .await
}

/// One turn whose approval request is answered `action` once it comes: the turn's result, its events and
/// the request.
async fn answered(
    session: &mut Session<'_>,
    action: Action,
) -> (Result<TurnOutcome, HarnessError>, Vec<Value>, Value) {
    let turn = session.turn("make the file");
    let approvals = turn.approvals.clone();
    let (sink, mut rx) = common::sink();
    let cancel = CancellationToken::new();
    let running = harness::run_turn(HarnessKind::Codex, &turn, &sink, &cancel);
    tokio::pin!(running);
    let mut events = Vec::new();
    let request = loop {
        let event = tokio::select! {
            event = common::next_event(&mut rx) => event,
            r = &mut running => panic!("the turn ended without asking: {r:?} after {events:?}"),
        };
        events.push(event.clone());
        if event["type"] == "response.elicitation_request" {
            break event;
        }
    };
    let answer = Resolution::from_event(&json!({"type": "approval", "data": {
        "elicitation_id": request["elicitation_id"], "action": action.as_str()}}))
    .unwrap();
    // As the server's forward does: `post_event` → the session → `Approvals::resolve`.
    approvals.resolve(answer).unwrap();
    let result = common::within(60, running).await;
    events.extend(common::drain(&mut rx));
    (result, events, request)
}

#[tokio::test]
async fn an_approved_command_runs_after_the_answer() {
    let vendor = escalated_then_done().await;
    let codex = codex(Some(&vendor));
    let mut session = Session::new(&codex);
    let (result, events, request) = answered(&mut session, Action::Accept).await;
    result.unwrap();
    assert_eq!(request["params"]["policy_name"], "codex");
    assert_eq!(request["params"]["tool_name"], "commandExecution");
    assert_eq!(request["call_id"], "call_1");
    let message = request["params"]["message"].as_str().unwrap();
    assert!(message.contains("touch approved.txt"), "{message}");
    assert!(codex.ws.join("approved.txt").exists(), "{events:?}");
    let statuses: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "session.status")
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["waiting", "running"]);
    assert_eq!(
        common::first(&events, "response.elicitation_resolved")["action"],
        "accept"
    );
    let output = common::tool_output(&events);
    assert!(output.contains("exit code 0"), "{output}");
}

#[tokio::test]
async fn a_declined_command_does_not_run() {
    let vendor = escalated_then_done().await;
    let codex = codex(Some(&vendor));
    let mut session = Session::new(&codex);
    let (result, events, _) = answered(&mut session, Action::Decline).await;
    result.unwrap();
    assert!(!codex.ws.join("approved.txt").exists(), "{events:?}");
    assert_eq!(
        common::first(&events, "response.elicitation_resolved")["action"],
        "decline"
    );
    // The model heard that the command did not run (`Rejected("rejected by user")`).
    let requests = vendor.requests();
    assert_eq!(requests.len(), 2);
    let sent = requests[1].body["input"].to_string();
    assert!(sent.contains("rejected by user"), "{sent}");
}

#[tokio::test]
async fn a_permission_mode_that_skips_approvals_never_asks() {
    let vendor = escalated_then_done().await;
    let mut codex = codex(Some(&vendor));
    codex.config.permission_mode = Some("skip".into());
    let mut session = Session::new(&codex);
    let (result, events) = session.run("make the file").await;
    result.unwrap();
    assert!(
        !events
            .iter()
            .any(|e| e["type"] == "response.elicitation_request"),
        "{events:?}"
    );
}

#[tokio::test]
async fn the_specs_instructions_and_mcp_servers_reach_codex() {
    let vendor = FakeVendor::start(vec![text("1", "Hello.")]).await;
    let mut codex = codex(Some(&vendor));
    codex.config.instructions = Some("You are Omni, the omnigent test agent.".into());
    let server = omnigent_proto::agent::spec::Tool {
        kind: Some("mcp".into()),
        command: Some("/usr/bin/python3".into()),
        args: vec![format!(
            "{}/tests/fixtures/mcp_server.py",
            env!("CARGO_MANIFEST_DIR")
        )],
        ..Default::default()
    };
    codex.config.agent_mcp_servers = vec![("calc".into(), server)];
    let mut session = Session::new(&codex);
    let (result, _) = session.run("hi").await;
    result.unwrap();
    let requests = vendor.requests();
    let body = &requests[0].body;
    let input = body["input"].to_string();
    assert!(
        input.contains("You are Omni, the omnigent test agent."),
        "{input}"
    );
    let tools = body["tools"].to_string();
    assert!(tools.contains("calc") && tools.contains("add"), "{tools}");
}
