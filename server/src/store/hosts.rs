//! Hosts in the store: the row type and the [`Store`] methods (the SQLite side is `sqlite/hosts.rs`).

use serde_json::{Map, Value};

use super::{Store, StoreError};

/// One `hosts` row. Times are epoch milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRow {
    /// Canonical bare hex.
    pub host_id: String,
    pub name: String,
    pub owner: String,
    /// `"online"` or `"offline"`.
    pub status: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub configured_harnesses: Option<Map<String, Value>>,
    pub gateway_inference: Option<Map<String, Value>>,
    pub version: Option<String>,
}

impl Store {
    /// Every host row, by host id.
    pub async fn list_hosts(&self) -> Result<Vec<HostRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.list_hosts().await,
        }
    }

    /// Insert `row`, or update every field but `created_at` of the existing row.
    pub async fn upsert_host(&self, row: &HostRow) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.upsert_host(row).await,
        }
    }

    /// Set a host's status and last-seen time; false when the host has no row.
    pub async fn set_host_status(
        &self,
        host_id: &str,
        status: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.set_host_status(host_id, status, now_ms).await,
        }
    }

    /// Mark every host offline (at start: no tunnel survives a restart); returns how many changed.
    pub async fn mark_all_hosts_offline(&self, now_ms: i64) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.mark_all_hosts_offline(now_ms).await,
        }
    }

    /// Bind a session to a host-launched runner: set its `host_id`, `workspace` and `runner_id`.
    /// False when the session does not exist.
    pub async fn bind_session_to_host(
        &self,
        session_id: &str,
        host_id: &str,
        workspace: &str,
        runner_id: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.bind_session_to_host(session_id, host_id, workspace, runner_id, now_ms)
                    .await
            }
        }
    }
}
