#![allow(clippy::unwrap_used)]
//! `omnigent host`, `omnigent run` and runner supervision, black-box: the real `omnigent` binary, each test
//! with its own OMNIGENT_HOME and free port. Remote targets are played by a small axum server serving the
//! host tunnel with `omnigent_tunnel::host` (or refusing it); `run` uses the real local server.
//!
//! Waiting is on signals: a printed line, a process exit, a registry event, the status long-poll.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::routing::get;
use omnigent_testkit::FakeHost;
use omnigent_testkit::host::next_event;
use omnigent_testkit::net::PortReservation;
use omnigent_tunnel::host::{HostEvent, HostRegistry};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_omnigent");
/// Bound on waits for things that should happen promptly; hitting it fails the test.
const WAIT: Duration = Duration::from_secs(30);

struct Home {
    dir: tempfile::TempDir,
    /// The local server port, held for the daemon (no port-0 bind is given it; the server under test binds it).
    port: u16,
    _reserved: PortReservation,
}

impl Home {
    fn new() -> Self {
        let reserved = PortReservation::new();
        Home {
            dir: tempfile::Builder::new().prefix("oh").tempdir().unwrap(),
            port: reserved.port,
            _reserved: reserved,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(EXE);
        c.args(args)
            .env("OMNIGENT_HOME", self.dir.path())
            .env("OMNIGENT_SERVER_PORT", self.port.to_string())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("OMNIGENT_LOG")
            .env_remove("OMNIGENT_HOST_TOKEN")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    async fn run(&self, args: &[&str]) -> std::process::Output {
        tokio::time::timeout(WAIT, self.cmd(args).output())
            .await
            .unwrap_or_else(|_| panic!("omnigent {args:?} did not finish"))
            .unwrap()
    }

    fn config_file(&self) -> std::path::PathBuf {
        omnigent_proto::paths::Paths::under(self.dir.path()).config_file()
    }

    /// config.toml as it is now ("" when missing).
    fn config_text(&self) -> String {
        std::fs::read_to_string(self.config_file()).unwrap_or_default()
    }

    /// Follow the daemon's status (the long-poll, through the real client) until `url` is online; its
    /// `host status --json` entries for `url` then.
    async fn wait_online(&self, url: &str) -> Vec<Value> {
        let paths = omnigent_proto::paths::Paths::under(self.dir.path());
        let mut client = omnigent_daemon::control::client::ControlClient::connect(&paths)
            .await
            .unwrap();
        tokio::time::timeout(WAIT, async {
            let mut st = client.status().await.unwrap();
            while !st
                .targets
                .iter()
                .any(|t| t.url == url && t.tunnel == "online")
            {
                st = client.status_after(st.revision, 5_000).await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{url} never came online"));
        let st = self.json(&["host", "status", "--json"]).await;
        st["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["url"] == url)
            .cloned()
            .collect()
    }

    async fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "omnigent {args:?} failed: {}",
            text(&out)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", text(&out)))
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        // Never leave a daemon behind, whatever the test did.
        let _ = std::process::Command::new(EXE)
            .args(["stop", "--force"])
            .env("OMNIGENT_HOME", self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Whether `host status --json` lists the target `url`.
fn lists_target(st: &Value, url: &str) -> bool {
    st["targets"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["url"] == url)
}

fn text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A server end of the host tunnel on a free port (the testkit's), refusing every tunnel upgrade and
/// `/v1/me` with `reject` when given.
async fn fake_server(reject: Option<u16>) -> (SocketAddr, HostRegistry) {
    let fake = fake_server_switchable(reject).await;
    (fake.addr, fake.registry().clone())
}

/// [`fake_server`] whose refusal can be switched on and off ([`FakeHost::refuse`]).
async fn fake_server_switchable(reject: Option<u16>) -> FakeHost {
    let fake = FakeHost::start().await;
    fake.refuse(reject.unwrap_or(0));
    fake
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_in_the_foreground_is_the_daemon_its_runners_are_its_children_and_ctrl_c_stops_them() {
    let home = Home::new();
    let (addr, registry) = fake_server(None).await;
    let mut events = registry.subscribe();
    let url = format!("http://{addr}");
    let mut host = home
        .cmd(&["host", &url])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let host_pid = host.id().unwrap();
    let mut lines = BufReader::new(host.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.starts_with("✓ Connected as");
            printed.push(line);
            if done {
                return;
            }
        }
        panic!("omnigent host ended before connecting: {printed:?}");
    })
    .await
    .expect("no connected line");
    assert!(
        printed[0].starts_with(&format!("Connecting to {url} as '")),
        "{printed:?}"
    );
    let HostEvent::Connected { host_id, .. } =
        next_event(&mut events, |e| matches!(e, HostEvent::Connected { .. })).await
    else {
        unreachable!()
    };

    // Another terminal sees this process as the daemon, online with the one target.
    let st = home.json(&["host", "status", "--json"]).await;
    assert_eq!(st["running"], true);
    assert_eq!(st["daemon_pid"], host_pid);
    assert_eq!(st["host_id"], host_id.as_str());
    assert_eq!(st["targets"][0]["url"], url.as_str());
    assert_eq!(st["targets"][0]["tunnel"], "online");
    assert_eq!(st["targets"][0]["local"], false);

    // A launch through the tunnel starts a runner as this process's child, in its workspace.
    let ws = tempfile::tempdir().unwrap();
    let conn = registry.get(&host_id).unwrap();
    let launched = conn
        .launch_runner(
            "tok-fg",
            ws.path().to_str().unwrap(),
            Some("s1"),
            Some("echo"),
        )
        .await
        .unwrap();
    assert_eq!(launched.status, "launched", "{launched:?}");
    let runner_id = launched.runner_id.unwrap();
    let st = home.json(&["host", "status", "--json"]).await;
    let runner = st["runners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == runner_id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("runner missing from {st}"));
    assert_eq!(runner["workspace"], ws.path().to_str().unwrap());
    let runner_pid = runner["pid"].as_u64().map(|p| p as u32);
    if let Some(pid) = runner_pid {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid: u32 = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().nth(1).unwrap().parse().unwrap())
            .unwrap_or(host_pid);
        assert_eq!(ppid, host_pid, "the runner is not the host's child");
    }

    // Ctrl-C: the runner is stopped, the tunnel closed, the process exits 0 and leaves no daemon.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(host_pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = tokio::time::timeout(WAIT, host.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    next_event(&mut events, |e| matches!(e, HostEvent::Disconnected { .. })).await;
    if let Some(pid) = runner_pid {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "runner {pid} survived"
        );
    }
    let st = home.json(&["host", "status", "--json"]).await;
    assert_eq!(st["running"], false);
    // The foreground never keeps its target in config.toml.
    assert!(!home.config_text().contains(&url), "{}", home.config_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_background_reports_online_and_host_stop_removes_the_target_from_the_running_daemon() {
    let home = Home::new();
    let (addr, registry) = fake_server(None).await;
    let mut events = registry.subscribe();
    let url = format!("http://{addr}");
    // No daemon yet: `--background` starts one and hands it the target.
    let out = home.run(&["host", &url, "--background"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("Host online: {url} as '")),
        "{stdout}"
    );
    next_event(&mut events, |e| matches!(e, HostEvent::Connected { .. })).await;
    let st = home.json(&["host", "status", "--json"]).await;
    let target = st["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["url"] == url.as_str())
        .cloned()
        .unwrap();
    assert_eq!(target["tunnel"], "online");

    let out = home.run(&["host", "stop", &url]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(&format!("Stopped hosting {url}")),
        "{}",
        text(&out)
    );
    next_event(&mut events, |e| matches!(e, HostEvent::Disconnected { .. })).await;
    let st = home.json(&["host", "status", "--json"]).await;
    assert!(!lists_target(&st, &url), "{st}");
    let out = home.run(&["host", "stop", &url]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("Not hosting"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_background_refused_with_401_before_any_success_exits_78_and_leaves_nothing() {
    let home = Home::new();
    let (addr, _registry) = fake_server(Some(401)).await;
    let url = format!("http://{addr}");
    let out = home.run(&["host", &url, "--background"]).await;
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("did not come online") && stderr.contains("401"),
        "{stderr}"
    );
    assert!(stderr.contains("daemon.log"), "no log tail: {stderr}");
    // Rolled back: the daemon it started for this is gone, so a retry never meets "already running", and
    // config.toml does not bring the target back at the next start.
    let st = home.json(&["status", "--json"]).await;
    assert_eq!(st["running"], false, "{st}");
    let config = home.config_text();
    assert!(
        !config.contains(&url) && !config.contains("[[targets]]"),
        "{config}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_background_against_an_unreachable_server_fails_loudly_in_time_and_rolls_back() {
    let home = Home::new();
    // A held port nobody listens on: every dial is refused.
    let unreachable = PortReservation::new();
    let url = format!("http://127.0.0.1:{}", unreachable.port);
    let started = std::time::Instant::now();
    let out = tokio::time::timeout(
        WAIT,
        home.cmd(&["host", &url, "--background"])
            .env("OMNIGENT_HOST_ONLINE_TIMEOUT_MS", "1500")
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(15));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("did not come online"), "{stderr}");
    assert!(stderr.contains("reconnecting"), "no cause: {stderr}");
    let st = home.json(&["status", "--json"]).await;
    assert_eq!(st["running"], false, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_hello_with_the_echo_harness_prints_the_echo_and_exits_0() {
    let home = Home::new();
    let ws = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        WAIT,
        home.cmd(&[
            "run",
            "--harness",
            "echo",
            "--workspace",
            ws.path().to_str().unwrap(),
            "hello",
        ])
        .output(),
    )
    .await
    .expect("omnigent run did not finish")
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello"),
        "{}",
        text(&out)
    );
    // The session's runner is supervised by the daemon, shown in status.
    let st = home.json(&["status", "--json"]).await;
    assert!(
        st["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["local"] == true && t["tunnel"] == "online"),
        "{st}"
    );
    assert!(!st["runners"].as_array().unwrap().is_empty(), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_crashing_mid_turn_fails_that_turn_with_its_log_tail_is_relaunched_and_the_next_message_works()
 {
    let home = Home::new();
    let ws = tempfile::tempdir().unwrap();
    // The exec harness runs this per turn: the first turn kills the runner (SIGKILL to its parent, as an
    // OOM would), later turns answer.
    let script = ws.path().join("agent.sh");
    std::fs::write(
        &script,
        "if [ -e crashed ]; then echo \"second turn ok: $1\"; exit 0; fi\n\
         touch crashed\necho 'agent: about to take the runner down' >&2\nkill -9 $PPID\n",
    )
    .unwrap();
    let exec = format!("/bin/sh {}", script.display());
    let ws_arg = ws.path().to_str().unwrap();
    let out = tokio::time::timeout(
        WAIT,
        home.cmd(&[
            "run",
            "--json",
            "--harness",
            "exec",
            "--workspace",
            ws_arg,
            "first",
        ])
        .env("OMNIGENT_EXEC_COMMAND", &exec)
        .output(),
    )
    .await
    .expect("omnigent run did not finish")
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "the crashed turn must fail: {}",
        text(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("signal 9") || stderr.contains("exit"),
        "no exit in the failure: {}",
        text(&out)
    );
    let first: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["type"], "session.created");
    let session = first["session"]["id"].as_str().unwrap().to_owned();
    // The daemon relaunched the runner (same token, same id) and shows the crash in status.
    let st = home.json(&["status", "--json"]).await;
    let runner = st["runners"].as_array().unwrap()[0].clone();
    assert_eq!(runner["last_exits"][0]["signal"], 9, "{st}");
    // The next message on the same session works.
    let mut attach = home
        .cmd(&["attach", &session])
        .env("OMNIGENT_EXEC_COMMAND", &exec)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = attach.stdin.take().unwrap();
        stdin.write_all(b"second\n").await.unwrap();
        // Dropped here: EOF, so attach leaves once that turn is over.
    }
    let out = tokio::time::timeout(WAIT, attach.wait_with_output())
        .await
        .expect("attach did not finish")
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("second turn ok"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_after_the_host_was_online_keeps_it_retrying_with_a_warning_until_the_server_takes_it_back()
 {
    let home = Home::new();
    let fake = fake_server_switchable(None).await;
    let (addr, registry) = (fake.addr, fake.registry().clone());
    let mut events = registry.subscribe();
    let url = format!("http://{addr}");
    let out = home.run(&["host", &url, "--background"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let HostEvent::Connected { host_id, .. } =
        next_event(&mut events, |e| matches!(e, HostEvent::Connected { .. })).await
    else {
        unreachable!()
    };
    // A served request: the tunnel has succeeded once.
    let conn = registry.get(&host_id).unwrap();
    assert_eq!(conn.stat("/").await.unwrap().status, "ok");

    // The proxy in front starts answering 401 (a VPN drop), and the tunnel is cut.
    fake.refuse(401);
    registry.close_all(1012, "service restart");
    let paths = omnigent_proto::paths::Paths::under(home.dir.path());
    let mut client = omnigent_daemon::control::client::ControlClient::connect(&paths)
        .await
        .unwrap();
    let target = tokio::time::timeout(WAIT, async {
        let mut st = client.status().await.unwrap();
        loop {
            if let Some(t) = st
                .targets
                .iter()
                .find(|t| t.url == url && t.warning.is_some())
            {
                return t.clone();
            }
            // The control API's long-poll answers on the next state change.
            st = client.status_after(st.revision, 10_000).await.unwrap();
        }
    })
    .await
    .expect("no warning in status");
    assert_eq!(target.tunnel, "reconnecting", "{target:?}");
    assert!(target.warning.unwrap().contains("omnigent login"));
    assert!(target.last_error.unwrap().contains("401"));
    // Not fatal: when the server accepts the host again, it comes back online by itself.
    fake.refuse(0);
    next_event(&mut events, |e| matches!(e, HostEvent::Connected { .. })).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sessions_created_at_once_each_get_a_runner_on_this_host_and_stop_takes_them_all_down()
 {
    let home = Home::new();
    let started = home.json(&["start", "--json"]).await;
    assert_eq!(started["host"]["tunnel"], "online", "{started}");
    let base = started["server"]["url"].as_str().unwrap().to_owned();
    let st = home.json(&["status", "--json"]).await;
    let host_id = st["config"]["host_id"].as_str().unwrap().to_owned();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let agents: Value = http
        .get(format!("{base}/v1/agents"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let echo = agents["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["harness"] == "echo")
        .unwrap()["id"]
        .clone();
    let ws = tempfile::tempdir().unwrap();
    let creates = (0..50).map(|_| {
        let http = http.clone();
        let body = json!({"agent_id": echo, "host_id": host_id, "workspace": ws.path()});
        let url = format!("{base}/v1/sessions");
        async move {
            let resp = http.post(url).json(&body).send().await.unwrap();
            let status = resp.status();
            let v: Value = resp.json().await.unwrap();
            assert!(status.is_success(), "{status}: {v}");
            v["runner_id"].as_str().unwrap().to_owned()
        }
    });
    let mut runner_ids = futures_util::future::join_all(creates).await;
    runner_ids.sort();
    runner_ids.dedup();
    assert_eq!(runner_ids.len(), 50, "one runner per session");
    let paths = omnigent_proto::paths::Paths::under(home.dir.path());
    let mut client = omnigent_daemon::control::client::ControlClient::connect(&paths)
        .await
        .unwrap();
    let st = tokio::time::timeout(WAIT, async {
        let mut st = client.status().await.unwrap();
        while st
            .runners
            .iter()
            .filter(|r| r.state == omnigent_proto::control::ChildState::Running)
            .count()
            < 50
        {
            st = client.status_after(st.revision, 10_000).await.unwrap();
        }
        st
    })
    .await
    .expect("not all 50 runners ran");
    let pids: Vec<u32> = st.runners.iter().filter_map(|r| r.pid).collect();
    assert_eq!(pids.len(), 50);
    drop(client);
    let out = home.run(&["stop", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let stopped: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        stopped["stopped"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "50 runner(s)"),
        "{stopped}"
    );
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "runner {pid} survived the stop"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_interrupts_the_running_turn_and_a_second_ctrl_c_exits() {
    let home = Home::new();
    let ws = tempfile::tempdir().unwrap();
    let script = ws.path().join("slow.sh");
    std::fs::write(&script, "echo started\nexec sleep 30\n").unwrap();
    let mut run = home
        .cmd(&[
            "run",
            "--json",
            "--harness",
            "exec",
            "--workspace",
            ws.path().to_str().unwrap(),
            "go",
        ])
        .env(
            "OMNIGENT_EXEC_COMMAND",
            format!("/bin/sh {}", script.display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(run.id().unwrap() as i32);
    let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    // The turn is running once the agent's first words arrive.
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let started = line.contains("response.output_text.delta") && line.contains("started");
            seen.push(line);
            if started {
                return;
            }
        }
        panic!("run ended before the turn streamed: {seen:?}");
    })
    .await
    .expect("the turn never started");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    // The interrupt reaches the session: everyone watching it sees `session.interrupted`.
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("\"session.interrupted\"") {
                return;
            }
        }
        panic!("run ended without the interrupt event");
    })
    .await
    .expect("no session.interrupted after Ctrl-C");
    // A second Ctrl-C leaves at once, whatever the turn does, with the exit code of an interrupt (130).
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    let status = tokio::time::timeout(WAIT, run.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_in_the_foreground_refused_before_any_success_exits_78_and_leaves_no_daemon() {
    let home = Home::new();
    let (addr, _registry) = fake_server(Some(403)).await;
    let url = format!("http://{addr}");
    let out = home.run(&["host", &url]).await;
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("gave up") && stderr.contains("403"),
        "{stderr}"
    );
    let st = home.json(&["status", "--json"]).await;
    assert_eq!(st["running"], false, "{st}");
}

/// Sends `message` to `session` with `omnigent attach` and returns its stdout once that turn is over.
async fn attach_say(home: &Home, session: &str, message: &str) -> String {
    let mut attach = home
        .cmd(&["attach", session])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = attach.stdin.take().unwrap();
        stdin
            .write_all(format!("{message}\n").as_bytes())
            .await
            .unwrap();
        // Dropped here: EOF, so attach leaves once that turn is over.
    }
    let out = tokio::time::timeout(WAIT, attach.wait_with_output())
        .await
        .expect("attach did not finish")
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sigkilled_is_restarted_and_host_and_runner_are_back_within_2s_of_health_and_the_session_continues()
 {
    let home = Home::new();
    let started = home.json(&["start", "--json"]).await;
    assert_eq!(started["host"]["tunnel"], "online", "{started}");
    let base = started["server"]["url"].as_str().unwrap().to_owned();
    let ws = tempfile::tempdir().unwrap();
    let out = home
        .run(&[
            "run",
            "--json",
            "--harness",
            "echo",
            "--workspace",
            ws.path().to_str().unwrap(),
            "before-the-crash",
        ])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains("before-the-crash"), "{}", text(&out));
    let first: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    let session = first["session"]["id"].as_str().unwrap().to_owned();

    let st = home.json(&["status", "--json"]).await;
    let old_pid = st["server"]["pid"].as_u64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // SIGKILL is delivered before kill(2) returns, but the old process may still hold its socket for a moment:
    // wait until it is gone (reaped by the daemon) or a zombie, so a healthy answer below is the new server.
    tokio::time::timeout(WAIT, async {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{old_pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            if stat.is_empty() || zombie {
                return;
            }
            tick.tick().await;
        }
    })
    .await
    .expect("the killed server never died");

    // Poll the restarted server's /health with a deadline: the first 200 is "healthy", then both the host
    // and the session's runner must be online again.
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let health_url = format!("{base}/health?session_id={session}");
    let (healthy_at, back_at, last) = tokio::time::timeout(WAIT, async {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut healthy_at = None;
        loop {
            tick.tick().await;
            let Ok(resp) = http.get(&health_url).send().await else {
                continue;
            };
            if !resp.status().is_success() {
                continue;
            }
            let now = std::time::Instant::now();
            let healthy = *healthy_at.get_or_insert(now);
            let Ok(v) = resp.json::<Value>().await else {
                continue;
            };
            if v["session"]["runner_online"] == true && v["session"]["host_online"] == true {
                return (healthy, now, v);
            }
        }
    })
    .await
    .expect("host and runner never came back online after the server restart");
    let took = back_at - healthy_at;
    eprintln!("server healthy → host and runner online: {took:?} ({last})");
    assert!(
        took < Duration::from_secs(2),
        "host and runner took {took:?} after the server was healthy"
    );
    let st = home.json(&["status", "--json"]).await;
    assert_ne!(
        st["server"]["pid"].as_u64().unwrap() as i32,
        old_pid,
        "{st}"
    );
    assert_eq!(st["server"]["port"], home.port, "{st}");
    let runners: Value = http
        .get(format!("{base}/v1/runners"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        !runners["data"].as_array().unwrap().is_empty(),
        "no runner listed: {runners}"
    );

    // The session continues on the restarted server.
    let echoed = attach_say(&home, &session, "after-the-crash").await;
    assert!(echoed.contains("after-the-crash"), "{echoed}");
}

/// Sends SIGCONT to a process on drop, so a failing test never leaves a frozen server behind.
struct Thaw(i32);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGCONT,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_frozen_past_the_liveness_limit_is_detected_and_after_sigcont_the_host_and_session_recover()
 {
    let home = Home::new();
    let out = tokio::time::timeout(
        WAIT,
        home.cmd(&["start", "--json"])
            .env("OMNIGENT_TUNNEL_LIVENESS_MS", "1500")
            .output(),
    )
    .await
    .expect("start did not finish")
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let started: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(started["host"]["tunnel"], "online", "{started}");
    let ws = tempfile::tempdir().unwrap();
    let out = home
        .run(&[
            "run",
            "--json",
            "--harness",
            "echo",
            "--workspace",
            ws.path().to_str().unwrap(),
            "before-the-freeze",
        ])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains("before-the-freeze"), "{}", text(&out));
    let first: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    let session = first["session"]["id"].as_str().unwrap().to_owned();

    let paths = omnigent_proto::paths::Paths::under(home.dir.path());
    let mut client = omnigent_daemon::control::client::ControlClient::connect(&paths)
        .await
        .unwrap();
    let st = client.status().await.unwrap();
    let server_pid = st.server.pid.unwrap() as i32;
    let local_tunnel = |st: &omnigent_proto::control::DaemonStatus| {
        st.targets
            .iter()
            .find(|t| t.local)
            .map(|t| t.tunnel)
            .unwrap_or_default()
    };
    assert_eq!(local_tunnel(&st), "online", "{st:?}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server_pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let thaw = Thaw(server_pid);
    let frozen_at = std::time::Instant::now();
    // The host tunnel hears nothing for the 1.5 s limit: the daemon drops it and reconnects.
    let st = tokio::time::timeout(WAIT, async {
        let mut st = client.status().await.unwrap();
        while local_tunnel(&st) == "online" {
            st = client.status_after(st.revision, 10_000).await.unwrap();
        }
        st
    })
    .await
    .expect("the frozen server was never detected");
    let detected = frozen_at.elapsed();
    eprintln!(
        "frozen server detected after {detected:?}: {}",
        local_tunnel(&st)
    );
    assert!(
        detected >= Duration::from_millis(1000),
        "too early: {detected:?}"
    );

    drop(thaw); // SIGCONT
    let thawed_at = std::time::Instant::now();
    tokio::time::timeout(WAIT, async {
        let mut st = client.status().await.unwrap();
        while local_tunnel(&st) != "online" {
            st = client.status_after(st.revision, 10_000).await.unwrap();
        }
    })
    .await
    .expect("the host never came back online after SIGCONT");
    eprintln!("host online again {:?} after SIGCONT", thawed_at.elapsed());
    // Recovered, not replaced: the same server process serves the host again.
    let st = client.status().await.unwrap();
    assert_eq!(st.server.pid, Some(server_pid as u32), "{st:?}");
    drop(client);

    let echoed = attach_say(&home, &session, "after-the-thaw").await;
    assert!(echoed.contains("after-the-thaw"), "{echoed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_with_a_short_idle_timeout_redials_a_server_that_went_silent() {
    let home = Home::new();
    // A server that accepts the runner tunnel and then says nothing, reporting each upgrade.
    let (dialled_tx, mut dialled) = tokio::sync::mpsc::unbounded_channel::<std::time::Instant>();
    let app = Router::new().route(
        "/v1/runners/{id}/tunnel",
        get(move |ws: WebSocketUpgrade| {
            let dialled_tx = dialled_tx.clone();
            async move {
                ws.on_upgrade(move |mut socket| async move {
                    let _ = dialled_tx.send(std::time::Instant::now());
                    // Read (and drop) whatever the runner sends until it hangs up; never answer.
                    while let Some(Ok(_)) = socket.recv().await {}
                })
            }
        }),
    );
    let addr = omnigent_testkit::serve(app).await.addr;
    let ws = tempfile::tempdir().unwrap();
    let _runner = home
        .cmd(&[
            "runner",
            "--server",
            &format!("http://{addr}"),
            "--token",
            "tok-idle",
            "--workspace",
            ws.path().to_str().unwrap(),
        ])
        .env("OMNIGENT_RUNNER_IDLE_TIMEOUT_MS", "500")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = tokio::time::timeout(WAIT, dialled.recv())
        .await
        .expect("the runner never dialled")
        .unwrap();
    // With the default 90 s limit this second dial would not come within WAIT.
    let second = tokio::time::timeout(WAIT, dialled.recv())
        .await
        .expect("the runner never gave up on the silent server")
        .unwrap();
    let gap = second - first;
    assert!(
        gap >= Duration::from_millis(450),
        "redialled before the idle limit: {gap:?}"
    );
}

/// Spawn the foreground `omnigent host URL`, wait for its connected line, check whether config.toml names
/// the target (`kept`: from an earlier `--background`), Ctrl-C it; returns what it printed.
async fn foreground_until_connected_then_ctrl_c(home: &Home, url: &str, kept: bool) -> Vec<String> {
    let mut host = home
        .cmd(&["host", url])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(host.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.starts_with("✓ Connected as");
            printed.push(line);
            if done {
                return;
            }
        }
        panic!("omnigent host ended before connecting: {printed:?}");
    })
    .await
    .expect("no connected line");
    assert_eq!(
        home.config_text().contains(url),
        kept,
        "config.toml while the foreground runs: {}",
        home.config_text()
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(host.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            printed.push(line);
        }
    })
    .await
    .expect("omnigent host did not finish after Ctrl-C");
    let status = tokio::time::timeout(WAIT, host.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "{printed:?}");
    printed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_background_keeps_the_target_in_config_toml_a_restarted_daemon_restores_it_and_host_stop_removes_it()
 {
    let home = Home::new();
    let (addr, registry) = fake_server(None).await;
    let mut events = registry.subscribe();
    let url = format!("http://{addr}");
    let file = home.config_file();
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(
        &file,
        "# my settings: keep this comment\nlog_level = \"info\"\nenv_passthrough = [\"MY_TOKEN\"]\n",
    )
    .unwrap();
    let out = home.run(&["start"]).await;
    assert!(out.status.success(), "{}", text(&out));
    // As the daemon left it (with its identity), before any target.
    let before = home.config_text();
    assert!(
        before.starts_with("# my settings: keep this comment\n"),
        "{before}"
    );

    // With a trailing slash, then without: one `[[targets]]` table appended, every other byte kept.
    let out = home
        .run(&["host", &format!("{url}/"), "--background"])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("config: kept in {}", file.display())),
        "{stdout}"
    );
    let kept = format!("{before}\n[[targets]]\nurl = \"{url}\"\n");
    assert_eq!(home.config_text(), kept);
    next_event(&mut events, |e| matches!(e, HostEvent::Connected { .. })).await;
    let out = home.run(&["host", &url, "--background"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(home.config_text(), kept);
    let entries = home.wait_online(&url).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["persistent"], true);

    // `omnigent stop` + `omnigent start`: back online without `host URL`.
    let out = home.run(&["stop"]).await;
    assert!(out.status.success(), "{}", text(&out));
    next_event(&mut events, |e| matches!(e, HostEvent::Disconnected { .. })).await;
    let out = home.run(&["start"]).await;
    assert!(out.status.success(), "{}", text(&out));
    next_event(&mut events, |e| matches!(e, HostEvent::Connected { .. })).await;
    let entries = home.wait_online(&url).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["persistent"], true);
    assert_eq!(entries[0]["local"], false);
    assert_eq!(home.config_text(), kept);

    // A foreground `host URL` on it, then Ctrl-C: it stays hosted and kept.
    let printed = foreground_until_connected_then_ctrl_c(&home, &url, true).await;
    assert!(
        printed
            .iter()
            .any(|l| l.starts_with(&format!("{url} stays hosted"))),
        "{printed:?}"
    );
    assert_eq!(home.config_text(), kept);
    let entries = home.wait_online(&url).await;
    assert_eq!(entries.len(), 1, "{entries:?}");

    // `host stop URL`: stopped, and its table gone from config.toml, the comment and other keys kept.
    let out = home.run(&["host", "stop", &url]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(&format!(
            "Stopped hosting {url} and removed it from {}",
            file.display()
        )),
        "{}",
        text(&out)
    );
    assert_eq!(home.config_text(), before);
    next_event(&mut events, |e| matches!(e, HostEvent::Disconnected { .. })).await;
    let st = home.json(&["host", "status", "--json"]).await;
    assert!(!lists_target(&st, &url), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreground_host_through_a_running_daemon_then_ctrl_c_leaves_config_toml_without_the_target()
 {
    let home = Home::new();
    let (addr, registry) = fake_server(None).await;
    let mut events = registry.subscribe();
    let url = format!("http://{addr}");
    let out = home.run(&["start"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let before = home.config_text();
    let printed = foreground_until_connected_then_ctrl_c(&home, &url, false).await;
    assert!(
        printed
            .iter()
            .any(|l| l.starts_with(&format!("Disconnected from {url}"))),
        "{printed:?}"
    );
    next_event(&mut events, |e| matches!(e, HostEvent::Disconnected { .. })).await;
    assert_eq!(home.config_text(), before);
    let st = home.json(&["host", "status", "--json"]).await;
    assert_eq!(st["running"], true, "{st}");
    assert!(!lists_target(&st, &url), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_background_with_a_config_toml_it_cannot_edit_fails_naming_the_file_and_starts_nothing()
 {
    let home = Home::new();
    let (addr, registry) = fake_server(None).await;
    let mut events = registry.subscribe();
    let url = format!("http://{addr}");
    let file = home.config_file();
    let out = home.run(&["start"]).await;
    assert!(out.status.success(), "{}", text(&out));

    // Malformed: exit 78 with the file, line and column; the file as it was.
    let broken = format!("{}[[targets]\n", home.config_text());
    std::fs::write(&file, &broken).unwrap();
    let out = home.run(&["host", &url, "--background"]).await;
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot keep {url} in config.toml"))
            && stderr.contains(&format!("{} line", file.display())),
        "{stderr}"
    );
    assert_eq!(home.config_text(), broken);

    // Not a file (tests run as root, which permission bits would not stop): exit 78 naming it and why.
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    let out = home.run(&["host", &url, "--background"]).await;
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&file.display().to_string()) && stderr.contains("Is a directory"),
        "{stderr}"
    );
    assert!(file.is_dir());

    // Nothing half-started: the daemon (which it did not start) runs on, without the target, and the
    // server never saw this host.
    let st = home.json(&["host", "status", "--json"]).await;
    assert_eq!(st["running"], true, "{st}");
    assert!(!lists_target(&st, &url), "{st}");
    assert!(
        matches!(
            events.try_recv(),
            Err(tokio::sync::broadcast::error::TryRecvError::Empty)
        ),
        "the host connected"
    );
}
