//! The `read_state` and `preferences` tables on SQLite (migration 0004), project labels and sub-agent rows.

use std::collections::HashMap;

use omnigent_proto::live::ReadStatePut;
use sqlx::Row;

use super::{SESSION_COLS, SqliteStore, session_from_row};
use crate::store::{SessionRow, StoreError};
use crate::updates::Updates;

impl SqliteStore {
    pub fn updates(&self) -> &Updates {
        &self.inner.updates
    }

    pub async fn set_read_state(&self, id: &str, state: ReadStatePut) -> Result<bool, StoreError> {
        let done = self
            .execute(
                sqlx::query(
                    "INSERT INTO read_state (session_pk, last_seen, unread) \
                     SELECT pk, ?, ? FROM sessions WHERE id = ? \
                     ON CONFLICT (session_pk) DO UPDATE SET last_seen = excluded.last_seen, \
                     unread = excluded.unread",
                )
                .bind(state.last_seen)
                .bind(state.unread)
                .bind(id),
            )
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn read_states(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, ReadStatePut>, StoreError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let marks = vec!["?"; ids.len()].join(",");
        let sql = format!(
            "SELECT s.id, r.last_seen, r.unread FROM read_state r JOIN sessions s ON s.pk = r.session_pk \
             WHERE s.id IN ({marks})"
        );
        let mut q = sqlx::query(&sql);
        for id in ids {
            q = q.bind(id);
        }
        let rows = q.fetch_all(self.r()).await?;
        let mut out = HashMap::with_capacity(rows.len());
        for row in rows {
            out.insert(
                row.try_get("id")?,
                ReadStatePut {
                    last_seen: row.try_get("last_seen")?,
                    unread: row.try_get("unread")?,
                },
            );
        }
        Ok(out)
    }

    pub async fn preference(&self, key: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT value FROM preferences WHERE key = ?")
            .bind(key)
            .fetch_optional(self.r())
            .await?;
        Ok(match row {
            Some(row) => Some(row.try_get("value")?),
            None => None,
        })
    }

    pub async fn set_preference(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.execute(
            sqlx::query(
                "INSERT INTO preferences (key, value) VALUES (?, ?) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(key)
            .bind(value),
        )
        .await
        .map(drop)
    }

    pub async fn label_values(&self, label: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT json_extract(labels, '$.' || json_quote(?)) AS v FROM sessions \
             WHERE json_type(labels, '$.' || json_quote(?)) = 'text' ORDER BY v",
        )
        .bind(label)
        .bind(label)
        .fetch_all(self.r())
        .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("v").map_err(StoreError::from))
            .filter(|v| !matches!(v, Ok(s) if s.is_empty()))
            .collect()
    }

    pub async fn child_sessions(
        &self,
        parent_id: &str,
        cap: u32,
    ) -> Result<Vec<SessionRow>, StoreError> {
        let sql = format!(
            "SELECT {SESSION_COLS} FROM sessions s WHERE s.parent_session_id = ? AND s.kind = 'sub_agent' \
             ORDER BY s.created_at, s.pk LIMIT ?"
        );
        let rows = sqlx::query(&sql)
            .bind(parent_id)
            .bind(i64::from(cap))
            .fetch_all(self.r())
            .await?;
        rows.iter().map(session_from_row).collect()
    }
}
