//! Uploaded agents against a real server on port 0 (real SQLite file in a temp home): the multipart
//! `POST /v1/sessions`, `GET /v1/agents`, and `GET /v1/sessions/{id}/agent/contents` as the runner fetches it,
//! with a raw WebSocket host playing the host frame by frame (as the Python host sends them).

mod common;

use std::collections::BTreeMap;
use std::io::Write;

use common::fake_runner::{FakeRunner, Seen};
use common::raw_host::{Ws, next_frame, python_hello, send};
use common::raw_http::{addr_of, read_head};
use common::{TestServer, WAIT, status_json};
use flate2::Compression;
use flate2::write::GzEncoder;
use omnigent_proto::agent::bundle::{self, BundleFile, Limits};
use omnigent_proto::harness::Harness;
use omnigent_proto::ids::runner_id_for_token;
use omnigent_tunnel::host::HostRegistry;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The server has one built-in agent per harness.
const BUILT_IN_AGENTS: usize = Harness::ALL.len();

const BOUNDARY: &str = "omnigent-test-boundary-7d1f";

const SPEC: &str = "spec_version: 1\nname: bundled\ninstructions: prompts/system.md\n\
executor:\n  type: omnigent\n  model: gpt-test\n  config: {harness: openai-agents}\n  \
auth: {type: api_key, api_key: '${OPENAI_API_KEY}', base_url: 'http://127.0.0.1:9/v1'}\n\
os_env: {type: caller_process, cwd: '.', sandbox: {type: none}}\n";

fn good_bundle() -> Vec<u8> {
    let mut files = BTreeMap::new();
    let file = |s: &str| BundleFile {
        contents: s.as_bytes().to_vec(),
        executable: false,
    };
    files.insert("config.yaml".to_owned(), file(SPEC));
    files.insert("prompts/system.md".to_owned(), file("Be kind.\n"));
    bundle::pack(&files, &Limits::default()).expect("pack")
}

/// A multipart body as the CLI sends it: `metadata` (application/json) then `bundle` (application/gzip).
fn multipart(metadata: Option<&Value>, bundle: Option<&[u8]>) -> Vec<u8> {
    let mut body = Vec::new();
    if let Some(m) = metadata {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\
                 Content-Type: application/json\r\n\r\n{m}\r\n"
            )
            .as_bytes(),
        );
    }
    if let Some(b) = bundle {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"bundle\"; filename=\"bundle.tar.gz\"\r\n\
                 Content-Type: application/gzip\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(b);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

async fn post_multipart(srv: &TestServer, body: Vec<u8>) -> (u16, Value) {
    let resp = srv
        .client
        .post(srv.u("/v1/sessions"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await
        .expect("POST");
    status_json(resp).await
}

async fn start(home: &std::path::Path) -> (TestServer, HostRegistry) {
    let registry = HostRegistry::default();
    let shared = registry.clone();
    let srv = TestServer::start_with(home, move |c| c.host_registry = shared).await;
    (srv, registry)
}

/// Rows of `table` in the server's database.
async fn rows(home: &std::path::Path, table: &str) -> i64 {
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(home.join("data/omnigent.db"))
        .read_only(true);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .expect("open db");
    let n = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&pool)
        .await
        .expect("count");
    pool.close().await;
    n
}

/// A raw host tunnel, upgraded but with no `host.hello` sent yet.
async fn raw_host(srv: &TestServer, host_id: &str) -> Ws {
    let url = format!(
        "{}/v1/hosts/{host_id}/tunnel",
        srv.url.replacen("http", "ws", 1)
    );
    let mut req = url.into_client_request().expect("request");
    req.headers_mut()
        .insert("origin", "omnigent://internal".parse().expect("header"));
    tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade")
        .0
}

/// Answer the `host.stat` of a session create as a directory, then the `host.launch_runner` as launched;
/// returns the launch frame.
async fn serve_launch(ws: &mut Ws, workspace: &str) -> Value {
    let stat = next_frame(ws).await;
    assert_eq!(stat["kind"], "host.stat", "{stat}");
    send(
        ws,
        json!({"kind": "host.stat_result", "request_id": stat["request_id"], "status": "ok",
               "exists": true, "type": "directory", "canonical_path": workspace, "error": null}),
    )
    .await;
    let launch = next_frame(ws).await;
    assert_eq!(launch["kind"], "host.launch_runner", "{launch}");
    let token = launch["binding_token"].as_str().expect("token");
    send(
        ws,
        json!({"kind": "host.launch_runner_result", "request_id": launch["request_id"],
               "status": "launched", "runner_id": runner_id_for_token(token), "error": null,
               "error_code": null}),
    )
    .await;
    launch
}

async fn contents(srv: &TestServer, session: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = srv
        .client
        .get(srv.u(&format!("/v1/sessions/{session}/agent/contents")))
        .header("origin", "omnigent://internal")
        .header("x-omnigent-mcp-selection", "1");
    if let Some(token) = token {
        req = req.header("x-omnigent-runner-tunnel-token", token);
    }
    req.send().await.expect("GET contents")
}

#[tokio::test]
async fn a_bundle_upload_for_a_host_launches_its_harness_and_only_its_runner_gets_the_bundle_back()
{
    let home = tempfile::tempdir().expect("tmp");
    let (srv, registry) = start(home.path()).await;
    let host_id = uuid::Uuid::new_v4().simple().to_string();
    let mut ws = raw_host(&srv, &host_id).await;
    send(&mut ws, python_hello()).await;
    registry
        .wait_for_host(&host_id, WAIT)
        .await
        .expect("online");

    let bundle = good_bundle();
    let body = multipart(
        Some(
            &json!({"title": "bundled run", "host_id": host_id, "workspace": "/srv/work",
                     "labels": {"k": "v"}}),
        ),
        Some(&bundle),
    );
    let create = tokio::spawn({
        let client = srv.client.clone();
        let url = srv.u("/v1/sessions");
        async move {
            let resp = client
                .post(url)
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary={BOUNDARY}"),
                )
                .body(body)
                .send()
                .await
                .expect("POST");
            status_json(resp).await
        }
    });
    let launch = serve_launch(&mut ws, "/srv/work").await;
    assert_eq!(
        launch["harness"], "openai-agents",
        "the spec's harness name as written: {launch}"
    );
    let (status, created) = create.await.expect("task");
    assert_eq!(status, 201, "{created}");
    let session = created["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned();
    assert_eq!(
        created.as_object().map(|o| o.len()),
        Some(1),
        "0.19.1 answers {{\"session_id\"}} only: {created}"
    );
    assert_eq!(launch["session_id"], session.as_str());
    let token = launch["binding_token"].as_str().expect("token").to_owned();

    let (s, snap) = srv.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(s, 200, "{snap}");
    let agent_id = snap["agent_id"].as_str().expect("agent_id").to_owned();
    assert_eq!(agent_id.len(), 32, "{snap}");
    assert_eq!(snap["agent_name"], "bundled");
    assert_eq!(snap["harness"], "openai-agents");
    assert_eq!(snap["title"], "bundled run");
    assert_eq!(snap["runner_id"], runner_id_for_token(&token).as_str());
    let (_, page) = srv.get("/v1/sessions").await;
    assert_eq!(page["data"][0]["agent_name"], "bundled", "{page}");

    let (s, agents) = srv.get("/v1/agents?limit=100").await;
    assert_eq!(s, 200, "{agents}");
    let list = agents["data"].as_array().expect("data");
    assert_eq!(
        list.len(),
        BUILT_IN_AGENTS + 1,
        "the built-ins and the upload: {agents}"
    );
    let uploaded = list
        .iter()
        .find(|a| a["id"] == agent_id.as_str())
        .expect("listed");
    assert_eq!(uploaded["name"], "bundled");
    assert_eq!(uploaded["harness"], "openai-agents");
    assert_eq!(uploaded["session_scoped"], true);
    assert_eq!(uploaded["object"], "agent");
    let (s, one) = srv.get(&format!("/v1/agents/{agent_id}")).await;
    assert_eq!((s, &one["name"]), (200, &json!("bundled")), "{one}");
    let (s, of_session) = srv.get(&format!("/v1/sessions/{session}/agent")).await;
    assert_eq!(
        (s, &of_session["id"]),
        (200, &json!(agent_id)),
        "{of_session}"
    );

    // The runner's fetch: byte-identical, with the agent's headers.
    let resp = contents(&srv, &session, Some(&token)).await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    assert_eq!(header("content-type"), "application/gzip");
    assert_eq!(header("x-agent-id"), agent_id);
    assert_eq!(header("x-agent-version"), "1");
    assert_eq!(header("x-agent-name"), "bundled");
    assert_eq!(header("x-agent-session-scoped"), "true");
    assert_eq!(header("x-omnigent-mcp-selection"), "{}");
    let got = resp.bytes().await.expect("body");
    assert_eq!(got.as_ref(), bundle.as_slice(), "byte-identical bundle");

    // Anyone else: refused, and nothing of the bundle in the answer.
    for (token, want) in [
        (None, 401),
        (Some("not-the-token"), 403),
        (Some(&token[..token.len() - 1]), 403),
    ] {
        let resp = contents(&srv, &session, token).await;
        assert_eq!(resp.status().as_u16(), want, "{token:?}");
        let (_, body) = status_json(resp).await;
        let message = body["error"]["message"].as_str().expect("message");
        assert!(
            message.contains("X-Omnigent-Runner-Tunnel-Token"),
            "{message}"
        );
        assert!(!message.contains(&token_suffix(&token)), "{message}");
    }
    let resp = contents(&srv, "0123456789abcdef0123456789abcdef", Some(&token)).await;
    assert_eq!(resp.status(), 404);

    // A session of a built-in agent on the same host: its runner is told there is no bundle.
    let create = tokio::spawn({
        let client = srv.client.clone();
        let url = srv.u("/v1/sessions");
        let host_id = host_id.clone();
        async move {
            let resp = client
                .post(url)
                .json(&json!({"agent_id": "echo", "host_id": host_id, "workspace": "/srv/work"}))
                .send()
                .await
                .expect("POST");
            status_json(resp).await
        }
    });
    let launch = serve_launch(&mut ws, "/srv/work").await;
    assert_eq!(launch["harness"], "echo");
    let (status, echo) = create.await.expect("task");
    assert_eq!(status, 201, "{echo}");
    let echo_token = launch["binding_token"].as_str().expect("token");
    let resp = contents(&srv, echo["id"].as_str().expect("id"), Some(echo_token)).await;
    assert_eq!(resp.status(), 404);
    let (_, body) = status_json(resp).await;
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("built-in agent `echo`"), "{message}");
    // The uploaded session's token does not open the echo session either.
    let resp = contents(&srv, echo["id"].as_str().expect("id"), Some(&token)).await;
    assert_eq!(resp.status(), 403);

    // After a restart (which forgets every token it held), the runner's token still fetches the bundle.
    drop(ws);
    let (result, _) = srv.shutdown().await;
    result.expect("clean stop");
    let (srv, _registry) = start(home.path()).await;
    let (_, snap) = srv.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(snap["agent_name"], "bundled", "{snap}");
    let resp = contents(&srv, &session, Some(&token)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.bytes().await.expect("body").as_ref(),
        bundle.as_slice()
    );
}

#[tokio::test]
async fn an_uploaded_agent_goes_with_the_last_session_that_uses_it() {
    let home = tempfile::tempdir().expect("tmp");
    let (srv, _registry) = start(home.path()).await;
    let (status, created) = post_multipart(
        &srv,
        multipart(Some(&json!({"title": "t"})), Some(&good_bundle())),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let session = created["session_id"].as_str().expect("id").to_owned();
    // A second upload of the same bytes: a second agent, one stored bundle.
    let (status, other) = post_multipart(&srv, multipart(None, Some(&good_bundle()))).await;
    assert_eq!(status, 201, "{other}");
    assert_eq!(rows(home.path(), "agents").await, 2);
    assert_eq!(rows(home.path(), "agent_bundles").await, 1);

    let (status, fork) = srv
        .post(&format!("/v1/sessions/{session}/fork"), json!({}))
        .await;
    assert_eq!(status, 201, "{fork}");
    assert_eq!(
        fork["agent_name"], "bundled",
        "a fork runs the same agent: {fork}"
    );
    let (status, _) = srv.delete(&format!("/v1/sessions/{session}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        rows(home.path(), "agents").await,
        2,
        "the fork still uses it"
    );
    let (status, _) = srv
        .delete(&format!(
            "/v1/sessions/{}",
            fork["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(rows(home.path(), "agents").await, 1);
    assert_eq!(
        rows(home.path(), "agent_bundles").await,
        1,
        "the other agent has the same bytes"
    );
    let (status, _) = srv
        .delete(&format!(
            "/v1/sessions/{}",
            other["session_id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(rows(home.path(), "agents").await, 0);
    assert_eq!(rows(home.path(), "agent_bundles").await, 0);
    let (_, agents) = srv.get("/v1/agents").await;
    assert_eq!(
        agents["data"].as_array().map(Vec::len),
        Some(BUILT_IN_AGENTS),
        "only the built-ins: {agents}"
    );
}

#[tokio::test]
async fn a_turn_of_an_uploaded_agent_tells_the_runner_its_revision_as_0_19_1_does() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start_with(home.path(), |c| {
        c.tunnel.ping_interval = std::time::Duration::from_millis(20);
    })
    .await;
    let bundle = good_bundle();
    let (status, created) = post_multipart(
        &srv,
        multipart(Some(&json!({"labels": {"k": "v"}})), Some(&bundle)),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let session = created["session_id"].as_str().expect("id").to_owned();
    let token = "tok-agent-revision";
    let mut runner = FakeRunner::connect(&srv, token, "idle").await;
    let (status, snap) = srv
        .patch(
            &format!("/v1/sessions/{session}"),
            json!({"runner_id": runner_id_for_token(token)}),
        )
        .await;
    assert_eq!(status, 200, "{snap}");
    let agent_id = snap["agent_id"].as_str().expect("agent_id").to_owned();
    let message = json!({"type": "message", "data": {"role": "user",
        "content": [{"type": "input_text", "text": "hi"}]}});
    let path = format!("/v1/sessions/{session}/events");
    let (accepted, event) = tokio::join!(srv.post(&path, message), async {
        runner.stream_opened().await;
        assert!(matches!(runner.next_seen().await, Seen::Init(_)));
        match runner.next_seen().await {
            Seen::Event(event) => event,
            other => panic!("expected the forwarded message, got {other:?}"),
        }
    });
    assert_eq!(accepted.0, 202, "{}", accepted.1);
    // 0.19.1 sends its bundle location, `{agent_id}/{sha256 of the bundle}` (runners key caches on it).
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bundle));
    assert_eq!(event["agent_id"], agent_id.as_str());
    assert_eq!(
        event["agent_revision"],
        format!("{agent_id}/{sha}"),
        "{event}"
    );
    assert_eq!(event["model"], "bundled");
}

/// The last 6 characters of a token (what a message must not echo).
fn token_suffix(token: &Option<&str>) -> String {
    match token {
        Some(t) if t.len() >= 6 => t[t.len() - 6..].to_owned(),
        _ => "\u{0}never\u{0}".to_owned(),
    }
}

/// A `.tar.gz` written entry by entry, hostile ones included (paths and types `tar::Builder` would refuse).
fn raw_bundle(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, kind, link, data) in entries {
        let mut header = tar::Header::new_gnu();
        {
            let old = header.as_old_mut();
            old.name[..path.len()].copy_from_slice(path.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(*kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append(&header, *data).expect("append");
    }
    let tar = tar.into_inner().expect("tar");
    let mut gz = GzEncoder::new(Vec::new(), Compression::best());
    gz.write_all(&tar).expect("gz");
    gz.finish().expect("gz")
}

#[tokio::test]
async fn hostile_or_unrunnable_bundles_are_refused_naming_the_entry_or_field_and_nothing_is_stored()
{
    use tar::EntryType::{Regular, Symlink};
    let home = tempfile::tempdir().expect("tmp");
    let (srv, _registry) = start(home.path()).await;
    // Runnable as it stands, so each case is refused for its own reason only.
    let plain = "name: hostile\nexecutor: {harness: openai-agents}\n";
    let spec = plain.as_bytes();
    let zeros = vec![0u8; 20 * 1024 * 1024];
    let many: Vec<String> = (0..1001).map(|i| format!("f/{i}.txt")).collect();
    let mut many_entries = vec![("config.yaml", Regular, "", spec)];
    many_entries.extend(many.iter().map(|p| (p.as_str(), Regular, "", &b"x"[..])));
    let huge_spec = format!("{plain}# {}\n", "y".repeat(300 * 1024));
    let no_prompt = SPEC.replace(
        "instructions: prompts/system.md",
        "instructions: prompts/gone.md",
    );
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "parent path",
            raw_bundle(&[
                ("config.yaml", Regular, "", spec),
                ("../escape.txt", Regular, "", b"x"),
            ]),
            400,
            "\"../escape.txt\"",
        ),
        (
            "absolute path",
            raw_bundle(&[
                ("config.yaml", Regular, "", spec),
                ("/tmp/abs.txt", Regular, "", b"x"),
            ]),
            400,
            "\"/tmp/abs.txt\"",
        ),
        (
            "symlink",
            raw_bundle(&[
                ("config.yaml", Regular, "", spec),
                ("link", Symlink, "/etc/passwd", b""),
            ]),
            400,
            "\"link\"",
        ),
        (
            "gzip bomb",
            raw_bundle(&[
                ("config.yaml", Regular, "", spec),
                ("bomb.bin", Regular, "", &zeros),
            ]),
            413,
            "expands more than 100x",
        ),
        (
            "too many entries",
            raw_bundle(&many_entries),
            413,
            "more than 1000 entries",
        ),
        (
            "huge config.yaml",
            raw_bundle(&[("config.yaml", Regular, "", huge_spec.as_bytes())]),
            413,
            "config.yaml is",
        ),
        (
            "bad YAML",
            raw_bundle(&[("config.yaml", Regular, "", b"name: [unclosed\n")]),
            400,
            "agent spec field $",
        ),
        (
            "unknown harness",
            raw_bundle(&[(
                "config.yaml",
                Regular,
                "",
                b"name: x\nexecutor: {harness: no-such-harness}\n",
            )]),
            400,
            "agent spec field executor.harness",
        ),
        (
            "no harness",
            raw_bundle(&[("config.yaml", Regular, "", b"name: x\n")]),
            400,
            "agent spec field executor",
        ),
        (
            "missing instructions file",
            raw_bundle(&[("config.yaml", Regular, "", no_prompt.as_bytes())]),
            400,
            "agent spec field instructions",
        ),
        (
            "no config.yaml",
            raw_bundle(&[("other.yaml", Regular, "", spec)]),
            400,
            "no config.yaml",
        ),
        (
            "not a gzip",
            b"plain text, not a bundle".to_vec(),
            400,
            "not a .tar.gz",
        ),
    ];
    for (what, bundle, want, needle) in &cases {
        let (status, body) = post_multipart(&srv, multipart(Some(&json!({})), Some(bundle))).await;
        assert_eq!(status, *want, "{what}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{what}: {message}");
        assert!(
            message.contains("bundle"),
            "{what} names the part: {message}"
        );
    }
    // Malformed forms.
    let (status, body) = post_multipart(&srv, multipart(Some(&json!({})), None)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("part `bundle`")
    );
    let (status, body) = post_multipart(
        &srv,
        multipart(Some(&json!({"labels": 3})), Some(&good_bundle())),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("`metadata` field `labels`"),
        "{body}"
    );
    let resp = srv
        .client
        .post(srv.u("/v1/sessions"))
        .header("content-type", "multipart/form-data")
        .body("x")
        .send()
        .await
        .expect("POST");
    let (status, body) = status_json(resp).await;
    assert_eq!(status, 400, "no boundary: {body}");

    for table in ["agents", "agent_bundles", "sessions"] {
        assert_eq!(rows(home.path(), table).await, 0, "{table}: nothing stored");
    }
    let (_, agents) = srv.get("/v1/agents").await;
    assert_eq!(
        agents["data"].as_array().map(Vec::len),
        Some(BUILT_IN_AGENTS),
        "only the built-ins: {agents}"
    );

    // And a good one after all that is stored whole: one agent, one bundle, one session.
    let (status, body) = post_multipart(&srv, multipart(None, Some(&good_bundle()))).await;
    assert_eq!(status, 201, "{body}");
    for table in ["agents", "agent_bundles", "sessions"] {
        assert_eq!(rows(home.path(), table).await, 1, "{table}");
    }
}

#[tokio::test]
async fn an_oversized_multipart_body_is_refused_413_before_it_is_read() {
    let home = tempfile::tempdir().expect("tmp");
    let (srv, _registry) = start(home.path()).await;
    let addr = addr_of(&srv.url);
    // Declared too large: refused on the head alone; the test never sends the 100 MiB.
    let mut sock = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/sessions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
         Content-Length: {}\r\n\r\n--{BOUNDARY}\r\n",
        100 * 1024 * 1024
    );
    sock.write_all(head.as_bytes()).await.expect("write");
    let (status, head, _) = read_head(&mut sock).await;
    assert_eq!(status, 413, "{head}");

    // Chunked, no length: cut off once the bundle part passes its cap, long before the body ends.
    let mut sock = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/sessions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.expect("write");
    let part = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"bundle\"; filename=\"bundle.tar.gz\"\r\n\r\n"
    );
    sock.write_all(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes())
        .await
        .expect("write");
    let chunk = vec![b'z'; 256 * 1024];
    let reader = tokio::spawn(async move {
        let mut sent = 0usize;
        // At most 64 MiB: far over the caps; the server answers (and stops reading) long before.
        while sent < 64 * 1024 * 1024 {
            let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
            frame.extend_from_slice(&chunk);
            frame.extend_from_slice(b"\r\n");
            if sock.write_all(&frame).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        (sock, sent)
    });
    let (mut sock, sent) = tokio::time::timeout(WAIT, reader)
        .await
        .expect("in time")
        .expect("task");
    assert!(
        sent < 64 * 1024 * 1024,
        "the server stopped reading: {sent} bytes sent"
    );
    let (status, head, _) = read_head(&mut sock).await;
    assert_eq!(status, 413, "{head}");
    assert_eq!(rows(home.path(), "agent_bundles").await, 0);
}

#[tokio::test]
async fn a_session_for_a_host_whose_hello_is_still_on_its_way_waits_for_it_instead_of_409() {
    let home = tempfile::tempdir().expect("tmp");
    let (srv, registry) = start(home.path()).await;
    let host_id = uuid::Uuid::new_v4().simple().to_string();
    // The daemon counts itself online once its hello is sent; the server only once it has read it.
    let mut ws = raw_host(&srv, &host_id).await;
    let create = tokio::spawn({
        let client = srv.client.clone();
        let url = srv.u("/v1/sessions");
        let host_id = host_id.clone();
        async move {
            let resp = client
                .post(url)
                .json(&json!({"agent_id": "echo", "host_id": host_id, "workspace": "/srv/work"}))
                .send()
                .await
                .expect("POST");
            status_json(resp).await
        }
    });
    // Give a server without the wait every chance to answer 409 first (the fixed one answers only after
    // the hello, whatever this delay is).
    let mut create = create;
    let early = tokio::time::timeout(std::time::Duration::from_millis(300), &mut create).await;
    if let Ok(answer) = early {
        let (status, body) = answer.expect("task");
        panic!("answered before the host's hello arrived: {status} {body}");
    }
    send(&mut ws, python_hello()).await;
    registry
        .wait_for_host(&host_id, WAIT)
        .await
        .expect("online");
    let launch = serve_launch(&mut ws, "/srv/work").await;
    assert_eq!(launch["harness"], "echo");
    let (status, body) = create.await.expect("task");
    assert_eq!(status, 201, "{body}");
}
