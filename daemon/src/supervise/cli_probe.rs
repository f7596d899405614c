//! The probe of the agent CLIs the harness table names (Claude Code, Codex, Pi): for each CLI row, where its
//! binary is ([`AgentCli::locate`], the function the runner uses too), whether its version command runs, and
//! whether a login of it exists. One task owns the results; `host.hello` reads the latest through a `watch`,
//! and `omnigent host status` asks for a fresh probe.
//!
//! The variables are the daemon's own: the runners get the same ones (they pass the env allowlist).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use omnigent_proto::harness::{AgentCli, CliProbe, HARNESSES, Harness};
use tokio::sync::{mpsc, oneshot, watch};

use super::tasks::Tasks;

/// How long a version command may take before the binary counts as not runnable.
const VERSION_TIMEOUT: Duration = Duration::from_secs(15);

/// The version line kept (a CLI printing more is cut).
const VERSION_MAX: usize = 200;

/// A handle on the probe task. Cheap to clone.
#[derive(Clone)]
pub struct CliProbes {
    view: watch::Receiver<BTreeMap<Harness, CliProbe>>,
    refresh: mpsc::Sender<oneshot::Sender<()>>,
}

impl CliProbes {
    /// Probe every CLI row now (returns once done), then serve refreshes on a task of `tasks`.
    pub async fn start(tasks: &Tasks) -> CliProbes {
        let (view_tx, view) = watch::channel(probe_all().await);
        let (refresh, mut requests) = mpsc::channel::<oneshot::Sender<()>>(8);
        tasks.spawn_until_stopped(async move {
            while let Some(done) = requests.recv().await {
                // Requests queued meanwhile are answered by this one probe.
                let mut waiting = vec![done];
                while let Ok(more) = requests.try_recv() {
                    waiting.push(more);
                }
                view_tx.send_replace(probe_all().await);
                for w in waiting {
                    let _ = w.send(());
                }
            }
        });
        CliProbes { view, refresh }
    }

    /// Probes that are never refreshed (tests of the parts that only read them).
    pub fn fixed(probes: BTreeMap<Harness, CliProbe>) -> CliProbes {
        let (_tx, view) = watch::channel(probes);
        let (refresh, _rx) = mpsc::channel(1);
        CliProbes { view, refresh }
    }

    /// The latest probe of `harness`'s CLI (`None`: no binary found, or not a CLI harness).
    pub fn get(&self, harness: Harness) -> Option<CliProbe> {
        self.view.borrow().get(&harness).cloned()
    }

    /// Probe again and wait until done (a no-op when the task is gone).
    pub async fn refresh(&self) {
        let (tx, rx) = oneshot::channel();
        if self.refresh.send(tx).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn probe_all() -> BTreeMap<Harness, CliProbe> {
    let get = |name: &str| std::env::var(name).ok();
    let mut out = BTreeMap::new();
    for spec in &HARNESSES {
        if let Some(cli) = &spec.cli
            && let Some(probe) = probe(cli, &get).await
        {
            out.insert(spec.harness, probe);
        }
    }
    out
}

/// One CLI: `None` when no binary is found.
pub async fn probe(cli: &AgentCli, get: &impl Fn(&str) -> Option<String>) -> Option<CliProbe> {
    let binary = cli.locate(get)?;
    let version = version(&binary, cli.version_args).await;
    if version.is_none() {
        tracing::warn!(binary = %binary.display(), "{} does not run (its version command failed)", cli.program);
    }
    Some(CliProbe {
        binary: Some(binary),
        version,
        logged_in: cli.logged_in(get),
    })
}

/// The first line of the version command's output, when it exits 0 within [`VERSION_TIMEOUT`].
async fn version(binary: &Path, args: &[&str]) -> Option<String> {
    let mut cmd = tokio::process::Command::new(binary);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .env("DISABLE_AUTOUPDATER", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1");
    let out = tokio::time::timeout(VERSION_TIMEOUT, cmd.output())
        .await
        .ok()?
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line: String = text
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .chars()
        .take(VERSION_MAX)
        .collect();
    Some(line)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(path: &Path, body: &str) {
        std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[tokio::test]
    async fn a_binary_that_runs_reports_its_version_and_one_that_fails_none() {
        let dir = tempfile::tempdir().unwrap();
        let cli = Harness::ClaudeCode.spec().cli.unwrap();
        let good = dir.path().join("claude-good");
        let bad = dir.path().join("claude-bad");
        script(&good, "echo '2.1.332 (Claude Code)'");
        script(&bad, "exit 3");
        let home = dir.path().to_str().unwrap().to_owned();
        for (path, want) in [(&good, Some("2.1.332 (Claude Code)")), (&bad, None)] {
            let p = path.to_str().unwrap().to_owned();
            let h = home.clone();
            let get = move |n: &str| match n {
                "OMNIGENT_CLAUDE_PATH" => Some(p.clone()),
                "HOME" => Some(h.clone()),
                _ => None,
            };
            let probe = probe(&cli, &get).await.unwrap();
            assert_eq!(probe.version.as_deref(), want);
            assert!(!probe.logged_in);
        }
        let get = |n: &str| (n == "OMNIGENT_CLAUDE_PATH").then(|| "/nonexistent/claude".to_owned());
        assert_eq!(probe(&cli, &get).await, None);
    }
}
