//! The `hosts` table on SQLite (migration 0002).

use serde_json::{Map, Value};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::SqliteStore;
use crate::store::{HostRow, StoreError};

impl SqliteStore {
    pub async fn list_hosts(&self) -> Result<Vec<HostRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT host_id, name, owner, status, created_at, updated_at, configured_harnesses, \
             gateway_inference, version FROM hosts ORDER BY host_id",
        )
        .fetch_all(self.r())
        .await?;
        rows.iter().map(host_from_row).collect()
    }

    pub async fn upsert_host(&self, h: &HostRow) -> Result<(), StoreError> {
        let query = sqlx::query(
            "INSERT INTO hosts (host_id, name, owner, status, created_at, updated_at, configured_harnesses, \
             gateway_inference, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (host_id) DO UPDATE SET name = excluded.name, owner = excluded.owner, \
             status = excluded.status, updated_at = excluded.updated_at, \
             configured_harnesses = excluded.configured_harnesses, \
             gateway_inference = excluded.gateway_inference, version = excluded.version",
        )
        .bind(&h.host_id)
        .bind(&h.name)
        .bind(&h.owner)
        .bind(&h.status)
        .bind(h.created_at_ms)
        .bind(h.updated_at_ms)
        .bind(json_map(h.configured_harnesses.as_ref(), "configured_harnesses")?)
        .bind(json_map(h.gateway_inference.as_ref(), "gateway_inference")?)
        .bind(&h.version);
        self.execute(query).await?;
        Ok(())
    }

    pub async fn set_host_status(
        &self,
        host_id: &str,
        status: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = self
            .execute(
                sqlx::query("UPDATE hosts SET status = ?, updated_at = ? WHERE host_id = ?")
                    .bind(status)
                    .bind(now_ms)
                    .bind(host_id),
            )
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn mark_all_hosts_offline(&self, now_ms: i64) -> Result<u64, StoreError> {
        let done = self
            .execute(
                sqlx::query(
                    "UPDATE hosts SET status = 'offline', updated_at = ? WHERE status <> 'offline'",
                )
                .bind(now_ms),
            )
            .await?;
        Ok(done.rows_affected())
    }

    pub async fn bind_session_to_host(
        &self,
        session_id: &str,
        host_id: &str,
        workspace: &str,
        runner_id: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let query = sqlx::query(
            "UPDATE sessions SET host_id = ?, workspace = ?, runner_id = ?, updated_at = ? WHERE id = ?",
        )
        .bind(host_id)
        .bind(workspace)
        .bind(runner_id)
        .bind(now_ms)
        .bind(session_id);
        let done = self.execute(query).await?;
        Ok(done.rows_affected() > 0)
    }
}

fn json_map(
    map: Option<&Map<String, Value>>,
    column: &'static str,
) -> Result<Option<String>, StoreError> {
    map.map(|m| serde_json::to_string(m).map_err(|source| StoreError::BadJson { column, source }))
        .transpose()
}

fn parse_map(
    row: &SqliteRow,
    column: &'static str,
) -> Result<Option<Map<String, Value>>, StoreError> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| serde_json::from_str(&t).map_err(|source| StoreError::BadJson { column, source }))
        .transpose()
}

fn host_from_row(row: &SqliteRow) -> Result<HostRow, StoreError> {
    Ok(HostRow {
        host_id: row.try_get("host_id")?,
        name: row.try_get("name")?,
        owner: row.try_get("owner")?,
        status: row.try_get("status")?,
        created_at_ms: row.try_get("created_at")?,
        updated_at_ms: row.try_get("updated_at")?,
        configured_harnesses: parse_map(row, "configured_harnesses")?,
        gateway_inference: parse_map(row, "gateway_inference")?,
        version: row.try_get("version")?,
    })
}
