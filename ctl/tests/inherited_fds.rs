//! The daemon keeps none of its starter's file descriptors. Alone in its own test binary: the pipe below is
//! inherited by every child this process spawns while it is open, so no other test may spawn children then.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_omnigent");

#[test]
fn the_daemon_keeps_none_of_its_starters_pipes_open() {
    let home = tempfile::tempdir().unwrap();
    let omnigent = |args: &[&str]| {
        Command::new(EXE)
            .args(args)
            .env("OMNIGENT_HOME", home.path())
            .env("OMNIGENT_SERVER_PORT", "0")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // A CI step or `$(omnigent start)` waits for EOF on its pipes; a daemon that kept an inherited write end
    // open would hang it forever. nix's pipe() is not close-on-exec, so the `start` child inherits `w`.
    let (r, w) = nix::unistd::pipe().unwrap();
    let out = omnigent(&["start"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(w);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = tx.send(
            std::fs::File::from(r)
                .read_to_end(&mut buf)
                .map(|_| buf.len()),
        );
    });
    let got = rx.recv_timeout(Duration::from_secs(10));
    let stop = omnigent(&["stop"]);
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    assert_eq!(
        got.expect("EOF never came: the daemon (or its server) holds the starter's pipe")
            .unwrap(),
        0
    );
}
