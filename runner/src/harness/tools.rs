//! The tools a turn offers: the built-in ones (shell, read_file, write_file, list_dir), confined to the
//! session workspace, and the session's MCP tools (`super::mcp`), both behind one [`Toolset`] that the
//! harnesses ask for definitions and hand every call to.
//!
//! A tool never fails the turn: whatever goes wrong (bad arguments, a path outside the workspace, a command
//! that times out) is returned to the model as the tool's output, starting with `error:`, so it can correct
//! itself. Only cancellation ends a tool run early with [`HarnessError::Interrupted`].
//!
//! Confinement: relative paths resolve under the workspace; the resolved path is canonicalized (following
//! every symlink) and must lie under the canonical workspace. For a write, the nearest existing ancestor is
//! the one canonicalized, and what remains must be plain names, so neither `..` nor a symlinked parent
//! can lead a write outside.

use std::io::Read as _;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio_util::sync::CancellationToken;

use omnigent_proto::events::kind;

use super::mcp::{self, OfferedTool, Toolbox};
use super::{EventSink, HarnessError, Turn};

/// Most bytes of output one tool call returns to the model.
pub const OUTPUT_CAP: usize = 64 * 1024;
/// Appended to an output cut at [`OUTPUT_CAP`].
pub const TRUNCATED_MARKER: &str = "\n[truncated]";
/// Default for `HarnessConfig::tool_timeout`.
pub const DEFAULT_SHELL_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest time limit the model may ask the shell tool for.
pub const MAX_SHELL_TIMEOUT: Duration = Duration::from_secs(600);
/// After a command exits (and its process group is killed), how long to wait for its output pipes to close.
const PIPE_DRAIN: Duration = Duration::from_secs(1);

/// Name, description and JSON-schema of each tool.
fn specs() -> [(&'static str, &'static str, Value); 4] {
    [
        (
            "shell",
            "Run a shell command (sh -c) in the workspace directory and return its combined stdout and \
             stderr and exit code. Output beyond 64 KiB is truncated.",
            json!({
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The command line, run by sh -c."},
                    "timeout_secs": {"type": "integer", "description": "Time limit in seconds (default 120, at most 600)."}
                },
                "required": ["command"]
            }),
        ),
        (
            "read_file",
            "Read a text file in the workspace. Output beyond 64 KiB is truncated.",
            json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "Path relative to the workspace."}
                },
                "required": ["path"]
            }),
        ),
        (
            "write_file",
            "Create or overwrite a file in the workspace with the given content; missing parent directories \
             are created.",
            json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "Path relative to the workspace."},
                    "content": {"type": "string", "description": "The complete new content of the file."}
                },
                "required": ["path", "content"]
            }),
        ),
        (
            "list_dir",
            "List a directory in the workspace: one entry per line, directories end with '/'.",
            json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "Path relative to the workspace (default '.')."}
                }
            }),
        ),
    ]
}

/// The built-in tools in Chat Completions form (see [`Toolset::openai_definitions`]).
pub fn openai_definitions() -> Value {
    Toolset::default().openai_definitions()
}

/// The built-in tools in Anthropic Messages form (see [`Toolset::anthropic_definitions`]).
pub fn anthropic_definitions() -> Value {
    Toolset::default().anthropic_definitions()
}

/// The tools of one turn: the built-in ones and the MCP tools its session's servers offer now.
#[derive(Debug, Clone, Default)]
pub struct Toolset {
    mcp: Option<(Toolbox, Vec<OfferedTool>)>,
}

/// The code of the error item a failed MCP server shows as.
pub const MCP_SERVER_ERROR: &str = "mcp_server_error";

impl Toolset {
    /// The tools for `turn`: asks the session's MCP toolbox (starting its servers on the first turn) and shows
    /// every server that failed or stopped as an error item (`response.error`, `source: "tool"`). Only an
    /// interrupt is an error.
    pub async fn for_turn(
        turn: &Turn,
        sink: &EventSink,
        cancel: &CancellationToken,
    ) -> Result<Toolset, HarnessError> {
        let Some(toolbox) = &turn.mcp else {
            return Ok(Toolset::default());
        };
        let offer = toolbox.offer(&turn.workspace, cancel).await?;
        for failure in &offer.failures {
            server_error(sink, failure);
        }
        Ok(Toolset {
            mcp: Some((toolbox.clone(), offer.tools)),
        })
    }

    fn all(&self) -> impl Iterator<Item = (String, String, Value)> + '_ {
        let builtin = specs()
            .into_iter()
            .map(|(name, description, schema)| (name.to_owned(), description.to_owned(), schema));
        let mcp = self
            .mcp
            .iter()
            .flat_map(|(_, tools)| tools)
            .map(|t| (t.name.clone(), t.description.clone(), t.schema.clone()));
        builtin.chain(mcp)
    }

    /// Chat Completions form: `[{"type":"function","function":{name, description, parameters}}]`.
    pub fn openai_definitions(&self) -> Value {
        self.all()
            .map(|(name, description, parameters)| {
                json!({"type": "function", "function": {
                    "name": name, "description": description, "parameters": parameters
                }})
            })
            .collect()
    }

    /// Responses API form: `[{"type":"function", name, description, parameters}]`.
    pub fn responses_definitions(&self) -> Value {
        self.all()
            .map(|(name, description, parameters)| {
                json!({"type": "function", "name": name, "description": description, "parameters": parameters})
            })
            .collect()
    }

    /// Anthropic Messages form: `[{name, description, input_schema}]`.
    pub fn anthropic_definitions(&self) -> Value {
        self.all()
            .map(|(name, description, schema)| {
                json!({"name": name, "description": description, "input_schema": schema})
            })
            .collect()
    }

    /// Run the tool `name`: an offered MCP tool through its server, else a built-in one (see [`run`]). A
    /// server found dead by the call is shown as an error item too.
    pub async fn run(
        &self,
        name: &str,
        arguments: &str,
        workspace: &Path,
        timeout: Duration,
        cancel: &CancellationToken,
        sink: &EventSink,
    ) -> Result<String, HarnessError> {
        if let Some((toolbox, tools)) = &self.mcp
            && tools.iter().any(|t| t.name == name)
        {
            let outcome = toolbox.call(name, arguments, timeout, cancel).await?;
            if let Some(failure) = &outcome.failure {
                server_error(sink, failure);
            }
            return Ok(outcome.output);
        }
        run(name, arguments, workspace, timeout, cancel).await
    }
}

/// A failed MCP server as the session's error item.
fn server_error(sink: &EventSink, failure: &mcp::ServerFailure) {
    sink.emit(json!({
        "type": kind::RESPONSE_ERROR,
        "source": "tool",
        "tool_name": failure.server,
        "error": {"code": MCP_SERVER_ERROR, "message": failure.message},
    }));
}

/// Run the tool `name` with its JSON `arguments` in `workspace`. The output (or an `error: …` text) is what
/// the model sees. `shell_timeout` is the shell tool's default limit.
pub async fn run(
    name: &str,
    arguments: &str,
    workspace: &Path,
    shell_timeout: Duration,
    cancel: &CancellationToken,
) -> Result<String, HarnessError> {
    let args: Value = if arguments.trim().is_empty() {
        json!({})
    } else {
        match serde_json::from_str(arguments) {
            Ok(args) => args,
            Err(e) => {
                return Ok(format!(
                    "error: the arguments of {name} are not valid JSON ({e}); send a JSON object"
                ));
            }
        }
    };
    let outcome = match name {
        "shell" => shell(&args, workspace, shell_timeout, cancel).await?,
        "read_file" | "write_file" | "list_dir" => {
            let name = name.to_owned();
            let workspace = workspace.to_owned();
            let job = tokio::task::spawn_blocking(move || match name.as_str() {
                "read_file" => read_file(&args, &workspace),
                "write_file" => write_file(&args, &workspace),
                _ => list_dir(&args, &workspace),
            });
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(HarnessError::Interrupted),
                done = job => done.unwrap_or_else(|e| Err(format!("the tool crashed: {e}"))),
            }
        }
        other => Err(format!(
            "unknown tool {other:?}; the tools are shell, read_file, write_file and list_dir"
        )),
    };
    Ok(match outcome {
        Ok(output) => output,
        Err(message) => format!("error: {message}"),
    })
}

fn str_arg<'a>(args: &'a Value, key: &str) -> Result<&'a str, String> {
    args.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string argument {key:?}"))
}

/// Cut `bytes` to [`OUTPUT_CAP`] (on a char boundary) with the marker when cut.
fn capped_text(bytes: &[u8], truncated: bool) -> String {
    let cut = bytes.len() > OUTPUT_CAP;
    let mut text = String::from_utf8_lossy(&bytes[..bytes.len().min(OUTPUT_CAP)]).into_owned();
    if cut || truncated {
        // A lossy cut may have split a multi-byte char into one replacement char; that is fine.
        text.push_str(TRUNCATED_MARKER);
    }
    text
}

/// The workspace, canonicalized.
fn root(workspace: &Path) -> Result<PathBuf, String> {
    std::fs::canonicalize(workspace).map_err(|e| {
        format!(
            "the workspace {} is not accessible: {e}",
            workspace.display()
        )
    })
}

fn outside(requested: &str) -> String {
    format!(
        "{requested:?} is outside the workspace; use a path inside it (relative paths start at the workspace)"
    )
}

/// Resolve an existing path for reading, following symlinks; it must be inside `root`.
fn resolve_existing(root: &Path, requested: &str) -> Result<PathBuf, String> {
    let joined = root.join(requested);
    let real = std::fs::canonicalize(&joined).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("{requested:?} does not exist"),
        _ => format!("cannot resolve {requested:?}: {e}"),
    })?;
    if !real.starts_with(root) {
        return Err(outside(requested));
    }
    Ok(real)
}

/// Resolve a path to write: the nearest existing ancestor is canonicalized and must be inside `root`; the
/// components after it must be plain names. Returns the real target and the directories to create.
fn resolve_for_write(root: &Path, requested: &str) -> Result<PathBuf, String> {
    let joined = root.join(requested);
    let components: Vec<Component> = joined.components().collect();
    for existing in (1..=components.len()).rev() {
        let prefix: PathBuf = components[..existing].iter().collect();
        if std::fs::symlink_metadata(&prefix).is_err() {
            continue;
        }
        let real = std::fs::canonicalize(&prefix).map_err(|e| {
            format!(
                "cannot resolve {requested:?}: {} is a broken symlink or unreadable ({e})",
                prefix.display()
            )
        })?;
        if !real.starts_with(root) {
            return Err(outside(requested));
        }
        let mut target = real;
        for component in &components[existing..] {
            match component {
                Component::Normal(name) => target.push(name),
                _ => return Err(outside(requested)),
            }
        }
        return Ok(target);
    }
    Err(outside(requested))
}

fn display(root: &Path, path: &Path) -> String {
    match path.strip_prefix(root) {
        Ok(rel) if rel.as_os_str().is_empty() => ".".to_owned(),
        Ok(rel) => rel.display().to_string(),
        Err(_) => path.display().to_string(),
    }
}

fn read_file(args: &Value, workspace: &Path) -> Result<String, String> {
    let requested = str_arg(args, "path")?;
    let root = root(workspace)?;
    let path = resolve_existing(&root, requested)?;
    if path.is_dir() {
        return Err(format!("{requested:?} is a directory; use list_dir"));
    }
    if !path.is_file() {
        // A FIFO or device would block the read (and the turn) indefinitely.
        return Err(format!("{requested:?} is not a regular file"));
    }
    let file = std::fs::File::open(&path).map_err(|e| format!("cannot open {requested:?}: {e}"))?;
    let mut bytes = Vec::new();
    file.take(OUTPUT_CAP as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {requested:?}: {e}"))?;
    Ok(capped_text(&bytes, false))
}

fn write_file(args: &Value, workspace: &Path) -> Result<String, String> {
    let requested = str_arg(args, "path")?;
    let content = str_arg(args, "content")?;
    let root = root(workspace)?;
    let path = resolve_for_write(&root, requested)?;
    if path == root || path.is_dir() {
        return Err(format!("{requested:?} is a directory; give a file path"));
    }
    if path.exists() && !path.is_file() {
        return Err(format!("{requested:?} is not a regular file"));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create the directory of {requested:?}: {e}"))?;
    }
    std::fs::write(&path, content).map_err(|e| format!("cannot write {requested:?}: {e}"))?;
    Ok(format!(
        "wrote {} bytes to {}",
        content.len(),
        display(&root, &path)
    ))
}

fn list_dir(args: &Value, workspace: &Path) -> Result<String, String> {
    let requested = args.get("path").and_then(Value::as_str).unwrap_or(".");
    let root = root(workspace)?;
    let path = resolve_existing(&root, requested)?;
    let entries =
        std::fs::read_dir(&path).map_err(|e| format!("cannot list {requested:?}: {e}"))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {requested:?}: {e}"))?;
        let mut name = entry.file_name().to_string_lossy().into_owned();
        match entry.file_type() {
            Ok(t) if t.is_dir() => name.push('/'),
            Ok(t) if t.is_symlink() => name.push('@'),
            _ => {}
        }
        names.push(name);
    }
    names.sort();
    if names.is_empty() {
        return Ok(format!("{} is empty", display(&root, &path)));
    }
    Ok(capped_text(names.join("\n").as_bytes(), false))
}

/// Output of a command, shared by the readers of its stdout and stderr.
#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    truncated: bool,
}

async fn capture(mut pipe: impl AsyncRead + Unpin, into: Arc<Mutex<Captured>>) {
    let mut chunk = [0u8; 8192];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                // The lock is held for a copy only, never across an await.
                let mut captured = into.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let room = OUTPUT_CAP.saturating_sub(captured.bytes.len());
                captured.bytes.extend_from_slice(&chunk[..n.min(room)]);
                if n > room {
                    captured.truncated = true;
                }
            }
        }
    }
}

/// `shell`: `sh -c command` in the workspace, in its own process group, stdin closed. When the command exits
/// the group is killed (leftover background jobs would otherwise hold the output open); on timeout or
/// cancel the group is killed at once.
async fn shell(
    args: &Value,
    workspace: &Path,
    default_timeout: Duration,
    cancel: &CancellationToken,
) -> Result<Result<String, String>, HarnessError> {
    let command = match str_arg(args, "command") {
        Ok(command) => command,
        Err(e) => return Ok(Err(e)),
    };
    let limit = args
        .get("timeout_secs")
        .and_then(Value::as_u64)
        .map(Duration::from_secs)
        .unwrap_or(default_timeout)
        .min(MAX_SHELL_TIMEOUT);
    let mut child = match super::child::owned_by_runner(
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(workspace)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    )
    .spawn()
    {
        Ok(child) => child,
        Err(e) => return Ok(Err(format!("cannot start sh: {e}"))),
    };
    let group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    let captured = Arc::new(Mutex::new(Captured::default()));
    let mut readers = tokio::task::JoinSet::new();
    if let Some(stdout) = child.stdout.take() {
        readers.spawn(capture(stdout, captured.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.spawn(capture(stderr, captured.clone()));
    }
    let kill_group = || {
        if let Some(group) = group {
            // ESRCH (the group is already gone) is the expected outcome more often than not.
            let _ = killpg(group, Signal::SIGKILL);
        }
    };
    let status = tokio::select! {
        biased;
        _ = cancel.cancelled() => {
            kill_group();
            return Err(HarnessError::Interrupted);
        }
        status = tokio::time::timeout(limit, child.wait()) => status,
    };
    kill_group();
    // Readers end when the pipes close, which the group kill ensures unless a process left the group.
    let _ = tokio::time::timeout(PIPE_DRAIN, async {
        while readers.join_next().await.is_some() {}
    })
    .await;
    readers.abort_all();
    let captured = std::mem::take(&mut *captured.lock().unwrap_or_else(|p| p.into_inner()));
    let mut output = capped_text(&captured.bytes, captured.truncated);
    if !output.is_empty() && !output.ends_with('\n') {
        output.push('\n');
    }
    match status {
        Err(_) => {
            let _ = child.wait().await;
            output.push_str(&format!(
                "[killed: the command did not finish within {} s; pass a larger timeout_secs (at most {}) or run it differently]",
                limit.as_secs_f64(),
                MAX_SHELL_TIMEOUT.as_secs()
            ));
        }
        Ok(Err(e)) => return Ok(Err(format!("cannot wait for the command: {e}"))),
        Ok(Ok(status)) => match status.code() {
            Some(code) => output.push_str(&format!("[exit code {code}]")),
            None => output.push_str("[killed by a signal]"),
        },
    }
    Ok(Ok(output))
}
