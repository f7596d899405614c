//! SQLite backend: WAL, one writer connection (so writers queue in-process instead of fighting over the
//! file lock), a few reader connections, FTS5 search, and an exclusive `flock` on `<db>.lock` so two
//! servers never share one database file.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use omnigent_proto::api::{ErrorCode, StorageHealth};
use serde_json::{Map, Value};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row, Sqlite, Transaction};

mod hosts;
mod live;

use super::{
    ItemListParams, ItemRow, NewItem, NewSession, OpenError, SessionChanges, SessionListParams,
    SessionRow, SessionSort, StoreError, search_text,
};

/// Embedded migrations, applied in order at start.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../migrations/0001_init.sql")),
    (2, "hosts", include_str!("../../migrations/0002_hosts.sql")),
    (
        3,
        "storage_probe",
        include_str!("../../migrations/0003_storage_probe.sql"),
    ),
    (4, "live", include_str!("../../migrations/0004_live.sql")),
];

const SESSION_COLS: &str = "s.id, s.agent_id, s.title, s.labels, s.status, s.created_at, s.updated_at, \
     s.archived, s.kind, s.parent_session_id, s.root_session_id, s.sub_agent_name, s.runner_id, s.host_id, \
     s.workspace, s.git_branch, s.model_override, s.reasoning_effort, s.cost_control_mode_override, \
     s.external_session_id, s.terminal_launch_args";

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
    pub async fn open(path: &Path, read_connections: u32) -> Result<Self, OpenError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|cause| OpenError::Io {
                path: path.to_owned(),
                cause,
            })?;
        }
        let lock_path = lock_path(path);
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|cause| io_error(path, cause))?;
        let lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(OpenError::Locked {
                    path: path.to_owned(),
                    lock: lock_path,
                });
            }
            Err((_, errno)) => {
                return Err(OpenError::Io {
                    path: path.to_owned(),
                    cause: std::io::Error::from(errno),
                });
            }
        };
        let created = !path.exists();
        if !created {
            // Catch a read-only file with a clear message before SQLite reports "attempt to write".
            if let Err(cause) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
            {
                return Err(io_error(path, cause));
            }
        }

        let base = SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(Duration::from_millis(500))
            .foreign_keys(true)
            .synchronous(SqliteSynchronous::Normal)
            .pragma("temp_store", "memory");
        let writer_opts = base
            .clone()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(writer_opts)
            .await
            .map_err(|e| sqlite_open_error(path, e))?;

        if created {
            // Conversations are private: only this user may read the database (SQLite gives the -wal and
            // -shm files the same mode).
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|cause| io_error(path, cause))?;
        }

        let migrator = Migrator {
            migrations: Cow::Owned(
                MIGRATIONS
                    .iter()
                    .map(|(v, d, sql)| {
                        Migration::new(
                            *v,
                            Cow::Borrowed(*d),
                            MigrationType::Simple,
                            Cow::Borrowed(*sql),
                            false,
                        )
                    })
                    .collect(),
            ),
            ignore_missing: false,
            locking: true,
            no_tx: false,
        };
        migrator.run(&writer).await.map_err(|source| match source {
            sqlx::migrate::MigrateError::Execute(e) => sqlite_open_error(path, e),
            cause => OpenError::Migrate {
                path: path.to_owned(),
                cause,
            },
        })?;

        let readers = SqlitePoolOptions::new()
            .max_connections(read_connections.max(1))
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(base.read_only(true))
            .await
            .map_err(|e| sqlite_open_error(path, e))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer,
                readers,
                fault: Mutex::new(None),
                _lock: lock,
                updates: crate::updates::Updates::default(),
            }),
        })
    }

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

    /// Classify the outcome of a write (see [`Writer::finish`]).
    fn settle<T>(
        &self,
        conn: Option<&mut PoolConnection<Sqlite>>,
        result: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let cause = match result {
            Ok(v) => {
                self.set_fault(None);
                return Ok(v);
            }
            Err(StoreError::Db(cause)) => cause,
            Err(other) => return Err(other),
        };
        let Some(full) = storage_failure(&cause) else {
            return Err(StoreError::Db(cause));
        };
        // After SQLITE_FULL or SQLITE_IOERR, SQLite may have rolled the transaction back by itself. sqlx does
        // not notice: its transaction depth stays up, its ROLLBACK fails, and the next `begin` becomes a
        // SAVEPOINT whose RELEASE never commits, so every later write is acknowledged and lost. Only a fresh
        // connection is known to be clean: this one is closed (rolling back whatever it still holds) and the
        // pool opens another for the next write.
        if let Some(conn) = conn {
            conn.close_on_drop();
        }
        let path = self.inner.path.clone();
        let (free, _) = free_space(&path);
        let err = if full {
            StoreError::Full { path, free, cause }
        } else {
            StoreError::Unavailable { path, free, cause }
        };
        tracing::error!("{err}");
        let code = if full {
            ErrorCode::StorageFull
        } else {
            ErrorCode::StorageUnavailable
        };
        self.set_fault(Some((code, err.to_string())));
        Err(err)
    }

    fn fault(&self) -> std::sync::MutexGuard<'_, Option<Fault>> {
        // Only whole values are stored under this lock: a panic cannot leave it half-written.
        self.inner.fault.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_fault(&self, failed: Option<(ErrorCode, String)>) {
        let mut fault = self.fault();
        match failed {
            None => {
                if fault.take().is_some() {
                    tracing::info!(database = %self.inner.path.display(), "durable writes succeed again");
                }
            }
            Some((code, error)) => {
                let since_ms = fault.as_ref().map_or_else(crate::now_ms, |f| f.since_ms);
                *fault = Some(Fault {
                    code,
                    error,
                    since_ms,
                });
            }
        }
    }

    pub fn storage_health(&self) -> StorageHealth {
        let fault = self.fault().clone();
        let (_, free_bytes) = free_space(&self.inner.path);
        match fault {
            None => StorageHealth {
                ok: true,
                code: None,
                error: None,
                failing_since_ms: None,
                free_bytes,
            },
            Some(f) => StorageHealth {
                ok: false,
                code: Some(f.code),
                error: Some(f.error),
                failing_since_ms: Some(f.since_ms),
                free_bytes,
            },
        }
    }

    pub async fn probe_storage(&self) {
        if self.fault().is_none() {
            return;
        }
        // The outcome is recorded as the fault (or its end); nothing else to do with it.
        let _ = self
            .execute(
                sqlx::query(
                    "INSERT INTO storage_probe (id, at) VALUES (1, ?) \
                     ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                )
                .bind(crate::now_ms()),
            )
            .await;
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

    pub async fn delete_session(&self, id: &str) -> Result<bool, StoreError> {
        let done = self
            .execute(sqlx::query("DELETE FROM sessions WHERE id = ?").bind(id))
            .await?;
        Ok(done.rows_affected() > 0)
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

async fn insert_session(
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

async fn insert_item(
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
    })
}

fn item_from_row(row: &SqliteRow) -> Result<ItemRow, StoreError> {
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

/// Whether a write error is the storage failing (`Some(true)`: the file system is full; `Some(false)`: another
/// I/O or file problem) rather than the write itself being wrong (`None`: a constraint, bad SQL).
fn storage_failure(e: &sqlx::Error) -> Option<bool> {
    match e {
        sqlx::Error::Database(d) => {
            let code = d.code()?.parse::<i64>().ok()?;
            // Primary result codes: 13 FULL; 10 IOERR, 14 CANTOPEN, 8 READONLY, 11 CORRUPT, 26 NOTADB,
            // 5 BUSY, 6 LOCKED, 7 NOMEM, 15 PROTOCOL.
            match code & 0xff {
                13 => Some(true),
                5..=8 | 10 | 11 | 14 | 15 | 26 => Some(false),
                _ => None,
            }
        }
        sqlx::Error::Io(io) => Some(matches!(
            io.raw_os_error(),
            Some(nix::libc::ENOSPC | nix::libc::EDQUOT)
        )),
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
            Some(false)
        }
        _ => None,
    }
}

/// Free space of the file system holding `db`, as text for an error message and in bytes.
// The statvfs fields are u64 on Linux but narrower elsewhere (macOS): the conversions are not useless there.
#[allow(clippy::useless_conversion)]
fn free_space(db: &Path) -> (String, Option<u64>) {
    let dir = db
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match nix::sys::statvfs::statvfs(dir) {
        Ok(st) => {
            let unit = u64::from(st.fragment_size());
            let free = u64::from(st.blocks_available()).saturating_mul(unit);
            let total = u64::from(st.blocks()).saturating_mul(unit);
            (
                format!("{} free of {}", bytes_text(free), bytes_text(total)),
                Some(free),
            )
        }
        Err(e) => (format!("free space unknown: {e}"), None),
    }
}

fn bytes_text(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".lock");
    db.with_file_name(name)
}

fn io_error(path: &Path, cause: std::io::Error) -> OpenError {
    if cause.kind() == std::io::ErrorKind::PermissionDenied {
        OpenError::ReadOnly {
            path: path.to_owned(),
            cause,
        }
    } else {
        OpenError::Io {
            path: path.to_owned(),
            cause,
        }
    }
}

fn sqlite_open_error(path: &Path, e: sqlx::Error) -> OpenError {
    let code = e
        .as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
        .unwrap_or_default();
    // Primary result codes: 26 SQLITE_NOTADB, 11 SQLITE_CORRUPT, 8 SQLITE_READONLY, 5 SQLITE_BUSY.
    let primary = code.parse::<i64>().map(|c| c & 0xff).unwrap_or(-1);
    match primary {
        26 | 11 => OpenError::Corrupt {
            path: path.to_owned(),
            cause: e,
        },
        8 => OpenError::ReadOnly {
            path: path.to_owned(),
            cause: std::io::Error::new(std::io::ErrorKind::PermissionDenied, e.to_string()),
        },
        _ => OpenError::Sqlite {
            path: path.to_owned(),
            cause: e,
        },
    }
}
