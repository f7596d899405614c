//! The daemon run in-process (`run(config, listener, shutdown)`) against a temp OMNIGENT_HOME, driven through
//! the real client over the real control socket. The server child is an executable that cannot start, so
//! these tests exercise the failure paths; the black-box tests in ctl/tests/ run the real server.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use omnigent_daemon::control::client::{ClientError, ControlClient};
use omnigent_daemon::runtime::{self, LockError};
use omnigent_daemon::supervise::backoff::RestartPolicy;
use omnigent_daemon::{ControlListener, DaemonConfig, DaemonError};
use omnigent_proto::control::{ChildState, ControlErrorCode};
use omnigent_proto::paths::Paths;

fn config(paths: &Paths, exe: &str) -> DaemonConfig {
    DaemonConfig {
        exe: exe.into(),
        paths: paths.clone(),
        config: omnigent_daemon::load_config(paths).unwrap(),
        started_by: "test".into(),
        // The rules of DESIGN §6 with tiny delays, so a crash loop is reached in milliseconds.
        policy: RestartPolicy {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(5),
            ..Default::default()
        },
        on_log_level: None,
        tunnel_timings: Default::default(),
    }
}

#[tokio::test]
async fn one_daemon_per_home_and_a_failing_server_ends_in_a_crashloop_shown_in_status() {
    let home = tempfile::tempdir().unwrap();
    let paths = Paths::under(home.path());
    // No autostart: the crash loop below comes from exactly one `server start`.
    std::fs::create_dir_all(&paths.config_dir).unwrap();
    std::fs::write(paths.config_file(), "[server]\nautostart = false\n").unwrap();
    let listener = ControlListener::bind(&paths).unwrap();
    // The lock is taken before the socket is bound: a second daemon is refused, naming the holder.
    match ControlListener::bind(&paths) {
        Err(DaemonError::Lock(LockError::Held { pid, .. })) => {
            assert_eq!(pid, Some(std::process::id()))
        }
        other => panic!("expected the lock to be held, got {:?}", other.err()),
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(omnigent_daemon::run(
        config(&paths, "/nonexistent/omnigent"),
        listener,
        async move {
            let _ = stop_rx.await;
        },
    ));

    let mut client = ControlClient::connect(&paths).await.unwrap();
    assert_eq!(client.daemon.pid, std::process::id());
    assert_eq!(
        client.daemon.protocol_version,
        omnigent_proto::CONTROL_PROTOCOL_VERSION
    );

    // `server start` waits for a definite outcome: here five fast failures, a crash loop.
    let err = client.server_start().await.unwrap_err();
    let ClientError::Daemon { status, error } = err else {
        panic!("unexpected error")
    };
    assert_eq!(status, 500);
    assert_eq!(error.code, ControlErrorCode::ServerFailed);
    assert!(
        error
            .message
            .contains("cannot run /nonexistent/omnigent server run"),
        "{}",
        error.message
    );

    let st = client.status().await.unwrap();
    assert_eq!(st.server.state, ChildState::Crashloop);
    assert_eq!(st.server.last_exits.len(), 5);
    assert_eq!(st.daemon.started_by, "test");
    assert!(st.server.url.is_none());

    // The outer shutdown signal stops it; the socket is removed and the lock released.
    stop_tx.send(()).unwrap();
    daemon.await.unwrap().unwrap();
    assert!(!paths.daemon_socket().exists());
    assert!(!runtime::lock_is_held(&paths));
    assert!(matches!(
        ControlClient::connect(&paths).await,
        Err(ClientError::NotRunning { .. })
    ));
}

#[tokio::test]
async fn a_shutdown_call_is_answered_before_the_daemon_exits() {
    let home = tempfile::tempdir().unwrap();
    let paths = Paths::under(home.path());
    std::fs::create_dir_all(paths.config_dir.clone()).unwrap();
    std::fs::write(paths.config_file(), "[server]\nautostart = false\n").unwrap();
    let listener = ControlListener::bind(&paths).unwrap();
    let daemon = tokio::spawn(omnigent_daemon::run(
        config(&paths, "/nonexistent/omnigent"),
        listener,
        std::future::pending(),
    ));
    let mut client = ControlClient::connect(&paths).await.unwrap();
    assert_eq!(
        client.server_status().await.unwrap().state,
        ChildState::Stopped
    );
    let reply = client.shutdown(false).await.unwrap();
    assert_eq!(reply.daemon_pid, std::process::id());
    assert!(
        reply.stopped.is_empty(),
        "no server was running: {:?}",
        reply.stopped
    );
    drop(client);
    daemon.await.unwrap().unwrap();
    assert!(!runtime::lock_is_held(&paths));
}

#[tokio::test]
async fn a_client_refuses_a_runtime_dir_others_can_enter() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().unwrap();
    let paths = Paths::under(home.path());
    std::fs::create_dir_all(&paths.runtime_dir).unwrap();
    std::fs::set_permissions(&paths.runtime_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert!(matches!(
        ControlClient::connect(&paths).await,
        Err(ClientError::RuntimeDir(_))
    ));
    assert!(matches!(
        ControlListener::bind(&paths),
        Err(DaemonError::RuntimeDir(_))
    ));
}
