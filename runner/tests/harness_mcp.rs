//! MCP tools against a real MCP server: `tests/fixtures/mcp_server.py`, a tiny stdio server run by Python 3,
//! started by the runner's toolbox (rmcp), its tools offered and called through the openai and anthropic
//! harnesses against the fake vendor; servers that cannot start or die mid-session become error items.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Canned, FakeVendor, user};
use omnigent_proto::agent::spec::Tool;
use omnigent_runner::harness::mcp::Toolbox;
use omnigent_runner::harness::{
    self, HarnessConfig, HarnessError, HarnessKind, HistoryEntry, TurnOutcome,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const PYTHON: &str = "/usr/bin/python3";

fn script() -> String {
    format!(
        "{}/tests/fixtures/mcp_server.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// The fixture server as a spec entry.
fn server() -> Tool {
    Tool {
        kind: Some("mcp".into()),
        command: Some(PYTHON.into()),
        args: vec![script()],
        ..Tool::default()
    }
}

// --- OpenAI Chat Completions chunks ---

fn data(chunk: Value) -> String {
    format!("data: {chunk}\n\n")
}

fn text(t: &str) -> String {
    data(json!({"choices": [{"index": 0, "delta": {"content": t}, "finish_reason": null}]}))
}

fn call(id: &str, name: &str, args: &str) -> String {
    data(json!({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": id, "type": "function", "function": {"name": name, "arguments": args}}
    ]}, "finish_reason": null}]}))
}

fn finish(reason: &str) -> String {
    data(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}))
}

const DONE: &str = "data: [DONE]\n\n";

/// A completion that calls `name` with `args`, then one that answers `answer`.
fn call_then_answer(name: &str, args: &str, answer: &str) -> Vec<Canned> {
    vec![
        Canned::stream(vec![
            call("call_1", name, args),
            finish("tool_calls"),
            DONE.into(),
        ]),
        Canned::stream(vec![text(answer), finish("stop"), DONE.into()]),
    ]
}

fn answer(t: &str) -> Canned {
    Canned::stream(vec![text(t), finish("stop"), DONE.into()])
}

fn openai_config(vendor: &FakeVendor) -> HarnessConfig {
    HarnessConfig {
        model: Some("gpt-test".into()),
        base_url: Some(format!("{}/v1", vendor.url)),
        api_key: Some("sk-test".into()),
        idle_timeout: Some(Duration::from_secs(10)),
        tool_timeout: Some(Duration::from_secs(10)),
        ..HarnessConfig::default()
    }
}

async fn run_turn(
    kind: HarnessKind,
    ws: &Path,
    config: HarnessConfig,
    toolbox: &Toolbox,
    history: Vec<HistoryEntry>,
) -> (Result<TurnOutcome, HarnessError>, Vec<Value>) {
    let mut turn = common::turn(ws, config, history);
    turn.mcp = Some(toolbox.clone());
    let (sink, mut rx) = common::sink();
    let result = common::within(
        40,
        harness::run_turn(kind, &turn, &sink, &CancellationToken::new()),
    )
    .await;
    (result, common::drain(&mut rx))
}

/// The names of the tools a Chat Completions request offered.
fn offered(request: &Value) -> Vec<String> {
    request["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap().to_owned())
        .collect()
}

/// The `response.error` events, as (tool_name, code, message).
fn error_items(events: &[Value]) -> Vec<(String, String, String)> {
    events
        .iter()
        .filter(|e| e["type"] == "response.error")
        .map(|e| {
            assert_eq!(e["source"], "tool");
            (
                e["tool_name"].as_str().unwrap().to_owned(),
                e["error"]["code"].as_str().unwrap().to_owned(),
                e["error"]["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_mcp_tool_is_offered_called_and_its_result_sent_back() {
    let vendor = FakeVendor::start(call_then_answer(
        "notes__write_note",
        r#"{"text": "hello from mcp"}"#,
        "Noted.",
    ))
    .await;
    let ws = tempfile::tempdir().unwrap();
    let toolbox = Toolbox::spawn(vec![("notes".into(), server())]);
    let (result, events) = run_turn(
        HarnessKind::OpenAi,
        ws.path(),
        openai_config(&vendor),
        &toolbox,
        vec![user("note it")],
    )
    .await;
    let outcome = result.unwrap();

    // The tool really ran (in the session's workspace).
    assert_eq!(
        std::fs::read_to_string(ws.path().join("note.txt")).unwrap(),
        "hello from mcp"
    );
    // Streamed as a function_call and its function_call_output, the answer after.
    assert_eq!(
        common::summarize(&events),
        [
            r#"call:call_1:notes__write_note:{"text": "hello from mcp"}"#.to_owned(),
            "output:call_1:wrote note.txt".into(),
            "delta:Noted.".into(),
        ]
    );
    assert!(matches!(
        &outcome.new_history[1],
        HistoryEntry::ToolResult { output, .. } if output == "wrote note.txt"
    ));
    let requests = vendor.requests();
    assert_eq!(requests.len(), 2);
    // Offered next to the built-in tools, namespaced by server.
    let names = offered(&requests[0].body);
    for name in [
        "shell",
        "read_file",
        "notes__add",
        "notes__write_note",
        "notes__crash",
    ] {
        assert!(names.contains(&name.to_owned()), "{name} not in {names:?}");
    }
    let add = &requests[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == "notes__add")
        .unwrap()["function"];
    assert_eq!(add["description"], "Add two integers.");
    assert_eq!(add["parameters"]["required"], json!(["a", "b"]));
    // The second request carries the call and its result.
    let messages = requests[1].body["messages"].as_array().unwrap();
    let result = messages.iter().find(|m| m["role"] == "tool").unwrap();
    assert_eq!(result["tool_call_id"], "call_1");
    assert_eq!(result["content"], "wrote note.txt");
}

#[tokio::test]
async fn tool_arguments_and_errors_reach_the_model() {
    let vendor = FakeVendor::start(vec![
        Canned::stream(vec![
            call("call_1", "notes__add", r#"{"a": 2, "b": 40}"#),
            finish("tool_calls"),
            DONE.into(),
        ]),
        Canned::stream(vec![
            call("call_2", "notes__add", "[1, 2]"),
            finish("tool_calls"),
            DONE.into(),
        ]),
        answer("42."),
    ])
    .await;
    let ws = tempfile::tempdir().unwrap();
    let toolbox = Toolbox::spawn(vec![("notes".into(), server())]);
    let (result, events) = run_turn(
        HarnessKind::OpenAi,
        ws.path(),
        openai_config(&vendor),
        &toolbox,
        vec![user("add")],
    )
    .await;
    result.unwrap();
    let summary = common::summarize(&events);
    assert_eq!(summary[1], "output:call_1:42");
    assert_eq!(
        summary[3],
        "output:call_2:error: the arguments of add must be a JSON object"
    );
}

#[tokio::test]
async fn the_allow_list_hides_a_tool() {
    let vendor = FakeVendor::start(call_then_answer("notes__secret", "{}", "Hidden.")).await;
    let ws = tempfile::tempdir().unwrap();
    let mut spec = server();
    spec.allowed_tools = Some(vec!["add".into()]);
    let toolbox = Toolbox::spawn(vec![("notes".into(), spec)]);
    let (result, events) = run_turn(
        HarnessKind::OpenAi,
        ws.path(),
        openai_config(&vendor),
        &toolbox,
        vec![user("tell the secret")],
    )
    .await;
    result.unwrap();
    let names = offered(&vendor.requests()[0].body);
    assert!(names.contains(&"notes__add".to_owned()), "{names:?}");
    assert!(!names.iter().any(|n| n == "notes__secret"), "{names:?}");
    assert!(!names.iter().any(|n| n == "notes__write_note"), "{names:?}");
    // Called anyway, it is not run: the model is told there is no such tool.
    let summary = common::summarize(&events);
    assert!(
        summary[1].starts_with("output:call_1:error: unknown tool \"notes__secret\""),
        "{summary:?}"
    );
}

#[tokio::test]
async fn a_server_that_cannot_start_is_an_error_item_and_the_turn_still_answers() {
    let vendor = FakeVendor::start(vec![answer("Still here.")]).await;
    let ws = tempfile::tempdir().unwrap();
    let missing = Tool {
        command: Some("/nonexistent/mcp-server".into()),
        ..Tool::default()
    };
    let toolbox = Toolbox::spawn(vec![("broken".into(), missing), ("notes".into(), server())]);
    let (result, events) = run_turn(
        HarnessKind::OpenAi,
        ws.path(),
        openai_config(&vendor),
        &toolbox,
        vec![user("hi")],
    )
    .await;
    result.unwrap();
    let errors = error_items(&events);
    assert_eq!(errors.len(), 1, "{events:?}");
    let (server, code, message) = &errors[0];
    assert_eq!(server, "broken");
    assert_eq!(code, "mcp_server_error");
    assert!(
        message.contains("could not start") && message.contains("/nonexistent/mcp-server"),
        "{message}"
    );
    assert_eq!(
        common::summarize(&events).last().unwrap(),
        "delta:Still here."
    );
    // The other server's tools are offered, the broken one's are not.
    let names = offered(&vendor.requests()[0].body);
    assert!(names.contains(&"notes__add".to_owned()), "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with("broken__")),
        "{names:?}"
    );
}

#[tokio::test]
async fn a_server_that_dies_mid_session_is_an_error_item_and_the_session_goes_on() {
    let vendor = FakeVendor::start(vec![
        Canned::stream(vec![
            call("call_1", "notes__crash", "{}"),
            finish("tool_calls"),
            DONE.into(),
        ]),
        answer("It crashed."),
        answer("Second turn."),
    ])
    .await;
    let ws = tempfile::tempdir().unwrap();
    let toolbox = Toolbox::spawn(vec![("notes".into(), server())]);
    let config = openai_config(&vendor);
    let (result, events) = run_turn(
        HarnessKind::OpenAi,
        ws.path(),
        config.clone(),
        &toolbox,
        vec![user("crash it")],
    )
    .await;
    let outcome = result.unwrap();
    let summary = common::summarize(&events);
    assert_eq!(summary[1], "response.error", "{summary:?}");
    assert!(
        summary[2].starts_with(
            "output:call_1:error: the MCP server \"notes\" stopped (its process exited"
        ),
        "{summary:?}"
    );
    let errors = error_items(&events);
    assert_eq!(errors.len(), 1, "{events:?}");
    assert_eq!(errors[0].0, "notes");
    assert!(errors[0].2.contains("stopped"), "{errors:?}");
    assert_eq!(summary.last().unwrap(), "delta:It crashed.");

    // The next turn goes on without the dead server's tools, and does not report it again.
    let mut history = vec![user("crash it")];
    history.extend(outcome.new_history);
    history.push(user("again"));
    let (result, events) =
        run_turn(HarnessKind::OpenAi, ws.path(), config, &toolbox, history).await;
    result.unwrap();
    assert!(error_items(&events).is_empty(), "{events:?}");
    assert_eq!(common::summarize(&events), ["delta:Second turn."]);
    let names = offered(&vendor.requests()[2].body);
    assert!(names.contains(&"shell".to_owned()));
    assert!(!names.iter().any(|n| n.starts_with("notes__")), "{names:?}");
}

#[tokio::test]
async fn dropping_the_toolbox_stops_its_servers() {
    let vendor = FakeVendor::start(vec![answer("ok")]).await;
    let ws = tempfile::tempdir().unwrap();
    let pid_file = ws.path().join("mcp.pid");
    let mut spec = server();
    spec.env
        .insert("MCP_PID_FILE".into(), pid_file.display().to_string());
    let toolbox = Toolbox::spawn(vec![("notes".into(), spec)]);
    let (result, _) = run_turn(
        HarnessKind::OpenAi,
        ws.path(),
        openai_config(&vendor),
        &toolbox,
        vec![user("hi")],
    )
    .await;
    result.unwrap();
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let process = common::watch(pid);
    assert!(process.is_alive());
    // Same process group as this process (the runner's): a group kill of the runner stops it too.
    assert_eq!(
        nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))).unwrap(),
        nix::unistd::getpgrp()
    );
    drop(toolbox);
    process.gone().await;
}

// --- Anthropic Messages ---

fn event(payload: Value) -> String {
    format!(
        "event: {}\ndata: {payload}\n\n",
        payload["type"].as_str().unwrap()
    )
}

fn message(blocks: Vec<Value>, stop_reason: &str) -> Canned {
    let mut events = vec![event(json!({"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-test",
        "stop_reason": null, "usage": {"input_tokens": 10, "output_tokens": 1}}}))];
    for (index, block) in blocks.into_iter().enumerate() {
        let delta = if block["type"] == "tool_use" {
            json!({"type": "input_json_delta", "partial_json": block["input"].to_string()})
        } else {
            json!({"type": "text_delta", "text": block["text"]})
        };
        let mut start = block.clone();
        if start["type"] == "tool_use" {
            start["input"] = json!({});
        } else {
            start["text"] = json!("");
        }
        events.push(event(
            json!({"type": "content_block_start", "index": index, "content_block": start}),
        ));
        events.push(event(
            json!({"type": "content_block_delta", "index": index, "delta": delta}),
        ));
        events.push(event(json!({"type": "content_block_stop", "index": index})));
    }
    events.push(event(json!({"type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": 5}})));
    events.push(event(json!({"type": "message_stop"})));
    Canned::stream(events)
}

#[tokio::test]
async fn the_anthropic_harness_offers_and_calls_mcp_tools() {
    let vendor = FakeVendor::start(vec![
        message(
            vec![json!({"type": "tool_use", "id": "toolu_1", "name": "notes__add", "input": {"a": 20, "b": 22}})],
            "tool_use",
        ),
        message(vec![json!({"type": "text", "text": "It is 42."})], "end_turn"),
    ])
    .await;
    let ws = tempfile::tempdir().unwrap();
    let toolbox = Toolbox::spawn(vec![("notes".into(), server())]);
    let config = HarnessConfig {
        base_url: Some(vendor.url.clone()),
        api_key: Some("sk-ant-test".into()),
        idle_timeout: Some(Duration::from_secs(10)),
        tool_timeout: Some(Duration::from_secs(10)),
        ..HarnessConfig::default()
    };
    let (result, events) = run_turn(
        HarnessKind::Anthropic,
        ws.path(),
        config,
        &toolbox,
        vec![user("add")],
    )
    .await;
    result.unwrap();
    assert_eq!(
        common::summarize(&events),
        [
            r#"call:toolu_1:notes__add:{"a":20,"b":22}"#.to_owned(),
            "output:toolu_1:42".into(),
            "delta:It is 42.".into(),
        ]
    );
    let requests = vendor.requests();
    let names: Vec<&str> = requests[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"notes__add") && names.contains(&"read_file"),
        "{names:?}"
    );
    let add = requests[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "notes__add")
        .unwrap();
    assert_eq!(add["input_schema"]["required"], json!(["a", "b"]));
    let last = requests[1].body["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["role"], "user");
    assert_eq!(
        last["content"][0],
        json!({"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"})
    );
}

#[tokio::test]
async fn a_server_killed_between_turns_is_reported_once_on_the_next_turn() {
    let vendor = FakeVendor::start(vec![
        answer("First."),
        Canned::stream(vec![
            call("call_1", "notes__add", r#"{"a": 1, "b": 2}"#),
            finish("tool_calls"),
            DONE.into(),
        ]),
        answer("It is gone."),
    ])
    .await;
    let ws = tempfile::tempdir().unwrap();
    let pid_file = ws.path().join("mcp.pid");
    let mut spec = server();
    spec.env
        .insert("MCP_PID_FILE".into(), pid_file.display().to_string());
    let toolbox = Toolbox::spawn(vec![("notes".into(), spec)]);
    let config = openai_config(&vendor);
    let (result, _) = run_turn(
        HarnessKind::OpenAi,
        ws.path(),
        config.clone(),
        &toolbox,
        vec![user("hi")],
    )
    .await;
    result.unwrap();
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let process = common::watch(pid);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    process.gone().await;

    // Whether the toolbox saw the death before the turn (and offers no tool) or at the call, it is one
    // error item, and the turn answers.
    let (result, events) = run_turn(
        HarnessKind::OpenAi,
        ws.path(),
        config,
        &toolbox,
        vec![user("hi"), user("add")],
    )
    .await;
    result.unwrap();
    let errors = error_items(&events);
    assert_eq!(errors.len(), 1, "{events:?}");
    assert!(errors[0].2.contains("\"notes\" stopped"), "{errors:?}");
    let summary = common::summarize(&events);
    assert_eq!(summary.last().unwrap(), "delta:It is gone.");
    assert!(
        summary
            .iter()
            .any(|s| s.starts_with("output:call_1:error: ")),
        "{summary:?}"
    );
}

// --- A streamable-HTTP MCP server (axum, in the test) ---

mod http_server {
    use std::sync::{Arc, Mutex};

    use axum::Json;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use serde_json::{Value, json};

    /// The headers of every POST it got.
    pub type Seen = Arc<Mutex<Vec<HeaderMap>>>;

    async fn rpc(State(seen): State<Seen>, headers: HeaderMap, Json(msg): Json<Value>) -> Response {
        seen.lock().unwrap().push(headers);
        let Some(id) = msg.get("id").cloned() else {
            return StatusCode::ACCEPTED.into_response(); // a notification
        };
        let params = &msg["params"];
        let reply = match msg["method"].as_str().unwrap_or("") {
            "initialize" => json!({"jsonrpc": "2.0", "id": id, "result": {
                "protocolVersion": params["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "http-test", "version": "1"}}}),
            "tools/list" => json!({"jsonrpc": "2.0", "id": id, "result": {"tools": [
                {"name": "echo", "description": "Echo the text.",
                 "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}}]}}),
            "tools/call" => json!({"jsonrpc": "2.0", "id": id, "result": {
                "content": [{"type": "text", "text": format!("echo: {}", params["arguments"]["text"].as_str().unwrap_or(""))}],
                "isError": false}}),
            other => json!({"jsonrpc": "2.0", "id": id,
                "error": {"code": -32601, "message": format!("no {other}")}}),
        };
        ([("mcp-session-id", "sess-1")], Json(reply)).into_response()
    }

    pub fn app(seen: Seen) -> axum::Router {
        axum::Router::new()
            .route(
                "/mcp",
                post(rpc)
                    .get(|| async { StatusCode::METHOD_NOT_ALLOWED })
                    .delete(|| async { StatusCode::OK }),
            )
            .with_state(seen)
    }
}

#[tokio::test]
async fn an_http_server_is_reached_by_url_with_its_headers() {
    let seen = http_server::Seen::default();
    let served = omnigent_testkit::net::serve(http_server::app(seen.clone())).await;
    let vendor = FakeVendor::start(call_then_answer(
        "web__echo",
        r#"{"text": "over http"}"#,
        "Echoed.",
    ))
    .await;
    let ws = tempfile::tempdir().unwrap();
    let spec = Tool {
        url: Some(format!("{}/mcp", served.url)),
        headers: [
            ("X-Api-Key".to_owned(), "k-123".to_owned()),
            ("Authorization".to_owned(), "Bearer t-456".to_owned()),
        ]
        .into(),
        ..Tool::default()
    };
    let toolbox = Toolbox::spawn(vec![("web".into(), spec)]);
    let (result, events) = run_turn(
        HarnessKind::OpenAi,
        ws.path(),
        openai_config(&vendor),
        &toolbox,
        vec![user("echo")],
    )
    .await;
    result.unwrap();
    assert!(error_items(&events).is_empty(), "{events:?}");
    assert_eq!(
        common::summarize(&events),
        [
            r#"call:call_1:web__echo:{"text": "over http"}"#.to_owned(),
            "output:call_1:echo: over http".into(),
            "delta:Echoed.".into(),
        ]
    );
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    for headers in &seen {
        assert_eq!(headers["x-api-key"], "k-123");
        assert_eq!(headers["authorization"], "Bearer t-456");
    }
}

#[tokio::test]
async fn a_call_that_never_answers_times_out_and_the_turn_goes_on() {
    let vendor = FakeVendor::start(call_then_answer("notes__hang", "{}", "Too slow.")).await;
    let ws = tempfile::tempdir().unwrap();
    let toolbox = Toolbox::spawn(vec![("notes".into(), server())]);
    let config = HarnessConfig {
        tool_timeout: Some(Duration::from_secs(1)),
        ..openai_config(&vendor)
    };
    let (result, events) = run_turn(
        HarnessKind::OpenAi,
        ws.path(),
        config,
        &toolbox,
        vec![user("hang")],
    )
    .await;
    result.unwrap();
    assert_eq!(
        common::summarize(&events)[1..],
        [
            "output:call_1:error: the MCP tool hang of \"notes\" did not answer within 1 s"
                .to_owned(),
            "delta:Too slow.".into(),
        ]
    );
}

#[tokio::test]
async fn an_interrupt_during_a_call_ends_the_turn_at_once() {
    let vendor = FakeVendor::start(call_then_answer("notes__hang", "{}", "unused")).await;
    let ws = tempfile::tempdir().unwrap();
    let toolbox = Toolbox::spawn(vec![("notes".into(), server())]);
    let mut turn = common::turn(ws.path(), openai_config(&vendor), vec![user("hang")]);
    turn.mcp = Some(toolbox);
    let (sink, mut rx) = common::sink();
    let cancel = CancellationToken::new();
    let running = tokio::spawn({
        let cancel = cancel.clone();
        async move { harness::run_turn(HarnessKind::OpenAi, &turn, &sink, &cancel).await }
    });
    // Interrupt once the call is under way.
    loop {
        let event = common::next_event(&mut rx).await;
        if event["item"]["type"] == "function_call" {
            break;
        }
    }
    cancel.cancel();
    let result = common::within(5, running).await.unwrap();
    assert!(
        matches!(result, Err(HarnessError::Interrupted)),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_its_start_is_an_error_item_after_the_start_timeout() {
    let vendor = FakeVendor::start(vec![answer("Without it.")]).await;
    let ws = tempfile::tempdir().unwrap();
    let silent = Tool {
        command: Some("/bin/sleep".into()),
        args: vec!["3600".into()],
        ..Tool::default()
    };
    let toolbox =
        Toolbox::spawn_with_start_timeout(vec![("silent".into(), silent)], Duration::from_secs(1));
    let (result, events) = run_turn(
        HarnessKind::OpenAi,
        ws.path(),
        openai_config(&vendor),
        &toolbox,
        vec![user("hi")],
    )
    .await;
    result.unwrap();
    let errors = error_items(&events);
    assert_eq!(errors.len(), 1, "{events:?}");
    assert!(
        errors[0].2.contains("\"silent\" did not start within 1 s"),
        "{errors:?}"
    );
    assert_eq!(
        common::summarize(&events).last().unwrap(),
        "delta:Without it."
    );
}

#[tokio::test]
async fn an_interrupt_while_servers_start_ends_the_turn() {
    let silent = Tool {
        command: Some("/bin/sleep".into()),
        args: vec!["3600".into()],
        ..Tool::default()
    };
    let ws = tempfile::tempdir().unwrap();
    let mut turn = common::turn(
        ws.path(),
        HarnessConfig {
            model: Some("gpt-test".into()),
            base_url: Some("http://127.0.0.1:9/v1".into()),
            ..HarnessConfig::default()
        },
        vec![user("hi")],
    );
    turn.mcp = Some(Toolbox::spawn(vec![("silent".into(), silent)]));
    let (sink, _rx) = common::sink();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let result = common::within(
        5,
        harness::run_turn(HarnessKind::OpenAi, &turn, &sink, &cancel),
    )
    .await;
    assert!(
        matches!(result, Err(HarnessError::Interrupted)),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_stdio_server_gets_its_own_env_and_a_few_basics_not_the_runners_environment() {
    // Set by cargo for this test process: it must not reach the server.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    let vendor = FakeVendor::start(call_then_answer("notes__env", "{}", "Seen.")).await;
    let ws = tempfile::tempdir().unwrap();
    let mut spec = server();
    spec.env.insert("MCP_GIVEN".into(), "1".into());
    let toolbox = Toolbox::spawn(vec![("notes".into(), spec)]);
    let (result, events) = run_turn(
        HarnessKind::OpenAi,
        ws.path(),
        openai_config(&vendor),
        &toolbox,
        vec![user("env")],
    )
    .await;
    result.unwrap();
    let summary = common::summarize(&events);
    let names: Vec<&str> = summary[1]
        .strip_prefix("output:call_1:")
        .unwrap()
        .split(',')
        .collect();
    assert!(
        names.contains(&"PATH") && names.contains(&"MCP_GIVEN"),
        "{names:?}"
    );
    assert!(!names.contains(&"CARGO_MANIFEST_DIR"), "{names:?}");
}

#[tokio::test]
async fn an_unreachable_http_server_is_an_error_item() {
    let vendor = FakeVendor::start(vec![answer("Anyway.")]).await;
    let ws = tempfile::tempdir().unwrap();
    // A port bound and closed again: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spec = Tool {
        url: Some(format!("http://127.0.0.1:{port}/mcp")),
        ..Tool::default()
    };
    let toolbox = Toolbox::spawn(vec![("web".into(), spec)]);
    let (result, events) = run_turn(
        HarnessKind::OpenAi,
        ws.path(),
        openai_config(&vendor),
        &toolbox,
        vec![user("hi")],
    )
    .await;
    result.unwrap();
    let errors = error_items(&events);
    assert_eq!(errors.len(), 1, "{events:?}");
    assert_eq!(errors[0].0, "web");
    assert!(
        errors[0].2.contains(&format!("127.0.0.1:{port}")),
        "{errors:?}"
    );
    assert_eq!(common::summarize(&events).last().unwrap(), "delta:Anyway.");
}

#[tokio::test]
async fn a_server_that_prints_noise_on_stdout_before_speaking_mcp_still_works() {
    let vendor = FakeVendor::start(call_then_answer(
        "noisy__add",
        r#"{"a": 1, "b": 1}"#,
        "Two.",
    ))
    .await;
    let ws = tempfile::tempdir().unwrap();
    let noisy = Tool {
        command: Some("/bin/sh".into()),
        args: vec![
            "-c".into(),
            format!(
                "echo 'starting up...'; echo '{{\"not\": \"rpc\"}}'; exec {PYTHON} {}",
                script()
            ),
        ],
        ..Tool::default()
    };
    let toolbox =
        Toolbox::spawn_with_start_timeout(vec![("noisy".into(), noisy)], Duration::from_secs(5));
    let (result, events) = run_turn(
        HarnessKind::OpenAi,
        ws.path(),
        openai_config(&vendor),
        &toolbox,
        vec![user("add")],
    )
    .await;
    result.unwrap();
    // rmcp skips lines that are not JSON-RPC.
    assert!(error_items(&events).is_empty(), "{events:?}");
    assert_eq!(
        common::summarize(&events)[1..],
        ["output:call_1:2".to_owned(), "delta:Two.".into()]
    );
}
