#![allow(clippy::unwrap_used)]
//! Runner supervision through a real host tunnel: the daemon runs in-process (`omnigent_daemon::run`) with a
//! remote target served by an axum server built from `omnigent_tunnel::host`, which plays the coordination
//! server: it sends `host.launch_runner` / `host.stop_runner` / `host.runner_status` and records
//! `host.runner_exited`. The runner "binary" is a shell script that runs `./behave.sh` from the workspace
//! (the runner's cwd), so each test scripts its runner: crash, stay up, print its environment.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use omnigent_daemon::control::client::ControlClient;
use omnigent_daemon::supervise::backoff::RestartPolicy;
use omnigent_daemon::{ControlListener, DaemonConfig};
use omnigent_proto::control::{ChildState, DaemonStatus};
use omnigent_proto::ids::runner_id_for_token;
use omnigent_proto::paths::Paths;
use omnigent_testkit::FakeHost;
use omnigent_tunnel::host::{HostConnection, HostEvent, HostRegistry};
use tokio::sync::broadcast;

/// A bound on waits that should finish at once; a test failing on it means the awaited signal never came.
const WAIT: Duration = Duration::from_secs(20);

/// A server end of the host tunnel on a free port (the testkit's).
async fn fake_server() -> (SocketAddr, HostRegistry) {
    let fake = FakeHost::start().await;
    (fake.addr, fake.registry().clone())
}

struct Host {
    _home: tempfile::TempDir,
    paths: Paths,
    conn: HostConnection,
    events: broadcast::Receiver<HostEvent>,
    client: ControlClient,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    daemon: tokio::task::JoinHandle<Result<(), omnigent_daemon::DaemonError>>,
}

/// A daemon (no local server) with the fake server as its one target, online.
async fn host() -> Host {
    let (addr, registry) = fake_server().await;
    let mut events = registry.subscribe();
    let home = tempfile::tempdir().unwrap();
    let paths = Paths::under(home.path());
    std::fs::create_dir_all(&paths.config_dir).unwrap();
    std::fs::write(
        paths.config_file(),
        format!("[server]\nautostart = false\n[[targets]]\nurl = \"http://{addr}\"\n"),
    )
    .unwrap();
    let exe = home.path().join("fake-omnigent");
    std::fs::write(&exe, "#!/bin/sh\nexec /bin/sh ./behave.sh \"$@\"\n").unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = omnigent_daemon::load_config(&paths).unwrap();
    let host_id = config.host_id().to_owned();
    let timings = omnigent_daemon::hosting::host_tunnel::HostTunnelTimings {
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(50),
        ..Default::default()
    };
    let daemon_config = DaemonConfig {
        exe,
        paths: paths.clone(),
        config,
        started_by: "test".into(),
        // DESIGN §6's rules with tiny delays, so a crash loop is reached in milliseconds.
        policy: RestartPolicy {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(5),
            ..Default::default()
        },
        on_log_level: None,
        tunnel_timings: timings,
    };
    let listener = ControlListener::bind(&paths).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(omnigent_daemon::run(daemon_config, listener, async move {
        let _ = stop_rx.await;
    }));
    let conn = tokio::time::timeout(WAIT, async {
        loop {
            if let HostEvent::Connected { .. } = events.recv().await.unwrap() {
                return registry.get(&host_id).unwrap();
            }
        }
    })
    .await
    .expect("the host never came online");
    let client = ControlClient::connect(&paths).await.unwrap();
    Host {
        _home: home,
        paths,
        conn,
        events,
        client,
        stop: Some(stop_tx),
        daemon,
    }
}

impl Host {
    /// A workspace whose runner runs `script`.
    fn workspace(&self, name: &str, script: &str) -> PathBuf {
        let ws = self.paths.config_dir.parent().unwrap().join(name);
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::write(ws.join("behave.sh"), script).unwrap();
        ws
    }

    async fn launch(
        &self,
        token: &str,
        ws: &Path,
    ) -> omnigent_proto::host_frames::LaunchRunnerResult {
        self.conn
            .launch_runner(token, ws.to_str().unwrap(), Some("sess-1"), Some("echo"))
            .await
            .unwrap()
    }

    /// The next `host.runner_exited` for `runner_id`.
    async fn next_exit(&mut self, runner_id: &str) -> Option<String> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let HostEvent::RunnerExited {
                    runner_id: id,
                    error,
                    ..
                } = self.events.recv().await.unwrap()
                    && id == runner_id
                {
                    return error;
                }
            }
        })
        .await
        .expect("no runner_exited report")
    }

    /// Status once `pred` holds (waiting on the status revision, never on a timer).
    async fn status_until(&mut self, pred: impl Fn(&DaemonStatus) -> bool) -> DaemonStatus {
        tokio::time::timeout(WAIT, async {
            let mut st = self.client.status().await.unwrap();
            while !pred(&st) {
                st = self.client.status_after(st.revision, 5_000).await.unwrap();
            }
            st
        })
        .await
        .expect("status never reached the expected state")
    }

    async fn shutdown(mut self) -> Vec<String> {
        let reply = self.client.shutdown(false).await.unwrap();
        let _ = self.stop.take();
        self.daemon.await.unwrap().unwrap();
        reply.stopped
    }
}

#[tokio::test]
async fn a_runner_gets_its_workspace_as_cwd_an_allowlisted_env_and_its_exit_is_reported_with_the_log_tail()
 {
    let mut host = host().await;
    let ws = host.workspace(
        "ws-env",
        "echo \"args=$*\"\necho \"pwd=$(pwd)\"\necho \"token=$OMNIGENT_RUNNER_TOKEN\"\n\
         echo \"manifest=${CARGO_MANIFEST_DIR:-unset}\"\necho \"path=${PATH:+set}\"\necho 'boom' >&2\nexit 78\n",
    );
    let result = host.launch("tok-env", &ws).await;
    assert_eq!(result.status, "launched", "{result:?}");
    let id = runner_id_for_token("tok-env");
    assert_eq!(result.runner_id.as_deref(), Some(id.as_str()));
    let error = host.next_exit(&id).await.unwrap();
    assert!(
        error.starts_with("runner process exited with code 78 (log on host: "),
        "{error}"
    );
    assert!(error.contains("--- runner log tail ---"), "{error}");
    assert!(error.contains(&format!("pwd={}", ws.display())), "{error}");
    assert!(error.contains("token=tok-env"), "{error}");
    // cargo sets CARGO_MANIFEST_DIR for this test process: the allowlist keeps it from the runner.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    assert!(error.contains("manifest=unset"), "{error}");
    assert!(error.contains("path=set"), "{error}");
    assert!(error.contains("boom"), "{error}");
    assert!(
        error.contains("args=runner --server http://") && error.contains("--harness echo"),
        "{error}"
    );
    // 78 is a refusal no relaunch fixes: it stays down, shown in status with its exit.
    let st = host
        .status_until(|s| {
            s.runners
                .iter()
                .any(|r| r.id == id && r.state == ChildState::Stopped)
        })
        .await;
    let r = st.runners.iter().find(|r| r.id == id).unwrap();
    assert_eq!(r.last_exits.len(), 1);
    assert_eq!(r.last_exits[0].code, Some(78));
    assert_eq!(r.restarts, 0);
    let status = host.conn.runner_status(&id).await.unwrap();
    assert_eq!(status.status, "dead");
    host.shutdown().await;
}

#[tokio::test]
async fn a_crashed_runner_is_relaunched_with_the_same_token_and_a_crash_looping_one_is_stopped() {
    let mut host = host().await;
    // Crashes once, then stays up.
    let ws = host.workspace(
        "ws-once",
        "if [ -e crashed ]; then exec sleep 1000; fi\ntouch crashed\necho 'dying mid-turn' >&2\nexit 3\n",
    );
    let once = runner_id_for_token("tok-once");
    assert_eq!(host.launch("tok-once", &ws).await.status, "launched");
    let error = host.next_exit(&once).await.unwrap();
    assert!(
        error.contains("exited with code 3") && error.contains("dying mid-turn"),
        "{error}"
    );
    let st = host
        .status_until(|s| {
            s.runners
                .iter()
                .any(|r| r.id == once && r.state == ChildState::Running && r.restarts == 1)
        })
        .await;
    assert!(
        st.runners
            .iter()
            .find(|r| r.id == once)
            .unwrap()
            .pid
            .is_some()
    );
    assert_eq!(
        host.conn.runner_status(&once).await.unwrap().status,
        "alive"
    );

    // Always crashes: five short runs within 120 s are a crash loop, reported five times, then left down.
    let ws = host.workspace("ws-loop", "exit 9\n");
    let looping = runner_id_for_token("tok-loop");
    assert_eq!(host.launch("tok-loop", &ws).await.status, "launched");
    for _ in 0..5 {
        let error = host.next_exit(&looping).await.unwrap();
        assert!(error.contains("exited with code 9"), "{error}");
    }
    let st = host
        .status_until(|s| {
            s.runners
                .iter()
                .any(|r| r.id == looping && r.state == ChildState::Crashloop)
        })
        .await;
    let r = st.runners.iter().find(|r| r.id == looping).unwrap();
    assert_eq!(r.last_exits.len(), 5);
    assert!(r.last_exits.iter().all(|e| e.code == Some(9)));
    assert_eq!(
        host.conn.runner_status(&looping).await.unwrap().status,
        "dead"
    );
    // A new launch from the server starts it afresh.
    assert_eq!(host.launch("tok-loop", &ws).await.status, "launched");
    host.next_exit(&looping).await;

    // Stopping on purpose is silent and the runner is gone from status.
    let stopped = host.conn.stop_runner(&once).await.unwrap();
    assert_eq!(stopped.status, "stopped", "{stopped:?}");
    assert_eq!(
        host.conn.runner_status(&once).await.unwrap().status,
        "unknown"
    );
    let unknown = host.conn.stop_runner(&once).await.unwrap();
    assert_eq!(unknown.status, "failed");
    assert!(unknown.error.unwrap().contains("unknown runner"));
    host.shutdown().await;
}

#[tokio::test]
async fn a_missing_workspace_and_an_unknown_harness_fail_the_launch_with_their_codes() {
    let host = host().await;
    let missing = host
        .conn
        .launch_runner("tok-x", "/nonexistent/ws", None, Some("echo"))
        .await
        .unwrap();
    assert_eq!(missing.status, "failed");
    assert_eq!(missing.error_code.as_deref(), Some("workspace_missing"));
    assert!(missing.error.unwrap().contains("/nonexistent/ws"));
    let ws = host.workspace("ws-h", "exec sleep 1000\n");
    let harness = host
        .conn
        .launch_runner("tok-y", ws.to_str().unwrap(), None, Some("nonesuch"))
        .await
        .unwrap();
    assert_eq!(harness.status, "failed");
    assert_eq!(
        harness.error_code.as_deref(),
        Some("harness_not_configured")
    );
    // A harness lacking credentials is still launched (the runner reports that as a turn error).
    let hello = host.conn.hello().clone();
    let harnesses = hello.configured_harnesses.unwrap();
    assert_eq!(harnesses["echo"], true);
    let r = host
        .conn
        .launch_runner("tok-z", ws.to_str().unwrap(), None, Some("anthropic"))
        .await
        .unwrap();
    assert_eq!(r.status, "launched", "{r:?}");
    host.shutdown().await;
}

/// A Python omnigent server launches with its own harness names (`claude-sdk` for the built-in agents,
/// `openai-agents` for an OpenAI-compatible one): both reach a runner, which is handed the name as asked (it
/// resolves it through the same proto table), and the hello reports both names.
#[tokio::test]
async fn python_omnigent_harness_names_launch_a_runner() {
    let mut host = host().await;
    let ws = host.workspace("ws-py", "echo \"args=$*\"\nexit 78\n");
    for (token, name) in [
        ("tok-claude", "claude-sdk"),
        ("tok-agents", "openai-agents"),
    ] {
        let r = host
            .conn
            .launch_runner(token, ws.to_str().unwrap(), Some("sess-py"), Some(name))
            .await
            .unwrap();
        assert_eq!(r.status, "launched", "{name}: {r:?}");
        let error = host.next_exit(&runner_id_for_token(token)).await.unwrap();
        assert!(error.contains(&format!("--harness {name}")), "{error}");
    }
    let harnesses = host.conn.hello().configured_harnesses.clone().unwrap();
    for name in ["claude-sdk", "openai-agents", "anthropic", "openai"] {
        assert!(
            harnesses.contains_key(name),
            "{name} missing: {harnesses:?}"
        );
    }
    host.shutdown().await;
}

#[tokio::test]
async fn fifty_launches_at_once_all_run_and_a_shutdown_stops_them_all() {
    let mut host = host().await;
    let ws = host.workspace("ws-many", "exec sleep 1000\n");
    let launches = (0..50).map(|i| {
        let conn = host.conn.clone();
        let ws = ws.clone();
        async move {
            conn.launch_runner(
                &format!("tok-{i}"),
                ws.to_str().unwrap(),
                None,
                Some("echo"),
            )
            .await
            .unwrap()
        }
    });
    let results = futures_util::future::join_all(launches).await;
    assert!(
        results.iter().all(|r| r.status == "launched"),
        "{results:?}"
    );
    let st = host
        .status_until(|s| {
            s.runners.len() == 50 && s.runners.iter().all(|r| r.state == ChildState::Running)
        })
        .await;
    let pids: Vec<u32> = st.runners.iter().filter_map(|r| r.pid).collect();
    assert_eq!(pids.len(), 50);
    assert_eq!(st.targets.len(), 1);
    assert_eq!(st.targets[0].tunnel, "online");
    assert_eq!(st.targets[0].runners, 50);
    let stopped = host.shutdown().await;
    assert!(stopped.contains(&"50 runner(s)".to_owned()), "{stopped:?}");
    for pid in pids {
        // Each was reaped by its watcher: no such process, not even a zombie.
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "runner {pid} left behind"
        );
    }
}

#[tokio::test]
async fn a_grandchild_left_behind_by_a_tool_is_reaped_by_the_daemon() {
    let mut reaped = omnigent_daemon::supervise::reaper::subscribe();
    let host = host().await;
    // The "tool" (a subshell) starts a grandchild and exits at once: the grandchild is orphaned while the
    // runner lives on, re-parented to the daemon (a subreaper), and must not stay a zombie when it ends.
    let ws = host.workspace(
        "ws-orphan",
        "(sleep 0.2 & echo \"grandchild=$!\")\nexec sleep 1000\n",
    );
    assert_eq!(host.launch("tok-orphan", &ws).await.status, "launched");
    let id = runner_id_for_token("tok-orphan");
    let log = host
        .paths
        .logs_dir()
        .join("runners")
        .join(format!("{id}.log"));
    let pid = tokio::time::timeout(WAIT, async {
        loop {
            let pid = reaped.recv().await.unwrap();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains(&format!("grandchild={pid}")) {
                return pid;
            }
        }
    })
    .await
    .expect("the orphaned grandchild was never reaped");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "{pid} is still a zombie"
    );
    host.shutdown().await;
}

#[tokio::test]
async fn env_passthrough_edited_in_config_toml_reaches_the_next_runner() {
    let mut host = host().await;
    let config = std::fs::read_to_string(host.paths.config_file()).unwrap();
    std::fs::write(
        host.paths.config_file(),
        format!("env_passthrough = [\"CARGO_MANIFEST_DIR\"]\n{config}"),
    )
    .unwrap();
    host.status_until(|s| s.config.loads >= 2).await;
    let ws = host.workspace(
        "ws-pass",
        "echo \"manifest=${CARGO_MANIFEST_DIR:-unset}\"\nexit 78\n",
    );
    assert_eq!(host.launch("tok-pass", &ws).await.status, "launched");
    let error = host
        .next_exit(&runner_id_for_token("tok-pass"))
        .await
        .unwrap();
    let expected = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    assert!(error.contains(&format!("manifest={expected}")), "{error}");
    host.shutdown().await;
}
