//! Session-change notices: one broadcast of "this session was created / changed / deleted", sent by the store
//! after each write that succeeded (so every writer, the HTTP handlers, the actors and the host upkeep alike,
//! is covered by one hook) and read by every `WS /v1/sessions/updates` socket.
//!
//! A notice carries only the id: a reader re-reads the row, so a lagging reader that missed notices loses
//! nothing but the hint ([`Notice::Lagged`] makes it re-read everything it watches).

use tokio::sync::broadcast;

/// Notices kept for a slow reader before it lags.
const CAPACITY: usize = 1024;

/// What happened to a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new session (created or forked): pushed even to sockets that do not watch it yet.
    Created(String),
    /// A field, its status or its items changed.
    Changed(String),
    /// Deleted.
    Removed(String),
}

/// What a reader gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Change(Change),
    /// Notices were dropped for this reader: re-read everything.
    Lagged,
    /// The sender is gone (the server is shutting down).
    Closed,
}

/// The sending side, cloned into whoever writes sessions.
#[derive(Debug, Clone)]
pub struct Updates {
    tx: broadcast::Sender<Change>,
}

impl Default for Updates {
    fn default() -> Self {
        Updates {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl Updates {
    /// Announce a change (nobody listening is fine).
    pub fn send(&self, change: Change) {
        let _ = self.tx.send(change);
    }

    pub fn subscribe(&self) -> Listener {
        Listener {
            rx: self.tx.subscribe(),
        }
    }
}

/// One reader of the notices.
#[derive(Debug)]
pub struct Listener {
    rx: broadcast::Receiver<Change>,
}

impl Listener {
    pub async fn next(&mut self) -> Notice {
        match self.rx.recv().await {
            Ok(change) => Notice::Change(change),
            Err(broadcast::error::RecvError::Lagged(_)) => Notice::Lagged,
            Err(broadcast::error::RecvError::Closed) => Notice::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reader_sees_changes_in_order_and_lag_as_lagged() {
        let updates = Updates::default();
        let mut l = updates.subscribe();
        updates.send(Change::Created("a".into()));
        updates.send(Change::Removed("a".into()));
        assert_eq!(l.next().await, Notice::Change(Change::Created("a".into())));
        assert_eq!(l.next().await, Notice::Change(Change::Removed("a".into())));
        for _ in 0..CAPACITY + 1 {
            updates.send(Change::Changed("b".into()));
        }
        assert_eq!(l.next().await, Notice::Lagged);
    }
}
