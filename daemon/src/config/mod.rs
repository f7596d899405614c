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
//! bind = "0.0.0.0"                   # serve the LAN too (`start --lan`, `host enable --lan` write it);
//!                                    # default 127.0.0.1; OMNIGENT_SERVER_BIND overrides it
//! [[targets]]
//! url = "https://team.example.com"   # servers this machine is a host of (restored at every start)
//! ```
//!
//! The daemon edits the file itself in two places only, through `toml_edit` so comments, order and layout
//! stay as written: the host identity ([`ensure_identity`]) and `[[targets]]` tables ([`add_target`],
//! [`remove_target`], for `omnigent host URL --background` and `omnigent host stop URL`). The CLI edits one
//! more the same way: `server.bind` ([`set_server_bind`], for `omnigent start --lan | --bind` and `omnigent
//! host enable --lan`), so a daemon the service starts listens where a plain `omnigent start` would.

pub mod logfile;
pub mod ports;
pub(crate) mod task;

pub use task::ConfigView;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Environment variable overriding `server.port` (tests use it to pick a free port).
pub const SERVER_PORT_ENV: &str = "OMNIGENT_SERVER_PORT";
/// Overrides `server.bind`: the address(es) the local server listens on. Read once when the daemon starts.
pub const SERVER_BIND_ENV: &str = "OMNIGENT_SERVER_BIND";
/// Where the local server listens unless `server.bind` or [`SERVER_BIND_ENV`] says otherwise.
pub const DEFAULT_SERVER_BIND: &str = "127.0.0.1";
/// What `omnigent start --lan` writes to `server.bind`: every interface.
pub const LAN_BIND: &str = "0.0.0.0";

/// Check a `server.bind` value: IP addresses, comma-separated (what `omnigent server run --bind` takes).
pub fn check_bind(bind: &str) -> Result<(), String> {
    for part in bind.split(',').map(str::trim) {
        if part
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_err()
        {
            return Err(format!(
                "`{part}` is not an IP address; use 127.0.0.1 (the default), a LAN address of this machine, \
                 or 0.0.0.0 for every interface"
            ));
        }
    }
    Ok(())
}

/// Whether every address of `bind` is a loopback one (the default's meaning).
pub fn is_loopback_bind(bind: &str) -> bool {
    bind.split(',').map(str::trim).all(|p| {
        p == "localhost"
            || p.trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}
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
    /// Where the local server listens (`--bind` of `omnigent server run`); default 127.0.0.1.
    #[serde(default)]
    pub bind: Option<String>,
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

    /// Where the local server listens: [`SERVER_BIND_ENV`], else `server.bind`, else
    /// [`DEFAULT_SERVER_BIND`].
    pub fn server_bind(&self) -> String {
        std::env::var(SERVER_BIND_ENV)
            .ok()
            .or_else(|| self.server.bind.clone())
            .map(|b| b.trim().to_owned())
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| DEFAULT_SERVER_BIND.to_owned())
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
/// hostname) once. Existing content is kept: the missing keys are added to the `[host]` table (however its
/// header is written: `[host] # me`, `[ host ]`), or a `[host]` table is appended; nothing else is rewritten.
pub fn ensure_identity(path: &Path) -> Result<Config, ConfigError> {
    let text = read_for_edit(path)?;
    let config = parse(path, &text)?;
    if config.host.host_id.is_some() && config.host.name.is_some() {
        return Ok(config);
    }
    let host_id = config
        .host
        .host_id
        .is_none()
        .then(|| uuid::Uuid::new_v4().simple().to_string());
    let name = config.host.name.is_none().then(hostname);
    let new_text = if text.is_empty() {
        let mut add = String::from("[host]\n");
        for (key, value) in [("host_id", &host_id), ("name", &name)] {
            if let Some(v) = value {
                add.push_str(&format!("{key} = {}\n", toml_string(v)));
            }
        }
        format!("{}{add}", default_header())
    } else {
        let mut doc = edit_document(path, &text)?;
        let host = match doc.get_mut("host") {
            Some(item) => item.as_table_like_mut().ok_or_else(|| {
                edit_error(path, "`host` is not a table; fix it by hand".to_owned())
            })?,
            None => {
                append_table(&mut doc, "host", toml_edit::Table::new(), false);
                doc["host"]
                    .as_table_like_mut()
                    .ok_or_else(|| edit_error(path, "cannot add a [host] table".to_owned()))?
            }
        };
        for (key, value) in [("host_id", host_id), ("name", name)] {
            if let Some(v) = value {
                host.insert(key, toml_edit::value(v));
            }
        }
        render(&doc, &text)
    };
    let config = parse_edit(path, &new_text, "adding the host identity")?;
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

/// Parse text we are about to write into the config it holds; an error is ours, not the user's, so it says
/// what we tried.
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

/// The file as an editable document (comments, order and layout kept). `text` has already parsed as a
/// [`Config`], so a failure here is a TOML subtlety the two parsers see differently.
fn edit_document(path: &Path, text: &str) -> Result<toml_edit::DocumentMut, ConfigError> {
    text.parse::<toml_edit::DocumentMut>()
        .map_err(|e| edit_error(path, format!("{e}; edit it by hand")))
}

/// Add `table` under `key` at the very end of the document (as one more `[[key]]` when `array`), set apart
/// by a blank line: whatever trailed the last table (comments, blank lines) stays before it.
fn append_table(doc: &mut toml_edit::DocumentMut, key: &str, table: toml_edit::Table, array: bool) {
    let mut table = table;
    let trailing = doc.trailing().as_str().unwrap_or("").to_owned();
    doc.set_trailing("");
    table
        .decor_mut()
        .set_prefix(separator(&doc.to_string(), &trailing));
    table.set_position(isize::MAX);
    match doc.get_mut(key) {
        Some(toml_edit::Item::ArrayOfTables(tables)) => tables.push(table),
        _ if array => {
            let mut tables = toml_edit::ArrayOfTables::new();
            tables.push(table);
            doc.insert(key, toml_edit::Item::ArrayOfTables(tables));
        }
        _ => {
            doc.insert(key, toml_edit::Item::Table(table));
        }
    }
}

/// The document positions of every table under `table`.
fn table_positions(table: &toml_edit::Table, out: &mut Vec<isize>) {
    for (_, item) in table.iter() {
        let children: Vec<&toml_edit::Table> = match item {
            toml_edit::Item::Table(t) => vec![t],
            toml_edit::Item::ArrayOfTables(a) => a.iter().collect(),
            _ => Vec::new(),
        };
        for t in children {
            out.extend(t.position());
            table_positions(t, out);
        }
    }
}

/// The decor of the table at document position `at`, under `table`.
fn decor_at(table: &mut toml_edit::Table, at: isize) -> Option<&mut toml_edit::Decor> {
    for (_, item) in table.iter_mut() {
        let children: Vec<&mut toml_edit::Table> = match item {
            toml_edit::Item::Table(t) => vec![t],
            toml_edit::Item::ArrayOfTables(a) => a.iter_mut().collect(),
            _ => Vec::new(),
        };
        for t in children {
            let mut below = Vec::new();
            table_positions(t, &mut below);
            if t.position() == Some(at) {
                return Some(t.decor_mut());
            }
            if below.contains(&at) {
                return decor_at(t, at);
            }
        }
    }
    None
}

/// What goes between the text so far (`head`, then what trailed it) and an appended table header: the
/// trailing text, then newlines until a blank line separates them (nothing in an empty file).
fn separator(head: &str, trailing: &str) -> String {
    let mut all = format!("{head}{trailing}");
    if !all.is_empty() {
        if !all.ends_with('\n') {
            all.push('\n');
        }
        if !all.ends_with("\n\n") {
            all.push('\n');
        }
    }
    all.split_off(head.len())
}

/// The edited document as text. toml_edit ends the last key-value line with a newline; a file that ended
/// without one keeps ending without one.
fn render(doc: &toml_edit::DocumentMut, original: &str) -> String {
    let mut text = doc.to_string();
    if !original.is_empty() && !original.ends_with('\n') && text.ends_with('\n') {
        text.pop();
    }
    text
}

/// Keep `url` as a `[[targets]]` table: appended at the end of the file (created if missing), every existing
/// byte kept. Nothing is written when the file already lists it (compared without a trailing `/`). A file
/// that cannot be read or parsed is an error and is left as it is, and so is one that writes `targets`
/// another way (an inline array).
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
    let mut doc = edit_document(path, &text)?;
    if doc.get("targets").is_some_and(|t| !t.is_array_of_tables()) {
        return Err(edit_error(
            path,
            format!(
                "`targets` is written another way than [[targets]] tables (an inline array?); add {url} by hand"
            ),
        ));
    }
    let mut table = toml_edit::Table::new();
    table.insert("url", toml_edit::value(url.clone()));
    append_table(&mut doc, "targets", table, true);
    // The table is appended as the last one, so there is a trailing newline to keep.
    let new_text = doc.to_string();
    let new = parse_edit(path, &new_text, "appending a [[targets]] table")?;
    write_atomic(path, &new_text)?;
    Ok(Edited {
        config: new,
        changed: true,
    })
}

/// Set `server.bind` to `bind` (`None`: remove it, so the server listens on loopback only), in the `[server]`
/// table (created at the end when missing); every other byte kept, nothing written when it already says so.
/// A value that is not a list of IP addresses is refused and nothing is written.
pub fn set_server_bind(path: &Path, bind: Option<&str>) -> Result<Edited, ConfigError> {
    if let Some(b) = bind {
        check_bind(b).map_err(|why| edit_error(path, format!("server.bind: {why}")))?;
    }
    let text = read_for_edit(path)?;
    let config = parse(path, &text)?;
    if config.server.bind.as_deref() == bind {
        return Ok(Edited {
            config,
            changed: false,
        });
    }
    let mut doc = edit_document(path, &text)?;
    if doc.get("server").is_none() {
        if bind.is_none() {
            return Ok(Edited {
                config,
                changed: false,
            });
        }
        append_table(&mut doc, "server", toml_edit::Table::new(), false);
    }
    let server = doc["server"]
        .as_table_like_mut()
        .ok_or_else(|| edit_error(path, "`server` is not a table; fix it by hand".to_owned()))?;
    match bind {
        Some(b) => {
            server.insert("bind", toml_edit::value(b));
        }
        None => {
            server.remove("bind");
        }
    }
    let new_text = render(&doc, &text);
    let new = parse_edit(path, &new_text, "setting server.bind")?;
    write_atomic(path, &new_text)?;
    Ok(Edited {
        config: new,
        changed: true,
    })
}

/// Remove every `[[targets]]` table whose `url` is `url` (without a trailing `/`), with its sub-tables and the
/// blank line that set it apart; comments before the next header belong to what follows and stay, and so
/// does every other byte. Nothing is written when the file does not list it. A target written in another
/// form (an inline array) is an error naming it.
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
    let mut doc = edit_document(path, &text)?;
    let Some(toml_edit::Item::ArrayOfTables(tables)) = doc.get_mut("targets") else {
        return Err(edit_error(
            path,
            format!(
                "{url} is listed in a form this command does not edit (not a plain [[targets]] table with \
                 `url`); remove it by hand"
            ),
        ));
    };
    let listed = |t: &toml_edit::Table| {
        t.get("url")
            .and_then(toml_edit::Item::as_str)
            .is_some_and(|u| normalize_url(u) == url)
    };
    // Comments before a removed header belong to what precedes it; only the blank line that set the table
    // apart goes with it. They move to the next table (or the end of the file).
    let kept: Vec<(isize, String)> = tables
        .iter()
        .filter(|t| listed(t))
        .filter_map(|t| {
            let prefix = t.decor().prefix().and_then(|p| p.as_str()).unwrap_or("");
            let prefix = match prefix.strip_suffix('\n') {
                Some(before) if before.is_empty() || before.ends_with('\n') => before,
                _ => prefix,
            };
            Some((t.position()?, prefix.to_owned())).filter(|(_, p)| !p.is_empty())
        })
        .collect();
    tables.retain(|t| !listed(t));
    if tables.is_empty() {
        doc.remove("targets");
    }
    for (removed_at, text) in kept {
        let mut positions = Vec::new();
        table_positions(doc.as_table(), &mut positions);
        match positions.into_iter().filter(|p| *p > removed_at).min() {
            Some(next) => {
                if let Some(decor) = decor_at(doc.as_table_mut(), next) {
                    let prefix = decor.prefix().and_then(|p| p.as_str()).unwrap_or("");
                    decor.set_prefix(format!("{text}{prefix}"));
                }
            }
            None => {
                let trailing = doc.trailing().as_str().unwrap_or("").to_owned();
                doc.set_trailing(format!("{text}{trailing}"));
            }
        }
    }
    let new_text = render(&doc, &text);
    let new = parse_edit(path, &new_text, "removing its [[targets]] table")?;
    write_atomic(path, &new_text)?;
    Ok(Edited {
        config: new,
        changed: true,
    })
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

/// This machine's host name (`localhost` when the system does not say).
pub fn hostname() -> String {
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

    /// The first line ends in CRLF: toml_edit writes every line end as LF (it drops each `\r`), so an edit
    /// turns that one into LF (see [`USER_AFTER_EDIT`]); nothing else changes.
    const USER: &str = "# mine: keep this\r\nlog_level = \"debug\"   # inline\n\n[host]\nname = \"box\"\n\n\
                        [[targets]]\nurl = \"https://a.example\"\n\n# about the server\n[server]\nport = 7000";
    const USER_AFTER_EDIT: &str = "# mine: keep this\nlog_level = \"debug\"   # inline\n\n[host]\nname = \"box\"\n\n\
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
            format!("{USER_AFTER_EDIT}\n\n[[targets]]\nurl = \"http://127.0.0.1:9\"\n")
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
            "# mine: keep this\nlog_level = \"debug\"   # inline\n\n[host]\nname = \"box\"\n\n\
             # about the server\n[server]\nport = 7000"
        );
        let with_sub = "[[targets]]\nurl = \"http://s\"\n[targets.extra]\nk = 1\n[[ targets ]] # two\nurl = \"http://t\"\n";
        std::fs::write(&path, with_sub).unwrap();
        remove_target(&path, "http://s").unwrap();
        // toml_edit keeps one header key for all the tables of an array, the first one's: with that table
        // removed, the spaces inside `[[ targets ]]` go (its comment stays).
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "[[targets]] # two\nurl = \"http://t\"\n"
        );
    }

    #[test]
    fn a_commented_host_header_gets_the_identity_and_trailing_comments_stay_before_a_new_target() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "[host] # me\nname = \"box\"\n[server]\nport = 7000\n",
        )
        .unwrap();
        let c = ensure_identity(&path).unwrap();
        assert_eq!(c.host_name(), "box");
        let id = c.host_id().to_owned();
        assert_eq!(id.len(), 32);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("[host] # me\nname = \"box\"\nhost_id = \"{id}\"\n[server]\nport = 7000\n")
        );

        let text = "[[targets]]\nurl = \"http://s\"\n[targets.extra]\nk = 1\n\n# the end\n";
        std::fs::write(&path, text).unwrap();
        let e = add_target(&path, "http://u").unwrap();
        assert_eq!(e.config.targets.len(), 2);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{text}\n[[targets]]\nurl = \"http://u\"\n")
        );
        remove_target(&path, "http://u").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        // A comment right above a removed header stays, for the table that follows.
        let text = "[[targets]]\nurl = \"http://s\"\n# about u\n[[targets]]\nurl = \"http://u\"\n[server]\nport = 1\n";
        std::fs::write(&path, text).unwrap();
        remove_target(&path, "http://u").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "[[targets]]\nurl = \"http://s\"\n# about u\n[server]\nport = 1\n"
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
    fn server_bind_is_set_and_removed_keeping_every_other_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let before = "# mine\n[server] # here\nport = 7000\n\n[[targets]]\nurl = \"http://x\"\n";
        std::fs::write(&path, before).unwrap();
        let e = set_server_bind(&path, Some("0.0.0.0")).unwrap();
        assert!(e.changed);
        assert_eq!(e.config.server.bind.as_deref(), Some("0.0.0.0"));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "# mine\n[server] # here\nport = 7000\nbind = \"0.0.0.0\"\n\n[[targets]]\nurl = \"http://x\"\n"
        );
        assert!(!set_server_bind(&path, Some("0.0.0.0")).unwrap().changed);
        set_server_bind(&path, None).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
        // No [server] table: one is added; a bad value is refused and nothing written.
        let fresh = dir.path().join("fresh.toml");
        std::fs::write(&fresh, "log_level = \"info\"\n").unwrap();
        set_server_bind(&fresh, Some("10.0.0.2,127.0.0.1")).unwrap();
        assert_eq!(
            load(&fresh).unwrap().server.bind.as_deref(),
            Some("10.0.0.2,127.0.0.1")
        );
        let err = set_server_bind(&fresh, Some("my-laptop.lan")).unwrap_err();
        assert!(err.to_string().contains("not an IP address"), "{err}");
        assert_eq!(
            load(&fresh).unwrap().server.bind.as_deref(),
            Some("10.0.0.2,127.0.0.1")
        );
        assert!(is_loopback_bind("127.0.0.1") && is_loopback_bind("::1,127.0.0.1"));
        assert!(!is_loopback_bind("0.0.0.0") && !is_loopback_bind("10.0.0.2,127.0.0.1"));
    }

    #[test]
    fn missing_file_is_the_default_config() {
        let c = load(Path::new("/nonexistent/omnigent/config.toml")).unwrap();
        assert_eq!(c, Config::default());
        assert!(c.server_autostart());
    }
}
