//! What a live web client keeps in the store (migration 0004): read state per session, preferences (the
//! project order), the project folders sessions are filed in, sub-agent sessions. The SQLite side is
//! `sqlite/live.rs`.

use std::collections::HashMap;

use omnigent_proto::live::ReadStatePut;

use super::{SessionRow, Store, StoreError};
use crate::updates::{Change, Updates};

impl Store {
    /// The session-change notices every session write sends (`crate::updates`).
    pub fn updates(&self) -> &Updates {
        match self {
            Store::Sqlite(s) => s.updates(),
        }
    }

    /// Announce `change` when `result` is a success.
    pub(super) fn announce<T, E>(&self, result: &Result<T, E>, change: impl FnOnce() -> Change) {
        if result.is_ok() {
            self.updates().send(change());
        }
    }

    /// Store the read state of session `id`; false when the session does not exist.
    pub async fn set_read_state(&self, id: &str, state: ReadStatePut) -> Result<bool, StoreError> {
        let set = match self {
            Store::Sqlite(s) => s.set_read_state(id, state).await,
        };
        if matches!(set, Ok(true)) {
            self.updates().send(Change::Changed(id.to_owned()));
        }
        set
    }

    /// The read state of each of `ids` that has one.
    pub async fn read_states(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, ReadStatePut>, StoreError> {
        match self {
            Store::Sqlite(s) => s.read_states(ids).await,
        }
    }

    /// A preference's JSON text, or `None` when never set.
    pub async fn preference(&self, key: &str) -> Result<Option<String>, StoreError> {
        match self {
            Store::Sqlite(s) => s.preference(key).await,
        }
    }

    pub async fn set_preference(&self, key: &str, value: &str) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.set_preference(key, value).await,
        }
    }

    /// The distinct values of label `label` over the sessions, sorted.
    pub async fn label_values(&self, label: &str) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Sqlite(s) => s.label_values(label).await,
        }
    }

    /// The sub-agent sessions of `parent_id`, oldest first (at most `cap`).
    pub async fn child_sessions(
        &self,
        parent_id: &str,
        cap: u32,
    ) -> Result<Vec<SessionRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.child_sessions(parent_id, cap).await,
        }
    }
}
