//! The sessions database behind one interface: [`Store`]. SQLite today; Postgres slots in as another
//! variant without touching the handlers (they only see [`Store`] and the row types below).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::updates::Change;

mod agents;
mod devices;
mod hosts;
mod live;
mod sqlite;

pub use agents::{AgentRow, NewAgent};
pub use devices::DeviceRow;
pub use hosts::HostRow;
pub use sqlite::SqliteStore;

/// Where the store lives, parsed from `--database-url` (or the default SQLite file in the data dir).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseLocation {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DatabaseLocation {
    /// Parse a database URL: `sqlite:///abs/path`, `sqlite://rel/path`, `sqlite:path`, or `postgres(ql)://…`.
    pub fn parse(url: &str) -> Result<Self, OpenError> {
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            let path = path.split('?').next().unwrap_or(path);
            if path.is_empty() || path == ":memory:" {
                return Err(OpenError::BadUrl {
                    url: url.to_owned(),
                    why: "it names no file (in-memory databases are not supported: the server must keep \
                          sessions across restarts)"
                        .to_owned(),
                });
            }
            return Ok(DatabaseLocation::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseLocation::Postgres(url.to_owned()));
        }
        Err(OpenError::BadUrl {
            url: redact_url(url),
            why: "the scheme is not sqlite: or postgres://".to_owned(),
        })
    }

    /// What `/v1/info` and the ready line show: the SQLite path, or the URL without its password.
    pub fn display(&self) -> String {
        match self {
            DatabaseLocation::Sqlite(p) => p.display().to_string(),
            DatabaseLocation::Postgres(url) => redact_url(url),
        }
    }
}

/// `scheme://user:secret@host/db` → `scheme://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://{user}@{host}{tail}")
            }
        }
        None => url.to_owned(),
    }
}

/// Why the store could not be opened. Each message names the file (or URL) and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("database URL `{url}` is not usable: {why}")]
    BadUrl { url: String, why: String },
    #[error(
        "Postgres (`{url}`) is not supported yet by omnigent-rs; use the default SQLite database (omit \
         --database-url) or a sqlite: URL"
    )]
    PostgresNotSupported { url: String },
    #[error(
        "database {path} is in use by another omnigent server (its lock file {lock} is held); stop that server \
         or give this one another data directory (OMNIGENT_HOME) or --database-url"
    )]
    Locked { path: PathBuf, lock: PathBuf },
    #[error(
        "database {path} is read-only ({cause}); make the file and its directory writable by this user, or \
         pass another --database-url"
    )]
    ReadOnly {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "database {path} is not a usable SQLite database (corrupt, or another kind of file): {cause}; move it \
         aside (omnigent creates a fresh one) or restore it from a backup"
    )]
    Corrupt { path: PathBuf, cause: sqlx::Error },
    #[error(
        "cannot create or open database {path}: {cause}; check that the directory exists and is writable"
    )]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot open database {path}: {cause}")]
    Sqlite { path: PathBuf, cause: sqlx::Error },
    #[error(
        "cannot bring database {path} to the current schema: {cause}; it may come from a newer omnigent-rs \
         (upgrade this binary) or be damaged"
    )]
    Migrate {
        path: PathBuf,
        cause: sqlx::migrate::MigrateError,
    },
}

/// A runtime database failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("stored JSON in column {column} is not valid: {source}")]
    BadJson {
        column: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A pagination cursor names no row (deleted, or from another list).
    #[error(
        "cursor `{0}` names no row of this list (it may have been deleted); start again from the first page"
    )]
    CursorNotFound(String),
    /// A write was not stored because the file system holding the database is full.
    #[error(
        "not stored: the file system holding the database {} is full ({free}; {cause}); free space there and \
         retry (the server recovers by itself, no restart needed)",
        path.display()
    )]
    Full {
        path: PathBuf,
        /// Free space on that file system, as text (`12 KiB free of 4.0 MiB`).
        free: String,
        #[source]
        cause: sqlx::Error,
    },
    /// A write was not stored for another storage reason (I/O error, read-only or damaged file, …).
    #[error(
        "not stored: the database {} cannot be written ({cause}; its file system has {free}); check that \
         disk and the server log, then retry (the server recovers by itself once it is writable)",
        path.display()
    )]
    Unavailable {
        path: PathBuf,
        free: String,
        #[source]
        cause: sqlx::Error,
    },
}

/// One session row.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    pub id: String,
    pub agent_id: String,
    pub title: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub status: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub archived: bool,
    pub kind: String,
    pub parent_session_id: Option<String>,
    pub root_session_id: String,
    pub sub_agent_name: Option<String>,
    pub runner_id: Option<String>,
    pub host_id: Option<String>,
    pub workspace: Option<String>,
    pub git_branch: Option<String>,
    pub model_override: Option<String>,
    pub reasoning_effort: Option<String>,
    pub cost_control_mode_override: Option<String>,
    pub external_session_id: Option<String>,
    pub terminal_launch_args: Option<Vec<String>>,
    /// The name and harness of the session's agent when it is an uploaded one (read from `agents`; not
    /// written with the session).
    pub uploaded_agent: Option<UploadedAgentRef>,
}

/// What a session row carries of its uploaded agent.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadedAgentRef {
    pub name: String,
    /// As the spec wrote it (`openai-agents`, …).
    pub harness: String,
    /// Hex sha256 of its bundle.
    pub bundle_sha256: String,
}

/// Session labels of this prefix select MCP services for the session (0.19.1's `MCP_SELECTION_PREFIX`).
const MCP_SELECTION_PREFIX: &str = "omnigent.mcp_service.";

impl SessionRow {
    /// The name of the session's agent: the uploaded agent's, else the built-in's (`None` for an agent this
    /// server does not know).
    pub fn agent_name(&self) -> Option<&str> {
        match &self.uploaded_agent {
            Some(a) => Some(&a.name),
            None => crate::agents::find(&self.agent_id).map(|a| a.name.as_str()),
        }
    }

    /// The harness that runs the session's agent: the uploaded spec's name for it as written, else the
    /// built-in's.
    pub fn harness(&self) -> Option<&str> {
        match &self.uploaded_agent {
            Some(a) => Some(&a.harness),
            None => crate::agents::find(&self.agent_id).map(|a| a.harness.as_str()),
        }
    }

    /// What a turn tells the runner its agent's revision is (`agent_revision`), as 0.19.1's
    /// `mcp_selection_revision`: `{agent_id}/{bundle sha256}` (0.19.1's bundle location), and when the session's
    /// labels select MCP services, `:mcp:` and the first 16 hex digits of the sha256 of the sorted selection
    /// as Python's `json.dumps` writes it. `None` for a built-in agent (it has no bundle).
    pub fn agent_revision(&self) -> Option<String> {
        let bundle = &self.uploaded_agent.as_ref()?.bundle_sha256;
        let location = format!("{}/{bundle}", self.agent_id);
        let selections: Vec<String> = self
            .labels
            .iter()
            .filter(|(k, _)| k.starts_with(MCP_SELECTION_PREFIX))
            .map(|(k, v)| format!("[{}, {}]", py_json_str(k), py_json_str(v)))
            .collect();
        if selections.is_empty() {
            return Some(location);
        }
        let digest = Sha256::digest(format!("[{}]", selections.join(", ")));
        Some(format!("{location}:mcp:{}", &hex::encode(digest)[..16]))
    }

    /// An idle top-level session of `agent_id` created at `at_ms`, with nothing else set (callers fill in
    /// what they have).
    pub fn new(id: &str, agent_id: &str, at_ms: i64) -> SessionRow {
        SessionRow {
            id: id.to_owned(),
            agent_id: agent_id.to_owned(),
            title: None,
            labels: BTreeMap::new(),
            status: "idle".into(),
            created_at_ms: at_ms,
            updated_at_ms: at_ms,
            archived: false,
            kind: "default".into(),
            parent_session_id: None,
            root_session_id: id.to_owned(),
            sub_agent_name: None,
            runner_id: None,
            host_id: None,
            workspace: None,
            git_branch: None,
            model_override: None,
            reasoning_effort: None,
            cost_control_mode_override: None,
            external_session_id: None,
            terminal_launch_args: None,
            uploaded_agent: None,
        }
    }
}

/// A session to create (the id is chosen by the caller).
#[derive(Debug, Clone)]
pub struct NewSession {
    pub row: SessionRow,
}

/// One conversation item row.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRow {
    pub id: String,
    pub position: i64,
    pub seq: u64,
    pub kind: String,
    pub status: String,
    pub response_id: Option<String>,
    pub created_at_ms: i64,
    pub created_by: Option<String>,
    /// The item's own fields (no `id`/`type`/`status`/`response_id`/`created_at`).
    pub data: Map<String, Value>,
}

/// An item to append.
#[derive(Debug, Clone)]
pub struct NewItem {
    pub id: String,
    pub kind: String,
    pub status: String,
    pub response_id: Option<String>,
    pub created_at_ms: i64,
    pub created_by: Option<String>,
    pub data: Map<String, Value>,
}

/// Which column orders a session list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionSort {
    CreatedAt,
    UpdatedAt,
}

/// A list request after validation.
#[derive(Debug, Clone)]
pub struct SessionListParams {
    pub limit: u32,
    pub after: Option<String>,
    pub before: Option<String>,
    pub descending: bool,
    pub sort: SessionSort,
    /// FTS5 query already built from the user's words.
    pub fts_query: Option<String>,
    pub include_archived: bool,
    /// `Some("default")`, `Some("sub_agent")`, or `None` for any.
    pub kind: Option<String>,
    pub agent_id: Option<String>,
}

/// An item page request after validation.
#[derive(Debug, Clone)]
pub struct ItemListParams {
    pub limit: u32,
    pub after: Option<String>,
    pub before: Option<String>,
    pub descending: bool,
}

/// Changes of a PATCH, already validated; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct SessionChanges {
    pub title: Option<Option<String>>,
    pub labels: Option<BTreeMap<String, String>>,
    pub runner_id: Option<Option<String>>,
    pub reasoning_effort: Option<Option<String>>,
    pub model_override: Option<Option<String>>,
    pub cost_control_mode_override: Option<Option<String>>,
    pub external_session_id: Option<String>,
    pub terminal_launch_args: Option<Option<Vec<String>>>,
    pub archived: Option<bool>,
}

/// The sessions database. One variant per backend; handlers only see this type.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(SqliteStore),
}

impl Store {
    /// Open (creating if needed) and migrate the database at `location`.
    pub async fn open(
        location: &DatabaseLocation,
        read_connections: u32,
    ) -> Result<Store, OpenError> {
        match location {
            DatabaseLocation::Sqlite(path) => Ok(Store::Sqlite(
                SqliteStore::open(path, read_connections).await?,
            )),
            DatabaseLocation::Postgres(url) => Err(OpenError::PostgresNotSupported {
                url: redact_url(url),
            }),
        }
    }

    /// Finish in-flight writes, checkpoint, and close every connection.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.close().await,
        }
    }

    /// Whether durable writes are succeeding (cheap: no I/O).
    pub fn storage_health(&self) -> omnigent_proto::api::StorageHealth {
        match self {
            Store::Sqlite(s) => s.storage_health(),
        }
    }

    /// While writes are failing, try one small write, so the health clears as soon as the disk can take
    /// writes again (not only at the next user write). Does nothing while healthy.
    pub async fn probe_storage(&self) {
        match self {
            Store::Sqlite(s) => s.probe_storage().await,
        }
    }

    pub async fn count_sessions(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.count_sessions().await,
        }
    }

    pub async fn create_session(
        &self,
        new: &NewSession,
        items: &[NewItem],
    ) -> Result<(), StoreError> {
        let created = match self {
            Store::Sqlite(s) => s.create_session(new, items).await,
        };
        self.announce(&created, || Change::Created(new.row.id.clone()));
        created
    }

    pub async fn get_session(&self, id: &str) -> Result<Option<SessionRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.get_session(id).await,
        }
    }

    /// Ids of the sessions bound to `runner_id`.
    pub async fn sessions_bound_to(&self, runner_id: &str) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Sqlite(s) => s.sessions_bound_to(runner_id).await,
        }
    }

    /// Ids of the sessions whose stored status says a turn is under way (`running` or `waiting`).
    pub async fn sessions_mid_turn(&self) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Sqlite(s) => s.sessions_mid_turn().await,
        }
    }

    /// Sessions among `ids` that exist, by id.
    pub async fn existing_sessions(&self, ids: &[String]) -> Result<Vec<SessionRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.existing_sessions(ids).await,
        }
    }

    /// One page of sessions and whether more follow in that direction.
    pub async fn list_sessions(
        &self,
        p: &SessionListParams,
    ) -> Result<(Vec<SessionRow>, bool), StoreError> {
        match self {
            Store::Sqlite(s) => s.list_sessions(p).await,
        }
    }

    /// Apply `changes`; `None` when the session does not exist.
    pub async fn update_session(
        &self,
        id: &str,
        changes: &SessionChanges,
        now_ms: i64,
    ) -> Result<Option<SessionRow>, StoreError> {
        let updated = match self {
            Store::Sqlite(s) => s.update_session(id, changes, now_ms).await,
        };
        if matches!(updated, Ok(Some(_))) {
            self.updates().send(Change::Changed(id.to_owned()));
        }
        updated
    }

    /// Delete a session and its items; false when it did not exist.
    pub async fn delete_session(&self, id: &str) -> Result<bool, StoreError> {
        let deleted = match self {
            Store::Sqlite(s) => s.delete_session(id).await,
        };
        if matches!(deleted, Ok(true)) {
            self.updates().send(Change::Removed(id.to_owned()));
        }
        deleted
    }

    pub async fn set_status(&self, id: &str, status: &str) -> Result<(), StoreError> {
        let set = match self {
            Store::Sqlite(s) => s.set_status(id, status).await,
        };
        self.announce(&set, || Change::Changed(id.to_owned()));
        set
    }

    /// A page of items; `None` when the session does not exist.
    pub async fn list_items(
        &self,
        session_id: &str,
        p: &ItemListParams,
    ) -> Result<Option<(Vec<ItemRow>, bool)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.list_items(session_id, p).await,
        }
    }

    /// Every item of a session in position order (at most `cap`).
    pub async fn all_items(&self, session_id: &str, cap: u32) -> Result<Vec<ItemRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.all_items(session_id, cap).await,
        }
    }

    /// Whether an item with this id is stored (item ids are unique across sessions).
    pub async fn item_exists(&self, item_id: &str) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.item_exists(item_id).await,
        }
    }

    /// Append one item at the next position, stamped with SSE sequence `seq`; bumps `updated_at`.
    /// `None` when the session no longer exists.
    pub async fn append_item(
        &self,
        session_id: &str,
        item: &NewItem,
        seq: u64,
    ) -> Result<Option<ItemRow>, StoreError> {
        let appended = match self {
            Store::Sqlite(s) => s.append_item(session_id, item, seq).await,
        };
        if matches!(appended, Ok(Some(_))) {
            self.updates().send(Change::Changed(session_id.to_owned()));
        }
        appended
    }

    /// Durable items published with a sequence in `(after, before)`, in sequence order (at most `cap`).
    pub async fn items_between_seq(
        &self,
        session_id: &str,
        after: u64,
        before: u64,
        cap: u32,
    ) -> Result<Vec<ItemRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.items_between_seq(session_id, after, before, cap).await,
        }
    }

    /// The status and reserved sequence of a session, for its actor; `None` when it does not exist.
    pub async fn actor_state(&self, id: &str) -> Result<Option<(String, u64)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.actor_state(id).await,
        }
    }

    /// Record that sequence numbers up to `upto` may have been handed out.
    pub async fn reserve_seq(&self, id: &str, upto: u64) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.reserve_seq(id, upto).await,
        }
    }

    /// Copy `source`'s items (all, or up to the last item of `up_to_response_id`) into the new session.
    /// `Ok(None)` when `up_to_response_id` names no item of the source.
    pub async fn fork_session(
        &self,
        source_id: &str,
        new: &NewSession,
        up_to_response_id: Option<&str>,
        new_item_id: &mut (dyn FnMut() -> String + Send),
    ) -> Result<Option<()>, StoreError> {
        let forked = match self {
            Store::Sqlite(s) => {
                s.fork_session(source_id, new, up_to_response_id, new_item_id)
                    .await
            }
        };
        if matches!(forked, Ok(Some(()))) {
            self.updates().send(Change::Created(new.row.id.clone()));
        }
        forked
    }
}

/// Plain text of an item for full-text search (message text, tool names and outputs).
pub fn search_text(kind: &str, data: &Map<String, Value>) -> String {
    let mut out = String::new();
    let mut push = |s: &str| {
        if !s.is_empty() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(s);
        }
    };
    match kind {
        "message" => match data.get("content") {
            Some(Value::String(s)) => push(s),
            Some(Value::Array(parts)) => {
                for part in parts {
                    if let Some(t) = part.get("text").and_then(Value::as_str) {
                        push(t);
                    }
                }
            }
            _ => {}
        },
        "function_call" => {
            for key in ["name", "arguments"] {
                if let Some(s) = data.get(key).and_then(Value::as_str) {
                    push(s);
                }
            }
        }
        "function_call_output" => match data.get("output") {
            Some(Value::String(s)) => push(s),
            Some(other) => push(&other.to_string()),
            None => {}
        },
        _ => {}
    }
    out
}

/// Build an FTS5 query from what a user typed: every word must match, as a prefix; FTS syntax in the
/// input is neutralised by quoting. Input with no words (`%`, `_`, `"`) is searched for literally, as
/// quoted phrases: punctuation is never indexed, so it matches nothing (it is not a wildcard, and not "no
/// filter"). `None` only for blank input.
pub fn fts_query(input: &str) -> Option<String> {
    let quote = |w: &str| format!("\"{}\"", w.replace('"', "\"\""));
    let terms: Vec<String> = input
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .take(16)
        .map(|w| format!("{}*", quote(w)))
        .collect();
    if !terms.is_empty() {
        return Some(terms.join(" "));
    }
    let literal: Vec<String> = input.split_whitespace().take(16).map(quote).collect();
    (!literal.is_empty()).then(|| literal.join(" "))
}

/// `s` as Python's `json.dumps` writes a string (`ensure_ascii`: DEL and every non-ASCII character as `\\uXXXX`,
/// in UTF-16).
fn py_json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in serde_json::Value::from(s).to_string().chars() {
        if c.is_ascii() && c != '\u{7f}' {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_revision_is_0_19_1s_bundle_location_and_mcp_selection_digest() {
        let mut row = SessionRow::new("s1", "ag1", 0);
        assert_eq!(row.agent_revision(), None, "a built-in agent has no bundle");
        row.uploaded_agent = Some(UploadedAgentRef {
            name: "a".into(),
            harness: "openai-agents".into(),
            bundle_sha256: "abc".into(),
        });
        row.labels.insert("k".into(), "v".into());
        assert_eq!(row.agent_revision().as_deref(), Some("ag1/abc"));
        // The figure 0.19.1's `mcp_selection_revision` gives for the same bundle location and labels.
        row.labels
            .insert("omnigent.mcp_service.github".into(), "1".into());
        row.labels
            .insert("omnigent.mcp_service.caf\u{e9}\u{7f}".into(), "0".into());
        assert_eq!(
            row.agent_revision().as_deref(),
            Some("ag1/abc:mcp:0e46febf24958678")
        );
    }

    #[test]
    fn urls_parse_and_redact() {
        assert_eq!(
            DatabaseLocation::parse("sqlite:///tmp/x.db").expect("ok"),
            DatabaseLocation::Sqlite(PathBuf::from("/tmp/x.db"))
        );
        assert_eq!(
            DatabaseLocation::parse("sqlite:rel.db?mode=rwc").expect("ok"),
            DatabaseLocation::Sqlite(PathBuf::from("rel.db"))
        );
        assert!(DatabaseLocation::parse("sqlite::memory:").is_err());
        assert!(DatabaseLocation::parse("mysql://x").is_err());
        let pg = DatabaseLocation::parse("postgres://bob:hunter2@db:5432/omni").expect("ok");
        assert_eq!(pg.display(), "postgres://bob:***@db:5432/omni");
        assert_eq!(redact_url("postgres://db/omni"), "postgres://db/omni");
    }

    #[test]
    fn fts_query_quotes_every_word() {
        assert_eq!(fts_query("  "), None);
        assert_eq!(
            fts_query("hello wor"),
            Some("\"hello\"* \"wor\"*".to_owned())
        );
        assert_eq!(
            fts_query("a\"b OR c*"),
            Some("\"a\"* \"b\"* \"OR\"* \"c\"*".to_owned())
        );
        // No words: literal phrases, never a wildcard and never "no filter".
        assert_eq!(fts_query("%"), Some("\"%\"".to_owned()));
        assert_eq!(fts_query(" _ "), Some("\"_\"".to_owned()));
        assert_eq!(fts_query("\""), Some("\"\"\"\"".to_owned()));
        assert_eq!(fts_query("100% a_b"), Some("\"100\"* \"a_b\"*".to_owned()));
    }
}
