#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Approvals end to end with the real agent CLIs (issue 15 item 6): a real `omnigent server run`, a real
//! `omnigent runner` whose session runs Claude Code (`claude-sdk`), Codex (`codex app-server`) or Pi (`pi --mode
//! rpc`, with a permission-gate extension, since Pi's extensions are what ask) against a fake vendor API on
//! loopback. The agent asks before a shell command; the question reaches a watching client as
//! `response.elicitation_request` with the session `waiting`; a second client answers through
//! `POST …/elicitations/{eid}/resolve`; a later answer gets 409; every client hears
//! `response.elicitation_resolved`; the command runs (approved) or does not (denied), and the turn's items
//! are stored.

mod common;

use std::path::{Path, PathBuf};

use common::{Proc, Server, start_runner, start_server, token_and_id};
use omnigent_testkit::sse::Sse;
use omnigent_testkit::vendor::anthropic;
use omnigent_testkit::vendor::responses::ResponseStream;
use omnigent_testkit::vendor::{Canned, End, FakeVendor};
use serde_json::{Value, json};

/// The key variable the fake Codex provider's config names.
const CODEX_KEY_VAR: &str = "OMNIGENT_TEST_CODEX_KEY";

/// The shell command each agent is scripted to run, and the file it makes.
const COMMAND: &str = "touch approved.txt";
const MADE: &str = "approved.txt";

#[derive(Clone, Copy, Debug)]
enum Agent {
    ClaudeCode,
    Codex,
    Pi,
}

impl Agent {
    fn harness(self) -> &'static str {
        match self {
            Agent::ClaudeCode => "claude-sdk",
            Agent::Codex => "codex",
            Agent::Pi => "pi",
        }
    }

    /// The vendor's script: a shell call that needs an approval, then a text answer.
    fn script(self) -> Vec<Canned> {
        match self {
            // `sh -c` so that `acceptEdits` does not allow it by itself.
            Agent::ClaudeCode => vec![
                anthropic::tool_use(
                    "msg_1",
                    "toolu_01",
                    "Bash",
                    &json!({"command": format!("sh -c \"{COMMAND}\""), "description": "Make the file"}),
                ),
                anthropic::answer("msg_2", &["Done."]),
            ],
            // Asking to leave the sandbox, so the `on-request` policy asks.
            Agent::Codex => {
                let arguments = json!({"cmd": COMMAND, "sandbox_permissions": "require_escalated",
                    "justification": "Make the file"});
                vec![
                    Canned::stream(
                        ResponseStream::new("resp_1")
                            .function_call("call_1", "exec_command", &arguments.to_string())
                            .completed(10, 5),
                    ),
                    Canned::stream(
                        ResponseStream::new("resp_2")
                            .text(&["Done."])
                            .completed(10, 2),
                    ),
                ]
            }
            Agent::Pi => vec![
                Canned::stream(
                    ResponseStream::new("resp_1")
                        .function_call("call_1", "bash", &json!({"command": COMMAND}).to_string())
                        .completed(10, 5),
                ),
                Canned::stream(
                    ResponseStream::new("resp_2")
                        .text(&["Done."])
                        .completed(10, 2),
                ),
            ],
        }
    }

    /// The vendor's script for a turn that streams a first delta and then never another byte.
    fn stalled_script(self) -> Vec<Canned> {
        let chunks = match self {
            Agent::ClaudeCode => {
                let mut chunks = vec![anthropic::message_start("msg_1", 10)];
                chunks.extend(anthropic::text_block(0, &["Working"]));
                chunks
            }
            Agent::Codex | Agent::Pi => ResponseStream::new("resp_1")
                .text(&["Working"])
                .unfinished(),
        };
        vec![Canned::stream_ending(chunks, End::Stall)]
    }

    /// The runner's environment for this agent's CLI: its binary, a HOME of its own, the fake vendor.
    fn env(self, home: &Path, vendor: &FakeVendor) -> Vec<(&'static str, String)> {
        let mut env = vec![("HOME", home.display().to_string())];
        match self {
            Agent::ClaudeCode => {
                let config = home.join(".claude");
                std::fs::create_dir_all(&config).unwrap();
                env.extend([
                    (
                        "OMNIGENT_CLAUDE_PATH",
                        omnigent_testkit::agent_cli("claude").display().to_string(),
                    ),
                    ("CLAUDE_CONFIG_DIR", config.display().to_string()),
                    ("ANTHROPIC_BASE_URL", vendor.url.clone()),
                    ("ANTHROPIC_API_KEY", "test".to_owned()),
                    ("OMNIGENT_MODEL", "claude-sonnet-4-5".to_owned()),
                ]);
            }
            Agent::Codex => {
                let codex_home = home.join(".codex");
                omnigent_testkit::agent_clis::write_codex_config(
                    &codex_home,
                    &vendor.url,
                    CODEX_KEY_VAR,
                );
                env.extend([
                    (
                        "OMNIGENT_CODEX_PATH",
                        omnigent_testkit::agent_cli("codex").display().to_string(),
                    ),
                    ("CODEX_HOME", codex_home.display().to_string()),
                    (CODEX_KEY_VAR, "test-key".to_owned()),
                ]);
            }
            Agent::Pi => {
                // A provider on the fake as Pi's default, and a gate that confirms every bash call.
                let agent_dir = home.join(".pi/agent");
                std::fs::create_dir_all(agent_dir.join("extensions")).unwrap();
                let models = json!({"providers": {"fake": {"baseUrl": format!("{}/v1", vendor.url),
                    "api": "openai-responses", "apiKey": "test-key", "models": [{"id": "gpt-test"}]}}});
                std::fs::write(agent_dir.join("models.json"), models.to_string()).unwrap();
                let settings = json!({"defaultProvider": "fake", "defaultModel": "gpt-test"});
                std::fs::write(agent_dir.join("settings.json"), settings.to_string()).unwrap();
                std::fs::write(
                    agent_dir.join("extensions/gate.ts"),
                    "export default function (pi) {\n  pi.on(\"tool_call\", async (event, ctx) => {\n    \
                     if (event.toolName !== \"bash\") return undefined;\n    \
                     const ok = await ctx.ui.confirm(\"Run this command?\", event.input.command);\n    \
                     return ok ? undefined : { block: true, reason: \"Blocked by the user\" };\n  });\n}\n",
                )
                .unwrap();
                env.extend([
                    (
                        "OMNIGENT_PI_PATH",
                        omnigent_testkit::agent_cli("pi").display().to_string(),
                    ),
                    ("PI_CODING_AGENT_DIR", agent_dir.display().to_string()),
                    ("PI_OFFLINE", "1".to_owned()),
                ]);
            }
        }
        env
    }

    /// What the model was told about the command in its request after the call.
    fn tool_result(self, vendor: &FakeVendor) -> String {
        let requests: Vec<Value> = vendor
            .requests()
            .into_iter()
            .filter(|r| r.path.contains("messages") || r.path.contains("responses"))
            .map(|r| r.body)
            .collect();
        assert_eq!(requests.len(), 2, "{requests:?}");
        match self {
            Agent::ClaudeCode => requests[1]["messages"].to_string(),
            Agent::Codex | Agent::Pi => requests[1]["input"].to_string(),
        }
    }
}

/// A server, a runner on `agent` and a session bound to it, with a watching client's stream open.
struct Setup {
    _dir: tempfile::TempDir,
    ws: PathBuf,
    server: Server,
    runner: Proc,
    vendor: FakeVendor,
    session: String,
    watcher: Sse,
}

async fn setup(agent: Agent) -> Setup {
    setup_scripted(agent, agent.script()).await
}

/// [`setup`] with the vendor playing `script`.
async fn setup_scripted(agent: Agent, script: Vec<Canned>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    // Canonical: the CLIs resolve paths through symlinks.
    let ws = dir.path().canonicalize().unwrap().join("ws");
    let agent_home = dir.path().join("agent-home");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::create_dir_all(&agent_home).unwrap();
    let vendor = FakeVendor::start(script).await;
    let mut server = start_server(&dir.path().join("omnigent"), 0, 30_000).await;
    let (token, runner_id) = token_and_id(agent.harness());
    let runner = start_runner(
        &dir.path().join("runner"),
        &server.url,
        &token,
        agent.harness(),
        &ws,
        &agent.env(&agent_home, &vendor),
    );
    let session = server
        .session_on_runner(agent.harness(), &ws, &runner_id)
        .await;
    let watcher = server.stream(&session).await;
    Setup {
        _dir: dir,
        ws,
        server,
        runner,
        vendor,
        session,
        watcher,
    }
}

/// Post the message, wait until the watcher hears the agent ask: the question; checks the session is
/// `waiting` with the question pending.
async fn asked(s: &mut Setup) -> Value {
    let (status, body) = s.server.message(&s.session, "make the file").await;
    assert_eq!(status, 202, "{body}");
    let seen = s
        .watcher
        .until(|kind, _| kind == "response.elicitation_request")
        .await;
    let request = seen.last().unwrap().1.clone();
    assert!(
        seen.iter()
            .any(|(k, v)| k == "session.status" && v["status"] == "waiting"),
        "the session did not turn waiting before the question: {seen:?}"
    );
    let message = request["params"]["message"].as_str().unwrap();
    assert!(message.contains(COMMAND), "{request}");
    assert!(
        !s.ws.join(MADE).exists(),
        "the command ran before the answer"
    );
    let (status, session) = s.server.get(&format!("/v1/sessions/{}", s.session)).await;
    assert_eq!(status, 200);
    assert_eq!(session["status"], "waiting", "{session}");
    let eid = request["elicitation_id"].as_str().unwrap();
    let (status, pending) = s
        .server
        .get(&format!("/v1/sessions/{}/elicitations/{eid}", s.session))
        .await;
    assert_eq!(status, 200);
    assert_eq!(pending["status"], "pending", "{pending}");
    request
}

/// Answer `request` with `action` from a second client (its own connection), then once more from the first:
/// 202, then 409.
async fn answer_twice(s: &Setup, request: &Value, action: &str) {
    let eid = request["elicitation_id"].as_str().unwrap();
    let url = format!(
        "{}/v1/sessions/{}/elicitations/{eid}/resolve",
        s.server.url, s.session
    );
    let second_client = reqwest::Client::new();
    let first = second_client
        .post(&url)
        .json(&json!({"action": action}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 202, "{}", first.text().await.unwrap());
    let again_action = if action == "accept" {
        "decline"
    } else {
        "accept"
    };
    let (status, body) = s
        .server
        .post(
            &format!("/v1/sessions/{}/elicitations/{eid}/resolve", s.session),
            json!({"action": again_action}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "already_resolved", "{body}");
}

/// Wait for the resolution and the turn's end on the watcher; the resolution.
async fn resolved_then_idle(s: &mut Setup) -> Value {
    let seen = s
        .watcher
        .until(|kind, v| kind == "session.status" && v["status"] == "idle")
        .await;
    let resolved = seen
        .iter()
        .find(|(k, _)| k == "response.elicitation_resolved")
        .unwrap_or_else(|| panic!("no resolution heard: {seen:?}"))
        .1
        .clone();
    assert!(
        seen.iter().any(|(k, _)| k == "response.completed"),
        "the turn did not complete: {seen:?}"
    );
    resolved
}

/// The stored items of the session, as `type` (and the call's output for a `function_call_output`).
async fn stored(s: &Setup) -> (Vec<String>, String) {
    let items = s.server.transcript(&s.session).await;
    let kinds = items
        .iter()
        .map(|i| i["type"].as_str().unwrap().to_owned())
        .collect();
    let output = items
        .iter()
        .find(|i| i["type"] == "function_call_output")
        .map(|i| i["output"].to_string())
        .unwrap_or_default();
    (kinds, output)
}

async fn approved_runs(agent: Agent) {
    let mut s = setup(agent).await;
    let request = asked(&mut s).await;
    answer_twice(&s, &request, "accept").await;
    let resolved = resolved_then_idle(&mut s).await;
    assert_eq!(resolved["action"], "accept", "{resolved}");
    assert_eq!(resolved["elicitation_id"], request["elicitation_id"]);
    assert!(s.ws.join(MADE).exists(), "the approved command did not run");
    let (kinds, _) = stored(&s).await;
    for kind in ["function_call", "function_call_output", "message"] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} in {kinds:?}");
    }
    let (status, session) = s.server.get(&format!("/v1/sessions/{}", s.session)).await;
    assert_eq!(status, 200);
    assert_eq!(session["status"], "idle", "{session}");
    let eid = request["elicitation_id"].as_str().unwrap();
    let (_, state) = s
        .server
        .get(&format!("/v1/sessions/{}/elicitations/{eid}", s.session))
        .await;
    assert_eq!(state["status"], "resolved", "{state}");
}

async fn denied_does_not_run(agent: Agent) {
    let mut s = setup(agent).await;
    let request = asked(&mut s).await;
    answer_twice(&s, &request, "decline").await;
    let resolved = resolved_then_idle(&mut s).await;
    assert_eq!(resolved["action"], "decline", "{resolved}");
    assert!(!s.ws.join(MADE).exists(), "the denied command ran");
    // The model heard that the command was refused, and the answer after it was stored.
    let told = agent.tool_result(&s.vendor).to_lowercase();
    assert!(
        ["rejected", "denied", "declined", "blocked"]
            .iter()
            .any(|word| told.contains(word)),
        "{told}"
    );
    let (kinds, _) = stored(&s).await;
    assert!(kinds.iter().any(|k| k == "message"), "{kinds:?}");
}

/// SIGKILL the runner of `s`; everything it started (the agent CLI and what the CLI started) is gone soon
/// after: nothing of the session keeps running, or spending, once its runner is gone.
async fn kill_runner_and_see_nothing_left(s: &mut Setup, agent: Agent) {
    let runner = i32::try_from(s.runner.child.id()).unwrap();
    let mut descendants = Vec::new();
    let mut parents = vec![runner];
    while let Some(parent) = parents.pop() {
        let children = omnigent_testkit::process::children(parent);
        descendants.extend(children.iter().copied());
        parents.extend(children);
    }
    assert!(!descendants.is_empty(), "the runner started no {agent:?}");
    let watches: Vec<_> = descendants
        .iter()
        .map(|&pid| omnigent_testkit::process::watch(pid))
        .collect();
    s.runner.kill();
    for watch in watches {
        watch.gone().await;
    }
}

/// The runner is killed while its agent waits on a question.
async fn a_runner_killed_while_asking_leaves_nothing(agent: Agent) {
    let mut s = setup(agent).await;
    asked(&mut s).await;
    kill_runner_and_see_nothing_left(&mut s, agent).await;
}

/// The runner is killed while its agent is in the middle of the vendor's stream.
async fn a_runner_killed_mid_stream_leaves_nothing(agent: Agent) {
    let mut s = setup_scripted(agent, agent.stalled_script()).await;
    let (status, body) = s.server.message(&s.session, "say something").await;
    assert_eq!(status, 202, "{body}");
    s.watcher
        .until(|kind, _| kind == "response.output_text.delta")
        .await;
    kill_runner_and_see_nothing_left(&mut s, agent).await;
}

#[tokio::test]
async fn claude_code_asks_a_second_client_approves_and_the_command_runs() {
    approved_runs(Agent::ClaudeCode).await;
}

#[tokio::test]
async fn claude_code_asks_a_second_client_denies_and_the_command_does_not_run() {
    denied_does_not_run(Agent::ClaudeCode).await;
}

#[tokio::test]
async fn codex_asks_a_second_client_approves_and_the_command_runs() {
    approved_runs(Agent::Codex).await;
}

#[tokio::test]
async fn codex_asks_a_second_client_denies_and_the_command_does_not_run() {
    denied_does_not_run(Agent::Codex).await;
}

#[tokio::test]
async fn pi_asks_through_its_extension_a_second_client_approves_and_the_command_runs() {
    approved_runs(Agent::Pi).await;
}

#[tokio::test]
async fn pi_asks_through_its_extension_a_second_client_denies_and_the_command_does_not_run() {
    denied_does_not_run(Agent::Pi).await;
}

#[tokio::test]
async fn a_runner_killed_while_claude_code_asks_leaves_nothing_running() {
    a_runner_killed_while_asking_leaves_nothing(Agent::ClaudeCode).await;
}

#[tokio::test]
async fn a_runner_killed_while_claude_code_streams_leaves_nothing_running() {
    a_runner_killed_mid_stream_leaves_nothing(Agent::ClaudeCode).await;
}

#[tokio::test]
async fn a_runner_killed_while_codex_asks_leaves_nothing_running() {
    a_runner_killed_while_asking_leaves_nothing(Agent::Codex).await;
}

#[tokio::test]
async fn a_runner_killed_while_codex_streams_leaves_nothing_running() {
    a_runner_killed_mid_stream_leaves_nothing(Agent::Codex).await;
}

#[tokio::test]
async fn a_runner_killed_while_pi_asks_leaves_nothing_running() {
    a_runner_killed_while_asking_leaves_nothing(Agent::Pi).await;
}

#[tokio::test]
async fn a_runner_killed_while_pi_streams_leaves_nothing_running() {
    a_runner_killed_mid_stream_leaves_nothing(Agent::Pi).await;
}
