//! SQLite backend: WAL, one writer connection (so writers queue in-process instead of fighting over the
//! file lock), a few reader connections, FTS5 search, and an exclusive `flock` on `<db>.lock` so two
//! servers never share one database file.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use nix::fcntl::Flock;
use omnigent_proto::api::ErrorCode;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnection, SqlitePool, SqliteRow};
use sqlx::{Connection, Row, Sqlite, Transaction};

mod agents;
mod devices;
mod health;
mod hosts;
mod items;
mod live;
mod open;

use items::{insert_item, item_from_row};

use super::{
    NewItem, NewSession, SessionChanges, SessionListParams, SessionRow, SessionSort, StoreError,
};

const SESSION_COLS: &str = "s.id, s.agent_id, s.title, s.labels, s.status, s.created_at, s.updated_at, \
     s.archived, s.kind, s.parent_session_id, s.root_session_id, s.sub_agent_name, s.runner_id, s.host_id, \
     s.workspace, s.git_branch, s.model_override, s.reasoning_effort, s.cost_control_mode_override, \
     s.external_session_id, s.terminal_launch_args, \
     (SELECT a.name FROM agents a WHERE a.id = agent_id) AS uploaded_agent_name, \
     (SELECT a.harness FROM agents a WHERE a.id = agent_id) AS uploaded_agent_harness, \
     (SELECT a.bundle_sha256 FROM agents a WHERE a.id = agent_id) AS uploaded_agent_bundle";

const ITEM_COLS: &str =
    "i.id, i.position, i.seq, i.type, i.status, i.response_id, i.created_at, i.created_by, i.data";

#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The database file (named in storage errors; its directory's file system is the one measured).
    path: PathBuf,
    /// One connection: every write goes through it, in arrival order, checked out as a [`Writer`].
    writer: SqlitePool,
    readers: SqlitePool,
    /// The last run of failed writes, cleared by the next write that succeeds. Held only to copy or set.
    fault: Mutex<Option<Fault>>,
    /// Held for the life of the store; dropping it releases the lock.
    _lock: Flock<File>,
    /// Session-change notices, sent after each session write (`crate::updates`; liveapi hook).
    updates: crate::updates::Updates,
}

/// Why durable writes are failing, for `/health`.
#[derive(Debug, Clone)]
struct Fault {
    code: ErrorCode,
    error: String,
    since_ms: i64,
}

/// The writer connection, checked out for one write; [`Writer::finish`] settles the outcome.
struct Writer<'s> {
    store: &'s SqliteStore,
    conn: PoolConnection<Sqlite>,
}

impl Deref for Writer<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl DerefMut for Writer<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

impl Writer<'_> {
    /// Hand back the connection with the write's result: a storage failure discards the connection and
    /// becomes [`StoreError::Full`] / [`StoreError::Unavailable`]; a success clears the recorded fault.
    fn finish<T>(mut self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        self.store.settle(Some(&mut self.conn), result)
    }
}

impl SqliteStore {
    /// Check out the writer connection for one write.
    async fn writer(&self) -> Result<Writer<'_>, StoreError> {
        match self.inner.writer.acquire().await {
            Ok(conn) => Ok(Writer { store: self, conn }),
            Err(e) => self.settle(None, Err(StoreError::Db(e))),
        }
    }

    /// One statement on the writer.
    async fn execute<'q>(
        &self,
        query: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    ) -> Result<sqlx::sqlite::SqliteQueryResult, StoreError> {
        let mut w = self.writer().await?;
        let result = query.execute(&mut *w).await.map_err(StoreError::from);
        w.finish(result)
    }

    fn r(&self) -> &SqlitePool {
        &self.inner.readers
    }

    pub async fn close(&self) {
        self.inner.readers.close().await;
        // A final checkpoint keeps the -wal file small for the next start; failure is harmless.
        let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.inner.writer)
            .await;
        self.inner.writer.close().await;
    }

    pub async fn count_sessions(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
            .fetch_one(self.r())
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub async fn create_session(
        &self,
        new: &NewSession,
        items: &[NewItem],
    ) -> Result<(), StoreError> {
        let mut w = self.writer().await?;
        let result = async {
            let mut tx = w.begin().await?;
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

    pub async fn get_session(&self, id: &str) -> Result<Option<SessionRow>, StoreError> {
        let sql = format!("SELECT {SESSION_COLS} FROM sessions s WHERE s.id = ?");
        let row = sqlx::query(&sql).bind(id).fetch_optional(self.r()).await?;
        row.as_ref().map(session_from_row).transpose()
    }

    /// Ids of the sessions bound to `runner_id` (indexed: `sessions_by_runner`).
    pub async fn sessions_bound_to(&self, runner_id: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT id FROM sessions WHERE runner_id = ?")
            .bind(runner_id)
            .fetch_all(self.r())
            .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("id").map_err(StoreError::from))
            .collect()
    }

    pub async fn sessions_mid_turn(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT id FROM sessions WHERE status IN ('running', 'waiting')")
            .fetch_all(self.r())
            .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("id").map_err(StoreError::from))
            .collect()
    }

    pub async fn existing_sessions(&self, ids: &[String]) -> Result<Vec<SessionRow>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let marks = vec!["?"; ids.len()].join(",");
        let sql = format!("SELECT {SESSION_COLS} FROM sessions s WHERE s.id IN ({marks})");
        let mut q = sqlx::query(&sql);
        for id in ids {
            q = q.bind(id);
        }
        let rows = q.fetch_all(self.r()).await?;
        rows.iter().map(session_from_row).collect()
    }

    pub async fn list_sessions(
        &self,
        p: &SessionListParams,
    ) -> Result<(Vec<SessionRow>, bool), StoreError> {
        let col = match p.sort {
            SessionSort::CreatedAt => "created_at",
            SessionSort::UpdatedAt => "updated_at",
        };
        let after = match &p.after {
            Some(id) => Some(self.session_cursor(col, id).await?),
            None => None,
        };
        let before = match &p.before {
            Some(id) => Some(self.session_cursor(col, id).await?),
            None => None,
        };
        // With only `before`, walk backwards from the cursor and flip the page afterwards.
        let reverse = before.is_some() && after.is_none();
        let descending = p.descending != reverse;

        let mut sql = format!("SELECT {SESSION_COLS} FROM sessions s WHERE 1 = 1");
        if !p.include_archived {
            sql.push_str(" AND s.archived = 0");
        }
        if p.kind.is_some() {
            sql.push_str(" AND s.kind = ?");
        }
        if p.agent_id.is_some() {
            sql.push_str(" AND s.agent_id = ?");
        }
        if p.fts_query.is_some() {
            sql.push_str(
                " AND (s.pk IN (SELECT rowid FROM sessions_fts WHERE sessions_fts MATCH ?) \
                 OR s.pk IN (SELECT i.session_pk FROM items_fts JOIN items i ON i.pk = items_fts.rowid \
                 WHERE items_fts MATCH ?))",
            );
        }
        // "after" in list order: further along; "before": earlier in list order.
        let (after_op, before_op) = if p.descending { ("<", ">") } else { (">", "<") };
        if after.is_some() {
            sql.push_str(&format!(" AND (s.{col}, s.pk) {after_op} (?, ?)"));
        }
        if before.is_some() {
            sql.push_str(&format!(" AND (s.{col}, s.pk) {before_op} (?, ?)"));
        }
        let dir = if descending { "DESC" } else { "ASC" };
        sql.push_str(&format!(" ORDER BY s.{col} {dir}, s.pk {dir} LIMIT ?"));

        let mut q = sqlx::query(&sql);
        if let Some(kind) = &p.kind {
            q = q.bind(kind);
        }
        if let Some(agent) = &p.agent_id {
            q = q.bind(agent);
        }
        if let Some(fts) = &p.fts_query {
            q = q.bind(fts).bind(fts);
        }
        if let Some((v, pk)) = after {
            q = q.bind(v).bind(pk);
        }
        if let Some((v, pk)) = before {
            q = q.bind(v).bind(pk);
        }
        q = q.bind(i64::from(p.limit) + 1);
        let rows = q.fetch_all(self.r()).await?;
        let mut out = rows
            .iter()
            .map(session_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let has_more = out.len() > p.limit as usize;
        out.truncate(p.limit as usize);
        if reverse {
            out.reverse();
        }
        Ok((out, has_more))
    }

    async fn session_cursor(&self, col: &str, id: &str) -> Result<(i64, i64), StoreError> {
        let sql = format!("SELECT {col}, pk FROM sessions WHERE id = ?");
        let row = sqlx::query(&sql).bind(id).fetch_optional(self.r()).await?;
        match row {
            Some(row) => Ok((row.try_get(0)?, row.try_get(1)?)),
            None => Err(StoreError::CursorNotFound(id.to_owned())),
        }
    }

    pub async fn update_session(
        &self,
        id: &str,
        c: &SessionChanges,
        now_ms: i64,
    ) -> Result<Option<SessionRow>, StoreError> {
        let mut sets: Vec<&str> = vec!["updated_at = ?"];
        if c.title.is_some() {
            sets.push("title = ?");
        }
        if c.labels.is_some() {
            sets.push("labels = ?");
        }
        if c.runner_id.is_some() {
            sets.push("runner_id = ?");
        }
        if c.reasoning_effort.is_some() {
            sets.push("reasoning_effort = ?");
        }
        if c.model_override.is_some() {
            sets.push("model_override = ?");
        }
        if c.cost_control_mode_override.is_some() {
            sets.push("cost_control_mode_override = ?");
        }
        if c.external_session_id.is_some() {
            sets.push("external_session_id = ?");
        }
        if c.terminal_launch_args.is_some() {
            sets.push("terminal_launch_args = ?");
        }
        if c.archived.is_some() {
            sets.push("archived = ?");
        }
        // RETURNING cannot name the table alias.
        let sql = format!(
            "UPDATE sessions SET {} WHERE id = ? RETURNING {}",
            sets.join(", "),
            SESSION_COLS.replace("s.", "")
        );
        let mut q = sqlx::query(&sql).bind(now_ms);
        if let Some(v) = &c.title {
            q = q.bind(v.clone());
        }
        if let Some(v) = &c.labels {
            q = q.bind(json_text(v)?);
        }
        if let Some(v) = &c.runner_id {
            q = q.bind(v.clone());
        }
        if let Some(v) = &c.reasoning_effort {
            q = q.bind(v.clone());
        }
        if let Some(v) = &c.model_override {
            q = q.bind(v.clone());
        }
        if let Some(v) = &c.cost_control_mode_override {
            q = q.bind(v.clone());
        }
        if let Some(v) = &c.external_session_id {
            q = q.bind(v.clone());
        }
        if let Some(v) = &c.terminal_launch_args {
            q = q.bind(v.as_ref().map(json_text).transpose()?);
        }
        if let Some(v) = c.archived {
            q = q.bind(v);
        }
        let mut w = self.writer().await?;
        let result = q
            .bind(id)
            .fetch_optional(&mut *w)
            .await
            .map_err(StoreError::from);
        w.finish(result)?.as_ref().map(session_from_row).transpose()
    }

    /// Delete the session, and its session-scoped uploaded agent (with the bundle, unless another agent
    /// has the same bytes) once no session uses it any more (a fork shares its source's agent).
    pub async fn delete_session(&self, id: &str) -> Result<bool, StoreError> {
        let mut w = self.writer().await?;
        let result = async {
            let mut tx = w.begin().await?;
            let agent: Option<String> =
                sqlx::query_scalar("DELETE FROM sessions WHERE id = ? RETURNING agent_id")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(agent) = agent else {
                return Ok(false);
            };
            let sha: Option<String> = sqlx::query_scalar(
                "DELETE FROM agents WHERE id = ?1 AND session_scoped = 1 \
                 AND NOT EXISTS (SELECT 1 FROM sessions WHERE agent_id = ?1) RETURNING bundle_sha256",
            )
            .bind(&agent)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(sha) = sha {
                sqlx::query(
                    "DELETE FROM agent_bundles WHERE sha256 = ?1 \
                     AND NOT EXISTS (SELECT 1 FROM agents WHERE bundle_sha256 = ?1)",
                )
                .bind(&sha)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(true)
        }
        .await;
        w.finish(result)
    }

    pub async fn set_status(&self, id: &str, status: &str) -> Result<(), StoreError> {
        self.execute(
            sqlx::query("UPDATE sessions SET status = ? WHERE id = ?")
                .bind(status)
                .bind(id),
        )
        .await
        .map(drop)
    }

    pub async fn fork_session(
        &self,
        source_id: &str,
        new: &NewSession,
        up_to_response_id: Option<&str>,
        new_item_id: &mut (dyn FnMut() -> String + Send),
    ) -> Result<Option<()>, StoreError> {
        let mut w = self.writer().await?;
        let result = async {
            let mut tx = w.begin().await?;
            let sql = format!(
                "SELECT {ITEM_COLS} FROM items i JOIN sessions s ON s.pk = i.session_pk WHERE s.id = ? \
                 ORDER BY i.position"
            );
            let rows = sqlx::query(&sql)
                .bind(source_id)
                .fetch_all(&mut *tx)
                .await?;
            let mut items = rows
                .iter()
                .map(item_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(resp) = up_to_response_id {
                match items
                    .iter()
                    .rposition(|i| i.response_id.as_deref() == Some(resp))
                {
                    Some(last) => items.truncate(last + 1),
                    None => return Ok(None),
                }
            }
            let pk = insert_session(&mut tx, &new.row, items.len() as i64).await?;
            for (position, item) in items.into_iter().enumerate() {
                let copy = NewItem {
                    id: new_item_id(),
                    kind: item.kind,
                    status: item.status,
                    response_id: item.response_id,
                    created_at_ms: item.created_at_ms,
                    created_by: item.created_by,
                    data: item.data,
                };
                insert_item(&mut tx, pk, position as i64, 0, &copy).await?;
            }
            tx.commit().await?;
            Ok(Some(()))
        }
        .await;
        w.finish(result)
    }
}

pub(super) async fn insert_session(
    tx: &mut Transaction<'_, Sqlite>,
    s: &SessionRow,
    next_position: i64,
) -> Result<i64, StoreError> {
    let pk: i64 = sqlx::query_scalar(
        "INSERT INTO sessions (id, agent_id, title, labels, status, created_at, updated_at, archived, kind, \
         parent_session_id, root_session_id, sub_agent_name, runner_id, host_id, workspace, git_branch, \
         model_override, reasoning_effort, cost_control_mode_override, external_session_id, \
         terminal_launch_args, next_position) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING pk",
    )
    .bind(&s.id)
    .bind(&s.agent_id)
    .bind(&s.title)
    .bind(json_text(&s.labels)?)
    .bind(&s.status)
    .bind(s.created_at_ms)
    .bind(s.updated_at_ms)
    .bind(s.archived)
    .bind(&s.kind)
    .bind(&s.parent_session_id)
    .bind(&s.root_session_id)
    .bind(&s.sub_agent_name)
    .bind(&s.runner_id)
    .bind(&s.host_id)
    .bind(&s.workspace)
    .bind(&s.git_branch)
    .bind(&s.model_override)
    .bind(&s.reasoning_effort)
    .bind(&s.cost_control_mode_override)
    .bind(&s.external_session_id)
    .bind(s.terminal_launch_args.as_ref().map(json_text).transpose()?)
    .bind(next_position)
    .fetch_one(&mut **tx)
    .await?;
    Ok(pk)
}

fn session_from_row(row: &SqliteRow) -> Result<SessionRow, StoreError> {
    let labels: String = row.try_get("labels")?;
    let labels: BTreeMap<String, String> =
        serde_json::from_str(&labels).map_err(|source| StoreError::BadJson {
            column: "labels",
            source,
        })?;
    let args: Option<String> = row.try_get("terminal_launch_args")?;
    let terminal_launch_args = args
        .map(|a| serde_json::from_str::<Vec<String>>(&a))
        .transpose()
        .map_err(|source| StoreError::BadJson {
            column: "terminal_launch_args",
            source,
        })?;
    Ok(SessionRow {
        id: row.try_get("id")?,
        agent_id: row.try_get("agent_id")?,
        title: row.try_get("title")?,
        labels,
        status: row.try_get("status")?,
        created_at_ms: row.try_get("created_at")?,
        updated_at_ms: row.try_get("updated_at")?,
        archived: row.try_get("archived")?,
        kind: row.try_get("kind")?,
        parent_session_id: row.try_get("parent_session_id")?,
        root_session_id: row.try_get("root_session_id")?,
        sub_agent_name: row.try_get("sub_agent_name")?,
        runner_id: row.try_get("runner_id")?,
        host_id: row.try_get("host_id")?,
        workspace: row.try_get("workspace")?,
        git_branch: row.try_get("git_branch")?,
        model_override: row.try_get("model_override")?,
        reasoning_effort: row.try_get("reasoning_effort")?,
        cost_control_mode_override: row.try_get("cost_control_mode_override")?,
        external_session_id: row.try_get("external_session_id")?,
        terminal_launch_args,
        uploaded_agent: match (
            row.try_get::<Option<String>, _>("uploaded_agent_name")?,
            row.try_get::<Option<String>, _>("uploaded_agent_harness")?,
            row.try_get::<Option<String>, _>("uploaded_agent_bundle")?,
        ) {
            (Some(name), Some(harness), Some(bundle_sha256)) => Some(super::UploadedAgentRef {
                name,
                harness,
                bundle_sha256,
            }),
            _ => None,
        },
    })
}

fn json_text<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|source| StoreError::BadJson {
        column: "json",
        source,
    })
}

/// SQLite integers are i64; sequences never come near the limit (a block of 1000 per actor start).
fn seq_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}
