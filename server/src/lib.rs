//! omnigent-server: the coordination hub (HTTP + SSE) over the sessions database.
//!
//! Public surface: [`ServerConfig`], [`run`] (open the store, then serve until `shutdown`), and for callers
//! that must report readiness between the two steps (`omnigent server run`), [`open_store`] + [`serve`].
//!
//! Code map (imports run one way: `lib` → `http` → `hosts`/`actor` → `relay` → `store` → `clock`; nothing
//! imports the crate root):
//! - [`store`]: the database behind one interface (SQLite now, Postgres later), migrations embedded.
//! - [`actor`]: one task per live session owning its status, subscribers, replay buffer, writes and turn.
//! - [`relay`]: the runner side of a session: the reader of the runner's stream, session init, forwarding,
//!   the relay's lifecycle rules and the translation of runner events (both without I/O).
//! - `http`: the axum routes (reference omnigent-server-v1.md §1–2), JSON errors, SSE.

use std::future::Future;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub mod actor;
mod agents;
mod clock;
mod config;
mod conn;
pub mod feed;
pub mod hosts;
mod http;
pub mod presence;
pub mod relay;
pub mod store;
pub mod updates;

pub use config::ServerConfig;
/// What the server logs when its connection cap closes or refuses connections (black-box tests wait on it).
pub use conn::CONNECTION_CAP_REACHED;
pub use store::{DatabaseLocation, OpenError, Store};

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
