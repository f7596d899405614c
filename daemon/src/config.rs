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
//! url = "https://team.example.com"   # servers this machine is a host of (restored at every start)
//! ```
//!
//! The daemon edits the file itself in two places only, as text so every other byte stays as written: the
//! host identity ([`ensure_identity`]) and `[[targets]]` tables ([`add_target`], [`remove_target`], for
//! `omnigent host URL --background` and `omnigent host stop URL`).

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
    #[error("cannot edit {path}: {why}")]
    Edit { path: PathBuf, why: String },
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
    let text = read_for_edit(path)?;
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

/// `http://host:port/` and `http://host:port` are one target.
pub fn normalize_url(url: &str) -> String {
    url.trim().trim_end_matches('/').to_owned()
}

/// What an edit of the file left: the config it now holds, and whether the file was rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edited {
    pub config: Config,
    pub changed: bool,
}

/// The file's text for an edit; a missing file is empty.
fn read_for_edit(path: &Path) -> Result<String, ConfigError> {
    match read_capped(path) {
        Ok(t) => Ok(t),
        Err(ConfigError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(String::new())
        }
        Err(e) => Err(e),
    }
}

fn edit_error(path: &Path, why: String) -> ConfigError {
    ConfigError::Edit {
        path: path.to_path_buf(),
        why,
    }
}

/// Parse text we are about to write; an error is ours, not the user's, so it says what we tried.
fn parse_edit(path: &Path, text: &str, what: &str) -> Result<Config, ConfigError> {
    parse(path, text).map_err(|e| {
        let why = match e {
            ConfigError::Parse { message, .. } => message,
            other => other.to_string(),
        };
        edit_error(
            path,
            format!("{what} would leave a file that does not parse ({why}); edit it by hand"),
        )
    })
}

/// Keep `url` as a `[[targets]]` table: appended at the end of the file (created if missing), every existing
/// byte kept. Nothing is written when the file already lists it (compared without a trailing `/`). A file
/// that cannot be read or parsed is an error and is left as it is.
pub fn add_target(path: &Path, url: &str) -> Result<Edited, ConfigError> {
    let url = normalize_url(url);
    let text = read_for_edit(path)?;
    let config = parse(path, &text)?;
    if config.targets.iter().any(|t| normalize_url(&t.url) == url) {
        return Ok(Edited {
            config,
            changed: false,
        });
    }
    let mut new_text = text;
    if !new_text.is_empty() {
        if !new_text.ends_with('\n') {
            new_text.push('\n');
        }
        if !new_text.ends_with("\n\n") {
            new_text.push('\n');
        }
    }
    new_text.push_str(&format!("[[targets]]\nurl = {}\n", toml_string(&url)));
    let new = parse_edit(path, &new_text, "appending a [[targets]] table")?;
    let mut expected = config;
    expected.targets.push(Target { url: url.clone() });
    if new != expected {
        return Err(edit_error(
            path,
            format!(
                "appending a [[targets]] table for {url} would change other settings (is `targets` written \
                 another way?); add it by hand"
            ),
        ));
    }
    write_atomic(path, &new_text)?;
    Ok(Edited {
        config: new,
        changed: true,
    })
}

/// Remove every `[[targets]]` table whose `url` is `url` (without a trailing `/`): only the lines of those
/// tables (and the blank line that set one apart), the rest of the file byte for byte. Nothing is written
/// when the file does not list it. A target written in another form (an inline array) is an error naming it.
pub fn remove_target(path: &Path, url: &str) -> Result<Edited, ConfigError> {
    let url = normalize_url(url);
    let text = read_for_edit(path)?;
    let config = parse(path, &text)?;
    if !config.targets.iter().any(|t| normalize_url(&t.url) == url) {
        return Ok(Edited {
            config,
            changed: false,
        });
    }
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut drop = vec![false; lines.len()];
    let mut i = 0;
    while i < lines.len() {
        if header_key(lines[i]).as_deref() != Some("[[targets]]") {
            i += 1;
            continue;
        }
        // The table runs to the next header that is not one of its own sub-tables.
        let start = i;
        let mut next = i + 1;
        while next < lines.len() {
            match header_key(lines[next]) {
                Some(k) if !k.starts_with("[targets.") && !k.starts_with("[[targets.") => break,
                _ => next += 1,
            }
        }
        i = next;
        let block: String = lines[start..next].concat();
        let matches = toml::from_str::<Config>(&block)
            .is_ok_and(|c| c.targets.len() == 1 && normalize_url(&c.targets[0].url) == url);
        if !matches {
            continue;
        }
        // Comments and blank lines before the next header belong to what follows.
        let mut end = next;
        while end > start + 1 && is_blank_or_comment(lines[end - 1]) {
            end -= 1;
        }
        drop[start..end].iter_mut().for_each(|d| *d = true);
        // The blank line that set the table apart goes with it, unless that would join two other lines.
        if start > 0
            && lines[start - 1].trim().is_empty()
            && !drop[start - 1]
            && (end == lines.len() || lines[end].trim().is_empty())
        {
            drop[start - 1] = true;
        }
    }
    let new_text: String = lines
        .iter()
        .zip(&drop)
        .filter(|(_, d)| !**d)
        .map(|(l, _)| *l)
        .collect();
    let new = parse_edit(path, &new_text, "removing its [[targets]] table")?;
    let mut expected = config;
    expected.targets.retain(|t| normalize_url(&t.url) != url);
    if new != expected {
        return Err(edit_error(
            path,
            format!(
                "{url} is listed in a form this command does not edit (not a plain [[targets]] table with \
                 `url`); remove it by hand"
            ),
        ));
    }
    write_atomic(path, &new_text)?;
    Ok(Edited {
        config: new,
        changed: true,
    })
}

/// `[[targets]]` for a line `  [[ targets ]] # c`, `[server]` for `[server]`; None when the line is not a
/// table header.
fn header_key(line: &str) -> Option<String> {
    let t = line.trim_start();
    if !t.starts_with('[') {
        return None;
    }
    let t = t.split('#').next().unwrap_or("");
    Some(
        t.chars()
            .filter(|c| !c.is_whitespace() && *c != '"' && *c != '\'')
            .collect(),
    )
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
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

/// Write through a temporary file and a rename, so a reader (the watcher, an editor) never sees half a file.
/// The file keeps its permissions.
fn write_atomic(path: &Path, text: &str) -> Result<(), ConfigError> {
    let err = |source| ConfigError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension(format!("toml.tmp{}", std::process::id()));
    let result = std::fs::write(&tmp, text)
        .and_then(|()| match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => std::fs::set_permissions(&tmp, meta.permissions()),
            _ => Ok(()),
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
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

    const USER: &str = "# mine: keep this\r\nlog_level = \"debug\"   # inline\n\n[host]\nname = \"box\"\n\n\
                        [[targets]]\nurl = \"https://a.example\"\n\n# about the server\n[server]\nport = 7000";

    #[test]
    fn a_target_is_appended_once_and_every_other_byte_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, USER).unwrap();
        let e = add_target(&path, "http://127.0.0.1:9/").unwrap();
        assert!(e.changed);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!("{USER}\n\n[[targets]]\nurl = \"http://127.0.0.1:9\"\n")
        );
        assert_eq!(load(&path).unwrap(), e.config);
        let urls: Vec<&str> = e.config.targets.iter().map(|t| t.url.as_str()).collect();
        assert_eq!(urls, ["https://a.example", "http://127.0.0.1:9"]);
        // The same URL, with or without the slash, is already there.
        for again in [
            "http://127.0.0.1:9",
            " http://127.0.0.1:9/ ",
            "https://a.example/",
        ] {
            let e = add_target(&path, again).unwrap();
            assert!(!e.changed, "{again}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        }
        // A missing file is created with just the table.
        let fresh = dir.path().join("new/config.toml");
        add_target(&fresh, "https://b.example").unwrap();
        assert_eq!(
            std::fs::read_to_string(&fresh).unwrap(),
            "[[targets]]\nurl = \"https://b.example\"\n"
        );
    }

    #[test]
    fn removing_a_target_removes_its_table_only_and_undoes_an_add_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let before = "# mine\nlog_level = \"debug\"\n[server]\nport = 7000\n";
        std::fs::write(&path, before).unwrap();
        add_target(&path, "http://x:1").unwrap();
        add_target(&path, "http://y:2").unwrap();
        let e = remove_target(&path, "http://x:1/").unwrap();
        assert!(e.changed);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{before}\n[[targets]]\nurl = \"http://y:2\"\n")
        );
        remove_target(&path, "http://y:2").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
        let e = remove_target(&path, "http://y:2").unwrap();
        assert!(!e.changed);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);

        // A table in the middle, with sub-tables; comments before the next header stay.
        std::fs::write(&path, USER).unwrap();
        let e = remove_target(&path, "https://a.example").unwrap();
        assert!(e.changed && e.config.targets.is_empty());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "# mine: keep this\r\nlog_level = \"debug\"   # inline\n\n[host]\nname = \"box\"\n\n\
             # about the server\n[server]\nport = 7000"
        );
        let with_sub = "[[targets]]\nurl = \"http://s\"\n[targets.extra]\nk = 1\n[[ targets ]] # two\nurl = \"http://t\"\n";
        std::fs::write(&path, with_sub).unwrap();
        remove_target(&path, "http://s").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "[[ targets ]] # two\nurl = \"http://t\"\n"
        );
    }

    #[test]
    fn edits_that_cannot_be_made_safely_fail_naming_the_file_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        // An inline array is not a form we edit.
        let inline = "targets = [{ url = \"http://i\" }]\n";
        std::fs::write(&path, inline).unwrap();
        let err = add_target(&path, "http://j").unwrap_err();
        assert!(matches!(err, ConfigError::Edit { .. }), "{err}");
        let err = remove_target(&path, "http://i").unwrap_err();
        assert!(err.to_string().contains("remove it by hand"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), inline);
        // Malformed: the parse error, with line and column.
        std::fs::write(&path, "[server\n").unwrap();
        let err = add_target(&path, "http://j").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { line: 1, .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[server\n");
        // Not a file.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let err = add_target(&path, "http://j").unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert!(path.is_dir());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }

    #[test]
    fn missing_file_is_the_default_config() {
        let c = load(Path::new("/nonexistent/omnigent/config.toml")).unwrap();
        assert_eq!(c, Config::default());
        assert!(c.server_autostart());
    }
}
