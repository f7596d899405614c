//! Agents from the server, end to end: `omnigent_runner::run` against an axum server that serves the runner
//! tunnel and `GET /v1/sessions/{id}/agent/contents` (a bundle the test packs), with the vendor a scripted
//! fake (testkit) on loopback: the spec's harness, model, auth (with `${VAR}`s from the runner's environment)
//! and instructions drive the turn, over the Responses API or Chat Completions.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::StreamExt;
use omnigent_proto::agent::bundle::{self, BundleFile, Limits};
use omnigent_proto::events::SseStream;
use omnigent_runner::harness::HarnessKind;
use omnigent_runner::{BackoffPolicy, CancellationToken, HarnessEnv, RunnerConfig, SpecEnv};
use omnigent_testkit::vendor::responses::{self, ResponseStream};
use omnigent_testkit::vendor::{Canned, FakeVendor};
use omnigent_tunnel::{RunnerConnection, RunnerRegistry, TunnelConfig, upgrade};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "binding-token-agents";
const SESSION: &str = "5b1c0e7f2a9d4c3e8f6a1b2c3d4e5f60";

/// What the fake server answers at `agent/contents`.
#[derive(Clone)]
enum AgentAnswer {
    Bundle(Vec<u8>),
    Status(u16, &'static str),
}

#[derive(Clone)]
struct TestServer {
    registry: RunnerRegistry,
    agent: Arc<Mutex<Option<AgentAnswer>>>,
    /// The headers of each `agent/contents` request, with its session id.
    fetches: Arc<Mutex<Vec<(String, HeaderMap)>>>,
}

async fn tunnel_route(
    State(server): State<TestServer>,
    Path(runner_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: omnigent_tunnel::TunnelUpgrade,
) -> Response {
    upgrade(ws, peer, runner_id, &headers, server.registry)
}

async fn token_route() -> Response {
    (StatusCode::BAD_REQUEST, "{\"code\":\"invalid_input\"}").into_response()
}

async fn agent_contents(
    State(server): State<TestServer>,
    Path(session_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    server
        .fetches
        .lock()
        .unwrap()
        .push((session_id, headers.clone()));
    if headers
        .get("x-omnigent-runner-tunnel-token")
        .is_none_or(|t| t != TOKEN)
    {
        return (
            StatusCode::UNAUTHORIZED,
            "{\"error\":{\"message\":\"bad token\"}}",
        )
            .into_response();
    }
    let answer = server.agent.lock().unwrap().clone();
    match answer {
        None => (
            StatusCode::NOT_FOUND,
            "{\"error\":{\"message\":\"no agent\"}}",
        )
            .into_response(),
        Some(AgentAnswer::Bundle(bytes)) => (
            [
                ("content-type", "application/gzip"),
                ("x-agent-id", "agent_test"),
                ("x-agent-name", "test-agent"),
                ("x-agent-session-scoped", "true"),
            ],
            bytes,
        )
            .into_response(),
        Some(AgentAnswer::Status(status, body)) => {
            (StatusCode::from_u16(status).unwrap(), body).into_response()
        }
    }
}

struct Fixture {
    conn: RunnerConnection,
    server: TestServer,
    workspace: tempfile::TempDir,
    agents_dir: PathBuf,
    _home: tempfile::TempDir,
    shutdown: CancellationToken,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A server serving `agent` (none: 404), and our runner connected to it with `spec_env` as its environment.
async fn start(agent: Option<AgentAnswer>, spec_env: &[(&str, &str)]) -> Fixture {
    start_as(Some(TOKEN), agent, spec_env).await
}

/// [`start`] with the runner's binding token `token`.
async fn start_as(
    token: Option<&str>,
    agent: Option<AgentAnswer>,
    spec_env: &[(&str, &str)],
) -> Fixture {
    let registry = RunnerRegistry::new(TunnelConfig::default());
    let server = TestServer {
        registry: registry.clone(),
        agent: Arc::new(Mutex::new(agent)),
        fetches: Arc::default(),
    };
    let app = Router::new()
        .route("/v1/runners/{id}/tunnel", get(tunnel_route))
        .route("/v1/runners/{id}/token", post(token_route))
        .route("/v1/sessions/{id}/agent/contents", get(agent_contents))
        .with_state(server.clone());
    let served = omnigent_testkit::net::serve(app).await;
    let home = tempfile::tempdir().unwrap();
    let workspace = tempfile::tempdir().unwrap();
    let agents_dir = home.path().join("state/runner/agents");
    let mut config = RunnerConfig::new(
        served.url.clone(),
        token.map(str::to_owned),
        workspace.path().to_path_buf(),
        HarnessKind::Echo,
    );
    // Nothing from the test process's environment: the spec and `spec_env` say everything.
    config.env = HarnessEnv::default();
    config.spec_env = SpecEnv(
        spec_env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    );
    config.agents_dir = agents_dir.clone();
    config.backoff = BackoffPolicy {
        base: Duration::from_millis(20),
        cap: Duration::from_millis(200),
        reset_after: Duration::from_secs(60),
    };
    // Without a token the runner dials as a random id: learn it from the registry.
    let mut connected = registry.subscribe();
    let shutdown = CancellationToken::new();
    tokio::spawn(omnigent_runner::run(config, shutdown.clone()));
    let omnigent_tunnel::RunnerEvent::Connected { runner_id, .. } =
        tokio::time::timeout(WAIT, connected.recv())
            .await
            .expect("runner connects")
            .unwrap()
    else {
        panic!("the first registry event is the runner's connection")
    };
    let conn = registry
        .wait_for_runner(&runner_id, WAIT)
        .await
        .expect("runner connects");
    Fixture {
        conn,
        server,
        workspace,
        agents_dir,
        _home: home,
        shutdown,
    }
}

/// A bundle of `config.yaml` = `spec` and the other `files`.
fn bundle_of(spec: &str, files: &[(&str, &str)]) -> AgentAnswer {
    let mut all = BTreeMap::new();
    for (path, text) in std::iter::once(&("config.yaml", spec)).chain(files) {
        all.insert(
            (*path).to_owned(),
            BundleFile {
                contents: text.as_bytes().to_vec(),
                executable: false,
            },
        );
    }
    AgentAnswer::Bundle(bundle::pack(&all, &Limits::default()).unwrap())
}

async fn call(conn: &RunnerConnection, request: http::Request<Bytes>) -> (u16, Value) {
    let response = tokio::time::timeout(WAIT, conn.request(request))
        .await
        .unwrap()
        .unwrap();
    let status = response.status().as_u16();
    let mut body = Vec::new();
    let mut stream = response.into_body().into_data_stream();
    while let Some(chunk) = tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
        body.extend_from_slice(&chunk.unwrap());
    }
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn json_request(method: &str, path: &str, body: Value) -> http::Request<Bytes> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Bytes::from(body.to_string()))
        .unwrap()
}

struct Events {
    body: SseStream<axum::body::BodyDataStream>,
}

impl Events {
    async fn open(conn: &RunnerConnection) -> Events {
        let request = http::Request::get(format!("/v1/sessions/{SESSION}/stream"))
            .body(Bytes::new())
            .unwrap();
        let response = tokio::time::timeout(WAIT, conn.request(request))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), 200);
        Events {
            body: SseStream::new(response.into_body().into_data_stream(), 1 << 20),
        }
    }

    /// Events up to and including the next `session.status` idle, heartbeats left out.
    async fn until_idle(&mut self) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let event = tokio::time::timeout(WAIT, self.body.next())
                .await
                .expect("an event in time")
                .expect("stream open")
                .unwrap();
            let event: Value = serde_json::from_str(&event.data).unwrap();
            if event["type"] == "session.heartbeat" {
                continue;
            }
            let idle = event["type"] == "session.status" && event["status"] == "idle";
            events.push(event);
            if idle {
                return events;
            }
        }
    }
}

/// Stream, init (with an `agent_id`, as 0.19.1 sends it), one message; the turn's events.
async fn one_turn(fixture: &Fixture, text: &str) -> Vec<Value> {
    let mut events = Events::open(&fixture.conn).await;
    let init = json!({
        "session_id": SESSION,
        "agent_id": "675fd1468fd8985e0f5fef34ba77ed39",
        "sub_agent_name": null,
        "session_init": {
            "protocol_version": 2,
            "server_version": "0.19.1",
            "session_id": SESSION,
            "snapshot": {"workspace": fixture.workspace.path().display().to_string(), "labels": {}},
        }
    });
    let (status, created) = call(&fixture.conn, json_request("POST", "/v1/sessions", init)).await;
    assert_eq!(status, 201, "{created}");
    let message = json!({
        "type": "message", "role": "user",
        "content": [{"type": "input_text", "text": text}],
        "agent_id": "675fd1468fd8985e0f5fef34ba77ed39", "model": "test-agent",
    });
    let (status, _) = call(
        &fixture.conn,
        json_request("POST", &format!("/v1/sessions/{SESSION}/events"), message),
    )
    .await;
    assert_eq!(status, 202);
    events.until_idle().await
}

fn deltas(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect()
}

/// The turn's error message (it must have failed).
fn failure(events: &[Value]) -> String {
    let failed = events
        .iter()
        .find(|e| e["type"] == "response.failed")
        .unwrap_or_else(|| panic!("the turn did not fail: {events:?}"));
    failed["response"]["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn openai_agents_spec(extra_auth: &str) -> String {
    format!(
        "spec_version: 1
name: test-agent
instructions: system.md
executor:
  type: omnigent
  model: gpt-agent
  config:
    harness: openai-agents
  auth:
    type: api_key
    api_key: ${{AGENT_TEST_KEY}}
    base_url: ${{AGENT_TEST_VENDOR}}/v1
{extra_auth}os_env:
  type: caller_process
  cwd: .
  sandbox:
    type: none
"
    )
}

const INSTRUCTIONS: &str = "You are the test agent. Answer in one word.";

#[tokio::test]
async fn an_uploaded_openai_agents_agent_runs_over_the_responses_api() {
    let vendor = FakeVendor::start(vec![Canned::stream(
        ResponseStream::new("resp_v1")
            .text(&["Hel", "lo"])
            .completed(21, 4),
    )])
    .await;
    let spec = openai_agents_spec("");
    let fixture = start(
        Some(bundle_of(&spec, &[("system.md", INSTRUCTIONS)])),
        &[
            ("AGENT_TEST_KEY", "sk-from-the-runner-env"),
            ("AGENT_TEST_VENDOR", &vendor.url),
        ],
    )
    .await;
    let turn = one_turn(&fixture, "say hello").await;
    assert_eq!(deltas(&turn), "Hello", "{turn:?}");
    let completed = turn
        .iter()
        .find(|e| e["type"] == "response.completed")
        .unwrap();
    assert_eq!(completed["response"]["usage"]["input_tokens"], 21);
    assert_eq!(completed["response"]["usage"]["output_tokens"], 4);

    // The agent was fetched with the runner's token and the MCP-selection header.
    let fetches = fixture.server.fetches.lock().unwrap().clone();
    assert_eq!(fetches.len(), 1);
    assert_eq!(fetches[0].0, SESSION);
    assert_eq!(fetches[0].1["x-omnigent-runner-tunnel-token"], TOKEN);
    assert_eq!(fetches[0].1["x-omnigent-mcp-selection"], "1");
    // ...and unpacked into a directory of its own under the runner's state directory.
    let unpacked: Vec<_> = std::fs::read_dir(fixture.agents_dir.join(SESSION))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(unpacked.len(), 1);
    assert_eq!(
        std::fs::read_to_string(unpacked[0].join("system.md")).unwrap(),
        INSTRUCTIONS
    );

    // The request: Responses, the spec's model, key (from ${AGENT_TEST_KEY}) and instructions file.
    let requests = vendor.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.path, "/v1/responses");
    assert_eq!(
        request.headers["authorization"],
        "Bearer sk-from-the-runner-env"
    );
    assert_eq!(request.body["model"], "gpt-agent");
    assert_eq!(request.body["stream"], true);
    assert_eq!(request.body["instructions"], INSTRUCTIONS);
    assert_eq!(
        request.body["input"],
        json!([{"type": "message", "role": "user", "content": "say hello"}])
    );
    let tools = request.body["tools"].as_array().unwrap();
    assert!(
        tools
            .iter()
            .any(|t| t["type"] == "function" && t["name"] == "write_file"),
        "{tools:?}"
    );
}

#[tokio::test]
async fn a_responses_function_call_runs_in_the_workspace_and_its_output_goes_back() {
    let args = r#"{"path":"out.txt","content":"written by the agent"}"#;
    let vendor = FakeVendor::start(vec![
        Canned::stream(
            ResponseStream::new("resp_1")
                .text(&["Writing it."])
                .function_call("call_w1", "write_file", args)
                .completed(10, 5),
        ),
        Canned::stream(responses::text(&["Done."])),
    ])
    .await;
    let fixture = start(
        Some(bundle_of(
            &openai_agents_spec(""),
            &[("system.md", INSTRUCTIONS)],
        )),
        &[
            ("AGENT_TEST_KEY", "sk-1"),
            ("AGENT_TEST_VENDOR", &vendor.url),
        ],
    )
    .await;
    let turn = one_turn(&fixture, "write out.txt").await;
    assert_eq!(
        std::fs::read_to_string(fixture.workspace.path().join("out.txt")).unwrap(),
        "written by the agent"
    );
    assert!(deltas(&turn).ends_with("Done."), "{turn:?}");
    let items: Vec<&Value> = turn
        .iter()
        .filter(|e| e["type"] == "response.output_item.done")
        .map(|e| &e["item"])
        .collect();
    let (call, output) = call_and_output(items.iter().copied());
    assert_eq!(
        (&call["call_id"], &call["name"], &call["arguments"]),
        (&json!("call_w1"), &json!("write_file"), &json!(args))
    );
    assert_eq!(output["call_id"], "call_w1");

    let requests = vendor.requests();
    assert_eq!(requests.len(), 2);
    let input = requests[1].body["input"].as_array().unwrap().clone();
    let kinds: Vec<&str> = input.iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "message",
            "message",
            "function_call",
            "function_call_output"
        ],
        "{input:?}"
    );
    assert_eq!(input[1]["role"], "assistant");
    assert_eq!(input[1]["content"], "Writing it.");
    assert_eq!(
        (
            &input[2]["call_id"],
            &input[2]["name"],
            &input[2]["arguments"]
        ),
        (&json!("call_w1"), &json!("write_file"), &json!(args))
    );
    assert_eq!(input[3]["call_id"], "call_w1");
    assert!(input[3]["output"].as_str().unwrap().contains("out.txt"));
}

/// The first `function_call` and the first `function_call_output` among `items`.
fn call_and_output<'a>(items: impl IntoIterator<Item = &'a Value>) -> (&'a Value, &'a Value) {
    let items: Vec<&Value> = items.into_iter().collect();
    let find = |kind: &str| *items.iter().find(|i| i["type"] == kind).unwrap();
    (find("function_call"), find("function_call_output"))
}

fn chat_text(t: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"choices": [{"index": 0, "delta": {"content": t}, "finish_reason": null}]})
    )
}

#[tokio::test]
async fn the_spec_chooses_chat_completions_with_wire_api() {
    let vendor = FakeVendor::start(vec![Canned::stream(vec![
        chat_text("over "),
        chat_text("chat"),
        "data: [DONE]\n\n".to_owned(),
    ])])
    .await;
    let spec = "name: chatty
prompt: Be brief and kind.
executor:
  harness: openai-agents
  model: gpt-chat
  auth:
    api_key: sk-inline
    base_url: ${AGENT_TEST_VENDOR}/v1
    wire_api: chat
";
    let fixture = start(
        Some(bundle_of(spec, &[])),
        &[("AGENT_TEST_VENDOR", &vendor.url)],
    )
    .await;
    let turn = one_turn(&fixture, "hi").await;
    assert_eq!(deltas(&turn), "over chat", "{turn:?}");
    let request = &vendor.requests()[0];
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(request.headers["authorization"], "Bearer sk-inline");
    assert_eq!(request.body["model"], "gpt-chat");
    assert_eq!(
        request.body["messages"][0],
        json!({"role": "system", "content": "Be brief and kind."})
    );
    assert_eq!(
        request.body["messages"][1],
        json!({"role": "user", "content": "hi"})
    );
}

#[tokio::test]
async fn no_agent_on_the_server_is_the_built_in_agent() {
    let fixture = start(None, &[]).await;
    let turn = one_turn(&fixture, "echo me").await;
    assert_eq!(deltas(&turn), "echo me");
    assert_eq!(fixture.server.fetches.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_runner_without_a_token_runs_the_built_in_agent_when_the_server_wants_one() {
    let fixture = start_as(
        None,
        Some(bundle_of("executor: {harness: openai-agents}\n", &[])),
        &[],
    )
    .await;
    assert_eq!(
        deltas(&one_turn(&fixture, "still echo").await),
        "still echo"
    );
    let fetches = fixture.server.fetches.lock().unwrap().clone();
    assert_eq!(fetches.len(), 1);
    assert!(fetches[0].1.get("x-omnigent-runner-tunnel-token").is_none());
}

#[tokio::test]
async fn a_launched_agent_without_a_key_fails_its_turn_naming_what_to_set() {
    let spec = "name: keyless
executor:
  harness: openai-agents
  model: gpt-agent
";
    let fixture = start(Some(bundle_of(spec, &[])), &[]).await;
    let turn = one_turn(&fixture, "hi").await;
    let message = failure(&turn);
    assert!(
        message.contains("set OPENAI_API_KEY or executor.auth.api_key in the agent spec"),
        "{message}"
    );
    let error = turn.iter().find(|e| e["type"] == "response.error").unwrap();
    assert_eq!(error["error"]["code"], "harness_not_configured");
}

#[tokio::test]
async fn an_anthropic_agent_without_a_key_names_the_anthropic_variables() {
    // (`claude-sdk` is Claude Code, whose missing login is tested in tests/claude_code.rs.)
    let spec = "name: polly\ninstructions: Be Polly.\nexecutor:\n  harness: anthropic\n  model: claude-test\n";
    let fixture = start(Some(bundle_of(spec, &[])), &[]).await;
    let message = failure(&one_turn(&fixture, "hi").await);
    assert!(
        message.contains("ANTHROPIC_API_KEY") && message.contains("executor.auth.api_key"),
        "{message}"
    );
}

#[tokio::test]
async fn an_unset_variable_in_the_spec_fails_the_turn_naming_it() {
    let spec = openai_agents_spec("");
    let fixture = start(
        Some(bundle_of(&spec, &[("system.md", INSTRUCTIONS)])),
        &[("AGENT_TEST_VENDOR", "http://127.0.0.1:9")],
    )
    .await;
    let turn = one_turn(&fixture, "hi").await;
    let message = failure(&turn);
    assert!(
        message.contains("executor.auth.api_key") && message.contains("set AGENT_TEST_KEY"),
        "{message}"
    );
    let error = turn.iter().find(|e| e["type"] == "response.error").unwrap();
    assert_eq!(error["error"]["code"], "agent_unavailable");
}

#[tokio::test]
async fn a_server_error_or_a_broken_bundle_fails_the_turn_not_the_runner() {
    let fixture = start(
        Some(AgentAnswer::Status(500, "{\"detail\":\"db down\"}")),
        &[],
    )
    .await;
    let message = failure(&one_turn(&fixture, "hi").await);
    assert!(
        message.contains("HTTP 500") && message.contains("db down"),
        "{message}"
    );
    // A token the server does not accept, and a body past the bundle cap, are named as such.
    *fixture.server.agent.lock().unwrap() =
        Some(AgentAnswer::Status(403, "{\"detail\":\"not yours\"}"));
    let message = failure(&one_turn(&fixture, "hi").await);
    assert!(message.contains("binding token"), "{message}");
    *fixture.server.agent.lock().unwrap() = Some(AgentAnswer::Bundle(vec![0; 11 << 20]));
    let message = failure(&one_turn(&fixture, "hi").await);
    assert!(message.contains("agent bundle"), "{message}");
    // The runner lives on: the same session, re-initialised once the server serves a (broken) bundle.
    *fixture.server.agent.lock().unwrap() =
        Some(AgentAnswer::Bundle(b"not a gzip at all".to_vec()));
    let message = failure(&one_turn(&fixture, "again").await);
    assert!(message.contains("agent bundle"), "{message}");
    // Each init downloads afresh, and only the newest download is kept.
    *fixture.server.agent.lock().unwrap() = Some(bundle_of(
        "executor: {harness: echo}\ninstructions: Echo.\n",
        &[],
    ));
    for text in ["fourth", "fifth"] {
        assert_eq!(deltas(&one_turn(&fixture, text).await), text);
    }
    let kept: Vec<_> = std::fs::read_dir(fixture.agents_dir.join(SESSION))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    // And a built-in agent again once there is none.
    *fixture.server.agent.lock().unwrap() = None;
    assert_eq!(deltas(&one_turn(&fixture, "third").await), "third");
}

#[tokio::test]
async fn a_failed_responses_stream_fails_the_turn_with_the_vendor_message() {
    let vendor = FakeVendor::start(vec![Canned::stream(responses::failed(
        "server_error",
        "the model melted",
    ))])
    .await;
    let fixture = start(
        Some(bundle_of(
            &openai_agents_spec(""),
            &[("system.md", INSTRUCTIONS)],
        )),
        &[
            ("AGENT_TEST_KEY", "sk-1"),
            ("AGENT_TEST_VENDOR", &vendor.url),
        ],
    )
    .await;
    let message = failure(&one_turn(&fixture, "hi").await);
    assert!(message.contains("the model melted"), "{message}");
}

/// A spec whose `tools` run the MCP stdio server the tests ship (`tests/fixtures/mcp_server.py`, named by
/// `${MCP_SERVER_SCRIPT}` from the runner's environment: stdio servers run in the workspace, as 0.19.1's),
/// over the wire `auth_extra` chooses.
fn mcp_spec(auth_extra: &str) -> String {
    format!(
        "name: noter
instructions: Take notes with the notes tools.
executor:
  config:
    harness: openai-agents
  model: gpt-agent
  auth:
    api_key: sk-mcp
    base_url: ${{AGENT_TEST_VENDOR}}/v1
{auth_extra}tools:
  notes:
    type: mcp
    command: /usr/bin/python3
    args: ['${{MCP_SERVER_SCRIPT}}']
    tools: [write_note, add]
"
    )
}

/// A runner serving an agent of [`mcp_spec`] against `vendor`.
async fn start_mcp(vendor: &FakeVendor, auth_extra: &str) -> Fixture {
    let script = format!(
        "{}/tests/fixtures/mcp_server.py",
        env!("CARGO_MANIFEST_DIR")
    );
    start(
        Some(bundle_of(&mcp_spec(auth_extra), &[])),
        &[
            ("AGENT_TEST_VENDOR", &vendor.url),
            ("MCP_SERVER_SCRIPT", &script),
        ],
    )
    .await
}

/// The `function_call` and `function_call_output` items of a turn, as (type, call_id, name or output).
fn tool_items(events: &[Value]) -> Vec<(String, String, String)> {
    events
        .iter()
        .filter(|e| e["type"] == "response.output_item.done")
        .map(|e| &e["item"])
        .filter(|i| i["type"] == "function_call" || i["type"] == "function_call_output")
        .map(|i| {
            let what = if i["type"] == "function_call" {
                &i["name"]
            } else {
                &i["output"]
            };
            (
                i["type"].as_str().unwrap().to_owned(),
                i["call_id"].as_str().unwrap().to_owned(),
                what.as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_mcp_tool_of_the_spec_is_called_over_the_responses_api() {
    let args = r#"{"text":"noted over responses"}"#;
    let vendor = FakeVendor::start(vec![
        Canned::stream(
            ResponseStream::new("resp_m1")
                .function_call("call_m1", "notes__write_note", args)
                .completed(12, 3),
        ),
        Canned::stream(responses::text(&["Noted."])),
    ])
    .await;
    let fixture = start_mcp(&vendor, "").await;
    let turn = one_turn(&fixture, "note it").await;
    // The MCP server really ran the tool, in the session's workspace.
    assert_eq!(
        std::fs::read_to_string(fixture.workspace.path().join("note.txt")).unwrap(),
        "noted over responses",
        "{turn:?}"
    );
    assert_eq!(deltas(&turn), "Noted.", "{turn:?}");
    assert_eq!(
        tool_items(&turn),
        [
            (
                "function_call".to_owned(),
                "call_m1".to_owned(),
                "notes__write_note".to_owned()
            ),
            (
                "function_call_output".into(),
                "call_m1".into(),
                "wrote note.txt".into()
            ),
        ]
    );

    let requests = vendor.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].path, "/v1/responses");
    // Offered as Responses function tools, namespaced by server, the allow-list applied.
    let tools = requests[0].body["tools"].as_array().unwrap();
    let note = tools
        .iter()
        .find(|t| t["name"] == "notes__write_note")
        .unwrap_or_else(|| panic!("{tools:?}"));
    assert_eq!(note["type"], "function");
    assert_eq!(note["description"], "Write a note to note.txt.");
    assert_eq!(note["parameters"]["required"], json!(["text"]));
    assert!(tools.iter().any(|t| t["name"] == "notes__add"));
    assert!(
        !tools.iter().any(|t| t["name"] == "notes__secret"),
        "{tools:?}"
    );
    // The second request carries the call and the MCP server's result.
    let input = requests[1].body["input"].as_array().unwrap();
    let (call, output) = call_and_output(input);
    assert_eq!(
        (&call["call_id"], &call["name"], &call["arguments"]),
        (&json!("call_m1"), &json!("notes__write_note"), &json!(args))
    );
    assert_eq!(
        (&output["call_id"], &output["output"]),
        (&json!("call_m1"), &json!("wrote note.txt"))
    );
}

#[tokio::test]
async fn an_mcp_tool_of_the_spec_is_called_over_chat_completions() {
    let call = format!(
        "data: {}\n\n",
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_c1",
            "type": "function", "function": {"name": "notes__add", "arguments": "{\"a\": 2, \"b\": 40}"}}]},
            "finish_reason": "tool_calls"}]})
    );
    let vendor = FakeVendor::start(vec![
        Canned::stream(vec![call, "data: [DONE]\n\n".to_owned()]),
        Canned::stream(vec![chat_text("42."), "data: [DONE]\n\n".to_owned()]),
    ])
    .await;
    let fixture = start_mcp(&vendor, "    wire_api: chat\n").await;
    let turn = one_turn(&fixture, "add them").await;
    assert_eq!(deltas(&turn), "42.", "{turn:?}");
    assert_eq!(
        tool_items(&turn),
        [
            (
                "function_call".to_owned(),
                "call_c1".to_owned(),
                "notes__add".to_owned()
            ),
            ("function_call_output".into(), "call_c1".into(), "42".into()),
        ]
    );
    let requests = vendor.requests();
    assert_eq!(requests[0].path, "/v1/chat/completions");
    let result = requests[1].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .unwrap()
        .clone();
    assert_eq!(
        (&result["tool_call_id"], &result["content"]),
        (&json!("call_c1"), &json!("42"))
    );
}
