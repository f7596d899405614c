//! Host-launched runners: launching a session's runner on a host (stat the workspace, `host.launch_runner`),
//! relaunching it when a message finds it offline, and the errors of each step (`LaunchError`,
//! `WorkspaceError`), which `http/hosts` maps to `ApiError`.

use std::time::Duration;

use omnigent_proto::host_frames::{LaunchErrorCode, LaunchRunnerResult};
use omnigent_proto::ids::{new_binding_token, runner_id_for_token};
use omnigent_tunnel::RunnerRegistry;
use omnigent_tunnel::host::{HostConnection, HostRequestError};
use tracing::{info, warn};

use super::Hosts;
use crate::clock::now_ms;
use crate::store::{SessionChanges, SessionRow, Store, StoreError};

/// Why a workspace on a host cannot be used (`host.stat` said so).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkspaceError {
    #[error("host {name:?} cannot inspect workspace {workspace}: {why}; pick another directory")]
    Uninspectable {
        name: String,
        workspace: String,
        why: String,
    },
    #[error(
        "workspace {workspace} does not exist on host {name:?}; create it (POST /v1/hosts/{host_id}/directories) \
         or pick another directory"
    )]
    Missing {
        name: String,
        workspace: String,
        host_id: String,
    },
    #[error(
        "workspace {workspace} on host {name:?} is a {file_type}, not a directory; pick a directory"
    )]
    NotADirectory {
        name: String,
        workspace: String,
        file_type: String,
    },
}

/// Why a runner could not be launched (or relaunched) on a host for a session.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("host_id `{raw}` is not a host id (32 hex digits); GET /v1/hosts lists the hosts")]
    BadHostId { raw: String },
    #[error(
        "host {host_id} is offline: its daemon is not connected to this server; start it (`omnigent host \
         <server>` or `omnigent start` on that machine) and retry"
    )]
    HostOffline { host_id: String },
    #[error("Session not found")]
    SessionNotFound,
    #[error(
        "session {session_id} already has runner `{runner_id}`; send it a message to relaunch it, or create a \
         new session"
    )]
    AlreadyBound {
        session_id: String,
        runner_id: String,
    },
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    /// The host answered `host.launch_runner` with `failed`; `code` is its `error_code` when this version
    /// knows it.
    #[error("host {host_id} could not launch runner {runner_id}: {why}")]
    Refused {
        host_id: String,
        runner_id: String,
        code: Option<LaunchErrorCode>,
        why: String,
    },
    #[error(
        "the host relaunched runner {runner_id} of session {session_id}, but it did not connect within \
         {wait:?}{}; check the host daemon's log (`omnigent status`) and retry",
        .exited.as_ref().map(|e| format!(" (it exited: {e})")).unwrap_or_default()
    )]
    RunnerDidNotConnect {
        runner_id: String,
        session_id: String,
        wait: Duration,
        exited: Option<String>,
    },
    /// A request to the host failed (offline, closed, timed out, off protocol).
    #[error(transparent)]
    Request(#[from] HostRequestError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A launch prepared for a session about to be created: the host is online and the workspace is a directory
/// there; the runner id is known before the launch. (No `Debug`: it holds the binding token, a secret.)
pub struct PreparedLaunch {
    pub host_id: String,
    pub runner_id: String,
    pub workspace: String,
    token: String,
    host: HostConnection,
}

/// Check that `raw_host_id` is online and `workspace` is a directory on it (`host.stat`), and mint the
/// binding token: [`LaunchError::HostOffline`] when the host is not connected, [`LaunchError::Workspace`]
/// otherwise.
pub async fn prepare_launch(
    hosts: &Hosts,
    raw_host_id: &str,
    workspace: &str,
) -> Result<PreparedLaunch, LaunchError> {
    let host = online_host(hosts, raw_host_id).await?;
    check_workspace(&host, workspace).await?;
    let token = new_binding_token();
    Ok(PreparedLaunch {
        host_id: host.host_id().to_owned(),
        runner_id: runner_id_for_token(&token),
        workspace: workspace.to_owned(),
        token,
        host,
    })
}

/// Send the prepared `host.launch_runner` for the just-created `session_id`. On failure the session is
/// deleted again (a failed create leaves nothing behind) and the error says why.
pub async fn launch_new_session(
    hosts: &Hosts,
    store: &Store,
    launch: PreparedLaunch,
    session_id: &str,
    harness: &str,
) -> Result<(), LaunchError> {
    let result = send_launch(
        &launch.host,
        &launch.token,
        &launch.runner_id,
        &launch.workspace,
        session_id,
        harness,
    )
    .await;
    match result {
        Ok(()) => {
            hosts.remember_token(session_id, &launch.token);
            Ok(())
        }
        Err(e) => {
            if let Err(del) = store.delete_session(session_id).await {
                warn!(%session_id, error = %del, "cannot delete the session whose runner failed to launch");
            }
            Err(e)
        }
    }
}

/// For a host-bound session whose runner is offline: when its host is online, send `host.launch_runner` again
/// with the session's binding token (the same runner id; after a server restart, which forgets tokens, a
/// fresh token whose runner id is stored on the session first). `Ok(true)` when a launch was sent and the host
/// accepted it; `Ok(false)` when the session has no host, no workspace, or its host is offline.
pub async fn ensure_host_runner(
    hosts: &Hosts,
    store: &Store,
    session_id: &str,
) -> Result<bool, LaunchError> {
    let row = store
        .get_session(session_id)
        .await?
        .ok_or(LaunchError::SessionNotFound)?;
    let (Some(host_id), Some(workspace)) = (row.host_id.as_deref(), row.workspace.as_deref())
    else {
        return Ok(false);
    };
    let Some(host) = hosts.registry().get(host_id) else {
        return Ok(false);
    };
    let token = match hosts.token_of(session_id) {
        Some(token) => token,
        None => {
            let token = new_binding_token();
            let changes = SessionChanges {
                runner_id: Some(Some(runner_id_for_token(&token))),
                ..SessionChanges::default()
            };
            store
                .update_session(session_id, &changes, now_ms())
                .await?
                .ok_or(LaunchError::SessionNotFound)?;
            hosts.remember_token(session_id, &token);
            token
        }
    };
    let runner_id = runner_id_for_token(&token);
    let harness = row.harness();
    info!(%session_id, %runner_id, host_id, "relaunching the session's runner on its host");
    send_launch(
        &host,
        &token,
        &runner_id,
        workspace,
        session_id,
        harness.unwrap_or("echo"),
    )
    .await?;
    Ok(true)
}

/// The message path's relaunch (reference §3.7 "Auto-relaunch"): for a host-bound session whose runner is
/// offline while its host is online, send `host.launch_runner` again ([`ensure_host_runner`]) and wait for the
/// runner's tunnel in `runners` (as long as a launch may take, 30 s by default). `Ok(Some((row, runner_id)))`
/// once it is online; `Ok(None)` when no launch could be sent (no host, or the host is offline);
/// [`LaunchError::RunnerDidNotConnect`] when the runner did not come.
pub async fn relaunch_host_runner(
    hosts: &Hosts,
    store: &Store,
    runners: &RunnerRegistry,
    session_id: &str,
) -> Result<Option<(SessionRow, String)>, LaunchError> {
    if !ensure_host_runner(hosts, store, session_id).await? {
        return Ok(None);
    }
    // Re-read: after a server restart the session was given a fresh token, so a new runner id.
    let row = store
        .get_session(session_id)
        .await?
        .ok_or(LaunchError::SessionNotFound)?;
    let Some(runner_id) = row.runner_id.clone() else {
        return Ok(None);
    };
    let wait = hosts.registry().settings().launch_timeout;
    if runners.wait_for_runner(&runner_id, wait).await.is_none() {
        return Err(LaunchError::RunnerDidNotConnect {
            exited: hosts.runner_exit_error(&runner_id),
            runner_id,
            session_id: session_id.to_owned(),
            wait,
        });
    }
    Ok(Some((row, runner_id)))
}

/// `POST /v1/hosts/{id}/runners`: launch a runner for an existing session that has none, binding the session
/// to the host and workspace. Answers the runner id.
pub async fn launch_for_session(
    hosts: &Hosts,
    store: &Store,
    raw_host_id: &str,
    session_id: &str,
    workspace: &str,
) -> Result<String, LaunchError> {
    let row = store
        .get_session(session_id)
        .await?
        .ok_or(LaunchError::SessionNotFound)?;
    if let Some(runner) = &row.runner_id {
        return Err(LaunchError::AlreadyBound {
            session_id: session_id.to_owned(),
            runner_id: runner.clone(),
        });
    }
    let launch = prepare_launch(hosts, raw_host_id, workspace).await?;
    let bound = store
        .bind_session_to_host(
            session_id,
            &launch.host_id,
            workspace,
            &launch.runner_id,
            now_ms(),
        )
        .await?;
    if !bound {
        return Err(LaunchError::SessionNotFound);
    }
    let harness = row.harness();
    send_launch(
        &launch.host,
        &launch.token,
        &launch.runner_id,
        workspace,
        session_id,
        harness.unwrap_or("echo"),
    )
    .await?;
    hosts.remember_token(session_id, &launch.token);
    Ok(launch.runner_id)
}

/// How long a launch waits for a host whose tunnel is not registered yet. A host daemon counts itself online
/// as soon as it has sent its `host.hello`; the server registers it only once it has read that hello, so a
/// session created right after `omnigent host` (or `omnigent run` starting the daemon) can arrive in between.
pub const HOST_ARRIVAL_WAIT: Duration = Duration::from_secs(3);

/// The live tunnel of a host, waiting up to [`HOST_ARRIVAL_WAIT`] for it to register (on the registry's
/// connect signal, no polling); else [`LaunchError::HostOffline`] (or [`LaunchError::BadHostId`]).
pub async fn online_host(hosts: &Hosts, raw_host_id: &str) -> Result<HostConnection, LaunchError> {
    let host_id =
        omnigent_proto::ids::canonical_id(raw_host_id).ok_or_else(|| LaunchError::BadHostId {
            raw: raw_host_id.to_owned(),
        })?;
    hosts
        .registry()
        .wait_for_host(&host_id, HOST_ARRIVAL_WAIT)
        .await
        .ok_or(LaunchError::HostOffline { host_id })
}

/// `host.stat` the workspace: it must exist and be a directory ([`WorkspaceError`] otherwise).
async fn check_workspace(host: &HostConnection, workspace: &str) -> Result<(), LaunchError> {
    let name = &host.hello().name;
    let stat = host.stat(workspace).await?;
    if stat.status != "ok" {
        return Err(WorkspaceError::Uninspectable {
            name: name.clone(),
            workspace: workspace.to_owned(),
            why: stat.error.unwrap_or_else(|| "unknown error".to_owned()),
        }
        .into());
    }
    if !stat.exists {
        return Err(WorkspaceError::Missing {
            name: name.clone(),
            workspace: workspace.to_owned(),
            host_id: host.host_id().to_owned(),
        }
        .into());
    }
    match stat.file_type.as_deref() {
        Some("directory") => Ok(()),
        other => Err(WorkspaceError::NotADirectory {
            name: name.clone(),
            workspace: workspace.to_owned(),
            file_type: other.unwrap_or("thing of unknown type").to_owned(),
        }
        .into()),
    }
}

/// Send `host.launch_runner` and turn its result into a [`LaunchError`] when it failed.
async fn send_launch(
    host: &HostConnection,
    token: &str,
    runner_id: &str,
    workspace: &str,
    session_id: &str,
    harness: &str,
) -> Result<(), LaunchError> {
    let result = host
        .launch_runner(token, workspace, Some(session_id), Some(harness))
        .await?;
    launch_outcome(&result, runner_id, host.host_id())
}

/// The outcome of a `host.launch_runner_result`: `Ok` when launched, else [`LaunchError::Refused`] with the
/// host's error code (when this version knows it).
pub(crate) fn launch_outcome(
    result: &LaunchRunnerResult,
    runner_id: &str,
    host_id: &str,
) -> Result<(), LaunchError> {
    if result.status == "launched" {
        if let Some(got) = result.runner_id.as_deref().filter(|got| *got != runner_id) {
            warn!(
                expected = runner_id,
                got, "host launched the runner under another id"
            );
        }
        return Ok(());
    }
    Err(LaunchError::Refused {
        host_id: host_id.to_owned(),
        runner_id: runner_id.to_owned(),
        code: result
            .error_code
            .as_deref()
            .and_then(LaunchErrorCode::parse),
        why: result
            .error
            .clone()
            .unwrap_or_else(|| "no reason given".to_owned()),
    })
}
