//! Items and sequence numbers on SQLite: a session's conversation, in order, and the blocks of event
//! sequence numbers its actor reserves.

use serde_json::{Map, Value};
use sqlx::sqlite::SqliteRow;
use sqlx::{Connection, Row, Sqlite, Transaction};

use super::{ITEM_COLS, SqliteStore, json_text, seq_i64};
use crate::store::{ItemListParams, ItemRow, NewItem, StoreError, search_text};

impl SqliteStore {
    pub async fn list_items(
        &self,
        session_id: &str,
        p: &ItemListParams,
    ) -> Result<Option<(Vec<ItemRow>, bool)>, StoreError> {
        let mut conn = self.r().acquire().await?;
        let pk: Option<i64> = sqlx::query_scalar("SELECT pk FROM sessions WHERE id = ?")
            .bind(session_id)
            .fetch_optional(&mut *conn)
            .await?;
        let Some(pk) = pk else {
            return Ok(None);
        };
        let mut after = None;
        if let Some(id) = &p.after {
            after = Some(item_position(&mut conn, pk, id).await?);
        }
        let mut before = None;
        if let Some(id) = &p.before {
            before = Some(item_position(&mut conn, pk, id).await?);
        }
        let reverse = before.is_some() && after.is_none();
        let descending = p.descending != reverse;
        let (after_op, before_op) = if p.descending { ("<", ">") } else { (">", "<") };
        let mut sql = format!("SELECT {ITEM_COLS} FROM items i WHERE i.session_pk = ?");
        if after.is_some() {
            sql.push_str(&format!(" AND i.position {after_op} ?"));
        }
        if before.is_some() {
            sql.push_str(&format!(" AND i.position {before_op} ?"));
        }
        let dir = if descending { "DESC" } else { "ASC" };
        sql.push_str(&format!(" ORDER BY i.position {dir} LIMIT ?"));
        let mut q = sqlx::query(&sql).bind(pk);
        if let Some(a) = after {
            q = q.bind(a);
        }
        if let Some(b) = before {
            q = q.bind(b);
        }
        let rows = q.bind(i64::from(p.limit) + 1).fetch_all(&mut *conn).await?;
        let mut out = rows
            .iter()
            .map(item_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let has_more = out.len() > p.limit as usize;
        out.truncate(p.limit as usize);
        if reverse {
            out.reverse();
        }
        Ok(Some((out, has_more)))
    }

    pub async fn all_items(&self, session_id: &str, cap: u32) -> Result<Vec<ItemRow>, StoreError> {
        let sql = format!(
            "SELECT {ITEM_COLS} FROM items i JOIN sessions s ON s.pk = i.session_pk WHERE s.id = ? \
             ORDER BY i.position LIMIT ?"
        );
        let rows = sqlx::query(&sql)
            .bind(session_id)
            .bind(i64::from(cap))
            .fetch_all(self.r())
            .await?;
        rows.iter().map(item_from_row).collect()
    }

    pub async fn item_exists(&self, item_id: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM items WHERE id = ?")
            .bind(item_id)
            .fetch_optional(self.r())
            .await?;
        Ok(row.is_some())
    }

    pub async fn append_item(
        &self,
        session_id: &str,
        item: &NewItem,
        seq: u64,
    ) -> Result<Option<ItemRow>, StoreError> {
        let mut w = self.writer().await?;
        let result = async {
            let mut tx = w.begin().await?;
            let row = sqlx::query(
                "UPDATE sessions SET next_position = next_position + 1, updated_at = max(updated_at, ?) \
                 WHERE id = ? RETURNING pk, next_position - 1",
            )
            .bind(item.created_at_ms)
            .bind(session_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            let pk: i64 = row.try_get(0)?;
            let position: i64 = row.try_get(1)?;
            insert_item(&mut tx, pk, position, seq, item).await?;
            tx.commit().await?;
            Ok(Some(position))
        }
        .await;
        let Some(position) = w.finish(result)? else {
            return Ok(None);
        };
        Ok(Some(ItemRow {
            id: item.id.clone(),
            position,
            seq,
            kind: item.kind.clone(),
            status: item.status.clone(),
            response_id: item.response_id.clone(),
            created_at_ms: item.created_at_ms,
            created_by: item.created_by.clone(),
            data: item.data.clone(),
        }))
    }

    pub async fn items_between_seq(
        &self,
        session_id: &str,
        after: u64,
        before: u64,
        cap: u32,
    ) -> Result<Vec<ItemRow>, StoreError> {
        let sql = format!(
            "SELECT {ITEM_COLS} FROM items i JOIN sessions s ON s.pk = i.session_pk \
             WHERE s.id = ? AND i.seq > ? AND i.seq < ? ORDER BY i.seq LIMIT ?"
        );
        let rows = sqlx::query(&sql)
            .bind(session_id)
            .bind(seq_i64(after))
            .bind(seq_i64(before))
            .bind(i64::from(cap))
            .fetch_all(self.r())
            .await?;
        rows.iter().map(item_from_row).collect()
    }

    pub async fn actor_state(&self, id: &str) -> Result<Option<(String, u64)>, StoreError> {
        // Every write is committed before its caller is answered, so a reader sees the latest state.
        let row = sqlx::query("SELECT status, seq_reserved FROM sessions WHERE id = ?")
            .bind(id)
            .fetch_optional(self.r())
            .await?;
        match row {
            Some(row) => {
                let status: String = row.try_get(0)?;
                let seq: i64 = row.try_get(1)?;
                Ok(Some((status, u64::try_from(seq).unwrap_or(0))))
            }
            None => Ok(None),
        }
    }

    pub async fn reserve_seq(&self, id: &str, upto: u64) -> Result<(), StoreError> {
        self.execute(
            sqlx::query("UPDATE sessions SET seq_reserved = max(seq_reserved, ?) WHERE id = ?")
                .bind(seq_i64(upto))
                .bind(id),
        )
        .await
        .map(drop)
    }
}

pub(super) async fn insert_item(
    tx: &mut Transaction<'_, Sqlite>,
    session_pk: i64,
    position: i64,
    seq: u64,
    item: &NewItem,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO items (id, session_pk, position, seq, type, status, response_id, created_at, created_by, \
         data, search_text) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&item.id)
    .bind(session_pk)
    .bind(position)
    .bind(seq_i64(seq))
    .bind(&item.kind)
    .bind(&item.status)
    .bind(&item.response_id)
    .bind(item.created_at_ms)
    .bind(&item.created_by)
    .bind(json_text(&item.data)?)
    .bind(search_text(&item.kind, &item.data))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn item_position(
    conn: &mut sqlx::SqliteConnection,
    session_pk: i64,
    id: &str,
) -> Result<i64, StoreError> {
    let pos: Option<i64> =
        sqlx::query_scalar("SELECT position FROM items WHERE session_pk = ? AND id = ?")
            .bind(session_pk)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    pos.ok_or_else(|| StoreError::CursorNotFound(id.to_owned()))
}

pub(super) fn item_from_row(row: &SqliteRow) -> Result<ItemRow, StoreError> {
    let data: String = row.try_get("data")?;
    let data: Map<String, Value> =
        serde_json::from_str(&data).map_err(|source| StoreError::BadJson {
            column: "data",
            source,
        })?;
    let seq: i64 = row.try_get("seq")?;
    Ok(ItemRow {
        id: row.try_get("id")?,
        position: row.try_get("position")?,
        seq: u64::try_from(seq).unwrap_or(0),
        kind: row.try_get("type")?,
        status: row.try_get("status")?,
        response_id: row.try_get("response_id")?,
        created_at_ms: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        data,
    })
}
