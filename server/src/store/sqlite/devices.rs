//! The `devices` table on SQLite (migration 0006).

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::SqliteStore;
use crate::store::{DeviceRow, StoreError};

impl SqliteStore {
    pub async fn list_devices(&self) -> Result<Vec<DeviceRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, role, token_sha256, created_at, last_seen_at, expires_at FROM devices \
             ORDER BY created_at, id",
        )
        .fetch_all(self.r())
        .await?;
        rows.iter().map(device_from_row).collect()
    }

    pub async fn upsert_device(&self, d: &DeviceRow) -> Result<(), StoreError> {
        let query = sqlx::query(
            "INSERT INTO devices (id, name, role, token_sha256, created_at, last_seen_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
             role = excluded.role, token_sha256 = excluded.token_sha256, expires_at = excluded.expires_at",
        )
        .bind(&d.id)
        .bind(&d.name)
        .bind(&d.role)
        .bind(&d.token_sha256)
        .bind(d.created_at)
        .bind(d.last_seen_at)
        .bind(d.expires_at);
        self.execute(query).await?;
        Ok(())
    }

    pub async fn rename_device(&self, id: &str, name: &str) -> Result<bool, StoreError> {
        let done = self
            .execute(
                sqlx::query("UPDATE devices SET name = ? WHERE id = ?")
                    .bind(name)
                    .bind(id),
            )
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn touch_device(&self, id: &str, at: i64) -> Result<(), StoreError> {
        self.execute(
            sqlx::query("UPDATE devices SET last_seen_at = ? WHERE id = ?")
                .bind(at)
                .bind(id),
        )
        .await?;
        Ok(())
    }

    pub async fn delete_device(&self, id: &str) -> Result<bool, StoreError> {
        let done = self
            .execute(sqlx::query("DELETE FROM devices WHERE id = ?").bind(id))
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

fn device_from_row(row: &SqliteRow) -> Result<DeviceRow, StoreError> {
    Ok(DeviceRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        role: row.try_get("role")?,
        token_sha256: row.try_get("token_sha256")?,
        created_at: row.try_get("created_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        expires_at: row.try_get("expires_at")?,
    })
}
