//! The servers this machine is a host of (DESIGN §2): the local server (while the daemon runs one), the
//! `targets` of config.toml (restored at every start; `omnigent host URL --background` adds to them), and
//! targets added live through the control API for the life of the daemon (the foreground `omnigent host
//! URL`). One host tunnel and one runner supervisor per target, whatever the reasons it is wanted for. One
//! task owns the set and is driven by [`TargetCmd`] messages; status reads [`TargetView`] snapshots.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use omnigent_proto::control::{
    RemoveTargetReply, RunnerStatus as RunnerView, TargetStatus, TunnelState,
};
use omnigent_proto::paths::Paths;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::host_tunnel::{
    self, HostAuth, HostTunnelConfig, HostTunnelError, HostTunnelState, HostTunnelTimings,
};
use crate::supervise::backoff::RestartPolicy;
use crate::supervise::runners::{self, RunnerContext, Runners};
use crate::supervise::tasks::Tasks;

/// `OMNIGENT_HOST_TOKEN`: a managed host's token, sent as `X-Omnigent-Host-Token`.
pub const HOST_TOKEN_ENV: &str = "OMNIGENT_HOST_TOKEN";

/// What every target needs.
#[derive(Clone)]
pub struct TargetsContext {
    pub exe: PathBuf,
    pub paths: Paths,
    pub policy: RestartPolicy,
    pub host_id: String,
    pub host_name: String,
    /// The config in force (runners read `env_passthrough` from it).
    pub config: watch::Receiver<crate::config::ConfigView>,
    /// Tunnel timings (tests shrink them).
    pub timings: HostTunnelTimings,
    pub revision: watch::Sender<u64>,
    /// Where the targets task, each tunnel and each runner supervisor run.
    pub tasks: Tasks,
    /// The probe of the agent CLIs (`configured_harnesses`).
    pub probes: crate::supervise::cli_probe::CliProbes,
}

/// One target as status shows it.
#[derive(Clone)]
pub struct TargetView {
    pub url: String,
    pub local: bool,
    pub persistent: bool,
    pub state: watch::Receiver<HostTunnelState>,
    pub runners: Runners,
}

impl TargetView {
    pub fn status(&self) -> TargetStatus {
        let state = self.state.borrow().clone();
        let (tunnel, attempt, last_error, warning) = match state {
            HostTunnelState::Connecting => (TunnelState::Connecting, 0, None, None),
            HostTunnelState::Online => (TunnelState::Online, 0, None, None),
            HostTunnelState::Reconnecting {
                attempt,
                last_error,
                warning,
            } => (
                TunnelState::Reconnecting,
                attempt,
                Some(last_error),
                warning,
            ),
            HostTunnelState::Failed { reason } => (TunnelState::Failed, 0, Some(reason), None),
            HostTunnelState::Stopped => (TunnelState::Stopped, 0, None, None),
        };
        TargetStatus {
            url: self.url.clone(),
            tunnel,
            local: self.local,
            persistent: self.persistent,
            attempt,
            last_error,
            warning,
            runners: self.runners.views().len() as u32,
        }
    }
}

/// config.toml `targets` as of one config load. Both the config watcher and a control call that edited the
/// file send them, in either order: an older load than the one applied is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigTargets {
    /// [`crate::ConfigView::loads`] of the config these come from.
    pub loads: u64,
    pub urls: Vec<String>,
}

/// Messages to the targets task.
pub enum TargetCmd {
    /// The local server's URL (None: no local server).
    SetLocal(Option<String>),
    /// config.toml `targets`.
    SetConfig(ConfigTargets),
    /// Add a target: `api` for the life of the daemon (or until removed); `config`, the config.toml
    /// targets after an edit that added it. Replies with its status once it is started (dropped while the
    /// daemon stops).
    Add {
        url: String,
        api: bool,
        config: Option<ConfigTargets>,
        reply: oneshot::Sender<TargetStatus>,
    },
    /// Drop a target added through the API, with the config.toml targets after an edit that removed it;
    /// replies once its runners and tunnel are stopped.
    Remove {
        url: String,
        config: Option<ConfigTargets>,
        reply: oneshot::Sender<RemoveTargetReply>,
    },
    /// Stop every tunnel and runner (daemon shutdown); replies with the number of runners stopped. Later
    /// commands start nothing.
    StopAll(Duration, oneshot::Sender<u32>),
}

/// Handle of the targets task.
#[derive(Clone)]
pub struct Targets {
    pub cmds: mpsc::Sender<TargetCmd>,
    views: watch::Receiver<Vec<TargetView>>,
}

impl Targets {
    pub fn views(&self) -> Vec<TargetView> {
        self.views.borrow().clone()
    }

    /// Targets and every runner, for status.
    pub fn status(&self) -> (Vec<TargetStatus>, Vec<RunnerView>) {
        let views = self.views();
        let targets = views.iter().map(TargetView::status).collect();
        let runners = views.iter().flat_map(|v| v.runners.views()).collect();
        (targets, runners)
    }

    pub async fn stop_all(&self, grace: Duration) -> u32 {
        let (tx, rx) = oneshot::channel();
        if self.cmds.send(TargetCmd::StopAll(grace, tx)).await.is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }
}

pub use crate::config::normalize_url;

struct Live {
    view: TargetView,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), HostTunnelError>>,
}

#[derive(Default)]
struct Wanted {
    local: Option<String>,
    config: Vec<String>,
    /// The config load `config` comes from.
    config_loads: u64,
    api: Vec<String>,
}

impl Wanted {
    fn set_config(&mut self, c: ConfigTargets) {
        if c.loads < self.config_loads {
            return;
        }
        self.config_loads = c.loads;
        self.config = c.urls.iter().map(|u| normalize_url(u)).collect();
    }

    fn wants(&self, url: &str) -> Option<(bool, bool)> {
        let local = self.local.as_deref() == Some(url);
        let persistent = self.config.iter().any(|u| u == url);
        let api = self.api.iter().any(|u| u == url);
        (local || persistent || api).then_some((local, persistent))
    }

    fn all(&self) -> Vec<String> {
        let mut v: Vec<String> = self.local.iter().cloned().collect();
        v.extend(self.config.iter().cloned());
        v.extend(self.api.iter().cloned());
        v.sort();
        v.dedup();
        v
    }
}

/// Start the targets task (with no target yet).
pub fn spawn_targets(ctx: TargetsContext) -> Targets {
    let (cmds_tx, mut cmds) = mpsc::channel(32);
    let (views_tx, views) = watch::channel(Vec::<TargetView>::new());
    let tasks = ctx.tasks.clone();
    tasks.spawn(async move {
        let mut live: BTreeMap<String, Live> = BTreeMap::new();
        let mut wanted = Wanted::default();
        // Set once the daemon stops: nothing is started any more.
        let mut stopped = false;
        while let Some(cmd) = cmds.recv().await {
            match cmd {
                TargetCmd::StopAll(grace, reply) => {
                    stopped = true;
                    let mut n = 0;
                    for (_, l) in std::mem::take(&mut live) {
                        n += stop_target(l, grace).await;
                    }
                    wanted = Wanted::default();
                    publish(&views_tx, &live, &ctx);
                    let _ = reply.send(n);
                }
                _ if stopped => {}
                TargetCmd::SetLocal(url) => {
                    wanted.local = url.map(|u| normalize_url(&u));
                    reconcile(&ctx, &wanted, &mut live).await;
                    publish(&views_tx, &live, &ctx);
                }
                TargetCmd::SetConfig(c) => {
                    wanted.set_config(c);
                    reconcile(&ctx, &wanted, &mut live).await;
                    publish(&views_tx, &live, &ctx);
                }
                TargetCmd::Add {
                    url,
                    api,
                    config,
                    reply,
                } => {
                    let url = normalize_url(&url);
                    if let Some(c) = config {
                        wanted.set_config(c);
                    }
                    if api && !wanted.api.contains(&url) {
                        wanted.api.push(url.clone());
                    }
                    reconcile(&ctx, &wanted, &mut live).await;
                    publish(&views_tx, &live, &ctx);
                    if let Some(l) = live.get(&url) {
                        let _ = reply.send(l.view.status());
                    }
                }
                TargetCmd::Remove { url, config, reply } => {
                    let url = normalize_url(&url);
                    if let Some(c) = config {
                        wanted.set_config(c);
                    }
                    wanted.api.retain(|u| *u != url);
                    let before = live.get(&url).map(|l| l.view.runners.views().len() as u32);
                    reconcile(&ctx, &wanted, &mut live).await;
                    publish(&views_tx, &live, &ctx);
                    let removed = before.is_some() && !live.contains_key(&url);
                    let _ = reply.send(RemoveTargetReply {
                        removed,
                        runners_stopped: if removed { before.unwrap_or(0) } else { 0 },
                        removed_from_config: false,
                    });
                }
            }
        }
        for (_, l) in live {
            stop_target(l, runners_grace()).await;
        }
    });
    Targets {
        cmds: cmds_tx,
        views,
    }
}

fn runners_grace() -> Duration {
    crate::supervise::process::STOP_GRACE
}

fn publish(
    views: &watch::Sender<Vec<TargetView>>,
    live: &BTreeMap<String, Live>,
    ctx: &TargetsContext,
) {
    views.send_replace(live.values().map(|l| l.view.clone()).collect());
    ctx.revision.send_modify(|r| *r += 1);
}

/// Start the targets that are wanted and not live; stop the live ones no longer wanted.
async fn reconcile(ctx: &TargetsContext, wanted: &Wanted, live: &mut BTreeMap<String, Live>) {
    let gone: Vec<String> = live
        .keys()
        .filter(|u| wanted.wants(u).is_none())
        .cloned()
        .collect();
    for url in gone {
        if let Some(l) = live.remove(&url) {
            tracing::info!(server = %url, "removing host target");
            stop_target(l, runners_grace()).await;
        }
    }
    for url in wanted.all() {
        let Some((local, persistent)) = wanted.wants(&url) else {
            continue;
        };
        if let Some(l) = live.get_mut(&url) {
            l.view.local = local;
            l.view.persistent = persistent;
            continue;
        }
        tracing::info!(server = %url, local, "adding host target");
        live.insert(url.clone(), start_target(ctx, &url, local, persistent));
    }
}

fn start_target(ctx: &TargetsContext, url: &str, local: bool, persistent: bool) -> Live {
    let (reporter, exits) = host_tunnel::exit_channel();
    let runners = runners::spawn_runners(RunnerContext {
        exe: ctx.exe.clone(),
        paths: ctx.paths.clone(),
        server_url: url.to_owned(),
        policy: ctx.policy,
        config: ctx.config.clone(),
        exits: reporter,
        revision: ctx.revision.clone(),
        tasks: ctx.tasks.clone(),
        probes: ctx.probes.clone(),
    });
    let mut config = HostTunnelConfig::new(url, &ctx.host_id, &ctx.host_name);
    config.timings = ctx.timings.clone();
    config.credentials_file = Some(ctx.paths.credentials_file());
    if let Ok(token) = std::env::var(HOST_TOKEN_ENV)
        && !token.is_empty()
    {
        config.auth = Some(HostAuth::HostToken(token));
    }
    let (state_tx, state) = watch::channel(HostTunnelState::Connecting);
    let shutdown = CancellationToken::new();
    let task = ctx.tasks.spawn(host_tunnel::run_host_tunnel(
        config,
        runners.clone(),
        exits,
        state_tx,
        shutdown.clone(),
    ));
    // Status long-polls follow tunnel state changes.
    let mut follow = state.clone();
    let revision = ctx.revision.clone();
    ctx.tasks.spawn(async move {
        while follow.changed().await.is_ok() {
            revision.send_modify(|r| *r += 1);
        }
    });
    Live {
        view: TargetView {
            url: url.to_owned(),
            local,
            persistent,
            state,
            runners,
        },
        shutdown,
        task,
    }
}

/// Stop a target's runners, then its tunnel. Returns how many runners were stopped.
async fn stop_target(l: Live, grace: Duration) -> u32 {
    let n = l.view.runners.stop_all(grace).await;
    l.shutdown.cancel();
    match l.task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::info!(server = %l.view.url, "host tunnel had ended: {e}"),
        Err(e) => tracing::warn!(server = %l.view.url, "host tunnel task failed: {e}"),
    }
    n
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(loads: u64, urls: &[&str]) -> ConfigTargets {
        ConfigTargets {
            loads,
            urls: urls.iter().map(|u| (*u).to_owned()).collect(),
        }
    }

    async fn add(
        targets: &Targets,
        url: &str,
        api: bool,
        c: Option<ConfigTargets>,
    ) -> TargetStatus {
        let (reply, rx) = oneshot::channel();
        targets
            .cmds
            .send(TargetCmd::Add {
                url: url.to_owned(),
                api,
                config: c,
                reply,
            })
            .await
            .unwrap();
        rx.await.unwrap()
    }

    /// The watcher and a control call both send config targets; whichever comes last, the newest load wins,
    /// and a target wanted for two reasons is one target.
    #[tokio::test]
    async fn an_older_config_load_never_undoes_a_newer_one() {
        let home = tempfile::tempdir().unwrap();
        let (_config_tx, config_rx) = watch::channel(crate::config::ConfigView {
            config: Default::default(),
            error: None,
            loads: 1,
        });
        let targets = spawn_targets(TargetsContext {
            exe: "/nonexistent/omnigent".into(),
            paths: Paths::under(home.path()),
            policy: RestartPolicy::default(),
            host_id: "0".repeat(32),
            host_name: "test".into(),
            config: config_rx,
            timings: HostTunnelTimings::default(),
            revision: watch::channel(0).0,
            tasks: Tasks::new(),
            probes: crate::supervise::cli_probe::CliProbes::fixed(Default::default()),
        });
        // Port 9 on loopback: nothing answers, the tunnel keeps reconnecting; no network is used.
        let a = "http://127.0.0.1:9";
        let t = add(&targets, &format!("{a}/"), false, Some(config(2, &[a]))).await;
        assert!(t.persistent && t.url == a, "{t:?}");
        targets
            .cmds
            .send(TargetCmd::SetConfig(config(1, &[])))
            .await
            .unwrap();
        let t = add(&targets, a, true, None).await;
        assert!(t.persistent, "a stale load removed it: {t:?}");
        assert_eq!(targets.views().len(), 1);
        // A newer load without it leaves the API's claim: hosted, no longer persistent.
        targets
            .cmds
            .send(TargetCmd::SetConfig(config(3, &[])))
            .await
            .unwrap();
        let t = add(&targets, a, true, None).await;
        assert!(!t.persistent, "{t:?}");
        let (reply, rx) = oneshot::channel();
        targets
            .cmds
            .send(TargetCmd::Remove {
                url: a.into(),
                config: None,
                reply,
            })
            .await
            .unwrap();
        assert!(rx.await.unwrap().removed);
        assert!(targets.views().is_empty());
        assert_eq!(targets.stop_all(Duration::ZERO).await, 0);
        // Stopped: nothing starts any more.
        let (reply, rx) = oneshot::channel();
        targets
            .cmds
            .send(TargetCmd::Add {
                url: a.into(),
                api: true,
                config: None,
                reply,
            })
            .await
            .unwrap();
        assert!(rx.await.is_err());
        assert!(targets.views().is_empty());
    }
}
