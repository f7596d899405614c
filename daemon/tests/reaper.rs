#![allow(clippy::unwrap_used)]
//! The orphan reaper (reference host §4.5): this test process becomes a child subreaper, so a grandchild
//! that outlives its parent is re-parented here and must be reaped by the SIGCHLD-driven sweep, while the
//! exit status of a child we spawned still goes to its owner. (Its own test binary: the subreaper bit is
//! process-wide.)

use std::time::Duration;

use omnigent_daemon::supervise::process::{self, ChildSpec};
use omnigent_daemon::supervise::reaper;
use omnigent_daemon::supervise::tasks::Tasks;
use tokio::io::AsyncBufReadExt;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn an_orphaned_grandchild_is_reaped_and_our_own_childs_status_is_not_stolen() {
    reaper::become_subreaper().unwrap();
    let tasks = Tasks::new();
    let reaped = reaper::spawn_reaper(&tasks).unwrap();
    let mut reaped_rx = reaped.subscribe();
    // The subshell starts a short-lived grandchild, prints its pid and exits: the grandchild is orphaned
    // and re-parented to us. The direct child exits 7 at once: its zombie waits for tokio, not the sweep.
    let spec = ChildSpec {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), "(sleep 0.05 & echo $!); exit 7".into()],
        env: vec![],
        cwd: "/".into(),
        env_clear: false,
    };
    let mut child = process::spawn(&spec).unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).await.unwrap();
    let grandchild: u32 = line.trim().parse().unwrap();
    let got = tokio::time::timeout(WAIT, async {
        loop {
            let pid = reaped_rx.recv().await.unwrap();
            if pid == grandchild {
                return pid;
            }
        }
    })
    .await
    .expect("the orphaned grandchild was never reaped");
    assert_eq!(got, grandchild);
    assert!(!std::path::Path::new(&format!("/proc/{grandchild}")).exists());
    // Our child is still ours: its status reaches us, not the sweep.
    let status = tokio::time::timeout(WAIT, process::wait(&mut child))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(7));
    assert!(tasks.drain(WAIT).await);
}
