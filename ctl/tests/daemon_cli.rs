#![allow(clippy::unwrap_used)]
//! Black-box tests of the real `omnigent` binary: the daemon, start-or-reuse, server supervision, and one test
//! per failure mode of issue 3. Every test has its own OMNIGENT_HOME in a temp dir and its own free port
//! (OMNIGENT_SERVER_PORT), so tests run in parallel and never touch 6767 or the real home.
//!
//! Waiting is done on signals: command exits, the daemon lock being released, and the control API's
//! `GET /v1/status?after=<revision>` long-poll, which answers when the daemon's state changes.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use omnigent_daemon::supervise::local_server::SERVER_STOPPED;
use omnigent_testkit::net::PortReservation;
use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_omnigent");

struct Home {
    dir: tempfile::TempDir,
    /// The server port, held for the daemon (no port-0 bind is given it; the server under test binds it).
    port: u16,
    reserved: Option<PortReservation>,
    /// Extra environment for every command (and so for the daemon a `start` spawns).
    env: Vec<(&'static str, String)>,
}

impl Home {
    fn new() -> Self {
        Home {
            dir: tempfile::Builder::new().prefix("og").tempdir().unwrap(),
            port: 0,
            reserved: None,
            env: Vec::new(),
        }
        .reserving_a_port()
    }

    /// With a server port of its own, held until the home goes.
    fn reserving_a_port(mut self) -> Self {
        let reserved = PortReservation::new();
        self.port = reserved.port;
        self.reserved = Some(reserved);
        self
    }

    fn with_env(env: &[(&'static str, &str)]) -> Self {
        let mut h = Home::new();
        h.env = env.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        h
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn run_dir(&self) -> PathBuf {
        self.path().join("run")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(EXE);
        c.args(args)
            .env("OMNIGENT_HOME", self.path())
            .env("OMNIGENT_SERVER_PORT", self.port.to_string())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("OMNIGENT_LOG")
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Run, assert exit 0, parse stdout as JSON.
    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "omnigent {args:?} failed: {}",
            text(&out)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", text(&out)))
    }

    fn start(&self) -> Value {
        self.json(&["start", "--json"])
    }

    fn status(&self) -> Value {
        self.json(&["status", "--json"])
    }

    /// Raw HTTP/1.1 on the control socket (what `curl --unix-socket` does).
    fn raw(&self, method: &str, path: &str, headers: &[&str], body: &str) -> (u16, Value) {
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: omnigent\r\nConnection: close\r\n");
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        if !body.is_empty() {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.raw_request(req.as_bytes())
    }

    /// Send `req` as is on the control socket and read the answer to its end.
    fn raw_request(&self, req: &[u8]) -> (u16, Value) {
        let mut s = UnixStream::connect(self.run_dir().join("daemon.sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        // A daemon may refuse (413) and close before reading an oversized body: ignore the write error and read
        // its answer.
        let _ = s.write_all(req);
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let resp = String::from_utf8_lossy(&resp).to_string();
        let status: u16 = resp.split(' ').nth(1).unwrap().parse().unwrap();
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    /// Wait (by long-poll on the daemon's state revision) until `pred` holds for the status.
    fn wait_status(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut st = self.raw("GET", "/v1/status", &[], "").1;
        while !pred(&st) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last status: {st:#}"
            );
            let rev = st["revision"].as_u64().unwrap();
            st = self
                .raw(
                    "GET",
                    &format!("/v1/status?after={rev}&timeout_ms=10000"),
                    &[],
                    "",
                )
                .1;
        }
        st
    }

    fn daemon_lock_held(&self) -> bool {
        let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.run_dir().join("daemon.lock"))
        else {
            return false;
        };
        matches!(
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockSharedNonblock),
            Err((_, nix::errno::Errno::EWOULDBLOCK))
        )
    }

    /// Block until the daemon lock is free: the daemon process is gone (a signal from the kernel, not a poll).
    fn wait_daemon_gone(&self) {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.run_dir().join("daemon.lock"))
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockShared).is_ok());
        });
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(20)),
            Ok(true),
            "the daemon did not exit"
        );
    }

    /// Processes whose environment has our OMNIGENT_HOME and whose command line contains `needle`.
    fn processes(&self, needle: &str) -> Vec<u32> {
        let home = format!("OMNIGENT_HOME={}", self.path().display());
        let mut pids = vec![];
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if !alive(pid) {
                continue;
            }
            let Ok(env) = std::fs::read(e.path().join("environ")) else {
                continue;
            };
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if env.split(|b| *b == 0).any(|kv| kv == home.as_bytes()) && cmd.contains(needle) {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = self
            .cmd(&["stop", "--force"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Alive and not a zombie (killed daemons are reparented to an init that may reap late).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

fn sigkill(pid: u64) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
}

fn port_closed(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
}

fn health(url: &str) -> bool {
    let port: u16 = url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut r = String::new();
    let _ = s.read_to_string(&mut r);
    r.starts_with("HTTP/1.1 200") && r.contains("\"ok\"")
}

#[test]
fn start_status_stop_round_trip_leaves_nothing_running() {
    let h = Home::new();
    let started = h.start();
    assert_eq!(started["daemon"]["started"], true);
    let server = &started["server"];
    assert_eq!(server["state"], "running", "{started:#}");
    let url = server["url"].as_str().unwrap();
    assert_eq!(url, format!("http://127.0.0.1:{}", h.port));
    assert!(health(url));

    // Reuse: a second start finds the same daemon and server.
    let again = h.start();
    assert_eq!(again["daemon"]["started"], false);
    assert_eq!(again["daemon"]["pid"], started["daemon"]["pid"]);
    assert_eq!(again["server"]["pid"], server["pid"]);

    let st = h.status();
    assert_eq!(st["running"], true);
    assert_eq!(st["daemon"]["started_by"], "cli");
    assert_eq!(st["server"]["healthy"], true);
    assert_eq!(st["server"]["session_count"], 0);
    assert!(
        st["server"]["database"]
            .as_str()
            .unwrap()
            .ends_with("omnigent.db")
    );
    assert_eq!(st["config"]["host_id"].as_str().unwrap().len(), 32);
    let human = h.run(&["status"]);
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("healthy"),
        "{}",
        text(&human)
    );
    let ss = h.json(&["server", "status", "--json"]);
    assert_eq!(ss["pid"], server["pid"]);
    let record: Value =
        serde_json::from_slice(&std::fs::read(h.run_dir().join("server.json")).unwrap()).unwrap();
    assert_eq!(record["url"], url);

    // Socket 0600 in a 0700 dir.
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(h.run_dir()), 0o700);
    assert_eq!(mode(h.run_dir().join("daemon.sock")), 0o600);

    let daemon_pid = started["daemon"]["pid"].as_u64().unwrap() as u32;
    let server_pid = server["pid"].as_u64().unwrap() as u32;
    let out = h.run(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("daemon pid {daemon_pid}")),
        "{}",
        text(&out)
    );
    // `stop` returns once every process is gone and the port is closed.
    assert!(!alive(daemon_pid) && !alive(server_pid));
    assert!(port_closed(h.port));
    assert!(!h.run_dir().join("daemon.sock").exists());
    assert!(!h.run_dir().join("server.json").exists());

    let out = h.run(&["stop"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Nothing to stop."
    );
    assert_eq!(h.status()["running"], false);
}

#[test]
fn stale_socket_left_by_a_sigkilled_daemon_does_not_block_the_next_start() {
    let h = Home::new();
    let first = h.start();
    sigkill(first["daemon"]["pid"].as_u64().unwrap());
    h.wait_daemon_gone();
    assert!(
        h.run_dir().join("daemon.sock").exists(),
        "the test needs a stale socket file"
    );
    // A command that does not start anything says so, instead of failing on the stale socket.
    let st = h.status();
    assert_eq!(st["running"], false);
    let second = h.start();
    assert_eq!(second["daemon"]["started"], true);
    assert_ne!(second["daemon"]["pid"], first["daemon"]["pid"]);
    assert!(health(second["server"]["url"].as_str().unwrap()));
}

#[test]
fn a_lock_file_whose_recorded_pid_belongs_to_another_live_process_does_not_block_start() {
    let h = Home::new();
    std::fs::create_dir_all(h.run_dir()).unwrap();
    std::fs::set_permissions(h.run_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    // As after a reboot: the lock file names a pid that now belongs to some other live process (us).
    std::fs::write(
        h.run_dir().join("daemon.lock"),
        format!("{}\n", std::process::id()),
    )
    .unwrap();
    let st = h.start();
    assert_eq!(st["server"]["state"], "running");
    assert_ne!(
        st["daemon"]["pid"].as_u64().unwrap() as u32,
        std::process::id()
    );
}

#[test]
fn a_runtime_dir_with_wrong_permissions_is_a_clear_configuration_error() {
    let h = Home::new();
    std::fs::create_dir_all(h.run_dir()).unwrap();
    std::fs::set_permissions(h.run_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for args in [&["start"][..], &["status"], &["stop"]] {
        let out = h.run(args);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("mode 0755") && err.contains("chmod 700"),
            "{args:?}: {err}"
        );
    }
    assert!(!h.daemon_lock_held());
    assert!(port_closed(h.port));
}

#[test]
fn a_runtime_dir_owned_by_another_user_is_a_clear_configuration_error() {
    let h = Home::new();
    std::fs::create_dir_all(h.run_dir()).unwrap();
    std::fs::set_permissions(h.run_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    if std::os::unix::fs::chown(h.run_dir(), Some(65534), Some(65534)).is_err() {
        // Only root can give a directory away; as another user the other-owner case cannot be staged.
        eprintln!("skipped: not root, cannot chown");
        return;
    }
    let out = h.run(&["start"]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("belongs to uid 65534"),
        "{}",
        text(&out)
    );
    assert!(port_closed(h.port));
    std::os::unix::fs::chown(h.run_dir(), Some(0), Some(0)).unwrap();
}

#[test]
fn sigkill_of_the_daemon_while_the_server_runs_recovers_without_a_second_server() {
    let h = Home::new();
    let first = h.start();
    let old_server = first["server"]["pid"].as_u64().unwrap() as u32;
    sigkill(first["daemon"]["pid"].as_u64().unwrap());
    h.wait_daemon_gone();
    let second = h.start();
    assert_eq!(second["server"]["state"], "running", "{second:#}");
    assert!(health(second["server"]["url"].as_str().unwrap()));
    // The orphaned server was told to stop (PR_SET_PDEATHSIG) and the new daemon waited for it.
    assert!(
        !alive(old_server),
        "the old server {old_server} survives next to the new one"
    );
    assert_eq!(h.processes("server run").len(), 1, "exactly one server");
    assert_eq!(h.processes("daemon run").len(), 1, "exactly one daemon");
}

#[test]
fn sigkill_of_the_server_makes_the_daemon_restart_it() {
    let h = Home::new();
    let first = h.start();
    let old = first["server"]["pid"].as_u64().unwrap();
    sigkill(old);
    let st = h.wait_status("a restarted server", |st| {
        st["server"]["state"] == "running" && st["server"]["pid"].as_u64().is_some_and(|p| p != old)
    });
    assert_eq!(st["server"]["restarts"], 1);
    let exit = &st["server"]["last_exits"][0];
    assert_eq!(exit["signal"], 9, "{st:#}");
    assert!(health(st["server"]["url"].as_str().unwrap()));
    assert_eq!(st["server"]["url"], first["server"]["url"]);
}

#[test]
fn stop_during_a_start_leaves_nothing_running() {
    let h = Home::new();
    let start = h
        .cmd(&["start"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the start to be under way: it holds the start lock while it spawns the daemon.
    let start_lock = h.run_dir().join("start.lock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(start_lock.exists() || h.run_dir().join("daemon.lock").exists()) {
        assert!(Instant::now() < deadline, "start never began");
        std::thread::yield_now();
    }
    let stop = h.run(&["stop"]);
    let start = start.wait_with_output().unwrap();
    assert!(stop.status.success(), "{}", text(&stop));
    // The start either completed before the stop took effect (exit 0) or was told it was stopped (exit 1).
    match start.status.code() {
        Some(0) => {}
        Some(1) => assert!(
            String::from_utf8_lossy(&start.stderr).contains("stopped"),
            "{}",
            text(&start)
        ),
        _ => panic!("{}", text(&start)),
    }
    if !String::from_utf8_lossy(&stop.stdout).contains("Nothing to stop") {
        assert!(!h.daemon_lock_held(), "daemon still running after stop");
        assert!(h.processes("server run").is_empty());
        assert!(port_closed(h.port));
    }
    // Whatever the interleaving, the next start works and the next stop cleans up.
    assert_eq!(h.start()["server"]["state"], "running");
    assert!(h.run(&["stop"]).status.success());
    assert!(!h.daemon_lock_held());
    assert!(port_closed(h.port));
}

#[test]
fn a_foreign_listener_on_the_server_port_is_named_and_never_adopted() {
    let mut h = Home::new();
    let foreign = h.reserved.take().unwrap().listen();
    std::thread::spawn(move || {
        for mut s in foreign.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}");
        }
    });
    let out = h.run(&["start"]);
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "port {} is held by another program (pid {}",
            h.port,
            std::process::id()
        )),
        "{err}"
    );
    let st = h.status();
    let server = &st["server"];
    assert_eq!(server["state"], "running");
    assert_ne!(server["port"], h.port);
    assert_eq!(server["foreign"]["pid"], std::process::id());
    assert!(
        server["foreign"]["command"]
            .as_str()
            .unwrap()
            .contains("daemon_cli"),
        "{server:#}"
    );
    assert!(health(server["url"].as_str().unwrap()));
    let record: Value =
        serde_json::from_slice(&std::fs::read(h.run_dir().join("server.json")).unwrap()).unwrap();
    assert_eq!(record["url"], server["url"]);
    assert_eq!(record["adopted"], false);
}

#[test]
fn five_concurrent_starts_end_with_one_daemon_and_one_server() {
    let h = Home::new();
    let children: Vec<_> = (0..5)
        .map(|_| {
            h.cmd(&["start", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Value> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", text(&out));
            serde_json::from_slice(&out.stdout).unwrap()
        })
        .collect();
    let daemon = &outs[0]["daemon"]["pid"];
    let server = &outs[0]["server"]["pid"];
    for o in &outs {
        assert_eq!(&o["daemon"]["pid"], daemon);
        assert_eq!(&o["server"]["pid"], server);
    }
    assert_eq!(
        outs.iter()
            .filter(|o| o["daemon"]["started"] == true)
            .count(),
        1
    );
    assert_eq!(h.processes("daemon run").len(), 1);
    assert_eq!(h.processes("server run").len(), 1);
}

#[test]
fn config_edits_apply_live_and_a_broken_edit_keeps_the_previous_config() {
    let h = Home::new();
    h.start();
    let config = h.path().join("config/config.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    assert!(original.contains("host_id"), "{original}");
    std::fs::write(
        &config,
        format!("{original}\n[[targets]]\nurl = \"https://team.example.test\"\n"),
    )
    .unwrap();
    let st = h.wait_status("the new target", |st| {
        st["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["url"] == "https://team.example.test")
    });
    assert_eq!(st["config"]["loads"], 2);
    assert_eq!(st["config"]["error"], Value::Null);

    std::fs::write(
        &config,
        format!("{original}\n[[targets]]\nurl = \"https://broken\n"),
    )
    .unwrap();
    let broken_line = original.lines().count() + 3;
    let st = h.wait_status("the config error", |st| st["config"]["error"].is_string());
    let err = st["config"]["error"].as_str().unwrap();
    assert!(
        err.contains(&format!("line {broken_line}, column")),
        "{err}"
    );
    assert!(
        st["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["url"] == "https://team.example.test"),
        "{st:#}"
    );
    let human = String::from_utf8_lossy(&h.run(&["status"]).stdout).to_string();
    assert!(human.contains("error:"), "{human}");

    std::fs::write(&config, &original).unwrap();
    let st = h.wait_status("the fixed config", |st| st["config"]["error"].is_null());
    let host_id = st["config"]["host_id"].clone();
    assert!(
        st["targets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["url"] != "https://team.example.test")
    );
    assert_eq!(st["config"]["loads"], 3);

    // Deleting the file falls back to defaults but never drops the host identity of a running daemon.
    std::fs::write(&config, format!("env_passthrough = [\"X\"]\n{original}")).unwrap();
    h.wait_status("the env edit", |st| st["config"]["loads"] == 4);
    std::fs::remove_file(&config).unwrap();
    let st = h.wait_status("the deleted config", |st| st["config"]["loads"] == 5);
    assert_eq!(st["config"]["host_id"], host_id);
}

#[test]
fn a_client_speaking_another_protocol_version_gets_a_typed_error_with_the_remedy() {
    let h = Home::new();
    let started = h.start();
    let (code, body) = h.raw(
        "POST",
        "/v1/hello",
        &[],
        r#"{"protocol_version":999,"build_version":"9.0.0"}"#,
    );
    assert_eq!(code, 426, "{body}");
    assert_eq!(body["code"], "protocol_mismatch");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("omnigent restart"),
        "{body}"
    );
    assert_eq!(body["daemon"]["pid"], started["daemon"]["pid"]);
    assert_eq!(body["daemon"]["protocol_version"], 1);

    let (code, body) = h.raw("GET", "/v1/status", &["x-omnigent-protocol: 999"], "");
    assert_eq!(code, 426);
    assert_eq!(body["code"], "protocol_mismatch");

    let (code, body) = h.raw("POST", "/v1/hello", &[], "not json");
    assert_eq!(code, 400);
    assert_eq!(body["code"], "bad_request");
    let (code, _) = h.raw(
        "POST",
        "/v1/hello",
        &[],
        &format!("{{\"x\":\"{}\"}}", "a".repeat(2 * 1024 * 1024)),
    );
    assert_eq!(code, 413);
    let (code, body) = h.raw("GET", "/v1/nope", &[], "");
    assert_eq!((code, body["code"].as_str()), (404, Some("not_found")));

    // The right version works, with no header (curl) or the right one.
    let (code, body) = h.raw(
        "POST",
        "/v1/hello",
        &[],
        r#"{"protocol_version":1,"build_version":"0.1.0"}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        h.raw("GET", "/v1/status", &["x-omnigent-protocol: 1"], "")
            .0,
        200
    );
}

#[test]
fn a_bind_that_is_no_address_is_refused_and_start_lan_on_a_loopback_daemon_names_restart_lan() {
    let h = Home::new();
    let out = h.run(&["start", "--bind", "my-laptop.lan"]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an IP address"));
    assert!(!h.daemon_lock_held());
    // A daemon serving loopback only is not silently kept by `start --lan`.
    let out = h.run(&["start"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = h.run(&["start", "--lan"]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("omnigent restart --lan"),
        "{}",
        text(&out)
    );
    // `--lan` is kept in config.toml, so the next plain start serves the LAN (as the service's daemon would).
    let config = std::fs::read_to_string(h.path().join("config/config.toml")).unwrap();
    assert!(config.contains("bind = \"0.0.0.0\""), "{config}");
    assert!(h.run(&["stop"]).status.success());
    let out = h.run(&["start", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let started: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(started["server"]["lan_bind"], "0.0.0.0", "{started}");
    assert_eq!(started["server"]["bind"], "0.0.0.0", "{started}");
    // `--bind 127.0.0.1` takes it back out.
    assert!(h.run(&["stop"]).status.success());
    let out = h.run(&["start", "--bind", "127.0.0.1", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let started: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(started["server"]["lan_bind"].is_null(), "{started}");
    let config = std::fs::read_to_string(h.path().join("config/config.toml")).unwrap();
    assert!(!config.contains("bind"), "{config}");
}

#[test]
fn a_failed_daemon_start_prints_the_cause_and_log_tail_and_the_next_start_is_clean() {
    let h = Home::new();
    let config = h.path().join("config/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, "[server]\nport = \"nope\n").unwrap();
    let out = h.run(&["start"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the daemon failed to start") && err.contains("line 2, column"),
        "{err}"
    );
    assert!(
        err.contains("last lines of") && err.contains("daemon.log"),
        "{err}"
    );
    assert!(!h.daemon_lock_held(), "a failed start left a daemon");
    assert!(port_closed(h.port));

    std::fs::write(&config, "[server]\n").unwrap();
    assert_eq!(h.start()["server"]["state"], "running");
}

#[test]
fn a_server_that_cannot_start_is_reported_as_a_crash_loop_with_exits_and_log_tail() {
    let h = Home::new();
    // An unusable database path (under a regular file) makes every server start fail fast.
    std::fs::write(h.path().join("afile"), "").unwrap();
    let out = h
        .cmd(&["start"])
        .env(
            "OMNIGENT_DATABASE_URL",
            format!("sqlite://{}/afile/x.db", h.path().display()),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the local server did not start"),
        "{}",
        text(&out)
    );
    let st = h.status();
    assert_eq!(st["server"]["state"], "crashloop", "{st:#}");
    assert_eq!(st["server"]["last_exits"].as_array().unwrap().len(), 5);
    assert!(!st["server"]["log_tail"].as_array().unwrap().is_empty());
    let human = String::from_utf8_lossy(&h.run(&["server", "status"]).stdout).to_string();
    assert!(
        human.contains("crash loop") && human.contains("last exits"),
        "{human}"
    );
}

#[test]
fn a_long_omnigent_home_binds_through_a_short_socket_path() {
    let base = tempfile::tempdir().unwrap();
    let deep = base
        .path()
        .join("a-very-long-directory-name-that-pushes-the-socket-path-past-sun-path-limits");
    let h = Home {
        dir: tempfile::Builder::new()
            .prefix("og")
            .tempdir_in({
                std::fs::create_dir_all(&deep).unwrap();
                &deep
            })
            .unwrap(),
        port: 0,
        reserved: None,
        env: Vec::new(),
    }
    .reserving_a_port();
    assert!(h.run_dir().join("daemon.sock").as_os_str().len() > 108);
    assert_eq!(h.start()["server"]["state"], "running");
    assert_eq!(h.status()["running"], true);
    assert!(h.run(&["stop"]).status.success());
    assert!(!h.daemon_lock_held());
}

#[test]
fn server_stop_and_start_keep_the_daemon_and_logs_show_the_server() {
    let h = Home::new();
    let first = h.start();
    let out = h.json(&["server", "stop", "--json"]);
    assert_eq!(out["stopped"], true);
    assert!(port_closed(h.port));
    assert_eq!(h.status()["server"]["state"], "stopped");
    let again = h.json(&["server", "start", "--json"]);
    assert_eq!(again["state"], "running");
    assert_ne!(again["pid"], first["server"]["pid"]);
    assert_eq!(h.status()["daemon"]["pid"], first["daemon"]["pid"]);

    let logs = h.run(&["logs", "server", "-n", "1000"]);
    assert!(logs.status.success(), "{}", text(&logs));
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains(SERVER_STOPPED),
        "{}",
        text(&logs)
    );
    let logs = h.run(&["logs", "daemon"]);
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains("daemon ready"),
        "{}",
        text(&logs)
    );
    assert_eq!(h.run(&["logs", "bogus"]).status.code(), Some(78));
}

#[test]
fn restart_replaces_the_daemon_and_the_server() {
    let h = Home::new();
    let first = h.start();
    let out = h.run(&["restart", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let st = h.status();
    assert_ne!(st["daemon"]["pid"], first["daemon"]["pid"]);
    assert_ne!(st["server"]["pid"], first["server"]["pid"]);
    assert_eq!(st["server"]["healthy"], true);
}

/// Stand-in for a daemon from another omnigent release (one cannot be built here): holds the daemon lock and
/// answers the frozen hello on the control socket. Its "pid" is a `sleep` child, so the CLI's SIGTERM lands
/// on a real process; the lock is released when that process dies, as the kernel would for a real daemon.
struct OldDaemon {
    sleeper: u32,
    exited: std::sync::mpsc::Receiver<std::process::ExitStatus>,
}

impl OldDaemon {
    fn start(h: &Home, hello_status: u16, protocol: u32, version: &str) -> Self {
        std::fs::create_dir_all(h.run_dir()).unwrap();
        std::fs::set_permissions(h.run_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(h.run_dir().join("daemon.lock"))
            .unwrap();
        let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .unwrap();
        let mut sleeper = Command::new("sleep").arg("1000").spawn().unwrap();
        let pid = sleeper.id();
        let (tx, exited) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let status = sleeper.wait().unwrap();
            drop(lock);
            let _ = tx.send(status);
        });
        let listener =
            std::os::unix::net::UnixListener::bind(h.run_dir().join("daemon.sock")).unwrap();
        let hello = format!(
            r#"{{"code":"protocol_mismatch","message":"old daemon","daemon":{{"protocol_version":{protocol},"build_version":"{version}","pid":{pid}}}}}"#
        );
        let ok_hello =
            format!(r#"{{"protocol_version":{protocol},"build_version":"{version}","pid":{pid}}}"#);
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let (hello, ok_hello) = (hello.clone(), ok_hello.clone());
                std::thread::spawn(move || serve_old(s, hello_status, &hello, &ok_hello));
            }
        });
        OldDaemon {
            sleeper: pid,
            exited,
        }
    }
}

fn serve_old(mut s: UnixStream, hello_status: u16, mismatch: &str, ok_hello: &str) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        while buf.len() < end + 4 + len {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let (status, body) = if head.starts_with("post /v1/hello") {
            if hello_status == 200 {
                (200, ok_hello.to_owned())
            } else {
                (hello_status, mismatch.to_owned())
            }
        } else {
            (
                500,
                r#"{"code":"internal","message":"this stand-in only says hello"}"#.to_owned(),
            )
        };
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(resp.as_bytes()).is_err() {
            return;
        }
        buf.drain(..end + 4 + len);
    }
}

#[test]
fn a_protocol_incompatible_daemon_is_drained_and_replaced_by_the_cli() {
    let h = Home::new();
    let old = OldDaemon::start(&h, 426, 0, "0.0.1");
    let out = h.run(&["start", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("pid {}", old.sleeper))
            && err.contains("stopped it and started a new one"),
        "{err}"
    );
    // The old daemon got SIGTERM (a graceful drain), not SIGKILL.
    let status = old.exited.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(15)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["server"]["state"], "running");
    assert_eq!(h.status()["daemon"]["protocol_version"], 1);
}

#[test]
fn an_older_compatible_daemon_gets_one_stderr_line_naming_restart() {
    let h = Home::new();
    let old = OldDaemon::start(&h, 200, 1, "0.0.1");
    let out = h.run(&["status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    let notes: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("older than this CLI"))
        .collect();
    assert_eq!(notes.len(), 1, "{err}");
    assert!(
        notes[0].contains("0.0.1") && notes[0].contains("omnigent restart"),
        "{err}"
    );
    // Nothing was stopped: a compatible daemon is the user's to restart.
    assert!(old.exited.try_recv().is_err());
    sigkill(u64::from(old.sleeper));
    old.exited.recv_timeout(Duration::from_secs(5)).unwrap();
}

#[test]
fn daemon_run_detaches_and_under_systemd_sends_ready_then_stops_children_on_sigterm() {
    let h = Home::new();
    // The spawned daemon: new session, cwd /, stdin /dev/null.
    let st = h.start();
    let pid = st["daemon"]["pid"].as_u64().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        fields[3],
        pid.to_string(),
        "session id = pid (setsid): {stat}"
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        Path::new("/")
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap(),
        Path::new("/dev/null")
    );
    assert!(h.run(&["stop"]).status.success());

    // systemd: Type=notify readiness on NOTIFY_SOCKET, SIGTERM → children stopped, exit 0.
    let notify_path = h.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut daemon = h
        .cmd(&["daemon", "run", "--foreground"])
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    let st = h.wait_status("the server", |st| st["server"]["state"] == "running");
    assert_eq!(st["daemon"]["started_by"], "systemd");
    let server = st["server"]["pid"].as_u64().unwrap() as u32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert_eq!(daemon.wait().unwrap().code(), Some(0));
    assert!(!alive(server));
    assert!(port_closed(h.port));
}

#[test]
fn logs_follow_prints_lines_as_they_are_written() {
    use std::io::BufRead;
    let h = Home::new();
    h.start();
    let mut follow = h
        .cmd(&["logs", "server", "-f", "-n", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The tail comes first; after it, everything appended must be printed.
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the tail line");
    assert!(h.run(&["server", "stop"]).status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("`logs -f` did not print the stop line");
        if line.contains(SERVER_STOPPED) {
            break;
        }
    }
    follow.kill().unwrap();
    follow.wait().unwrap();
}

#[test]
fn our_own_server_already_on_the_port_is_adopted_not_doubled_and_stop_stops_it() {
    use std::io::BufRead;
    let h = Home::new();
    // A server the user started by hand on the configured port.
    let mut manual = h
        .cmd(&["server", "run", "--port", &h.port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufReader::new(manual.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert!(ready.contains("\"ready\":true"), "{ready}");
    let st = h.start();
    assert_eq!(st["server"]["state"], "adopted", "{st:#}");
    assert_eq!(st["server"]["pid"], manual.id());
    assert_eq!(h.processes("server run").len(), 1, "no second server");
    let record: Value =
        serde_json::from_slice(&std::fs::read(h.run_dir().join("server.json")).unwrap()).unwrap();
    assert_eq!(record["adopted"], true);
    assert!(h.run(&["stop"]).status.success());
    // SIGTERM is a graceful stop for the server: it exits 0.
    assert_eq!(manual.wait().unwrap().code(), Some(0));
    assert!(port_closed(h.port));
}

#[test]
fn stop_force_kills_at_once_and_leaves_nothing() {
    let h = Home::new();
    let st = h.start();
    let server = st["server"]["pid"].as_u64().unwrap() as u32;
    let out = h.run(&["stop", "--force", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["stopped"].as_array().unwrap().len(), 2, "{v}");
    assert!(!alive(server));
    assert!(!h.daemon_lock_held());
    assert!(port_closed(h.port));
    let log = std::fs::read_to_string(h.path().join("state/logs/server.log")).unwrap();
    assert!(
        log.contains(&format!("{SERVER_STOPPED} (killed by signal 9)")),
        "{log}"
    );
}

#[test]
fn the_daemon_refuses_peers_of_another_uid_even_when_file_modes_would_let_them_in() {
    use std::os::unix::process::CommandExt;
    let h = Home::new();
    h.start();
    let sock = h.run_dir().join("daemon.sock");
    // Stage the mistake the peer check guards against: modes that let anyone reach the socket.
    std::fs::set_permissions(h.run_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(h.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let probe = format!(
        "import socket\ns=socket.socket(socket.AF_UNIX)\ns.connect({:?})\n\
         try:\n  s.sendall(b'GET /v1/status HTTP/1.1\\r\\nHost: omnigent\\r\\n\\r\\n')\n  \
         print(repr(s.recv(200)))\nexcept (ConnectionResetError, BrokenPipeError):\n  print(repr(b''))",
        sock.display().to_string()
    );
    let out = match Command::new("python3")
        .arg("-c")
        .arg(&probe)
        .uid(65534)
        .gid(65534)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("skipped: cannot run python3 as uid 65534 ({e}); needs root and python3");
            return;
        }
    };
    std::fs::set_permissions(h.run_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    if String::from_utf8_lossy(&out.stderr).contains("PermissionError") {
        eprintln!("skipped: not root, the other uid cannot reach the socket at all");
        return;
    }
    assert!(out.status.success(), "{}", text(&out));
    // Closed (or reset) without a byte of reply.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "b''",
        "{}",
        text(&out)
    );
    // The owner is still served.
    assert_eq!(h.raw("GET", "/v1/status", &[], "").0, 200);
}

// ---------------------------------------------------------------------------------------------------------
// Issue 9, hole 4: one daemon, whatever a tmp cleaner deletes.

/// Start, let `remove` delete some of the runtime files, then check that `start` reuses the same daemon,
/// `status` finds it (and the daemon has put its files back by the time it answers), there is one daemon
/// and one server, and `stop` leaves nothing.
fn one_daemon_after(remove: impl Fn(&Home)) {
    let h = Home::new();
    let first = h.start();
    let daemon = first["daemon"]["pid"].as_u64().unwrap();
    let server = first["server"]["pid"].as_u64().unwrap();
    remove(&h);

    let again = h.start();
    assert_eq!(again["daemon"]["started"], false, "{again:#}");
    assert_eq!(again["daemon"]["pid"], daemon, "{again:#}");
    assert_eq!(again["server"]["pid"], server, "{again:#}");
    let st = h.status();
    assert_eq!(st["running"], true);
    assert_eq!(st["daemon"]["pid"], daemon);
    // Status is answered after the daemon checked its files: they are back, the lock held, with its pid.
    assert!(h.run_dir().join("daemon.sock").exists());
    let record: Value =
        serde_json::from_slice(&std::fs::read(h.run_dir().join("server.json")).unwrap()).unwrap();
    assert_eq!(record["pid"], server);
    assert!(h.daemon_lock_held(), "the daemon did not re-take its lock");
    assert_eq!(
        std::fs::read_to_string(h.run_dir().join("daemon.lock"))
            .unwrap()
            .trim(),
        daemon.to_string()
    );
    assert_eq!(h.processes("daemon run"), vec![daemon as u32], "one daemon");
    assert_eq!(h.processes("server run"), vec![server as u32], "one server");

    let out = h.run(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !alive(daemon as u32) && !alive(server as u32),
        "{}",
        text(&out)
    );
    assert!(h.processes("daemon run").is_empty());
    assert!(h.processes("server run").is_empty());
    assert!(port_closed(h.port));
}

#[test]
fn removing_the_whole_runtime_dir_keeps_one_daemon_and_stop_leaves_nothing() {
    one_daemon_after(|h| std::fs::remove_dir_all(h.run_dir()).unwrap());
}

#[test]
fn removing_only_the_control_socket_keeps_one_daemon_and_stop_leaves_nothing() {
    one_daemon_after(|h| std::fs::remove_file(h.run_dir().join("daemon.sock")).unwrap());
}

#[test]
fn removing_only_the_lock_file_keeps_one_daemon_and_stop_leaves_nothing() {
    one_daemon_after(|h| std::fs::remove_file(h.run_dir().join("daemon.lock")).unwrap());
}

/// Kills (and reaps) a helper process when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait (bounded) until `pid` is gone or a zombie; it is not our child, so there is nothing to wait on.
fn wait_gone(pid: u32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive(pid) {
        assert!(Instant::now() < deadline, "{what} (pid {pid}) did not exit");
        std::thread::yield_now();
    }
}

#[test]
fn a_daemon_whose_lock_file_was_replaced_and_taken_by_another_stands_down_and_stops_its_children() {
    let h = Home::new();
    let first = h.start();
    let daemon = first["daemon"]["pid"].as_u64().unwrap() as u32;
    let server = first["server"]["pid"].as_u64().unwrap() as u32;
    std::fs::remove_dir_all(h.run_dir()).unwrap();
    // Another daemon the guard cannot see (another network namespace, say) took a new lock file: staged by
    // taking it here and recording a live pid that is not a daemon's pid in it.
    let other = KillOnDrop(Command::new("sleep").arg("120").spawn().unwrap());
    std::fs::create_dir_all(h.run_dir()).unwrap();
    std::fs::set_permissions(h.run_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut f = std::fs::File::create(h.run_dir().join("daemon.lock")).unwrap();
    writeln!(f, "{}", other.0.id()).unwrap();
    let lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();

    // The CLI finds no socket and asks the daemon (through its guard) to put its files back: it cannot,
    // says why, and goes.
    let out = h.run(&["status"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("standing down"),
        "{}",
        text(&out)
    );
    wait_gone(daemon, "the daemon that stood down");
    wait_gone(server, "its server");
    assert!(h.processes("daemon run").is_empty());
    assert!(h.processes("server run").is_empty());
    // It left the other daemon's lock file alone.
    assert_eq!(
        std::fs::read_to_string(h.run_dir().join("daemon.lock"))
            .unwrap()
            .trim(),
        other.0.id().to_string()
    );
    drop(lock);
}

// ---------------------------------------------------------------------------------------------------------
// Issue 9: a frozen daemon is named at once.

/// SIGCONTs a process when dropped, so a failing test never leaves it frozen.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0 as i32),
            nix::sys::signal::SIGCONT,
        );
    }
}

#[test]
fn status_and_start_against_a_sigstopped_daemon_say_so_at_once_and_stop_force_cleans_up() {
    let h = Home::new();
    let first = h.start();
    let daemon = first["daemon"]["pid"].as_u64().unwrap() as u32;
    let server = first["server"]["pid"].as_u64().unwrap() as u32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon as i32),
        nix::sys::signal::SIGSTOP,
    )
    .unwrap();
    let _resume = Resume(daemon);
    let expected = format!(
        "the omnigent daemon (pid {daemon}) is stopped (SIGSTOP); resume it with `kill -CONT {daemon}` or \
         `omnigent stop --force`"
    );
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["start"],
        &["stop"],
    ] {
        let t = Instant::now();
        let out = h.run(args);
        // The client's call timeout is 10 s: well under it means it never waited for an answer.
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{args:?} took {:?}",
            t.elapsed()
        );
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&expected),
            "{args:?}: {}",
            text(&out)
        );
    }
    assert_eq!(
        h.processes("daemon run"),
        vec![daemon],
        "start spawned another daemon"
    );

    let out = h.run(&["stop", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!alive(daemon), "{}", text(&out));
    wait_gone(server, "the frozen daemon's server");
    assert!(h.processes("daemon run").is_empty());
    assert!(h.processes("server run").is_empty());
}

// ---------------------------------------------------------------------------------------------------------
// Issue 9: every control API error is its JSON error.

#[test]
fn control_api_errors_are_all_json_errors() {
    let h = Home::new();
    h.start();
    // Over the 1 MiB cap, by Content-Length (refused before reading) and in a chunked body (while reading).
    let (code, body) = h.raw(
        "POST",
        "/v1/targets",
        &[],
        &format!("{{\"x\":\"{}\"}}", "a".repeat(2 * 1024 * 1024)),
    );
    assert_eq!(
        (code, body["code"].as_str()),
        (413, Some("payload_too_large")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("1048576"),
        "{body}"
    );
    let big = "a".repeat(2 * 1024 * 1024);
    let chunked = format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len());
    let (code, body) = h.raw_request(
        format!(
            "POST /v1/targets HTTP/1.1\r\nHost: omnigent\r\nConnection: close\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\n\r\n{chunked}"
        )
        .as_bytes(),
    );
    assert_eq!(
        (code, body["code"].as_str()),
        (413, Some("payload_too_large")),
        "{body}"
    );
    // A query string that does not parse; a route asked with the wrong method.
    let error = |method: &str, path: &str, status: u16| {
        let (code, body) = h.raw(method, path, &[], "");
        assert_eq!(
            (code, body["code"].as_str()),
            (status, Some("bad_request")),
            "{method} {path}: {body}"
        );
        body["message"].as_str().unwrap().to_owned()
    };
    assert!(error("GET", "/v1/status?after=soon", 400).contains("after"));
    assert!(error("GET", "/v1/shutdown", 405).contains("/v1/shutdown"));
    assert!(error("DELETE", "/v1/status", 405).contains("DELETE"));
}

// ---------------------------------------------------------------------------------------------------------
// Issue 9, hole 6: slow or idle clients of the control socket never starve the others.

/// A connection that sent `bytes` and no more.
fn slow_client(h: &Home, bytes: &str) -> UnixStream {
    let mut s = UnixStream::connect(h.run_dir().join("daemon.sock")).unwrap();
    s.write_all(bytes.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Read until the daemon closes `s`; what it said. Fails if it keeps the connection open.
fn read_until_closed(mut s: UnixStream, what: &str) -> String {
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("{what}: the daemon kept it open ({e}); it said {got:?}"),
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn slow_and_idle_control_connections_are_closed_and_never_lock_out_a_status() {
    const TIMEOUT_MS: u64 = 1500;
    let h = Home::with_env(&[
        ("OMNIGENT_CONTROL_TIMEOUT_MS", "1500"),
        ("OMNIGENT_CONTROL_MAX_CONNECTIONS", "8"),
    ]);
    h.start();
    let head = "GET /v1/status HTTP/1.1\r\nHost: omnigent\r\n";
    // `Expect: 100-continue`: the daemon says `100 Continue` when it starts reading the body, which tells
    // the test the request is in flight.
    let body = "POST /v1/targets HTTP/1.1\r\nHost: omnigent\r\nContent-Type: application/json\r\n\
                Expect: 100-continue\r\nContent-Length: 100\r\n\r\n{\"url\"";
    // More than the cap: idle connections, half-sent heads and half-sent bodies.
    let idle: Vec<_> = (0..6).map(|_| slow_client(&h, "")).collect();
    let heads: Vec<_> = (0..6).map(|_| slow_client(&h, head)).collect();
    let bodies: Vec<_> = (0..2).map(|_| slow_client(&h, body)).collect();

    // A normal status answers at once, not after the slow ones time out.
    let t = Instant::now();
    let (code, st) = h.raw("GET", "/v1/status", &[], "");
    assert_eq!(code, 200, "{st}");
    assert!(
        t.elapsed() < Duration::from_millis(TIMEOUT_MS),
        "status took {:?}",
        t.elapsed()
    );
    // Every slow one is closed: idle and half-sent heads silently, half-sent bodies with a 408 JSON error.
    for s in idle.into_iter().chain(heads) {
        let said = read_until_closed(s, "an idle or half-sent connection");
        assert!(said.is_empty(), "{said}");
    }
    for s in bodies {
        let said = read_until_closed(s, "a half-sent body");
        assert!(said.contains("HTTP/1.1 408"), "{said}");
        assert!(said.contains("\"code\":\"request_timeout\""), "{said}");
    }
    let log = std::fs::read_to_string(h.path().join("state/logs/daemon.log")).unwrap();
    assert!(
        log.contains("control socket connection cap reached"),
        "{log}"
    );

    // When every connection is busy (bodies being read), a new one gets a 503 JSON error, not a hang; once
    // they time out, status works again.
    let bodies: Vec<_> = (0..8)
        .map(|_| {
            let mut s = slow_client(&h, body);
            let mut cont = [0u8; 25];
            s.read_exact(&mut cont).unwrap();
            assert_eq!(&cont, b"HTTP/1.1 100 Continue\r\n\r\n");
            s
        })
        .collect();
    let (code, err) = h.raw("GET", "/v1/status", &[], "");
    assert_eq!((code, err["code"].as_str()), (503, Some("busy")), "{err}");
    for s in bodies {
        assert!(read_until_closed(s, "a half-sent body").contains("HTTP/1.1 408"));
    }
    assert_eq!(h.raw("GET", "/v1/status", &[], "").0, 200);
}
