//! The agent of a session: fetched from the server when a session is initialised with an `agent_id`
//! (`GET {server}/v1/sessions/{id}/agent/contents`, the runner callback of the reference wire notes), unpacked
//! into a fresh directory under the runner's state directory, its `config.yaml` parsed and its `${VAR}`s
//! resolved from the runner's own environment. What the spec says (harness, model, auth, instructions, MCP
//! servers) then configures the session's turns.
//!
//! A 404 means the session runs a built-in agent: today's behaviour, from the runner's flags and environment.
//! Any other failure does not stop the runner: the session keeps the reason and each of its turns fails with it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use omnigent_proto::agent::bundle::{self, Limits};
use omnigent_proto::agent::spec::{AgentSpec, Tool};
use omnigent_proto::agent::{self as agent_spec, SPEC_FILE};
use omnigent_proto::headers::RUNNER_TUNNEL_TOKEN;
use serde_json::Value;
use tracing::{info, warn};

use crate::harness::openai::WireApi;
use crate::harness::{HarnessConfig, HarnessKind};

/// The header that asks the server for the bundle with the session's MCP selection applied (0.19.1's runner
/// sends it, value `1`).
pub(crate) const MCP_SELECTION_HEADER: &str = "x-omnigent-mcp-selection";

/// How long the whole agent download may take (the server waits on the session init meanwhile).
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// The runner's environment as `${VAR}`s in a spec see it: a snapshot taken at startup. Its `Debug` shows
/// the names only (the values include API keys).
#[derive(Clone, Default)]
pub struct SpecEnv(pub BTreeMap<String, String>);

impl SpecEnv {
    /// This process's environment.
    pub fn from_env() -> SpecEnv {
        SpecEnv(std::env::vars().collect())
    }
}

impl std::fmt::Debug for SpecEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// What the runner needs to fetch agents: the server, its token, where bundles go, the environment.
#[derive(Debug, Clone)]
pub(crate) struct AgentFetcher {
    pub client: reqwest::Client,
    pub server: omnigent_tunnel::client::ServerUrl,
    pub token: Option<String>,
    /// `<state_dir>/runner/agents`: one fresh directory per fetch, below the session's own.
    pub dir: PathBuf,
    pub env: SpecEnv,
}

/// A session's agent after its init.
#[derive(Debug, Clone)]
pub(crate) enum AgentLoad {
    /// No agent on the server for this session (404, or no `agent_id`): the runner's own settings.
    BuiltIn,
    Loaded(Box<LoadedAgent>),
    /// The agent could not be loaded; each turn fails with this message (it says what failed and why).
    Failed(String),
}

/// What a loaded spec sets for the session.
#[derive(Debug, Clone)]
pub(crate) struct LoadedAgent {
    pub name: Option<String>,
    pub harness: HarnessKind,
    /// The harness name as the spec wrote it (`openai-agents`…), for its defaults.
    pub harness_name: String,
    pub model: Option<String>,
    pub base_url: Option<String>,
    pub api_key: Option<String>,
    pub instructions: Option<String>,
    /// `executor.auth.wire_api` / `executor.config.wire_api` (or `api`).
    pub wire_api: Option<WireApi>,
    /// The spec's MCP servers (`tools` entries of `type: mcp`), by name.
    pub mcp_servers: Vec<(String, Tool)>,
    /// `executor.config.permission_mode` / `executor.permission_mode`: how an agent CLI asks before it uses a
    /// tool (Claude Code's `--permission-mode`; `bypassPermissions` or `skip`: it never asks).
    pub permission_mode: Option<String>,
    /// Where the bundle was unpacked.
    pub dir: PathBuf,
}

impl LoadedAgent {
    /// Apply what the spec sets over the runner's settings (`config`, from its environment).
    pub fn apply(&self, config: &mut HarnessConfig) {
        if self.model.is_some() {
            config.model.clone_from(&self.model);
        }
        if self.base_url.is_some() {
            config.base_url.clone_from(&self.base_url);
        }
        if self.api_key.is_some() {
            config.api_key.clone_from(&self.api_key);
        }
        config.instructions.clone_from(&self.instructions);
        if self.permission_mode.is_some() {
            config.permission_mode.clone_from(&self.permission_mode);
        }
        config.agent_mcp_servers.clone_from(&self.mcp_servers);
    }
}

/// Why an agent could not be loaded (rendered into [`AgentLoad::Failed`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum AgentError {
    #[error(
        "cannot fetch the agent from the server ({url}): {reason}; check that the server is reachable from this runner"
    )]
    Fetch { url: String, reason: String },
    #[error(
        "the server refused the agent download with HTTP {status}: {message}{}",
        if matches!(status, 401 | 403) { " (the runner's binding token is not accepted for this session)" } else { "" }
    )]
    Status { status: u16, message: String },
    #[error("the agent bundle from the server is not usable: {0}")]
    Bundle(#[from] bundle::BundleError),
    #[error("the agent spec cannot run on this runner: {0}")]
    Spec(#[from] agent_spec::spec::SpecError),
    #[error(
        "the agent spec's {path} is {value:?}, which is not an OpenAI API; use responses or chat"
    )]
    WireApi { path: String, value: String },
    #[error("cannot prepare the agent directory {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl AgentFetcher {
    /// The agent of session `session_id`, fetched, unpacked and parsed.
    pub async fn load(&self, session_id: &str) -> AgentLoad {
        match self.try_load(session_id).await {
            Ok(None) => AgentLoad::BuiltIn,
            Ok(Some(agent)) => {
                info!(
                    agent = agent.name.as_deref().unwrap_or(""),
                    harness = %agent.harness_name,
                    dir = %agent.dir.display(),
                    "agent loaded from the server"
                );
                AgentLoad::Loaded(Box::new(agent))
            }
            Err(e) => {
                warn!(error = %e, "cannot load the session's agent; its turns will fail with this error");
                AgentLoad::Failed(e.to_string())
            }
        }
    }

    async fn try_load(&self, session_id: &str) -> Result<Option<LoadedAgent>, AgentError> {
        let limits = Limits::default();
        let Some(bytes) = self.download(session_id, &limits).await? else {
            return Ok(None);
        };
        let dir = self.fresh_dir(session_id)?;
        bundle::unpack(&bytes, &dir, &limits)?;
        remove_older_than(&dir);
        let spec = AgentSpec::load(&dir.join(SPEC_FILE))?;
        let env = &self.env.0;
        let spec = spec.interpolate(|name| env.get(name).cloned())?;
        from_spec(&spec, dir).map(Some)
    }

    /// The bundle bytes, `None` on 404; capped at `limits.max_bundle_bytes`.
    async fn download(
        &self,
        session_id: &str,
        limits: &Limits,
    ) -> Result<Option<Vec<u8>>, AgentError> {
        let path = format!("/v1/sessions/{}/agent/contents", url_segment(session_id));
        let url = self
            .server
            .http(&path)
            .map_err(|reason| AgentError::Fetch {
                url: path.clone(),
                reason,
            })?;
        let fetch_error = |e: reqwest::Error| AgentError::Fetch {
            url: url.to_string(),
            reason: error_chain(&e),
        };
        let mut request = self
            .client
            .get(url.as_str())
            .timeout(FETCH_TIMEOUT)
            .header(MCP_SELECTION_HEADER, "1");
        if let Some(token) = &self.token {
            request = request.header(RUNNER_TUNNEL_TOKEN, token);
        }
        let mut response = request.send().await.map_err(fetch_error)?;
        let status = response.status().as_u16();
        if status == 404 {
            return Ok(None);
        }
        if self.token.is_none() && matches!(status, 401 | 403) {
            // A runner without a binding token (a loopback development runner) cannot fetch uploaded agents;
            // its sessions run the built-in agent, as before agents existed.
            warn!(
                status,
                "the server wants a binding token for the session's agent and this runner has none; \
                 running the built-in agent (pass --token to run uploaded agents)"
            );
            return Ok(None);
        }
        let mut body = Vec::new();
        let cap = usize::try_from(limits.max_bundle_bytes).unwrap_or(usize::MAX);
        while let Some(chunk) = response.chunk().await.map_err(fetch_error)? {
            if body.len() + chunk.len() > cap {
                if status == 200 {
                    return Err(AgentError::Bundle(bundle::BundleError::TooLarge {
                        size: (body.len() + chunk.len()) as u64,
                        limit: limits.max_bundle_bytes,
                    }));
                }
                break;
            }
            body.extend_from_slice(&chunk);
        }
        if status != 200 {
            let text = String::from_utf8_lossy(&body);
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| {
                    v.pointer("/error/message")
                        .or_else(|| v.get("message"))
                        .or_else(|| v.get("detail"))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| text.chars().take(300).collect());
            return Err(AgentError::Status { status, message });
        }
        Ok(Some(body))
    }

    /// A new, not yet existing directory for one download of the session's agent (its parent created).
    fn fresh_dir(&self, session_id: &str) -> Result<PathBuf, AgentError> {
        let parent = self.dir.join(file_name(session_id));
        std::fs::create_dir_all(&parent).map_err(|source| AgentError::Io {
            path: parent.clone(),
            source,
        })?;
        Ok(parent.join(omnigent_proto::ids::new_id()))
    }
}

/// Best effort: remove the earlier downloads of the same session's agent (siblings of `dir`), so re-inits (one
/// per server reconnect) do not pile up bundles. A failure only leaves a directory behind.
fn remove_older_than(dir: &std::path::Path) {
    let Some(parent) = dir.parent() else { return };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path != dir
            && let Err(e) = std::fs::remove_dir_all(&path)
        {
            warn!(path = %path.display(), error = %e, "cannot remove an earlier download of the session's agent");
        }
    }
}

/// The session's settings from a resolved spec unpacked in `dir`.
fn from_spec(spec: &AgentSpec, dir: PathBuf) -> Result<LoadedAgent, AgentError> {
    let harness = spec.harness()?;
    let harness_name = spec
        .harness_name()
        .map(|(_, name)| name.to_owned())
        .unwrap_or_default();
    let executor = spec.executor.as_ref();
    let auth = executor.and_then(|e| e.auth.as_ref());
    let connection = executor.and_then(|e| e.connection.as_ref());
    let set = |v: Option<&String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let api_key = set(auth.and_then(|a| a.api_key.as_ref()))
        .or_else(|| set(connection.and_then(|c| c.api_key.as_ref())));
    let base_url = set(auth.and_then(|a| a.base_url.as_ref()))
        .or_else(|| set(connection.and_then(|c| c.base_url.as_ref())));
    let extras = [
        auth.map(|a| &a.extra),
        executor.and_then(|e| e.config.as_ref()).map(|c| &c.extra),
        executor.map(|e| &e.extra),
    ];
    let mut wire_api = None;
    for (field, extra) in ["auth", "config", "executor"].iter().zip(extras) {
        let Some(extra) = extra else { continue };
        for key in ["wire_api", "api"] {
            if let Some(value) = extra.get(key).and_then(Value::as_str) {
                let parsed = WireApi::parse(value).ok_or_else(|| AgentError::WireApi {
                    path: match *field {
                        "executor" => format!("executor.{key}"),
                        field => format!("executor.{field}.{key}"),
                    },
                    value: value.to_owned(),
                })?;
                wire_api = wire_api.or(Some(parsed));
            }
        }
    }
    let permission_mode = extras[1..]
        .iter()
        .flatten()
        .find_map(|extra| extra.get("permission_mode").and_then(Value::as_str))
        .map(|mode| mode.trim().to_owned())
        .filter(|mode| !mode.is_empty());
    Ok(LoadedAgent {
        name: spec.name.clone(),
        permission_mode,
        harness,
        harness_name,
        model: spec
            .model()
            .map(str::to_owned)
            .filter(|m| !m.trim().is_empty()),
        base_url,
        api_key,
        instructions: spec.instructions(&dir)?,
        wire_api,
        mcp_servers: spec
            .tools
            .iter()
            .filter(|(_, tool)| tool.is_mcp())
            .map(|(name, tool)| (name.clone(), tool.clone()))
            .collect(),
        dir,
    })
}

/// `e` and its sources, `: `-separated.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `id` as one URL path segment (server ids are hex; anything else is percent-encoded).
fn url_segment(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `id` as one safe file name.
fn file_name(id: &str) -> String {
    let name: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(128)
        .collect();
    if name.is_empty() {
        "session".to_owned()
    } else {
        name
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<LoadedAgent, AgentError> {
        from_spec(&AgentSpec::parse(yaml).unwrap(), ".".into())
    }

    #[test]
    fn connection_is_the_fallback_of_auth_and_mcp_servers_are_kept() {
        let agent = load(
            "executor:
  harness: open-responses
  connection: {base_url: 'http://conn/v1', api_key: ' sk-conn '}
tools:
  files: {type: mcp, command: mcp-files, args: ['--root', '.']}
  web: {type: mcp, url: 'http://mcp.local/mcp'}
  helper: {type: agent}
",
        )
        .unwrap();
        assert_eq!(agent.harness, HarnessKind::OpenAi);
        assert_eq!(agent.harness_name, "open-responses");
        assert_eq!(agent.base_url.as_deref(), Some("http://conn/v1"));
        assert_eq!(agent.api_key.as_deref(), Some("sk-conn"));
        let names: Vec<&str> = agent.mcp_servers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["files", "web"]);
        assert_eq!(agent.instructions, None);
        assert_eq!(agent.wire_api, None);
    }

    #[test]
    fn wire_api_is_read_from_auth_or_config_and_a_bad_one_names_its_field() {
        let agent = load("executor: {harness: openai, config: {wire_api: responses}}\n").unwrap();
        assert_eq!(agent.wire_api, Some(WireApi::Responses));
        let err = load("executor: {harness: openai, auth: {api: soap}}\n").unwrap_err();
        assert!(
            err.to_string().contains("executor.auth.api") && err.to_string().contains("soap"),
            "{err}"
        );
        let err = load("executor: {model: x}\n").unwrap_err();
        assert!(err.to_string().contains("executor.harness"), "{err}");
    }

    #[test]
    fn the_permission_mode_is_read_from_config_or_the_executor() {
        let agent =
            load("executor: {harness: claude-sdk, config: {permission_mode: bypassPermissions}}\n")
                .unwrap();
        assert_eq!(agent.permission_mode.as_deref(), Some("bypassPermissions"));
        let agent =
            load("executor: {harness: claude-sdk, permission_mode: ' default '}\n").unwrap();
        assert_eq!(agent.permission_mode.as_deref(), Some("default"));
        let agent = load("executor: {harness: claude-sdk}\n").unwrap();
        assert_eq!(agent.permission_mode, None);
    }

    #[test]
    fn session_ids_become_safe_names() {
        assert_eq!(url_segment("ab/../c d"), "ab%2F..%2Fc%20d");
        assert_eq!(file_name("../x"), "___x");
        assert_eq!(file_name(""), "session");
    }

    #[test]
    fn the_spec_environment_shows_names_only() {
        let env = SpecEnv([("OPENAI_API_KEY".to_owned(), "sk-secret".to_owned())].into());
        let shown = format!("{env:?}");
        assert!(shown.contains("OPENAI_API_KEY") && !shown.contains("sk-secret"));
    }
}
