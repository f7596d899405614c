//! The one registry of live tunnels behind both [`crate::RunnerRegistry`] and [`crate::host::HostRegistry`]:
//! keyed by id, generation-guarded, newest wins among equally authenticated peers ([`may_replace`]), one
//! broadcast of connect/disconnect events.
//!
//! The disconnect rule, once for both tunnels: a tunnel that ends after a newer one replaced it removes nothing
//! and announces nothing. `Disconnected` means "this id has no live tunnel any more", never "some tunnel of this
//! id ended", so a replaced tunnel never marks a reconnected peer offline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use omnigent_proto::runner_frames::close;
use tokio::sync::broadcast;
use tracing::info;

use crate::auth::{Authentication, may_replace};

/// A live tunnel as the registry needs it: a way to close it (when a newer one replaces it, or on shutdown).
pub trait Tunnel: Clone {
    /// Close the tunnel; its task ends, then calls [`Registry::deregister`].
    fn close(&self, code: u16, reason: &str);
}

/// One registered tunnel with what the rule reads.
struct Entry<C> {
    conn: C,
    generation: u64,
    authentication: Authentication,
}

/// Logged, and the close reason sent, when a newer tunnel of the same id replaces an older one.
pub const TUNNEL_REPLACED: &str = "tunnel replaced";

/// The live tunnels of one kind, keyed by id. Share it behind an `Arc` (the wrappers do).
/// `E` is what subscribers hear: the `connected`/`disconnected` events of [`Self::register`] and
/// [`Self::deregister`], and the tunnels' own notifications ([`Self::emit`]).
pub struct Registry<C, E> {
    live: Mutex<HashMap<String, Entry<C>>>,
    events: broadcast::Sender<E>,
    next_generation: AtomicU64,
}

impl<C: Tunnel, E: Clone> std::fmt::Debug for Registry<C, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("live", &self.lock().len())
            .finish()
    }
}

impl<C: Tunnel, E: Clone> Registry<C, E> {
    /// An empty registry whose slowest subscriber may fall `event_buffer` events behind before it sees `Lagged`.
    pub fn new(event_buffer: usize) -> Self {
        let (events, _) = broadcast::channel(event_buffer);
        Registry {
            live: Mutex::new(HashMap::new()),
            events,
            next_generation: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry<C>>> {
        // Every critical section is a single lookup, insert or remove, so a poisoned map is still consistent.
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh generation for a tunnel about to register; increases with every accepted connection.
    pub fn next_generation(&self) -> u64 {
        self.next_generation.fetch_add(1, Ordering::Relaxed)
    }

    /// The live tunnel of `id`, if any.
    pub fn get(&self, id: &str) -> Option<C> {
        self.lock().get(id).map(|e| e.conn.clone())
    }

    pub fn contains(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// Every live tunnel, sorted by id.
    pub fn tunnels(&self) -> Vec<C> {
        let mut list: Vec<(String, C)> = self
            .lock()
            .iter()
            .map(|(id, e)| (id.clone(), e.conn.clone()))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list.into_iter().map(|(_, conn)| conn).collect()
    }

    /// Notifications from now on. On `Lagged`, resync from [`Self::tunnels`].
    pub fn subscribe(&self) -> broadcast::Receiver<E> {
        self.events.subscribe()
    }

    /// Send `event` to every subscriber (none is fine: nobody needs to hear it).
    pub fn emit(&self, event: E) {
        let _ = self.events.send(event);
    }

    /// The live tunnel of `id`, waiting up to `timeout` for one to register. Event-driven: no polling.
    pub async fn wait_for(&self, id: &str, timeout: Duration) -> Option<C> {
        let mut events = self.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(conn) = self.get(id) {
                return Some(conn);
            }
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Err(_) => return None,
                Ok(Ok(_) | Err(broadcast::error::RecvError::Lagged(_))) => {}
                // `self` owns the sender, so this cannot happen while `self` is alive.
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
            }
        }
    }

    /// Close every live tunnel with `code` (server shutdown).
    pub fn close_all(&self, code: u16, reason: &str) {
        for conn in self.tunnels() {
            conn.close(code, reason);
        }
    }

    /// Make `conn` (tunnel `generation` of `id`, authenticated as `authentication`) the live tunnel of `id`
    /// and send `connected`. An older tunnel of the id is closed 4000 "tunnel replaced" (it sends no
    /// `Disconnected` when it ends), unless it is more strongly authenticated ([`may_replace`]): then nothing
    /// changes and `conn` is refused with the old one's authentication.
    pub fn register(
        &self,
        id: &str,
        generation: u64,
        authentication: Authentication,
        conn: C,
        connected: E,
    ) -> Result<(), Authentication> {
        let old = {
            let mut live = self.lock();
            if let Some(held) = live.get(id)
                && !may_replace(held.authentication, authentication)
            {
                return Err(held.authentication);
            }
            let entry = Entry {
                conn,
                generation,
                authentication,
            };
            live.insert(id.to_owned(), entry)
        };
        if let Some(old) = old {
            info!(old = old.generation, new = generation, "{TUNNEL_REPLACED}");
            old.conn.close(close::REPLACED, TUNNEL_REPLACED);
        }
        self.emit(connected);
        Ok(())
    }

    /// The tunnel `generation` of `id` ended. Only if it is still the live one is it removed and `disconnected`
    /// sent; a replaced (or refused) tunnel changes nothing. Returns whether it was removed.
    pub fn deregister(&self, id: &str, generation: u64, disconnected: E) -> bool {
        let removed = {
            let mut live = self.lock();
            let current = live.get(id).is_some_and(|e| e.generation == generation);
            if current {
                live.remove(id);
            }
            current
        };
        if removed {
            self.emit(disconnected);
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Event {
        Connected(u64),
        Disconnected(u64),
    }

    /// A tunnel that records how it was closed.
    #[derive(Clone)]
    struct Fake {
        generation: u64,
        closed: Arc<Mutex<Option<(u16, String)>>>,
    }

    impl Tunnel for Fake {
        fn close(&self, code: u16, reason: &str) {
            *self.closed.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((code, reason.to_owned()));
        }
    }

    enum Step {
        /// A tunnel of this generation and authentication completes its handshake.
        Connect(u64, Authentication),
        /// The tunnel of this generation ends.
        End(u64),
    }

    use Authentication::{Anonymous, BindingToken};
    use Step::{Connect, End};

    struct Row {
        step: Step,
        /// What `register` answers (connects only).
        refused_by: Option<Authentication>,
        /// The events the step sends, in order.
        events: &'static [Event],
        /// The live generation after the step.
        live: Option<u64>,
        /// Generations closed 4000 "tunnel replaced" by the step.
        replaced: &'static [u64],
    }

    fn row(
        step: Step,
        refused_by: Option<Authentication>,
        events: &'static [Event],
        live: Option<u64>,
        replaced: &'static [u64],
    ) -> Row {
        Row {
            step,
            refused_by,
            events,
            live,
            replaced,
        }
    }

    /// Plays `rows` against one registry, checking each step's answer, events, live tunnel and closes.
    fn play(rows: Vec<Row>) {
        let registry = Registry::<Fake, Event>::new(64);
        let mut events = registry.subscribe();
        let mut made: HashMap<u64, Fake> = HashMap::new();
        for (i, row) in rows.into_iter().enumerate() {
            match row.step {
                Connect(generation, auth) => {
                    let conn = Fake {
                        generation,
                        closed: Arc::default(),
                    };
                    made.insert(generation, conn.clone());
                    let connected = Event::Connected(generation);
                    assert_eq!(
                        registry
                            .register("peer", generation, auth, conn, connected)
                            .err(),
                        row.refused_by,
                        "step {i}: register"
                    );
                }
                End(generation) => {
                    registry.deregister("peer", generation, Event::Disconnected(generation));
                }
            }
            let mut seen = Vec::new();
            while let Ok(event) = events.try_recv() {
                seen.push(event);
            }
            assert_eq!(seen, row.events, "step {i}: events");
            assert_eq!(
                registry.get("peer").map(|c| c.generation),
                row.live,
                "step {i}: live tunnel"
            );
            assert_eq!(registry.contains("peer"), row.live.is_some());
            for generation in row.replaced {
                let closed = made[generation]
                    .closed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                assert_eq!(
                    closed,
                    Some((4000, "tunnel replaced".to_owned())),
                    "step {i}: generation {generation} closed"
                );
            }
            for (generation, conn) in &made {
                assert_eq!(
                    *conn.closed.lock().unwrap_or_else(PoisonError::into_inner),
                    None,
                    "step {i}: generation {generation} closed unexpectedly"
                );
            }
        }
    }

    #[test]
    fn a_replaced_tunnel_ends_silently_and_the_live_one_ends_with_disconnected() {
        use Event::{Connected, Disconnected};
        play(vec![
            row(Connect(1, Anonymous), None, &[Connected(1)], Some(1), &[]),
            // B replaces A: A is closed, B is announced.
            row(Connect(2, Anonymous), None, &[Connected(2)], Some(2), &[1]),
            // A ends after it was replaced: nothing removed, nothing announced.
            row(End(1), None, &[], Some(2), &[]),
            // B ends: the id is offline.
            row(End(2), None, &[Disconnected(2)], None, &[]),
            // A second end of the same tunnel changes nothing.
            row(End(2), None, &[], None, &[]),
        ]);
    }

    #[test]
    fn a_token_bound_tunnel_is_not_replaced_by_an_anonymous_one() {
        use Event::{Connected, Disconnected};
        play(vec![
            row(
                Connect(1, BindingToken),
                None,
                &[Connected(1)],
                Some(1),
                &[],
            ),
            // Refused: no event, the token-bound tunnel stays and stays open.
            row(Connect(2, Anonymous), Some(BindingToken), &[], Some(1), &[]),
            // The refused tunnel's end removes nothing.
            row(End(2), None, &[], Some(1), &[]),
            // An equally authenticated tunnel does replace it.
            row(
                Connect(3, BindingToken),
                None,
                &[Connected(3)],
                Some(3),
                &[1],
            ),
            row(End(1), None, &[], Some(3), &[]),
            row(End(3), None, &[Disconnected(3)], None, &[]),
            // With the id free, an anonymous tunnel may take it.
            row(Connect(4, Anonymous), None, &[Connected(4)], Some(4), &[]),
        ]);
    }
}
