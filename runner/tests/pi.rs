//! The pi harness with the real Pi (`pi --mode rpc`, installed by testkit/agent-clis/install) against a
//! fake Responses API on loopback: a temp HOME and PI_CODING_AGENT_DIR whose models.json adds a provider
//! pointing at the fake, made the default by its settings.json.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/responses.rs"]
mod responses;

use std::path::PathBuf;
use std::sync::Arc;

use common::{Canned, FakeVendor, user};
use omnigent_proto::elicitation::{Action, Resolution};
use omnigent_runner::harness::pi::PiHandle;
use omnigent_runner::harness::{
    self, HarnessConfig, HarnessError, HarnessKind, HistoryEntry, Turn, TurnOutcome,
};
use omnigent_testkit::vendor::Step;
use responses::{delta, function_call, message_start, text};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

// --- The setup. ---

struct Pi {
    _base: tempfile::TempDir,
    ws: PathBuf,
    config: HarnessConfig,
}

/// A workspace, a temp HOME and a Pi agent dir; with `vendor`, its models.json and settings.json make a
/// provider on it the default.
fn pi(vendor: Option<&FakeVendor>) -> Pi {
    let base = tempfile::tempdir().unwrap();
    let ws = base.path().join("ws");
    let home = base.path().join("home");
    let agent_dir = home.join(".pi/agent");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::create_dir_all(&agent_dir).unwrap();
    if let Some(vendor) = vendor {
        let models = json!({"providers": {"fake": {
            "baseUrl": format!("{}/v1", vendor.url),
            "api": "openai-responses",
            "apiKey": "test-key",
            "models": [{"id": "gpt-test"}],
        }}});
        std::fs::write(agent_dir.join("models.json"), models.to_string()).unwrap();
        let settings = json!({"defaultProvider": "fake", "defaultModel": "gpt-test"});
        std::fs::write(agent_dir.join("settings.json"), settings.to_string()).unwrap();
    }
    let mut agent_env = vec![
        (
            "OMNIGENT_PI_PATH".to_owned(),
            omnigent_testkit::agent_cli("pi").display().to_string(),
        ),
        ("HOME".to_owned(), home.display().to_string()),
        (
            "PI_CODING_AGENT_DIR".to_owned(),
            agent_dir.display().to_string(),
        ),
        ("PI_OFFLINE".to_owned(), "1".to_owned()),
    ];
    // Whatever the machine has, these tests bring their own credentials or none.
    for cred in HarnessKind::Pi.spec().credentials {
        agent_env.push((cred.var.to_owned(), String::new()));
    }
    let config = HarnessConfig {
        agent_env,
        ..HarnessConfig::default()
    };
    Pi {
        _base: base,
        ws,
        config,
    }
}

/// The session's side: its history and its agent.
struct Session<'a> {
    pi: &'a Pi,
    handle: PiHandle,
    history: Vec<HistoryEntry>,
}

impl<'a> Session<'a> {
    fn new(pi: &'a Pi) -> Self {
        Session {
            pi,
            handle: PiHandle::spawn(),
            history: Vec::new(),
        }
    }

    fn turn(&mut self, prompt: &str) -> Turn {
        self.history.push(user(prompt));
        let mut turn = common::turn(&self.pi.ws, self.pi.config.clone(), self.history.clone());
        turn.pi = Some(self.handle.clone());
        turn
    }

    async fn run(&mut self, prompt: &str) -> (Result<TurnOutcome, HarnessError>, Vec<Value>) {
        let turn = self.turn(prompt);
        let (sink, mut rx) = common::sink();
        let result = common::within(
            60,
            harness::run_turn(HarnessKind::Pi, &turn, &sink, &CancellationToken::new()),
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
                (role != "developer" && role != "system")
                    .then(|| format!("{role}:{}", text.join("")))
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
    let pi = pi(Some(&vendor));
    let mut session = Session::new(&pi);
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
        function_call(
            "1",
            "call_1",
            "bash",
            json!({"command": "echo hi > out.txt"}),
        ),
        text("2", "Wrote out.txt."),
    ])
    .await;
    let pi = pi(Some(&vendor));
    let mut session = Session::new(&pi);
    let (result, events) = session.run("make out.txt").await;
    let outcome = result.unwrap();
    assert_eq!(
        std::fs::read_to_string(pi.ws.join("out.txt")).unwrap(),
        "hi\n"
    );
    let summary = common::summarize(&events);
    assert_eq!(summary.len(), 4, "{summary:?}");
    // Pi's call ids are the Responses call id and item id.
    assert_eq!(
        summary[0],
        r#"call:call_1|fc_1:bash:{"command":"echo hi > out.txt"}"#
    );
    assert_eq!(summary[1], "output:call_1|fc_1:(no output)");
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
            assert_eq!((call_id.as_str(), name.as_str()), ("call_1|fc_1", "bash"));
            assert_eq!(result_id, "call_1|fc_1");
            assert_eq!(output, "(no output)");
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
    let pi = pi(Some(&vendor));
    let mut session = Session::new(&pi);

    let turn = session.turn("think long");
    let (sink, mut rx) = common::sink();
    let cancel = CancellationToken::new();
    let run = harness::run_turn(HarnessKind::Pi, &turn, &sink, &cancel);
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
    assert!(pid.is_some(), "Pi ended the turn itself: not killed");

    let (result, events) = session.run("are you there?").await;
    result.unwrap();
    assert_eq!(common::summarize(&events), ["delta:Still", "delta: here."]);
    assert_eq!(session.handle.pid().await, pid);
}

#[tokio::test]
async fn pi_killed_between_turns_is_restarted_on_its_session_file() {
    let vendor = FakeVendor::start(vec![
        text("1", "Noted: green."),
        text("2", "You said green."),
    ])
    .await;
    let pi = pi(Some(&vendor));
    let mut session = Session::new(&pi);
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

async fn failed_turn(pi: &Pi) -> String {
    let mut session = Session::new(pi);
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
    let mut pi = pi(None);
    set(&mut pi.config, "OMNIGENT_PI_PATH", "/nonexistent/pi");
    let message = failed_turn(&pi).await;
    assert!(message.contains("OMNIGENT_PI_PATH"), "{message}");
    assert!(
        message.contains("npm install -g @mariozechner/pi-coding-agent"),
        "{message}"
    );

    set(&mut pi.config, "OMNIGENT_PI_PATH", "");
    let empty = pi._base.path().join("empty-bin");
    std::fs::create_dir(&empty).unwrap();
    pi.config
        .agent_env
        .push(("PATH".into(), empty.display().to_string()));
    let message = failed_turn(&pi).await;
    assert!(message.contains("`pi` is not installed"), "{message}");
    assert!(
        message.contains("npm install -g @mariozechner/pi-coding-agent"),
        "{message}"
    );
}

#[tokio::test]
async fn missing_credentials_fail_the_turn_naming_the_login() {
    let pi = pi(None); // no models.json, no auth.json, provider keys blank
    let message = failed_turn(&pi).await;
    assert!(message.contains("/login"), "{message}");
    assert!(message.contains("models.json"), "{message}");
}

#[tokio::test]
async fn the_specs_instructions_are_appended_to_pis_system_prompt() {
    let vendor = FakeVendor::start(vec![text("1", "Hello.")]).await;
    let mut pi = pi(Some(&vendor));
    pi.config.instructions = Some("You are Omni, the omnigent test agent.".into());
    let mut session = Session::new(&pi);
    let (result, _) = session.run("hi").await;
    result.unwrap();
    let body = vendor.requests()[0].body.to_string();
    assert!(
        body.contains("You are Omni, the omnigent test agent."),
        "{body}"
    );
}

// --- Approvals: a Pi extension's yes/no dialog before a tool runs, asked of the session's clients. ---

/// A permission-gate extension in Pi's agent dir (auto-discovered from `extensions/`): before every bash
/// call it asks, with `ctx.ui.confirm` or (`select`) a Yes/No `ctx.ui.select`, and blocks the call on a no.
fn gate(pi: &Pi, dialog: &str) {
    let agent_dir = pi
        .config
        .agent_env
        .iter()
        .find(|(k, _)| k == "PI_CODING_AGENT_DIR")
        .map(|(_, v)| PathBuf::from(v))
        .unwrap();
    let ask = match dialog {
        "confirm" => "await ctx.ui.confirm(\"Run this command?\", command)",
        _ => "(await ctx.ui.select(`Allow ${command}?`, [\"Yes\", \"No\"])) === \"Yes\"",
    };
    let source = format!(
        "export default function (pi) {{\n  pi.on(\"tool_call\", async (event, ctx) => {{\n    \
         if (event.toolName !== \"bash\") return undefined;\n    const command = event.input.command;\n    \
         const ok = {ask};\n    return ok ? undefined : {{ block: true, reason: \"Blocked by the user\" }};\n  \
         }});\n}}\n"
    );
    std::fs::create_dir_all(agent_dir.join("extensions")).unwrap();
    std::fs::write(agent_dir.join("extensions/gate.ts"), source).unwrap();
}

/// A bash call that the gate asks about, then a text answer.
async fn touch_then_done() -> FakeVendor {
    FakeVendor::start(vec![
        function_call(
            "1",
            "call_1",
            "bash",
            json!({"command": "touch approved.txt"}),
        ),
        text("2", "Done."),
    ])
    .await
}

/// One turn whose question is answered `action` once it comes: the turn's result, its events, the question.
async fn answered(
    session: &mut Session<'_>,
    action: Action,
) -> (Result<TurnOutcome, HarnessError>, Vec<Value>, Value) {
    let turn = session.turn("make the file");
    let approvals = turn.approvals.clone();
    let (sink, mut rx) = common::sink();
    let cancel = CancellationToken::new();
    let running = harness::run_turn(HarnessKind::Pi, &turn, &sink, &cancel);
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
    assert!(
        !session.pi.ws.join("approved.txt").exists(),
        "the command ran before the answer"
    );
    assert_eq!(approvals.pending(), 1);
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
async fn an_extensions_confirm_is_asked_of_the_clients_and_the_approved_command_runs() {
    let vendor = touch_then_done().await;
    let pi = pi(Some(&vendor));
    gate(&pi, "confirm");
    let mut session = Session::new(&pi);
    let (result, events, request) = answered(&mut session, Action::Accept).await;
    result.unwrap();
    assert_eq!(request["params"]["policy_name"], "pi");
    assert_eq!(request["params"]["tool_name"], "bash");
    assert_eq!(request["call_id"], "call_1|fc_1");
    let message = request["params"]["message"].as_str().unwrap();
    assert!(message.contains("Run this command?"), "{message}");
    assert!(message.contains("touch approved.txt"), "{message}");
    assert!(pi.ws.join("approved.txt").exists(), "{events:?}");
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
}

#[tokio::test]
async fn a_yes_no_select_denied_blocks_the_command_and_the_model_is_told() {
    let vendor = touch_then_done().await;
    let pi = pi(Some(&vendor));
    gate(&pi, "select");
    let mut session = Session::new(&pi);
    let (result, events, _) = answered(&mut session, Action::Decline).await;
    result.unwrap();
    assert!(!pi.ws.join("approved.txt").exists(), "{events:?}");
    assert_eq!(
        common::first(&events, "response.elicitation_resolved")["action"],
        "decline"
    );
    let requests = vendor.requests();
    assert_eq!(requests.len(), 2);
    let sent = requests[1].body["input"].to_string();
    assert!(sent.contains("Blocked by the user"), "{sent}");
}

#[tokio::test]
async fn a_permission_mode_that_skips_approvals_confirms_without_asking() {
    let vendor = touch_then_done().await;
    let mut pi = pi(Some(&vendor));
    gate(&pi, "confirm");
    pi.config.permission_mode = Some("skip".into());
    let mut session = Session::new(&pi);
    let (result, events) = session.run("make the file").await;
    result.unwrap();
    assert!(pi.ws.join("approved.txt").exists(), "{events:?}");
    assert!(
        !events
            .iter()
            .any(|e| e["type"] == "response.elicitation_request"),
        "{events:?}"
    );
}
