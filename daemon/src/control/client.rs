//! The CLI side of the control API: connect to the daemon's socket, say hello, make typed calls.

use std::path::PathBuf;
use std::time::Duration;

use http::Method;
use interprocess::local_socket::GenericFilePath;
use interprocess::local_socket::tokio::prelude::*;
use omnigent_proto::control::{
    self as ctl, ControlError, ControlErrorCode, DaemonStatus, Hello, HelloReply, ServerStatus,
    ShutdownReply, StopRequest,
};
use omnigent_proto::paths::Paths;
use serde::de::DeserializeOwned;

use super::http::{Connection, HttpError};
use crate::runtime::{self, RuntimeDirError};

/// Default time to wait for a quick control call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to wait for calls that start or stop processes.
pub const SLOW_CALL_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no omnigent daemon is running (nothing answers on {socket})")]
    NotRunning { socket: PathBuf },
    #[error("cannot connect to the daemon at {socket}: {source}")]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the omnigent daemon (pid {pid}) is stopped (SIGSTOP); resume it with `kill -CONT {pid}` or \
         `omnigent stop --force`"
    )]
    Stopped { pid: u32 },
    #[error(
        "the omnigent daemon (pid {pid}) runs but its control socket {socket} is gone and it could not \
         re-create it: {why}; see `omnigent logs daemon`, or `omnigent stop --force`"
    )]
    Unreachable {
        pid: u32,
        socket: PathBuf,
        why: String,
    },
    #[error(transparent)]
    RuntimeDir(#[from] RuntimeDirError),
    #[error("talking to the daemon failed: {0}")]
    Http(#[from] HttpError),
    #[error("the daemon did not answer {path} within {}s; see its log (`omnigent logs daemon`)", timeout.as_secs())]
    Timeout { path: String, timeout: Duration },
    #[error("{message}")]
    ProtocolMismatch { daemon: HelloReply, message: String },
    #[error("{}", error.message)]
    Daemon { status: u16, error: ControlError },
    #[error("the daemon sent an unreadable reply to {path} (HTTP {status}): {why}")]
    BadReply {
        path: String,
        status: u16,
        why: String,
    },
}

/// How long a daemon found through its guard may take to put its control socket back.
const RING_TIMEOUT: Duration = Duration::from_secs(5);

/// Connect to the control socket; [`ClientError::NotRunning`] when nothing listens there.
async fn connect_socket(
    paths: &Paths,
    socket: &std::path::Path,
) -> Result<LocalSocketStream, ClientError> {
    let not_running = || ClientError::NotRunning {
        socket: socket.to_path_buf(),
    };
    if !paths.runtime_dir.exists() {
        return Err(not_running());
    }
    runtime::check_private_dir(&paths.runtime_dir)?;
    let name = socket
        .to_fs_name::<GenericFilePath>()
        .map_err(|source| ClientError::Connect {
            socket: socket.to_path_buf(),
            source,
        })?;
    match LocalSocketStream::connect(name).await {
        Ok(s) => Ok(s),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Err(not_running())
        }
        Err(source) => Err(ClientError::Connect {
            socket: socket.to_path_buf(),
            source,
        }),
    }
}

/// Ask the daemon holding the guard to put its runtime files back; its one-line answer comes once they are.
async fn ring_daemon(ring: std::os::unix::net::UnixStream) -> Result<(), String> {
    use tokio::io::AsyncBufReadExt;
    ring.set_nonblocking(true).map_err(|e| e.to_string())?;
    let ring = tokio::net::UnixStream::from_std(ring).map_err(|e| e.to_string())?;
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(ring, 4096));
    match tokio::time::timeout(RING_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(_)) if line.trim() == "ok" => Ok(()),
        Ok(Ok(_)) => Err(line
            .trim()
            .strip_prefix("failed: ")
            .unwrap_or("it closed the connection without an answer")
            .to_owned()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "it did not answer within {}s",
            RING_TIMEOUT.as_secs()
        )),
    }
}

/// A connection to the daemon on which the hello succeeded.
pub struct ControlClient {
    conn: Connection,
    /// What the daemon said in its hello.
    pub daemon: HelloReply,
}

impl ControlClient {
    /// Connect and say hello. [`ClientError::NotRunning`] when no daemon listens;
    /// [`ClientError::ProtocolMismatch`] when the daemon speaks another control protocol.
    ///
    /// When no socket answers but a daemon of ours holds the guard (its runtime files were deleted), it is
    /// asked to re-create them and the socket is tried again. A daemon stopped by a signal is
    /// [`ClientError::Stopped`] at once, not a timeout.
    pub async fn connect(paths: &Paths) -> Result<Self, ClientError> {
        let socket = runtime::control_socket_path(paths);
        let stream = match connect_socket(paths, &socket).await {
            Err(ClientError::NotRunning { .. }) => match runtime::guard_holder(paths) {
                None => return Err(ClientError::NotRunning { socket }),
                Some((pid, ring)) => {
                    if runtime::is_stopped(pid) {
                        return Err(ClientError::Stopped { pid });
                    }
                    ring_daemon(ring)
                        .await
                        .map_err(|why| ClientError::Unreachable {
                            pid,
                            socket: socket.clone(),
                            why,
                        })?;
                    connect_socket(paths, &socket).await?
                }
            },
            other => other?,
        };
        let pid = stream
            .peer_creds()
            .ok()
            .and_then(|c| c.pid())
            .and_then(|p| u32::try_from(p).ok());
        if let Some(pid) = pid
            && runtime::is_stopped(pid)
        {
            return Err(ClientError::Stopped { pid });
        }
        let conn = Connection::open(stream, ctl::MAX_CONTROL_BODY_BYTES).await?;
        let mut client = ControlClient {
            conn,
            daemon: HelloReply {
                protocol_version: 0,
                build_version: String::new(),
                pid: 0,
                started_at_ms: 0,
            },
        };
        let body = serde_json::to_vec(&Hello::current()).map_err(|e| ClientError::BadReply {
            path: ctl::HELLO_PATH.into(),
            status: 0,
            why: e.to_string(),
        })?;
        // The hello carries no protocol header: it must reach any daemon, whatever its version.
        let hello = client
            .call_raw(
                Method::POST,
                ctl::HELLO_PATH,
                Some(body),
                CALL_TIMEOUT,
                false,
            )
            .await;
        client.daemon = match (hello, pid) {
            // Frozen after we connected: say so rather than "did not answer".
            (Err(ClientError::Timeout { .. }), Some(pid)) if runtime::is_stopped(pid) => {
                return Err(ClientError::Stopped { pid });
            }
            (hello, _) => hello?,
        };
        Ok(client)
    }

    async fn call_raw<T: DeserializeOwned>(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
        with_header: bool,
    ) -> Result<T, ClientError> {
        let headers: Vec<(&str, String)> = if with_header {
            vec![(
                ctl::PROTOCOL_HEADER,
                omnigent_proto::CONTROL_PROTOCOL_VERSION.to_string(),
            )]
        } else {
            vec![]
        };
        let send = self
            .conn
            .send(method, ctl::CONTROL_HOST, path, &headers, body);
        let (status, bytes) =
            tokio::time::timeout(timeout, send)
                .await
                .map_err(|_| ClientError::Timeout {
                    path: path.to_owned(),
                    timeout,
                })??;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| ClientError::BadReply {
                path: path.to_owned(),
                status: status.as_u16(),
                why: e.to_string(),
            });
        }
        let error: ControlError =
            serde_json::from_slice(&bytes).map_err(|e| ClientError::BadReply {
                path: path.to_owned(),
                status: status.as_u16(),
                why: format!(
                    "{e}: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                ),
            })?;
        match (error.code, error.daemon.clone()) {
            (ControlErrorCode::ProtocolMismatch, Some(daemon)) => {
                Err(ClientError::ProtocolMismatch {
                    daemon,
                    message: error.message,
                })
            }
            _ => Err(ClientError::Daemon {
                status: status.as_u16(),
                error,
            }),
        }
    }

    /// `GET path`.
    pub async fn get<T: DeserializeOwned>(
        &mut self,
        path: &str,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        self.call_raw(Method::GET, path, None, timeout, true).await
    }

    /// `POST path` with a JSON body.
    pub async fn post<B: serde::Serialize, T: DeserializeOwned>(
        &mut self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::BadReply {
            path: path.to_owned(),
            status: 0,
            why: e.to_string(),
        })?;
        self.call_raw(Method::POST, path, Some(bytes), timeout, true)
            .await
    }

    pub async fn status(&mut self) -> Result<DaemonStatus, ClientError> {
        self.get(ctl::STATUS_PATH, CALL_TIMEOUT).await
    }

    pub async fn server_status(&mut self) -> Result<ServerStatus, ClientError> {
        self.get(ctl::SERVER_PATH, CALL_TIMEOUT).await
    }

    pub async fn server_start(&mut self) -> Result<ServerStatus, ClientError> {
        self.post(
            ctl::SERVER_START_PATH,
            &serde_json::json!({}),
            SLOW_CALL_TIMEOUT,
        )
        .await
    }

    pub async fn server_stop(&mut self, force: bool) -> Result<ServerStatus, ClientError> {
        self.post(
            ctl::SERVER_STOP_PATH,
            &StopRequest { force },
            SLOW_CALL_TIMEOUT,
        )
        .await
    }

    pub async fn shutdown(&mut self, force: bool) -> Result<ShutdownReply, ClientError> {
        self.post(
            ctl::SHUTDOWN_PATH,
            &StopRequest { force },
            SLOW_CALL_TIMEOUT,
        )
        .await
    }

    /// Add a target (`omnigent host URL`); with `persist`, the daemon first keeps it in config.toml so every
    /// later start restores it (`--background`), and fails with nothing started when it cannot.
    pub async fn add_target(
        &mut self,
        url: &str,
        persist: bool,
    ) -> Result<ctl::TargetStatus, ClientError> {
        self.post(
            ctl::TARGETS_PATH,
            &ctl::AddTarget {
                url: url.to_owned(),
                persist,
            },
            CALL_TIMEOUT,
        )
        .await
    }

    /// Remove a target added with [`Self::add_target`]; its runners are stopped first. With `from_config`,
    /// its `[[targets]]` table is removed from config.toml too; without, a target kept there stays.
    pub async fn remove_target(
        &mut self,
        url: &str,
        from_config: bool,
    ) -> Result<ctl::RemoveTargetReply, ClientError> {
        self.post(
            ctl::TARGETS_REMOVE_PATH,
            &ctl::RemoveTarget {
                url: url.to_owned(),
                from_config,
            },
            SLOW_CALL_TIMEOUT,
        )
        .await
    }

    /// Status once its revision is past `after` (or after `timeout_ms`).
    pub async fn status_after(
        &mut self,
        after: u64,
        timeout_ms: u64,
    ) -> Result<DaemonStatus, ClientError> {
        let path = format!("{}?after={after}&timeout_ms={timeout_ms}", ctl::STATUS_PATH);
        self.get(&path, Duration::from_millis(timeout_ms) + CALL_TIMEOUT)
            .await
    }
}
