//! Talking to the init system (`systemctl --user`, `launchctl`, `loginctl`, found on `PATH`), and telling who
//! started this process.

use std::path::Path;
use std::process::{Command, Stdio};

use super::{Env, Init, LAUNCHD_LABEL, SUPERVISOR_ENV, SYSTEMD_UNIT, ServiceError};

/// One command line: program and arguments.
pub type Cmd = Vec<String>;

fn cmd(program: &str, args: &[&str]) -> Cmd {
    std::iter::once(program)
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect()
}

/// `gui/$UID`, launchd's domain for the logged-in user's agents.
pub fn launchd_domain() -> String {
    format!("gui/{}", nix::unistd::getuid().as_raw())
}

fn launchd_target() -> String {
    format!("{}/{LAUNCHD_LABEL}", launchd_domain())
}

/// What `enable` runs before writing the unit, ignoring failures, when one was there already: launchd cannot
/// bootstrap a loaded agent again, so it is booted out first (systemd needs nothing).
pub fn unload_commands(init: Init) -> Vec<Cmd> {
    match init {
        Init::Systemd => vec![],
        Init::Launchd => disable_commands(init),
    }
}

/// What `enable` runs after writing the unit (`update`: the unit was there and changed).
pub fn enable_commands(init: Init, unit: &Path, update: bool) -> Vec<Cmd> {
    match init {
        Init::Systemd => {
            let mut v = vec![
                cmd("systemctl", &["--user", "daemon-reload"]),
                cmd("systemctl", &["--user", "enable", "--now", SYSTEMD_UNIT]),
            ];
            if update {
                v.push(cmd("systemctl", &["--user", "restart", SYSTEMD_UNIT]));
            }
            v
        }
        Init::Launchd => vec![
            cmd(
                "launchctl",
                &["bootstrap", &launchd_domain(), &unit.display().to_string()],
            ),
            cmd("launchctl", &["kickstart", &launchd_target()]),
        ],
    }
}

/// What takes the service down before its unit goes (`disable`, and a rollback).
pub fn disable_commands(init: Init) -> Vec<Cmd> {
    match init {
        Init::Systemd => vec![cmd(
            "systemctl",
            &["--user", "disable", "--now", SYSTEMD_UNIT],
        )],
        Init::Launchd => vec![cmd("launchctl", &["bootout", &launchd_target()])],
    }
}

/// After the unit file was removed or restored.
pub fn reload_commands(init: Init) -> Vec<Cmd> {
    match init {
        Init::Systemd => vec![cmd("systemctl", &["--user", "daemon-reload"])],
        Init::Launchd => vec![],
    }
}

/// The lifecycle verbs, through the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Start,
    Stop,
    Restart,
}

pub fn verb_command(init: Init, verb: Verb) -> Cmd {
    match (init, verb) {
        (Init::Systemd, Verb::Start) => cmd("systemctl", &["--user", "start", SYSTEMD_UNIT]),
        (Init::Systemd, Verb::Stop) => cmd("systemctl", &["--user", "stop", SYSTEMD_UNIT]),
        (Init::Systemd, Verb::Restart) => cmd("systemctl", &["--user", "restart", SYSTEMD_UNIT]),
        (Init::Launchd, Verb::Start) => cmd("launchctl", &["kickstart", &launchd_target()]),
        // The daemon exits 0 on SIGTERM, which `KeepAlive {SuccessfulExit = false}` does not restart.
        (Init::Launchd, Verb::Stop) => cmd("launchctl", &["kill", "SIGTERM", &launchd_target()]),
        (Init::Launchd, Verb::Restart) => cmd("launchctl", &["kickstart", "-k", &launchd_target()]),
    }
}

/// What a command printed and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    pub success: bool,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

/// Run `c` (stdin closed), collecting its output; an error only when it cannot be started.
pub fn run(c: &Cmd, init: Init) -> Result<Output, ServiceError> {
    let (program, args) = c.split_first().ok_or_else(|| ServiceError::Failed {
        command: String::new(),
        status: "empty command".into(),
        output: String::new(),
    })?;
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ServiceError::Spawn {
            command: c.join(" "),
            init: init.name(),
            source,
        })?;
    Ok(Output {
        success: out.status.success(),
        status: out.status.to_string(),
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

/// Run `c` and fail unless it exits 0.
pub fn run_checked(c: &Cmd, init: Init) -> Result<Output, ServiceError> {
    let out = run(c, init)?;
    if out.success {
        Ok(out)
    } else {
        Err(ServiceError::Failed {
            command: c.join(" "),
            status: out.status.clone(),
            output: if out.stderr.is_empty() {
                out.stdout
            } else {
                out.stderr
            },
        })
    }
}

/// The installed systemd's version (`systemctl --version`: "systemd 255 (255.4-1)").
pub fn systemd_version() -> Option<u32> {
    let out = run(&cmd("systemctl", &["--version"]), Init::Systemd).ok()?;
    out.stdout
        .lines()
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Enabled and active, as the supervisor says; `None` where it cannot be asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    pub enabled: Option<bool>,
    pub active: Option<bool>,
}

pub fn state(init: Init) -> State {
    match init {
        Init::Systemd => {
            let ask = |verb: &str, yes: &str| {
                run(&cmd("systemctl", &["--user", verb, SYSTEMD_UNIT]), init)
                    .ok()
                    .filter(|o| !o.stdout.is_empty())
                    .map(|o| o.stdout.lines().next() == Some(yes))
            };
            State {
                enabled: ask("is-enabled", "enabled"),
                active: ask("is-active", "active"),
            }
        }
        Init::Launchd => match run(&cmd("launchctl", &["print", &launchd_target()]), init) {
            Ok(o) => State {
                enabled: Some(o.success),
                active: Some(o.success && o.stdout.contains("state = running")),
            },
            Err(_) => State::default(),
        },
    }
}

/// Whether systemd keeps this user's services running after logout (`loginctl … Linger`); `None` when
/// logind cannot be asked.
pub fn linger(env: &Env) -> Option<bool> {
    let user = env
        .get("USER")
        .or_else(|| env.get("LOGNAME"))
        .cloned()
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })?;
    let out = run(
        &cmd(
            "loginctl",
            &["show-user", &user, "--property=Linger", "--value"],
        ),
        Init::Systemd,
    )
    .ok()?;
    match (out.success, out.stdout.as_str()) {
        (true, "yes") => Some(true),
        (true, "no") => Some(false),
        _ => None,
    }
}

/// The last lines the service logged: `journalctl --user -u omnigent-host.service` (systemd), or the tail of
/// launchd's log file.
pub fn log_tail(init: Init, launchd_log: &Path, lines: usize) -> Vec<String> {
    match init {
        Init::Systemd => run(
            &cmd(
                "journalctl",
                &[
                    "--user",
                    "-u",
                    SYSTEMD_UNIT,
                    "-n",
                    &lines.to_string(),
                    "--no-pager",
                    "-o",
                    "cat",
                ],
            ),
            init,
        )
        .map(|o| o.stdout.lines().map(str::to_owned).collect())
        .unwrap_or_default(),
        Init::Launchd => crate::logfile::tail_lines(launchd_log, lines),
    }
}

/// Who started this process: `systemd` or `launchd` when it runs as their service (the unit's
/// `OMNIGENT_SUPERVISOR`, else systemd's `INVOCATION_ID` with `NOTIFY_SOCKET`, else launchd's
/// `XPC_SERVICE_NAME` set to our label); `None` otherwise.
pub fn started_by_supervisor(env: &Env) -> Option<Init> {
    if let Some(init) = env.get(SUPERVISOR_ENV).and_then(|v| Init::parse(v)) {
        return Some(init);
    }
    if env.contains_key("INVOCATION_ID") && env.contains_key("NOTIFY_SOCKET") {
        return Some(Init::Systemd);
    }
    if env.get("XPC_SERVICE_NAME").map(String::as_str) == Some(LAUNCHD_LABEL) {
        return Some(Init::Launchd);
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_supervisor_is_told_from_the_environment() {
        use crate::service::env_of as env;
        assert_eq!(started_by_supervisor(&env(&[])), None);
        assert_eq!(
            started_by_supervisor(&env(&[(SUPERVISOR_ENV, "systemd")])),
            Some(Init::Systemd)
        );
        assert_eq!(
            started_by_supervisor(&env(&[("INVOCATION_ID", "x"), ("NOTIFY_SOCKET", "/s")])),
            Some(Init::Systemd)
        );
        assert_eq!(
            started_by_supervisor(&env(&[("NOTIFY_SOCKET", "/s")])),
            None
        );
        assert_eq!(
            started_by_supervisor(&env(&[("XPC_SERVICE_NAME", LAUNCHD_LABEL)])),
            Some(Init::Launchd)
        );
        assert_eq!(
            started_by_supervisor(&env(&[("XPC_SERVICE_NAME", "com.apple.Terminal")])),
            None
        );
    }

    #[test]
    fn enable_reloads_then_enables_and_restarts_only_on_update() {
        let v = enable_commands(Init::Systemd, Path::new("/u"), false);
        assert_eq!(
            v.iter().map(|c| c.join(" ")).collect::<Vec<_>>(),
            [
                "systemctl --user daemon-reload",
                "systemctl --user enable --now omnigent-host.service"
            ]
        );
        assert_eq!(
            enable_commands(Init::Systemd, Path::new("/u"), true).len(),
            3
        );
    }
}
