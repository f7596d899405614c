//! The servers this machine is a host of (DESIGN §2): the local server (while the daemon runs one), the
//! `targets` of config.toml, and targets added live through the control API (`omnigent host URL`). One host
//! tunnel and one runner supervisor per target. One task owns the set and is driven by [`TargetCmd`]
//! messages; status reads [`TargetView`] snapshots.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use omnigent_proto::control::{RemoveTargetReply, RunnerStatus as RunnerView, TargetStatus};
use omnigent_proto::paths::Paths;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backoff::RestartPolicy;
use crate::host_tunnel::{
    self, HostAuth, HostTunnelConfig, HostTunnelError, HostTunnelState, HostTunnelTimings,
};
use crate::runners::{self, RunnerContext, Runners};

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
    pub config: watch::Receiver<crate::ConfigView>,
    /// Tunnel timings (tests shrink them).
    pub timings: HostTunnelTimings,
    pub revision: watch::Sender<u64>,
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
        let (word, attempt, last_error, warning) = match state {
            HostTunnelState::Connecting => ("connecting", 0, None, None),
            HostTunnelState::Online => ("online", 0, None, None),
            HostTunnelState::Reconnecting {
                attempt,
                last_error,
                warning,
            } => ("reconnecting", attempt, Some(last_error), warning),
            HostTunnelState::Failed { reason } => ("failed", 0, Some(reason), None),
            HostTunnelState::Stopped => ("stopped", 0, None, None),
        };
        TargetStatus {
            url: self.url.clone(),
            tunnel: word.to_owned(),
            local: self.local,
            persistent: self.persistent,
            attempt,
            last_error,
            warning,
            runners: self.runners.views().len() as u32,
        }
    }
}

/// Messages to the targets task.
pub enum TargetCmd {
    /// The local server's URL (None: no local server).
    SetLocal(Option<String>),
    /// config.toml `targets`.
    SetConfig(Vec<String>),
    /// Add a target for the life of the daemon (or until removed).
    Add(String, oneshot::Sender<TargetStatus>),
    Remove(String, oneshot::Sender<RemoveTargetReply>),
    /// Stop every tunnel and runner (daemon shutdown); replies with the number of runners stopped.
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

/// `http://host:port/` and `http://host:port` are one target.
pub fn normalize_url(url: &str) -> String {
    url.trim().trim_end_matches('/').to_owned()
}

struct Live {
    view: TargetView,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), HostTunnelError>>,
}

#[derive(Default)]
struct Wanted {
    local: Option<String>,
    config: Vec<String>,
    api: Vec<String>,
}

impl Wanted {
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
    tokio::spawn(async move {
        let mut live: BTreeMap<String, Live> = BTreeMap::new();
        let mut wanted = Wanted::default();
        while let Some(cmd) = cmds.recv().await {
            match cmd {
                TargetCmd::SetLocal(url) => wanted.local = url.map(|u| normalize_url(&u)),
                TargetCmd::SetConfig(urls) => {
                    wanted.config = urls.iter().map(|u| normalize_url(u)).collect()
                }
                TargetCmd::Add(url, reply) => {
                    let url = normalize_url(&url);
                    if !wanted.api.contains(&url) {
                        wanted.api.push(url.clone());
                    }
                    reconcile(&ctx, &wanted, &mut live).await;
                    publish(&views_tx, &live, &ctx);
                    if let Some(l) = live.get(&url) {
                        let _ = reply.send(l.view.status());
                    }
                    continue;
                }
                TargetCmd::Remove(url, reply) => {
                    let url = normalize_url(&url);
                    wanted.api.retain(|u| *u != url);
                    let before = live.get(&url).map(|l| l.view.runners.views().len() as u32);
                    reconcile(&ctx, &wanted, &mut live).await;
                    publish(&views_tx, &live, &ctx);
                    let removed = before.is_some() && !live.contains_key(&url);
                    let _ = reply.send(RemoveTargetReply {
                        removed,
                        runners_stopped: if removed { before.unwrap_or(0) } else { 0 },
                    });
                    continue;
                }
                TargetCmd::StopAll(grace, reply) => {
                    let mut stopped = 0;
                    for (_, l) in std::mem::take(&mut live) {
                        stopped += stop_target(l, grace).await;
                    }
                    wanted = Wanted::default();
                    publish(&views_tx, &live, &ctx);
                    let _ = reply.send(stopped);
                    continue;
                }
            }
            reconcile(&ctx, &wanted, &mut live).await;
            publish(&views_tx, &live, &ctx);
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
    crate::process::STOP_GRACE
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
    });
    let mut config = HostTunnelConfig::new(url, &ctx.host_id, &ctx.host_name);
    config.timings = ctx.timings.clone();
    if let Ok(token) = std::env::var(HOST_TOKEN_ENV)
        && !token.is_empty()
    {
        config.auth = Some(HostAuth::HostToken(token));
    }
    let (state_tx, state) = watch::channel(HostTunnelState::Connecting);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(host_tunnel::run_host_tunnel(
        config,
        runners.clone(),
        exits,
        state_tx,
        shutdown.clone(),
    ));
    // Status long-polls follow tunnel state changes.
    let mut follow = state.clone();
    let revision = ctx.revision.clone();
    tokio::spawn(async move {
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
