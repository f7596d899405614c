//! `omnigent host [URL] [--background]`, `omnigent host status [--json]`, `omnigent host stop [URL]`
//! (reference host §7).
//!
//! In the foreground with no daemon running, `omnigent host` *is* the daemon (the control socket, the lock,
//! the runners as its children) with this one target, and Ctrl-C stops it all. With a daemon running, it adds
//! the target to that daemon, follows its state, and removes it again on Ctrl-C; neither writes config.toml.
//! `--background` has the daemon keep the target in config.toml (so every later start restores it) and
//! returns once the host is online, or fails within 15 s with the cause and the daemon log tail, leaving
//! nothing behind. `host stop URL` removes it from config.toml again.

use std::time::Duration;

use anyhow::{Result, anyhow};
use omnigent_daemon::client::ControlClient;
use omnigent_daemon::launch::Connected;
use omnigent_daemon::{ControlListener, DaemonConfig};
use omnigent_proto::control::DaemonStatus;
use omnigent_proto::paths::Paths;
use serde_json::json;

use crate::backend::{self, client_err, host_line, print_json, wait_target};
use crate::exit::ConfigError;

/// How long `--background` waits for the host to come online …
const BACKGROUND_WAIT: Duration = Duration::from_secs(15);
/// … unless this variable (milliseconds) says otherwise (slow links; tests).
const WAIT_ENV: &str = "OMNIGENT_HOST_ONLINE_TIMEOUT_MS";

fn background_wait() -> Duration {
    std::env::var(WAIT_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map_or(BACKGROUND_WAIT, Duration::from_millis)
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct HostArgs {
    #[command(subcommand)]
    command: Option<HostCommand>,
    /// The server to register this machine with: http(s)://host[:port]. Omitted or `local`: the local server.
    url: Option<String>,
    /// Hand the host to the daemon and return once it is online.
    #[arg(long)]
    background: bool,
}

#[derive(Debug, clap::Subcommand)]
enum HostCommand {
    /// Show this host's identity, its targets (servers) and runners.
    Status(StatusArgs),
    /// Stop hosting URL (its runners are stopped); without URL, stop the daemon and everything it runs.
    Stop(StopArgs),
    /// Run this host as a service of the init system (a systemd user unit, a launchd agent), hosting the
    /// targets in config.toml (URLs given here are added there first), and verify it comes up.
    Enable(crate::commands::service::EnableArgs),
    /// Stop the service and remove what `enable` installed (a unit edited since is kept and named).
    Disable(crate::commands::service::DisableArgs),
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// Print JSON (schema in docs/cli.md) instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct StopArgs {
    /// The target to stop hosting.
    url: Option<String>,
    /// Print JSON (schema in docs/cli.md) instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: HostArgs) -> Result<()> {
    match args.command {
        Some(HostCommand::Status(a)) => status(a),
        Some(HostCommand::Stop(a)) => stop(a),
        Some(HostCommand::Enable(a)) => crate::commands::service::enable(a),
        Some(HostCommand::Disable(a)) => crate::commands::service::disable(a),
        None => {
            let remote = match args.url.as_deref().map(str::trim) {
                None | Some("" | "local") => None,
                Some(url) => Some(check_url(url)?),
            };
            if args.background {
                backend::runtime()?.block_on(background(remote))
            } else {
                foreground(remote)
            }
        }
    }
}

pub(crate) fn check_url(url: &str) -> Result<String> {
    let ok = ["http://", "https://", "ws://", "wss://"]
        .iter()
        .any(|p| url.starts_with(p) && url.len() > p.len());
    if !ok {
        return Err(ConfigError(format!(
            "{url:?} is not a server URL; use http(s)://host[:port][/prefix], or `local`"
        ))
        .into());
    }
    Ok(url.trim_end_matches('/').to_owned())
}

fn daemon_log_tail(paths: &Paths) -> String {
    let path = paths.logs_dir().join("daemon.log");
    let tail = omnigent_daemon::logfile::tail_lines(&path, 15);
    if tail.is_empty() {
        String::new()
    } else {
        format!("\nlast lines of {}:\n{}", path.display(), tail.join("\n"))
    }
}

async fn background(remote: Option<String>) -> Result<()> {
    let paths = backend::paths()?;
    let (mut client, how) = backend::connect_or_start(&paths).await?;
    // Whether config.toml kept the target before (read from the file: a daemon that just started may not
    // have applied it yet): a failed start must not drop what was there.
    let mut kept_before = false;
    let url = match &remote {
        Some(url) => {
            kept_before = omnigent_daemon::config::load(&paths.config_file()).is_ok_and(|c| {
                c.targets
                    .iter()
                    .any(|t| omnigent_daemon::config::normalize_url(&t.url) == *url)
            });
            match client.add_target(url, true).await {
                Ok(t) if !t.persistent => eprintln!(
                    "note: the running daemon (omnigent {}) does not keep targets in config.toml, so this one \
                     lasts until it stops; `omnigent restart` runs this version",
                    client.daemon.build_version
                ),
                Ok(_) => {}
                Err(e) => {
                    // Nothing was started; a daemon started for this goes too.
                    if how != Connected::Reused {
                        drop(client);
                        let _ = backend::stop_all(&paths, false).await;
                    }
                    return Err(client_err(e));
                }
            }
            url.clone()
        }
        None => {
            let server = client.server_start().await.map_err(client_err)?;
            server
                .url
                .ok_or_else(|| anyhow!("the local server runs but reports no URL"))?
        }
    };
    let wait = background_wait();
    let (t, st) = wait_target(&mut client, &url, wait, false).await?;
    if t.tunnel == "online" {
        println!(
            "Host online: {url} as '{}' ({}).",
            st.config.host_name, st.config.host_id
        );
        if t.persistent && remote.is_some() {
            println!(
                "  config: kept in {} (back online at every start)",
                st.config.path
            );
        }
        println!("  log:    {}", st.logs.daemon);
        println!(
            "Stop it with:\n  omnigent host stop{}",
            remote.as_ref().map_or(String::new(), |u| format!(" {u}"))
        );
        return Ok(());
    }
    // Never leave a half-started host behind: drop the target (and what this call wrote to config.toml),
    // and the daemon if we started it for this.
    let why = host_line(&t, &st);
    if remote.is_some() {
        let _ = client.remove_target(&url, !kept_before).await;
    }
    if how != Connected::Reused {
        drop(client);
        let _ = backend::stop_all(&paths, false).await;
    }
    let message = format!(
        "the host did not come online with {url} within {:.1}s: {why}{}",
        wait.as_secs_f64(),
        daemon_log_tail(&paths)
    );
    if t.tunnel == "failed" {
        Err(ConfigError(message).into())
    } else {
        Err(anyhow!(message))
    }
}

/// Follow the target until Ctrl-C (`Ok(true)`), or until it is removed by someone else (`Ok(false)`); a
/// tunnel that gives up is an error (exit 78).
async fn follow(client: &mut ControlClient, url: &str) -> Result<bool> {
    let mut sigint =
        crate::signals::interrupts().map_err(|e| anyhow!("cannot listen for Ctrl-C: {e}"))?;
    let mut st = client.status().await.map_err(client_err)?;
    println!(
        "Connecting to {url} as '{}' ({})",
        st.config.host_name, st.config.host_id
    );
    println!("This host's log: {}", st.logs.daemon);
    let mut last = String::new();
    let mut seen = false;
    loop {
        let target = st.targets.iter().find(|t| t.url == url).cloned();
        match &target {
            Some(t) => {
                seen = true;
                let line = match t.tunnel.as_str() {
                    "online" => format!(
                        "✓ Connected as '{}' ({}), {} live runner(s). Listening for sessions — Ctrl-C to disconnect.",
                        st.config.host_name, st.config.host_id, t.runners
                    ),
                    "failed" => {
                        return Err(ConfigError(format!(
                            "the host gave up on {url}: {}",
                            t.last_error.as_deref().unwrap_or("unknown error")
                        ))
                        .into());
                    }
                    "connecting" => String::new(),
                    _ => format!("… {}", host_line(t, &st)),
                };
                // One line per state, not per runner count change while online.
                let key = format!("{}:{}", t.tunnel, t.attempt);
                if key != last && !line.is_empty() {
                    println!("{line}");
                }
                last = key;
            }
            None if seen => {
                println!("The host target {url} was removed (`omnigent host stop`).");
                return Ok(false);
            }
            None => {}
        }
        let next = tokio::select! {
            next = client.status_after(st.revision, 30_000) => next.map_err(client_err)?,
            _ = sigint.recv() => return Ok(true),
        };
        st = next;
    }
}

/// Foreground: follow through a running daemon, or be the daemon.
fn foreground(remote: Option<String>) -> Result<()> {
    let paths = backend::paths()?;
    // The client's connection lives on the runtime it was opened on: follow on that same one.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match rt.block_on(backend::connect_existing(&paths))? {
        Some(client) => {
            crate::logging::init_cli();
            rt.block_on(through_daemon(client, remote, &paths))
        }
        None => {
            drop(rt);
            be_the_daemon(remote, paths)
        }
    }
}

async fn target_url(client: &mut ControlClient, remote: &Option<String>) -> Result<String> {
    match remote {
        Some(url) => {
            // For as long as this command runs: never written to config.toml.
            client.add_target(url, false).await.map_err(client_err)?;
            Ok(url.clone())
        }
        None => {
            let server = client.server_start().await.map_err(client_err)?;
            server
                .url
                .ok_or_else(|| anyhow!("the local server runs but reports no URL"))
        }
    }
}

async fn through_daemon(
    mut client: ControlClient,
    remote: Option<String>,
    paths: &Paths,
) -> Result<()> {
    let url = target_url(&mut client, &remote).await?;
    let result = follow(&mut client, &url).await;
    // Ctrl-C or a fatal error: a target this command added goes away again (the follow call may have been
    // cut mid-request, so on a fresh connection).
    if remote.is_some() {
        let mut fresh = ControlClient::connect(paths).await.map_err(client_err)?;
        // A target kept in config.toml (`--background`) stays: only `host stop URL` removes it there.
        let reply = fresh.remove_target(&url, false).await.map_err(client_err)?;
        if reply.removed {
            println!(
                "Disconnected from {url}; stopped {} runner(s).",
                reply.runners_stopped
            );
        } else if matches!(result, Ok(true)) {
            let st = fresh.status().await.map_err(client_err)?;
            if st.targets.iter().any(|t| t.url == url && t.persistent) {
                println!(
                    "{url} stays hosted: it is kept in {} (`omnigent host stop {url}` removes it).",
                    st.config.path
                );
            }
        }
    }
    result.map(|_| ())
}

/// No daemon runs: this process is the daemon, with this one target (and the local server when it is the
/// local target), until Ctrl-C.
fn be_the_daemon(remote: Option<String>, paths: Paths) -> Result<()> {
    let exe =
        std::env::current_exe().map_err(|e| anyhow!("cannot find the omnigent executable: {e}"))?;
    // Single-threaded like `daemon run`: children get PR_SET_PDEATHSIG from the thread that lives as long
    // as the daemon.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let set_level = crate::logging::init_daemon(&paths, false)?;
        let mut listener = ControlListener::bind(&paths).map_err(|e| anyhow!("{e}"))?;
        std::mem::forget(listener.take_lock());
        let mut config =
            omnigent_daemon::load_config(&paths).map_err(|e| ConfigError(e.to_string()))?;
        if remote.is_some() {
            // A remote host needs no local server.
            config.server.autostart = Some(false);
        }
        let daemon_config = DaemonConfig {
            exe,
            paths: paths.clone(),
            config,
            started_by: "host".to_owned(),
            policy: Default::default(),
            on_log_level: Some(set_level),
            tunnel_timings: super::daemon::tunnel_timings_from_env(),
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let daemon = tokio::spawn(omnigent_daemon::run(daemon_config, listener, async move {
            let _ = stop_rx.await;
        }));
        let mut client = ControlClient::connect(&paths).await.map_err(client_err)?;
        let result = async {
            let url = target_url(&mut client, &remote).await?;
            follow(&mut client, &url).await
        }
        .await;
        eprintln!("Stopping the host (runners first)…");
        let _ = stop_tx.send(());
        match daemon.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("error: the daemon failed: {e}"),
            Err(e) => eprintln!("error: the daemon task failed: {e}"),
        }
        result.map(|_| ())
    })
}

fn status(args: StatusArgs) -> Result<()> {
    let paths = backend::paths()?;
    backend::runtime()?.block_on(async {
        let Some(mut client) = backend::connect_existing(&paths).await? else {
            let service = crate::commands::service::status_section(&paths, None);
            if args.json {
                return print_json(
                    &json!({ "running": false, "targets": [], "runners": [], "service": service }),
                );
            }
            println!(
                "No host daemon running (start one with `omnigent host` or `omnigent start`)."
            );
            crate::commands::service::print_status(&service);
            return Ok(());
        };
        let st = client.status().await.map_err(client_err)?;
        let service = crate::commands::service::status_section(&paths, Some(&st));
        if args.json {
            return print_json(&json!({
                "running": true,
                "host_id": st.config.host_id,
                "name": st.config.host_name,
                "daemon_pid": st.daemon.pid,
                "server_bind": st.server.bind,
                "targets": st.targets,
                "runners": st.runners,
                "harnesses": st.harnesses,
                "service": service,
            }));
        }
        print_host(&st);
        crate::commands::service::print_status(&service);
        Ok(())
    })
}

fn print_host(st: &DaemonStatus) {
    println!(
        "host     '{}' ({}), daemon pid {}",
        st.config.host_name, st.config.host_id, st.daemon.pid
    );
    if let Some(bind) = &st.server.bind {
        let lan = if st.server.lan_bind.is_some() {
            " (the LAN too: other devices pair with `omnigent share`)"
        } else {
            " (loopback only; `omnigent host enable --lan` or `omnigent start --lan` serves the LAN)"
        };
        println!("server   local server bound to {bind}{lan}");
    }
    if st.targets.is_empty() {
        println!("targets  none (`omnigent host URL` or `omnigent start` adds one)");
    }
    for t in &st.targets {
        let kind = if t.local { "local" } else { "remote" };
        println!("target   {} ({kind}): {}", t.url, host_line(t, st));
    }
    if st.runners.is_empty() {
        println!("runners  none");
    }
    backend::print_runners(st, "runner   ");
    for h in &st.harnesses {
        let state = match &h.configured {
            serde_json::Value::Bool(true) => "ready".to_owned(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let mut line = format!("harness  {:<10} {state}", h.name);
        if let Some(version) = &h.version {
            line.push_str(&format!(", {version}"));
        }
        if let Some(binary) = &h.binary {
            line.push_str(&format!(" at {binary}"));
        }
        if let Some(hint) = &h.hint {
            line.push_str(&format!(" ({hint})"));
        }
        println!("{line}");
    }
    println!("log      {}", st.logs.daemon);
}

fn stop(args: StopArgs) -> Result<()> {
    let paths = backend::paths()?;
    backend::runtime()?.block_on(async {
        let Some(url) = args.url.as_deref() else {
            let stopped = backend::stop_all(&paths, false).await?;
            if args.json {
                return print_json(&json!({ "stopped": stopped }));
            }
            if stopped.is_empty() {
                println!("No host daemon running.");
            } else {
                println!("Stopped {}.", stopped.join(", "));
            }
            return Ok(());
        };
        let url = check_url(url)?;
        let config_path = paths.config_file();
        let Some(mut client) = backend::connect_existing(&paths).await? else {
            // No daemon to stop it, but it must not come back at the next start.
            let edited = omnigent_daemon::config::remove_target(&config_path, &url)
                .map_err(|e| ConfigError(e.to_string()))?;
            if args.json {
                return print_json(&json!({
                    "removed": false,
                    "runners_stopped": 0,
                    "removed_from_config": edited.changed,
                }));
            }
            if edited.changed {
                println!(
                    "No host daemon running; removed {url} from {}.",
                    config_path.display()
                );
            } else {
                println!("No host daemon running.");
            }
            return Ok(());
        };
        let reply = client.remove_target(&url, true).await.map_err(client_err)?;
        if args.json {
            return print_json(&reply);
        }
        let config = config_path.display();
        match (reply.removed, reply.removed_from_config) {
            (true, true) => println!(
                "Stopped hosting {url} and removed it from {config}; stopped {} runner(s).",
                reply.runners_stopped
            ),
            (true, false) => println!(
                "Stopped hosting {url}; stopped {} runner(s).",
                reply.runners_stopped
            ),
            (false, true) => println!("Removed {url} from {config} (it was not being hosted)."),
            (false, false) => println!("Not hosting {url}."),
        }
        Ok(())
    })
}
