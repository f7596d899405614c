//! Paired devices in the store: the row type and the [`Store`] methods (the SQLite side is
//! `sqlite/devices.rs`). A row holds the sha256 of its token, never the token.

use super::{Store, StoreError};

/// One `devices` row. Times are epoch seconds.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceRow {
    pub id: String,
    pub name: String,
    /// `viewer`, `driver`, `host` or `owner`.
    pub role: String,
    /// Hex sha256 of the token.
    pub token_sha256: String,
    pub created_at: i64,
    pub last_seen_at: Option<i64>,
    pub expires_at: Option<i64>,
}

impl std::fmt::Debug for DeviceRow {
    // Even the token's hash stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceRow")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Every device, oldest first.
    pub async fn list_devices(&self) -> Result<Vec<DeviceRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.list_devices().await,
        }
    }

    /// Insert `row`, or (same id) replace its name, role, token hash and expiry.
    pub async fn upsert_device(&self, row: &DeviceRow) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.upsert_device(row).await,
        }
    }

    /// Rename a device; false when it has no row.
    pub async fn rename_device(&self, id: &str, name: &str) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.rename_device(id, name).await,
        }
    }

    /// Record when a device was last seen.
    pub async fn touch_device(&self, id: &str, at: i64) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.touch_device(id, at).await,
        }
    }

    /// Delete a device; false when it had no row.
    pub async fn delete_device(&self, id: &str) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.delete_device(id).await,
        }
    }
}
