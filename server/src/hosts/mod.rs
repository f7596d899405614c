//! Hosts on the server side (reference omnigent-server-v1.md §1.3, §3.7; DESIGN §5.2): the `hosts` table kept
//! in step with the live tunnels, host-launched runners (binding tokens, `host.launch_runner`) and the last
//! exit report of each runner.
//!
//! One task owns the host list: it applies the tunnel registry's events in order (write-through to the
//! store), refreshes `updated_at` of live hosts every 30 s, and answers list/get requests. Because it reads
//! registry events before commands, an answer reflects every connect and disconnect that happened before
//! the request was made.
//!
//! Binding tokens (per session, so a relaunch reuses the runner id) and runner exit reports are small
//! caches behind mutexes held for one map operation, never across an `.await`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use omnigent_proto::api::HostInfo;
use omnigent_proto::host_frames::HostHello;
use omnigent_tunnel::host::{HostConnection, HostEvent, HostRegistry};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::clock::now_ms;
use crate::store::{HostRow, Store};

mod launch;

pub use launch::*;

/// The owner of every host on a server without accounts.
pub const LOCAL_OWNER: &str = "local";

/// How often a connected host's `updated_at` (last seen) is refreshed.
const REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// How long a runner's exit report is kept for `GET /v1/runners/{id}/status`.
const EXIT_TTL: Duration = Duration::from_secs(600);

/// Most exit reports kept (the oldest is dropped first).
const EXIT_CAP: usize = 1024;

/// Commands a handler may queue before the host task has caught up.
const COMMAND_QUEUE: usize = 256;

/// A host as the API shows it: its row, and whether its tunnel is live in this process.
#[derive(Debug, Clone, PartialEq)]
pub struct HostView {
    pub row: HostRow,
    pub online: bool,
}

impl HostView {
    /// The `GET /v1/hosts` entry.
    pub fn info(&self) -> HostInfo {
        HostInfo {
            host_id: self.row.host_id.clone(),
            name: self.row.name.clone(),
            owner: Some(self.row.owner.clone()),
            status: if self.online { "online" } else { "offline" }.to_owned(),
            sandbox_provider: None,
            configured_harnesses: self.row.configured_harnesses.clone().unwrap_or_default(),
            gateway_inference: self.row.gateway_inference.clone().map(Value::Object),
        }
    }
}

enum Command {
    List(oneshot::Sender<Vec<HostView>>),
    Get(String, oneshot::Sender<Option<HostView>>),
}

/// The hosts of this server: the tunnel registry, the host task's mailbox and the token and exit caches.
/// Cheap to clone.
#[derive(Clone)]
pub struct Hosts {
    inner: Arc<Inner>,
}

struct Inner {
    registry: HostRegistry,
    commands: mpsc::Sender<Command>,
    /// session id → binding token of its host-launched runner.
    tokens: Mutex<HashMap<String, String>>,
    exits: Arc<Mutex<ExitLog>>,
}

impl std::fmt::Debug for Hosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hosts")
            .field("registry", &self.inner.registry)
            .finish_non_exhaustive()
    }
}

/// A lock whose critical sections are single map operations: a poisoned one is still consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hosts {
    /// Start the host task over `registry` (subscribed before this returns, so no tunnel is missed) until
    /// `stop` is cancelled.
    pub fn spawn(registry: HostRegistry, store: Store, stop: CancellationToken) -> Hosts {
        let (commands, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let exits = Arc::new(Mutex::new(ExitLog::default()));
        let hosts = Hosts {
            inner: Arc::new(Inner {
                registry: registry.clone(),
                commands,
                tokens: Mutex::new(HashMap::new()),
                exits: exits.clone(),
            }),
        };
        let task = HostTask {
            registry: registry.clone(),
            events: registry.subscribe(),
            commands: commands_rx,
            store,
            hosts: BTreeMap::new(),
            exits,
        };
        tokio::spawn(task.run(stop));
        hosts
    }

    pub fn registry(&self) -> &HostRegistry {
        &self.inner.registry
    }

    /// Every host that ever connected, by host id.
    pub async fn list(&self) -> Result<Vec<HostView>, HostListStopped> {
        let (tx, rx) = oneshot::channel();
        self.ask(Command::List(tx), rx).await
    }

    /// One host by canonical id.
    pub async fn get(&self, host_id: &str) -> Result<Option<HostView>, HostListStopped> {
        let (tx, rx) = oneshot::channel();
        self.ask(Command::Get(host_id.to_owned(), tx), rx).await
    }

    async fn ask<T>(
        &self,
        command: Command,
        rx: oneshot::Receiver<T>,
    ) -> Result<T, HostListStopped> {
        self.inner
            .commands
            .send(command)
            .await
            .map_err(|_| HostListStopped)?;
        rx.await.map_err(|_| HostListStopped)
    }

    /// The last exit report (`host.runner_exited.error`) of `runner_id`, if it came in the last 10 minutes:
    /// the `error` of `GET /v1/runners/{id}/status`.
    pub fn runner_exit_error(&self, runner_id: &str) -> Option<String> {
        lock(&self.inner.exits).get(runner_id, Instant::now())
    }

    fn token_of(&self, session_id: &str) -> Option<String> {
        lock(&self.inner.tokens).get(session_id).cloned()
    }

    fn remember_token(&self, session_id: &str, token: &str) {
        lock(&self.inner.tokens).insert(session_id.to_owned(), token.to_owned());
    }
}

/// The host task is gone (the server is shutting down), so the host list cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the server's host list is not running (the server is shutting down); retry")]
pub struct HostListStopped;

/// The task that owns the host list.
struct HostTask {
    registry: HostRegistry,
    events: broadcast::Receiver<HostEvent>,
    commands: mpsc::Receiver<Command>,
    store: Store,
    hosts: BTreeMap<String, HostRow>,
    /// Where runner exits are recorded (shared with [`Hosts::runner_exit_error`]).
    exits: Arc<Mutex<ExitLog>>,
}

impl HostTask {
    async fn run(mut self, stop: CancellationToken) {
        self.load().await;
        let mut refresh =
            tokio::time::interval_at(Instant::now() + REFRESH_INTERVAL, REFRESH_INTERVAL);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                event = self.events.recv() => match event {
                    Ok(event) => self.apply(event).await,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        warn!(missed = n, "host task fell behind the tunnel registry; resyncing");
                        self.resync().await;
                    }
                    // The registry lives as long as the server's state; nothing more will come.
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                command = self.commands.recv() => match command {
                    Some(Command::List(reply)) => {
                        let _ = reply.send(self.hosts.values().map(|r| self.view(r)).collect());
                    }
                    Some(Command::Get(id, reply)) => {
                        let _ = reply.send(self.hosts.get(&id).map(|r| self.view(r)));
                    }
                    // Every `Hosts` handle is gone: the server has stopped.
                    None => break,
                },
                _ = refresh.tick() => self.refresh().await,
            }
        }
        debug!("host task stopped");
    }

    fn view(&self, row: &HostRow) -> HostView {
        HostView {
            row: row.clone(),
            online: self.registry.is_online(&row.host_id),
        }
    }

    /// Load the table; every host starts offline (no tunnel survives a restart), except one that already
    /// reconnected to this process.
    async fn load(&mut self) {
        let now = now_ms();
        if let Err(e) = self.store.mark_all_hosts_offline(now).await {
            warn!(error = %e, "cannot mark hosts offline at start");
        }
        match self.store.list_hosts().await {
            Ok(rows) => {
                for mut row in rows {
                    row.status = "offline".to_owned();
                    self.hosts.insert(row.host_id.clone(), row);
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot read the hosts table; starting with an empty host list")
            }
        }
        self.resync().await;
    }

    async fn apply(&mut self, event: HostEvent) {
        match event {
            HostEvent::Connected { host_id, hello, .. } => self.connected(host_id, &hello).await,
            HostEvent::Disconnected { host_id, .. } => {
                if self.registry.is_online(&host_id) {
                    return;
                }
                let now = now_ms();
                if let Some(row) = self.hosts.get_mut(&host_id) {
                    row.status = "offline".to_owned();
                    row.updated_at_ms = now;
                }
                if let Err(e) = self.store.set_host_status(&host_id, "offline", now).await {
                    warn!(%host_id, error = %e, "cannot mark host offline");
                }
            }
            HostEvent::RunnerExited {
                runner_id, error, ..
            } => {
                let error = error.unwrap_or_else(|| "the runner exited".to_owned());
                lock(&self.exits).insert(runner_id, error, Instant::now());
            }
            HostEvent::HarnessReadiness { host_id, readiness } => {
                let Some(row) = self.hosts.get_mut(&host_id) else {
                    return;
                };
                if readiness.configured_harnesses.is_some() {
                    row.configured_harnesses = readiness.configured_harnesses;
                }
                row.gateway_inference = readiness.gateway_inference;
                row.updated_at_ms = now_ms();
                let row = row.clone();
                self.save(&row).await;
            }
        }
    }

    async fn connected(&mut self, host_id: String, hello: &HostHello) {
        let now = now_ms();
        let created_at_ms = self.hosts.get(&host_id).map_or(now, |r| r.created_at_ms);
        let row = HostRow {
            host_id: host_id.clone(),
            name: hello.name.clone(),
            owner: LOCAL_OWNER.to_owned(),
            status: "online".to_owned(),
            created_at_ms,
            updated_at_ms: now,
            configured_harnesses: hello.configured_harnesses.clone(),
            gateway_inference: hello.gateway_inference.clone(),
            version: Some(hello.version.clone()),
        };
        self.hosts.insert(host_id, row.clone());
        self.save(&row).await;
    }

    async fn save(&self, row: &HostRow) {
        if let Err(e) = self.store.upsert_host(row).await {
            warn!(host_id = %row.host_id, error = %e, "cannot save host");
        }
    }

    /// Bring the list in line with the registry (after a lag, or at start).
    async fn resync(&mut self) {
        let live: Vec<HostConnection> = self.registry.list();
        for conn in &live {
            self.connected(conn.host_id().to_owned(), conn.hello())
                .await;
        }
        let stale: Vec<String> = self
            .hosts
            .values()
            .filter(|r| r.status == "online" && !live.iter().any(|c| c.host_id() == r.host_id))
            .map(|r| r.host_id.clone())
            .collect();
        for host_id in stale {
            self.apply(HostEvent::Disconnected {
                host_id,
                generation: 0,
            })
            .await;
        }
    }

    /// Refresh `updated_at` (last seen) of every connected host.
    async fn refresh(&mut self) {
        let now = now_ms();
        for conn in self.registry.list() {
            let id = conn.host_id();
            if let Some(row) = self.hosts.get_mut(id) {
                row.updated_at_ms = now;
            }
            if let Err(e) = self.store.set_host_status(id, "online", now).await {
                warn!(host_id = %id, error = %e, "cannot refresh host last-seen time");
            }
        }
    }
}

/// The last exit report per runner, for 10 minutes, at most 1024 (oldest dropped first).
#[derive(Debug, Default)]
struct ExitLog {
    by_runner: HashMap<String, (String, Instant)>,
    /// Insertion order, for eviction; may hold ids whose entry was replaced (skipped when evicting).
    order: VecDeque<(String, Instant)>,
}

impl ExitLog {
    fn insert(&mut self, runner_id: String, error: String, now: Instant) {
        self.expire(now);
        self.by_runner.insert(runner_id.clone(), (error, now));
        self.order.push_back((runner_id, now));
        while self.by_runner.len() > EXIT_CAP {
            let Some((id, at)) = self.order.pop_front() else {
                break;
            };
            if self.by_runner.get(&id).is_some_and(|(_, t)| *t == at) {
                self.by_runner.remove(&id);
            }
        }
    }

    fn get(&mut self, runner_id: &str, now: Instant) -> Option<String> {
        self.expire(now);
        self.by_runner.get(runner_id).map(|(e, _)| e.clone())
    }

    fn expire(&mut self, now: Instant) {
        while let Some((id, at)) = self.order.front() {
            if now.saturating_duration_since(*at) < EXIT_TTL {
                break;
            }
            if self.by_runner.get(id).is_some_and(|(_, t)| t == at) {
                self.by_runner.remove(id);
            }
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reports_expire_after_ten_minutes() {
        let t0 = Instant::now();
        let mut log = ExitLog::default();
        log.insert("r1".into(), "exit 1".into(), t0);
        assert_eq!(
            log.get("r1", t0 + Duration::from_secs(599)).as_deref(),
            Some("exit 1")
        );
        assert_eq!(log.get("r1", t0 + EXIT_TTL), None);
        assert!(log.by_runner.is_empty() && log.order.is_empty());
    }

    #[test]
    fn a_newer_report_replaces_the_older_and_keeps_its_own_clock() {
        let t0 = Instant::now();
        let mut log = ExitLog::default();
        log.insert("r1".into(), "first".into(), t0);
        log.insert("r1".into(), "second".into(), t0 + Duration::from_secs(300));
        // The first report's expiry must not remove the second.
        let later = t0 + Duration::from_secs(700);
        assert_eq!(log.get("r1", later).as_deref(), Some("second"));
        assert_eq!(log.get("r1", t0 + Duration::from_secs(900)), None);
    }

    #[test]
    fn at_most_1024_reports_are_kept_oldest_first_out() {
        let t0 = Instant::now();
        let mut log = ExitLog::default();
        for i in 0..=EXIT_CAP {
            log.insert(format!("r{i}"), format!("e{i}"), t0);
        }
        assert_eq!(log.by_runner.len(), EXIT_CAP);
        assert_eq!(log.get("r0", t0), None);
        assert_eq!(log.get("r1", t0).as_deref(), Some("e1"));
        assert_eq!(
            log.get(&format!("r{EXIT_CAP}"), t0).as_deref(),
            Some(format!("e{EXIT_CAP}").as_str())
        );
    }
}
