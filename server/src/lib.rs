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
pub mod devices;
pub mod feed;
pub mod hosts;
mod http;
pub mod presence;
pub mod relay;
pub mod store;
pub mod updates;

pub use clock::{Clock, ManualClock};
pub use config::{Notice, Secret, ServerConfig};
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
    #[error("the server is misconfigured: {0}")]
    Config(String),
    #[error("the server cannot load its paired devices: {0}")]
    Devices(#[source] store::StoreError),
}

/// Every route and what it needs of its caller: `(method, path as routed, need)` with need `public`,
/// `any_device`, or a role (`viewer`, `driver`, `host`, `owner`). Tests iterate over it.
pub fn auth_rules() -> Vec<(&'static str, &'static str, &'static str)> {
    use http::auth::Need;
    http::auth::RULES
        .iter()
        .map(|(m, p, need)| {
            let need = match need {
                Need::Public => "public",
                Need::AnyDevice => "any_device",
                Need::Role(r) => r.as_str(),
            };
            (*m, *p, need)
        })
        .collect()
}

/// Listen on every address of `config.bind` (at least one).
pub async fn listen(config: &ServerConfig) -> std::io::Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    for addr in &config.bind {
        listeners.push(
            TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
            })?,
        );
    }
    if listeners.is_empty() {
        listeners.push(TcpListener::bind(config::DEFAULT_BIND).await?);
    }
    Ok(listeners)
}

/// `https://Host:443/x/` → (`https://host:443/x`, origin `https://host:443`), or why it is not a URL.
fn parse_public_url(url: &str) -> Result<(String, String), ServerError> {
    let url = url.trim().trim_end_matches('/');
    let bad = || {
        ServerError::Config(format!(
            "--public-url `{url}` is not an http:// or https:// URL; give the address clients use, e.g.              https://omni.example.com"
        ))
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(bad());
    }
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') || path.contains(['?', '#']) {
        return Err(bad());
    }
    let origin = format!("{scheme}://{}", authority.to_ascii_lowercase());
    Ok((format!("{origin}{path}"), origin))
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
    serve_all(config, store, vec![listener], shutdown).await
}

/// [`serve`] on several listeners (see [`listen`]). Each listener has its own connection cap.
pub async fn serve_all(
    config: ServerConfig,
    store: Store,
    listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let listening: Vec<std::net::SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let (public_url, public_origin) = match &config.public_url {
        Some(url) => {
            let (url, origin) = parse_public_url(url)?;
            (Some(url), Some(origin))
        }
        None => (None, None),
    };
    let devices = devices::Devices::load(&store, config.clock.clone())
        .await
        .map_err(ServerError::Devices)?;
    if let Some(token) = &config.owner_token {
        if token.0.len() < 32 {
            return Err(ServerError::Config(
                "OMNIGENT_OWNER_TOKEN is too short to be a secret; use at least 32 random characters (e.g.                  `openssl rand -base64 32`)"
                    .to_owned(),
            ));
        }
        devices
            .set_owner_token(&store, &token.0)
            .await
            .map_err(ServerError::Devices)?;
    }
    let auth = http::AuthSettings {
        trust_loopback: config.trust_loopback,
        secure_cookie: public_origin
            .as_deref()
            .is_some_and(|o| o.starts_with("https://")),
        public_url,
        public_origin,
        listening: listening.clone(),
    };
    let off_loopback = listening
        .iter()
        .any(|a| !a.ip().to_canonical().is_loopback());
    if off_loopback && !devices.has_owner() {
        // A deployed server: the first owner pairs with this code (the URL goes to the notice, never a log).
        match devices.create_code(
            omnigent_proto::auth::Role::Owner,
            std::time::Duration::from_secs(OWNER_CODE_TTL_SECS),
            None,
            Some("owner".to_owned()),
            None,
        ) {
            Ok((code, _)) => {
                let urls = http::pairing_urls(&auth, &code, None);
                if let (Some(notice), Some(url)) = (&config.owner_pairing_notice, urls.first()) {
                    (notice.0)(url);
                }
                info!(
                    "no owner device yet: an owner pairing URL (valid {} minutes) was printed on stderr",
                    OWNER_CODE_TTL_SECS / 60
                );
            }
            Err(e) => tracing::warn!("cannot make an owner pairing code: {e}"),
        }
    }
    let stop = CancellationToken::new();
    let state = http::AppState::new(&config, store.clone(), stop.clone(), devices, auth);
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
    info!(addr = ?listening, database = %config.database.display(), "server listening");

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
    let accepting: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            tokio::spawn(conn::accept_loop(
                listener,
                app.clone(),
                limits,
                connections.clone(),
                stop.clone(),
                force.clone(),
            ))
        })
        .collect();
    stop.cancelled().await;
    // Runners reconnect at once to the next server on 1012.
    runners.close_all(
        omnigent_proto::runner_frames::close::SERVICE_RESTART,
        "service restart",
    );
    // The accept loop returns at `stop` (the listener closes); open connections finish their requests.
    for accepting in accepting {
        let _ = accepting.await;
    }
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

/// How long the owner pairing code printed at the first start of a deployed server lasts.
const OWNER_CODE_TTL_SECS: u64 = 3600;

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
