//! `omnigent run [--harness H] [--workspace DIR] [PROMPT]` and `omnigent attach SESSION`: a session on this
//! host, driven from the terminal over the public HTTP API of the local server (reference host §1.4).
//!
//! `run` makes sure the backend is up and this machine is registered as a host, creates a session bound to
//! it (the server asks the host to launch a runner), opens the session's SSE stream, waits for the ready
//! heartbeat, sends the prompt and prints the answer as it streams. The answer text goes to stdout; tool
//! calls, results and status go to stderr. `--json` prints every event as one JSON line instead. Ctrl-C
//! interrupts the turn; a second Ctrl-C exits. Without PROMPT it prompts on a terminal, or reads stdin.
//!
//! When the agent asks before it uses a tool (`response.elicitation_request`, issue 15 item 6) the question is
//! printed, and when stdin can answer (a terminal or a pipe; never with `--json`) `Allow? [y/N]` is asked and
//! the answer posted to `POST …/elicitations/{eid}/resolve`; the first answer from any device wins, and each
//! resolution is printed with who gave it.

use std::collections::{HashMap, VecDeque};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use omnigent_proto::elicitation::{Action, Answer, ElicitationRequest, Resolved};
use omnigent_proto::events::{SseError, SseMessage, SseStream, kind};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::backend;
use crate::commands::agents;
use omnigent_proto::agent::bundle::Limits;

/// How long `run` waits for this host to come online with the local server.
const HOST_ONLINE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a freshly launched runner may take to connect before a message to it fails.
const RUNNER_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest SSE event we buffer (a tool output can be big; a stream without newlines is not SSE): a bigger one
/// ends the stream.
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;
/// How long a stream may take to send its ready heartbeat.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How `run` tells an agent from a prompt; shown by `omnigent run --help`.
const RUN_AFTER_HELP: &str = "\
AGENTS:
  The first positional is an agent, not the prompt, when it is an existing
  agent file (.yaml, .yml, .json) or an existing directory holding
  config.yaml, or when it is written as a path (no spaces, and it starts
  with /, ./, ../ or ~/, is . or .., or ends in .yaml/.yml/.json), which
  must then exist. Any other word starts the prompt. --agent PATH names the
  agent explicitly.
    omnigent run ./my-agent \"fix the failing test\"
    omnigent run --agent spec.yaml --model gpt-4.1 \"hi\"
  The agent is checked here first (a spec that cannot run exits 78 naming
  the field), bundled (a file becomes the bundle's config.yaml with the
  instructions file it names; a directory is bundled whole: 10 MiB
  compressed, 64 MiB unpacked, 1000 entries at most), uploaded to the local
  server, and the session runs on this machine. --harness and --model are
  written into the uploaded config.yaml (executor.harness, and
  executor.config.harness if the spec sets it; executor.model); the file
  on disk is never changed.";

#[derive(Debug, clap::Args)]
#[command(after_help = RUN_AFTER_HELP)]
pub struct RunArgs {
    /// The harness: echo (default), openai, anthropic, exec, claude-sdk (Claude Code), codex, pi, or an
    /// omnigent name (openai-agents, …). With an agent: overrides the spec's executor.harness.
    #[arg(long)]
    harness: Option<String>,
    /// The model. With an agent: overrides the spec's executor.model; else sent as the session's
    /// model_override.
    #[arg(long)]
    model: Option<String>,
    /// The agent to run: a spec file (YAML or JSON) or a directory holding config.yaml. Without it, the first
    /// positional is the agent when it is one (see AGENTS below).
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// The directory the agent works in (default: the current directory).
    #[arg(long)]
    workspace: Option<PathBuf>,
    /// Print every session event as one JSON line (NDJSON) instead of text.
    #[arg(long)]
    json: bool,
    /// Run on a remote server instead of the local one, with the token `omnigent login URL` stored: a driver
    /// device runs the session on a host of that server (--host, or its one online host; --workspace is then
    /// a directory there); an owner device registers this machine as its host unless --host names another.
    #[arg(long)]
    server: Option<String>,
    /// With --server: the host (name or id, as `GET /v1/hosts` lists them) the session runs on.
    #[arg(long, requires = "server", value_name = "NAME|ID")]
    host: Option<String>,
    /// [PATH] then the first message. Without a message: an interactive prompt on a terminal, else stdin.
    #[arg(value_name = "PROMPT")]
    prompt: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    /// The session to co-drive.
    session: String,
    /// Print every session event as one JSON line (NDJSON) instead of text.
    #[arg(long)]
    json: bool,
    /// The server of the session (default: the local one), with the token `omnigent login URL` stored.
    #[arg(long)]
    server: Option<String>,
}

/// The session's agent: a built-in one picked by harness, or one uploaded from a path.
enum AgentChoice {
    BuiltIn { harness: String },
    Upload { path: PathBuf },
}

pub fn run(mut args: RunArgs) -> Result<()> {
    let choice = match args.agent.take() {
        Some(path) => AgentChoice::Upload { path },
        None => match args.prompt.first().and_then(|w| agents::agent_path(w)) {
            Some(path) => {
                args.prompt.remove(0);
                AgentChoice::Upload { path }
            }
            None => AgentChoice::BuiltIn {
                harness: args.harness.clone().unwrap_or_else(|| "echo".to_owned()),
            },
        },
    };
    // On this machine the workspace is checked now; on a remote server's host it is that host's business.
    let placement = match &args.server {
        None => Placement::Local(local_workspace(args.workspace.as_deref())?),
        Some(url) => Placement::Remote(crate::commands::host::check_url(url.trim())?),
    };
    // Everything that can be checked here is checked before the backend starts or the prompt is read.
    let limits = Limits::default();
    let upload = match &choice {
        AgentChoice::Upload { path } => {
            let overrides = agents::Overrides {
                harness: args.harness.clone(),
                model: args.model.clone(),
            };
            let prepared = agents::prepare(path, &overrides, &limits, &backend::progress)?;
            Some((path.clone(), prepared))
        }
        AgentChoice::BuiltIn { .. } => None,
    };
    let first = initial_prompt(&args.prompt)?;
    backend::runtime()?.block_on(async move {
        let (api, host_id, workspace_text) = match placement {
            Placement::Remote(url) => {
                remote_placement(&url, args.host.as_deref(), args.workspace.as_deref()).await?
            }
            Placement::Local(workspace) => {
                let (url, host_id) = backend::ensure_local_host(HOST_ONLINE_TIMEOUT).await?;
                (Api::new(&url)?, host_id, workspace.display().to_string())
            }
        };
        let server_url = api.server.base.clone();
        let (session_id, what, created) = match (&choice, upload) {
            (_, Some((path, prepared))) => {
                let name = prepared.name(&path);
                let harness = prepared.harness();
                let metadata = json!({
                    "host_id": host_id,
                    "workspace": workspace_text,
                    "title": name,
                });
                backend::progress(&format!(
                    "uploading agent {name} ({} files, {}) to {server_url}…",
                    prepared.files,
                    agents::human_bytes(prepared.bundle.len() as u64)
                ));
                let id = api.upload(&metadata, prepared.bundle).await?;
                (id, format!("agent {name}, {harness}"), None)
            }
            (AgentChoice::BuiltIn { harness }, None) => {
                let agent_id = api.agent_for(harness).await?;
                let mut body = json!({
                    "agent_id": agent_id,
                    "host_id": host_id,
                    "workspace": workspace_text,
                });
                if let Some(model) = &args.model {
                    body["model_override"] = model.clone().into();
                }
                let session: Value = api
                    .post_json("/v1/sessions", &body)
                    .await
                    .context("cannot create the session")?;
                let id = session["id"]
                    .as_str()
                    .ok_or_else(|| anyhow!("the server's session has no id: {session}"))?
                    .to_owned();
                (id, harness.clone(), Some(session))
            }
            (AgentChoice::Upload { .. }, None) => unreachable!("an upload is always prepared"),
        };
        if args.json {
            let session: Value = match created {
                Some(session) => session,
                None => api
                    .get_json(&format!("/v1/sessions/{session_id}"))
                    .await
                    .with_context(|| format!("cannot read the new session {session_id}"))?,
            };
            // Not a server event: tells an NDJSON reader which session to attach to later.
            crate::exit::out(&format!(
                "{}\n",
                json!({"type": kind::SESSION_CREATED, "session": session})
            ));
        } else if std::io::stderr().is_terminal() {
            eprintln!("session {session_id} ({what} in {workspace_text})");
        }
        drive(&api, &session_id, first, args.json).await
    })
}

/// Where `run` creates its session.
enum Placement {
    /// The local server, this machine as its host, in this (checked) directory.
    Local(PathBuf),
    /// `--server URL`: see [`remote_placement`].
    Remote(String),
}

/// `--workspace` (default: the current directory) as an existing directory of this machine.
fn local_workspace(given: Option<&std::path::Path>) -> Result<PathBuf> {
    let workspace = match given {
        Some(w) => w.to_path_buf(),
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    std::fs::canonicalize(&workspace).map_err(|e| {
        crate::exit::ConfigError(format!(
            "workspace {} is not usable: {e}; pass an existing --workspace",
            workspace.display()
        ))
        .into()
    })
}

/// Where `run --server URL` runs its session: (the server, the host id, the workspace on that host).
///
/// The device's role (`/v1/info`) decides: creating a session and sending to it needs the driver role, so a
/// viewer or host device is refused here, before anything is created (exit 78 naming the role); an unpaired
/// one exits 78 naming `omnigent login URL`. A driver runs the session on a host of the server (`--host`, or
/// the one that is online), in `--workspace` as a path on that host. An owner (or a server without roles)
/// makes this machine the server's host, as for a local run, unless `--host` names one.
async fn remote_placement(
    url: &str,
    host: Option<&str>,
    workspace: Option<&std::path::Path>,
) -> Result<(Api, String, String)> {
    use omnigent_proto::auth::Role;
    let api = Api::new(url)?;
    let role = api.server.role().await?;
    if let Some(have) = role
        && !have.satisfies(Role::Driver)
    {
        return Err(crate::exit::ConfigError(format!(
            "`omnigent run --server {url}` creates a session and sends it messages, which needs the driver \
             role; this device is a {have} there: {}",
            crate::remote::role_hint(url, "driver")
        ))
        .into());
    }
    let this_machine = host.is_none() && role.is_none_or(|r| r == Role::Owner);
    if this_machine {
        let workspace = local_workspace(workspace)?;
        let (_, host_id) = backend::ensure_remote_host(url, HOST_ONLINE_TIMEOUT).await?;
        return Ok((api, host_id, workspace.display().to_string()));
    }
    let (host_id, name) = api.pick_host(url, host).await?;
    let workspace = workspace.ok_or_else(|| {
        crate::exit::ConfigError(format!(
            "the session runs on host '{name}' of {url}, not on this machine: pass --workspace DIR, a \
             directory on that host"
        ))
    })?;
    Ok((api, host_id, workspace.display().to_string()))
}

pub fn attach(args: AttachArgs) -> Result<()> {
    backend::runtime()?.block_on(async move {
        let server_url = match &args.server {
            Some(url) => crate::commands::host::check_url(url.trim())?,
            None => backend::ensure_local_host(HOST_ONLINE_TIMEOUT).await?.0,
        };
        let api = Api::new(&server_url)?;
        let session: Value = api
            .get_json(&format!("/v1/sessions/{}", args.session))
            .await
            .with_context(|| format!("cannot open session {}", args.session))?;
        if !args.json && std::io::stderr().is_terminal() {
            eprintln!(
                "attached to session {} ({}); type a message, Ctrl-C to leave",
                args.session,
                session["status"].as_str().unwrap_or("?")
            );
        }
        drive(&api, &args.session, Prompt::Interactive, args.json).await
    })
}

/// Where the messages come from.
enum Prompt {
    /// One message, then exit.
    Once(String),
    /// Read lines from stdin until EOF.
    Interactive,
}

fn initial_prompt(words: &[String]) -> Result<Prompt> {
    if !words.is_empty() {
        return Ok(Prompt::Once(words.join(" ")));
    }
    if std::io::stdin().is_terminal() {
        return Ok(Prompt::Interactive);
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
        .context("cannot read the prompt from stdin")?;
    if text.trim().is_empty() {
        bail!("no prompt: pass one as an argument, or pipe it on stdin");
    }
    Ok(Prompt::Once(text))
}

/// HTTP to the server through [`crate::remote::Server`]: no proxy on loopback, the stored device token
/// (`omnigent login`) on a remote one, a 401 an exit 78 naming `omnigent login URL`.
pub(crate) struct Api {
    server: crate::remote::Server,
}

impl Api {
    pub(crate) fn new(base: &str) -> Result<Self> {
        Ok(Api {
            server: crate::remote::Server::new(&backend::paths()?, base)?,
        })
    }

    async fn check(&self, resp: reqwest::Response, what: &str) -> Result<Value> {
        self.server.answer(resp, what).await
    }

    pub(crate) async fn get_json(&self, path: &str) -> Result<Value> {
        let resp = self
            .server
            .request(reqwest::Method::GET, path)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("GET {path} failed"))?;
        self.check(resp, &format!("GET {path}")).await
    }

    async fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        let resp = self
            .server
            .request(reqwest::Method::POST, path)
            .json(body)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .with_context(|| format!("POST {path} failed"))?;
        self.check(resp, &format!("POST {path}")).await
    }

    /// The host of the server a session runs on: the one named `wanted` (id or name), else the one online
    /// host; (id, name). None online, several, or no such host: a configuration error listing them.
    async fn pick_host(&self, url: &str, wanted: Option<&str>) -> Result<(String, String)> {
        let list = self.get_json("/v1/hosts").await?;
        let hosts: Vec<(String, String, bool)> = list["hosts"]
            .as_array()
            .or(list["data"].as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|h| {
                        let id = h["host_id"].as_str().or(h["id"].as_str())?;
                        let name = h["name"].as_str().unwrap_or(id);
                        Some((id.to_owned(), name.to_owned(), h["status"] == "online"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let shown = |hs: &[&(String, String, bool)]| {
            hs.iter()
                .map(|(id, name, online)| {
                    format!(
                        "'{name}' ({id}, {})",
                        if *online { "online" } else { "offline" }
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let all: Vec<&(String, String, bool)> = hosts.iter().collect();
        let candidates: Vec<&(String, String, bool)> = match wanted {
            Some(w) => hosts
                .iter()
                .filter(|(id, name, _)| id == w || name == w)
                .collect(),
            None => hosts.iter().filter(|(_, _, online)| *online).collect(),
        };
        match (candidates.as_slice(), wanted) {
            ([(id, name, _)], _) => Ok((id.clone(), name.clone())),
            ([], Some(w)) => Err(crate::exit::ConfigError(format!(
                "{url} has no host {w:?}; its hosts: {}",
                if all.is_empty() { "none".to_owned() } else { shown(&all) }
            ))
            .into()),
            ([], None) => Err(crate::exit::ConfigError(format!(
                "{url} has no online host to run the session on{}; a host joins with `omnigent host {url}` \
                 on its machine (a host-role device: `omnigent share --role host`)",
                if all.is_empty() { String::new() } else { format!(" ({})", shown(&all)) }
            ))
            .into()),
            (several, _) => Err(crate::exit::ConfigError(format!(
                "{url} has {} hosts that match: {}; pass --host ID",
                several.len(),
                shown(several)
            ))
            .into()),
        }
    }

    /// The built-in agent running `harness` (our name or one of its omnigent aliases); uploaded agents are
    /// never picked by harness.
    async fn agent_for(&self, harness: &str) -> Result<String> {
        let list = agents::list_all(self).await?;
        let canonical = omnigent_proto::harness::Harness::parse(harness)
            .map(|h| h.name())
            .unwrap_or(harness);
        let built_in = || {
            list.iter()
                .filter(|a| agents::kind_of(a) == agents::Kind::BuiltIn)
        };
        built_in()
            .find(|a| a["harness"] == harness || a["name"] == harness)
            .or_else(|| built_in().find(|a| a["harness"] == canonical || a["name"] == canonical))
            .and_then(|a| a["id"].as_str().map(str::to_owned))
            .ok_or_else(|| {
                let names: Vec<&str> = built_in().filter_map(|a| a["name"].as_str()).collect();
                crate::exit::ConfigError(format!(
                    "the server has no agent for harness {harness:?}; it offers: {}",
                    names.join(", ")
                ))
                .into()
            })
    }

    /// Create a session from an agent bundle: `POST /v1/sessions` as multipart (`metadata` JSON, `bundle`
    /// .tar.gz) → 201 `{"session_id"}`. A refusal of the agent (4xx) is a configuration error (exit 78)
    /// with the server's message.
    async fn upload(&self, metadata: &Value, bundle: Vec<u8>) -> Result<String> {
        use reqwest::multipart::{Form, Part};
        let size = bundle.len();
        let form = Form::new()
            .part(
                "metadata",
                Part::text(metadata.to_string()).mime_str("application/json")?,
            )
            .part(
                "bundle",
                Part::bytes(bundle)
                    .file_name("bundle.tar.gz")
                    .mime_str("application/gzip")?,
            );
        // The bundle is at most a few MiB on loopback; the timeout leaves the server time to store it.
        let resp = self
            .server
            .request(reqwest::Method::POST, "/v1/sessions")
            // The first-party origin, as Python omnigent's clients send it: a server that checks the origin
            // of multipart posts (CSRF) lets it through.
            .header("origin", omnigent_proto::headers::INTERNAL_ORIGIN)
            .multipart(form)
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .context("cannot upload the agent (POST /v1/sessions)")?;
        let status = resp.status();
        let refused = status.is_client_error()
            && status != reqwest::StatusCode::NOT_FOUND
            && status != reqwest::StatusCode::CONFLICT;
        let created = match self.check(resp, "the server refused the agent").await {
            Ok(v) => v,
            Err(e) if status == reqwest::StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                return Err(crate::exit::ConfigError(format!(
                    "{e}; this server does not accept agent uploads (an omnigent server older than agent \
                     bundles?): upgrade it, or run a built-in agent with --harness"
                ))
                .into());
            }
            Err(e) if refused => {
                return Err(crate::exit::ConfigError(format!(
                    "{e} ({} bundle)",
                    agents::human_bytes(size as u64)
                ))
                .into());
            }
            Err(e) => return Err(e),
        };
        created["session_id"]
            .as_str()
            .or(created["id"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| {
                anyhow!("the server created the session but sent no session_id: {created}")
            })
    }

    /// Send a message. A runner the host launched a moment ago may not have dialled the server yet: the
    /// server answers 503 until it has, so that answer is retried with a growing delay, bounded.
    async fn send_message(&self, session: &str, text: &str) -> Result<()> {
        let path = format!("/v1/sessions/{session}/events");
        let body = json!({"type": "message", "data": {"role": "user", "content": [{"type": "input_text", "text": text}]}});
        let deadline = tokio::time::Instant::now() + RUNNER_CONNECT_TIMEOUT;
        let mut delay = Duration::from_millis(20);
        loop {
            let resp = self
                .server
                .request(reqwest::Method::POST, &path)
                .json(&body)
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .with_context(|| format!("POST {path} failed"))?;
            if resp.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
                && tokio::time::Instant::now() + delay < deadline
            {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
                continue;
            }
            return self.check(resp, &format!("POST {path}")).await.map(|_| ());
        }
    }

    /// Answer the agent's question `elicitation_id` (the first answer from any device wins).
    async fn resolve(
        &self,
        session: &str,
        elicitation_id: &str,
        action: Action,
    ) -> Result<Resolve> {
        if omnigent_proto::ids::check_path_id(elicitation_id).is_err() {
            bail!("the question's id `{elicitation_id}` cannot be answered from here");
        }
        let path = format!("/v1/sessions/{session}/elicitations/{elicitation_id}/resolve");
        let resp = self
            .server
            .request(reqwest::Method::POST, &path)
            .json(&Answer::new(action))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("POST {path} failed"))?;
        match resp.status().as_u16() {
            409 => Ok(Resolve::TooLate),
            404 => Ok(Resolve::Gone),
            _ => self
                .check(resp, &format!("POST {path}"))
                .await
                .map(|_| Resolve::Won),
        }
    }

    async fn interrupt(&self, session: &str) -> Result<()> {
        self.post_json(
            &format!("/v1/sessions/{session}/events"),
            &json!({"type": "interrupt", "data": {}}),
        )
        .await
        .map(|_| ())
    }

    /// Open the session's SSE stream; events arrive on the returned channel (closed when the stream ends).
    async fn stream(&self, session: &str) -> Result<mpsc::Receiver<Value>> {
        let resp = self
            .server
            .request(
                reqwest::Method::GET,
                &format!("/v1/sessions/{session}/stream"),
            )
            .header("accept", "text/event-stream")
            .send()
            .await
            .context("cannot open the session stream")?;
        if !resp.status().is_success() {
            self.check(resp, "GET stream").await?;
            bail!("the session stream was refused");
        }
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let mut events = SseStream::new(resp.bytes_stream(), MAX_EVENT_BYTES);
            while let Some(item) = events.next().await {
                let message = match item {
                    Ok(message) => message,
                    Err(SseError::TooLarge(e)) => {
                        tracing::warn!("{e}; closing the session stream");
                        return;
                    }
                    Err(SseError::Body(_)) => return,
                };
                if let Some(v) = event_value(message)
                    && tx.send(v).await.is_err()
                {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

/// One SSE event as the turn printer reads it: its data as JSON, `type` defaulted from the `event:` line;
/// `[DONE]` becomes `{"type": "done"}`; data that is not JSON is skipped.
fn event_value(message: SseMessage) -> Option<Value> {
    if message.is_done() {
        return Some(json!({"type": "done"}));
    }
    let mut v: Value = serde_json::from_str(&message.data).ok()?;
    if v.get("type").is_none()
        && let (Some(name), Some(obj)) = (message.event, v.as_object_mut())
    {
        obj.insert("type".into(), name.trim().into());
    }
    Some(v)
}

/// What one event means for the turn.
enum Step {
    Continue,
    /// The session went idle after running: the turn is over (its outcome is in [`TurnState`]).
    Idle,
    /// The session reports `failed`.
    Failed(String),
    Ended,
}

/// What is known of the turn being followed, and of the terminal output.
#[derive(Default)]
struct TurnState {
    seen_running: bool,
    at_line_start: bool,
    /// The turn's failure (`response.failed`, `response.incomplete`, or an error event), first one wins.
    failure: Option<String>,
    /// The errors already printed on stderr (text mode), so none is printed twice.
    shown: Vec<String>,
    /// The turn ended cancelled (`response.cancelled`, `session.interrupted`).
    cancelled: bool,
}

impl TurnState {
    fn new() -> Self {
        TurnState {
            at_line_start: true,
            ..TurnState::default()
        }
    }

    /// Print an error once (text mode only; NDJSON readers have the event itself).
    fn show_error(&mut self, why: &str, json_out: bool) {
        if json_out || self.shown.iter().any(|s| s == why) {
            return;
        }
        end_line(&mut self.at_line_start);
        eprintln!("error: {why}");
        self.shown.push(why.to_owned());
    }

    /// How the turn ended once the session is idle again.
    fn outcome(&self) -> TurnEnd {
        match &self.failure {
            Some(why) => TurnEnd::Failed {
                why: why.clone(),
                shown: self.shown.contains(why),
            },
            None if self.cancelled => TurnEnd::Cancelled,
            None => TurnEnd::Done,
        }
    }
}

fn error_message(ev: &Value) -> String {
    let e = if ev["response"]["error"].is_null() {
        &ev["error"]
    } else {
        &ev["response"]["error"]
    };
    match e {
        Value::String(s) => s.clone(),
        Value::Null => ev["message"]
            .as_str()
            .unwrap_or("the turn failed")
            .to_owned(),
        other => other["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| other.to_string()),
    }
}

/// Print one event; say whether the turn ended.
fn show(ev: &Value, json_out: bool, st: &mut TurnState) -> Step {
    let kind = ev["type"].as_str().unwrap_or("");
    if json_out && kind != "done" {
        crate::exit::out(&format!("{ev}\n"));
    }
    match kind {
        kind::RESPONSE_OUTPUT_TEXT_DELTA if !json_out => {
            if let Some(d) = ev["delta"].as_str() {
                crate::exit::out(d);
                st.at_line_start = d.ends_with('\n');
            }
        }
        kind::RESPONSE_OUTPUT_ITEM_DONE if !json_out => {
            let item = &ev["item"];
            match item["type"].as_str().unwrap_or("") {
                "function_call" => {
                    end_line(&mut st.at_line_start);
                    eprintln!(
                        "⚙ {}({})",
                        item["name"].as_str().unwrap_or("tool"),
                        clip(item["arguments"].as_str().unwrap_or(""), 120)
                    );
                }
                "function_call_output" => {
                    end_line(&mut st.at_line_start);
                    let out = match &item["output"] {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    eprintln!("  → {}", clip(&out, 200));
                }
                _ => {}
            }
        }
        kind::SESSION_STATUS => match ev["status"].as_str().unwrap_or("") {
            "running" | "launching" => st.seen_running = true,
            "idle" if st.seen_running => return Step::Idle,
            "failed" => {
                let why = match &ev["error"] {
                    Value::Null => st
                        .failure
                        .clone()
                        .unwrap_or_else(|| "the turn failed".to_owned()),
                    _ => error_message(ev),
                };
                return Step::Failed(why);
            }
            _ => {}
        },
        kind::RESPONSE_ERROR | "error" => {
            let why = error_message(ev);
            st.show_error(&why, json_out);
            // A tool's error is the agent's to handle; an LLM or runner error ends the turn.
            if ev["source"] != "tool" && st.failure.is_none() {
                st.failure = Some(why);
            }
        }
        kind::RESPONSE_FAILED => {
            let why = st.failure.clone().unwrap_or_else(|| error_message(ev));
            st.show_error(&why, json_out);
            st.failure.get_or_insert(why);
        }
        kind::RESPONSE_INCOMPLETE => {
            let reason = ev["response"]["incomplete_details"]["reason"]
                .as_str()
                .unwrap_or("unknown reason");
            if reason == "user_interrupt" {
                // The answer the interrupt cut short: the turn was cancelled, not failed.
                st.cancelled = true;
                return Step::Continue;
            }
            let why = format!("the answer is incomplete ({reason})");
            st.show_error(&why, json_out);
            st.failure.get_or_insert(why);
        }
        kind::RESPONSE_COMPLETED => st.failure = None,
        kind::RESPONSE_CANCELLED | kind::SESSION_INTERRUPTED => {
            if !json_out && !st.cancelled {
                end_line(&mut st.at_line_start);
                eprintln!("(interrupted)");
            }
            st.cancelled = true;
        }
        "done" => return Step::Ended,
        _ => {}
    }
    Step::Continue
}

fn end_line(at_line_start: &mut bool) {
    if !*at_line_start {
        crate::exit::out("\n");
        *at_line_start = true;
    }
}

fn clip(s: &str, n: usize) -> String {
    let one_line = s.replace('\n', " ");
    if one_line.chars().count() <= n {
        one_line
    } else {
        format!("{}…", one_line.chars().take(n).collect::<String>())
    }
}

/// What came of this terminal's answer.
enum Resolve {
    Won,
    /// Another device answered first (409).
    TooLate,
    /// The question is not pending any more (404).
    Gone,
}

/// Lines of stdin, read on a thread of its own (a blocking read never holds up the exit); closed at EOF.
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(4);
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::stdin().lock()) {
            let Ok(line) = line else { return };
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Whether stdin can answer a question: a terminal, a pipe, a socket or a file (not `/dev/null`, not closed).
fn stdin_readable() -> bool {
    use std::os::unix::fs::FileTypeExt;
    if std::io::stdin().is_terminal() {
        return true;
    }
    std::fs::metadata("/dev/fd/0").is_ok_and(|m| {
        let t = m.file_type();
        t.is_fifo() || t.is_socket() || t.is_file()
    })
}

/// The next line of `lines`; never, when there are none.
async fn next_line(lines: &mut Option<mpsc::Receiver<String>>) -> Option<String> {
    match lines {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

const ALLOW: &str = "Allow? [y/N] ";

/// The agent's questions as this terminal follows them: each is printed; when stdin can answer (text mode)
/// the oldest open one is asked `Allow? [y/N]`; every resolution is printed with who gave it.
struct Questions {
    /// Whether to ask here at all.
    ask: bool,
    /// Open questions, oldest first (the first is the one asked).
    open: VecDeque<String>,
    /// The answers this terminal gave.
    mine: HashMap<String, Action>,
}

impl Questions {
    fn new(json_out: bool) -> Self {
        Questions {
            ask: !json_out && stdin_readable(),
            open: VecDeque::new(),
            mine: HashMap::new(),
        }
    }

    /// The question `Allow? [y/N]` is asking now.
    fn asking(&self) -> Option<&str> {
        self.open.front().filter(|_| self.ask).map(String::as_str)
    }

    /// A stream event (only the two approval kinds matter); `lines` is opened on the first question when
    /// this terminal asks and has none yet.
    fn on_event(
        &mut self,
        ev: &Value,
        json_out: bool,
        at_line_start: &mut bool,
        lines: &mut Option<mpsc::Receiver<String>>,
    ) {
        match ev["type"].as_str().unwrap_or("") {
            kind::RESPONSE_ELICITATION_REQUEST => {
                let Ok(request) = serde_json::from_value::<ElicitationRequest>(ev.clone()) else {
                    return;
                };
                let id = request.elicitation_id.clone();
                if self.open.contains(&id) {
                    return;
                }
                self.open.push_back(id);
                if json_out {
                    return;
                }
                end_line(at_line_start);
                let p = &request.params;
                let asker = p.policy_name.as_deref().unwrap_or("the agent");
                eprintln!("? {asker} asks: {}", p.message);
                if let Some(tool) = &p.tool_name {
                    let preview = p.content_preview.as_deref().unwrap_or("");
                    eprintln!("  {tool} {}", clip(preview, 300));
                }
                if !self.ask {
                    eprintln!(
                        "  (not asked here: stdin cannot answer; answer it from another device)"
                    );
                } else if self.open.len() == 1 {
                    if lines.is_none() {
                        *lines = Some(stdin_lines());
                    }
                    eprint!("{ALLOW}");
                }
            }
            kind::RESPONSE_ELICITATION_RESOLVED => {
                let Ok(resolved) = serde_json::from_value::<Resolved>(ev.clone()) else {
                    return;
                };
                let id = &resolved.elicitation_id;
                let was_asked = self.asking() == Some(id.as_str());
                let was_open = self.open.contains(id);
                self.open.retain(|q| q != id);
                let mine = self.mine.get(id).copied();
                if json_out || (!was_open && mine.is_none()) {
                    return;
                }
                if was_asked {
                    // The prompt line is left unanswered.
                    eprintln!();
                } else {
                    end_line(at_line_start);
                }
                let verb = |a: Action| match a {
                    Action::Accept => "approved",
                    Action::Decline => "denied",
                    Action::Cancel => "dismissed",
                };
                match (resolved.action, mine) {
                    (Some(a), Some(m)) if a == m => eprintln!("  → {}", verb(a)),
                    (Some(a), _) => eprintln!("  → {} by another client", verb(a)),
                    (None, _) => eprintln!("  → expired: nobody answered in time"),
                }
                if was_asked && self.asking().is_some() {
                    eprint!("{ALLOW}");
                }
            }
            _ => {}
        }
    }

    /// A line typed at `Allow? [y/N]` (`None`: stdin closed, so nothing more is asked here).
    async fn answer(&mut self, api: &Api, session: &str, line: Option<String>) {
        let Some(line) = line else {
            self.ask = false;
            eprintln!("\n  (stdin closed: answer it from another device)");
            return;
        };
        let Some(id) = self.open.pop_front() else {
            return;
        };
        let action = match line.trim().to_ascii_lowercase().as_str() {
            "y" | "yes" => Action::Accept,
            _ => Action::Decline,
        };
        self.mine.insert(id.clone(), action);
        match api.resolve(session, &id, action).await {
            // The resolution comes on the stream.
            Ok(Resolve::Won) => {}
            Ok(Resolve::TooLate) => {
                self.mine.remove(&id);
                eprintln!("  another device answered first");
            }
            Ok(Resolve::Gone) => eprintln!("  the question is no longer pending"),
            Err(e) => eprintln!("error: cannot answer: {e:#}"),
        }
        if self.asking().is_some() {
            eprint!("{ALLOW}");
        }
    }
}

/// Run turns on `session` until the prompts run out. One prompt: `Ok` only if the turn completed; a failed
/// turn is an error (exit 1), Ctrl-C is [`crate::exit::Interrupted`] (exit 130).
async fn drive(api: &Api, session: &str, prompt: Prompt, json_out: bool) -> Result<()> {
    // One SIGINT listener for the whole session, so a Ctrl-C between two polls is never lost.
    let mut sigint = crate::signals::interrupts().context("cannot listen for Ctrl-C")?;
    let mut events = api.stream(session).await?;
    // The ready heartbeat: the server has registered us, nothing we send from now on is missed.
    tokio::time::timeout(READY_TIMEOUT, async {
        while let Some(ev) = events.recv().await {
            if ev["type"] == kind::SESSION_HEARTBEAT {
                return Ok(());
            }
        }
        Err(anyhow!("the session stream ended before it was ready"))
    })
    .await
    .map_err(|_| {
        anyhow!(
            "the session stream sent no ready heartbeat within {}s",
            READY_TIMEOUT.as_secs()
        )
    })??;

    // Stdin's lines: the messages of an interactive session, and the answers to the agent's questions.
    let mut lines = None;
    let mut questions = Questions::new(json_out);
    let once = match prompt {
        Prompt::Once(text) => Some(text),
        Prompt::Interactive => {
            lines = Some(stdin_lines());
            None
        }
    };
    let show_prompt = std::io::stdin().is_terminal() && !json_out;
    let interactive = once.is_none();
    let mut next = once;
    loop {
        let text = match next.take() {
            Some(t) => t,
            None if !interactive => return Ok(()),
            None => {
                // Between turns: print what others (co-drivers) do, until our next line or EOF.
                let mut others = TurnState::new();
                if show_prompt {
                    eprint!("> ");
                }
                loop {
                    tokio::select! {
                        line = next_line(&mut lines) => match line {
                            _ if questions.asking().is_some() => {
                                questions.answer(api, session, line).await;
                            }
                            Some(l) if l.trim().is_empty() => {}
                            Some(l) => break l,
                            None => return Ok(()),
                        },
                        ev = events.recv() => match ev {
                            Some(ev) => {
                                questions.on_event(&ev, json_out, &mut others.at_line_start, &mut lines);
                                match show(&ev, json_out, &mut others) {
                                    Step::Ended => return Ok(()),
                                    Step::Idle => others = TurnState::new(),
                                    _ => {}
                                }
                            }
                            None => bail!("the session stream ended (the server stopped?)"),
                        },
                        _ = sigint.recv() => return Err(crate::exit::Interrupted.into()),
                    }
                }
            }
        };
        api.send_message(session, &text).await?;
        let mut follow = Follow {
            api,
            session,
            events: &mut events,
            sigint: &mut sigint,
            json_out,
            lines: &mut lines,
            questions: &mut questions,
        };
        let outcome = follow.turn().await?;
        match outcome {
            TurnEnd::Done => {}
            TurnEnd::Exit => return Err(crate::exit::Interrupted.into()),
            TurnEnd::Cancelled if !interactive => return Err(crate::exit::Interrupted.into()),
            TurnEnd::Cancelled => {}
            TurnEnd::Failed { why, shown } if !interactive => {
                let why = format!("the turn failed: {why}");
                return Err(if shown {
                    crate::exit::AlreadyShown(why).into()
                } else {
                    anyhow!(why)
                });
            }
            TurnEnd::Failed { why, shown } => {
                if !shown {
                    eprintln!("error: the turn failed: {why}");
                }
            }
        }
        if !interactive {
            return Ok(());
        }
    }
}

enum TurnEnd {
    Done,
    /// The turn failed; `shown` when its error is already on stderr.
    Failed {
        why: String,
        shown: bool,
    },
    /// The turn was interrupted (by our Ctrl-C or another client).
    Cancelled,
    /// A second Ctrl-C.
    Exit,
}

/// What following one turn needs.
struct Follow<'a> {
    api: &'a Api,
    session: &'a str,
    events: &'a mut mpsc::Receiver<Value>,
    sigint: &'a mut tokio::signal::unix::Signal,
    json_out: bool,
    lines: &'a mut Option<mpsc::Receiver<String>>,
    questions: &'a mut Questions,
}

impl Follow<'_> {
    /// Follow one turn to its end, answering the agent's questions from stdin. Ctrl-C interrupts it; a second
    /// Ctrl-C leaves.
    async fn turn(&mut self) -> Result<TurnEnd> {
        let (api, session, json_out) = (self.api, self.session, self.json_out);
        let mut st = TurnState::new();
        let mut interrupted = false;
        loop {
            let asking = self.questions.asking().is_some();
            tokio::select! {
                line = next_line(self.lines), if asking => {
                    self.questions.answer(api, session, line).await;
                }
                ev = self.events.recv() => {
                    let Some(ev) = ev else {
                        end_line(&mut st.at_line_start);
                        bail!("the session stream ended mid-turn (the server stopped?)");
                    };
                    self.questions.on_event(&ev, json_out, &mut st.at_line_start, self.lines);
                    match show(&ev, json_out, &mut st) {
                        Step::Continue => {}
                        Step::Idle => {
                            end_line(&mut st.at_line_start);
                            if interrupted {
                                st.cancelled = true;
                            }
                            return Ok(st.outcome());
                        }
                        Step::Failed(why) => {
                            end_line(&mut st.at_line_start);
                            let shown = st.shown.contains(&why);
                            return Ok(TurnEnd::Failed { why, shown });
                        }
                        Step::Ended => {
                            end_line(&mut st.at_line_start);
                            bail!("the session was closed by the server");
                        }
                    }
                }
                _ = self.sigint.recv() => {
                    if interrupted {
                        end_line(&mut st.at_line_start);
                        return Ok(TurnEnd::Exit);
                    }
                    interrupted = true;
                    end_line(&mut st.at_line_start);
                    eprintln!("interrupting… (Ctrl-C again to exit)");
                    if let Err(e) = api.interrupt(session).await {
                        eprintln!("error: cannot interrupt: {e:#}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A fake `POST /v1/sessions` that keeps what it was sent and answers `status` with `body`.
    async fn fake_sessions(
        status: u16,
        body: Value,
    ) -> (
        omnigent_testkit::net::Served,
        std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>,
    ) {
        use axum::http::{HeaderMap, StatusCode};
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = seen.clone();
        let app = axum::Router::new().route(
            "/v1/sessions",
            axum::routing::post(move |headers: HeaderMap, bytes: axum::body::Bytes| {
                let keep = keep.clone();
                let body = body.clone();
                async move {
                    let ct = headers["content-type"].to_str().unwrap().to_owned();
                    keep.lock().unwrap().push((ct, bytes.to_vec()));
                    (StatusCode::from_u16(status).unwrap(), axum::Json(body))
                }
            }),
        );
        (omnigent_testkit::net::serve(app).await, seen)
    }

    #[tokio::test]
    async fn an_upload_is_multipart_with_metadata_json_and_a_gzip_bundle_and_returns_the_session_id()
     {
        let (fake, seen) = fake_sessions(201, json!({"session_id": "s1"})).await;
        let api = Api::new(&fake.url).unwrap();
        let meta = json!({"host_id": "h", "workspace": "/w"});
        let id = api.upload(&meta, b"\x1f\x8bBUNDLE".to_vec()).await.unwrap();
        assert_eq!(id, "s1");
        let (ct, body) = seen.lock().unwrap().pop().unwrap();
        let boundary = ct.strip_prefix("multipart/form-data; boundary=").unwrap();
        let body = String::from_utf8_lossy(&body).to_lowercase();
        let parts: Vec<&str> = body.split(&format!("--{boundary}")).collect();
        assert!(
            parts[1].contains("name=\"metadata\"")
                && parts[1].contains("content-type: application/json")
                && parts[1].contains(r#"{"host_id":"h","workspace":"/w"}"#),
            "{body}"
        );
        assert!(
            parts[2].contains("name=\"bundle\"; filename=\"bundle.tar.gz\"")
                && parts[2].contains("content-type: application/gzip")
                && parts[2].contains("bundle\r\n"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn a_refused_upload_is_a_configuration_error_with_the_servers_message() {
        let refusal = json!({"error": {"code": "invalid_agent", "message": "agent spec field executor.harness: unknown"}});
        for status in [400, 413, 422] {
            let (fake, _) = fake_sessions(status, refusal.clone()).await;
            let err = Api::new(&fake.url)
                .unwrap()
                .upload(&json!({}), vec![1])
                .await
                .unwrap_err();
            assert!(
                err.downcast_ref::<crate::exit::ConfigError>().is_some(),
                "{status}: {err}"
            );
            assert!(
                err.to_string()
                    .contains("agent spec field executor.harness: unknown"),
                "{err}"
            );
        }
        let (fake, _) = fake_sessions(415, json!({"error": {"message": "send JSON"}})).await;
        let err = Api::new(&fake.url)
            .unwrap()
            .upload(&json!({}), vec![1])
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("does not accept agent uploads"),
            "{err}"
        );
        // A server failing is not the agent's fault: exit 1.
        let (fake, _) = fake_sessions(500, json!({"error": {"message": "disk full"}})).await;
        let err = Api::new(&fake.url)
            .unwrap()
            .upload(&json!({}), vec![1])
            .await
            .unwrap_err();
        assert!(
            err.downcast_ref::<crate::exit::ConfigError>().is_none(),
            "{err}"
        );
        assert!(err.to_string().contains("disk full"), "{err}");
    }

    #[test]
    fn sse_events_get_their_type_from_the_event_line() {
        let mut parser = omnigent_proto::events::SseParser::new(1024);
        let wire = "event: response.output_text.delta\nid: 4\ndata: {\"delta\":\"hi\"}\n\n\
                    event: x\ndata: {\"type\":\"own\"}\n\ndata: not json\n\ndata: [DONE]\n\n";
        let values: Vec<Value> = parser
            .push(wire.as_bytes())
            .unwrap()
            .into_iter()
            .filter_map(event_value)
            .collect();
        assert_eq!(values.len(), 3);
        assert_eq!(values[0]["type"], "response.output_text.delta");
        assert_eq!(values[0]["delta"], "hi");
        assert_eq!(values[1]["type"], "own");
        assert_eq!(values[2]["type"], "done");
    }

    #[test]
    fn an_answer_cut_short_by_an_interrupt_is_a_cancelled_turn_not_a_failed_one() {
        let mut st = TurnState::new();
        for ev in [
            json!({"type": "session.status", "status": "running"}),
            json!({"type": "session.interrupted"}),
            json!({"type": "response.incomplete", "response": {"incomplete_details": {"reason": "user_interrupt"}}}),
        ] {
            assert!(matches!(show(&ev, true, &mut st), Step::Continue));
        }
        let idle = json!({"type": "session.status", "status": "idle"});
        assert!(matches!(show(&idle, true, &mut st), Step::Idle));
        assert!(matches!(st.outcome(), TurnEnd::Cancelled));
    }

    #[test]
    fn a_failed_status_ends_the_turn_with_its_error() {
        let mut st = TurnState::new();
        let failed = json!({"type": "session.status", "status": "failed", "error": {"message": "runner crashed"}});
        match show(&failed, true, &mut st) {
            Step::Failed(why) => assert_eq!(why, "runner crashed"),
            _ => panic!("expected a failure"),
        }
        let idle = json!({"type": "session.status", "status": "idle"});
        assert!(matches!(show(&idle, true, &mut st), Step::Continue));
        let running = json!({"type": "session.status", "status": "running"});
        show(&running, true, &mut st);
        assert!(matches!(show(&idle, true, &mut st), Step::Idle));
        assert!(matches!(st.outcome(), TurnEnd::Done));
    }

    #[test]
    fn a_vendor_error_then_failed_response_is_one_failure_shown_once() {
        let mut st = TurnState::new();
        let error = json!({"type": "response.error", "source": "llm", "error": {"message": "HTTP 401: bad key"}});
        let failed = json!({"type": "response.failed", "response": {"error": {"message": "HTTP 401: bad key"}}});
        show(
            &json!({"type": "session.status", "status": "running"}),
            false,
            &mut st,
        );
        show(&error, false, &mut st);
        show(&failed, false, &mut st);
        assert_eq!(st.shown, vec!["HTTP 401: bad key".to_owned()]);
        let idle = json!({"type": "session.status", "status": "idle"});
        assert!(matches!(show(&idle, false, &mut st), Step::Idle));
        match st.outcome() {
            TurnEnd::Failed { why, shown } => {
                assert_eq!((why.as_str(), shown), ("HTTP 401: bad key", true))
            }
            _ => panic!("expected a failure"),
        }
    }
}
