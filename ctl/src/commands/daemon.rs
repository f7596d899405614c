//! The daemon's lifecycle: `omnigent start`, `stop`, `restart`, `status`, and `omnigent daemon run
//! [--foreground]`, the per-user daemon in this process.
//!
//! Without `--foreground` it detaches from whatever started it (new session, cwd /; the spawning CLI already
//! gave it /dev/null for stdin) and logs only to `daemon.log`. When spawned by a CLI it reports `ready` or
//! `failed: why` on its stdout pipe; under systemd (`NOTIFY_SOCKET`) it sends `READY=1`. SIGTERM and SIGINT
//! stop its children in order, then it exits 0.

use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use omnigent_daemon::runtime::LockError;
use omnigent_daemon::runtime::launch::Connected;
use omnigent_daemon::{ControlListener, DaemonConfig, DaemonError};
use omnigent_proto::control::{self as ctl, DaemonStatus, ServerStatus};
use omnigent_proto::paths::Paths;
use serde_json::json;

use crate::backend::{
    JsonArgs, StopArgs, client_err, connect_existing, duration_text, foreign_text, host_line,
    paths, print_json, print_runners, print_server_block, runtime, state_word, stop_all,
    wait_target,
};
use crate::exit::ConfigError;
use crate::signals::StopSignals;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Stay attached to the terminal and log to stderr too (for a terminal, systemd or launchd).
    #[arg(long)]
    foreground: bool,
}

pub fn run(args: RunArgs) -> Result<()> {
    let notify_pipe = std::env::var(ctl::NOTIFY_ENV).is_ok_and(|v| v == ctl::NOTIFY_STDOUT);
    let systemd = std::env::var_os("NOTIFY_SOCKET").is_some();
    let supervisor = omnigent_daemon::service::supervisor::started_by_supervisor(
        &omnigent_daemon::service::current_env(),
    );
    let started_by = if let Some(init) = supervisor {
        init.name().to_owned()
    } else if systemd {
        "systemd".to_owned()
    } else if notify_pipe {
        std::env::var(ctl::STARTED_BY_ENV).unwrap_or_else(|_| "cli".to_owned())
    } else if args.foreground {
        "foreground".to_owned()
    } else {
        "manual".to_owned()
    };
    close_inherited_fds();
    if !args.foreground {
        // A new session: no controlling terminal, no SIGHUP when the spawning shell exits. Fails only when we
        // already lead a group (then we are detached enough).
        let _ = nix::unistd::setsid();
        let _ = std::env::set_current_dir("/");
    }
    let result = run_inner(&args, started_by, notify_pipe, systemd);
    if let Err(err) = &result {
        tracing::error!("daemon failed: {err:#}");
        notify(
            notify_pipe,
            &format!(
                "{}{}",
                ctl::NOTIFY_FAILED_PREFIX,
                one_line(&format!("{err:#}"))
            ),
        );
    }
    // launchd restarts any non-zero exit (`KeepAlive {SuccessfulExit = false}`): a configuration error (78)
    // exits 0 there, so the agent stays loaded but stopped instead of looping (systemd has
    // `RestartPreventExitStatus=78`).
    if supervisor == Some(omnigent_daemon::service::Init::Launchd)
        && let Err(e) = &result
        && e.is::<ConfigError>()
    {
        // Shown as any error is (launchd keeps stderr in the logs dir), only the exit status differs.
        let _ = crate::exit::report(e);
        return Ok(());
    }
    result
}

fn run_inner(args: &RunArgs, started_by: String, notify_pipe: bool, systemd: bool) -> Result<()> {
    let paths = Paths::from_env()?;
    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("cannot find the omnigent executable: {e}"))?;
    // The daemon is single-threaded: small, and every child is spawned from this thread, which lives as long
    // as the daemon (PR_SET_PDEATHSIG fires when the spawning *thread* exits).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let set_level = crate::logging::init_daemon(&paths, args.foreground)?;
        let mut listener = ControlListener::bind(&paths).map_err(classify)?;
        listener.set_limits(control_limits_from_env());
        // Held until the process exits (the kernel releases it then), not until `run` returns: `omnigent stop`
        // waits for the lock to be free as the sign that this process is gone.
        std::mem::forget(listener.take_lock());
        let config =
            omnigent_daemon::load_config(&paths).map_err(|e| ConfigError(e.to_string()))?;
        let daemon_config = DaemonConfig {
            exe,
            paths: paths.clone(),
            config,
            started_by,
            policy: Default::default(),
            on_log_level: Some(set_level),
            tunnel_timings: tunnel_timings_from_env(),
        };
        // Listen for SIGTERM/SIGINT before saying ready, so a stop right after ready is graceful too.
        let signals = StopSignals::listen();
        notify(notify_pipe, ctl::NOTIFY_READY);
        if systemd {
            sd_notify("READY=1");
        }
        let shutdown = async move {
            match signals {
                Ok(mut signals) => {
                    let which = signals.recv().await;
                    tracing::info!("{which} received");
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM/SIGINT; stop the daemon with `omnigent stop`");
                    std::future::pending::<()>().await;
                }
            }
            if systemd {
                sd_notify("STOPPING=1");
            }
        };
        omnigent_daemon::run(daemon_config, listener, shutdown)
            .await
            .map_err(classify)
    })
}

/// Permission and config problems exit 78; the rest exit 1.
fn classify(e: DaemonError) -> anyhow::Error {
    match e {
        DaemonError::RuntimeDir(_) | DaemonError::Config(_) => ConfigError(e.to_string()).into(),
        DaemonError::Lock(LockError::Held { .. }) => {
            anyhow::anyhow!("{e}; use `omnigent status` to see it")
        }
        other => other.into(),
    }
}

/// Close every file descriptor above stderr that we inherited (a shell's or CI runner's pipes): a daemon that
/// lives on must not keep its starter's pipes open, or whoever waits for their EOF waits forever.
#[allow(unsafe_code)]
fn close_inherited_fds() {
    let dir = if std::path::Path::new("/proc/self/fd").exists() {
        "/proc/self/fd"
    } else {
        "/dev/fd"
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let fds: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: this runs first thing in `daemon run`, single-threaded, before this process opens any file:
        // every fd above 2 is either inherited (no Rust object owns it) or the already-closed directory handle
        // of the listing above (then close fails with EBADF, harmlessly).
        unsafe {
            nix::libc::close(fd);
        }
    }
}

fn one_line(s: &str) -> String {
    s.replace('\n', "; ")
}

/// Tell the spawning CLI (one line on the stdout pipe), then stop using stdout.
fn notify(enabled: bool, line: &str) {
    if !enabled {
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// systemd's readiness protocol: one datagram to `$NOTIFY_SOCKET` (a path, or `@name` in the abstract
/// namespace).
fn sd_notify(state: &str) {
    let Some(addr) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = addr.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        send_abstract(&sock, name, state)
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(&addr))
            .map(|_| ())
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

#[cfg(target_os = "linux")]
fn send_abstract(
    sock: &std::os::unix::net::UnixDatagram,
    name: &[u8],
    state: &str,
) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sock.send_to_addr(state.as_bytes(), &addr).map(|_| ())
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_: &std::os::unix::net::UnixDatagram, _: &[u8], _: &str) -> std::io::Result<()> {
    Err(std::io::Error::other(
        "abstract sockets exist only on Linux",
    ))
}

/// Test/tuning knob: the host tunnel's dead-peer limit in ms (default 90 s), read once at daemon start.
pub(crate) const LIVENESS_ENV: &str = "OMNIGENT_TUNNEL_LIVENESS_MS";

/// The host tunnel timings, with `OMNIGENT_TUNNEL_LIVENESS_MS` (when a positive number of ms) as the liveness
/// limit; the WebSocket ping interval shrinks to a third of it so a healthy but quiet server is never dropped.
pub(crate) fn tunnel_timings_from_env() -> omnigent_daemon::host_tunnel::HostTunnelTimings {
    let mut t = omnigent_daemon::host_tunnel::HostTunnelTimings::default();
    let ms = std::env::var(LIVENESS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0);
    if let Some(ms) = ms {
        let limit = std::time::Duration::from_millis(ms);
        t.liveness_timeout = limit;
        t.ws_ping_interval = t.ws_ping_interval.min(limit / 3);
    }
    t
}

/// Test/tuning knob: the control socket's idle, header and body timeouts in ms (default 30 s / 10 s / 10 s),
/// all set to this value, read once at daemon start.
pub(crate) const CONTROL_TIMEOUT_ENV: &str = "OMNIGENT_CONTROL_TIMEOUT_MS";
/// Test/tuning knob: how many control connections may be open at once (default 64).
pub(crate) const CONTROL_MAX_CONNECTIONS_ENV: &str = "OMNIGENT_CONTROL_MAX_CONNECTIONS";

/// The control socket's limits, with the two knobs above applied when they are positive numbers.
pub(crate) fn control_limits_from_env() -> omnigent_daemon::ControlLimits {
    let mut limits = omnigent_daemon::ControlLimits::default();
    let positive = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|n| *n > 0)
    };
    if let Some(ms) = positive(CONTROL_TIMEOUT_ENV) {
        let t = std::time::Duration::from_millis(ms);
        limits.idle_timeout = t;
        limits.header_timeout = t;
        limits.body_timeout = t;
    }
    if let Some(n) = positive(CONTROL_MAX_CONNECTIONS_ENV) {
        limits.max_connections = usize::try_from(n).unwrap_or(usize::MAX);
    }
    limits
}

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Address the local server listens on (default 127.0.0.1), kept in config.toml (`server.bind`) for every
    /// later start, the service's too. Off loopback every request needs a paired device (`omnigent share`).
    #[arg(long, conflicts_with = "lan")]
    pub(crate) bind: Option<String>,
    /// Serve the LAN too: the local server listens on every interface (0.0.0.0), kept in config.toml
    /// (`server.bind`) for every later start; this machine stays the owner on loopback, other devices pair
    /// with `omnigent share`. `--bind 127.0.0.1` goes back to loopback only.
    #[arg(long)]
    pub(crate) lan: bool,
    /// Print JSON (schema in docs/cli.md) instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// What `--lan` / `--bind` ask of `server.bind`: `None` when neither is given (config.toml decides),
/// `Some(None)` for loopback only, `Some(Some(bind))` otherwise.
fn check_bind(args: &StartArgs) -> Result<Option<Option<String>>> {
    if args.lan {
        return Ok(Some(Some(omnigent_daemon::config::LAN_BIND.to_owned())));
    }
    let Some(bind) = args.bind.as_deref().map(str::trim) else {
        return Ok(None);
    };
    if omnigent_daemon::config::is_loopback_bind(bind) {
        return Ok(Some(None));
    }
    omnigent_daemon::config::check_bind(bind)
        .map_err(|why| ConfigError(format!("--bind {why}")))?;
    Ok(Some(Some(bind.to_owned())))
}

/// Keep what `--lan` / `--bind` ask in config.toml's `server.bind` (nothing without either flag); returns
/// the non-loopback bind the server should have, or `None` for loopback only, when a flag was given.
pub(crate) fn persist_bind(
    paths: &omnigent_proto::paths::Paths,
    wanted: Option<Option<String>>,
) -> Result<Option<Option<String>>> {
    if let Some(bind) = &wanted {
        omnigent_daemon::config::set_server_bind(&paths.config_file(), bind.as_deref()).map_err(
            |e| ConfigError(format!("cannot keep the server's bind in config.toml: {e}")),
        )?;
    }
    Ok(wanted)
}

pub fn start(args: StartArgs) -> Result<()> {
    let wanted = check_bind(&args)?;
    let paths = paths()?;
    let wanted = persist_bind(&paths, wanted)?;
    runtime()?.block_on(async {
        let (mut client, how) = crate::backend::connect_or_start(&paths).await?;
        let server = client.server_start().await.map_err(client_err)?;
        if let Some(lan) = &wanted
            && server.lan_bind != *lan
        {
            return Err(ConfigError(format!(
                "the running daemon's server listens on {}; {} is kept in {} for the next start: run \
                 `omnigent restart {}` to apply it now",
                server.bind.as_deref().unwrap_or("127.0.0.1"),
                lan.as_deref().unwrap_or("127.0.0.1"),
                paths.config_file().display(),
                if args.lan {
                    "--lan".to_owned()
                } else {
                    format!("--bind {}", args.bind.as_deref().unwrap_or("127.0.0.1"))
                }
            ))
            .into());
        }
        let daemon_pid = client.daemon.pid;
        // This machine registers itself with the local server as a host; say how that went (never fatal:
        // the server is up either way, and the tunnel keeps retrying).
        let host = match &server.url {
            Some(url) => wait_target(&mut client, url, START_HOST_WAIT, true)
                .await
                .ok(),
            None => None,
        };
        if args.json {
            return print_json(&json!({
                "daemon": {
                    "pid": daemon_pid,
                    "version": client.daemon.build_version,
                    "started": how != Connected::Reused,
                },
                "server": server,
                "host": host.as_ref().map(|(t, _)| t),
            }));
        }
        match how {
            Connected::Reused => println!("omnigent is running (daemon pid {daemon_pid})."),
            _ => println!("Started omnigent (daemon pid {daemon_pid})."),
        }
        print_server_lines(&server);
        if server.lan_bind.is_some()
            && let Some(port) = server.port
        {
            for ip in crate::backend::lan_addresses() {
                println!("  lan:    http://{} (pair a device: `omnigent share`)", crate::backend::host_port(ip, port));
            }
        }
        if let Some((t, st)) = &host {
            println!("  host:   {}", host_line(t, st));
        }
        println!("  logs:   {}", paths.logs_dir().display());
        println!("Stop it with:\n  omnigent stop");
        Ok(())
    })
}

/// How long `start` waits for the host to be online with the local server before reporting its state.
const START_HOST_WAIT: Duration = Duration::from_secs(5);

fn print_server_lines(s: &ServerStatus) {
    match (&s.url, s.pid) {
        (Some(url), Some(pid)) => println!("  server: {url} (pid {pid})"),
        (Some(url), None) => println!("  server: {url}"),
        _ => println!("  server: {}", state_word(s.state)),
    }
    if let Some(f) = &s.foreign {
        eprintln!("note: {}", foreign_text(f));
    }
}

pub fn stop(args: StopArgs) -> Result<()> {
    let paths = paths()?;
    runtime()?.block_on(async {
        let stopped = stop_all(&paths, args.force).await?;
        if args.json {
            return print_json(&json!({ "stopped": stopped }));
        }
        if stopped.is_empty() {
            println!("Nothing to stop.");
        } else {
            println!("Stopped {}.", stopped.join(", "));
        }
        Ok(())
    })
}

pub fn restart(args: StartArgs) -> Result<()> {
    check_bind(&args)?;
    let paths = paths()?;
    if runtime()?.block_on(crate::commands::service::restart_if_service(&paths))? {
        return start(args);
    }
    let stopped = runtime()?.block_on(stop_all(&paths, false))?;
    if !stopped.is_empty() && !args.json {
        println!("Stopped {}.", stopped.join(", "));
    }
    start(args)
}

pub fn status(args: JsonArgs) -> Result<()> {
    let paths = paths()?;
    runtime()?.block_on(async {
        let Some(mut client) = connect_existing(&paths).await? else {
            if args.json {
                return print_json(&json!({ "running": false }));
            }
            println!("omnigent daemon: not running (start it with `omnigent start`)");
            return Ok(());
        };
        let status = client.status().await.map_err(client_err)?;
        if args.json {
            let mut v = serde_json::to_value(&status)?;
            if let Some(obj) = v.as_object_mut() {
                obj.insert("running".into(), true.into());
            }
            return print_json(&v);
        }
        print_status(&status);
        Ok(())
    })
}

fn print_status(st: &DaemonStatus) {
    let d = &st.daemon;
    println!(
        "daemon   running, pid {}, omnigent {} (protocol {}), up {}, started by {}",
        d.pid,
        d.version,
        d.protocol_version,
        duration_text(d.uptime_ms),
        d.started_by
    );
    print_server_block(&st.server, "server   ");
    if st.targets.is_empty() {
        println!("targets  none");
    }
    for t in &st.targets {
        let kind = if t.local { "local" } else { "remote" };
        println!("targets  {} ({kind}): host {}", t.url, host_line(t, st));
    }
    if st.runners.is_empty() {
        println!("runners  none");
    }
    print_runners(st, "runners  ");
    println!(
        "config   {} (host '{}', id {})",
        st.config.path, st.config.host_name, st.config.host_id
    );
    if let Some(e) = &st.config.error {
        println!("         error: {e}");
    }
    println!("logs     {}\n         {}", st.logs.daemon, st.logs.server);
}
