#![allow(clippy::unwrap_used, clippy::expect_used)]
//! LAN co-driving against real non-loopback addresses (issue 13, Tests): each test makes a network namespace
//! joined to this one by a veth pair on a private /30 only it uses (10.213.N.1 here, 10.213.N.2 in the
//! namespace; nothing leaves the machine) and runs the client side in the namespace with `ip netns exec`.
//! The server is the real `omnigent server run --bind 10.213.N.1,127.0.0.1`: loopback is its owner (what
//! `omnigent share` uses), the namespace is another machine. Needs root and `ip` (iproute2): without them
//! the tests fail saying so; nothing is skipped.

use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use omnigent_testkit::process::Proc;
use serde_json::{Value, json};
use tokio::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_omnigent");
const WAIT: Duration = Duration::from_secs(40);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace and the veth pair into it; both removed on drop.
struct Netns {
    name: String,
    host_if: String,
    /// This side's address (where the server listens).
    host_ip: String,
    /// The namespace's address (the "other machine").
    ns_ip: String,
}

fn ip(args: &[&str]) {
    let out = StdCommand::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `ip` ({e}): these tests need iproute2 and root (apt-get install iproute2)")
        });
    assert!(
        out.status.success(),
        "ip {args:?} failed (these tests need root for network namespaces): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    fn new() -> Netns {
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // A /30 of 10.213.0.0/16 per (process, test): third octet from both, so parallel runs differ.
        let octet = 1 + (pid.wrapping_mul(7).wrapping_add(n * 31)) % 250;
        let tag = format!("{}{}", pid % 100_000, n);
        let ns = Netns {
            name: format!("omlan{tag}"),
            host_if: format!("omh{tag}"),
            host_ip: format!("10.213.{octet}.1"),
            ns_ip: format!("10.213.{octet}.2"),
        };
        let ns_if = format!("omn{tag}");
        // Left over from a killed run with the same numbers: gone first.
        let _ = StdCommand::new("ip")
            .args(["netns", "del", &ns.name])
            .stderr(Stdio::null())
            .status();
        let _ = StdCommand::new("ip")
            .args(["link", "del", &ns.host_if])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &ns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_if,
        ]);
        ip(&["link", "set", &ns.host_if, "up"]);
        ip(&[
            "netns",
            "exec",
            &ns.name,
            "ip",
            "addr",
            "add",
            &format!("{}/30", ns.ns_ip),
            "dev",
            &ns_if,
        ]);
        ip(&["netns", "exec", &ns.name, "ip", "link", "set", &ns_if, "up"]);
        ip(&["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"]);
        ns
    }

    /// `program args…` run inside the namespace.
    fn cmd(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// `curl` from the namespace: (status, body).
    async fn curl(&self, args: &[&str]) -> (u16, String) {
        let mut full = vec!["-s", "-m", "10", "-w", "\n%{http_code}"];
        full.extend_from_slice(args);
        let out = self
            .cmd("curl", &full)
            .output()
            .await
            .expect("curl in the namespace");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = StdCommand::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = StdCommand::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
    }
}

/// One OMNIGENT_HOME, for the server's machine or the namespace's.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        Home {
            dir: tempfile::Builder::new().prefix("olan").tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn env(&self, c: &mut Command) {
        c.env("OMNIGENT_HOME", self.path())
            // The namespace has its own loopback, so its daemon's local server cannot meet ours; a free port
            // anyway, never 6767.
            .env("OMNIGENT_SERVER_PORT", "0")
            .env_remove("OMNIGENT_DATABASE_URL")
            .env_remove("OMNIGENT_SERVER")
            .env_remove("OMNIGENT_HOST_TOKEN")
            .env_remove("OMNIGENT_RUNNER_TOKEN")
            .env_remove("OMNIGENT_OWNER_TOKEN")
            .env_remove("NOTIFY_SOCKET")
            .env("RUST_LOG", "debug,sqlx=warn,hyper=info,h2=info,rustls=info")
            .env("OMNIGENT_LOG", "debug");
    }

    /// `omnigent args…` here.
    fn omnigent(&self, args: &[&str]) -> Command {
        let mut c = Command::new(EXE);
        c.args(args).stdin(Stdio::null()).kill_on_drop(true);
        self.env(&mut c);
        c
    }

    /// `omnigent args…` inside `ns`.
    fn omnigent_in(&self, ns: &Netns, args: &[&str]) -> Command {
        let mut full = vec![EXE];
        full.extend_from_slice(args);
        let mut c = ns.cmd(full[0], &full[1..]);
        self.env(&mut c);
        c
    }

    /// Every file under this home's logs (and the rest of the home), as text.
    fn all_files(&self) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        let mut stack = vec![self.path().to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(bytes) = std::fs::read(&p) {
                    out.push((p, String::from_utf8_lossy(&bytes).into_owned()));
                }
            }
        }
        out
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        // Never leave a daemon behind (the control socket is a file: reachable from any namespace).
        let _ = StdCommand::new(EXE)
            .args(["stop", "--force"])
            .env("OMNIGENT_HOME", self.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The real server on the namespace link and on loopback, port 0; (process, loopback URL, LAN URL).
async fn lan_server(home: &Home, ns: &Netns) -> (Proc, String, String) {
    let mut cmd = omnigent_testkit::process::omnigent(EXE, home.path());
    cmd.env("RUST_LOG", "debug,sqlx=warn,hyper=info")
        .env_remove("OMNIGENT_OWNER_TOKEN")
        .args([
            "server",
            "run",
            "--bind",
            &format!("{},127.0.0.1", ns.host_ip),
            "--port",
            "0",
        ]);
    let (proc, url) = Proc::spawn_reporting_url(cmd).await;
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "the ready line names loopback: {url}"
    );
    let port = url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    let lan = format!("http://{}:{port}", ns.host_ip);
    (proc, url, lan)
}

fn text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn output(mut c: Command, what: &str) -> std::process::Output {
    tokio::time::timeout(WAIT, c.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish in {WAIT:?}"))
        .unwrap()
}

async fn get(url: &str) -> (u16, Value) {
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(url: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_server_bound_on_a_lan_address_starts_and_answers_401_to_an_anonymous_request_from_another_machine()
 {
    let ns = Netns::new();
    let home = Home::new();
    let (_server, url, lan) = lan_server(&home, &ns).await;

    let (status, body) = ns.curl(&[&format!("{lan}/v1/sessions")]).await;
    assert_eq!(status, 401, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "unauthenticated", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("omnigent share"),
        "{v}"
    );
    // A forged token is no better.
    let (status, _) = ns
        .curl(&[
            "-H",
            "Authorization: Bearer omd_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            &format!("{lan}/v1/sessions"),
        ])
        .await;
    assert_eq!(status, 401);
    // /v1/info says auth is required there, and the owner on loopback is still served.
    let (status, body) = ns.curl(&[&format!("{lan}/v1/info")]).await;
    if status == 200 {
        let info: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(info["auth"]["required"], true, "{info}");
        assert!(info["auth"]["role"].is_null(), "{info}");
    } else {
        assert_eq!(status, 401, "{body}");
    }
    let (status, list) = get(&format!("{url}/v1/sessions")).await;
    assert_eq!(status, 200, "{list}");
}

#[tokio::test]
async fn a_remote_host_without_a_token_is_refused_and_with_a_host_role_token_registers_and_runs_a_turn()
 {
    let ns = Netns::new();
    let server_home = Home::new();
    let (mut server, url, lan) = lan_server(&server_home, &ns).await;
    let client = Home::new();

    // No token: refused, exit 78, and the message says how to pair.
    let out = output(
        client.omnigent_in(&ns, &["host", &lan, "--background"]),
        "host without a token",
    )
    .await;
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("omnigent login {lan}")),
        "{}",
        text(&out)
    );
    let (_, hosts) = get(&format!("{url}/v1/hosts")).await;
    assert_eq!(
        hosts["hosts"].as_array().map(Vec::len),
        Some(0),
        "nothing registered: {hosts}"
    );

    // The owner (loopback) shares a host code; the other machine logs in with it.
    let out = output(
        server_home.omnigent(&[
            "share",
            "--role",
            "host",
            "--ttl",
            "5m",
            "--device-ttl",
            "30d",
            "--server",
            &url,
            "--json",
        ]),
        "share",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let code: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pairing_code = code["code"].as_str().unwrap().to_owned();
    assert_eq!(code["role"], "host");
    assert_eq!(code["device_ttl_seconds"], 30 * 86_400, "{code}");
    assert!(
        code["urls"].as_array().unwrap().iter().any(|u| u
            .as_str()
            .unwrap()
            .starts_with(&format!("{lan}/pair#code="))),
        "{code}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("omd_"),
        "no token in share --json"
    );
    // The text form has the URL and a QR code.
    let out = output(
        server_home.omnigent(&["share", "--role", "viewer", "--server", &url]),
        "share text",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains(&format!("{lan}/pair#code=")), "{shown}");
    assert!(
        shown.contains('█') || shown.contains('▀') || shown.contains('▄'),
        "a QR code: {shown}"
    );

    let out = output(
        client.omnigent_in(
            &ns,
            &["login", &lan, "--code", &pairing_code, "--name", "ns-box"],
        ),
        "login",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("role host"),
        "{}",
        text(&out)
    );
    let creds_file = client.path().join("config/credentials.json");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&creds_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let creds: Value =
        serde_json::from_str(&std::fs::read_to_string(&creds_file).unwrap()).unwrap();
    let token = creds["servers"][&lan]["token"]
        .as_str()
        .expect("token stored by origin")
        .to_owned();
    assert!(token.starts_with("omd_"));
    // The code was single use.
    let again = output(
        client.omnigent_in(&ns, &["login", &lan, "--code", &pairing_code]),
        "second login",
    )
    .await;
    assert!(!again.status.success(), "{}", text(&again));

    // Now the host registers, and a session on it runs a turn (runner tunnel from the namespace, with its
    // binding token).
    let out = output(
        client.omnigent_in(&ns, &["host", &lan, "--background"]),
        "host with a token",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let (_, hosts) = get(&format!("{url}/v1/hosts")).await;
    let host = hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["status"] == "online")
        .unwrap_or_else(|| panic!("an online host: {hosts}"))
        .clone();
    let (_, agents) = get(&format!("{url}/v1/agents?limit=100")).await;
    let agent = agents["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["harness"] == "echo")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ws = tempfile::tempdir().unwrap();
    let (status, session) = post(
        &format!("{url}/v1/sessions"),
        json!({"agent_id": agent, "host_id": host["host_id"], "workspace": ws.path().display().to_string()}),
    )
    .await;
    assert!(status < 300, "{session}");
    let sid = session["id"].as_str().unwrap().to_owned();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut sse =
        omnigent_testkit::sse::Sse::open(&http, &format!("{url}/v1/sessions/{sid}/stream"), None)
            .await;
    // The runner the host launched in the namespace dials back with its binding token.
    server
        .wait_log(&[omnigent_tunnel::server::RUNNER_CONNECTED])
        .await;
    let (status, body) = post(
        &format!("{url}/v1/sessions/{sid}/events"),
        json!({"type": "message", "data": {"role": "user", "content": [{"type": "input_text", "text": "over the lan"}]}}),
    )
    .await;
    assert!(status == 202 || status == 200, "{status} {body}");
    sse.until(|k, v| k == "session.status" && v["status"] == "idle")
        .await;
    let (_, items) = get(&format!("{url}/v1/sessions/{sid}/items?order=asc")).await;
    let answer = items["data"][1]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(answer.contains("over the lan"), "the echo answer: {items}");

    // The owner lists the device; nothing anywhere holds the token or the pairing code.
    let out = output(
        server_home.omnigent(&["devices", "--server", &url, "--json"]),
        "devices",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let devices: Value = serde_json::from_slice(&out.stdout).unwrap();
    let paired = devices["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "ns-box" && d["role"] == "host")
        .unwrap_or_else(|| panic!("{devices}"));
    // Paired for 30 days (`share --device-ttl 30d`), counted from the pairing.
    let lifetime = paired["expires_at"].as_i64().unwrap() - paired["created_at"].as_i64().unwrap();
    assert_eq!(lifetime, 30 * 86_400, "{paired}");
    let out = output(
        server_home.omnigent(&["devices", "--server", &url]),
        "devices text",
    )
    .await;
    let listed = String::from_utf8_lossy(&out.stdout);
    let row = listed
        .lines()
        .find(|l| l.contains("ns-box"))
        .unwrap_or_default();
    assert!(
        listed.contains("EXPIRES") && (row.contains("in 30d") || row.contains("in 29d")),
        "{listed}"
    );
    let _ = output(client.omnigent_in(&ns, &["stop"]), "stop").await;
    let server_log = server.kill_and_read_log().await.join("\n");
    for (what, secret) in [
        ("token", token.as_str()),
        ("pairing code", pairing_code.as_str()),
    ] {
        assert!(
            !server_log.contains(secret),
            "the {what} is in the server's stderr"
        );
        for home in [&server_home, &client] {
            for (path, body) in home.all_files() {
                if path == creds_file
                    || path.extension().is_some_and(|e| e == "db" || e == "db-wal")
                {
                    continue;
                }
                assert!(
                    !body.contains(secret),
                    "the {what} is in {}",
                    path.display()
                );
            }
        }
    }
}

#[tokio::test]
async fn a_runner_tunnel_from_another_machine_without_a_binding_token_is_refused() {
    let ns = Netns::new();
    let home = Home::new();
    let (mut server, url, lan) = lan_server(&home, &ns).await;
    let ws = tempfile::tempdir().unwrap();
    let client = Home::new();
    let ws_path = ws.path().display().to_string();
    let out = output(
        client.omnigent_in(&ns, &["runner", "--server", &lan, "--workspace", &ws_path]),
        "a token-less runner",
    )
    .await;
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("token") || err.contains("refused"),
        "says why: {}",
        text(&out)
    );
    // Nothing changed: no runner is online.
    let (_, runners) = get(&format!("{url}/v1/runners")).await;
    assert_eq!(runners["data"], json!([]), "{runners}");
    let log = server.kill_and_read_log().await.join("\n");
    assert!(
        !log.contains(omnigent_tunnel::server::RUNNER_CONNECTED),
        "no runner connected: {log}"
    );
}

/// `omnigent login LAN --code …` from the namespace for a device of `role`, in a home of its own.
async fn paired_client(server_home: &Home, url: &str, lan: &str, ns: &Netns, role: &str) -> Home {
    let out = output(
        server_home.omnigent(&["share", "--role", role, "--server", url, "--json"]),
        "share",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let code: Value = serde_json::from_slice(&out.stdout).unwrap();
    let client = Home::new();
    let out = output(
        client.omnigent_in(
            ns,
            &["login", lan, "--code", code["code"].as_str().unwrap()],
        ),
        "login",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    client
}

/// Run `c` with `input` on its stdin, then EOF.
async fn output_fed(mut c: Command, input: &str, what: &str) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish in {WAIT:?}"))
        .unwrap()
}

/// The NDJSON lines of `run`/`attach --json`, and the answer text their deltas carry.
fn events_and_answer(out: &std::process::Output) -> (Vec<Value>, String) {
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let answer = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .filter_map(|e| e["delta"].as_str())
        .collect();
    (events, answer)
}

async fn session_ids(url: &str) -> Vec<String> {
    let (status, list) = get(&format!("{url}/v1/sessions?limit=100")).await;
    assert_eq!(status, 200, "{list}");
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn run_and_attach_with_server_drive_a_session_on_the_remote_servers_host_and_refuse_viewers_and_strangers()
 {
    let ns = Netns::new();
    let server_home = Home::new();
    let (_server, url, lan) = lan_server(&server_home, &ns).await;
    // The server's machine is its host (on loopback: the owner, no token).
    let host_home = Home::new();
    let out = output(
        host_home.omnigent(&["host", &url, "--background"]),
        "the server's host",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let (_, hosts) = get(&format!("{url}/v1/hosts")).await;
    let host_id = hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["status"] == "online")
        .unwrap_or_else(|| panic!("an online host: {hosts}"))["host_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ws = tempfile::tempdir().unwrap();
    let ws_path = ws.path().display().to_string();
    let run = |home: &Home, prompt: &str| {
        home.omnigent_in(
            &ns,
            &[
                "run",
                "--server",
                &lan,
                "--workspace",
                &ws_path,
                "--json",
                prompt,
            ],
        )
    };

    // No token: exit 78 naming `omnigent login URL`; nothing created.
    let stranger = Home::new();
    let out = output(run(&stranger, "from a stranger"), "run without a token").await;
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("omnigent login {lan}")),
        "{}",
        text(&out)
    );
    assert!(session_ids(&url).await.is_empty());

    // A viewer: refused before anything is created, exit 78 naming the driver role.
    let viewer = paired_client(&server_home, &url, &lan, &ns, "viewer").await;
    let out = output(run(&viewer, "from a viewer"), "run as a viewer").await;
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("driver role") && err.contains("this device is a viewer"),
        "{}",
        text(&out)
    );
    assert!(session_ids(&url).await.is_empty());

    // A driver: the session is created on the server's host and a whole turn streams back.
    let driver = paired_client(&server_home, &url, &lan, &ns, "driver").await;
    let out = output(run(&driver, "over the lan"), "run as a driver").await;
    assert!(out.status.success(), "{}", text(&out));
    let (events, answer) = events_and_answer(&out);
    assert_eq!(events[0]["type"], "session.created", "{}", text(&out));
    let sid = events[0]["session"]["id"].as_str().unwrap().to_owned();
    assert_eq!(events[0]["session"]["host_id"], host_id.as_str());
    assert!(answer.contains("over the lan"), "{}", text(&out));
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "session.status" && e["status"] == "idle"),
        "{}",
        text(&out)
    );
    assert_eq!(session_ids(&url).await, vec![sid.clone()]);
    // The driver's machine ran no daemon for it.
    let out = output(driver.omnigent(&["status", "--json"]), "status").await;
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status["running"], false,
        "a daemon was started on the driver's machine: {status}"
    );

    // attach --server sees the session and drives a second turn in it.
    let out = output_fed(
        driver.omnigent_in(&ns, &["attach", &sid, "--server", &lan, "--json"]),
        "a second message\n",
        "attach as a driver",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let (_, answer) = events_and_answer(&out);
    assert!(answer.contains("a second message"), "{}", text(&out));
    let (_, items) = get(&format!("{url}/v1/sessions/{sid}/items?order=asc")).await;
    assert_eq!(items["data"].as_array().unwrap().len(), 4, "{items}");

    // The viewer may attach to watch; its send is refused naming the driver role, and nothing is stored.
    let out = output_fed(
        viewer.omnigent_in(&ns, &["attach", &sid, "--server", &lan, "--json"]),
        "from a viewer\n",
        "attach as a viewer",
    )
    .await;
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs the driver role"),
        "{}",
        text(&out)
    );
    let (_, after) = get(&format!("{url}/v1/sessions/{sid}/items?order=asc")).await;
    assert_eq!(after["data"], items["data"]);
    // A stranger cannot attach at all.
    let out = output(
        stranger.omnigent_in(&ns, &["attach", &sid, "--server", &lan]),
        "attach without a token",
    )
    .await;
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("omnigent login {lan}")),
        "{}",
        text(&out)
    );
}
