//! The task behind one session: its mailbox loop, sequence numbers, durable writes and the feed. The turn
//! (inputs, interrupts, the relay) is in `turn.rs`.

use std::sync::Arc;

use bytes::Bytes;
use omnigent_proto::api::{SessionStatus, WireItem};
use omnigent_proto::events::kind;
use omnigent_proto::events::{ServerEvent, sse_frame};
use omnigent_tunnel::RunnerRegistry;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::approvals::{Approvals, PendingIndex};
use super::runner::Relay;
use super::{ActorError, ActorLimits, Command, Msg, SEQ_BLOCK, Sessions, Subscription};
use crate::feed::Feed;
use crate::hosts::Hosts;
use crate::relay::lifecycle::Lifecycle;
use crate::relay::translate::Turn;
use crate::store::{ItemRow, NewItem, Store};

/// Most queued messages handled before the stream subscribers are woken, and the longest time (short: the
/// first token of a turn must not wait; the subscribers pace their own writes under load).
const WAKE_BATCH: usize = 64;
const WAKE_LATENCY: std::time::Duration = std::time::Duration::from_micros(100);

/// The task behind one session.
pub(super) struct Actor {
    pub(super) id: String,
    generation: u64,
    pub(super) store: Store,
    pub(super) limits: ActorLimits,
    registry: Sessions,
    pub(super) status: SessionStatus,
    /// Next sequence number to hand out.
    next_seq: u64,
    /// Highest sequence number recorded in the store as possibly used.
    reserved: u64,
    /// Recent frames, read by the stream subscribers (created once the first sequence number is known).
    feed: Arc<Feed>,
    pub(super) runners: RunnerRegistry,
    pub(super) hosts: Option<Hosts>,
    /// Where the actor's own tasks (forwards, relaunches) run, drained on shutdown.
    pub(super) tasks: TaskTracker,
    /// The actor's own address, for its reader and tasks (weak: they never keep the actor alive).
    pub(super) weak_self: mpsc::WeakSender<Msg>,
    /// The runner the session reads from, its reader, and the turn inputs waiting for it.
    pub(super) relay: Relay,
    /// The relay's fence, grace and re-open rules.
    pub(super) life: Lifecycle,
    /// The turn's text and response, as runner events are translated.
    pub(super) turn: Turn,
    /// The questions the agent asked that nobody answered yet.
    pub(super) approvals: Approvals,
    /// Where they are mirrored for the snapshot and the list.
    pub(super) pending_index: PendingIndex,
}

impl Drop for Actor {
    /// However the actor ends (deleted, idle, the server stopping, a panic), its subscribers are not left
    /// waiting on a feed nobody writes.
    fn drop(&mut self) {
        self.feed.close();
    }
}

/// Why an actor's loop ended.
enum Exit {
    /// The session is gone: refuse what is queued.
    Gone,
    /// Idle: hand what is queued to a fresh actor.
    Idle,
}

/// Sleep until `at`; forever when there is nothing to wait for.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Actor {
    pub(super) fn new(
        id: &str,
        generation: u64,
        registry: Sessions,
        weak_self: mpsc::WeakSender<Msg>,
    ) -> Self {
        let inner = &registry.inner;
        Actor {
            id: id.to_owned(),
            generation,
            store: inner.store.clone(),
            limits: inner.limits,
            status: SessionStatus::Idle,
            next_seq: 1,
            reserved: 0,
            feed: Arc::new(Feed::new(1, 1, 0)),
            runners: inner.runners.clone(),
            hosts: inner.hosts.clone(),
            tasks: inner.tracker.clone(),
            weak_self,
            relay: Relay::default(),
            life: Lifecycle::new(inner.limits.runner_grace),
            turn: Turn::default(),
            approvals: Approvals::default(),
            pending_index: inner.pending.clone(),
            registry,
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let exit = match self.store.actor_state(&self.id).await {
            Ok(Some((status, reserved))) => {
                self.status = SessionStatus::parse(&status).unwrap_or_default();
                self.reserved = reserved;
                self.next_seq = reserved + 1;
                self.feed = Arc::new(Feed::new(
                    self.next_seq,
                    self.limits.replay_buffer,
                    self.limits.replay_buffer_bytes,
                ));
                debug!(session_id = %self.id, first_seq = self.next_seq, "session actor started");
                self.serve(&mut rx).await
            }
            Ok(None) => Exit::Gone,
            Err(e) => {
                warn!(session_id = %self.id, "session actor cannot load its session: {e}");
                Exit::Gone
            }
        };
        // Leave the registry first, so new commands start a fresh actor, then deal with what is queued.
        self.forget_pending();
        self.registry.forget(&self.id, self.generation);
        rx.close();
        while let Some(msg) = rx.recv().await {
            match exit {
                Exit::Gone => msg.fail(|| ActorError::NotFound),
                Exit::Idle => {
                    if let Err(mpsc::error::SendError(msg)) =
                        self.registry.handle(&self.id).tx.send(msg).await
                    {
                        msg.fail(|| ActorError::Gone);
                    }
                }
            }
        }
    }

    async fn serve(&mut self, rx: &mut mpsc::Receiver<Msg>) -> Exit {
        let mut batch = 0;
        let mut batch_start = std::time::Instant::now();
        loop {
            // Messages already queued are handled back to back (up to a batch, for at most WAKE_LATENCY) and
            // the subscribers woken once for all of them, not once per event.
            if (batch == 0 || (batch < WAKE_BATCH && batch_start.elapsed() < WAKE_LATENCY))
                && let Ok(msg) = rx.try_recv()
            {
                if batch == 0 {
                    batch_start = std::time::Instant::now();
                }
                batch += 1;
                if self.handle(msg).await.is_break() {
                    return Exit::Gone;
                }
                continue;
            }
            batch = 0;
            self.feed.wake();
            let busy = self.feed.subscribers() > 0 || self.relay.busy() || self.life.waiting();
            let idle_at = tokio::time::Instant::now() + self.limits.idle;
            let timer = [self.life.deadline(), self.relay.deadline()]
                .into_iter()
                .flatten()
                .min()
                .or((!busy).then_some(idle_at));
            let msg = tokio::select! {
                msg = rx.recv() => msg,
                () = sleep_until(timer) => {
                    let now = tokio::time::Instant::now();
                    if !self.timer(now).await && !busy {
                        debug!(session_id = %self.id, "session actor idle; stopping");
                        return Exit::Idle;
                    }
                    continue;
                }
            };
            let Some(msg) = msg else {
                // Every handle is gone: the server is shutting down.
                return Exit::Idle;
            };
            if self.handle(msg).await.is_break() {
                return Exit::Gone;
            }
        }
    }

    async fn handle(&mut self, msg: Msg) -> std::ops::ControlFlow<()> {
        match msg {
            Msg::Api(cmd) => return self.command(cmd).await,
            Msg::Tunnel(event) => self.tunnel_event(event).await,
            Msg::Reader(from) => self.reader_event(from).await,
            Msg::Outcome(outcome) => self.outcome(outcome).await,
        }
        std::ops::ControlFlow::Continue(())
    }

    async fn command(&mut self, cmd: Command) -> std::ops::ControlFlow<()> {
        use std::ops::ControlFlow::{Break, Continue};
        match cmd {
            Command::Subscribe { after, reply } => {
                let _ = reply.send(Ok(self.subscribe(after)));
            }
            Command::Publish { event, reply } => {
                let result = self.publish(event).await;
                let _ = reply.send(result);
            }
            Command::AppendItem { item, reply } => {
                let result = self.append_item(item).await;
                let gone = matches!(result, Err(ActorError::NotFound));
                let _ = reply.send(result);
                if gone {
                    self.end_streams();
                    return Break(());
                }
            }
            Command::SetStatus {
                status,
                response_id,
                error,
                reply,
            } => {
                let result = self.set_status(status, response_id, error).await;
                let _ = reply.send(result);
            }
            Command::Delete { reply } => {
                let result = match self.store.delete_session(&self.id).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(ActorError::NotFound),
                    Err(e) => Err(ActorError::Store(e)),
                };
                let stop = result.is_ok() || matches!(result, Err(ActorError::NotFound));
                let _ = reply.send(result);
                if stop {
                    self.end_streams();
                    return Break(());
                }
            }
            Command::Deliver { input, reply } => self.deliver(input, reply).await,
            Command::Resolve { resolution, reply } => self.resolve(resolution, reply).await,
            Command::Interrupt {
                kind,
                response_id,
                reply,
            } => self.interrupt(kind, response_id, reply).await,
        }
        Continue(())
    }

    /// Store a turn input and announce it (`session.input.consumed`) under the sequence number of its item,
    /// so it comes before any event of its turn and live and resumed streams carry the same ids.
    pub(super) async fn persist_item(&mut self, item: NewItem) -> Result<ItemRow, ActorError> {
        let (row, seq) = self.store_item(&item).await?;
        let event = ServerEvent::InputConsumed {
            sequence_number: None,
            data: omnigent_proto::events::InputConsumed {
                item_id: row.id.clone(),
                kind: row.kind.clone(),
                data: Value::Object(row.data.clone()),
                created_by: row.created_by.clone(),
                cleared_pending_id: None,
            },
        };
        self.emit(seq, event.event_type(), &to_json(&event));
        Ok(row)
    }

    /// Store `item` under the next sequence number. A failed write hands the number back, so what is
    /// published next does not leave a gap in the stream; nothing is published here.
    async fn store_item(&mut self, item: &NewItem) -> Result<(ItemRow, u64), ActorError> {
        let seq = self.take_seq().await?;
        match self.store.append_item(&self.id, item, seq).await {
            Ok(Some(row)) => Ok((row, seq)),
            Ok(None) => Err(ActorError::NotFound),
            Err(e) => {
                self.next_seq = seq;
                Err(ActorError::Store(e))
            }
        }
    }

    /// Take the next sequence number, reserving a new block in the store when the last one is used up.
    async fn take_seq(&mut self) -> Result<u64, ActorError> {
        if self.next_seq > self.reserved {
            let upto = self.reserved.max(self.next_seq - 1) + SEQ_BLOCK;
            self.store.reserve_seq(&self.id, upto).await?;
            self.reserved = upto;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Encode one event under `seq` and hand it to the feed (and so to every subscriber).
    fn emit(&mut self, seq: u64, event_type: &str, json: &str) {
        self.feed
            .push(seq, Bytes::from(sse_frame(event_type, seq, json)));
    }

    /// Publish a typed server event under the next sequence number.
    pub(super) async fn publish_event(&mut self, event: &ServerEvent) -> Result<u64, ActorError> {
        let seq = self.take_seq().await?;
        self.emit(seq, event.event_type(), &to_json(event));
        Ok(seq)
    }

    pub(super) async fn publish(&mut self, event: Value) -> Result<u64, ActorError> {
        let event_type = event
            .get("type")
            .and_then(Value::as_str)
            .ok_or(ActorError::Untyped)?
            .to_owned();
        let seq = self.take_seq().await?;
        self.emit(seq, &event_type, &event.to_string());
        Ok(seq)
    }

    pub(super) async fn append_item(
        &mut self,
        item: NewItem,
    ) -> Result<(ItemRow, u64), ActorError> {
        let (row, seq) = self.store_item(&item).await?;
        let json = item_done_json(&row);
        self.emit(seq, kind::RESPONSE_OUTPUT_ITEM_DONE, &json);
        Ok((row, seq))
    }

    pub(super) async fn set_status(
        &mut self,
        status: SessionStatus,
        response_id: Option<String>,
        error: Option<Value>,
    ) -> Result<u64, ActorError> {
        if matches!(status, SessionStatus::Idle | SessionStatus::Failed) {
            // The turn is over: nobody can answer its questions any more.
            self.drop_pending().await?;
        }
        if status != self.status {
            self.store.set_status(&self.id, status.as_str()).await?;
            self.status = status;
        }
        let mut event = ServerEvent::status(&self.id, status);
        if let ServerEvent::Status {
            response_id: r,
            error: e,
            ..
        } = &mut event
        {
            *r = response_id;
            *e = error;
        }
        self.publish_event(&event).await
    }

    fn subscribe(&mut self, after: Option<u64>) -> Subscription {
        let head = self.next_seq - 1;
        let ready_seq = after.filter(|n| *n < head).unwrap_or(head);
        let heartbeat = ServerEvent::heartbeat(Some(crate::clock::now_secs_f64()));
        let ready = sse_frame(heartbeat.event_type(), ready_seq, &to_json(&heartbeat));
        Subscription {
            ready_seq,
            ready: Bytes::from(ready),
            feed: self.feed.clone(),
            wake: self.feed.watch(),
        }
    }

    /// Tell every subscriber the stream is over (they drain the feed, then write `[DONE]`).
    fn end_streams(&mut self) {
        self.feed.close();
    }
}

/// `response.output_item.done` for a stored item, as JSON text.
pub fn item_done_json(row: &ItemRow) -> String {
    let event = ServerEvent::OutputItemDone {
        sequence_number: None,
        item: serde_json::to_value(wire_item(row)).unwrap_or(Value::Null),
    };
    to_json(&event)
}

/// The flat wire form of a stored item.
pub fn wire_item(row: &ItemRow) -> WireItem {
    WireItem {
        id: row.id.clone(),
        response_id: row.response_id.clone(),
        kind: row.kind.clone(),
        status: row.status.clone(),
        created_at: row.created_at_ms / 1000,
        data: row.data.clone(),
    }
}

fn to_json(event: &ServerEvent) -> String {
    // Serializing these plain data types cannot fail (string keys, no non-finite floats from us).
    serde_json::to_string(event).unwrap_or_else(|_| String::from("{}"))
}
