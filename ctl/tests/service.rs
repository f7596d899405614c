//! `omnigent host enable | disable`, the `service` section of `host status`, and `start`/`stop`/`restart`
//! through the supervisor, against stand-in `systemctl` / `loginctl` / `launchctl` / `journalctl` on `PATH`
//! that record their calls and act on a real daemon (their `start` runs the unit's `ExecStart=` in the
//! foreground with only the unit's `Environment=`, as systemd does); the rendered units checked by
//! `systemd-analyze verify` and a plist parser; the packaging files; and, where a user systemd can be started
//! here (a private mount namespace), the real cycle: enable → active → SIGKILL → restarted → disable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::omnigent;
use omnigent_testkit::net::PortReservation;

/// A loopback port held (never listening) for the rest of the test process, for a child that must be
/// told its port up front: no other port-0 bind can take it meanwhile, and the child can still bind it.
fn reserved_port() -> u16 {
    let reservation = PortReservation::new();
    let port = reservation.port;
    std::mem::forget(reservation);
    port
}
use serde_json::Value;

/// What both process-managing stand-ins share: the state dir, the main process's pid file, and `stop` (SIGTERM,
/// then wait until the process is gone; a zombie counts as gone).
const STUB_PRELUDE: &str = r#"#!/bin/bash
set -u
S="$STUB_STATE"
PIDFILE="$S/main.pid"
alive() { [ -e "/proc/$1" ] && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat" 2>/dev/null; }
running() { [ -f "$PIDFILE" ] && alive "$(cat "$PIDFILE")"; }
stop() {
  running || { rm -f "$PIDFILE"; return 0; }
  local pid; pid=$(cat "$PIDFILE"); kill -TERM "$pid"
  while alive "$pid"; do sleep 0.02; done
  rm -f "$PIDFILE"
}
"#;

/// The stand-in `systemctl --user`: records `systemctl ARGS` in `$STUB_STATE/calls`; `start` runs the unit's
/// command with `env -i` + its `Environment=` lines (+ `INVOCATION_ID`), detached; `stop` sends SIGTERM and
/// waits for the process to be gone. `STUB_START_FAILS=1`: `start` starts nothing (a unit that dies at once).
const SYSTEMCTL: &str = r#"echo "systemctl $*" >> "$S/calls"
[ "${1:-}" = "--user" ] && shift
UNIT="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user/omnigent-host.service"
start() {
  running && return 0
  [ -n "${STUB_START_FAILS:-}" ] && return 0
  [ -f "$UNIT" ] || { echo "Unit omnigent-host.service not found." >&2; return 5; }
  local exec_line envs=() l v
  exec_line=$(grep '^ExecStart=' "$UNIT"); exec_line=${exec_line#ExecStart=}
  while IFS= read -r l; do v=${l#Environment=}; v=${v#\"}; v=${v%\"}; envs+=("$v"); done < <(grep '^Environment=' "$UNIT")
  eval "set -- $exec_line"
  env -i "${envs[@]}" INVOCATION_ID=stub setsid "$@" >>"$S/daemon.out" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
}
now=""; [ "${2:-}" = "--now" ] && now=1
case "${1:-}" in
  --version) echo "systemd ${STUB_SYSTEMD_VERSION:-252} (252.39-stub)";;
  daemon-reload) ;;
  enable) touch "$S/enabled"; [ -n "$now" ] && start;;
  disable) rm -f "$S/enabled"; [ -n "$now" ] && stop; true;;
  start) start;;
  stop) stop;;
  restart) stop; start;;
  kill) running && kill -KILL "$(cat "$PIDFILE")";;
  is-enabled) if [ -f "$S/enabled" ]; then echo enabled; else echo disabled; exit 1; fi;;
  is-active) if running; then echo active; else echo inactive; exit 3; fi;;
  *) echo "stub systemctl: unknown $*" >&2; exit 1;;
esac
"#;

/// The stand-in `launchctl`: `bootstrap gui/UID PLIST` loads and (RunAtLoad) starts the plist's
/// `ProgramArguments` with `env -i` + its `EnvironmentVariables` (+ `XPC_SERVICE_NAME`, as launchd sets it);
/// `bootout` and `kill SIGTERM` stop it; `kickstart [-k]` (re)starts it; `print` answers while loaded.
const LAUNCHCTL: &str = r#"echo "launchctl $*" >> "$S/calls"
start() {
  running && return 0
  local plist args=() envs=() in="" k="" v l
  plist=$(cat "$S/loaded")
  while IFS= read -r l; do
    case "$l" in
      *"<key>ProgramArguments</key>"*) in=args; continue;;
      *"<key>EnvironmentVariables</key>"*) in=env; continue;;
    esac
    case "$in:$l" in
      args:*"</array>"*|env:*"</dict>"*) in="";;
      args:*"<string>"*) v=${l#*<string>}; args+=("${v%</string>*}");;
      env:*"<key>"*) k=${l#*<key>}; k=${k%</key>*};;
      env:*"<string>"*) v=${l#*<string>}; envs+=("$k=${v%</string>*}");;
    esac
  done < "$plist"
  env -i "${envs[@]}" XPC_SERVICE_NAME=ai.omnigent.host setsid "${args[@]}" >>"$S/daemon.out" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
}
case "${1:-}" in
  bootstrap) echo "$3" > "$S/loaded"; start;;
  bootout) [ -f "$S/loaded" ] || exit 3; stop; rm -f "$S/loaded";;
  kickstart) [ -f "$S/loaded" ] || exit 113; [ "${2:-}" = "-k" ] && stop; start;;
  kill) stop;;
  print) [ -f "$S/loaded" ] || exit 113; if running; then echo "state = running"; else echo "state = not running"; fi;;
  *) echo "stub launchctl: unknown $*" >&2; exit 1;;
esac
"#;

const LOGINCTL: &str = r#"#!/bin/bash
echo "loginctl $*" >> "$STUB_STATE/calls"
echo "${STUB_LINGER:-no}"
"#;

const JOURNALCTL: &str = r#"#!/bin/bash
echo "journalctl $*" >> "$STUB_STATE/calls"
echo "stub journal: the unit exited at once"
"#;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::Builder::new().prefix("svc").tempdir().unwrap();
        let f = Fixture { dir };
        for d in ["bin", "state", "home", "om/config"] {
            std::fs::create_dir_all(f.dir.path().join(d)).unwrap();
        }
        for (name, text) in [
            ("systemctl", format!("{STUB_PRELUDE}{SYSTEMCTL}")),
            ("launchctl", format!("{STUB_PRELUDE}{LAUNCHCTL}")),
            ("loginctl", LOGINCTL.to_owned()),
            ("journalctl", JOURNALCTL.to_owned()),
        ] {
            let p = f.bin().join(name);
            std::fs::write(&p, text).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        // The service's daemon reads its port from here (the unit carries no test variables).
        std::fs::write(
            f.om().join("config/config.toml"),
            format!("[server]\nport = {}\n", reserved_port()),
        )
        .unwrap();
        f
    }
    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }
    fn om(&self) -> PathBuf {
        self.dir.path().join("om")
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn unit(&self) -> PathBuf {
        self.dir
            .path()
            .join("home/.config/systemd/user/omnigent-host.service")
    }
    fn record(&self) -> PathBuf {
        self.om().join("config/service.json")
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = omnigent(&self.om());
        let path = format!(
            "{}:{}",
            self.bin().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        c.args(args)
            .env("PATH", path)
            .env("HOME", self.dir.path().join("home"))
            .env("USER", "tester")
            .env("STUB_STATE", self.state())
            .env("OMNIGENT_SERVICE_VERIFY_TIMEOUT_MS", "30000")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("OMNIGENT_SUPERVISOR")
            .env_remove("INVOCATION_ID")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null());
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "omnigent {args:?} failed: {}\nstdout: {}\nstderr: {}\ndaemon: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.state().join("daemon.out")).unwrap_or_default()
        );
        String::from_utf8(out.stdout).unwrap()
    }
    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }
    /// The recorded calls since the last `take_calls`.
    fn take_calls(&self) -> Vec<String> {
        let p = self.state().join("calls");
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let _ = std::fs::remove_file(&p);
        text.lines().map(str::to_owned).collect()
    }
    fn main_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.state().join("main.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Whatever a failed test left running: the service's daemon (its children die with it).
        if let Some(pid) = self.main_pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.cmd(&["stop", "--force"]).output();
    }
}

const ENABLE_CALLS: [&str; 3] = [
    "systemctl --version",
    "systemctl --user daemon-reload",
    "systemctl --user enable --now omnigent-host.service",
];

#[test]
fn enable_hands_over_the_cli_daemon_then_status_shows_the_service_and_disable_removes_it() {
    let f = Fixture::new();
    // A daemon started by the CLI is running.
    let started = f.json(&["start", "--json"]);
    let cli_pid = started["daemon"]["pid"].as_u64().unwrap();
    f.take_calls();

    let out = f.ok(&["host", "enable"]);
    assert!(out.contains("Installed"), "{out}");
    assert!(
        out.contains(&format!("pid {cli_pid}")),
        "handover named: {out}"
    );
    let mut expected: Vec<String> = ENABLE_CALLS.iter().map(|s| (*s).to_owned()).collect();
    expected.push("loginctl show-user tester --property=Linger --value".into());
    assert_eq!(f.take_calls(), expected);
    let unit = std::fs::read_to_string(f.unit()).unwrap();
    assert!(unit.contains("Type=notify"), "{unit}");
    assert!(f.record().exists());

    let st = f.json(&["host", "status", "--json"]);
    let svc = &st["service"];
    assert_eq!(svc["installed"], true, "{st}");
    assert_eq!(svc["installed_by_enable"], true);
    assert_eq!(svc["enabled"], true);
    assert_eq!(svc["active"], true);
    assert_eq!(svc["started_by"], "systemd");
    assert_eq!(svc["drift"], serde_json::json!([]));
    assert_eq!(svc["linger"], false);
    assert!(
        svc["hint"]
            .as_str()
            .unwrap()
            .contains("loginctl enable-linger tester"),
        "{svc}"
    );
    let pid = st["daemon_pid"].as_u64().unwrap();
    assert_ne!(pid, cli_pid, "the service runs a new daemon");
    assert_eq!(f.main_pid().map(|p| p as u64), Some(pid));

    // A second enable with the same environment changes nothing; a changed one updates in place.
    assert!(f.ok(&["host", "enable"]).contains("is unchanged"));
    f.take_calls();
    let (out, _) = f.ok_env(&["host", "enable"], &[("LANG", "de_DE.UTF-8")]);
    assert!(out.contains("Updated"), "{out}");
    assert!(out.contains("+ Environment=\"LANG=de_DE.UTF-8\""), "{out}");
    let calls = f.take_calls();
    assert!(
        calls.contains(&"systemctl --user restart omnigent-host.service".to_owned()),
        "{calls:?}"
    );

    let out = f.ok(&["host", "disable"]);
    assert!(out.contains("removed"), "{out}");
    assert_eq!(
        f.take_calls(),
        [
            "systemctl --user disable --now omnigent-host.service",
            "systemctl --user daemon-reload"
        ]
    );
    assert!(!f.unit().exists());
    assert!(!f.record().exists());
    assert_eq!(f.json(&["status", "--json"])["running"], false);
    assert_eq!(
        f.json(&["host", "status", "--json"])["service"]["installed"],
        false
    );
}

impl Fixture {
    /// `omnigent ARGS` with extra variables, which must succeed: (stdout, stderr).
    fn ok_env(&self, args: &[&str], env: &[(&str, &str)]) -> (String, String) {
        let mut c = self.cmd(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }
}

#[test]
fn host_enable_lan_is_kept_in_config_toml_and_the_services_daemon_spawns_its_server_with_that_bind()
{
    let f = Fixture::new();
    let out = f.ok(&["host", "enable", "--lan"]);
    assert!(out.contains("listening on 0.0.0.0"), "{out}");
    let config = std::fs::read_to_string(f.om().join("config/config.toml")).unwrap();
    assert!(config.contains("bind = \"0.0.0.0\""), "{config}");
    // The unit carries no bind: the daemon reads config.toml, as a plain `omnigent start` does.
    let unit = std::fs::read_to_string(f.unit()).unwrap();
    assert!(!unit.contains("OMNIGENT_SERVER_BIND"), "{unit}");
    // The server process the daemon spawned really got `--bind BIND`.
    let assert_spawned_with = |st: &Value, bind: &str| {
        let pid = st["server"]["pid"].as_u64().expect("a server pid");
        let args: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap()
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert!(
            args.windows(2).any(|w| w[0] == "--bind" && w[1] == bind),
            "{args:?}"
        );
    };
    let st = f.json(&["status", "--json"]);
    assert_eq!(st["daemon"]["started_by"], "systemd", "{st}");
    assert_eq!(st["server"]["bind"], "0.0.0.0", "{st}");
    assert_eq!(st["server"]["lan_bind"], "0.0.0.0", "{st}");
    assert_spawned_with(&st, "0.0.0.0");
    let host = f.json(&["host", "status", "--json"]);
    assert_eq!(host["server_bind"], "0.0.0.0", "{host}");
    assert!(
        f.ok(&["host", "status"])
            .contains("bound to 0.0.0.0 (the LAN too")
    );
    // A restart through the supervisor keeps it; `start --bind 127.0.0.1` keeps loopback for the next start
    // and says to restart; the restart applies it.
    f.ok(&["restart"]);
    assert_eq!(
        f.json(&["status", "--json"])["server"]["lan_bind"],
        "0.0.0.0"
    );
    let out = f.run(&["start", "--bind", "127.0.0.1"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("omnigent restart --bind 127.0.0.1"));
    f.ok(&["restart"]);
    let st = f.json(&["status", "--json"]);
    assert!(st["server"]["lan_bind"].is_null(), "{st}");
    assert_eq!(st["server"]["bind"], "127.0.0.1", "{st}");
    assert_spawned_with(&st, "127.0.0.1");
    // Enabling again with --lan while the service runs loopback: config changed, the service restarted.
    f.take_calls();
    f.ok(&["host", "enable", "--lan"]);
    assert!(
        f.take_calls()
            .contains(&"systemctl --user restart omnigent-host.service".to_owned())
    );
    assert_eq!(
        f.json(&["status", "--json"])["server"]["lan_bind"],
        "0.0.0.0"
    );
}

#[test]
fn a_failed_verify_rolls_back_the_unit_the_record_and_the_targets() {
    let f = Fixture::new();
    let config_before = std::fs::read_to_string(f.om().join("config/config.toml")).unwrap();
    let out = f
        .cmd(&["host", "enable", "http://127.0.0.1:9"])
        .env("STUB_START_FAILS", "1")
        .env("OMNIGENT_SERVICE_VERIFY_TIMEOUT_MS", "1500")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("did not come up"), "{err}");
    assert!(err.contains("rolled back"), "{err}");
    assert!(
        err.contains("stub journal: the unit exited at once"),
        "{err}"
    );
    let calls = f.take_calls();
    let disable = calls
        .iter()
        .position(|c| c == "systemctl --user disable --now omnigent-host.service")
        .unwrap_or_else(|| panic!("{calls:?}"));
    assert_eq!(
        calls[disable + 1],
        "systemctl --user daemon-reload",
        "{calls:?}"
    );
    assert!(!f.unit().exists(), "the unit is removed again");
    assert!(!f.record().exists());
    assert_eq!(
        std::fs::read_to_string(f.om().join("config/config.toml")).unwrap(),
        config_before,
        "the URL it added is gone from config.toml"
    );
}

#[test]
fn disable_keeps_a_unit_the_user_edited_and_names_it() {
    let f = Fixture::new();
    f.ok(&["host", "enable"]);
    let mut unit = std::fs::read_to_string(f.unit()).unwrap();
    unit.push_str("# my own tweak\n");
    std::fs::write(f.unit(), &unit).unwrap();
    let svc = f.json(&["host", "status", "--json"])["service"].clone();
    assert!(
        svc["drift"][0].as_str().unwrap().contains("edited"),
        "{svc}"
    );
    f.take_calls();
    let out = f.ok(&["host", "disable"]);
    assert!(
        out.contains(&format!("kept {}", f.unit().display())),
        "{out}"
    );
    assert!(
        f.take_calls()
            .contains(&"systemctl --user disable --now omnigent-host.service".to_owned())
    );
    assert_eq!(std::fs::read_to_string(f.unit()).unwrap(), unit);
    assert!(!f.record().exists());
    assert_eq!(f.main_pid(), None, "the service was stopped");
}

#[test]
fn stop_restart_and_start_go_through_the_supervisor_when_it_owns_the_daemon() {
    let f = Fixture::new();
    f.ok(&["host", "enable"]);
    let first = f.main_pid().unwrap();
    f.take_calls();

    f.ok(&["restart"]);
    let calls = f.take_calls();
    assert!(
        calls.contains(&"systemctl --user restart omnigent-host.service".to_owned()),
        "{calls:?}"
    );
    let st = f.json(&["status", "--json"]);
    assert_eq!(st["daemon"]["started_by"], "systemd");
    let second = st["daemon"]["pid"].as_i64().unwrap() as i32;
    assert_ne!(second, first);
    assert_eq!(f.main_pid(), Some(second));

    let out = f.ok(&["stop"]);
    assert!(out.contains("through systemd"), "{out}");
    assert_eq!(
        f.take_calls(),
        ["systemctl --user stop omnigent-host.service"]
    );
    assert_eq!(f.json(&["status", "--json"])["running"], false);

    // The service is still enabled: `start` has systemd start it rather than running a daemon of its own.
    f.ok(&["start"]);
    let calls = f.take_calls();
    assert!(
        calls.contains(&"systemctl --user start omnigent-host.service".to_owned()),
        "{calls:?}"
    );
    assert_eq!(
        f.json(&["status", "--json"])["daemon"]["started_by"],
        "systemd"
    );
    f.ok(&["host", "disable"]);
}

#[test]
fn the_launchd_agent_round_trip_bootstraps_restarts_through_kickstart_and_boots_out() {
    let f = Fixture::new();
    let uid = nix::unistd::getuid().as_raw();
    let plist = f
        .dir
        .path()
        .join("home/Library/LaunchAgents/ai.omnigent.host.plist");
    let out = f.ok(&["host", "enable", "--init", "launchd"]);
    assert!(out.contains("Installed"), "{out}");
    assert_eq!(
        f.take_calls(),
        [
            format!("launchctl bootstrap gui/{uid} {}", plist.display()),
            format!("launchctl kickstart gui/{uid}/ai.omnigent.host"),
        ]
    );
    let svc = f.json(&["host", "status", "--json"])["service"].clone();
    assert_eq!(svc["init"], "launchd", "{svc}");
    assert_eq!(svc["enabled"], true, "{svc}");
    assert_eq!(svc["active"], true, "{svc}");
    assert_eq!(svc["started_by"], "launchd", "{svc}");
    assert_eq!(svc["linger"], Value::Null);
    // An update in place boots the loaded agent out first (launchd cannot bootstrap it twice).
    f.take_calls();
    let (out, _) = f.ok_env(&["host", "enable"], &[("LANG", "de_DE.UTF-8")]);
    assert!(out.contains("Updated"), "{out}");
    assert_eq!(
        f.take_calls(),
        [
            format!("launchctl bootout gui/{uid}/ai.omnigent.host"),
            format!("launchctl bootstrap gui/{uid} {}", plist.display()),
            format!("launchctl kickstart gui/{uid}/ai.omnigent.host"),
        ]
    );
    assert_eq!(
        f.json(&["status", "--json"])["daemon"]["started_by"],
        "launchd"
    );
    let first = f.main_pid().unwrap();
    f.take_calls();

    f.ok(&["restart"]);
    assert!(f.take_calls().contains(&format!(
        "launchctl kickstart -k gui/{uid}/ai.omnigent.host"
    )),);
    assert_ne!(f.main_pid().unwrap(), first);
    assert_eq!(
        f.json(&["status", "--json"])["daemon"]["started_by"],
        "launchd"
    );

    let out = f.ok(&["host", "disable"]);
    assert!(out.contains("removed"), "{out}");
    assert_eq!(
        f.take_calls(),
        [format!("launchctl bootout gui/{uid}/ai.omnigent.host")]
    );
    assert!(!plist.exists());
    assert_eq!(f.main_pid(), None);
}

#[test]
fn server_run_reads_bind_and_port_from_the_environment_as_a_container_platform_sets_them() {
    let f = Fixture::new();
    let ready = |env: &[(&str, String)]| -> Value {
        let mut c = f.cmd(&["server", "run"]);
        c.env_remove("PORT")
            .env_remove("OMNIGENT_PORT")
            .env_remove("OMNIGENT_BIND");
        for (k, v) in env {
            c.env(k, v);
        }
        let (_proc, stdout) = common::Proc::spawn(c);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    };
    let (a, b) = (reserved_port(), reserved_port());
    let url = |p: u16| format!("http://127.0.0.1:{p}");
    assert_eq!(ready(&[("PORT", a.to_string())])["url"], url(a));
    assert_eq!(
        ready(&[
            ("PORT", a.to_string()),
            ("OMNIGENT_PORT", b.to_string()),
            ("OMNIGENT_BIND", "127.0.0.1".into())
        ])["url"],
        url(b),
        "OMNIGENT_PORT before PORT"
    );
    let out = f
        .cmd(&["server", "run"])
        .env("OMNIGENT_BIND", "not-an-address")
        .env("OMNIGENT_PORT", "0")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(78),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-an-address"));
}

/// `--print` output (the unit on stdout), with the stand-ins on PATH and extra variables.
fn print_unit(f: &Fixture, init: &str, env: &[(&str, &str)]) -> (String, String) {
    f.ok_env(&["host", "enable", "--print", "--init", init], env)
}

fn systemd_analyze_verify(dir: &Path, unit: &str) -> Output {
    let p = dir.join("omnigent-host.service");
    std::fs::write(&p, unit).unwrap();
    Command::new("systemd-analyze")
        .arg("verify")
        .arg(&p)
        .output()
        .expect("systemd-analyze (Debian's systemd package; .ci/run installs it)")
}

#[test]
fn every_rendered_unit_passes_systemd_analyze_verify() {
    let f = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let (unit, err) = print_unit(&f, "systemd", &[]);
    assert!(
        err.contains("would run: systemctl --user enable --now omnigent-host.service"),
        "{err}"
    );
    assert!(!f.unit().exists(), "--print writes nothing");
    assert!(f.take_calls().iter().all(|c| !c.contains("enable")));
    let out = systemd_analyze_verify(dir.path(), &unit);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{unit}");
    for key in [
        "Type=notify",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "RestartSec=2",
        "KillMode=mixed",
        "TimeoutStopSec=15",
        "WantedBy=default.target",
    ] {
        assert!(unit.lines().any(|l| l == key), "{key} in {unit}");
    }
    assert!(
        !unit.contains("RestartSteps"),
        "systemd 252 has no RestartSteps"
    );

    // systemd 254+: RestartSteps and RestartMaxDelaySec (an older systemd-analyze only warns about them).
    let (unit, _) = print_unit(&f, "systemd", &[("STUB_SYSTEMD_VERSION", "255")]);
    assert!(
        unit.contains("RestartSteps=5\nRestartMaxDelaySec=60\n"),
        "{unit}"
    );
    let out = systemd_analyze_verify(dir.path(), &unit);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        assert!(
            ["RestartSteps", "RestartMaxDelaySec"]
                .iter()
                .any(|k| line.contains(&format!("Unknown key '{k}'"))
                    || line.contains(&format!("Unknown key name '{k}'"))),
            "{line}"
        );
    }

    // The packaged unit (/usr/lib/systemd/user/ in the .deb).
    let out = f.run(&["host", "enable", "--packaged"]);
    let unit = String::from_utf8(out.stdout).unwrap();
    assert!(unit.contains("ExecStart=\"/usr/bin/omnigent\" \"daemon\" \"run\" \"--foreground\""));
    assert!(!unit.contains("Environment=\"PATH"), "{unit}");
    assert_eq!(
        render_key_lines(&unit),
        render_key_lines(&print_unit(&f, "systemd", &[]).0),
        "one template"
    );
}

/// The lines of a unit other than its command and environment.
fn render_key_lines(unit: &str) -> Vec<&str> {
    unit.lines()
        .filter(|l| !l.starts_with("ExecStart=") && !l.starts_with("Environment="))
        .collect()
}

#[test]
fn the_plist_parses_and_carries_the_launchd_keys() {
    let f = Fixture::new();
    let (text, err) = print_unit(&f, "launchd", &[]);
    assert!(err.contains("launchctl bootstrap gui/"), "{err}");
    let v = plist::Value::from_reader_xml(text.as_bytes()).unwrap();
    let d = v.as_dictionary().unwrap();
    assert_eq!(d["Label"].as_string(), Some("ai.omnigent.host"));
    let args: Vec<&str> = d["ProgramArguments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_string().unwrap())
        .collect();
    assert!(
        Path::new(args[0]).is_absolute() && Path::new(args[0]).exists(),
        "{args:?}"
    );
    assert_eq!(&args[1..], ["daemon", "run", "--foreground"]);
    assert_eq!(d["RunAtLoad"].as_boolean(), Some(true));
    let keep = d["KeepAlive"].as_dictionary().unwrap();
    assert_eq!(keep["SuccessfulExit"].as_boolean(), Some(false));
    assert!(d["ThrottleInterval"].as_signed_integer().unwrap() > 0);
    assert_eq!(d["ProcessType"].as_string(), Some("Background"));
    let logs = f.om().join("state/logs");
    for k in ["StandardOutPath", "StandardErrorPath"] {
        assert!(
            Path::new(d[k].as_string().unwrap()).starts_with(&logs),
            "{k}: {:?}",
            d[k]
        );
    }
    let env = d["EnvironmentVariables"].as_dictionary().unwrap();
    for k in ["PATH", "HOME", "OMNIGENT_HOME"] {
        assert!(env.contains_key(k), "{k}");
    }
    assert_eq!(env["OMNIGENT_SUPERVISOR"].as_string(), Some("launchd"));
}

#[test]
fn no_variable_named_like_a_secret_is_written_even_when_set_and_passed_through() {
    let f = Fixture::new();
    let config = f.om().join("config/config.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.insert_str(
        0,
        "env_passthrough = [\"GITHUB_TOKEN\", \"MY_SECRET\", \"DB_PASSWORD\", \"OPENAI_API_KEY\", \"SAFE_SETTING\"]\n",
    );
    std::fs::write(&config, text).unwrap();
    let env = [
        ("ANTHROPIC_API_KEY", "sk-ant-leak"),
        ("OPENAI_API_KEY", "sk-oai-leak"),
        ("GITHUB_TOKEN", "ghp_leak"),
        ("MY_SECRET", "secret-leak"),
        ("DB_PASSWORD", "pw-leak"),
        ("HTTPS_PROXY", "http://user:proxy-leak@proxy:3128"),
        ("SAFE_SETTING", "visible"),
    ];
    for init in ["systemd", "launchd"] {
        let (unit, err) = print_unit(&f, init, &env);
        assert!(unit.contains("SAFE_SETTING"), "{unit}");
        assert!(unit.contains("visible"), "{unit}");
        for (k, v) in &env[..6] {
            assert!(
                !unit.contains(k),
                "{k} written into the {init} unit:\n{unit}"
            );
            assert!(!v.is_empty() && !unit.contains(v), "{v} in {unit}");
        }
        for k in ["GITHUB_TOKEN", "MY_SECRET", "DB_PASSWORD", "HTTPS_PROXY"] {
            assert!(err.contains(&format!("note: {k} is not written")), "{err}");
        }
    }
}

#[test]
fn the_dockerfile_runs_as_a_non_root_user_with_a_healthcheck_and_adds_no_urls() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let docker = std::fs::read_to_string(root.join("packaging/Dockerfile")).unwrap();
    // Instructions, with their `\` continuation lines joined.
    let joined = docker.replace("\\\n", " ");
    let lines: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let user = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER instruction");
    assert!(
        !matches!(user.trim().split(':').next(), Some("root" | "0")),
        "the last USER is {user}"
    );
    let health = lines
        .iter()
        .find(|l| l.starts_with("HEALTHCHECK"))
        .expect("a HEALTHCHECK");
    assert!(health.contains("/health"), "{health}");
    for l in &lines {
        let upper = l.to_ascii_uppercase();
        if upper.starts_with("ADD ") {
            assert!(!l.contains("://"), "ADD of a remote URL: {l}");
        }
    }
    assert!(
        lines.iter().filter(|l| l.starts_with("FROM ")).count() >= 2,
        "multi-stage"
    );
    for forbidden in ["tmux", "API_KEY", "anthropic", "openai"] {
        assert!(
            !docker
                .to_ascii_lowercase()
                .contains(&forbidden.to_ascii_lowercase()),
            "{forbidden} in the image"
        );
    }
    let compose = std::fs::read_to_string(root.join("packaging/compose.yaml")).unwrap();
    assert!(compose.contains("volumes:"), "{compose}");
}

#[test]
fn completions_and_man_pages_are_generated() {
    let f = Fixture::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = f.ok(&["completions", shell]);
        assert!(
            out.contains("enable"),
            "{shell}: {}",
            &out[..out.len().min(200)]
        );
    }
    let dir = tempfile::tempdir().unwrap();
    f.ok(&["man", dir.path().to_str().unwrap()]);
    for page in ["omnigent.1", "omnigent-host.1", "omnigent-host-enable.1"] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }
}

/// A real user systemd: started in a private mount namespace (with a tmpfs on /run/systemd holding the
/// `system/` directory `sd_booted()` looks for: this machine's PID 1 is not systemd), under a fresh
/// `XDG_RUNTIME_DIR`. `None` (with the reason) where that cannot be done.
struct UserSystemd {
    proc: std::process::Child,
    runtime: PathBuf,
}

impl UserSystemd {
    fn start(dir: &Path) -> Result<UserSystemd, String> {
        if !nix::unistd::getuid().is_root() {
            return Err("needs root for a private mount namespace (unshare --mount)".into());
        }
        for tool in ["/usr/bin/unshare", "/usr/bin/systemd", "/usr/bin/systemctl"] {
            if !Path::new(tool).exists() {
                return Err(format!("{tool} is missing"));
            }
        }
        let runtime = dir.join("xdg-runtime");
        std::fs::create_dir_all(&runtime).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
        let proc = Command::new("/usr/bin/unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "/bin/sh",
                "-c",
                "mount -t tmpfs tmpfs /run/systemd && mkdir -p /run/systemd/system && exec /usr/bin/systemd --user",
            ])
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("HOME", dir.join("home"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("systemd.log")).unwrap())
            .spawn()
            .map_err(|e| format!("cannot run unshare: {e}"))?;
        let mut sd = UserSystemd { proc, runtime };
        // Ready when `systemctl --user` answers with the manager's state; there is no
        // event to wait on before that socket exists, so this polls (as the restart check below does).
        for _ in 0..200 {
            if let Ok(Some(status)) = sd.proc.try_wait() {
                return Err(format!(
                    "systemd --user exited ({status}): {}",
                    std::fs::read_to_string(dir.join("systemd.log")).unwrap_or_default()
                ));
            }
            let out = Command::new("systemctl")
                // Not `is-system-running`: outside the namespace `sd_booted()` is false, so it says "offline".
                .args(["--user", "show", "-p", "SystemState", "--value"])
                .env("XDG_RUNTIME_DIR", &sd.runtime)
                .output()
                .map_err(|e| e.to_string())?;
            let s = String::from_utf8_lossy(&out.stdout);
            if s.contains("running") || s.contains("degraded") {
                return Ok(sd);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Err("systemd --user did not answer within 10 s".into())
    }
}

impl Drop for UserSystemd {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.proc.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.proc.wait();
    }
}

#[test]
fn a_real_user_systemd_runs_the_service_restarts_it_after_sigkill_and_disable_removes_it() {
    let dir = tempfile::Builder::new().prefix("sdu").tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("home")).unwrap();
    let sd = match UserSystemd::start(dir.path()) {
        Ok(sd) => sd,
        Err(why) => {
            eprintln!("skipped: no user systemd can be started here: {why}");
            return;
        }
    };
    let om = dir.path().join("om");
    std::fs::create_dir_all(om.join("config")).unwrap();
    std::fs::write(
        om.join("config/config.toml"),
        format!("[server]\nport = {}\n", reserved_port()),
    )
    .unwrap();
    let run = |args: &[&str]| -> Output {
        omnigent(&om)
            .args(args)
            .env("HOME", dir.path().join("home"))
            .env("XDG_RUNTIME_DIR", &sd.runtime)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("OMNIGENT_SUPERVISOR")
            .env_remove("INVOCATION_ID")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let systemctl = |args: &[&str]| -> String {
        let out = Command::new("systemctl")
            .arg("--user")
            .args(args)
            .env("XDG_RUNTIME_DIR", &sd.runtime)
            // Outside the namespace systemctl edits unit files itself (client side), under this HOME.
            .env("HOME", dir.path().join("home"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if stdout.is_empty() {
            eprintln!(
                "systemctl --user {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        stdout
    };
    let journal = || {
        let out = Command::new("journalctl")
            .args(["--user", "-u", "omnigent-host.service", "--no-pager"])
            .env("XDG_RUNTIME_DIR", &sd.runtime)
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let out = run(&["host", "enable"]);
    assert!(
        out.status.success(),
        "{}\n{}\njournal: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        journal()
    );
    assert_eq!(systemctl(&["is-active", "omnigent-host.service"]), "active");
    assert_eq!(
        systemctl(&["is-enabled", "omnigent-host.service"]),
        "enabled"
    );
    let st: Value = serde_json::from_slice(&run(&["host", "status", "--json"]).stdout).unwrap();
    assert_eq!(st["service"]["started_by"], "systemd", "{st}");
    let first = st["daemon_pid"].as_u64().unwrap();
    assert_eq!(
        systemctl(&["show", "-p", "MainPID", "--value", "omnigent-host.service"]),
        first.to_string()
    );

    // SIGKILL: systemd restarts it (Restart=on-failure, RestartSec=2).
    systemctl(&[
        "kill",
        "--signal=SIGKILL",
        "--kill-whom=main",
        "omnigent-host.service",
    ]);
    let mut second = None;
    for _ in 0..300 {
        let pid = systemctl(&["show", "-p", "MainPID", "--value", "omnigent-host.service"]);
        let active = systemctl(&["is-active", "omnigent-host.service"]);
        if active == "active" && pid != "0" && pid != first.to_string() {
            second = Some(pid);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let second = second.unwrap_or_else(|| panic!("not restarted; journal: {}", journal()));
    let st: Value = serde_json::from_slice(&run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(st["daemon"]["pid"].as_u64().unwrap().to_string(), second);
    assert_eq!(st["daemon"]["started_by"], "systemd");
    assert_eq!(
        systemctl(&[
            "show",
            "-p",
            "NRestarts",
            "--value",
            "omnigent-host.service"
        ]),
        "1"
    );

    let out = run(&["host", "disable"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(systemctl(&["is-active", "omnigent-host.service"]), "active");
    assert!(
        !dir.path()
            .join("home/.config/systemd/user/omnigent-host.service")
            .exists()
    );
    let st: Value = serde_json::from_slice(&run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(st["running"], false);
}

/// launchd restarts every non-zero exit, so under it a configuration error exits 0 (no restart loop), and is
/// still printed on stderr (which the agent keeps in the logs dir); anywhere else it is exit 78.
#[test]
fn a_configuration_error_under_launchd_exits_0_and_is_still_shown() {
    let dir = tempfile::tempdir().unwrap();
    let om = dir.path().join("om");
    std::fs::create_dir_all(om.join("config")).unwrap();
    std::fs::write(om.join("config/config.toml"), "[server\nport = 1\n").unwrap();
    let run = |supervisor: Option<&str>| -> Output {
        let mut c = omnigent(&om);
        c.args(["daemon", "run", "--foreground"]);
        if let Some(init) = supervisor {
            c.env("OMNIGENT_SUPERVISOR", init);
        }
        c.stdin(Stdio::null()).output().unwrap()
    };
    let plain = run(None);
    assert_eq!(plain.status.code(), Some(78), "{plain:?}");
    let launchd = run(Some("launchd"));
    assert_eq!(launchd.status.code(), Some(0), "{launchd:?}");
    let stderr = String::from_utf8_lossy(&launchd.stderr);
    assert!(
        stderr.contains("error:") && stderr.contains("config.toml"),
        "{stderr}"
    );
}
