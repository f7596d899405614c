//! `omnigent host enable [URL…] [--print] [--init systemd|launchd]`, `omnigent host disable`, the `service`
//! section of `omnigent host status`, and the hooks that make `start` / `stop` / `restart` act through the
//! supervisor when it owns the daemon (docs/cli.md).
//!
//! `enable` keeps the URLs in config.toml, writes the unit (or plist) rendered from `packaging/`, records
//! what it wrote (`service.json`), hands over a CLI-started daemon (stopped first: never two), has the init
//! system start the service, and verifies that the daemon answers as started by it and its targets come
//! online within 15 s; on failure it says why (with the journal or log tail) and rolls back what it wrote.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow};
use omnigent_daemon::client::ControlClient;
use omnigent_daemon::service::record::{self, FileState, InstalledFile, Record};
use omnigent_daemon::service::supervisor::{self, Verb};
use omnigent_daemon::service::{self, Env, Init, ServiceError, render};
use omnigent_proto::control::DaemonStatus;
use omnigent_proto::paths::Paths;
use serde_json::{Value, json};

use crate::backend::{self, client_err, host_line};
use crate::exit::ConfigError;

/// How long `enable` (and a start through the supervisor) waits for the daemon and its targets …
const VERIFY_WAIT: Duration = Duration::from_secs(15);
/// … unless this variable (milliseconds) says otherwise (tests).
const VERIFY_ENV: &str = "OMNIGENT_SERVICE_VERIFY_TIMEOUT_MS";

/// Where a package installs the binary (`--packaged`).
const PACKAGED_EXE: &str = "/usr/bin/omnigent";

/// The unit holds no secret (see `render::choose_env`): readable like any unit.
const UNIT_MODE: u32 = 0o644;

fn verify_wait() -> Duration {
    std::env::var(VERIFY_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map_or(VERIFY_WAIT, Duration::from_millis)
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum InitArg {
    Systemd,
    Launchd,
}

impl From<InitArg> for Init {
    fn from(a: InitArg) -> Init {
        match a {
            InitArg::Systemd => Init::Systemd,
            InitArg::Launchd => Init::Launchd,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct EnableArgs {
    /// Servers to host, added to config.toml's targets first (the service hosts every target there).
    urls: Vec<String>,
    /// Serve the LAN too: the daemon's local server listens on every interface (config.toml `server.bind =
    /// "0.0.0.0"`, what `omnigent start --lan` keeps too); the service is restarted when this changes it.
    #[arg(long)]
    lan: bool,
    /// Show the unit (stdout) and what would be done (stderr); change nothing.
    #[arg(long)]
    print: bool,
    /// The init system to write for (default: the one the last `enable` used, else the platform's own: systemd
    /// on Linux, launchd on macOS).
    #[arg(long, value_enum)]
    init: Option<InitArg>,
    /// Print the unit a package installs (it runs /usr/bin/omnigent, with no captured environment); implies
    /// --print. Packaging runs it (packaging/README.md).
    #[arg(long, hide = true)]
    packaged: bool,
}

#[derive(Debug, clap::Args)]
pub struct DisableArgs {
    /// The init system (default: the one `enable` used, else the platform's own).
    #[arg(long, value_enum)]
    init: Option<InitArg>,
}

/// The launchd agent's stdout/stderr file.
fn launchd_log(paths: &Paths) -> PathBuf {
    paths.logs_dir().join("service.log")
}

fn exe() -> Result<PathBuf> {
    let exe = std::env::current_exe()
        .map_err(|e| anyhow!("cannot find the omnigent executable for the unit: {e}"))?;
    Ok(exe.canonicalize().unwrap_or(exe))
}

fn spec(init: Init, exe: PathBuf, env: Vec<(String, String)>, paths: &Paths) -> render::Spec {
    render::Spec {
        init,
        exe,
        env,
        log_file: launchd_log(paths),
        restart_steps: init == Init::Systemd
            && supervisor::systemd_version().is_some_and(|v| v >= render::RESTART_STEPS_SINCE),
    }
}

fn unit_path(init: Init, env: &Env) -> Result<PathBuf> {
    service::unit_path(init, env).ok_or_else(|| {
        ConfigError(
            ServiceError::NoHome(if init == Init::Systemd {
                "unit"
            } else {
                "plist"
            })
            .to_string(),
        )
        .into()
    })
}

/// `+ line` / `- line` for what changed between two versions of the unit.
fn changed_lines(old: &str, new: &str) -> Vec<String> {
    let old_lines: Vec<&str> = old.lines().collect();
    let new_lines: Vec<&str> = new.lines().collect();
    let mut out: Vec<String> = old_lines
        .iter()
        .filter(|l| !new_lines.contains(l))
        .map(|l| format!("- {l}"))
        .collect();
    out.extend(
        new_lines
            .iter()
            .filter(|l| !old_lines.contains(l))
            .map(|l| format!("+ {l}")),
    );
    out
}

pub fn enable(args: EnableArgs) -> Result<()> {
    let paths = backend::paths()?;
    let env = service::current_env();
    // Again without --init: the init system the last `enable` used.
    let init = args
        .init
        .map(Init::from)
        .or(record::load(&paths)?.map(|r| r.init))
        .unwrap_or_else(Init::native);
    let urls = args
        .urls
        .iter()
        .map(|u| crate::commands::host::check_url(u.trim()))
        .collect::<Result<Vec<_>>>()?;
    let unit = unit_path(init, &env)?;
    let config = omnigent_daemon::config::load(&paths.config_file())
        .map_err(|e| ConfigError(e.to_string()))?;
    let (choice, spec) = if args.packaged {
        let spec = render::Spec {
            init,
            exe: PACKAGED_EXE.into(),
            env: vec![(service::SUPERVISOR_ENV.to_owned(), init.name().to_owned())],
            log_file: launchd_log(&paths),
            restart_steps: false,
        };
        (render::EnvChoice::default(), spec)
    } else {
        let choice = render::choose_env(&env, &config.env_passthrough, init);
        let spec = spec(init, exe()?, choice.written.clone(), &paths);
        (choice, spec)
    };
    let text = render::render(&spec);
    let previous = std::fs::read_to_string(&unit).ok();
    // `--lan` on a service that listens on loopback: its daemon must restart to read the new bind.
    let lan_bind = omnigent_daemon::config::LAN_BIND;
    let new_bind = args.lan && config.server.bind.as_deref() != Some(lan_bind);
    let update = previous.as_deref().is_some_and(|p| p != text) || (new_bind && previous.is_some());
    let commands = supervisor::enable_commands(init, &unit, update);
    let how = match init {
        Init::Systemd => {
            "give it to the service through a drop-in (`systemctl --user edit omnigent-host` with \
             `EnvironmentFile=` naming a file of mode 0600)"
        }
        Init::Launchd => "give it to the service with `launchctl setenv`",
    };
    for (name, why) in &choice.withheld {
        eprintln!("note: {name} is not written into the unit ({why}); {how}");
    }
    if args.print || args.packaged {
        print!("{text}");
        eprintln!("would write {}", unit.display());
        for url in &urls {
            eprintln!("would keep {url} in {}", paths.config_file().display());
        }
        if new_bind {
            eprintln!(
                "would set server.bind = \"{lan_bind}\" in {}",
                paths.config_file().display()
            );
        }
        if previous.is_some() {
            for c in supervisor::unload_commands(init) {
                eprintln!("would run: {} (if loaded)", c.join(" "));
            }
        }
        for c in &commands {
            eprintln!("would run: {}", c.join(" "));
        }
        return Ok(());
    }
    backend::runtime()?.block_on(install(Install {
        paths,
        init,
        unit,
        text,
        previous,
        commands,
        urls,
        spec,
        bind: new_bind.then(|| (config.server.bind.clone(), lan_bind)),
    }))
}

struct Install {
    paths: Paths,
    init: Init,
    unit: PathBuf,
    text: String,
    previous: Option<String>,
    commands: Vec<supervisor::Cmd>,
    urls: Vec<String>,
    spec: render::Spec,
    /// `--lan` changes config.toml's `server.bind`: (what it was, what it becomes).
    bind: Option<(Option<String>, &'static str)>,
}

async fn install(i: Install) -> Result<()> {
    let config_file = i.paths.config_file();
    if let Some((_, bind)) = &i.bind {
        omnigent_daemon::config::set_server_bind(&config_file, Some(bind))
            .map_err(|e| ConfigError(e.to_string()))?;
    }
    let mut added = Vec::new();
    for url in &i.urls {
        let edited = omnigent_daemon::config::add_target(&config_file, url)
            .map_err(|e| ConfigError(e.to_string()))?;
        if edited.changed {
            added.push(url.clone());
        }
    }
    // Hand a daemon the service does not own over to it: stop it first, so there is never a second one.
    let mut handed_over = None;
    if let Some(mut client) = backend::connect_existing(&i.paths).await? {
        let st = client.status().await.map_err(client_err)?;
        if st.daemon.started_by != i.init.name() {
            eprintln!(
                "Handing the running daemon (pid {}, started by {}) over to {}: stopping it first…",
                st.daemon.pid,
                st.daemon.started_by,
                i.init.name()
            );
            drop(client);
            if let Err(e) = backend::stop_all(&i.paths, false).await {
                for url in &added {
                    let _ = omnigent_daemon::config::remove_target(&config_file, url);
                }
                return Err(e.context("cannot hand the running daemon over to the service"));
            }
            handed_over = Some(st.daemon.pid);
        }
    }
    let previous_record = record::load(&i.paths)?;
    let undo = Undo {
        paths: &i.paths,
        init: i.init,
        unit: &i.unit,
        previous: i.previous.as_deref(),
        previous_record: previous_record.as_ref(),
        added: &added,
        handed_over: handed_over.is_some(),
        bind_before: i.bind.as_ref().map(|(before, _)| before.as_deref()),
    };
    let result = async {
        if i.previous.is_some() {
            for c in supervisor::unload_commands(i.init) {
                let _ = supervisor::run(&c, i.init);
            }
        }
        record::write_atomic(&i.unit, i.text.as_bytes(), UNIT_MODE)?;
        record::save(
            &i.paths,
            &Record {
                init: i.init,
                unit: InstalledFile {
                    path: i.unit.clone(),
                    sha256: record::sha256_hex(i.text.as_bytes()),
                },
                exe: i.spec.exe.clone(),
                env: i.spec.env.clone(),
                version: omnigent_proto::BUILD_VERSION.to_owned(),
            },
        )?;
        for c in &i.commands {
            supervisor::run_checked(c, i.init)?;
        }
        let config =
            omnigent_daemon::config::load(&config_file).map_err(|e| ConfigError(e.to_string()))?;
        wait_service(&i.paths, i.init, None, Some(&config), verify_wait())
            .await
            .map_err(|why| anyhow!(why))
    }
    .await;
    let st = match result {
        Ok(st) => st,
        Err(e) => {
            let tail = supervisor::log_tail(i.init, &launchd_log(&i.paths), 20);
            undo.run().await;
            let mut msg = format!(
                "the {} did not come up: {e:#}; rolled back what `enable` wrote",
                i.init.describe()
            );
            if !tail.is_empty() {
                msg.push_str(&format!("\nlast lines it logged:\n{}", tail.join("\n")));
            }
            return Err(anyhow!(msg));
        }
    };
    match (&i.previous, handed_over) {
        (Some(p), _) if *p != i.text => {
            println!("Updated {} ({}):", i.unit.display(), i.init.describe());
            for l in changed_lines(p, &i.text) {
                println!("  {l}");
            }
        }
        (Some(_), _) => println!("{} is unchanged ({}).", i.unit.display(), i.init.describe()),
        (None, _) => println!("Installed {} ({}).", i.unit.display(), i.init.describe()),
    }
    if let Some(pid) = handed_over {
        println!("  handed over: the daemon started by the CLI (pid {pid}) was stopped first");
    }
    println!(
        "  daemon: pid {}, started by {}",
        st.daemon.pid, st.daemon.started_by
    );
    for t in &st.targets {
        println!("  target: {} {}", t.url, host_line(t, &st));
    }
    if let Some(bind) = &st.server.lan_bind {
        println!("  server: listening on {bind} too (the LAN; devices pair with `omnigent share`)");
    }
    if let Some(hint) = linger_hint(i.init, &service::current_env()) {
        println!("  note: {hint}");
    }
    println!("Undo it with:\n  omnigent host disable");
    Ok(())
}

/// What a failed `enable` takes back.
struct Undo<'a> {
    paths: &'a Paths,
    init: Init,
    unit: &'a Path,
    previous: Option<&'a str>,
    previous_record: Option<&'a Record>,
    added: &'a [String],
    handed_over: bool,
    /// `server.bind` before `--lan` changed it.
    bind_before: Option<Option<&'a str>>,
}

impl Undo<'_> {
    async fn run(&self) {
        for c in supervisor::disable_commands(self.init) {
            let _ = supervisor::run(&c, self.init);
        }
        let _ = match self.previous {
            Some(text) => record::write_atomic(self.unit, text.as_bytes(), UNIT_MODE),
            None => record::remove_file(self.unit),
        };
        for c in supervisor::reload_commands(self.init) {
            let _ = supervisor::run(&c, self.init);
        }
        let _ = match self.previous_record {
            Some(r) => record::save(self.paths, r),
            None => record::remove(self.paths),
        };
        for url in self.added {
            let _ = omnigent_daemon::config::remove_target(&self.paths.config_file(), url);
        }
        if let Some(before) = self.bind_before {
            let _ = omnigent_daemon::config::set_server_bind(&self.paths.config_file(), before);
        }
        if self.previous.is_some() {
            // The unit that was there before runs again, as it did.
            for c in supervisor::enable_commands(self.init, self.unit, false) {
                let _ = supervisor::run(&c, self.init);
            }
        } else if self.handed_over {
            // The CLI-started daemon comes back.
            let _ = backend::connect_or_start(self.paths).await;
        }
    }
}

/// Wait until a daemon started by `init` (and not `old_pid`) answers, then, with `config`, until every
/// configured target (and the local server's, when it autostarts) is online. `Err(why)` after `wait`.
async fn wait_service(
    paths: &Paths,
    init: Init,
    old_pid: Option<u32>,
    config: Option<&omnigent_daemon::Config>,
    wait: Duration,
) -> std::result::Result<DaemonStatus, String> {
    let deadline = tokio::time::Instant::now() + wait;
    let secs = wait.as_secs_f64();
    let (mut client, mut st) = loop {
        let why = match ControlClient::connect(paths).await {
            Ok(mut c) => match c.status().await {
                Ok(st) if Some(st.daemon.pid) == old_pid => {
                    "the old daemon still answers".to_owned()
                }
                Ok(st) if st.daemon.started_by != init.name() => format!(
                    "the daemon that answers (pid {}) was started by {}, not by {}",
                    st.daemon.pid,
                    st.daemon.started_by,
                    init.name()
                ),
                Ok(st) => break (c, st),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "no daemon started by {} answered within {secs:.1}s ({why})",
                init.name()
            ));
        }
        // No signal to wait on here: the service's daemon is not our child.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let Some(config) = config else {
        return Ok(st);
    };
    let remote: Vec<String> = config
        .targets
        .iter()
        .map(|t| omnigent_daemon::config::normalize_url(&t.url))
        .collect();
    loop {
        if let Some(t) = st.targets.iter().find(|t| t.tunnel == "failed") {
            return Err(format!(
                "{} refused this host: {}",
                t.url,
                host_line(t, &st)
            ));
        }
        let online = |t: &&omnigent_proto::control::TargetStatus| t.tunnel == "online";
        let mut missing: Vec<String> = remote
            .iter()
            .filter(|u| !st.targets.iter().filter(online).any(|t| t.url == **u))
            .cloned()
            .collect();
        if config.server_autostart() && !st.targets.iter().filter(online).any(|t| t.local) {
            missing.push("the local server".to_owned());
        }
        if missing.is_empty() {
            return Ok(st);
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            let states: Vec<String> = st
                .targets
                .iter()
                .map(|t| format!("{}: {}", t.url, host_line(t, &st)))
                .collect();
            return Err(format!(
                "the daemon (pid {}) runs, but not online within {secs:.1}s: {}{}",
                st.daemon.pid,
                missing.join(", "),
                if states.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", states.join("; "))
                }
            ));
        }
        st = client
            .status_after(st.revision, left.as_millis() as u64)
            .await
            .map_err(|e| e.to_string())?;
    }
}

pub fn disable(args: DisableArgs) -> Result<()> {
    let paths = backend::paths()?;
    let env = service::current_env();
    let rec = record::load(&paths)?;
    let init = args
        .init
        .map(Init::from)
        .or(rec.as_ref().map(|r| r.init))
        .unwrap_or_else(Init::native);
    let unit = match &rec {
        Some(r) if r.init == init => r.unit.path.clone(),
        _ => unit_path(init, &env)?,
    };
    let ours = rec
        .as_ref()
        .filter(|r| r.init == init && r.unit.path == unit);
    if !unit.exists() && ours.is_none() {
        println!(
            "Not installed: there is no {} at {}.",
            init.describe(),
            unit.display()
        );
        return Ok(());
    }
    let runtime = backend::runtime()?;
    let service_ran_it = runtime.block_on(async {
        match backend::connect_existing(&paths).await {
            Ok(Some(mut c)) => c
                .status()
                .await
                .is_ok_and(|st| st.daemon.started_by == init.name()),
            _ => false,
        }
    });
    // Stop it and take it out of the init system; `disable --now` waits for the stop.
    for c in supervisor::disable_commands(init) {
        if unit.exists() {
            supervisor::run_checked(&c, init)?;
        } else {
            let _ = supervisor::run(&c, init);
        }
    }
    let kept = match ours.map(|r| record::file_state(&r.unit)) {
        Some(FileState::AsWritten) => {
            record::remove_file(&unit)?;
            None
        }
        Some(FileState::Missing) => None,
        Some(FileState::Edited) => Some("it was edited since `omnigent host enable` wrote it"),
        None => Some("`omnigent host enable` did not write it (no install record)"),
    };
    for c in supervisor::reload_commands(init) {
        let _ = supervisor::run(&c, init);
    }
    if ours.is_some() {
        record::remove(&paths)?;
    }
    // The daemon the service ran is gone when the supervisor says so; wait for its lock too (a daemon the CLI
    // started is not the service's business and keeps running).
    let gone = !service_ran_it
        || runtime.block_on(omnigent_daemon::runtime::wait_lock_released(
            &paths,
            Duration::from_secs(15),
        ));
    println!("Disabled the {}.", init.describe());
    match kept {
        None => println!("  removed {}", unit.display()),
        Some(why) => println!(
            "  kept {} ({why}); remove it yourself if you no longer want it",
            unit.display()
        ),
    }
    if !gone {
        println!(
            "  note: a daemon still holds {}",
            paths.daemon_lock().display()
        );
    }
    println!(
        "  targets stay in {} (`omnigent host stop URL` removes one)",
        paths.config_file().display()
    );
    Ok(())
}

/// The `service` section of `host status` (schema in docs/cli.md).
pub fn status_section(paths: &Paths, running: Option<&DaemonStatus>) -> Value {
    let env = service::current_env();
    let rec = record::load(paths).ok().flatten();
    let init = rec.as_ref().map_or_else(Init::native, |r| r.init);
    let unit = rec
        .as_ref()
        .map(|r| r.unit.path.clone())
        .or_else(|| service::unit_path(init, &env));
    let installed = unit.as_ref().is_some_and(|u| u.exists());
    let state = if installed {
        supervisor::state(init)
    } else {
        supervisor::State {
            enabled: Some(false),
            active: Some(false),
        }
    };
    let edited = rec
        .as_ref()
        .is_some_and(|r| record::file_state(&r.unit) == FileState::Edited);
    let mut drift = Vec::new();
    if let (Some(r), Some(u), true) = (&rec, &unit, installed) {
        let now = exe().ok();
        let wanted = render::render(&spec(
            init,
            now.clone().unwrap_or(r.exe.clone()),
            r.env.clone(),
            paths,
        ));
        let current = std::fs::read_to_string(u).unwrap_or_default();
        if edited {
            drift.push("the unit was edited since `omnigent host enable` wrote it".to_owned());
        }
        if !r.exe.exists() {
            drift.push(format!(
                "the unit runs {}, which no longer exists",
                r.exe.display()
            ));
        } else if now.as_ref().is_some_and(|n| *n != r.exe) {
            drift.push(format!(
                "the unit runs {}, this omnigent is {}",
                r.exe.display(),
                now.as_ref()
                    .map_or(String::new(), |n| n.display().to_string())
            ));
        }
        if !edited && wanted != current && drift.is_empty() {
            drift.push(format!(
                "written by omnigent {}, this omnigent {} would write it differently",
                r.version,
                omnigent_proto::BUILD_VERSION
            ));
        }
        if !drift.is_empty() {
            drift.push("`omnigent host enable` rewrites it".to_owned());
        }
    } else if installed && rec.is_none() {
        drift.push("not written by `omnigent host enable` (no install record)".to_owned());
    }
    let linger = (installed && init == Init::Systemd && cfg!(target_os = "linux"))
        .then(|| supervisor::linger(&env))
        .flatten();
    json!({
        "init": init.name(),
        "unit": unit.map(|u| u.display().to_string()),
        "installed": installed,
        "installed_by_enable": rec.is_some(),
        "enabled": state.enabled,
        "active": state.active,
        "started_by": running.map(|st| st.daemon.started_by.clone()),
        "drift": drift,
        "linger": linger,
        "hint": if installed && linger == Some(false) { linger_hint(init, &env) } else { None },
    })
}

fn linger_hint(init: Init, env: &Env) -> Option<String> {
    if init != Init::Systemd || !cfg!(target_os = "linux") {
        return None;
    }
    let user = env.get("USER").map_or("$USER", String::as_str);
    (supervisor::linger(env) == Some(false)).then(|| {
        format!(
            "linger is off, so systemd stops the service when your last session ends (an SSH logout); \
             `loginctl enable-linger {user}` keeps it running"
        )
    })
}

/// The text lines of the `service` section.
pub fn print_status(s: &Value) {
    let word = |v: &Value, yes: &str, no: &str| match v.as_bool() {
        Some(true) => yes.to_owned(),
        Some(false) => no.to_owned(),
        None => "unknown".to_owned(),
    };
    let init = s["init"].as_str().unwrap_or("");
    let what = Init::parse(init).map_or(String::new(), Init::describe);
    if s["installed"] != json!(true) {
        println!("service  not installed (`omnigent host enable` runs this host as the {what})");
        return;
    }
    let mut line = format!(
        "service  {what}: {}, {}",
        word(&s["enabled"], "enabled", "not enabled"),
        word(&s["active"], "active", "inactive")
    );
    if let Some(by) = s["started_by"].as_str() {
        line.push_str(&format!("; the running daemon was started by {by}"));
    }
    println!("{line}");
    println!("         unit {}", s["unit"].as_str().unwrap_or(""));
    for d in s["drift"].as_array().into_iter().flatten() {
        println!("         drift: {}", d.as_str().unwrap_or(""));
    }
    if let Some(l) = s["linger"].as_bool() {
        println!("         linger {}", if l { "on" } else { "off" });
    }
    if let Some(h) = s["hint"].as_str() {
        println!("         hint: {h}");
    }
}

/// The init system that owns the running daemon, if one does (an install record exists and the daemon
/// says it was started by that init system). Costs one `stat` when no service was ever enabled.
async fn owner(paths: &Paths) -> Result<Option<(Init, DaemonStatus)>> {
    let Some(rec) = record::load(paths)? else {
        return Ok(None);
    };
    let Some(mut client) = backend::connect_existing(paths).await? else {
        return Ok(None);
    };
    let st = client.status().await.map_err(client_err)?;
    Ok((st.daemon.started_by == rec.init.name()).then_some((rec.init, st)))
}

/// `stop` (and `host stop`, and the stop half of `restart`) when the service owns the daemon: through the
/// supervisor, so it does not start it again. `None` when it does not own it.
pub async fn stop_if_service(paths: &Paths) -> Result<Option<Vec<String>>> {
    let Some((init, st)) = owner(paths).await? else {
        return Ok(None);
    };
    supervisor::run_checked(&supervisor::verb_command(init, Verb::Stop), init)?;
    if !omnigent_daemon::runtime::wait_lock_released(paths, Duration::from_secs(20)).await {
        anyhow::bail!(
            "the daemon (pid {}) did not exit after `{}`",
            st.daemon.pid,
            supervisor::verb_command(init, Verb::Stop).join(" ")
        );
    }
    Ok(Some(vec![format!(
        "daemon pid {} (through {})",
        st.daemon.pid,
        init.name()
    )]))
}

/// `restart` when the service owns the daemon: the supervisor restarts it. `false` when it does not own it.
pub async fn restart_if_service(paths: &Paths) -> Result<bool> {
    let Some((init, st)) = owner(paths).await? else {
        return Ok(false);
    };
    let c = supervisor::verb_command(init, Verb::Restart);
    supervisor::run_checked(&c, init)?;
    wait_service(paths, init, Some(st.daemon.pid), None, verify_wait())
        .await
        .map_err(|why| anyhow!("after `{}`: {why}", c.join(" ")))?;
    eprintln!(
        "Restarted the daemon through {} (was pid {}).",
        init.name(),
        st.daemon.pid
    );
    Ok(true)
}

/// Before the CLI would start a daemon: when none runs and the service is enabled, the supervisor starts it
/// (so the CLI never runs a daemon beside the service's).
pub async fn start_if_service(paths: &Paths) -> Result<()> {
    let Some(rec) = record::load(paths)? else {
        return Ok(());
    };
    if ControlClient::connect(paths).await.is_ok()
        || supervisor::state(rec.init).enabled != Some(true)
    {
        return Ok(());
    }
    let c = supervisor::verb_command(rec.init, Verb::Start);
    if let Err(e) = supervisor::run_checked(&c, rec.init) {
        // No service can run here now (no user manager in this session, say): the CLI starts its own daemon.
        eprintln!(
            "note: the {} is enabled but cannot be started ({e}); starting the daemon directly",
            rec.init.describe()
        );
        return Ok(());
    }
    wait_service(paths, rec.init, None, None, verify_wait())
        .await
        .map_err(|why| anyhow!("after `{}`: {why}", c.join(" ")))?;
    Ok(())
}
