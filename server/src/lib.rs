//! omnigent-server: the coordination hub (HTTP + SSE) over the sessions database.
//!
//! Public surface: [`ServerConfig`], [`run`] (open the store, then serve until `shutdown`), and for callers
//! that must report readiness between the two steps (`omnigent server run`), [`open_store`] + [`serve`].
//!
//! Code map:
//! - [`store`]: the database behind one interface (SQLite now, Postgres later), migrations embedded.
//! - [`actor`]: one task per live session owning its status, subscribers, replay buffer, writes and runner relay.
//! - [`relay`]: the runner side of a session: the reader of the runner's stream, session init, forwarding.
//! - `http`: the axum routes (reference omnigent-server-v1.md §1–2), JSON errors, SSE.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use omnigent_proto::paths::Paths;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub mod actor;
mod agents;
mod conn;
pub mod feed;
pub mod hosts;
mod http;
pub mod relay;
pub mod store;

/// What the server logs when its connection cap closes or refuses connections (black-box tests wait on it).
pub use conn::CONNECTION_CAP_REACHED;
pub use store::{DatabaseLocation, OpenError, Store};

/// Everything the server needs to run.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the sessions database lives.
    pub database: DatabaseLocation,
    /// The data directory (artifacts; the default database lives here).
    pub data_dir: PathBuf,
    /// Largest JSON request body accepted.
    pub max_body_bytes: usize,
    /// Recent events kept per session for `Last-Event-ID` replay.
    pub replay_buffer: usize,
    /// Bytes of recent events kept per session (whichever of the two caps is hit first).
    pub replay_buffer_bytes: usize,
    /// A session actor with no subscribers and no command for this long stops (its state is in the store).
    pub actor_idle: Duration,
    /// Idle `session.heartbeat` interval on streams.
    pub heartbeat_interval: Duration,
    /// How long shutdown waits for in-flight requests and writes.
    pub shutdown_grace: Duration,
    /// Reader connections to SQLite.
    pub read_connections: u32,
    /// How long a runner lost mid-turn may take to come back before the turn fails (reference §3.5: 10 s).
    /// `omnigent server run` reads `OMNIGENT_RUNNER_GRACE_MS` (for black-box tests).
    pub runner_grace: Duration,
    /// Timings and limits of runner tunnels.
    pub tunnel: omnigent_tunnel::TunnelConfig,
    /// The live host tunnels (timings in its `HostSettings`). A caller may keep a clone to watch hosts come
    /// and go (tests do); a cloned config shares it.
    pub host_registry: omnigent_tunnel::host::HostRegistry,
    /// `Host` names requests may use besides the loopback ones (`name`, `name:port` or `*.suffix`); anything
    /// else gets 421 (DNS rebinding defence). A LAN or public-URL setting adds its names here.
    /// `omnigent server run` reads `OMNIGENT_ALLOWED_HOSTS` (comma-separated).
    pub allowed_hosts: Vec<String>,
    /// A request head must be complete this long after its first byte (for a new connection: after it
    /// opened), else the connection is closed. `OMNIGENT_SERVER_HEADER_TIMEOUT_MS`.
    pub header_read_timeout: Duration,
    /// A request body must arrive whole this long after its head. `OMNIGENT_SERVER_BODY_TIMEOUT_MS`.
    pub body_read_timeout: Duration,
    /// A kept-alive connection with no request under way is closed after this long.
    /// `OMNIGENT_SERVER_IDLE_TIMEOUT_MS`. (Streams and WebSockets are never idle in this sense.)
    pub idle_timeout: Duration,
    /// Open connections at most (WebSockets included). At the cap a new connection closes the one waiting
    /// longest with no request under way, or is closed itself when every one has a request under way (streams,
    /// tunnels); either is logged. Default: the open-file limit minus 64. `OMNIGENT_SERVER_MAX_CONNECTIONS`.
    pub max_connections: usize,
}

impl ServerConfig {
    /// Defaults with the SQLite database `omnigent.db` in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        ServerConfig {
            database: DatabaseLocation::Sqlite(data_dir.join("omnigent.db")),
            data_dir,
            max_body_bytes: omnigent_proto::api::DEFAULT_MAX_BODY_BYTES,
            replay_buffer: 16_384,
            replay_buffer_bytes: 8 * 1024 * 1024,
            actor_idle: Duration::from_secs(600),
            heartbeat_interval: Duration::from_secs(
                omnigent_proto::events::HEARTBEAT_INTERVAL_SECS,
            ),
            shutdown_grace: Duration::from_millis(500),
            read_connections: 4,
            runner_grace: Duration::from_secs(10),
            tunnel: omnigent_tunnel::TunnelConfig::default(),
            host_registry: omnigent_tunnel::host::HostRegistry::default(),
            allowed_hosts: Vec::new(),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: conn::default_max_connections(),
        }
    }

    /// Defaults for the directories of `paths` (what `omnigent server run` uses).
    pub fn from_paths(paths: &Paths) -> Self {
        let mut config = Self::new(paths.data_dir.clone());
        let number = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let ms = |name: &str| number(name).map(Duration::from_millis);
        if let Some(d) = ms("OMNIGENT_RUNNER_GRACE_MS") {
            config.runner_grace = d;
        }
        if let Some(d) = ms("OMNIGENT_SERVER_HEADER_TIMEOUT_MS") {
            config.header_read_timeout = d;
        }
        if let Some(d) = ms("OMNIGENT_SERVER_BODY_TIMEOUT_MS") {
            config.body_read_timeout = d;
        }
        if let Some(d) = ms("OMNIGENT_SERVER_IDLE_TIMEOUT_MS") {
            config.idle_timeout = d;
        }
        if let Some(n) = number("OMNIGENT_SERVER_MAX_CONNECTIONS") {
            config.max_connections = usize::try_from(n).unwrap_or(usize::MAX).max(1);
        }
        if let Ok(hosts) = std::env::var("OMNIGENT_ALLOWED_HOSTS") {
            config.allowed_hosts = hosts
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
                .collect();
        }
        config
    }

    /// A config for tests: everything under `home` (as `OMNIGENT_HOME` would place it).
    pub fn for_home(home: &Path) -> Self {
        Self::from_paths(&Paths::under(home))
    }

    /// Use the database named by `url` (`sqlite:…` or `postgres://…`) instead of the default file.
    pub fn with_database_url(mut self, url: &str) -> Result<Self, OpenError> {
        self.database = DatabaseLocation::parse(url)?;
        Ok(self)
    }
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("the HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Open and migrate the store: call before accepting connections so a bad database fails fast.
pub async fn open_store(config: &ServerConfig) -> Result<Store, OpenError> {
    Store::open(&config.database, config.read_connections).await
}

/// Open the store, then serve on `listener` until `shutdown` resolves.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let store = open_store(&config).await?;
    serve(config, store, listener, shutdown).await
}

/// Serve on `listener` with an already opened store until `shutdown` resolves. On shutdown: open streams
/// get `data: [DONE]`, in-flight requests and queued session writes finish (bounded by
/// `shutdown_grace`), the store is checkpointed and closed.
pub async fn serve(
    config: ServerConfig,
    store: Store,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let stop = CancellationToken::new();
    let state = http::AppState::new(&config, store.clone(), stop.clone());
    let sessions = state.sessions.clone();
    let runners = sessions.runners().clone();
    tokio::spawn(fail_turns_on_runner_exit(
        sessions.clone(),
        store.clone(),
        config.host_registry.subscribe(),
        stop.clone(),
    ));
    tokio::spawn(rebind_on_reconnect(
        sessions.clone(),
        store.clone(),
        stop.clone(),
    ));
    tokio::spawn(recover_interrupted_turns(sessions.clone(), store.clone()));
    let app = http::router(state);
    // Hosts reconnect at once to the next server on 1012.
    let host_tunnels = config.host_registry.clone();
    let hosts_stop = stop.clone();
    tokio::spawn(async move {
        hosts_stop.cancelled().await;
        host_tunnels.close_all(
            omnigent_proto::host_frames::close::SERVICE_RESTART,
            "service restart",
        );
    });
    let addr = listener.local_addr().ok();
    info!(?addr, database = %config.database.display(), "server listening");

    let stop_signal = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        stop_signal.cancel();
    });
    let limits = conn::ConnLimits {
        header_read_timeout: config.header_read_timeout,
        body_read_timeout: config.body_read_timeout,
        idle_timeout: config.idle_timeout,
        max_connections: config.max_connections,
    };
    let connections = tokio_util::task::TaskTracker::new();
    let force = CancellationToken::new();
    let accepting = tokio::spawn(conn::accept_loop(
        listener,
        app,
        limits,
        connections.clone(),
        stop.clone(),
        force.clone(),
    ));
    stop.cancelled().await;
    // Runners reconnect at once to the next server on 1012.
    runners.close_all(
        omnigent_proto::runner_frames::close::SERVICE_RESTART,
        "service restart",
    );
    // The accept loop returns at `stop` (the listener closes); open connections finish their requests.
    let _ = accepting.await;
    connections.close();
    if tokio::time::timeout(config.shutdown_grace, connections.wait())
        .await
        .is_err()
    {
        info!(
            "in-flight requests did not finish within {:?}; closing them",
            config.shutdown_grace
        );
        force.cancel();
    }
    sessions.close(config.shutdown_grace / 2).await;
    store.close().await;
    info!("server stopped");
    Ok(())
}

/// Re-open the relay of every session bound to a runner whenever one of its tunnels connects (reference wire
/// notes: "After a runner reconnects, the server at once reopens GET /v1/sessions/{id}/stream on it").
async fn rebind_on_reconnect(sessions: actor::Sessions, store: Store, stop: CancellationToken) {
    use omnigent_tunnel::RunnerEvent;
    use tokio::sync::broadcast::error::RecvError;
    let mut events = sessions.runners().subscribe();
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = events.recv() => event,
        };
        let (runner_id, generation) = match event {
            Ok(RunnerEvent::Connected {
                runner_id,
                generation,
            }) => (runner_id, generation),
            Ok(RunnerEvent::Disconnected { .. }) => continue,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(
                    "missed {n} runner tunnel events; relays re-open on the next message"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        match store.sessions_bound_to(&runner_id).await {
            Ok(ids) => {
                for id in ids {
                    sessions.runner_connected(&id, &runner_id, generation).await;
                }
            }
            Err(e) => tracing::warn!(%runner_id, "cannot list the sessions bound to a runner: {e}"),
        }
    }
}

/// Turns under way when the server last stopped (or died) are not left `running` forever: each such session's
/// runner gets the disconnect grace to come back, then the turn fails as `runner_disconnected`.
async fn recover_interrupted_turns(sessions: actor::Sessions, store: Store) {
    match store.sessions_mid_turn().await {
        Ok(ids) => {
            for id in ids {
                sessions.recover_turn(&id).await;
            }
        }
        Err(e) => tracing::warn!("cannot list the sessions that were mid-turn: {e}"),
    }
}

/// Fail the running turn of every session bound to a runner whose process exited, as its host reports it
/// (`host.runner_exited`): the turn fails with the exit report (code or signal, and the log tail).
async fn fail_turns_on_runner_exit(
    sessions: actor::Sessions,
    store: Store,
    mut events: tokio::sync::broadcast::Receiver<omnigent_tunnel::host::HostEvent>,
    stop: CancellationToken,
) {
    use omnigent_tunnel::host::HostEvent;
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = events.recv() => event,
        };
        let (runner_id, report) = match event {
            Ok(HostEvent::RunnerExited {
                runner_id, error, ..
            }) => (
                runner_id,
                error.unwrap_or_else(|| "the runner exited".to_owned()),
            ),
            Ok(_) => continue,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(
                    "missed {n} host tunnel events; some runner exits may go unreported"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        match store.sessions_bound_to(&runner_id).await {
            Ok(ids) => {
                for id in ids {
                    sessions.runner_exited(&id, &runner_id, &report).await;
                }
            }
            Err(e) => tracing::warn!(%runner_id, "cannot list the sessions bound to a runner: {e}"),
        }
    }
}

/// Now, in epoch milliseconds.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Now, in epoch seconds with a fraction.
pub(crate) fn now_secs_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
