#![allow(clippy::unwrap_used)]
//! `omnigent run PATH` and `omnigent agents`, through the real binary with a temp `OMNIGENT_HOME` (issue 14,
//! item 5): a spec that cannot run exits 78 naming its field before anything starts; bundles are what the
//! server's upload check accepts; `agents` lists a server's built-in and uploaded agents; and the whole path,
//! `omnigent run ./agent "hi"` against a real `omnigent start` with the echo harness.

mod common;

use std::process::{Command, Output, Stdio};

use axum::Router;
use axum::extract::Query;
use axum::routing::get;
use common::{WAIT, omnigent};
use omnigent_testkit::net::PortReservation;
use serde_json::{Value, json};

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A temp home (its own server port) and a temp directory the commands run in; `stop --force` on drop.
struct Home {
    home: tempfile::TempDir,
    cwd: tempfile::TempDir,
    port: u16,
    _reserved: PortReservation,
}

impl Home {
    fn new() -> Self {
        let reserved = PortReservation::new();
        Home {
            home: tempfile::Builder::new().prefix("oa").tempdir().unwrap(),
            cwd: tempfile::tempdir().unwrap(),
            port: reserved.port,
            _reserved: reserved,
        }
    }

    fn write(&self, rel: &str, contents: impl AsRef<[u8]>) {
        let p = self.cwd.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, contents).unwrap();
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = omnigent(self.home.path());
        c.args(args)
            .current_dir(self.cwd.path())
            .env("OMNIGENT_SERVER_PORT", self.port.to_string())
            .env_remove("OMNIGENT_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null());
        c
    }

    /// Run to the end, bounded.
    async fn run(&self, args: &[&str]) -> Output {
        let child = self
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        tokio::time::timeout(
            WAIT * 2,
            tokio::task::spawn_blocking(move || child.wait_with_output()),
        )
        .await
        .unwrap_or_else(|_| panic!("omnigent {args:?} did not finish"))
        .unwrap()
        .unwrap()
    }

    fn daemon_running(&self) -> bool {
        let out = self.cmd(&["status", "--json"]).output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["running"] == true
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = self.cmd(&["stop", "--force"]).output();
    }
}

/// Bytes that do not compress (xorshift), for a bundle over the size cap.
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_cannot_run_exits_78_naming_the_field_and_starts_nothing() {
    let h = Home::new();
    h.write("unknown/config.yaml", "executor: {harness: nonesuch}\n");
    h.write("noharness.yaml", "name: x\n");
    h.write("badyaml.yaml", "name: x\nexecutor: [unclosed\n");
    h.write("wrongtype.yaml", "executor: {harness: echo}\ntools: 3\n");
    h.write(
        "noinstr/config.yaml",
        "instructions: prompts/missing.md\nexecutor: {harness: echo}\n",
    );
    h.write(
        "mcp.yaml",
        "executor: {harness: echo}\ntools:\n  search: {type: mcp, command: x, url: 'http://x'}\n",
    );
    h.write(
        "disagree.yaml",
        "executor: {harness: echo, config: {harness: anthropic}}\n",
    );
    h.write("good.yaml", "executor: {harness: echo}\n");
    std::fs::create_dir_all(h.cwd.path().join("empty")).unwrap();
    for i in 0..1001 {
        h.write(&format!("many/f{i:04}"), "x");
    }
    h.write("many/config.yaml", "executor: {harness: echo}\n");
    h.write("big/config.yaml", "executor: {harness: echo}\n");
    h.write("big/blob.bin", noise(11 * 1024 * 1024));
    h.write("link/config.yaml", "executor: {harness: echo}\n");
    std::os::unix::fs::symlink("/etc/passwd", h.cwd.path().join("link/passwd")).unwrap();
    h.write(
        "hugespec/config.yaml",
        format!("executor: {{harness: echo}}\n#{}\n", "x".repeat(300 * 1024)),
    );

    let cases: &[(&[&str], &[&str])] = &[
        (
            &["run", "./unknown", "hi"],
            &["agent spec field executor.harness", "nonesuch"],
        ),
        (
            &["run", "noharness.yaml", "hi"],
            &["agent spec field executor:", "no harness"],
        ),
        (
            &["run", "./badyaml.yaml", "hi"],
            &["agent spec field $", "line"],
        ),
        (
            &["run", "wrongtype.yaml", "hi"],
            &["agent spec field tools"],
        ),
        (
            &["run", "./noinstr", "hi"],
            &["agent spec field instructions", "prompts/missing.md"],
        ),
        (
            &["run", "./mcp.yaml", "hi"],
            &["agent spec field tools.search", "not both"],
        ),
        (
            &["run", "./disagree.yaml"],
            &["agent spec field executor.config.harness"],
        ),
        // An override is checked like the spec itself.
        (
            &["run", "--harness", "nonesuch", "./good.yaml", "hi"],
            &["agent spec field executor.harness", "nonesuch"],
        ),
        (&["run", "./nope", "hi"], &["agent ./nope", "No such file"]),
        (
            &["run", "--agent", "missing.yaml", "hi"],
            &["agent missing.yaml", "No such file"],
        ),
        (&["run", "./empty", "hi"], &["has no config.yaml"]),
        (&["run", "./many", "hi"], &["more than 1000 entries"]),
        (&["run", "./big", "hi"], &["the limit is 10485760"]),
        (
            &["run", "./link", "hi"],
            &["cannot bundle ./link", "symlinks are not followed"],
        ),
        (
            &["run", "./hugespec", "hi"],
            &["config.yaml is", "the limit is 262144"],
        ),
        (
            &["agents", "check", "./unknown"],
            &["agent spec field executor.harness"],
        ),
    ];
    for (args, wants) in cases {
        let out = h.run(args).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {}", text(&out));
        for want in *wants {
            assert!(
                err.contains(want),
                "{args:?}: wants {want:?}: {}",
                text(&out)
            );
        }
        assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out));
    }
    // Every refusal came before the backend: no daemon was started.
    assert!(!h.daemon_running(), "a refused agent must start nothing");
}

#[test]
fn run_help_tells_how_an_agent_path_is_told_from_a_prompt() {
    let h = Home::new();
    let out = h.cmd(&["run", "--help"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    for want in [
        "AGENTS:",
        "--agent <PATH>",
        "--model <MODEL>",
        "existing directory holding",
        "/, ./, ../ or ~/",
        "executor.harness",
        "exits 78",
    ] {
        assert!(help.contains(want), "wants {want:?} in:\n{help}");
    }
}

#[test]
fn agents_check_writes_the_bundle_the_server_accepts_deterministically_with_overrides() {
    let h = Home::new();
    h.write(
        "bot/config.yaml",
        "# a comment\nname: bot\ninstructions: sys.md\nexecutor:\n  config: {harness: openai-agents}\n",
    );
    h.write("bot/sys.md", "Be brief.");
    h.write("bot/lib/tool.py", "print(1)");
    let check = |out_file: &str| {
        let out = h
            .cmd(&[
                "agents",
                "check",
                "./bot",
                "--harness",
                "echo",
                "--model",
                "m1",
                "--bundle",
                out_file,
                "--json",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        (v, std::fs::read(h.cwd.path().join(out_file)).unwrap())
    };
    let (v, bytes) = check("a.tar.gz");
    assert_eq!(v["name"], "bot");
    assert_eq!(v["harness"], "echo");
    assert_eq!(v["model"], "m1");
    assert_eq!(
        v["files"],
        json!(["config.yaml", "lib/tool.py", "sys.md"]),
        "{v}"
    );
    assert_eq!(v["bundle_bytes"], bytes.len());
    let (_, again) = check("b.tar.gz");
    assert_eq!(bytes, again, "the same agent gives the same bundle");
    // What the server runs at upload.
    let (bundle, spec) = omnigent_proto::agent::check_upload(&bytes, &Default::default()).unwrap();
    assert_eq!(
        spec.harness_name(),
        Some(("executor.harness", "echo")),
        "{}",
        bundle.spec_text
    );
    assert_eq!(spec.model(), Some("m1"));
    assert_eq!(
        spec.executor.unwrap().config.unwrap().harness.as_deref(),
        Some("echo")
    );
    assert_eq!(bundle.files["sys.md"].contents, b"Be brief.");
    // The file on disk is never rewritten.
    assert!(
        std::fs::read_to_string(h.cwd.path().join("bot/config.yaml"))
            .unwrap()
            .contains("openai-agents")
    );

    // A lone spec: the bundle holds it, as written, as config.yaml, with the instructions file it names.
    let solo = "name: solo\nprompt: prompts/p.md\nexecutor: {harness: echo}\n";
    h.write("solo.yaml", solo);
    h.write("prompts/p.md", "hello");
    h.write("unrelated.txt", "not bundled");
    let out = h
        .cmd(&["agents", "check", "solo.yaml", "--bundle", "s.tgz"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("agent solo (echo) can run: 2 file(s)"),
        "{}",
        text(&out)
    );
    let bytes = std::fs::read(h.cwd.path().join("s.tgz")).unwrap();
    let (bundle, _) = omnigent_proto::agent::check_upload(&bytes, &Default::default()).unwrap();
    assert_eq!(bundle.spec_text, solo);
    assert_eq!(
        bundle.files.keys().collect::<Vec<_>>(),
        ["config.yaml", "prompts/p.md"]
    );
    assert!(!h.daemon_running(), "check needs no backend");
}

/// A server's `GET /v1/agents` in two pages: the built-ins, then an uploaded agent.
async fn fake_agents_server() -> omnigent_testkit::net::Served {
    async fn agents(
        Query(q): Query<std::collections::HashMap<String, String>>,
    ) -> axum::Json<Value> {
        axum::Json(match q.get("after").map(String::as_str) {
            None => json!({
                "object": "list",
                "data": [
                    {"id": "b1", "object": "agent", "name": "echo", "description": "d", "created_at": 1, "harness": "echo"},
                    {"id": "b2", "object": "agent", "name": "openai", "description": "d", "created_at": 1, "harness": "openai"},
                ],
                "first_id": "b1", "last_id": "b2", "has_more": true,
            }),
            Some("b2") => json!({
                "object": "list",
                "data": [
                    {"id": "u1", "object": "agent", "name": "my-bot", "description": "", "created_at": 2,
                     "harness": "openai-agents", "session_scoped": true},
                ],
                "first_id": "u1", "last_id": "u1", "has_more": false,
            }),
            Some(other) => {
                json!({"error": {"code": "invalid", "message": format!("after={other}")}})
            }
        })
    }
    omnigent_testkit::net::serve(Router::new().route("/v1/agents", get(agents))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_lists_every_page_of_a_server_telling_uploaded_from_built_in() {
    let h = Home::new();
    let fake = fake_agents_server().await;
    let out = h.run(&["agents", "--server", &fake.url]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "NAME    HARNESS        KIND      ID\n\
         echo    echo           built-in  b1\n\
         openai  openai         built-in  b2\n\
         my-bot  openai-agents  uploaded  u1\n"
    );
    let out = h
        .run(&["agents", "list", "--json", "--server", &fake.url])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["server"], fake.url);
    let kinds: Vec<(&str, &str)> = v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].as_str().unwrap(), a["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("echo", "built-in"),
            ("openai", "built-in"),
            ("my-bot", "uploaded")
        ]
    );
    assert_eq!(v["agents"][2]["session_scoped"], true);
    assert!(!h.daemon_running(), "--server asks that server only");

    // A server that answers an error: its message, exit 1.
    let broken = omnigent_testkit::net::serve(Router::new().route(
        "/v1/agents",
        get(|| async {
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"error": {"code": "storage", "message": "the disk is full"}})),
            )
        }),
    ))
    .await;
    let out = h.run(&["agents", "--server", &broken.url]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the disk is full"),
        "{}",
        text(&out)
    );
}

/// The whole path against a real `omnigent start` (needs the server's multipart `POST /v1/sessions` and its
/// uploaded agents in `GET /v1/agents`, issue 14 item 2): an agent directory whose spec names
/// `openai-agents`, run with `--harness echo`, streams the echo; `agents --json` then lists it as uploaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_an_agent_directory_uploads_it_streams_the_answer_and_agents_lists_it() {
    let h = Home::new();
    h.write(
        "agent/config.yaml",
        "spec_version: 1\nname: e2e-echo\ninstructions: system.md\nexecutor:\n  harness: openai-agents\n  model: gpt-x\n",
    );
    h.write("agent/system.md", "Repeat what you are told.");
    let ws = h.cwd.path().join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    let out = h
        .run(&[
            "run",
            "--harness",
            "echo",
            "--workspace",
            ws.to_str().unwrap(),
            "./agent",
            "hi",
            "there",
        ])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hi there"),
        "{}",
        text(&out)
    );
    let out = h.run(&["agents", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let agents = v["agents"].as_array().unwrap();
    assert!(
        agents
            .iter()
            .any(|a| a["kind"] == "uploaded"
                && a["name"].as_str().unwrap_or("").contains("e2e-echo")),
        "{v:#}"
    );
    assert!(
        agents
            .iter()
            .any(|a| a["kind"] == "built-in" && a["name"] == "echo"),
        "{v:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_on_the_local_server_lists_its_built_ins() {
    let h = Home::new();
    let out = h.run(&["agents", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "built-in")
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    for want in [
        "echo",
        "openai",
        "anthropic",
        "exec",
        "claude-sdk",
        "codex",
        "pi",
    ] {
        assert!(names.contains(&want), "{v:#}");
    }
    assert!(
        v["server"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:"),
        "{v}"
    );
}
