#![allow(clippy::unwrap_used)]
//! Targets kept in config.toml (DESIGN §2: "targets are stored in the config file so a service-managed
//! daemon restores them at boot"): the daemon runs in-process (`omnigent_daemon::run`, no local server)
//! against a temp OMNIGENT_HOME and a fake server built from `omnigent_tunnel::host`, driven through the real
//! client. The file is checked byte for byte; waits are on the status long-poll and registry events.

use std::path::Path;
use std::time::Duration;

use omnigent_daemon::control::client::{ClientError, ControlClient};
use omnigent_daemon::supervise::backoff::RestartPolicy;
use omnigent_daemon::{ControlListener, DaemonConfig, DaemonError};
use omnigent_proto::control::{ControlErrorCode, DaemonStatus, TargetStatus};
use omnigent_proto::paths::Paths;
use omnigent_testkit::FakeHost;
use omnigent_tunnel::host::HostEvent;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

/// A bound on waits that should finish at once; a test failing on it means the awaited signal never came.
const WAIT: Duration = Duration::from_secs(20);

/// A server end of the host tunnel on a free port (the testkit's); counts tunnel upgrades.
async fn fake_server() -> (String, FakeHost) {
    let fake = FakeHost::start().await;
    (fake.url.clone(), fake)
}

struct Daemon {
    client: ControlClient,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), DaemonError>>,
}

impl Daemon {
    /// A daemon for `paths` as `omnigent daemon run` starts one: config.toml loaded (identity generated).
    async fn start(paths: &Paths) -> Daemon {
        let config = DaemonConfig {
            exe: "/nonexistent/omnigent".into(),
            paths: paths.clone(),
            config: omnigent_daemon::load_config(paths).unwrap(),
            started_by: "test".into(),
            policy: RestartPolicy::default(),
            on_log_level: None,
            tunnel_timings: omnigent_daemon::hosting::host_tunnel::HostTunnelTimings {
                backoff_base: Duration::from_millis(10),
                backoff_cap: Duration::from_millis(50),
                ..Default::default()
            },
        };
        let listener = ControlListener::bind(paths).unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(omnigent_daemon::run(config, listener, async move {
            let _ = stop_rx.await;
        }));
        let client = ControlClient::connect(paths).await.unwrap();
        Daemon {
            client,
            stop: Some(stop_tx),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }

    /// Follow status until `pred` holds.
    async fn wait_status(
        &mut self,
        what: &str,
        pred: impl Fn(&DaemonStatus) -> bool,
    ) -> DaemonStatus {
        let client = &mut self.client;
        tokio::time::timeout(WAIT, async {
            let mut st = client.status().await.unwrap();
            while !pred(&st) {
                st = client.status_after(st.revision, 5_000).await.unwrap();
            }
            st
        })
        .await
        .unwrap_or_else(|_| panic!("never reached: {what}"))
    }

    async fn wait_online(&mut self, url: &str) -> TargetStatus {
        let st = self
            .wait_status(&format!("{url} online"), |st| {
                targets_for(st, url).iter().any(|t| t.tunnel == "online")
            })
            .await;
        targets_for(&st, url).remove(0)
    }
}

fn targets_for(st: &DaemonStatus, url: &str) -> Vec<TargetStatus> {
    st.targets
        .iter()
        .filter(|t| t.url == url)
        .cloned()
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

async fn next_connected(events: &mut broadcast::Receiver<HostEvent>) {
    tokio::time::timeout(WAIT, async {
        while !matches!(events.recv().await.unwrap(), HostEvent::Connected { .. }) {}
    })
    .await
    .expect("the host never connected");
}

/// A home whose config.toml has a comment and other keys, as a person would write it; no local server.
fn home() -> (tempfile::TempDir, Paths) {
    let home = tempfile::tempdir().unwrap();
    let paths = Paths::under(home.path());
    std::fs::create_dir_all(&paths.config_dir).unwrap();
    std::fs::write(
        paths.config_file(),
        "# my settings, keep this\nlog_level = \"info\"\n[server]\nautostart = false  # no local server\n",
    )
    .unwrap();
    (home, paths)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persisted_target_is_written_once_restored_by_a_fresh_daemon_and_removed_from_config_toml()
 {
    let (_home, paths) = home();
    let file = paths.config_file();
    let (url, fake) = fake_server().await;
    let mut events = fake.subscribe();
    let mut daemon = Daemon::start(&paths).await;
    let before = read(&file);
    assert!(before.starts_with("# my settings, keep this\n"), "{before}");
    assert!(
        before.ends_with('\n') && !before.ends_with("\n\n"),
        "{before:?}"
    );

    // Kept in config.toml (with a trailing slash: stored without), started, and shown once as persistent.
    let t = daemon
        .client
        .add_target(&format!("{url}/"), true)
        .await
        .unwrap();
    assert_eq!(t.url, url);
    assert!(t.persistent, "{t:?}");
    let kept = format!("{before}\n[[targets]]\nurl = \"{url}\"\n");
    assert_eq!(read(&file), kept);
    next_connected(&mut events).await;
    let t = daemon.wait_online(&url).await;
    assert!(t.persistent && !t.local, "{t:?}");

    // Again, without the slash, and as the foreground adds it: the file keeps one entry.
    assert!(
        daemon
            .client
            .add_target(&url, true)
            .await
            .unwrap()
            .persistent
    );
    assert!(
        daemon
            .client
            .add_target(&url, false)
            .await
            .unwrap()
            .persistent
    );
    assert_eq!(read(&file), kept);
    // A foreground's Ctrl-C (no `from_config`) leaves a kept target hosted and in the file.
    let reply = daemon.client.remove_target(&url, false).await.unwrap();
    assert!(!reply.removed && !reply.removed_from_config, "{reply:?}");
    assert_eq!(read(&file), kept);

    // An edit by hand is applied (and our own write's reload has been, before it): still one target, one
    // tunnel.
    let loads = daemon.client.status().await.unwrap().config.loads;
    std::fs::write(
        &file,
        kept.replace("log_level = \"info\"", "log_level = \"debug\""),
    )
    .unwrap();
    let st = daemon
        .wait_status("the hand edit applied", |st| st.config.loads > loads)
        .await;
    assert_eq!(targets_for(&st, &url).len(), 1, "{:?}", st.targets);
    assert_eq!(st.targets.len(), 1, "{:?}", st.targets);
    daemon.wait_online(&url).await;
    assert_eq!(fake.upgrades(), 1, "the target was restarted");
    let kept = read(&file);

    // A fresh daemon restores it from the file alone.
    daemon.stop().await;
    let mut daemon = Daemon::start(&paths).await;
    next_connected(&mut events).await;
    let t = daemon.wait_online(&url).await;
    assert!(t.persistent, "{t:?}");
    let st = daemon.client.status().await.unwrap();
    assert_eq!(targets_for(&st, &url).len(), 1, "{:?}", st.targets);
    assert_eq!(read(&file), kept, "a start must not rewrite the file");

    // Removed from config.toml, the rest of the file byte for byte, and stopped.
    let reply = daemon
        .client
        .remove_target(&format!("{url}/"), true)
        .await
        .unwrap();
    assert!(reply.removed && reply.removed_from_config, "{reply:?}");
    assert_eq!(
        read(&file),
        before.replace("log_level = \"info\"", "log_level = \"debug\"")
    );
    let st = daemon
        .wait_status("target gone", |st| st.targets.is_empty())
        .await;
    assert!(targets_for(&st, &url).is_empty());
    let reply = daemon.client.remove_target(&url, true).await.unwrap();
    assert!(!reply.removed && !reply.removed_from_config, "{reply:?}");
    daemon.stop().await;

    // And it stays gone at the next start.
    let mut daemon = Daemon::start(&paths).await;
    let st = daemon.client.status().await.unwrap();
    assert!(st.targets.is_empty(), "{:?}", st.targets);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_added_without_persist_never_touches_config_toml() {
    let (_home, paths) = home();
    let file = paths.config_file();
    let (url, _fake) = fake_server().await;
    let mut daemon = Daemon::start(&paths).await;
    let before = read(&file);
    let t = daemon.client.add_target(&url, false).await.unwrap();
    assert!(!t.persistent, "{t:?}");
    daemon.wait_online(&url).await;
    assert_eq!(read(&file), before);
    // `from_config` on a target that is not in the file: stopped, the file untouched.
    let reply = daemon.client.remove_target(&url, true).await.unwrap();
    assert!(reply.removed && !reply.removed_from_config, "{reply:?}");
    assert_eq!(read(&file), before);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_toml_that_cannot_be_edited_fails_the_add_naming_the_file_and_starts_nothing() {
    let (_home, paths) = home();
    let file = paths.config_file();
    let (url, fake) = fake_server().await;
    let mut daemon = Daemon::start(&paths).await;

    // Malformed: the parse error with its line, and the file as it was.
    let broken = format!("{}[[targets]\n", read(&file));
    std::fs::write(&file, &broken).unwrap();
    daemon
        .wait_status("the broken edit reported", |st| st.config.error.is_some())
        .await;
    let err = daemon.client.add_target(&url, true).await.unwrap_err();
    let ClientError::Daemon { status, error } = err else {
        panic!("unexpected error: {err}")
    };
    assert_eq!(status, 500);
    assert_eq!(error.code, ControlErrorCode::ConfigFailed);
    assert!(
        error.message.contains(&file.display().to_string()) && error.message.contains("line"),
        "{}",
        error.message
    );
    assert_eq!(read(&file), broken);

    // Not a file at all (as root, permission bits would not stop the write; a directory does).
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    let err = daemon.client.add_target(&url, true).await.unwrap_err();
    let ClientError::Daemon { error, .. } = err else {
        panic!("unexpected error: {err}")
    };
    assert_eq!(error.code, ControlErrorCode::ConfigFailed);
    assert!(
        error.message.contains(&file.display().to_string())
            && error.message.to_lowercase().contains("directory"),
        "{}",
        error.message
    );
    assert!(file.is_dir());

    // Nothing was started: no target, and the server never saw a tunnel.
    let st = daemon.client.status().await.unwrap();
    assert!(st.targets.is_empty(), "{:?}", st.targets);
    assert_eq!(fake.upgrades(), 0);
    // A target that is not persisted still works.
    assert!(
        !daemon
            .client
            .add_target(&url, false)
            .await
            .unwrap()
            .persistent
    );
    daemon.wait_online(&url).await;
    let reply = daemon.client.remove_target(&url, true).await.unwrap();
    assert!(reply.removed, "{reply:?}");
    daemon.stop().await;
}
