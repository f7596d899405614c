//! `config.toml` in the config dir: targets, host identity (generated once), log level, env passthrough,
//! the local server's port. The daemon watches it and applies changes live; a malformed edit is reported
//! with its line and column and the previous config stays in force.
//!
//! ```toml
//! log_level = "info"                 # daemon log filter (tracing syntax)
//! env_passthrough = ["MY_TOKEN"]     # extra environment variables handed to children
//! [host]
//! host_id = "3f2a…"                  # 32 hex, generated once
//! name = "laptop"
//! [server]
//! port = 6767                        # OMNIGENT_SERVER_PORT overrides it
//! autostart = true                   # start the local server when the daemon starts
//! [[targets]]
//! url = "https://team.example.com"   # remote servers (host tunnel: next issue)
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Environment variable overriding `server.port` (tests use it to pick a free port).
pub const SERVER_PORT_ENV: &str = "OMNIGENT_SERVER_PORT";
/// The local server's default port.
pub const DEFAULT_SERVER_PORT: u16 = 6767;
/// Largest config file we read.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub log_level: Option<String>,
    #[serde(default)]
    pub env_passthrough: Vec<String>,
    #[serde(default)]
    pub host: HostSection,
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSection {
    #[serde(default)]
    pub host_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSection {
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub autostart: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub url: String,
}

impl Config {
    /// The local server port: `OMNIGENT_SERVER_PORT`, else `server.port`, else 6767.
    pub fn server_port(&self) -> Result<u16, ConfigError> {
        match std::env::var(SERVER_PORT_ENV) {
            Ok(v) if !v.is_empty() => v.trim().parse().map_err(|_| ConfigError::BadEnv {
                name: SERVER_PORT_ENV,
                value: v.clone(),
                why: "expected a port number 0-65535",
            }),
            _ => Ok(self.server.port.unwrap_or(DEFAULT_SERVER_PORT)),
        }
    }

    pub fn server_autostart(&self) -> bool {
        self.server.autostart.unwrap_or(true)
    }

    pub fn host_id(&self) -> &str {
        self.host.host_id.as_deref().unwrap_or("")
    }

    pub fn host_name(&self) -> &str {
        self.host.name.as_deref().unwrap_or("")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is larger than 1 MiB; is it the right file?")]
    TooLarge { path: PathBuf },
    #[error(
        "{path} line {line}, column {column}: {message}; the previous config stays in force until it is fixed"
    )]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{name}={value:?} is invalid: {why}")]
    BadEnv {
        name: &'static str,
        value: String,
        why: &'static str,
    },
}

/// Read and parse `path`; a missing file is the default config.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = match read_capped(path) {
        Ok(t) => t,
        Err(ConfigError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Config::default());
        }
        Err(e) => return Err(e),
    };
    parse(path, &text)
}

fn read_capped(path: &Path) -> Result<String, ConfigError> {
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Parse config text, turning a TOML error into line and column.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        ConfigError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            message: e.message().trim().to_owned(),
        }
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Make sure the config file carries a host identity, generating `host_id` (32 hex) and `name` (the
/// hostname) once. Existing content is kept: the missing keys are added as text, never rewritten.
pub fn ensure_identity(path: &Path) -> Result<Config, ConfigError> {
    let text = match read_capped(path) {
        Ok(t) => t,
        Err(ConfigError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            String::new()
        }
        Err(e) => return Err(e),
    };
    let config = parse(path, &text)?;
    if config.host.host_id.is_some() && config.host.name.is_some() {
        return Ok(config);
    }
    let mut add = String::new();
    if config.host.host_id.is_none() {
        add.push_str(&format!(
            "host_id = \"{}\"\n",
            uuid::Uuid::new_v4().simple()
        ));
    }
    if config.host.name.is_none() {
        add.push_str(&format!("name = {}\n", toml_string(&hostname())));
    }
    let new_text = match text.lines().position(|l| l.trim() == "[host]") {
        Some(i) => {
            let mut lines: Vec<&str> = text.lines().collect();
            lines.insert(i + 1, add.trim_end());
            lines.join("\n") + "\n"
        }
        None if text.is_empty() => format!("{}[host]\n{add}", default_header()),
        None => format!(
            "{}{}\n[host]\n{add}",
            text,
            if text.ends_with('\n') { "" } else { "\n" }
        ),
    };
    let config = parse(path, &new_text)?;
    write_atomic(path, &new_text)?;
    Ok(config)
}

fn default_header() -> &'static str {
    "# omnigent configuration (docs/cli.md). The daemon applies edits live.\n\
     # log_level = \"info\"\n\
     # env_passthrough = []\n\
     # [server]\n\
     # port = 6767\n\n"
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn write_atomic(path: &Path, text: &str) -> Result<(), ConfigError> {
    let err = |source| ConfigError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension(format!("toml.tmp{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Watch the config file's directory; each change (coalesced) sends `()` on the returned channel. The
/// watcher must be kept alive by the caller.
pub fn watch(
    path: &Path,
) -> Result<(notify::RecommendedWatcher, mpsc::Receiver<()>), notify::Error> {
    use notify::Watcher;
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    std::fs::create_dir_all(&dir).map_err(notify::Error::io)?;
    let file_name = path.file_name().map(|n| n.to_owned());
    let (tx, rx) = mpsc::channel(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            Ok(ev) => {
                ev.paths.is_empty()
                    || ev
                        .paths
                        .iter()
                        .any(|p| p.file_name() == file_name.as_deref())
            }
            Err(_) => true,
        };
        if relevant && !matches!(&event, Ok(ev) if ev.kind.is_access()) {
            // Full means a reload is already pending, which will read the newest content.
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    Ok((watcher, rx))
}

/// Editors write in bursts (truncate, write, rename): wait this long after a change before reading.
pub const RELOAD_SETTLE: Duration = Duration::from_millis(30);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_line_and_column() {
        let err = parse(
            Path::new("c.toml"),
            "log_level = \"info\"\n[server]\nport = \"x\n",
        )
        .unwrap_err();
        let ConfigError::Parse { line, column, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!((*line, *column), (3, 10), "{err}");
        assert!(
            err.to_string().contains("c.toml line 3, column 10"),
            "{err}"
        );
        let err = parse(Path::new("c.toml"), "[server]\nport = 70000\n").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { line: 2, .. }), "{err}");
    }

    #[test]
    fn identity_is_generated_once_and_existing_content_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config/config.toml");
        let first = ensure_identity(&path).unwrap();
        let id = first.host_id().to_owned();
        assert_eq!(id.len(), 32);
        assert!(!first.host_name().is_empty());
        assert_eq!(ensure_identity(&path).unwrap().host_id(), id);

        std::fs::write(
            &path,
            "# mine\nlog_level = \"debug\"\n[host]\nname = \"box\"\n[server]\nport = 7000\n",
        )
        .unwrap();
        let c = ensure_identity(&path).unwrap();
        assert_eq!(c.host_name(), "box");
        assert_eq!(c.server.port, Some(7000));
        assert_eq!(c.host_id().len(), 32);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# mine\n"), "{text}");
        assert_eq!(load(&path).unwrap(), c);
    }

    #[test]
    fn missing_file_is_the_default_config() {
        let c = load(Path::new("/nonexistent/omnigent/config.toml")).unwrap();
        assert_eq!(c, Config::default());
        assert!(c.server_autostart());
    }
}
