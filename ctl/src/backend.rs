//! What the commands that talk to the daemon share: their runtime, connecting to the daemon (or starting it),
//! stopping it, error mapping, and the status lines more than one command prints. Text for people on
//! stdout, decoration and progress on stderr; `--json` prints the documented schemas of docs/cli.md on
//! stdout.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, Result};
use omnigent_daemon::control::client::{ClientError, ControlClient};
use omnigent_daemon::runtime::launch::{self, Connected, LaunchError, StopError};
use omnigent_proto::control::{
    ChildState, ControlErrorCode, DaemonStatus, HelloReply, ServerStatus, TargetStatus,
};
use omnigent_proto::paths::Paths;

use crate::exit::ConfigError;

#[derive(Debug, clap::Args)]
pub struct JsonArgs {
    /// Print JSON (schema in docs/cli.md) instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// Do not wait for a graceful stop: SIGKILL children (and an unresponsive daemon) at once.
    #[arg(long)]
    pub(crate) force: bool,
    /// Print JSON (schema in docs/cli.md) instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    crate::logging::init_cli();
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub(crate) fn paths() -> Result<Paths> {
    Ok(Paths::from_env()?)
}

pub(crate) fn exe() -> Result<std::path::PathBuf> {
    std::env::current_exe().context("cannot find the omnigent executable to start the daemon")
}

pub(crate) fn progress(msg: &str) {
    if std::io::stderr().is_terminal() {
        eprintln!("{msg}");
    }
}

/// Map library errors to exit codes: environment/permission problems are configuration errors (78).
fn launch_err(e: LaunchError) -> anyhow::Error {
    if e.is_config() {
        ConfigError(e.to_string()).into()
    } else {
        e.into()
    }
}

pub(crate) fn client_err(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::RuntimeDir(_) => ConfigError(e.to_string()).into(),
        ClientError::Daemon { ref error, .. } if error.code == ControlErrorCode::ConfigFailed => {
            ConfigError(e.to_string()).into()
        }
        other => other.into(),
    }
}

/// Connect to a running daemon without starting one. `Ok(None)` when none runs.
pub(crate) async fn connect_existing(paths: &Paths) -> Result<Option<ControlClient>> {
    match ControlClient::connect(paths).await {
        Ok(client) => {
            warn_if_older(&client.daemon);
            Ok(Some(client))
        }
        Err(ClientError::NotRunning { .. }) => Ok(None),
        Err(ClientError::ProtocolMismatch { daemon, .. }) => {
            eprintln!(
                "the running daemon (pid {}, omnigent {}) speaks control protocol {}, this CLI speaks {}: \
                 restarting it",
                daemon.pid,
                daemon.build_version,
                daemon.protocol_version,
                omnigent_proto::CONTROL_PROTOCOL_VERSION
            );
            let (client, _) = launch::ensure_daemon(paths, &exe()?, &progress)
                .await
                .map_err(launch_err)?;
            Ok(Some(client))
        }
        Err(e) => Err(client_err(e)),
    }
}

/// Connect to the daemon, starting it if needed; says so on stderr when it replaced an incompatible one.
pub(crate) async fn connect_or_start(paths: &Paths) -> Result<(ControlClient, Connected)> {
    connect_or_start_with(paths, &[]).await
}

/// [`connect_or_start`], a daemon it starts getting `env` (`start --lan`).
pub(crate) async fn connect_or_start_with(
    paths: &Paths,
    env: &[(&str, &str)],
) -> Result<(ControlClient, Connected)> {
    // An enabled service starts its own daemon: the CLI never runs one beside it.
    crate::commands::service::start_if_service(paths).await?;
    let (client, how) = launch::ensure_daemon_with(paths, &exe()?, &progress, env)
        .await
        .map_err(launch_err)?;
    match &how {
        Connected::Replaced { old } => eprintln!(
            "the running daemon (pid {}, omnigent {}) spoke control protocol {}, this CLI speaks {}: stopped it \
             and started a new one",
            old.pid,
            old.build_version,
            old.protocol_version,
            omnigent_proto::CONTROL_PROTOCOL_VERSION
        ),
        Connected::Reused => warn_if_older(&client.daemon),
        Connected::Started => {}
    }
    Ok((client, how))
}

fn version_tuple(v: &str) -> Vec<u64> {
    v.split(['.', '-', '+'])
        .map_while(|p| p.parse().ok())
        .collect()
}

fn warn_if_older(daemon: &HelloReply) {
    if version_tuple(&daemon.build_version) < version_tuple(omnigent_proto::BUILD_VERSION) {
        eprintln!(
            "note: the running daemon is omnigent {}, older than this CLI ({}); run `omnigent restart` to use the \
             new version",
            daemon.build_version,
            omnigent_proto::BUILD_VERSION
        );
    }
}

pub(crate) fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// "online as 'laptop' (id …), 2 runner(s)" / "reconnecting (attempt 3): why".
pub(crate) fn host_line(t: &TargetStatus, st: &DaemonStatus) -> String {
    match t.tunnel.as_str() {
        "online" => format!(
            "online as '{}' ({}), {} runner(s)",
            st.config.host_name, st.config.host_id, t.runners
        ),
        other => {
            let mut line = other.to_owned();
            if t.attempt > 0 {
                line.push_str(&format!(" (attempt {})", t.attempt));
            }
            if let Some(e) = &t.last_error {
                line.push_str(&format!(": {e}"));
            }
            if let Some(w) = &t.warning {
                line.push_str(&format!(" [{w}]"));
            }
            line
        }
    }
}

/// Follow status until the target `url` is online or failed (or, with `first_answer`, its first dial
/// failed), or `wait` passes; returns its last state.
pub(crate) async fn wait_target(
    client: &mut ControlClient,
    url: &str,
    wait: Duration,
    first_answer: bool,
) -> Result<(TargetStatus, DaemonStatus)> {
    let url = url.trim_end_matches('/');
    let deadline = tokio::time::Instant::now() + wait;
    let mut st = client.status().await.map_err(client_err)?;
    loop {
        let target = st.targets.iter().find(|t| t.url == url).cloned();
        if let Some(t) = &target
            && (matches!(t.tunnel.as_str(), "online" | "failed")
                || (first_answer && t.tunnel == "reconnecting"))
        {
            return Ok((t.clone(), st));
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return match target {
                Some(t) => Ok((t, st)),
                None => anyhow::bail!("the daemon has no host target for {url}"),
            };
        }
        st = client
            .status_after(st.revision, left.as_millis() as u64)
            .await
            .map_err(client_err)?;
    }
}

/// Make sure the daemon and the local server run and this machine is online as a host of it; returns the
/// server URL and this host's id.
/// The local server's URL, starting the daemon and the server if needed (no host wait: for commands that only
/// read the server's API).
pub(crate) async fn local_server_url() -> Result<String> {
    let paths = paths()?;
    let (mut client, _) = connect_or_start(&paths).await?;
    let server = client.server_start().await.map_err(client_err)?;
    server
        .url
        .ok_or_else(|| anyhow::anyhow!("the local server runs but reports no URL"))
}

pub(crate) async fn ensure_local_host(wait: Duration) -> Result<(String, String)> {
    let paths = paths()?;
    let (mut client, _) = connect_or_start(&paths).await?;
    let server = client.server_start().await.map_err(client_err)?;
    let url = server
        .url
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the local server runs but reports no URL"))?;
    let (t, st) = wait_target(&mut client, &url, wait, false).await?;
    if t.tunnel != "online" {
        anyhow::bail!(
            "this machine is not online as a host of {url} after {}s: {}; see `omnigent logs daemon`",
            wait.as_secs(),
            host_line(&t, &st)
        );
    }
    Ok((url, st.config.host_id))
}

/// Register this machine as a host of the remote server `url` (a target of the daemon for as long as it
/// runs, not kept in config.toml) and wait until it is online; the daemon presents the token `omnigent
/// login URL` stored. A refused token ends in a [`ConfigError`] naming `omnigent login URL`.
pub(crate) async fn ensure_remote_host(url: &str, wait: Duration) -> Result<(String, String)> {
    let paths = paths()?;
    let (mut client, _) = connect_or_start(&paths).await?;
    client.add_target(url, false).await.map_err(client_err)?;
    let (t, st) = wait_target(&mut client, url, wait, false).await?;
    if t.tunnel != "online" {
        let message = format!(
            "this machine is not online as a host of {url} after {}s: {}",
            wait.as_secs(),
            host_line(&t, &st)
        );
        if t.tunnel == "failed" {
            return Err(ConfigError(message).into());
        }
        anyhow::bail!("{message}; see `omnigent logs daemon`");
    }
    Ok((url.to_owned(), st.config.host_id))
}

pub(crate) fn foreign_text(f: &omnigent_proto::control::ForeignListener) -> String {
    let who = match (f.pid, &f.command) {
        (Some(pid), Some(cmd)) => format!("pid {pid}: {cmd}"),
        (Some(pid), None) => format!("pid {pid}"),
        _ => "the OS does not say which process".to_owned(),
    };
    format!(
        "port {} is held by another program ({who}); the server uses a free port instead",
        f.port
    )
}

pub(crate) fn state_word(s: ChildState) -> &'static str {
    match s {
        ChildState::Stopped => "stopped",
        ChildState::Starting => "starting",
        ChildState::Running => "running",
        ChildState::Backoff => "restarting (backoff)",
        ChildState::Crashloop => "crash loop (not restarting; `omnigent server start` retries)",
        ChildState::Adopted => "running (adopted, not started by this daemon)",
        ChildState::Stopping => "stopping",
        ChildState::Unknown => "unknown",
    }
}

/// Stop everything; returns what was stopped. Waits for an in-progress start (the start lock) first, so a
/// `stop` racing a `start` always wins. The mechanics are the daemon crate's ([`launch::stop_daemon`]).
pub(crate) async fn stop_all(paths: &Paths, force: bool) -> Result<Vec<String>> {
    // A daemon the service runs is stopped through its supervisor, which would otherwise start it again.
    if let Some(stopped) = crate::commands::service::stop_if_service(paths).await? {
        return Ok(stopped);
    }
    launch::stop_daemon(paths, force, &|note| eprintln!("{note}"))
        .await
        .map_err(|e| match e {
            StopError::RuntimeDir(e) => ConfigError(e.to_string()).into(),
            StopError::Client(e) => client_err(e),
            StopError::StartLock(e) => e.into(),
            other => anyhow::anyhow!("{other}"),
        })
}

pub(crate) fn duration_text(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

pub(crate) fn print_runners(st: &DaemonStatus, label: &str) {
    let pad = " ".repeat(label.len());
    for r in &st.runners {
        println!(
            "{label}{} pid {} {}{}{}",
            r.id,
            r.pid.map_or("-".into(), |p| p.to_string()),
            match r.state {
                ChildState::Crashloop =>
                    "crash loop (not relaunched until its session launches it again)",
                ChildState::Stopped => "stopped",
                other => state_word(other),
            },
            r.session_id
                .as_ref()
                .map_or(String::new(), |s| format!(", session {s}")),
            if r.restarts > 0 {
                format!(", restarted {} time(s)", r.restarts)
            } else {
                String::new()
            },
        );
        if matches!(
            r.state,
            ChildState::Crashloop | ChildState::Backoff | ChildState::Stopped
        ) && !r.last_exits.is_empty()
        {
            let exits: Vec<String> = r
                .last_exits
                .iter()
                .map(|e| {
                    format!(
                        "{} after {}",
                        omnigent_daemon::supervise::process::exit_text(e.code, e.signal),
                        duration_text(e.uptime_ms)
                    )
                })
                .collect();
            println!("{pad}  last exits: {}", exits.join("; "));
            if !r.log_tail.is_empty() {
                println!("{pad}  last lines of {}:", r.log_file);
                for l in &r.log_tail {
                    println!("{pad}    {l}");
                }
            }
        }
    }
}

pub(crate) fn print_server_block(s: &ServerStatus, label: &str) {
    let pad = " ".repeat(label.len());
    match (&s.url, s.state) {
        (Some(url), ChildState::Running | ChildState::Adopted) => {
            let storage_failing = s.storage.as_ref().is_some_and(|st| !st.ok);
            let health = match s.healthy {
                Some(true) if storage_failing => "answering, but STORAGE IS FAILING",
                Some(true) => "healthy",
                Some(false) => "NOT answering",
                None => "health unknown",
            };
            println!(
                "{label}{} at {url}, pid {}, {health}",
                state_word(s.state),
                s.pid.map_or("?".into(), |p| p.to_string())
            );
            if let Some(bind) = &s.lan_bind {
                println!(
                    "{pad}listening on {bind} too (the LAN; devices pair with `omnigent share`)"
                );
            }
            if let Some(db) = &s.database {
                println!("{pad}database {db}");
            }
            if let Some(n) = s.session_count {
                println!("{pad}{n} session(s)");
            }
            if let Some(st) = s.storage.as_ref().filter(|st| !st.ok) {
                println!(
                    "{pad}storage failing: {}",
                    st.error.as_deref().unwrap_or("durable writes fail")
                );
                println!(
                    "{pad}  new messages and sessions are refused until it is fixed; the server recovers by itself"
                );
            }
        }
        _ => println!("{label}{}", state_word(s.state)),
    }
    if let Some(f) = &s.foreign {
        println!("{pad}{}", foreign_text(f));
    }
    if s.restarts > 0 {
        println!("{pad}restarted {} time(s)", s.restarts);
    }
    if matches!(
        s.state,
        ChildState::Backoff | ChildState::Crashloop | ChildState::Stopped
    ) {
        if let Some(e) = &s.last_error {
            println!("{pad}last error: {e}");
        }
        if !s.last_exits.is_empty() && s.state != ChildState::Stopped {
            let exits: Vec<String> = s
                .last_exits
                .iter()
                .map(|e| {
                    format!(
                        "{} after {}",
                        omnigent_daemon::supervise::process::exit_text(e.code, e.signal),
                        duration_text(e.uptime_ms)
                    )
                })
                .collect();
            println!("{pad}last exits: {}", exits.join("; "));
        }
        if !s.log_tail.is_empty() && s.state != ChildState::Stopped {
            println!("{pad}last lines of {}:", s.log_file);
            for l in &s.log_tail {
                println!("{pad}  {l}");
            }
        }
    }
}

/// This machine's non-loopback IP addresses (what a LAN URL can name), IPv4 first.
pub(crate) fn lan_addresses() -> Vec<std::net::IpAddr> {
    let mut out: Vec<std::net::IpAddr> = match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => addrs
            .filter_map(|a| {
                let addr = a.address?;
                if let Some(v4) = addr.as_sockaddr_in() {
                    return Some(std::net::IpAddr::V4(v4.ip()));
                }
                let v6 = addr.as_sockaddr_in6()?;
                // Link-local needs a scope id in a URL: not worth printing.
                (v6.ip().segments()[0] & 0xffc0 != 0xfe80).then(|| std::net::IpAddr::V6(v6.ip()))
            })
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort_by_key(|ip| (ip.is_ipv6(), *ip));
    out.dedup();
    out
}

/// `ip:port`, with brackets for IPv6.
pub(crate) fn host_port(ip: std::net::IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}
