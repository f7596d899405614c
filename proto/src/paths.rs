//! Where omnigent keeps its files (DESIGN §4). Every process computes the same [`Paths`], so the CLI finds
//! the daemon's socket and the daemon finds the server's log without being told.
//!
//! `OMNIGENT_HOME=<dir>` puts all four directories under one directory; tests always set it.

use std::path::{Path, PathBuf};

/// Environment variable that roots every omnigent directory in one place.
pub const HOME_ENV: &str = "OMNIGENT_HOME";

/// The four directories and the well-known files in them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// `config.toml`.
    pub config_dir: PathBuf,
    /// `omnigent.db`, artifacts.
    pub data_dir: PathBuf,
    /// `logs/`.
    pub state_dir: PathBuf,
    /// `daemon.sock`, `daemon.lock`, `server.json`. Mode 0700.
    pub runtime_dir: PathBuf,
}

/// No home directory could be found for the user (and `OMNIGENT_HOME` is not set).
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot find a home directory for this user; set {HOME_ENV}=<dir> to choose where omnigent keeps its files"
)]
pub struct NoHomeDir;

impl Paths {
    /// All four directories under `home` (what `OMNIGENT_HOME` does).
    pub fn under(home: &Path) -> Self {
        Paths {
            config_dir: home.join("config"),
            data_dir: home.join("data"),
            state_dir: home.join("state"),
            runtime_dir: home.join("run"),
        }
    }

    /// `OMNIGENT_HOME` if set, else the platform's directories (XDG on Linux, Application Support on macOS).
    pub fn from_env() -> Result<Self, NoHomeDir> {
        if let Some(home) = std::env::var_os(HOME_ENV).filter(|v| !v.is_empty()) {
            return Ok(Self::under(Path::new(&home)));
        }
        let dirs = directories::ProjectDirs::from("ai", "omnigent", "omnigent").ok_or(NoHomeDir)?;
        let state_dir = dirs
            .state_dir()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dirs.data_local_dir().join("state"));
        let runtime_dir = dirs
            .runtime_dir()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dirs.data_local_dir().join("run"));
        Ok(Paths {
            config_dir: dirs.config_dir().to_path_buf(),
            data_dir: dirs.data_dir().to_path_buf(),
            state_dir,
            runtime_dir,
        })
    }

    pub fn config_file(&self) -> PathBuf {
        self.config_dir.join("config.toml")
    }
    pub fn database_file(&self) -> PathBuf {
        self.data_dir.join("omnigent.db")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
    pub fn daemon_socket(&self) -> PathBuf {
        self.runtime_dir.join("daemon.sock")
    }
    pub fn daemon_lock(&self) -> PathBuf {
        self.runtime_dir.join("daemon.lock")
    }
    pub fn server_json(&self) -> PathBuf {
        self.runtime_dir.join("server.json")
    }
    /// `credentials.json`: the device tokens `omnigent login` stored, keyed by server origin (mode 0600;
    /// [`crate::credentials`]).
    pub fn credentials_file(&self) -> PathBuf {
        self.config_dir.join("credentials.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_puts_everything_under_one_dir() {
        let p = Paths::under(Path::new("/tmp/h"));
        assert_eq!(p.database_file(), Path::new("/tmp/h/data/omnigent.db"));
        assert_eq!(p.daemon_socket(), Path::new("/tmp/h/run/daemon.sock"));
        assert_eq!(p.config_file(), Path::new("/tmp/h/config/config.toml"));
        assert_eq!(p.logs_dir(), Path::new("/tmp/h/state/logs"));
    }
}
