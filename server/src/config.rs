//! [`ServerConfig`]: everything the server needs to run, with its defaults and the environment overrides
//! `omnigent server run` reads.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use omnigent_proto::paths::Paths;

use crate::conn;
use crate::store::{DatabaseLocation, OpenError};

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
    /// Where [`crate::listen`] listens (default `127.0.0.1:6767`). A non-loopback address (`0.0.0.0`, a LAN
    /// address) is allowed: off loopback every request needs a device token. `omnigent server run --bind`.
    pub bind: Vec<SocketAddr>,
    /// The URL this server is reached at from outside (`https://omni.example.com`): its origin joins the
    /// `Origin` allow-list (for requests with a device token) and the `Host` allow-list, and pairing URLs use
    /// it. `omnigent server run --public-url`, `OMNIGENT_PUBLIC_URL`.
    pub public_url: Option<String>,
    /// `OMNIGENT_OWNER_TOKEN`: the owner device's token (the device is created or updated at start).
    pub owner_token: Option<Secret>,
    /// A loopback peer is the owner (true; tests set false to act as a peer from another machine).
    pub trust_loopback: bool,
    /// Told the owner pairing URL when the server listens off loopback and no owner device exists yet (once,
    /// at start). `omnigent server run` prints it on stderr (`owner pairing URL: …`). The URL carries a secret:
    /// never log it.
    pub owner_pairing_notice: Option<Notice>,
    /// The clock device and pairing-code expiries are judged by (the system's; tests move a
    /// [`crate::ManualClock`]).
    pub clock: crate::clock::Clock,
}

/// A secret value: `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A callback that is told one line of text (the owner pairing URL).
#[derive(Clone)]
pub struct Notice(pub Arc<dyn Fn(&str) + Send + Sync>);

impl Notice {
    pub fn new(f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Notice(Arc::new(f))
    }
}

impl std::fmt::Debug for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Notice")
    }
}

/// The default listening address.
pub const DEFAULT_BIND: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 6767);

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
            bind: vec![DEFAULT_BIND],
            public_url: None,
            owner_token: None,
            trust_loopback: true,
            owner_pairing_notice: None,
            clock: crate::clock::Clock::default(),
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
        if let Ok(url) = std::env::var("OMNIGENT_PUBLIC_URL")
            && !url.trim().is_empty()
        {
            config.public_url = Some(url.trim().to_owned());
        }
        if let Ok(token) = std::env::var("OMNIGENT_OWNER_TOKEN")
            && !token.trim().is_empty()
        {
            config.owner_token = Some(Secret(token.trim().to_owned()));
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
