//! Opening the SQLite database: the exclusive `flock` on `<db>.lock`, WAL and pragmas, the writer and reader
//! pools, and the embedded migrations.

use std::borrow::Cow;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::{Inner, SqliteStore};
use crate::store::OpenError;

/// Embedded migrations, applied in order at start.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../../migrations/0001_init.sql")),
    (
        2,
        "hosts",
        include_str!("../../../migrations/0002_hosts.sql"),
    ),
    (
        3,
        "storage_probe",
        include_str!("../../../migrations/0003_storage_probe.sql"),
    ),
    (4, "live", include_str!("../../../migrations/0004_live.sql")),
    // 5 is the agents migration of another branch.
    (
        6,
        "devices",
        include_str!("../../../migrations/0006_devices.sql"),
    ),
];

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
