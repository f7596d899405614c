//! The `agents` and `agent_bundles` tables on SQLite (migration 0005).

use sqlx::Connection;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::items::insert_item;
use super::{SqliteStore, insert_session};
use crate::store::{AgentRow, NewAgent, NewItem, NewSession, StoreError};

const AGENT_COLS: &str = "id, name, version, harness, description, spec, bundle_sha256, session_scoped, \
     created_at";

impl SqliteStore {
    pub async fn create_session_with_agent(
        &self,
        agent: &NewAgent,
        new: &NewSession,
        items: &[NewItem],
    ) -> Result<(), StoreError> {
        let mut w = self.writer().await?;
        let result = async {
            let mut tx = w.begin().await?;
            let a = &agent.row;
            sqlx::query(
                "INSERT INTO agent_bundles (sha256, size, bytes) VALUES (?, ?, ?) \
                 ON CONFLICT (sha256) DO NOTHING",
            )
            .bind(&a.bundle_sha256)
            .bind(agent.bundle.len() as i64)
            .bind(&agent.bundle)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO agents (id, name, version, harness, description, spec, bundle_sha256, \
                 session_scoped, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&a.id)
            .bind(&a.name)
            .bind(&a.version)
            .bind(&a.harness)
            .bind(&a.description)
            .bind(a.spec.to_string())
            .bind(&a.bundle_sha256)
            .bind(a.session_scoped)
            .bind(a.created_at_ms)
            .execute(&mut *tx)
            .await?;
            let pk = insert_session(&mut tx, &new.row, items.len() as i64).await?;
            for (position, item) in items.iter().enumerate() {
                insert_item(&mut tx, pk, position as i64, 0, item).await?;
            }
            tx.commit().await?;
            Ok(())
        }
        .await;
        w.finish(result)
    }

    pub async fn get_agent(&self, id: &str) -> Result<Option<AgentRow>, StoreError> {
        let sql = format!("SELECT {AGENT_COLS} FROM agents WHERE id = ?");
        let row = sqlx::query(&sql).bind(id).fetch_optional(self.r()).await?;
        row.as_ref().map(agent_from_row).transpose()
    }

    pub async fn list_agents(&self, cap: u32) -> Result<Vec<AgentRow>, StoreError> {
        let sql = format!("SELECT {AGENT_COLS} FROM agents ORDER BY created_at, id LIMIT ?");
        let rows = sqlx::query(&sql)
            .bind(i64::from(cap))
            .fetch_all(self.r())
            .await?;
        rows.iter().map(agent_from_row).collect()
    }

    pub async fn agent_bundle(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let bytes = sqlx::query_scalar("SELECT bytes FROM agent_bundles WHERE sha256 = ?")
            .bind(sha256)
            .fetch_optional(self.r())
            .await?;
        Ok(bytes)
    }
}

fn agent_from_row(row: &SqliteRow) -> Result<AgentRow, StoreError> {
    let spec: String = row.try_get("spec")?;
    Ok(AgentRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        harness: row.try_get("harness")?,
        description: row.try_get("description")?,
        spec: serde_json::from_str(&spec).map_err(|source| StoreError::BadJson {
            column: "spec",
            source,
        })?,
        bundle_sha256: row.try_get("bundle_sha256")?,
        session_scoped: row.try_get("session_scoped")?,
        created_at_ms: row.try_get("created_at")?,
    })
}
