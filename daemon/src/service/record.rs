//! The install record: `service.json` in the config dir, written by `omnigent host enable`, read by
//! `disable` (remove exactly what was installed, keep a file edited since) and by `status` (drift).

use std::io::Write;
use std::path::{Path, PathBuf};

use omnigent_proto::paths::Paths;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Init, ServiceError};

/// One installed file and the hash of what was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledFile {
    pub path: PathBuf,
    pub sha256: String,
}

/// What `enable` installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub init: Init,
    /// The unit (plist).
    pub unit: InstalledFile,
    /// The binary the unit runs.
    pub exe: PathBuf,
    /// The environment written into the unit (names and values, in order), so `status` renders the same
    /// unit again to tell drift from a changed shell.
    pub env: Vec<(String, String)>,
    /// The omnigent version that wrote it.
    pub version: String,
}

/// `service.json` beside `config.toml`.
pub fn path(paths: &Paths) -> PathBuf {
    paths.config_dir.join("service.json")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The record, if one was written.
pub fn load(paths: &Paths) -> Result<Option<Record>, ServiceError> {
    let p = path(paths);
    let text = match std::fs::read(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ServiceError::Io {
                what: "read",
                path: p,
                source,
            });
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| ServiceError::BadRecord {
            path: p,
            why: e.to_string(),
        })
}

pub fn save(paths: &Paths, record: &Record) -> Result<(), ServiceError> {
    let text = serde_json::to_vec_pretty(record).map_err(|e| ServiceError::BadRecord {
        path: path(paths),
        why: e.to_string(),
    })?;
    write_atomic(&path(paths), &text, 0o600)
}

pub fn remove(paths: &Paths) -> Result<(), ServiceError> {
    remove_file(&path(paths))
}

/// Remove `p`; a missing file is fine.
pub fn remove_file(p: &Path) -> Result<(), ServiceError> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ServiceError::Io {
            what: "remove",
            path: p.to_owned(),
            source,
        }),
    }
}

/// Write `bytes` to `p` through a temporary file in the same directory and a rename (parents created).
pub fn write_atomic(p: &Path, bytes: &[u8], mode: u32) -> Result<(), ServiceError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| ServiceError::Io { what, path, source }
    };
    let dir = p.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        p.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("write", &tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io("write", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, p).map_err(io("write", p))
}

/// How the installed file stands against the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    Missing,
    /// As `enable` wrote it.
    AsWritten,
    /// Changed since (by the user, or another tool).
    Edited,
}

pub fn file_state(file: &InstalledFile) -> FileState {
    match std::fs::read(&file.path) {
        Ok(bytes) if sha256_hex(&bytes) == file.sha256 => FileState::AsWritten,
        Ok(_) => FileState::Edited,
        Err(_) => FileState::Missing,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_tells_an_edited_file() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        assert_eq!(load(&paths).unwrap(), None);
        let unit = dir.path().join("u.service");
        write_atomic(&unit, b"[Unit]\n", 0o644).unwrap();
        let rec = Record {
            init: Init::Systemd,
            unit: InstalledFile {
                path: unit.clone(),
                sha256: sha256_hex(b"[Unit]\n"),
            },
            exe: "/bin/omnigent".into(),
            env: vec![("PATH".into(), "/bin".into())],
            version: "0.1.0".into(),
        };
        save(&paths, &rec).unwrap();
        assert_eq!(load(&paths).unwrap(), Some(rec.clone()));
        assert_eq!(file_state(&rec.unit), FileState::AsWritten);
        std::fs::write(&unit, "[Unit]\n# mine\n").unwrap();
        assert_eq!(file_state(&rec.unit), FileState::Edited);
        std::fs::remove_file(&unit).unwrap();
        assert_eq!(file_state(&rec.unit), FileState::Missing);
        remove(&paths).unwrap();
        assert_eq!(load(&paths).unwrap(), None);
    }
}
