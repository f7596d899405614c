//! The commands that talk to the daemon: start, stop, restart, status, logs, server start|status|stop.
//! Text for people on stdout, decoration and progress on stderr; `--json` prints the documented schemas of
//! docs/cli.md on stdout.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, Result};
use omnigent_daemon::client::{ClientError, ControlClient};
use omnigent_daemon::launch::{self, Connected, LaunchError};
use omnigent_daemon::runtime;
use omnigent_proto::control::{
    ChildState, ControlErrorCode, DaemonStatus, HelloReply, ServerStatus, TargetStatus,
};
use omnigent_proto::paths::Paths;
use serde_json::json;

use crate::exit::ConfigError;

#[derive(Debug, clap::Args)]
pub struct JsonArgs {
    /// Print JSON (schema in docs/cli.md) instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Address the local server listens on. Only loopback (127.0.0.1) until LAN access lands.
    #[arg(long, default_value = "127.0.0.1")]
    bind: String,
    /// Print JSON (schema in docs/cli.md) instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// Do not wait for a graceful stop: SIGKILL children (and an unresponsive daemon) at once.
    #[arg(long)]
    force: bool,
    /// Print JSON (schema in docs/cli.md) instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Which log: `daemon`, `server`, or `runner <ID>`.
    #[arg(default_value = "daemon")]
    which: String,
    /// The runner id, with `runner`.
    id: Option<String>,
    /// Keep printing new lines as they are written.
    #[arg(short, long)]
    follow: bool,
    /// How many of the last lines to print first.
    #[arg(short = 'n', long, default_value_t = 100)]
    lines: usize,
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

fn exe() -> Result<std::path::PathBuf> {
    std::env::current_exe().context("cannot find the omnigent executable to start the daemon")
}

fn progress(msg: &str) {
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
    // An enabled service starts its own daemon: the CLI never runs one beside it.
    crate::service_cmd::start_if_service(paths).await?;
    let (client, how) = launch::ensure_daemon(paths, &exe()?, &progress)
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

fn check_bind(bind: &str) -> Result<()> {
    match bind {
        "127.0.0.1" | "localhost" => Ok(()),
        other => Err(ConfigError(format!(
            "refusing to serve on {other}: LAN access is not available yet (it comes with device pairing); \
             `omnigent start` serves on 127.0.0.1 only"
        ))
        .into()),
    }
}

pub fn start(args: StartArgs) -> Result<()> {
    check_bind(&args.bind)?;
    let paths = paths()?;
    runtime()?.block_on(async {
        let (mut client, how) = connect_or_start(&paths).await?;
        let server = client.server_start().await.map_err(client_err)?;
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

fn foreign_text(f: &omnigent_proto::control::ForeignListener) -> String {
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

/// Stop everything; returns what was stopped. Waits for an in-progress start (the start lock) first, so a
/// `stop` racing a `start` always wins.
pub(crate) async fn stop_all(paths: &Paths, force: bool) -> Result<Vec<String>> {
    // A daemon the service runs is stopped through its supervisor, which would otherwise start it again.
    if let Some(stopped) = crate::service_cmd::stop_if_service(paths).await? {
        return Ok(stopped);
    }
    // A daemon whose runtime dir a tmp cleaner removed still runs (it holds its guard): stop it too.
    if !paths.runtime_dir.exists() && runtime::guard_holder(paths).is_none() {
        return Ok(vec![]);
    }
    runtime::ensure_private_dir(&paths.runtime_dir).map_err(|e| ConfigError(e.to_string()))?;
    let _start = runtime::StartLock::acquire(paths, launch::READY_TIMEOUT).await?;
    let mut stopped = Vec::new();
    match ControlClient::connect(paths).await {
        Ok(mut client) => {
            let pid = client.daemon.pid;
            match client.shutdown(force).await {
                Ok(reply) => stopped.extend(reply.stopped),
                Err(e) if force => {
                    eprintln!("the daemon did not answer the shutdown ({e}); killing it")
                }
                Err(e) => return Err(anyhow::anyhow!("{e}; retry with `omnigent stop --force`")),
            }
            drop(client);
            if !runtime::wait_lock_released(paths, Duration::from_secs(if force { 2 } else { 10 }))
                .await
            {
                if !force {
                    anyhow::bail!(
                        "the daemon (pid {pid}) did not exit within 10s; retry with `omnigent stop --force`"
                    );
                }
                kill_daemon(paths, pid).await;
            }
            launch::wait_pid_gone(pid).await;
            stopped.push(format!("daemon pid {pid}"));
        }
        Err(ClientError::ProtocolMismatch { daemon, .. }) => {
            launch::stop_pid_and_wait(paths, daemon.pid)
                .await
                .map_err(|()| anyhow::anyhow!("the daemon pid {} did not exit", daemon.pid))?;
            stopped.push(format!(
                "daemon pid {} (omnigent {})",
                daemon.pid, daemon.build_version
            ));
        }
        Err(ClientError::Stopped { pid }) if force => {
            // SIGKILL works on a stopped process; its children get their parent-death signal.
            kill_daemon(paths, pid).await;
            launch::wait_pid_gone(pid).await;
            stopped.push(format!("daemon pid {pid} (stopped; killed)"));
        }
        Err(ClientError::NotRunning { .. }) => {
            if runtime::lock_is_held(paths) {
                // A daemon that holds the lock but does not answer: hung, or still binding.
                let pid = runtime::read_lock_pid(&paths.daemon_lock());
                if let (true, Some(pid)) = (force, pid) {
                    kill_daemon(paths, pid).await;
                    stopped.push(format!("daemon pid {pid} (killed)"));
                } else {
                    anyhow::bail!(
                        "a daemon holds {} (pid {}) but does not answer on its socket; retry with `omnigent stop --force`",
                        paths.daemon_lock().display(),
                        pid.map_or("unknown".to_owned(), |p| p.to_string())
                    );
                }
            }
        }
        Err(e) => return Err(client_err(e)),
    }
    // A server left behind by a daemon that was killed: stop it too.
    if let Some(pid) = omnigent_daemon::server::leftover_server_pid(paths) {
        let grace = if force {
            Duration::ZERO
        } else {
            omnigent_daemon::process::STOP_GRACE
        };
        omnigent_daemon::server::terminate_foreign_pid(pid, grace).await;
        stopped.push(format!("left-over server pid {pid}"));
        let _ = std::fs::remove_file(paths.server_json());
    }
    Ok(stopped)
}

/// SIGKILL the daemon `pid` and wait (at most 5 s) for its lock to be released.
async fn kill_daemon(paths: &Paths, pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::SIGKILL,
    );
    runtime::wait_lock_released(paths, Duration::from_secs(5)).await;
}

pub fn restart(args: StartArgs) -> Result<()> {
    check_bind(&args.bind)?;
    let paths = paths()?;
    if runtime()?.block_on(crate::service_cmd::restart_if_service(&paths))? {
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

pub(crate) fn duration_text(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
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
                        omnigent_daemon::process::exit_text(e.code, e.signal),
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

fn print_server_block(s: &ServerStatus, label: &str) {
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
                        omnigent_daemon::process::exit_text(e.code, e.signal),
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

pub fn server_start(args: JsonArgs) -> Result<()> {
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

pub fn server_status(args: JsonArgs) -> Result<()> {
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

pub fn server_stop(args: StopArgs) -> Result<()> {
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

pub fn logs(args: LogsArgs) -> Result<()> {
    let paths = paths()?;
    let dir = paths.logs_dir();
    let path = match (args.which.as_str(), &args.id) {
        ("daemon", None) => dir.join("daemon.log"),
        ("server", None) => dir.join("server.log"),
        ("runner", Some(id)) => {
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(ConfigError(format!("{id:?} is not a runner id")).into());
            }
            dir.join("runners").join(format!("{id}.log"))
        }
        ("runner", None) => {
            return Err(ConfigError("`omnigent logs runner` needs a runner id".into()).into());
        }
        (other, _) => {
            return Err(ConfigError(format!(
                "unknown log {other:?}: use daemon, server or runner <ID>"
            ))
            .into());
        }
    };
    if !path.exists() && !args.follow {
        anyhow::bail!(
            "{} does not exist yet (has that process run?)",
            path.display()
        );
    }
    // Where following starts, taken before the tail is read: a line written in between is printed twice
    // rather than lost.
    let end = std::fs::metadata(&path).map(|m| m.len()).ok();
    for line in omnigent_daemon::logfile::tail_lines(&path, args.lines) {
        println!("{line}");
    }
    if args.follow {
        runtime()?.block_on(omnigent_daemon::logfile::follow(&path, end, |bytes| {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(bytes).and_then(|()| out.flush()).is_ok()
        }))?;
    }
    Ok(())
}
