//! Storage faults on SQLite: a write that failed for want of space or a working disk closes its connection
//! and is recorded (with the file system's free space) until a write succeeds; `storage_health` is what
//! `/health`, `/v1/info` and `status` show.

use std::path::Path;

use omnigent_proto::api::{ErrorCode, StorageHealth};
use sqlx::Sqlite;
use sqlx::pool::PoolConnection;

use super::{Fault, SqliteStore};
use crate::store::StoreError;

impl SqliteStore {
    /// Classify the outcome of a write (see [`Writer::finish`]).
    pub(super) fn settle<T>(
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
                let since_ms = fault
                    .as_ref()
                    .map_or_else(crate::clock::now_ms, |f| f.since_ms);
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
                .bind(crate::clock::now_ms()),
            )
            .await;
    }
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
