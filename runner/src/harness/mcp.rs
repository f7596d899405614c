//! MCP tools: a session's MCP servers (the agent spec's `tools` of `type: mcp`), reached through the official
//! Rust SDK (`rmcp`), their tools offered to the model next to the built-in ones.
//!
//! One task per session owns the servers ([`Toolbox`] is its handle, cheap to clone): it starts them all on the
//! first turn's [`Toolbox::offer`] (stdio servers as child processes that stay in the runner's process group, so
//! the daemon's group kill stops them too, and are killed when dropped; HTTP servers by URL with their headers),
//! lists their tools, and answers each [`Toolbox::call`] from a task of its own, bounded by the tool timeout.
//! It ends, and its children with it, when the last handle is dropped (the session and its turns are gone).
//!
//! A server that fails to start, or dies (its process exits, its connection closes), is reported once as a
//! [`ServerFailure`] — the harness turns it into a `response.error` item the UI shows — and is not offered
//! again for the rest of the session: no restart (a server that crashed once would likely crash the next turn
//! too, and a restart loop would hide that).
//!
//! Tool names the model sees are `<server>__<tool>`, cut to [`NAME_MAX`] characters of `[A-Za-z0-9_-]` (what
//! OpenAI and Anthropic both accept); a name made unclear by that (cut, or equal to another) gets a short hash.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use omnigent_proto::agent::spec::{McpTransport, Tool};
use rmcp::model::{CallToolRequestParams, ContentBlock};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ServiceError, ServiceExt as _};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::HarnessError;
use super::tools::{OUTPUT_CAP, TRUNCATED_MARKER};

/// The MCP servers of a session, by their name in the spec's `tools`.
pub type McpServers = Vec<(String, Tool)>;

/// Longest tool name offered to a model (OpenAI's limit; Anthropic's is larger).
pub const NAME_MAX: usize = 64;
/// Between a server's name and its tool's in the names the model sees.
pub const SEPARATOR: &str = "__";
/// How long a server may take to start and answer `initialize` and `tools/list`.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The variables of the runner's environment a stdio server inherits (what the official SDKs pass by default);
/// anything else it needs, credentials included, comes from its `env` in the spec, so the runner's vendor keys
/// never reach a server that was not given them.
pub const INHERITED_ENV: [&str; 8] = [
    "HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "TMPDIR",
];
/// How long the toolbox waits for its servers to close when it ends, before it kills them.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A tool offered to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct OfferedTool {
    /// The name the model sees and calls (`<server>__<tool>`, sanitized).
    pub name: String,
    pub description: String,
    /// The tool's JSON schema for its arguments (always an object schema).
    pub schema: Value,
}

/// A server that could not start, or stopped: what the session shows as an error item.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerFailure {
    /// The server's name in the spec.
    pub server: String,
    /// What failed, why, and what to do.
    pub message: String,
}

/// What a turn may offer: the live servers' tools, and the failures not reported yet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Offer {
    pub tools: Vec<OfferedTool>,
    pub failures: Vec<ServerFailure>,
}

/// What a call returned.
#[derive(Debug, Clone, PartialEq)]
pub struct CallOutcome {
    /// The tool's output as the model sees it (an `error: …` text when it failed).
    pub output: String,
    /// Set when the call found its server dead: report it (once; the server is not offered again).
    pub failure: Option<ServerFailure>,
}

enum Msg {
    Offer {
        workspace: PathBuf,
        reply: oneshot::Sender<Offer>,
    },
    Call {
        name: String,
        arguments: String,
        timeout: Duration,
        reply: oneshot::Sender<CallOutcome>,
    },
    /// A call found the server `index` dead; the call reports it.
    Died { index: usize },
}

/// The handle on a session's MCP servers. Dropping the last one stops them.
#[derive(Debug, Clone)]
pub struct Toolbox {
    tx: mpsc::UnboundedSender<Msg>,
}

/// The toolbox task is gone (it panicked); its tools are simply not there.
fn gone(server: &str) -> ServerFailure {
    ServerFailure {
        server: server.to_owned(),
        message: "the runner's MCP toolbox stopped unexpectedly; its tools are not available"
            .to_owned(),
    }
}

impl Toolbox {
    /// The toolbox of `servers` (the non-MCP entries are left out). Nothing starts before the first
    /// [`Toolbox::offer`].
    pub fn spawn(servers: McpServers) -> Toolbox {
        Self::spawn_with_start_timeout(servers, START_TIMEOUT)
    }

    /// [`Toolbox::spawn`] with another limit on each server's start than [`START_TIMEOUT`].
    pub fn spawn_with_start_timeout(servers: McpServers, start_timeout: Duration) -> Toolbox {
        let (tx, rx) = mpsc::unbounded_channel();
        let servers: Vec<Server> = servers
            .into_iter()
            .filter(|(_, spec)| spec.is_mcp())
            .map(|(name, spec)| Server {
                name,
                spec,
                state: State::Idle,
            })
            .collect();
        let weak = tx.downgrade();
        tokio::spawn(run(servers, start_timeout, rx, weak));
        Toolbox { tx }
    }

    /// The tools to offer this turn, and the failures to show; the first call starts the servers (their
    /// stdio children in `workspace`). Only cancellation is an error (the start goes on for the next turn).
    pub async fn offer(
        &self,
        workspace: &Path,
        cancel: &CancellationToken,
    ) -> Result<Offer, HarnessError> {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send(Msg::Offer {
            workspace: workspace.to_owned(),
            reply,
        });
        let answer = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(HarnessError::Interrupted),
            answer = rx => answer,
        };
        Ok(match (sent, answer) {
            (Ok(()), Ok(offer)) => offer,
            _ => Offer {
                tools: Vec::new(),
                failures: vec![gone("mcp")],
            },
        })
    }

    /// Call the offered tool `name` with the model's JSON `arguments`, within `timeout`. Only cancellation is
    /// an error; everything else is the tool's output.
    pub async fn call(
        &self,
        name: &str,
        arguments: &str,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<CallOutcome, HarnessError> {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send(Msg::Call {
            name: name.to_owned(),
            arguments: arguments.to_owned(),
            timeout,
            reply,
        });
        if sent.is_err() {
            return Ok(CallOutcome {
                output: format!("error: {}", gone(name).message),
                failure: None,
            });
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(HarnessError::Interrupted),
            outcome = rx => Ok(outcome.unwrap_or_else(|_| CallOutcome {
                output: format!("error: {}", gone(name).message),
                failure: None,
            })),
        }
    }
}

struct Server {
    name: String,
    spec: Tool,
    state: State,
}

enum State {
    Idle,
    Live {
        service: RunningService<RoleClient, ()>,
        /// (offered tool, the server's own name for it)
        tools: Vec<(OfferedTool, String)>,
    },
    /// Failed or stopped, and already reported.
    Down,
}

type Started = (RunningService<RoleClient, ()>, Vec<rmcp::model::Tool>);

async fn run(
    mut servers: Vec<Server>,
    start_timeout: Duration,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    weak: mpsc::WeakUnboundedSender<Msg>,
) {
    let mut started = false;
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Offer { workspace, reply } => {
                let mut failures = Vec::new();
                if !started {
                    started = true;
                    start_all(&mut servers, &workspace, start_timeout, &mut failures).await;
                }
                for server in &mut servers {
                    if let State::Live { service, .. } = &server.state
                        && (service.is_closed() || service.peer().is_transport_closed())
                    {
                        server.state = State::Down;
                        failures.push(stopped(
                            &server.name,
                            "its process exited or its connection closed",
                        ));
                    }
                }
                let tools = servers
                    .iter()
                    .filter_map(|s| match &s.state {
                        State::Live { tools, .. } => Some(tools.iter().map(|(t, _)| t.clone())),
                        _ => None,
                    })
                    .flatten()
                    .collect();
                for failure in &failures {
                    warn!(server = %failure.server, message = %failure.message, "MCP server unavailable");
                }
                let _ = reply.send(Offer { tools, failures });
            }
            Msg::Call {
                name,
                arguments,
                timeout,
                reply,
            } => {
                let found = servers
                    .iter()
                    .enumerate()
                    .find_map(|(index, s)| match &s.state {
                        State::Live { service, tools } => tools
                            .iter()
                            .find(|(offered, _)| offered.name == name)
                            .map(|(_, original)| {
                                (
                                    index,
                                    s.name.clone(),
                                    service.peer().clone(),
                                    original.clone(),
                                )
                            }),
                        _ => None,
                    });
                let Some((index, server, peer, original)) = found else {
                    let _ = reply.send(CallOutcome {
                        output: format!(
                            "error: no tool {name:?} is available (its MCP server is not running); use another tool"
                        ),
                        failure: None,
                    });
                    continue;
                };
                let weak = weak.clone();
                tokio::spawn(async move {
                    let outcome = call(&server, &peer, original, &arguments, timeout).await;
                    if outcome.failure.is_some()
                        && let Some(tx) = weak.upgrade()
                    {
                        let _ = tx.send(Msg::Died { index });
                    }
                    let _ = reply.send(outcome);
                });
            }
            Msg::Died { index } => {
                if let Some(server) = servers.get_mut(index) {
                    server.state = State::Down;
                }
            }
        }
    }
    // The session is gone: close every server; a child that does not exit is killed when dropped.
    for server in servers {
        if let State::Live { mut service, .. } = server.state {
            let _ = service.close_with_timeout(CLOSE_TIMEOUT).await;
        }
    }
}

fn stopped(server: &str, why: &str) -> ServerFailure {
    ServerFailure {
        server: server.to_owned(),
        message: format!(
            "the MCP server {server:?} stopped ({why}); its tools are not available for the rest of this session \
             (start a new session to retry it)"
        ),
    }
}

async fn start_all(
    servers: &mut [Server],
    workspace: &Path,
    start_timeout: Duration,
    failures: &mut Vec<ServerFailure>,
) {
    let starts = servers
        .iter()
        .map(|s| start(&s.name, &s.spec, workspace, start_timeout))
        .collect::<Vec<_>>();
    let results = futures_util::future::join_all(starts).await;
    let mut taken: HashSet<String> = HashSet::new();
    for (server, result) in servers.iter_mut().zip(results) {
        match result {
            Ok((service, listed)) => {
                let tools: Vec<(OfferedTool, String)> = listed
                    .into_iter()
                    .filter(|t| server.spec.allows(&t.name))
                    .map(|t| {
                        let name = offered_name(&server.name, &t.name, &taken);
                        taken.insert(name.clone());
                        let description = t.description.as_deref().unwrap_or("").to_owned();
                        let mut schema = Value::Object((*t.input_schema).clone());
                        if schema.get("type").is_none() {
                            schema["type"] = json!("object");
                        }
                        (
                            OfferedTool {
                                name,
                                description,
                                schema,
                            },
                            t.name.into_owned(),
                        )
                    })
                    .collect();
                info!(server = %server.name, tools = tools.len(), "MCP server started");
                server.state = State::Live { service, tools };
            }
            Err(message) => {
                server.state = State::Down;
                failures.push(ServerFailure {
                    server: server.name.clone(),
                    message,
                });
            }
        }
    }
}

/// Start one server and list its tools.
async fn start(
    name: &str,
    spec: &Tool,
    workspace: &Path,
    start_timeout: Duration,
) -> Result<Started, String> {
    let Some(transport) = spec.mcp() else {
        return Err(format!(
            "the MCP server {name:?} has neither a command nor a url (or both); fix tools.{name} in the agent spec"
        ));
    };
    let connect = async {
        let service = match transport {
            McpTransport::Stdio { command, args, env } => {
                let mut cmd = tokio::process::Command::new(command);
                // No process group of its own: it stays in the runner's, which the daemon stops as a whole.
                cmd.args(args)
                    .env_clear()
                    .envs(
                        INHERITED_ENV
                            .iter()
                            .filter_map(|k| std::env::var_os(k).map(|v| (*k, v))),
                    )
                    .envs(env)
                    .current_dir(workspace)
                    .kill_on_drop(true);
                let child = TokioChildProcess::new(cmd).map_err(|e| {
                    format!(
                        "the MCP server {name:?} could not start: {command:?}: {e}; check tools.{name}.command \
                         in the agent spec (is it installed and on PATH?)"
                    )
                })?;
                ().serve(child).await.map_err(|e| {
                    format!("the MCP server {name:?} ({command}) did not complete the MCP handshake: {e}")
                })?
            }
            McpTransport::Http { url, headers } => {
                install_crypto_provider();
                let config = http_config(url, headers).map_err(|e| {
                    format!(
                        "the MCP server {name:?} has a bad header: {e}; fix tools.{name}.headers"
                    )
                })?;
                let transport = StreamableHttpClientTransport::from_config(config);
                ().serve(transport).await.map_err(|e| {
                    format!(
                        "the MCP server {name:?} at {url} did not complete the MCP handshake: {e}"
                    )
                })?
            }
        };
        let tools = service
            .list_all_tools()
            .await
            .map_err(|e| format!("the MCP server {name:?} did not list its tools: {e}"))?;
        Ok::<Started, String>((service, tools))
    };
    match tokio::time::timeout(start_timeout, connect).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "the MCP server {name:?} did not start within {} s; check that tools.{name} runs an MCP server",
            start_timeout.as_secs_f64()
        )),
    }
}

/// rmcp's HTTP client is reqwest 0.13 with rustls and no crypto provider of its own: use the ring one the
/// workspace already builds, as the process default (a no-op when one is installed).
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn http_config(
    url: &str,
    headers: &BTreeMap<String, String>,
) -> Result<StreamableHttpClientTransportConfig, String> {
    let mut config = StreamableHttpClientTransportConfig::with_uri(url.to_owned());
    let mut custom = HashMap::new();
    for (key, value) in headers {
        if key.eq_ignore_ascii_case("authorization")
            && let Some(token) = value.strip_prefix("Bearer ")
        {
            config.auth_header = Some(token.to_owned());
            continue;
        }
        let name = http::HeaderName::try_from(key.as_str()).map_err(|e| format!("{key:?}: {e}"))?;
        // The value may be a secret: never in the message.
        let value = http::HeaderValue::try_from(value.as_str())
            .map_err(|_| format!("the value of {key:?} is not a valid header value"))?;
        custom.insert(name, value);
    }
    config.custom_headers = custom;
    Ok(config)
}

/// Call `tool` on `server`; a dead connection is a [`ServerFailure`].
async fn call(
    server: &str,
    peer: &rmcp::Peer<RoleClient>,
    tool: String,
    arguments: &str,
    timeout: Duration,
) -> CallOutcome {
    let error = |output: String| CallOutcome {
        output: format!("error: {output}"),
        failure: None,
    };
    let arguments = if arguments.trim().is_empty() {
        serde_json::Map::new()
    } else {
        match serde_json::from_str::<Value>(arguments) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return error(format!("the arguments of {tool} must be a JSON object")),
            Err(e) => {
                return error(format!(
                    "the arguments of {tool} are not valid JSON ({e}); send a JSON object"
                ));
            }
        }
    };
    let mut params = CallToolRequestParams::new(tool.clone());
    params.arguments = Some(arguments);
    match tokio::time::timeout(timeout, peer.call_tool(params)).await {
        Err(_) => error(format!(
            "the MCP tool {tool} of {server:?} did not answer within {} s",
            timeout.as_secs_f64()
        )),
        Ok(Ok(result)) => {
            let mut text = result
                .content
                .iter()
                .map(|block| match block {
                    ContentBlock::Text(t) => t.text.clone(),
                    ContentBlock::Image(_) => "[image]".to_owned(),
                    ContentBlock::Audio(_) => "[audio]".to_owned(),
                    ContentBlock::Resource(_) => "[resource]".to_owned(),
                    ContentBlock::ResourceLink(link) => format!("[resource link: {}]", link.uri),
                    _ => "[content]".to_owned(),
                })
                .collect::<Vec<_>>()
                .join("\n");
            if text.is_empty()
                && let Some(structured) = &result.structured_content
            {
                text = structured.to_string();
            }
            let output = cap(text);
            if result.is_error == Some(true) {
                error(output)
            } else {
                CallOutcome {
                    output,
                    failure: None,
                }
            }
        }
        Ok(Err(ServiceError::McpError(e))) => {
            error(format!("the MCP tool {tool} failed: {}", e.message))
        }
        Ok(Err(e @ (ServiceError::TransportClosed | ServiceError::TransportSend(_)))) => {
            let why = match e {
                ServiceError::TransportClosed => {
                    "its process exited or its connection closed".to_owned()
                }
                other => other.to_string(),
            };
            let failure = stopped(server, &why);
            CallOutcome {
                output: format!("error: {}", failure.message),
                failure: Some(failure),
            }
        }
        Ok(Err(e)) => error(format!("the MCP tool {tool} failed: {e}")),
    }
}

fn cap(mut text: String) -> String {
    if text.len() > OUTPUT_CAP {
        let mut cut = OUTPUT_CAP;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(TRUNCATED_MARKER);
    }
    text
}

/// `<server>__<tool>` in `[A-Za-z0-9_-]`, at most [`NAME_MAX`] characters, unique among `taken`.
pub fn offered_name(server: &str, tool: &str, taken: &HashSet<String>) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let full = format!("{}{SEPARATOR}{}", clean(server), clean(tool));
    if full.len() <= NAME_MAX && !taken.contains(&full) {
        return full;
    }
    // Cut or taken: a hash of the exact names keeps it apart.
    let mut salt = 0u32;
    loop {
        let hash = fnv1a(&format!("{server}\u{0}{tool}\u{0}{salt}"));
        let suffix = format!("_{:08x}", hash as u32);
        let keep = full.len().min(NAME_MAX - suffix.len());
        let name = format!("{}{suffix}", &full[..keep]);
        if !taken.contains(&name) {
            return name;
        }
        salt += 1;
    }
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_namespaced_sanitized_capped_and_unique() {
        let mut taken = HashSet::new();
        assert_eq!(offered_name("notes", "add", &taken), "notes__add");
        assert_eq!(
            offered_name("my server", "do.it!", &taken),
            "my_server__do_it_"
        );
        let long = offered_name(&"s".repeat(40), &"t".repeat(40), &taken);
        assert_eq!(long.len(), NAME_MAX);
        assert!(long.starts_with("ssss"));
        taken.insert("a_b__c".to_owned());
        let other = offered_name("a b", "c", &taken);
        assert_ne!(other, "a_b__c");
        assert!(other.starts_with("a_b__c_"));
        assert!(
            other
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        );
    }

    #[test]
    fn long_output_is_capped() {
        let out = cap("é".repeat(OUTPUT_CAP));
        assert!(out.len() <= OUTPUT_CAP + TRUNCATED_MARKER.len());
        assert!(out.ends_with(TRUNCATED_MARKER));
    }
}
