//! Hosts against a real server on port 0 (real SQLite file in a temp home): the daemon's real host tunnel
//! with a fake runner supervisor, and raw WebSocket hosts where the test plays the host frame by frame.

mod common;

use std::sync::{Arc, Mutex};

use common::fake_runner::{FakeRunner, Seen};
use common::raw_host::{Ws, next_frame, python_hello, send};
use common::{TestServer, WAIT};
use futures_util::StreamExt;
use omnigent_daemon::host_tunnel::{
    HostActions, HostTunnelConfig, HostTunnelHandle, LaunchError, LaunchRequest, RunnerStatus,
    spawn_host_tunnel,
};
use omnigent_proto::ids::runner_id_for_token;
use omnigent_tunnel::host::{HostEvent, HostRegistry};
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

/// The runner supervisor of a fake host: records every launch; fails it when `fail` is set.
#[derive(Clone)]
struct FakeHost {
    launches: mpsc::UnboundedSender<LaunchRequest>,
    fail: Arc<Mutex<Option<LaunchError>>>,
}

impl HostActions for FakeHost {
    async fn launch_runner(&self, request: LaunchRequest) -> Result<String, LaunchError> {
        let token = request.binding_token.clone();
        let _ = self.launches.send(request);
        let fail = self.fail.lock().expect("lock").clone();
        match fail {
            Some(e) => Err(e),
            None => Ok(runner_id_for_token(&token)),
        }
    }

    async fn stop_runner(&self, _runner_id: String) -> Result<(), String> {
        Ok(())
    }

    async fn runner_status(&self, _runner_id: String) -> RunnerStatus {
        RunnerStatus::Unknown
    }

    fn live_runners(&self) -> Vec<String> {
        Vec::new()
    }

    fn configured_harnesses(&self) -> Map<String, Value> {
        let mut map = Map::new();
        map.insert("echo".into(), json!(true));
        map.insert("openai".into(), json!("needs-auth"));
        map
    }
}

/// A daemon host tunnel to the server, online.
struct Host {
    id: String,
    launches: mpsc::UnboundedReceiver<LaunchRequest>,
    fail: Arc<Mutex<Option<LaunchError>>>,
    stop: CancellationToken,
    handle: Option<HostTunnelHandle>,
}

impl Host {
    async fn connect(srv: &TestServer, registry: &HostRegistry, name: &str) -> Host {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Host::connect_as(srv, registry, name, id).await
    }

    /// The host `id` (the same machine coming back to a restarted server).
    async fn connect_as(srv: &TestServer, registry: &HostRegistry, name: &str, id: String) -> Host {
        let (tx, launches) = mpsc::unbounded_channel();
        let fail = Arc::new(Mutex::new(None));
        let actions = FakeHost {
            launches: tx,
            fail: fail.clone(),
        };
        let stop = CancellationToken::new();
        let handle = spawn_host_tunnel(
            HostTunnelConfig::new(&srv.url, &id, name),
            actions,
            stop.clone(),
        );
        registry
            .wait_for_host(&id, WAIT)
            .await
            .expect("host comes online");
        Host {
            id,
            launches,
            fail,
            stop,
            handle: Some(handle),
        }
    }

    fn fail_launches(&self, code: Option<&str>, message: &str) {
        *self.fail.lock().expect("lock") = Some(LaunchError {
            code: code.and_then(omnigent_proto::host_frames::LaunchErrorCode::parse),
            message: message.to_owned(),
        });
    }

    /// Stop the daemon's tunnel and wait until the server has seen it go.
    async fn disconnect(&mut self, registry: &HostRegistry) {
        let mut events = registry.subscribe();
        self.stop.cancel();
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(WAIT, handle.join())
                .await
                .expect("tunnel stops in time")
                .expect("tunnel stops cleanly");
        }
        wait_disconnected(&mut events, registry, &self.id).await;
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn wait_disconnected(
    events: &mut broadcast::Receiver<HostEvent>,
    registry: &HostRegistry,
    host_id: &str,
) {
    tokio::time::timeout(WAIT, async {
        while registry.is_online(host_id) {
            match events.recv().await {
                Ok(HostEvent::Disconnected { host_id: h, .. }) if h == host_id => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("registry gone"),
            }
        }
    })
    .await
    .expect("host goes offline in time");
}

async fn start(home: &std::path::Path) -> (TestServer, HostRegistry) {
    start_with(home, |_| {}).await
}

async fn start_with(
    home: &std::path::Path,
    tweak: impl FnOnce(&mut omnigent_server::ServerConfig),
) -> (TestServer, HostRegistry) {
    let registry = HostRegistry::default();
    let shared = registry.clone();
    let srv = TestServer::start_with(home, move |c| {
        c.host_registry = shared;
        tweak(c);
    })
    .await;
    (srv, registry)
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

async fn session_count(srv: &TestServer) -> usize {
    let (s, page) = srv.get("/v1/sessions?limit=100").await;
    assert_eq!(s, 200, "{page}");
    page["data"].as_array().expect("data").len()
}

#[tokio::test]
async fn a_host_is_listed_online_then_offline_and_remembered_across_restarts() {
    let home = tempfile::tempdir().expect("tmp");
    let (srv, registry) = start(home.path()).await;
    assert_eq!(srv.get("/v1/hosts").await, (200, json!({"hosts": []})));

    let mut host = Host::connect(&srv, &registry, "laptop").await;
    let (s, list) = srv.get("/v1/hosts").await;
    assert_eq!(s, 200);
    assert_eq!(
        list,
        json!({"hosts": [{
            "host_id": host.id, "name": "laptop", "owner": "local", "status": "online",
            "sandbox_provider": null,
            "configured_harnesses": {"echo": true, "openai": "needs-auth"},
            "gateway_inference": null,
        }]})
    );
    let (s, one) = srv.get(&format!("/v1/hosts/{}", host.id)).await;
    assert_eq!(s, 200, "{one}");
    assert_eq!(one["runners"], json!([]));
    assert_eq!(one["status"], "online");
    // Dashed and legacy-prefixed ids name the same host.
    let dashed = uuid::Uuid::parse_str(&host.id).expect("uuid").to_string();
    assert_eq!(srv.get(&format!("/v1/hosts/{dashed}")).await.0, 200);
    assert_eq!(srv.get(&format!("/v1/hosts/host_{}", host.id)).await.0, 200);
    let (s, body) = srv
        .get(&format!("/v1/hosts/{}", uuid::Uuid::new_v4().simple()))
        .await;
    assert_eq!((s, code(&body)), (404, "not_found"));
    assert_eq!(srv.get("/v1/hosts/not-a-host").await.0, 404);

    host.disconnect(&registry).await;
    let (_, list) = srv.get("/v1/hosts").await;
    assert_eq!(list["hosts"][0]["status"], "offline", "{list}");
    assert_eq!(list["hosts"][0]["name"], "laptop");

    // The row is in the database: a new server lists the host (offline) with what it last reported.
    srv.shutdown().await.0.expect("clean stop");
    let (srv, _registry) = start(home.path()).await;
    let (_, list) = srv.get("/v1/hosts").await;
    assert_eq!(list["hosts"][0]["host_id"], host.id.as_str(), "{list}");
    assert_eq!(list["hosts"][0]["status"], "offline");
    assert_eq!(list["hosts"][0]["configured_harnesses"]["echo"], true);
}

#[tokio::test]
async fn creating_a_host_session_stats_the_workspace_then_launches_the_201_runner_id() {
    let home = tempfile::tempdir().expect("tmp");
    let workspace = tempfile::tempdir().expect("workspace");
    let ws = workspace.path().to_str().expect("utf-8").to_owned();
    let (srv, registry) = start(home.path()).await;
    let mut host = Host::connect(&srv, &registry, "laptop").await;

    let (s, body) = srv
        .post(
            "/v1/sessions",
            json!({"agent_id": "openai", "host_id": host.id, "workspace": ws, "host_type": "external"}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let runner_id = body["runner_id"].as_str().expect("runner_id").to_owned();
    let session = body["id"].as_str().expect("id").to_owned();
    assert_eq!(body["host_id"], host.id.as_str());
    let launch = tokio::time::timeout(WAIT, host.launches.recv())
        .await
        .expect("launch in time")
        .expect("launch");
    assert_eq!(runner_id_for_token(&launch.binding_token), runner_id);
    assert_eq!(launch.workspace, ws);
    assert_eq!(launch.session_id.as_deref(), Some(session.as_str()));
    assert_eq!(launch.harness.as_deref(), Some("openai"));
    let (_, stored) = srv.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(stored["runner_id"], runner_id.as_str());
    assert_eq!(stored["workspace"], ws.as_str());
    assert_eq!(body["host_online"], true);
    assert_eq!(stored["host_online"], true);
    let (_, health) = srv.get(&format!("/health?session_id={session}")).await;
    assert_eq!(health["session"]["host_online"], true, "{health}");
    assert_eq!(
        health["session"]["host_version"],
        omnigent_proto::BUILD_VERSION
    );
    let (_, list) = srv.get("/v1/sessions").await;
    assert_eq!(list["data"][0]["host_online"], true, "{list}");

    // Every session gets its own token.
    let (s, second) = srv
        .post(
            "/v1/sessions",
            json!({"agent_id": "echo", "host_id": host.id, "workspace": ws}),
        )
        .await;
    assert_eq!(s, 201, "{second}");
    let launch2 = host.launches.recv().await.expect("second launch");
    assert_ne!(launch2.binding_token, launch.binding_token);
    assert_eq!(launch2.harness.as_deref(), Some("echo"));
    assert_eq!(
        second["runner_id"],
        runner_id_for_token(&launch2.binding_token).as_str()
    );

    host.disconnect(&registry).await;
    let (_, stored) = srv.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(stored["host_online"], false);
    let (_, health) = srv.get(&format!("/health?session_id={session}")).await;
    assert_eq!(health["session"]["host_online"], false, "{health}");
}

#[tokio::test]
async fn a_bad_workspace_or_an_offline_host_refuses_the_session_without_a_launch() {
    let home = tempfile::tempdir().expect("tmp");
    let workspace = tempfile::tempdir().expect("workspace");
    let file = workspace.path().join("notes.txt");
    std::fs::write(&file, "x").expect("file");
    let (srv, registry) = start(home.path()).await;
    let mut host = Host::connect(&srv, &registry, "laptop").await;

    let missing = workspace.path().join("nope");
    for (path, why) in [
        (missing.to_str().expect("utf-8"), "does not exist"),
        (file.to_str().expect("utf-8"), "not a directory"),
    ] {
        let (s, body) = srv
            .post(
                "/v1/sessions",
                json!({"agent_id": "echo", "host_id": host.id, "workspace": path}),
            )
            .await;
        assert_eq!((s, code(&body)), (410, "workspace_missing"), "{body}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.contains(why), "{message}");
    }
    let (s, body) = srv
        .post(
            "/v1/sessions",
            json!({"agent_id": "echo", "host_id": host.id}),
        )
        .await;
    assert_eq!((s, code(&body)), (400, "invalid_input"), "{body}");

    // A host that never connected, and one that went away: 409 with a message.
    let stranger = uuid::Uuid::new_v4().simple().to_string();
    let ws = workspace.path().to_str().expect("utf-8");
    let (s, body) = srv
        .post(
            "/v1/sessions",
            json!({"agent_id": "echo", "host_id": stranger, "workspace": ws}),
        )
        .await;
    assert_eq!((s, code(&body)), (409, "conflict"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("offline")
    );
    host.disconnect(&registry).await;
    let (s, body) = srv
        .post(
            "/v1/sessions",
            json!({"agent_id": "echo", "host_id": host.id, "workspace": ws}),
        )
        .await;
    assert_eq!((s, code(&body)), (409, "conflict"), "{body}");

    assert!(host.launches.try_recv().is_err(), "no launch was sent");
    assert_eq!(session_count(&srv).await, 0);
}

#[tokio::test]
async fn launch_failures_answer_by_error_code_and_leave_no_session() {
    let home = tempfile::tempdir().expect("tmp");
    let workspace = tempfile::tempdir().expect("workspace");
    let ws = workspace.path().to_str().expect("utf-8");
    let (srv, registry) = start(home.path()).await;
    let mut host = Host::connect(&srv, &registry, "laptop").await;

    for (error_code, status, api_code) in [
        (
            Some("harness_not_configured"),
            412,
            "harness_not_configured",
        ),
        (Some("workspace_missing"), 410, "workspace_missing"),
        (None, 503, "runner_unavailable"),
    ] {
        host.fail_launches(error_code, "cannot start it");
        let (s, body) = srv
            .post(
                "/v1/sessions",
                json!({"agent_id": "anthropic", "host_id": host.id, "workspace": ws}),
            )
            .await;
        assert_eq!((s, code(&body)), (status, api_code), "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .expect("message")
                .contains("cannot start it"),
            "{body}"
        );
        let launch = host.launches.recv().await.expect("a launch was tried");
        assert_eq!(launch.harness.as_deref(), Some("anthropic"));
    }
    assert_eq!(session_count(&srv).await, 0);
}

#[tokio::test]
async fn post_host_runners_binds_an_existing_session_and_launches_it() {
    let home = tempfile::tempdir().expect("tmp");
    let workspace = tempfile::tempdir().expect("workspace");
    let ws = workspace.path().to_str().expect("utf-8");
    let (srv, registry) = start(home.path()).await;
    let mut host = Host::connect(&srv, &registry, "laptop").await;
    let session = srv.create_session("later bound").await;
    let path = format!("/v1/hosts/{}/runners", host.id);

    let (s, body) = srv
        .post(&path, json!({"session_id": session, "workspace": ws}))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["status"], "launching");
    let launch = host.launches.recv().await.expect("launch");
    assert_eq!(
        body["runner_id"],
        runner_id_for_token(&launch.binding_token).as_str()
    );
    assert_eq!(launch.session_id.as_deref(), Some(session.as_str()));
    let (_, stored) = srv.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(stored["runner_id"], body["runner_id"]);
    assert_eq!(stored["host_id"], host.id.as_str());
    assert_eq!(stored["workspace"], ws);

    // Already bound: 400. Unknown session: 404. Missing workspace: 400. Unknown host: 404.
    let (s, again) = srv
        .post(&path, json!({"session_id": session, "workspace": ws}))
        .await;
    assert_eq!((s, code(&again)), (400, "invalid_input"), "{again}");
    let stranger = uuid::Uuid::new_v4().simple().to_string();
    let (s, b) = srv
        .post(&path, json!({"session_id": stranger, "workspace": ws}))
        .await;
    assert_eq!((s, code(&b)), (404, "not_found"), "{b}");
    let other = srv.create_session("other").await;
    let (s, b) = srv
        .post(&path, json!({"session_id": other, "workspace": " "}))
        .await;
    assert_eq!((s, code(&b)), (400, "invalid_input"), "{b}");
    let (s, b) = srv
        .post(
            &format!("/v1/hosts/{stranger}/runners"),
            json!({"session_id": other, "workspace": ws}),
        )
        .await;
    assert_eq!((s, code(&b)), (404, "not_found"), "{b}");
    host.disconnect(&registry).await;
    let (s, b) = srv
        .post(&path, json!({"session_id": other, "workspace": ws}))
        .await;
    assert_eq!((s, code(&b)), (409, "conflict"), "{b}");
    assert!(host.launches.try_recv().is_err());
}

#[tokio::test]
async fn the_workspace_picker_lists_stats_and_creates_through_the_tunnel() {
    let home = tempfile::tempdir().expect("tmp");
    let root = tempfile::tempdir().expect("root");
    std::fs::create_dir(root.path().join("alpha")).expect("dir");
    std::fs::write(root.path().join("beta.txt"), "hello").expect("file");
    let dir = root.path().to_str().expect("utf-8");
    let (srv, registry) = start(home.path()).await;
    let mut host = Host::connect(&srv, &registry, "laptop").await;
    let base = format!("/v1/hosts/{}", host.id);
    let q = |p: &str| p.replace('/', "%2F");

    let (s, page) = srv.get(&format!("{base}/filesystem?path={}", q(dir))).await;
    assert_eq!(s, 200, "{page}");
    let mut names: Vec<(String, String)> = page["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().expect("name").to_owned(),
                e["type"].as_str().expect("type").to_owned(),
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ("alpha".to_owned(), "directory".to_owned()),
            ("beta.txt".to_owned(), "file".to_owned())
        ]
    );
    assert_eq!(page["has_more"], false);
    let (s, page) = srv
        .get(&format!("{base}/filesystem?path={}&limit=1", q(dir)))
        .await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["entries"].as_array().expect("entries").len(), 1);
    assert_eq!(page["has_more"], true);

    let (s, st) = srv
        .get(&format!("{base}/filesystem/stat?path={}", q(dir)))
        .await;
    assert_eq!(s, 200, "{st}");
    assert_eq!(
        (st["exists"].clone(), st["type"].clone()),
        (json!(true), json!("directory"))
    );
    let missing = root.path().join("gone");
    let (s, st) = srv
        .get(&format!(
            "{base}/filesystem/stat?path={}",
            q(missing.to_str().expect("utf-8"))
        ))
        .await;
    assert_eq!((s, st["exists"].clone()), (200, json!(false)), "{st}");

    let new_dir = root.path().join("made/by/test");
    let (s, made) = srv
        .post(
            &format!("{base}/directories"),
            json!({"path": new_dir.to_str().expect("utf-8")}),
        )
        .await;
    assert_eq!(s, 201, "{made}");
    assert!(new_dir.is_dir(), "the host created the directory");

    // The host's refusals and the server's own checks.
    let (s, b) = srv
        .get(&format!("{base}/filesystem?path=relative/path"))
        .await;
    assert_eq!((s, code(&b)), (400, "invalid_input"), "{b}");
    let (s, b) = srv.get(&format!("{base}/filesystem/stat")).await;
    assert_eq!((s, code(&b)), (400, "invalid_input"), "{b}");
    let (s, b) = srv
        .get(&format!(
            "/v1/hosts/{}/filesystem?path=%2F",
            uuid::Uuid::new_v4().simple()
        ))
        .await;
    assert_eq!((s, code(&b)), (404, "not_found"), "{b}");
    host.disconnect(&registry).await;
    let (s, b) = srv.get(&format!("{base}/filesystem?path=%2F")).await;
    assert_eq!((s, code(&b)), (409, "conflict"), "{b}");
    let (s, b) = srv
        .post(&format!("{base}/directories"), json!({"path": "/tmp/x"}))
        .await;
    assert_eq!((s, code(&b)), (409, "conflict"), "{b}");
}

async fn raw_host(srv: &TestServer, host_id: &str, origin: Option<&str>) -> Result<Ws, u16> {
    let url = format!(
        "{}/v1/hosts/{host_id}/tunnel",
        srv.url.replacen("http", "ws", 1)
    );
    let mut req = url.into_client_request().expect("request");
    if let Some(origin) = origin {
        req.headers_mut()
            .insert("origin", origin.parse().expect("header"));
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("connect: {e}"),
    }
}

#[tokio::test]
async fn a_python_host_hello_is_accepted_and_a_launch_is_stat_then_launch_runner() {
    let home = tempfile::tempdir().expect("tmp");
    let (srv, registry) = start(home.path()).await;
    let host_id = uuid::Uuid::new_v4().simple().to_string();
    let mut ws = raw_host(&srv, &host_id, Some("omnigent://internal"))
        .await
        .expect("upgrade");
    send(&mut ws, python_hello()).await;
    registry
        .wait_for_host(&host_id, WAIT)
        .await
        .expect("online");
    let (_, list) = srv.get("/v1/hosts").await;
    let entry = &list["hosts"][0];
    assert_eq!(entry["name"], "vm");
    assert_eq!(entry["status"], "online");
    assert_eq!(entry["configured_harnesses"]["claude-sdk"], "needs-auth");
    assert_eq!(entry["gateway_inference"]["codex"], false);

    let client = srv.client.clone();
    let url = srv.u("/v1/sessions");
    let create = tokio::spawn(async move {
        let resp = client
            .post(url)
            .json(&json!({"agent_id": "exec", "host_id": host_id, "workspace": "/srv/work"}))
            .send()
            .await
            .expect("POST");
        common::status_json(resp).await
    });
    let stat = next_frame(&mut ws).await;
    assert_eq!(stat["kind"], "host.stat", "{stat}");
    assert_eq!(stat["path"], "/srv/work");
    send(
        &mut ws,
        json!({"kind": "host.stat_result", "request_id": stat["request_id"], "status": "ok",
               "exists": true, "type": "directory", "canonical_path": "/srv/work", "error": null}),
    )
    .await;
    let launch = next_frame(&mut ws).await;
    assert_eq!(launch["kind"], "host.launch_runner", "{launch}");
    assert_eq!(launch["workspace"], "/srv/work");
    assert_eq!(launch["harness"], "exec");
    let token = launch["binding_token"].as_str().expect("token");
    let runner_id = runner_id_for_token(token);
    send(
        &mut ws,
        json!({"kind": "host.launch_runner_result", "request_id": launch["request_id"],
               "status": "launched", "runner_id": runner_id, "error": null, "error_code": null}),
    )
    .await;
    let (s, body) = create.await.expect("task");
    assert_eq!(s, 201, "{body}");
    assert_eq!(body["runner_id"], runner_id.as_str());
    assert_eq!(launch["session_id"], body["id"]);
}

#[tokio::test]
async fn the_newest_tunnel_of_a_host_wins() {
    let home = tempfile::tempdir().expect("tmp");
    let (srv, registry) = start(home.path()).await;
    let host_id = uuid::Uuid::new_v4().simple().to_string();
    let mut hello = python_hello();

    let mut old = raw_host(&srv, &host_id, None).await.expect("upgrade");
    hello["name"] = json!("old");
    send(&mut old, hello.clone()).await;
    let first = registry
        .wait_for_host(&host_id, WAIT)
        .await
        .expect("online");

    let mut events = registry.subscribe();
    let mut new = raw_host(&srv, &host_id, None).await.expect("upgrade");
    hello["name"] = json!("new");
    send(&mut new, hello).await;
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(HostEvent::Connected { generation, .. }) = events.recv().await
                && generation != first.generation()
            {
                return;
            }
        }
    })
    .await
    .expect("the new tunnel registers");

    // The old tunnel is closed 4000 "tunnel replaced"; the host stays online under its new name.
    let close = tokio::time::timeout(WAIT, async {
        loop {
            match old.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("old tunnel closed in time")
    .expect("a close frame");
    assert_eq!(u16::from(close.code), 4000);
    let (_, list) = srv.get("/v1/hosts").await;
    assert_eq!(list["hosts"].as_array().expect("hosts").len(), 1);
    assert_eq!(list["hosts"][0]["name"], "new");
    assert_eq!(list["hosts"][0]["status"], "online");
    drop(new);
}

#[tokio::test]
async fn a_browser_origin_or_a_plain_get_cannot_open_a_host_tunnel() {
    let home = tempfile::tempdir().expect("tmp");
    let (srv, _registry) = start(home.path()).await;
    let host_id = uuid::Uuid::new_v4().simple().to_string();
    // A browser origin is closed 4403 before any frame (the runner tunnel's rule, tests in tunnel_auth.rs).
    let mut ws = raw_host(&srv, &host_id, Some("http://evil.example"))
        .await
        .expect("upgrade");
    let closed = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("closed in time");
    match closed {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 4403)
        }
        other => panic!("expected a 4403 close, got {other:?}"),
    }
    let (s, b) = srv.get(&format!("/v1/hosts/{host_id}/tunnel")).await;
    assert_eq!((s, code(&b)), (400, "invalid_input"), "{b}");
    let (_, list) = srv.get("/v1/hosts").await;
    assert_eq!(list, json!({"hosts": []}));
}

#[tokio::test]
async fn a_hello_of_another_protocol_is_refused_and_never_listed() {
    let home = tempfile::tempdir().expect("tmp");
    let (srv, _registry) = start(home.path()).await;
    let host_id = uuid::Uuid::new_v4().simple().to_string();
    let mut ws = raw_host(&srv, &host_id, None).await.expect("upgrade");
    let mut hello = python_hello();
    hello["frame_protocol_version"] = json!(2);
    send(&mut ws, hello).await;
    let error = next_frame(&mut ws).await;
    assert_eq!(error["kind"], "host.connection_error", "{error}");
    assert_eq!(error["retryable"], false);
    let (_, list) = srv.get("/v1/hosts").await;
    assert_eq!(list, json!({"hosts": []}));
}

#[tokio::test]
async fn a_message_to_a_host_session_whose_runner_is_offline_relaunches_it_with_the_same_token() {
    let home = tempfile::tempdir().expect("tmp");
    let workspace = tempfile::tempdir().expect("workspace");
    let ws = workspace.path().to_str().expect("utf-8");
    // A short launch budget: no runner ever dials in here, so the message fails after it.
    let registry = HostRegistry::new(omnigent_tunnel::host::HostSettings {
        launch_timeout: std::time::Duration::from_secs(1),
        ..Default::default()
    });
    let shared = registry.clone();
    let srv = TestServer::start_with(home.path(), move |c| c.host_registry = shared).await;
    let mut host = Host::connect(&srv, &registry, "laptop").await;
    let (s, body) = srv
        .post(
            "/v1/sessions",
            json!({"agent_id": "echo", "host_id": host.id, "workspace": ws}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let session = body["id"].as_str().expect("id").to_owned();
    let first = host.launches.recv().await.expect("launch");

    // The host reports the runner's crash; the server keeps it for the runner's status and errors.
    let runner_id = body["runner_id"].as_str().expect("runner_id").to_owned();
    let mut events = registry.subscribe();
    let handle = host.handle.as_ref().expect("tunnel");
    assert!(handle.runner_exited(runner_id.clone(), Some("exit code 3: boom".to_owned())));
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(HostEvent::RunnerExited { runner_id: r, .. }) = events.recv().await
                && r == runner_id
            {
                return;
            }
        }
    })
    .await
    .expect("the exit report reaches the server");

    let message = json!({"type": "message", "data": {"role": "user", "content": "hi"}});
    let events = format!("/v1/sessions/{session}/events");
    let (s, b) = srv.post(&events, message.clone()).await;
    let relaunch = host
        .launches
        .try_recv()
        .expect("the message relaunched the runner");
    assert_eq!(relaunch.binding_token, first.binding_token);
    assert_eq!(relaunch.session_id.as_deref(), Some(session.as_str()));
    assert_eq!(relaunch.workspace, ws);
    assert_eq!((s, code(&b)), (503, "runner_unavailable"), "{b}");
    let msg = b["error"]["message"].as_str().expect("message");
    assert!(msg.contains("relaunched") && msg.contains("boom"), "{msg}");
    let (_, stored) = srv.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(stored["runner_id"], body["runner_id"], "same runner id");

    // With the host gone there is nothing to relaunch: 503 at once, no launch.
    host.disconnect(&registry).await;
    let (s, b) = srv.post(&events, message).await;
    assert_eq!((s, code(&b)), (503, "runner_unavailable"), "{b}");
    assert!(host.launches.try_recv().is_err());
}

/// Binding tokens live in the server's memory: after a restart, the relaunch of a host session whose runner is gone
/// mints a fresh token, rebinds the session to the new runner id, and the message goes through once that
/// runner dials in.
#[tokio::test]
async fn after_a_server_restart_a_relaunch_binds_the_session_to_a_fresh_runner_and_the_message_goes_through()
 {
    let home = tempfile::tempdir().expect("tmp");
    let workspace = tempfile::tempdir().expect("workspace");
    let ws = workspace.path().to_str().expect("utf-8");
    let (srv, registry) = start(home.path()).await;
    let mut host = Host::connect(&srv, &registry, "laptop").await;
    let (s, body) = srv
        .post(
            "/v1/sessions",
            json!({"agent_id": "echo", "host_id": host.id, "workspace": ws}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let session = body["id"].as_str().expect("id").to_owned();
    let first = host.launches.recv().await.expect("launch");
    host.disconnect(&registry).await;
    let (stopped, _) = srv.shutdown().await;
    stopped.expect("clean stop");

    // The same machine comes back to the restarted server; the first runner never does. (Quick pings: a runner
    // counts as registered at the first one.)
    let (srv, registry) = start_with(home.path(), |c| {
        c.tunnel.ping_interval = std::time::Duration::from_millis(20)
    })
    .await;
    let mut host = Host::connect_as(&srv, &registry, "laptop", host.id.clone()).await;
    let message = json!({"type": "message", "data": {"role": "user", "content": "again"}});
    let events = format!("/v1/sessions/{session}/events");
    let post = srv.post(&events, message);
    let runner = async {
        let relaunch = host
            .launches
            .recv()
            .await
            .expect("the message relaunched the runner");
        assert_ne!(relaunch.binding_token, first.binding_token, "a fresh token");
        assert_eq!(relaunch.session_id.as_deref(), Some(session.as_str()));
        assert_eq!(relaunch.workspace, ws);
        let mut runner = FakeRunner::connect(&srv, &relaunch.binding_token, "idle").await;
        runner.stream_opened().await;
        assert!(matches!(runner.next_seen().await, Seen::Init(_)));
        let forwarded = runner.next_seen().await;
        (relaunch.binding_token, forwarded, runner)
    };
    let ((s, b), (token, forwarded, _runner)) = tokio::join!(post, runner);
    assert_eq!(s, 202, "{b}");
    match forwarded {
        Seen::Event(event) => assert_eq!(event["content"], "again"),
        other => panic!("expected the message on the new runner, got {other:?}"),
    }
    let (_, stored) = srv.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(stored["runner_id"], runner_id_for_token(&token), "{stored}");
    assert_ne!(stored["runner_id"], body["runner_id"], "{stored}");
}

#[tokio::test]
async fn a_host_that_does_not_answer_a_filesystem_call_in_time_is_a_504() {
    let home = tempfile::tempdir().expect("tmp");
    let registry = HostRegistry::new(omnigent_tunnel::host::HostSettings {
        fs_timeout: std::time::Duration::from_millis(200),
        ..Default::default()
    });
    let shared = registry.clone();
    let srv = TestServer::start_with(home.path(), move |c| c.host_registry = shared).await;
    let host_id = uuid::Uuid::new_v4().simple().to_string();
    let mut ws = raw_host(&srv, &host_id, None).await.expect("upgrade");
    send(&mut ws, python_hello()).await;
    registry
        .wait_for_host(&host_id, WAIT)
        .await
        .expect("online");

    let (s, b) = srv
        .get(&format!(
            "/v1/hosts/{host_id}/filesystem?path=%2Ftmp&limit=5000"
        ))
        .await;
    assert_eq!((s, code(&b)), (504, "timeout"), "{b}");
    // The request did reach the host, with the limit clamped to 1000.
    let list = next_frame(&mut ws).await;
    assert_eq!(list["kind"], "host.list_dir", "{list}");
    assert_eq!(list["limit"], 1000);
    assert_eq!(list["path"], "/tmp");
}

#[tokio::test]
async fn harness_readiness_updates_the_list_and_shutdown_closes_hosts_with_1012() {
    let home = tempfile::tempdir().expect("tmp");
    let (srv, registry) = start(home.path()).await;
    let host_id = uuid::Uuid::new_v4().simple().to_string();
    let mut ws = raw_host(&srv, &host_id, None).await.expect("upgrade");
    send(&mut ws, python_hello()).await;
    registry
        .wait_for_host(&host_id, WAIT)
        .await
        .expect("online");

    let mut events = registry.subscribe();
    send(
        &mut ws,
        json!({"kind": "host.harness_readiness", "configured_harnesses": {"claude-sdk": true},
               "gateway_inference": null}),
    )
    .await;
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(HostEvent::HarnessReadiness { .. }) = events.recv().await {
                return;
            }
        }
    })
    .await
    .expect("readiness reaches the server");
    let (_, list) = srv.get("/v1/hosts").await;
    assert_eq!(
        list["hosts"][0]["configured_harnesses"],
        json!({"claude-sdk": true}),
        "{list}"
    );
    assert_eq!(list["hosts"][0]["gateway_inference"], Value::Null);

    // A server going down tells its hosts to come back at once (1012 "service restart").
    let (result, _) = srv.shutdown().await;
    result.expect("clean stop");
    let close = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("closed in time")
    .expect("a close frame");
    assert_eq!(u16::from(close.code), 1012);
}
