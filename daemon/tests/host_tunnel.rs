#![allow(clippy::unwrap_used)]
//! The daemon's end of the host tunnel against a real server end: an axum server on 127.0.0.1 serving
//! `/v1/hosts/{host_id}/tunnel` with `omnigent_tunnel::host` (or, where the test must play the server frame by
//! frame, a raw axum WebSocket handed to the test). The runner supervisor is a recording fake.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::ws::{Message as AxMessage, WebSocket};
use omnigent_daemon::hosting::host_tunnel::{
    HostActions, HostAuth, HostTunnelConfig, HostTunnelError, HostTunnelHandle, HostTunnelState,
    LaunchError, LaunchRequest, RunnerStatus, spawn_host_tunnel,
};
use omnigent_proto::ids::runner_id_for_token;
use omnigent_testkit::{FakeHost, RawWs};
use omnigent_tunnel::host::{HostConnection, HostEvent, HostRegistry};
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, broadcast, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// A bound on waits that should finish at once; a test failing on it means the awaited signal never came.
const WAIT: Duration = Duration::from_secs(10);
const HOST: &str = "534486bde1be41d9bec6e7b32874609b";
const HOUR: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------------------------------------
// The fake supervisor.

#[derive(Default)]
struct FakeInner {
    launches: Mutex<Vec<LaunchRequest>>,
    stops: Mutex<Vec<String>>,
    live: Mutex<Vec<String>>,
    /// When set, the next launch waits for it.
    gate: Mutex<Option<oneshot::Receiver<()>>>,
    launch_started: Notify,
}

#[derive(Clone, Default)]
struct Fake(Arc<FakeInner>);

impl HostActions for Fake {
    async fn launch_runner(&self, request: LaunchRequest) -> Result<String, LaunchError> {
        self.0.launches.lock().unwrap().push(request.clone());
        self.0.launch_started.notify_one();
        let gate = self.0.gate.lock().unwrap().take();
        if let Some(gate) = gate {
            let _ = gate.await;
        }
        if request.workspace == "/missing" {
            return Err(LaunchError {
                code: Some(omnigent_proto::host_frames::LaunchErrorCode::WorkspaceMissing),
                message: "workspace /missing is not a directory".into(),
            });
        }
        let id = runner_id_for_token(&request.binding_token);
        self.0.live.lock().unwrap().push(id.clone());
        Ok(id)
    }

    async fn stop_runner(&self, runner_id: String) -> Result<(), String> {
        self.0.stops.lock().unwrap().push(runner_id.clone());
        let mut live = self.0.live.lock().unwrap();
        match live.iter().position(|r| *r == runner_id) {
            Some(i) => {
                live.remove(i);
                Ok(())
            }
            None => Err(format!("unknown runner: {runner_id}")),
        }
    }

    async fn runner_status(&self, runner_id: String) -> RunnerStatus {
        if self.0.live.lock().unwrap().contains(&runner_id) {
            RunnerStatus::Alive
        } else {
            RunnerStatus::Unknown
        }
    }

    fn live_runners(&self) -> Vec<String> {
        self.0.live.lock().unwrap().clone()
    }

    fn configured_harnesses(&self) -> Map<String, Value> {
        json!({"echo": true, "openai": "needs-auth", "anthropic": false, "exec": true})
            .as_object()
            .unwrap()
            .clone()
    }
}

// ---------------------------------------------------------------------------------------------------------
// The server end is the testkit's FakeHost (built from omnigent_tunnel::host).

fn config(addr: SocketAddr) -> HostTunnelConfig {
    let mut config = HostTunnelConfig::new(&format!("http://{addr}"), HOST, "test-host");
    config.installation_id = Some("install-1".into());
    config.auth = Some(HostAuth::Bearer("secret-token".into()));
    config.timings.backoff_base = Duration::from_millis(10);
    config.timings.backoff_cap = Duration::from_millis(50);
    config.timings.full_jitter = false;
    config
}

async fn wait_state(
    state: &mut watch::Receiver<HostTunnelState>,
    what: impl FnMut(&HostTunnelState) -> bool,
) -> HostTunnelState {
    tokio::time::timeout(WAIT, state.wait_for(what))
        .await
        .expect("state never reached")
        .unwrap()
        .clone()
}

/// The next `Connected` of a generation newer than `after`.
async fn next_connection(
    registry: &HostRegistry,
    events: &mut broadcast::Receiver<HostEvent>,
    after: u64,
) -> HostConnection {
    loop {
        let event = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("the host did not reconnect")
            .unwrap();
        if let HostEvent::Connected { generation, .. } = event
            && generation > after
        {
            return registry.get(HOST).unwrap();
        }
    }
}

struct Running {
    handle: HostTunnelHandle,
    shutdown: CancellationToken,
    fake: Fake,
}

fn start_host(config: HostTunnelConfig) -> Running {
    let fake = Fake::default();
    let shutdown = CancellationToken::new();
    let handle = spawn_host_tunnel(config, fake.clone(), shutdown.clone());
    Running {
        handle,
        shutdown,
        fake,
    }
}

// ---------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn connects_with_headers_and_a_hello_carrying_live_runners() {
    let server = FakeHost::start().await;
    let mut events = server.registry().subscribe();
    let fake = Fake::default();
    fake.0
        .live
        .lock()
        .unwrap()
        .extend(["runner_token_a".to_owned(), "runner_token_b".to_owned()]);
    let shutdown = CancellationToken::new();
    let handle = spawn_host_tunnel(config(server.addr), fake.clone(), shutdown.clone());

    let HostEvent::Connected { host_id, hello, .. } = tokio::time::timeout(WAIT, events.recv())
        .await
        .unwrap()
        .unwrap()
    else {
        panic!("expected Connected")
    };
    assert_eq!(host_id, HOST);
    assert_eq!(hello.version, omnigent_proto::BUILD_VERSION);
    assert_eq!(hello.frame_protocol_version, 1);
    assert_eq!(hello.name, "test-host");
    assert_eq!(hello.runners, vec!["runner_token_a", "runner_token_b"]);
    let harnesses = hello.configured_harnesses.unwrap();
    assert_eq!(harnesses["echo"], true);
    assert_eq!(harnesses["openai"], "needs-auth");
    assert!(hello.telemetry_opt_out);
    assert_eq!(hello.installation_id.as_deref(), Some("install-1"));
    assert!(hello.extra["connection_id"].is_string());
    let mut state = handle.state();
    wait_state(&mut state, |s| *s == HostTunnelState::Online).await;

    let tunnel = server.tunnel_headers()[0].clone();
    assert_eq!(tunnel["origin"], "omnigent://internal");
    assert_eq!(tunnel["authorization"], "Bearer secret-token");
    let me = server.me_headers()[0].clone();
    assert_eq!(me["origin"], "omnigent://internal");
    assert_eq!(me["authorization"], "Bearer secret-token");

    shutdown.cancel();
    assert_eq!(handle.join().await, Ok(()));
    loop {
        if let HostEvent::Disconnected { .. } = tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            break;
        }
    }
}

#[tokio::test]
async fn a_managed_host_sends_its_host_token_header() {
    let server = FakeHost::start().await;
    let mut config = config(server.addr);
    config.auth = Some(HostAuth::HostToken("managed-1".into()));
    let host = start_host(config);
    server.registry().wait_for_host(HOST, WAIT).await.unwrap();
    let headers = server.tunnel_headers()[0].clone();
    assert_eq!(headers["x-omnigent-host-token"], "managed-1");
    assert!(headers.get("authorization").is_none());
    host.shutdown.cancel();
    assert_eq!(host.handle.join().await, Ok(()));
}

#[tokio::test]
async fn launch_stop_and_status_reach_the_actions() {
    let server = FakeHost::start().await;
    let host = start_host(config(server.addr));
    let conn = server.registry().wait_for_host(HOST, WAIT).await.unwrap();

    // Launched even though the harness is reported as needing auth.
    let result = conn
        .launch_runner("tok-1", "/work", Some("sess-1"), Some("openai"))
        .await
        .unwrap();
    assert_eq!(result.status, "launched");
    assert_eq!(
        result.runner_id.as_deref(),
        Some(runner_id_for_token("tok-1").as_str())
    );
    assert_eq!((result.error, result.error_code), (None, None));
    let launch = host.fake.0.launches.lock().unwrap()[0].clone();
    assert_eq!(launch.binding_token, "tok-1");
    assert_eq!(launch.workspace, "/work");
    assert_eq!(launch.session_id.as_deref(), Some("sess-1"));
    assert_eq!(launch.harness.as_deref(), Some("openai"));

    let failed = conn
        .launch_runner("tok-2", "/missing", None, None)
        .await
        .unwrap();
    assert_eq!(failed.status, "failed");
    assert_eq!(failed.error_code.as_deref(), Some("workspace_missing"));
    assert!(failed.error.unwrap().contains("/missing"));
    assert_eq!(failed.runner_id, None);

    let id = runner_id_for_token("tok-1");
    assert_eq!(conn.runner_status(&id).await.unwrap().status, "alive");
    assert_eq!(
        conn.runner_status("runner_token_nope")
            .await
            .unwrap()
            .status,
        "unknown"
    );
    let stopped = conn.stop_runner(&id).await.unwrap();
    assert_eq!((stopped.status.as_str(), stopped.error), ("stopped", None));
    let unknown = conn.stop_runner(&id).await.unwrap();
    assert_eq!(unknown.status, "failed");
    assert_eq!(
        unknown.error.as_deref(),
        Some(format!("unknown runner: {id}").as_str())
    );
    assert_eq!(*host.fake.0.stops.lock().unwrap(), vec![id.clone(), id]);
    host.shutdown.cancel();
    host.handle.join().await.unwrap();
}

#[tokio::test]
async fn stat_list_dir_and_create_dir_work_on_the_real_filesystem() {
    let server = FakeHost::start().await;
    let host = start_host(config(server.addr));
    let conn = server.registry().wait_for_host(HOST, WAIT).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let dir = root.display().to_string();
    std::fs::write(root.join("a.txt"), "abc").unwrap();
    std::fs::write(root.join("b.txt"), "").unwrap();
    std::fs::create_dir(root.join("c")).unwrap();
    std::fs::write(root.join("d.txt"), "").unwrap();
    std::fs::write(root.join("e.txt"), "").unwrap();

    let stat = conn.stat(&dir).await.unwrap();
    assert_eq!((stat.status.as_str(), stat.exists), ("ok", true));
    assert_eq!(stat.file_type.as_deref(), Some("directory"));
    assert_eq!(stat.canonical_path.as_deref(), Some(dir.as_str()));
    let file = conn.stat(&format!("{dir}/a.txt")).await.unwrap();
    assert_eq!(file.file_type.as_deref(), Some("file"));
    let missing = conn.stat(&format!("{dir}/nope")).await.unwrap();
    assert_eq!(
        (missing.status.as_str(), missing.exists, missing.file_type),
        ("ok", false, None)
    );
    let relative = conn.stat("relative/path").await.unwrap();
    assert_eq!(relative.status, "failed");
    assert!(relative.error.unwrap().contains("relative"));

    // Paging: two at a time, sorted by name.
    let mut names = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = conn.list_dir(&dir, 2, after.as_deref()).await.unwrap();
        assert_eq!(page.status, "ok", "{page:?}");
        pages += 1;
        names.extend(page.entries.iter().map(|e| e.name.clone()));
        if !page.has_more {
            assert_eq!(page.entries.len(), 1);
            break;
        }
        assert_eq!(page.entries.len(), 2);
        after = page.entries.last().map(|e| e.name.clone());
    }
    assert_eq!(pages, 3);
    assert_eq!(names, vec!["a.txt", "b.txt", "c", "d.txt", "e.txt"]);
    let first = conn.list_dir(&dir, 20, None).await.unwrap();
    let a = &first.entries[0];
    assert_eq!((a.file_type.as_str(), a.bytes), ("file", Some(3)));
    assert_eq!(a.path, format!("{dir}/a.txt"));
    assert!(a.modified_at.unwrap() > 1.0e9);
    let c = &first.entries[2];
    assert_eq!(
        (c.name.as_str(), c.file_type.as_str(), c.bytes),
        ("c", "directory", None)
    );

    let gone = conn
        .list_dir(&format!("{dir}/nope"), 20, None)
        .await
        .unwrap();
    assert_eq!(gone.status, "failed");
    assert!(gone.error.unwrap().contains("nope"));
    let not_dir = conn
        .list_dir(&format!("{dir}/a.txt"), 20, None)
        .await
        .unwrap();
    assert_eq!(not_dir.status, "failed");

    let created = conn.create_dir(&format!("{dir}/x/y")).await.unwrap();
    assert_eq!(created.status, "ok", "{created:?}");
    assert_eq!(created.path.as_deref(), Some(format!("{dir}/x/y").as_str()));
    assert!(root.join("x/y").is_dir());
    let again = conn.create_dir(&format!("{dir}/x/y")).await.unwrap();
    assert_eq!(again.status, "ok");
    let under_file = conn.create_dir(&format!("{dir}/a.txt/sub")).await.unwrap();
    assert_eq!(under_file.status, "failed");
    assert!(under_file.error.unwrap().contains("a.txt"));

    host.shutdown.cancel();
    host.handle.join().await.unwrap();
}

#[tokio::test]
async fn a_service_restart_close_reconnects_at_once_and_other_closes_back_off() {
    let server = FakeHost::start().await;
    let mut events = server.registry().subscribe();
    let mut config = config(server.addr);
    // Any backoff at all would outlast the test.
    config.timings.backoff_base = HOUR;
    config.timings.backoff_cap = HOUR;
    let host = start_host(config);
    let first = next_connection(server.registry(), &mut events, 0).await;

    server.registry().close_all(1012, "service restart");
    let second = next_connection(server.registry(), &mut events, first.generation()).await;

    server.registry().close_all(1001, "going away");
    let third = next_connection(server.registry(), &mut events, second.generation()).await;
    assert!(!third.is_closed());

    // Any other close waits for the backoff.
    third.close(4999, "maintenance");
    let mut state = host.handle.state();
    let state = wait_state(&mut state, |s| {
        matches!(s, HostTunnelState::Reconnecting { .. })
    })
    .await;
    let HostTunnelState::Reconnecting {
        attempt,
        last_error,
        ..
    } = state
    else {
        unreachable!()
    };
    assert_eq!(attempt, 1);
    assert!(last_error.contains("4999"), "{last_error}");
    assert!(!server.registry().is_online(HOST));
    host.shutdown.cancel();
    host.handle.join().await.unwrap();
}

#[tokio::test]
async fn a_vanished_server_is_redialled_with_backoff_until_it_is_back() {
    let server = FakeHost::start().await;
    let host = start_host(config(server.addr));
    server.registry().wait_for_host(HOST, WAIT).await.unwrap();
    let mut state = host.handle.state();
    wait_state(&mut state, |s| *s == HostTunnelState::Online).await;

    let addr = server.stop().await;
    let down = wait_state(
        &mut state,
        |s| matches!(s, HostTunnelState::Reconnecting { attempt, .. } if *attempt >= 3),
    )
    .await;
    let HostTunnelState::Reconnecting { last_error, .. } = down else {
        unreachable!()
    };
    assert!(last_error.contains("cannot reach"), "{last_error}");

    let registry = HostRegistry::default();
    let mut events = registry.subscribe();
    let server = FakeHost::restart(addr, registry).await;
    next_connection(server.registry(), &mut events, 0).await;
    wait_state(&mut state, |s| *s == HostTunnelState::Online).await;
    host.shutdown.cancel();
    host.handle.join().await.unwrap();
}

#[tokio::test]
async fn runner_exits_are_sent_at_once_or_parked_and_flushed_after_the_next_hello() {
    let server = FakeHost::start().await;
    let mut events = server.registry().subscribe();
    let host = start_host(config(server.addr));
    next_connection(server.registry(), &mut events, 0).await;

    assert!(host.handle.runner_exited(
        "runner_token_1",
        Some("runner process exited with code 1".into())
    ));
    assert_eq!(
        tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap(),
        HostEvent::RunnerExited {
            host_id: HOST.into(),
            runner_id: "runner_token_1".into(),
            error: Some("runner process exited with code 1".into())
        }
    );

    let addr = server.stop().await;
    let mut state = host.handle.state();
    wait_state(&mut state, |s| {
        matches!(s, HostTunnelState::Reconnecting { .. })
    })
    .await;
    let reporter = host.handle.exit_reporter();
    assert!(reporter.runner_exited("runner_token_2", Some("code 1".into())));
    assert!(reporter.runner_exited("runner_token_3", None));
    assert!(reporter.runner_exited("runner_token_2", Some("code 2".into())));

    let registry = HostRegistry::default();
    let mut events = registry.subscribe();
    let _server = FakeHost::restart(addr, registry).await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(
            tokio::time::timeout(WAIT, events.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert!(matches!(seen[0], HostEvent::Connected { .. }), "{seen:?}");
    assert_eq!(
        seen[1..],
        [
            HostEvent::RunnerExited {
                host_id: HOST.into(),
                runner_id: "runner_token_3".into(),
                error: None
            },
            HostEvent::RunnerExited {
                host_id: HOST.into(),
                runner_id: "runner_token_2".into(),
                error: Some("code 2".into())
            },
        ]
    );
    host.shutdown.cancel();
    host.handle.join().await.unwrap();
}

#[tokio::test]
async fn unauthorized_before_the_first_success_is_fatal_after_three_tries() {
    let server = FakeHost::start().await;
    server.refuse_tunnel(401);
    let host = start_host(config(server.addr));
    let err = tokio::time::timeout(WAIT, host.handle.join())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            err,
            HostTunnelError::Unauthorized {
                status: 401,
                times: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("omnigent login"), "{err}");
    assert_eq!(server.upgrades(), 3);
}

#[tokio::test]
async fn an_owner_conflict_is_fatal_at_once() {
    let server = FakeHost::start().await;
    server.refuse_tunnel(409);
    let host = start_host(config(server.addr));
    let mut state = host.handle.state();
    let err = tokio::time::timeout(WAIT, host.handle.join())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, HostTunnelError::OwnerConflict { .. }),
        "{err:?}"
    );
    assert_eq!(server.upgrades(), 1);
    let failed = wait_state(&mut state, |s| matches!(s, HostTunnelState::Failed { .. })).await;
    assert!(matches!(failed, HostTunnelState::Failed { reason } if reason.contains("409")));
}

#[tokio::test]
async fn unauthorized_after_a_success_keeps_retrying_with_a_warning() {
    let server = FakeHost::start().await;
    let mut events = server.registry().subscribe();
    let host = start_host(config(server.addr));
    let conn = next_connection(server.registry(), &mut events, 0).await;
    // A served request: the tunnel has succeeded.
    assert_eq!(conn.stat("/").await.unwrap().status, "ok");

    server.refuse_tunnel(403);
    server.registry().close_all(1012, "service restart");
    let mut state = host.handle.state();
    let warned = wait_state(
        &mut state,
        |s| matches!(s, HostTunnelState::Reconnecting { attempt, .. } if *attempt >= 5),
    )
    .await;
    let HostTunnelState::Reconnecting {
        warning,
        last_error,
        ..
    } = warned
    else {
        unreachable!()
    };
    assert!(last_error.contains("403"), "{last_error}");
    assert!(warning.unwrap().contains("omnigent login"));

    server.refuse_tunnel(0);
    next_connection(server.registry(), &mut events, conn.generation()).await;
    wait_state(&mut state, |s| *s == HostTunnelState::Online).await;
    host.shutdown.cancel();
    assert_eq!(host.handle.join().await, Ok(()));
}

#[tokio::test]
async fn waking_from_sleep_drops_the_socket_and_reconnects_at_once() {
    let server = FakeHost::start().await;
    let mut events = server.registry().subscribe();
    let offset = Arc::new(AtomicU64::new(0));
    let mut config = config(server.addr);
    config.timings.backoff_base = HOUR;
    config.timings.backoff_cap = HOUR;
    config.timings.wake_check_interval = Duration::from_millis(20);
    config.wall_clock = Arc::new({
        let offset = offset.clone();
        move || SystemTime::now() + Duration::from_secs(offset.load(Ordering::SeqCst))
    });
    let host = start_host(config);
    let first = next_connection(server.registry(), &mut events, 0).await;
    // The wall clock leaps an hour ahead of the monotonic one: the laptop slept.
    offset.store(3600, Ordering::SeqCst);
    let second = next_connection(server.registry(), &mut events, first.generation()).await;
    assert!(first.is_closed());
    assert!(!second.is_closed());
    host.shutdown.cancel();
    host.handle.join().await.unwrap();
}

// ---------------------------------------------------------------------------------------------------------
// A hand-played server: each upgraded socket is handed to the test.

/// Every upgraded `/v1/hosts/{id}/tunnel` socket, handed to the test.
async fn raw_server() -> (SocketAddr, RawWs) {
    let raw = RawWs::start("/v1/hosts/{id}/tunnel").await;
    (raw.addr(), raw)
}

async fn next_socket(sockets: &mut RawWs) -> WebSocket {
    sockets.next().await
}

async fn recv_json(ws: &mut WebSocket) -> Value {
    loop {
        match tokio::time::timeout(WAIT, ws.recv())
            .await
            .expect("no frame")
            .unwrap()
            .unwrap()
        {
            AxMessage::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            AxMessage::Close(frame) => panic!("closed: {frame:?}"),
            _ => {}
        }
    }
}

async fn send_json(ws: &mut WebSocket, value: Value) {
    ws.send(AxMessage::Text(value.to_string().into()))
        .await
        .unwrap();
}

async fn close(ws: &mut WebSocket, code: u16, reason: &str) {
    let frame = axum::extract::ws::CloseFrame {
        code,
        reason: reason.into(),
    };
    ws.send(AxMessage::Close(Some(frame))).await.unwrap();
}

#[tokio::test]
async fn a_slow_launch_never_delays_a_pong_and_junk_frames_are_skipped() {
    let (addr, mut sockets) = raw_server().await;
    let host = start_host(config(addr));
    let (release, gate) = oneshot::channel();
    *host.fake.0.gate.lock().unwrap() = Some(gate);
    let mut ws = next_socket(&mut sockets).await;
    assert_eq!(recv_json(&mut ws).await["kind"], "host.hello");

    send_json(
        &mut ws,
        json!({"kind": "host.launch_runner", "request_id": "00000000000000r1", "binding_token": "tok", "workspace": "/w", "session_id": null, "harness": "echo", "inference_config": null}),
    )
    .await;
    tokio::time::timeout(WAIT, host.fake.0.launch_started.notified())
        .await
        .unwrap();
    // The launch handler is now blocked. Junk first, then a ping.
    ws.send(AxMessage::Text("{not json".into())).await.unwrap();
    send_json(
        &mut ws,
        json!({"kind": "host.install_harness", "request_id": "x", "harness": "claude"}),
    )
    .await;
    ws.send(AxMessage::Binary(vec![0u8, 1].into()))
        .await
        .unwrap();
    send_json(&mut ws, json!({"kind": "ping", "ts": 1234})).await;
    assert_eq!(
        recv_json(&mut ws).await,
        json!({"kind": "pong", "ts": 1234})
    );

    release.send(()).unwrap();
    let result = recv_json(&mut ws).await;
    assert_eq!(result["kind"], "host.launch_runner_result");
    assert_eq!(result["request_id"], "00000000000000r1");
    assert_eq!(result["status"], "launched");
    assert_eq!(result["error"], Value::Null);
    let launch = host.fake.0.launches.lock().unwrap()[0].clone();
    assert!(launch.extra.contains_key("inference_config"));
    host.shutdown.cancel();
    host.handle.join().await.unwrap();
}

#[tokio::test]
async fn a_non_retryable_connection_error_is_fatal() {
    let (addr, mut sockets) = raw_server().await;
    let host = start_host(config(addr));
    let mut ws = next_socket(&mut sockets).await;
    assert_eq!(recv_json(&mut ws).await["kind"], "host.hello");
    send_json(&mut ws, json!({"kind": "host.connection_error", "stage": "hello", "error": "frame protocol mismatch", "retryable": false})).await;
    close(&mut ws, 4002, "frame protocol version mismatch").await;
    let err = tokio::time::timeout(WAIT, host.handle.join())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        err,
        HostTunnelError::ConnectionError {
            url: format!("http://{addr}"),
            stage: "hello".into(),
            error: "frame protocol mismatch".into()
        }
    );
}

#[tokio::test]
async fn a_retryable_connection_error_retries_but_a_refusal_before_any_success_is_fatal() {
    let (addr, mut sockets) = raw_server().await;
    let host = start_host(config(addr));
    let mut ws = next_socket(&mut sockets).await;
    recv_json(&mut ws).await;
    send_json(&mut ws, json!({"kind": "host.connection_error", "stage": "register", "error": "db busy", "retryable": true})).await;
    close(&mut ws, 4005, "registration failed").await;
    // Retried: a second connection comes.
    let mut ws = next_socket(&mut sockets).await;
    recv_json(&mut ws).await;
    close(&mut ws, 4001, "hello expected").await;
    let err = tokio::time::timeout(WAIT, host.handle.join())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, HostTunnelError::Refused { code: 4001, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_silent_server_is_dropped_after_the_liveness_budget() {
    let (addr, mut sockets) = raw_server().await;
    let mut config = config(addr);
    config.timings.ws_ping_interval = Duration::from_millis(50);
    config.timings.liveness_timeout = Duration::from_millis(300);
    let host = start_host(config);
    // This socket is never read, so the host's protocol pings go unanswered.
    let _silent = next_socket(&mut sockets).await;
    let mut second = next_socket(&mut sockets).await;
    assert_eq!(recv_json(&mut second).await["kind"], "host.hello");
    let state = host.handle.state().borrow().clone();
    assert_eq!(state, HostTunnelState::Online);
    host.shutdown.cancel();
    host.handle.join().await.unwrap();
}

#[tokio::test]
async fn a_reply_in_flight_when_the_socket_dies_is_dropped_not_sent_on_the_next_tunnel() {
    let (addr, mut sockets) = raw_server().await;
    let host = start_host(config(addr));
    let (release, gate) = oneshot::channel();
    *host.fake.0.gate.lock().unwrap() = Some(gate);
    let mut first = next_socket(&mut sockets).await;
    recv_json(&mut first).await;
    send_json(
        &mut first,
        json!({"kind": "host.launch_runner", "request_id": "aaaaaaaaaaaaaaaa", "binding_token": "tok", "workspace": "/w"}),
    )
    .await;
    tokio::time::timeout(WAIT, host.fake.0.launch_started.notified())
        .await
        .unwrap();
    close(&mut first, 1012, "service restart").await;

    let mut second = next_socket(&mut sockets).await;
    assert_eq!(recv_json(&mut second).await["kind"], "host.hello");
    release.send(()).unwrap();
    // The launch finished after its tunnel died: nothing about it reaches the new tunnel.
    send_json(&mut second, json!({"kind": "ping", "ts": 5})).await;
    assert_eq!(
        recv_json(&mut second).await,
        json!({"kind": "pong", "ts": 5})
    );
    send_json(
        &mut second,
        json!({"kind": "host.stat", "request_id": "bbbbbbbbbbbbbbbb", "path": "/"}),
    )
    .await;
    let stat = recv_json(&mut second).await;
    assert_eq!(
        (stat["kind"].as_str(), stat["request_id"].as_str()),
        (Some("host.stat_result"), Some("bbbbbbbbbbbbbbbb"))
    );
    // The launch itself was honoured: the runner is live for the next hello.
    assert_eq!(host.fake.live_runners(), vec![runner_id_for_token("tok")]);
    host.shutdown.cancel();
    host.handle.join().await.unwrap();
}
