//! Who is watching a session: every open `GET …/stream` is one connection, registered while its response
//! lives. A stream opened with `?presence=true` (ours) writes `session.presence` with the full list (never a
//! delta) when it opens and whenever the list changes, out of band like a heartbeat: it takes no sequence
//! number and is never replayed. Other streams are counted but write none, so existing readers see the
//! stream they always saw (0.19.1 sends `viewers: []` to a single-user server's streams anyway).
//!
//! 0.19.1 lists distinct signed-in users in `viewers` and never the single-user `local`, so ours stays empty
//! there; `connections` (ours) lists the streams.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use omnigent_proto::events::ServerEvent;
use omnigent_proto::live::PresenceConnection;
use tokio::sync::watch;

/// Who opened a stream: the paired device (`None` for the owner on this machine), its name and role.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub device_id: Option<String>,
    pub device_name: String,
    pub role: omnigent_proto::auth::Role,
}

/// The connections of every watched session.
#[derive(Debug, Clone, Default)]
pub struct Presence {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    next_connection: u64,
    by_session: HashMap<String, Watched>,
}

#[derive(Debug)]
struct Watched {
    list: Vec<PresenceConnection>,
    /// The list as last announced to the session's streams.
    tx: watch::Sender<Vec<PresenceConnection>>,
}

impl Presence {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Register one stream of `session_id`; it stays listed until the returned guard is dropped. With
    /// `announce`, the guard yields the list now and at every change ([`Watching::changed`]).
    pub fn join(&self, session_id: &str, who: Viewer, idle: bool, announce: bool) -> Watching {
        let mut state = self.lock();
        state.next_connection += 1;
        let connection_id = format!("c{}", state.next_connection);
        let watched = state
            .by_session
            .entry(session_id.to_owned())
            .or_insert_with(|| Watched {
                list: Vec::new(),
                tx: watch::channel(Vec::new()).0,
            });
        watched.list.push(PresenceConnection {
            connection_id: connection_id.clone(),
            joined_at: crate::clock::iso8601_utc(crate::clock::now_ms() / 1000),
            idle,
            device_id: who.device_id,
            device_name: who.device_name,
            role: who.role,
        });
        watched.tx.send_replace(watched.list.clone());
        let rx = watched.tx.subscribe();
        let mut watching = Watching {
            presence: self.clone(),
            session_id: session_id.to_owned(),
            connection_id,
            rx,
            announce,
        };
        watching.rx.mark_changed();
        watching
    }
}

/// One registered stream; dropping it (the response ended or the client went away) is the leave.
#[derive(Debug)]
pub struct Watching {
    presence: Presence,
    session_id: String,
    connection_id: String,
    rx: watch::Receiver<Vec<PresenceConnection>>,
    /// This stream writes `session.presence` (`?presence=true`).
    announce: bool,
}

impl Watching {
    /// The next `session.presence` event (JSON) to write to this stream; pending until the list changes.
    pub async fn changed(&mut self) -> String {
        if !self.announce || self.rx.changed().await.is_err() {
            // The sender lives as long as any stream of the session, this one included.
            std::future::pending::<()>().await;
        }
        let event = ServerEvent::Presence {
            sequence_number: None,
            conversation_id: self.session_id.clone(),
            viewers: Vec::new(),
            connections: self.rx.borrow_and_update().clone(),
        };
        serde_json::to_string(&event).unwrap_or_else(|_| String::from("{}"))
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let mut state = self.presence.lock();
        if let Some(watched) = state.by_session.get_mut(&self.session_id) {
            watched
                .list
                .retain(|c| c.connection_id != self.connection_id);
            if watched.list.is_empty() {
                state.by_session.remove(&self.session_id);
            } else {
                watched.tx.send_replace(watched.list.clone());
            }
        }
    }
}
