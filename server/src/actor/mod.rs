//! One actor per live session (DESIGN §5.5): a task that owns the session's status, its event feed (the
//! recent frames every stream subscriber reads at its own cursor, and `Last-Event-ID` replay: see
//! `crate::feed`), every durable write to the session's items, so item positions and event sequence numbers
//! stay gapless and ordered without any global lock, and the session's turn.
//!
//! Other parts talk to an actor only through [`Sessions`]. A turn is one command: [`Sessions::deliver`]
//! persists the input, forwards it to the runner from a tracked task and answers when the runner took it (or
//! did not); [`Sessions::interrupt`] raises the fence and delivers the interrupt the same way. The actor also
//! owns the session's runner relay (reference §3.4–3.5): a reader task ([`crate::relay::run_reader`]) streams
//! the runner's events to it as [`ReaderEvent`](crate::relay::ReaderEvent)s; the relay's lifecycle
//! ([`crate::relay::lifecycle`]) and the translation of runner events ([`crate::relay::translate`]) are plain
//! types whose answers the actor applies.
//!
//! The mailbox takes four kinds of message ([`Msg`]): API commands ([`Command`], each with its reply), tunnel
//! and host news ([`TunnelEvent`]), reader events, and the outcomes of the actor's own tasks ([`Outcome`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use omnigent_proto::api::SessionStatus;
use omnigent_tunnel::RunnerRegistry;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::feed::Feed;
use crate::hosts::{Hosts, LaunchError};
use crate::relay::FromReader;
use crate::relay::RelayError;
use crate::store::{ItemRow, NewItem, SessionRow, Store, StoreError};

mod approvals;
mod core;
mod runner;
mod turn;

pub use self::approvals::PendingIndex;

pub use self::core::{item_done_json, wire_item};

/// Sequence numbers are reserved in the store in blocks this big, so they never repeat across restarts
/// while costing one write per block instead of one per event.
const SEQ_BLOCK: u64 = 1000;
/// Messages queued per actor before senders wait.
const COMMAND_QUEUE: usize = 256;

/// Sizes an actor works with.
#[derive(Debug, Clone, Copy)]
pub struct ActorLimits {
    /// Recent events kept for `Last-Event-ID` replay.
    pub replay_buffer: usize,
    /// Bytes of recent events kept for replay.
    pub replay_buffer_bytes: usize,
    /// Stop after this long with no subscriber and no command.
    pub idle: std::time::Duration,
    /// How long a runner lost mid-turn may take to come back before the turn fails (reference §3.5).
    pub runner_grace: std::time::Duration,
}

/// A new stream subscription: the ready heartbeat to write first, then the feed from `ready_seq` on.
#[derive(Debug)]
pub struct Subscription {
    /// The id the ready heartbeat carried: the subscriber's cursor starts there (with `Last-Event-ID`, at the
    /// client's last event, so the feed and the store replay what it missed).
    pub ready_seq: u64,
    pub ready: Bytes,
    pub feed: Arc<Feed>,
    /// Woken when the feed has news; holding it counts as watching the session.
    pub wake: watch::Receiver<u64>,
}

/// Why an actor command failed.
#[derive(Debug, thiserror::Error)]
pub enum ActorError {
    #[error("Session not found")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the session's actor stopped (the server is shutting down); retry")]
    Gone,
    #[error("event has no string `type`")]
    Untyped,
    /// A turn input or interrupt could not reach the session's runner; says why and what to do.
    #[error("{0}")]
    RunnerUnavailable(String),
    /// Relaunching the session's runner on its host failed.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// An answer to a question another answer already settled (or that expired).
    #[error(
        "elicitation `{0}` was already resolved (another client answered first, or it expired)"
    )]
    AlreadyResolved(String),
    /// An answer to a question this session has not asked.
    #[error("elicitation `{0}` is not pending on this session")]
    UnknownElicitation(String),
}

/// A turn input (reference §3.4): a client event of a type that starts or steers a turn, and the item it
/// stores, if any.
#[derive(Debug)]
pub struct TurnInput {
    pub kind: String,
    pub data: Map<String, Value>,
    pub item: Option<NewItem>,
}

type Reply<T> = oneshot::Sender<Result<T, ActorError>>;

/// The API commands an actor handles, one at a time, in arrival order; each answers on its `reply`.
#[derive(Debug)]
pub enum Command {
    /// Register a stream subscriber; replay what it missed after `after`.
    Subscribe {
        after: Option<u64>,
        reply: Reply<Subscription>,
    },
    /// Broadcast a transient event (a JSON object with `type`); answers its sequence number.
    Publish { event: Value, reply: Reply<u64> },
    /// Persist an item at the next position and broadcast it as `response.output_item.done`.
    AppendItem {
        item: NewItem,
        reply: Reply<(ItemRow, u64)>,
    },
    /// Record the status and broadcast `session.status`.
    SetStatus {
        status: SessionStatus,
        response_id: Option<String>,
        error: Option<Value>,
        reply: Reply<u64>,
    },
    /// Delete the session: subscribers get `[DONE]`, the actor ends.
    Delete { reply: Reply<()> },
    /// A turn input: persist it, forward it; answers the stored item's id once the runner took it.
    Deliver {
        input: TurnInput,
        reply: Reply<Option<String>>,
    },
    /// Answer a question the agent asked: the first answer wins (published, forwarded to the runner).
    Resolve {
        resolution: omnigent_proto::elicitation::Resolution,
        reply: Reply<()>,
    },
    /// Interrupt (`interrupt`) or stop (`stop_session`) the running turn: publish `session.interrupted`, raise
    /// the fence, deliver it to the runner; answers once it was delivered or given up.
    Interrupt {
        kind: String,
        response_id: Option<String>,
        reply: Reply<()>,
    },
}

/// News from the tunnels and hosts, and from the server's start.
#[derive(Debug)]
pub enum TunnelEvent {
    /// A tunnel of `runner_id` connected: re-open the relay if this session is bound to it.
    RunnerConnected { runner_id: String, generation: u64 },
    /// The host reported that the process of `runner_id` exited (`host.runner_exited`): a turn running on it
    /// fails with `report` (exit code or signal, and the log tail).
    RunnerExited { runner_id: String, report: String },
    /// The server started and found the session mid-turn (it stopped, or died, during the turn).
    RecoverTurn,
}

/// What a task the actor started came back with.
#[derive(Debug)]
pub enum Outcome {
    /// The relaunch of the session's runner on its host.
    Relaunched(Box<Relaunched>),
    /// The forward of a turn input of `kind`, whose item was stored as `item_id`.
    Forwarded {
        kind: String,
        item_id: Option<String>,
        result: Result<(), RelayError>,
        reply: Reply<Option<String>>,
    },
    /// The forward of an answer to the runner.
    ApprovalForwarded {
        elicitation_id: String,
        result: Result<(), RelayError>,
    },
    /// The delivery of an interrupt (`stop`: a `stop_session`).
    InterruptDelivered {
        delivered: bool,
        stop: bool,
        reply: Reply<()>,
    },
}

/// The relaunch of a session's runner on its host, for `input` (the session read as `row`).
#[derive(Debug)]
pub struct Relaunched {
    pub input: TurnInput,
    pub row: SessionRow,
    pub result: Result<Option<(SessionRow, String)>, LaunchError>,
    pub reply: Reply<Option<String>>,
}

/// One message of an actor's mailbox.
#[derive(Debug)]
pub enum Msg {
    Api(Command),
    Tunnel(TunnelEvent),
    Reader(FromReader),
    Outcome(Outcome),
}

impl From<FromReader> for Msg {
    fn from(m: FromReader) -> Self {
        Msg::Reader(m)
    }
}

impl Msg {
    /// Answer a message that will not be handled with `err` (a dropped reply receiver means the caller went
    /// away; nothing to do).
    fn fail(self, err: impl Fn() -> ActorError) {
        match self {
            Msg::Api(cmd) => match cmd {
                Command::Subscribe { reply, .. } => drop(reply.send(Err(err()))),
                Command::Publish { reply, .. } => drop(reply.send(Err(err()))),
                Command::AppendItem { reply, .. } => drop(reply.send(Err(err()))),
                Command::SetStatus { reply, .. } => drop(reply.send(Err(err()))),
                Command::Delete { reply } => drop(reply.send(Err(err()))),
                Command::Deliver { reply, .. } => drop(reply.send(Err(err()))),
                Command::Resolve { reply, .. } => drop(reply.send(Err(err()))),
                Command::Interrupt { reply, .. } => drop(reply.send(Err(err()))),
            },
            Msg::Outcome(outcome) => match outcome {
                Outcome::Relaunched(r) => drop(r.reply.send(Err(err()))),
                Outcome::Forwarded { reply, .. } => drop(reply.send(Err(err()))),
                Outcome::InterruptDelivered { reply, .. } => drop(reply.send(Err(err()))),
                Outcome::ApprovalForwarded { .. } => {}
            },
            Msg::Tunnel(_) | Msg::Reader(_) => {}
        }
    }
}

/// A cheap, cloneable address of one session's actor.
#[derive(Debug, Clone)]
struct SessionHandle {
    generation: u64,
    tx: mpsc::Sender<Msg>,
}

/// The registry of live session actors.
#[derive(Debug, Clone)]
pub struct Sessions {
    inner: Arc<SessionsInner>,
}

#[derive(Debug)]
struct SessionsInner {
    store: Store,
    limits: ActorLimits,
    /// Held only for lookups and inserts, never across an await.
    map: Mutex<HashMap<String, SessionHandle>>,
    generation: AtomicU64,
    /// The actors and every task they start (forwards, relaunches), drained on shutdown.
    tracker: TaskTracker,
    runners: RunnerRegistry,
    /// Relaunches the runners of host-bound sessions (none: a message to an offline runner is refused).
    hosts: Option<Hosts>,
    /// Every live session's pending questions, written by their actors.
    pending: PendingIndex,
}

impl Sessions {
    /// Sessions with a runner registry of their own (no runner can connect to it) and no hosts.
    pub fn new(store: Store, limits: ActorLimits) -> Self {
        Self::with_runners(store, limits, RunnerRegistry::default(), None)
    }

    /// Sessions whose relays reach runners through `runners`, relaunching host-bound runners through `hosts`.
    pub fn with_runners(
        store: Store,
        limits: ActorLimits,
        runners: RunnerRegistry,
        hosts: Option<Hosts>,
    ) -> Self {
        Sessions {
            inner: Arc::new(SessionsInner {
                store,
                limits,
                map: Mutex::new(HashMap::new()),
                generation: AtomicU64::new(0),
                tracker: TaskTracker::new(),
                runners,
                hosts,
                pending: PendingIndex::default(),
            }),
        }
    }

    /// The runner registry the relays use.
    pub fn runners(&self) -> &RunnerRegistry {
        &self.inner.runners
    }

    /// The questions live sessions wait on (read without an actor round trip).
    pub fn pending(&self) -> &PendingIndex {
        &self.inner.pending
    }

    /// Answer the question `resolution` names (reference §1.2 `…/elicitations/{eid}/resolve`, and the
    /// `approval` event): the first answer wins, is published as `response.elicitation_resolved` to every
    /// stream and forwarded to the runner; [`ActorError::AlreadyResolved`] for a later one,
    /// [`ActorError::UnknownElicitation`] for an id the session is not waiting on.
    pub async fn resolve(
        &self,
        session_id: &str,
        resolution: omnigent_proto::elicitation::Resolution,
    ) -> Result<(), ActorError> {
        self.call(session_id, |reply| Command::Resolve { resolution, reply })
            .await
    }

    /// Number of live actors.
    pub fn live(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionHandle>> {
        // A panic while holding this lock cannot leave the map half-updated (single insert/remove).
        self.inner.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The actor of `session_id`, started if none is running. The id must be canonical.
    fn handle(&self, session_id: &str) -> SessionHandle {
        let mut map = self.lock();
        if let Some(h) = map.get(session_id).filter(|h| !h.tx.is_closed()) {
            return h.clone();
        }
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let handle = SessionHandle { generation, tx };
        map.insert(session_id.to_owned(), handle.clone());
        drop(map);
        let actor = core::Actor::new(session_id, generation, self.clone(), handle.tx.downgrade());
        self.inner.tracker.spawn(actor.run(rx));
        handle
    }

    fn forget(&self, session_id: &str, generation: u64) {
        let mut map = self.lock();
        if map
            .get(session_id)
            .is_some_and(|h| h.generation == generation)
        {
            map.remove(session_id);
        }
    }

    /// Send one command to the session's actor, restarting it once if it had just stopped.
    async fn call<T>(
        &self,
        session_id: &str,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, ActorError> {
        let (reply, answer) = oneshot::channel();
        let mut msg = Msg::Api(make(reply));
        for _ in 0..2 {
            match self.handle(session_id).tx.send(msg).await {
                Ok(()) => return answer.await.map_err(|_| ActorError::Gone)?,
                Err(mpsc::error::SendError(back)) => msg = back,
            }
        }
        Err(ActorError::Gone)
    }

    /// Tell the session's actor (starting it) about the tunnels.
    async fn tell(&self, session_id: &str, event: TunnelEvent) {
        let _ = self.handle(session_id).tx.send(Msg::Tunnel(event)).await;
    }

    /// Subscribe to a session's stream, replaying what came after `after`.
    pub async fn subscribe(
        &self,
        session_id: &str,
        after: Option<u64>,
    ) -> Result<Subscription, ActorError> {
        self.call(session_id, |reply| Command::Subscribe { after, reply })
            .await
    }

    /// Broadcast a transient event (a JSON object with a string `type`).
    pub async fn publish(&self, session_id: &str, event: Value) -> Result<u64, ActorError> {
        self.call(session_id, |reply| Command::Publish { event, reply })
            .await
    }

    /// Persist an item and broadcast it; answers the stored row and its sequence number.
    pub async fn append_item(
        &self,
        session_id: &str,
        item: NewItem,
    ) -> Result<(ItemRow, u64), ActorError> {
        self.call(session_id, |reply| Command::AppendItem { item, reply })
            .await
    }

    /// Record and broadcast a status.
    pub async fn set_status(
        &self,
        session_id: &str,
        status: SessionStatus,
        response_id: Option<String>,
        error: Option<Value>,
    ) -> Result<u64, ActorError> {
        self.call(session_id, |reply| Command::SetStatus {
            status,
            response_id,
            error,
            reply,
        })
        .await
    }

    /// A turn input (reference §3.4), in one command: the actor finds the session's runner (relaunching it
    /// on its host when it is offline), makes sure the relay is subscribed and the session initialised,
    /// persists the input and announces it (`session.input.consumed`, before any event of the turn it
    /// starts), and forwards it. Answers the stored item's id once the runner took it;
    /// [`ActorError::RunnerUnavailable`] when it could not reach it (a runner that refused it also fails the
    /// session, with `runner_rejected_event`).
    pub async fn deliver(
        &self,
        session_id: &str,
        input: TurnInput,
    ) -> Result<Option<String>, ActorError> {
        self.call(session_id, |reply| Command::Deliver { input, reply })
            .await
    }

    /// Interrupt (`interrupt`) or stop (`stop_session`) the session's turn (reference §2.6): publish
    /// `session.interrupted` and fence the cancelled turn's trailing output, deliver the interrupt to the
    /// runner (5 s), lift the fence if it did not get there. Without a connected runner there is no turn to
    /// cancel: a stop settles the status to idle.
    pub async fn interrupt(
        &self,
        session_id: &str,
        kind: &str,
        response_id: Option<String>,
    ) -> Result<(), ActorError> {
        let kind = kind.to_owned();
        self.call(session_id, |reply| Command::Interrupt {
            kind,
            response_id,
            reply,
        })
        .await
    }

    /// A tunnel of `runner_id` connected: sessions bound to it re-open their relay (starting their actor).
    pub async fn runner_connected(&self, session_id: &str, runner_id: &str, generation: u64) {
        let runner_id = runner_id.to_owned();
        self.tell(
            session_id,
            TunnelEvent::RunnerConnected {
                runner_id,
                generation,
            },
        )
        .await;
    }

    /// The process of `runner_id` exited (reported by its host): a turn of this session running on it fails
    /// with `report`; an idle session stays quiet.
    pub async fn runner_exited(&self, session_id: &str, runner_id: &str, report: &str) {
        let event = TunnelEvent::RunnerExited {
            runner_id: runner_id.to_owned(),
            report: report.to_owned(),
        };
        self.tell(session_id, event).await;
    }

    /// The server started and found this session mid-turn: its runner gets the grace to come back (and
    /// continue or settle the turn), or the turn fails as `runner_disconnected`.
    pub async fn recover_turn(&self, session_id: &str) {
        self.tell(session_id, TunnelEvent::RecoverTurn).await;
    }

    /// Delete a session through its actor, so open streams end with `[DONE]`.
    pub async fn delete(&self, session_id: &str) -> Result<(), ActorError> {
        self.call(session_id, |reply| Command::Delete { reply })
            .await
    }

    /// Stop every actor after it has finished the commands already queued (in-flight writes complete),
    /// waiting at most `grace`.
    pub async fn close(&self, grace: std::time::Duration) {
        self.lock().clear();
        self.inner.tracker.close();
        if tokio::time::timeout(grace, self.inner.tracker.wait())
            .await
            .is_err()
        {
            warn!("session actors did not stop within {grace:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::store::{DatabaseLocation, NewSession, SessionRow};

    fn row(id: &str) -> SessionRow {
        SessionRow::new(id, &"a".repeat(32), 0)
    }

    async fn wait_live(sessions: &Sessions, want: usize) {
        for _ in 0..100 {
            if sessions.live() == want {
                return;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(sessions.live(), want);
    }

    #[tokio::test]
    async fn an_idle_actor_stops_unless_watched_and_sequences_never_repeat() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&DatabaseLocation::Sqlite(dir.path().join("t.db")), 1)
            .await
            .expect("store");
        let id = omnigent_proto::ids::new_id();
        store
            .create_session(&NewSession { row: row(&id) }, &[])
            .await
            .expect("create");
        let idle = Duration::from_secs(600);
        let sessions = Sessions::new(
            store.clone(),
            ActorLimits {
                replay_buffer: 16,
                replay_buffer_bytes: 1 << 20,
                idle,
                runner_grace: Duration::from_secs(30),
            },
        );
        let first = sessions
            .publish(&id, json!({"type": "x"}))
            .await
            .expect("publish");
        assert_eq!(first, 1);
        assert_eq!(sessions.live(), 1);

        // Idle for longer than the limit: the actor stops and leaves the registry.
        tokio::time::pause();
        tokio::time::advance(idle + Duration::from_secs(1)).await;
        wait_live(&sessions, 0).await;
        tokio::time::resume();

        // A new actor continues after the reserved block: ids never repeat.
        let second = sessions
            .publish(&id, json!({"type": "x"}))
            .await
            .expect("publish");
        assert!(second > SEQ_BLOCK, "{second}");

        // A live subscriber keeps the actor running however long it is quiet.
        let sub = sessions.subscribe(&id, None).await.expect("subscribe");
        tokio::time::pause();
        tokio::time::advance(idle * 3).await;
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert_eq!(sessions.live(), 1);
        tokio::time::resume();
        drop(sub);
        let third = sessions
            .publish(&id, json!({"type": "x"}))
            .await
            .expect("publish");
        assert_eq!(third, second + 1);

        // Publishing to a session that does not exist is NotFound, and the actor goes away.
        let missing = omnigent_proto::ids::new_id();
        let err = sessions
            .publish(&missing, json!({"type": "x"}))
            .await
            .expect_err("missing");
        assert!(matches!(err, ActorError::NotFound));
        wait_live(&sessions, 1).await;
        store.close().await;
    }

    #[tokio::test]
    async fn the_replay_buffer_is_bounded_by_bytes() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&DatabaseLocation::Sqlite(dir.path().join("t.db")), 1)
            .await
            .expect("store");
        let id = omnigent_proto::ids::new_id();
        store
            .create_session(&NewSession { row: row(&id) }, &[])
            .await
            .expect("create");
        let sessions = Sessions::new(
            store.clone(),
            ActorLimits {
                replay_buffer: 10_000,
                replay_buffer_bytes: 64 * 1024,
                idle: Duration::from_secs(600),
                runner_grace: Duration::from_secs(30),
            },
        );
        let big = "z".repeat(10 * 1024);
        for _ in 0..50 {
            sessions
                .publish(
                    &id,
                    json!({"type": "response.output_text.delta", "delta": big}),
                )
                .await
                .expect("publish");
        }
        // Resuming from the start replays only what fits in 64 KiB (transient events are not in the store).
        let sub = sessions.subscribe(&id, Some(0)).await.expect("subscribe");
        let crate::feed::Read::Behind { floor } = sub.feed.read(0, usize::MAX) else {
            panic!("the first events were evicted");
        };
        let crate::feed::Read::Frames { chunk, last } = sub.feed.read(floor - 1, usize::MAX) else {
            panic!("the newest events are kept");
        };
        assert_eq!(last, 50);
        let replayed = String::from_utf8_lossy(&chunk)
            .matches("event: response.output_text.delta")
            .count();
        assert!((1..=6).contains(&replayed), "{replayed}");
        store.close().await;
    }
}
