//! `omnigent server run`: the server in the foreground; `omnigent server start|status|stop`: the local server
//! the daemon runs.
//!
//! Prints exactly one line on stdout once it accepts connections (the daemon reads it):
//! `{"ready":true,"url":"http://127.0.0.1:PORT","pid":PID,"database":"…"}`. Logs go to stderr.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, Result};
use omnigent_proto::paths::Paths;
use omnigent_server::ServerConfig;
use serde_json::json;

use crate::backend::{
    JsonArgs, StopArgs, client_err, connect_existing, connect_or_start, foreign_text, paths,
    print_json, print_server_block, runtime, state_word,
};
use crate::exit::ConfigError;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address(es) to listen on, comma-separated: 127.0.0.1 (the default), a LAN address, or 0.0.0.0 / ::
    /// for every interface. Off loopback every request needs a paired device (`omnigent share`); loopback
    /// is the owner.
    #[arg(long, env = "OMNIGENT_BIND", default_value = "127.0.0.1")]
    pub bind: String,
    /// The URL this server is reached at from other machines (`https://omni.example.com`): pairing URLs
    /// use it and its origin is allowed with a device token.
    #[arg(long, env = "OMNIGENT_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// TCP port (0 picks a free one; the ready line says which). Also read from `OMNIGENT_PORT`, else
    /// `PORT` (as container platforms set it).
    #[arg(long, env = "OMNIGENT_PORT", default_value_t = default_port())]
    pub port: u16,
    /// Database URL (`sqlite:///path/to/file.db`); default: omnigent.db in the data directory.
    #[arg(long, env = "OMNIGENT_DATABASE_URL")]
    pub database_url: Option<String>,
}

/// `PORT` when it holds a port number (container platforms set it), else 6767; `--port` and `OMNIGENT_PORT`
/// come first.
fn default_port() -> u16 {
    std::env::var("PORT")
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(6767)
}

pub fn run(args: Args) -> Result<()> {
    crate::logging::init_process();

    let ips = args
        .bind
        .split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .map(parse_bind)
        .collect::<Result<Vec<_>>>()?;
    let Some(&ip) = ips.first() else {
        return Err(ConfigError("--bind is empty; use 127.0.0.1 (the default)".to_owned()).into());
    };
    if let Some(url) = &args.public_url
        && omnigent_proto::credentials::origin(url).is_none()
    {
        return Err(ConfigError(format!(
            "--public-url {url:?} is not an http(s) URL; use e.g. https://omni.example.com"
        ))
        .into());
    }
    let paths = Paths::from_env()?;
    let mut config = ServerConfig::from_paths(&paths);
    if let Some(url) = &args.database_url {
        config = config
            .with_database_url(url)
            .map_err(|e| ConfigError(e.to_string()))?;
    }
    if let Some(url) = &args.public_url {
        config.public_url = Some(url.trim().to_owned());
    }
    // A deployed server's first owner pairs with this URL: it carries a secret, so it goes to stderr once
    // (where the operator reads it), never to a log line.
    config.owner_pairing_notice = Some(omnigent_server::Notice::new(|url| {
        eprintln!("owner pairing URL: {url}");
        eprintln!(
            "  open it in the owner's browser (single use, expires soon), or pair a CLI with `omnigent login`"
        );
    }));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let addr = SocketAddr::new(ip, args.port);
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                anyhow::anyhow!(
                    "port {} on {ip} is already in use by another program; pass --port <N> to use another \
                     port (or --port 0 for any free one), or stop the program listening on {}",
                    args.port,
                    args.port
                )
            } else {
                anyhow::anyhow!("cannot listen on {addr}: {e}")
            }
        })?;
        let local = listener.local_addr().context("cannot read the bound address")?;
        let mut listeners = vec![listener];
        // Every further address on the port the first one got (`--port 0` picks it once).
        for &other in &ips[1..] {
            let addr = SocketAddr::new(other, local.port());
            listeners.push(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?,
            );
        }
        let store = omnigent_server::open_store(&config)
            .await
            .map_err(|e| anyhow::anyhow!("the server cannot start: {e}"))?;
        // The ready line names a loopback address when there is one: the daemon and local tools are the
        // owner there.
        let shown = listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .map(ready_addr)
            .find(|a| a.ip().is_loopback())
            .unwrap_or(ready_addr(local));
        let ready = serde_json::json!({
            "ready": true,
            "url": format!("http://{shown}"),
            "pid": std::process::id(),
            "database": config.database.display(),
        });
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{ready}").context("cannot write the ready line on stdout")?;
        stdout.flush().context("cannot flush stdout")?;
        drop(stdout);
        omnigent_server::serve_all(config, store, listeners, shutdown_requested())
            .await
            .map_err(|e| anyhow::anyhow!("the server stopped with an error: {e}"))
    })
}

/// The `--bind` address. Any address is allowed: off loopback the server requires a device token on every
/// request (issue 13), so a LAN or wildcard bind serves nothing unauthenticated.
fn parse_bind(bind: &str) -> Result<IpAddr> {
    if bind.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    Ok(bind.trim_matches(['[', ']']).parse::<IpAddr>().map_err(|_| {
        ConfigError(format!(
            "--bind `{bind}` is not an IP address; use 127.0.0.1 (the default), a LAN address of this machine, \
             or 0.0.0.0 for every interface"
        ))
    })?)
}

/// The address the ready line names: a wildcard bind is reached on loopback by the daemon and local tools
/// (where they are the owner).
fn ready_addr(local: SocketAddr) -> SocketAddr {
    match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), local.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), local.port())
        }
        _ => local,
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C), whatever logging does: the server runs this future in a task of
/// its own, and a panic there would mean no shutdown at all.
async fn shutdown_requested() {
    crate::signals::stop_requested().await;
    // Logging is not expected to panic (see `run`); if it ever does in an unwinding build, the stop still goes
    // through (release builds use panic = "abort", where the process ends instead of hanging).
    let _ = std::panic::catch_unwind(|| tracing::info!("shutdown requested"));
}

pub fn start(args: JsonArgs) -> Result<()> {
    let paths = paths()?;
    runtime()?.block_on(async {
        let (mut client, _) = connect_or_start(&paths).await?;
        let server = client.server_start().await.map_err(client_err)?;
        if args.json {
            return print_json(&server);
        }
        match (&server.url, server.pid) {
            (Some(url), Some(pid)) => println!("Local server running at {url} (pid {pid})."),
            _ => println!("Local server: {}", state_word(server.state)),
        }
        if let Some(f) = &server.foreign {
            eprintln!("note: {}", foreign_text(f));
        }
        Ok(())
    })
}

pub fn status(args: JsonArgs) -> Result<()> {
    let paths = paths()?;
    runtime()?.block_on(async {
        let Some(mut client) = connect_existing(&paths).await? else {
            if args.json {
                return print_json(&json!({ "state": "stopped", "daemon_running": false }));
            }
            println!("Local server: not running (no daemon; start it with `omnigent start`)");
            return Ok(());
        };
        let server = client.server_status().await.map_err(client_err)?;
        if args.json {
            return print_json(&server);
        }
        print_server_block(&server, "Local server: ");
        Ok(())
    })
}

pub fn stop(args: StopArgs) -> Result<()> {
    let paths = paths()?;
    runtime()?.block_on(async {
        let Some(mut client) = connect_existing(&paths).await? else {
            if args.json {
                return print_json(&json!({ "stopped": false }));
            }
            println!("No local server is running.");
            return Ok(());
        };
        let before = client.server_status().await.map_err(client_err)?;
        let after = client.server_stop(args.force).await.map_err(client_err)?;
        let stopped = before.pid.is_some();
        if args.json {
            return print_json(&json!({ "stopped": stopped, "pid": before.pid, "server": after }));
        }
        match before.pid {
            Some(pid) => println!("Stopped the local server (pid {pid})."),
            None => println!("No local server is running."),
        }
        Ok(())
    })
}
