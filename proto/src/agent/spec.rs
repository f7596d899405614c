//! The agent spec (`config.yaml`), parsed in one place.
//!
//! Fields follow Python omnigent 0.19.1 (reference wire notes, "Agent specs"). Every struct keeps the fields it
//! does not know in `extra`, so a spec written for a newer omnigent still parses, and nothing is lost when it is
//! written back. Values may hold `${ENV_VAR}`: they are kept as written at parse and upload time and resolved
//! only by [`AgentSpec::interpolate`], which the runner calls with its own environment.
//!
//! YAML crate: `serde_norway`. `serde_yaml` is archived; `serde_norway` is its maintained fork with the same
//! API and the same libyaml-based parser (so the same YAML 1.1 behaviour Python's PyYAML users expect, and the
//! same alias-expansion and recursion limits against billion-laughs documents). `serde_yaml_ng` is a fork of
//! the same code with fewer releases; `serde-saphyr` is a promising pure-Rust parser but younger and with a
//! different API, which we did not want to bet the upload path on.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::harness::Harness;

/// Unknown fields, kept and ignored.
pub type Extra = BTreeMap<String, Value>;

/// A parsed agent spec.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AgentSpec {
    /// Kept as written (`1` or `"1"`); not interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_version: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Inline text or a file relative to the spec (see [`AgentSpec::instructions_source`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Same as `prompt`; when both are set, `instructions` wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<Executor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_env: Option<OsEnv>,
    /// Tools by name: MCP servers (`type: mcp`) and sub-agent declarations (`type: agent`), in name order,
    /// beside 0.19.1's `tools` settings (`agents: [..]`, `builtins`, `timeout`, …), kept as written.
    #[serde(default, skip_serializing_if = "Tools::is_empty")]
    pub tools: Tools,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `executor`: which harness runs the agent, with which model and credentials.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Executor {
    /// `omnigent` in the reference's examples; kept, not interpreted.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harness: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<Connection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ExecutorConfig>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `executor.config`: the harness may be named here instead of in `executor.harness`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ExecutorConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harness: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `executor.auth`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Auth {
    /// `api_key`, `provider`, …; kept as written.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `executor.connection`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Connection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `os_env`: where the agent's local file and shell tools run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct OsEnv {
    /// `caller_process`, …; kept as written.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<Sandbox>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `os_env.sandbox`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Sandbox {
    /// `none`, `auto`, …; kept as written.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Keys of `tools` that are settings, not tool entries (0.19.1's `_TOOLS_CONFIG_KEYS`): `agents` lists
/// sub-agent names (`agents: [claude_code, codex]`, as Python's `polly` writes), `builtins`, `timeout`,
/// `retry`, `sandbox`.
pub const TOOLS_SETTINGS: &[&str] = &["agents", "builtins", "timeout", "retry", "sandbox"];

/// The `tools` block: its entries by name (dereferences to them) and its settings ([`TOOLS_SETTINGS`]),
/// which are kept as written and written back in the same block.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tools {
    pub entries: BTreeMap<String, Tool>,
    pub settings: BTreeMap<String, Value>,
}

impl Tools {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.settings.is_empty()
    }
}

impl std::ops::Deref for Tools {
    type Target = BTreeMap<String, Tool>;
    fn deref(&self) -> &Self::Target {
        &self.entries
    }
}

impl<'a> IntoIterator for &'a Tools {
    type Item = (&'a String, &'a Tool);
    type IntoIter = std::collections::btree_map::Iter<'a, String, Tool>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter()
    }
}

impl Serialize for Tools {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.entries.len() + self.settings.len()))?;
        for (k, v) in &self.settings {
            map.serialize_entry(k, v)?;
        }
        for (k, v) in &self.entries {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Tools {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Tools, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Tools;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of tools by name")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Tools, A::Error> {
                let mut tools = Tools::default();
                while let Some(key) = map.next_key::<String>()? {
                    if TOOLS_SETTINGS.contains(&key.as_str()) {
                        let value = map.next_value::<Value>()?;
                        tools.settings.insert(key, value);
                    } else {
                        let tool = map.next_value::<Tool>()?;
                        tools.entries.insert(key, tool);
                    }
                }
                Ok(tools)
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// One entry of `tools`. Which fields matter depends on `type` (see [`Tool::mcp`], [`Tool::is_sub_agent`]);
/// a sub-agent's declaration (its path or inline spec) is kept in `extra` as written.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Tool {
    /// `mcp`, `agent`, …; an entry without `type` but with `command` or `url` is an MCP server.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The server's tools offered to the model; `None` offers all of them.
    #[serde(default, alias = "tools", skip_serializing_if = "Option::is_none")]
    pub allowed_tools: Option<Vec<String>>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// How the runner reaches an MCP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McpTransport<'a> {
    /// A child process speaking MCP on stdin/stdout.
    Stdio {
        command: &'a str,
        args: &'a [String],
        env: &'a BTreeMap<String, String>,
    },
    /// A streamable-HTTP server.
    Http {
        url: &'a str,
        headers: &'a BTreeMap<String, String>,
    },
}

impl Tool {
    /// Whether this entry declares an MCP server (`type: mcp`, or no `type` and a `command` or `url`).
    pub fn is_mcp(&self) -> bool {
        match self.kind.as_deref() {
            Some(kind) => kind == "mcp",
            None => self.command.is_some() || self.url.is_some(),
        }
    }

    /// Whether this entry declares a sub-agent (`type: agent`); kept, not run (a later issue).
    pub fn is_sub_agent(&self) -> bool {
        self.kind.as_deref() == Some("agent")
    }

    /// The MCP server this entry declares, if it is a valid one ([`AgentSpec::validate`] says why not).
    pub fn mcp(&self) -> Option<McpTransport<'_>> {
        if !self.is_mcp() {
            return None;
        }
        match (&self.command, &self.url) {
            (Some(command), None) => Some(McpTransport::Stdio {
                command,
                args: &self.args,
                env: &self.env,
            }),
            (None, Some(url)) => Some(McpTransport::Http {
                url,
                headers: &self.headers,
            }),
            _ => None,
        }
    }

    /// Whether the model may be offered `name`, one of this server's tools.
    pub fn allows(&self, name: &str) -> bool {
        self.allowed_tools
            .as_ref()
            .is_none_or(|list| list.iter().any(|allowed| allowed == name))
    }
}

/// Why a spec was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecErrorKind {
    /// Not YAML or JSON, or a field of the wrong type.
    Syntax,
    /// A field the spec needs is not set.
    Missing,
    /// A harness name the harness table does not know.
    UnknownHarness,
    /// An instructions file that is not in the agent's directory or bundle.
    MissingFile,
    /// A value that is set but cannot work (an instructions path outside the agent, an MCP server with both
    /// `command` and `url`, …).
    Invalid,
    /// A `${VAR}` whose variable is not set on the runner.
    UnsetVariable,
}

/// A spec that cannot run: the field (`executor.harness`, `tools.search.command`, … ; `$` for the document
/// itself) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("agent spec field {path}: {reason}")]
pub struct SpecError {
    pub path: String,
    pub kind: SpecErrorKind,
    pub reason: String,
}

impl SpecError {
    fn new(path: impl Into<String>, kind: SpecErrorKind, reason: impl Into<String>) -> SpecError {
        SpecError {
            path: path.into(),
            kind,
            reason: reason.into(),
        }
    }
}

/// Where the agent's instructions come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstructionsSource<'a> {
    Inline(&'a str),
    /// A path relative to the spec's directory (or the bundle's root), checked to stay inside it.
    File(&'a str),
}

impl AgentSpec {
    /// Parses a spec from YAML, or JSON (a document starting with `{`). A field of the wrong type is reported
    /// with its path.
    pub fn parse(text: &str) -> Result<AgentSpec, SpecError> {
        // A document that is not YAML (or JSON) at all is reported for the whole document, with its line and
        // column; only then are fields checked, so a wrong type names its field.
        if text.trim_start().starts_with('{') {
            serde_json::from_str::<Value>(text).map_err(|e| document_error(&e))?;
            let de = &mut serde_json::Deserializer::from_str(text);
            return serde_path_to_error::deserialize(de)
                .map_err(|e| syntax_error(e.path(), e.inner()));
        }
        serde_norway::from_str::<serde_norway::Value>(text).map_err(|e| document_error(&e))?;
        let de = serde_norway::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| syntax_error(e.path(), e.inner()))
    }

    /// Reads and parses the spec at `path` (an agent YAML, or a directory's `config.yaml`).
    pub fn load(path: &Path) -> Result<AgentSpec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            SpecError::new(
                "$",
                SpecErrorKind::MissingFile,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        AgentSpec::parse(&text)
    }

    /// The harness name as written (`executor.harness`, else `executor.config.harness`), with its field path.
    pub fn harness_name(&self) -> Option<(&'static str, &str)> {
        let executor = self.executor.as_ref()?;
        if let Some(name) = executor.harness.as_deref() {
            return Some(("executor.harness", name));
        }
        let name = executor.config.as_ref()?.harness.as_deref()?;
        Some(("executor.config.harness", name))
    }

    /// The harness that runs this agent, resolved through the harness table (names and aliases).
    pub fn harness(&self) -> Result<Harness, SpecError> {
        let Some((path, name)) = self.harness_name() else {
            let path = if self.executor.is_none() {
                "executor"
            } else {
                "executor.harness"
            };
            return Err(SpecError::new(
                path,
                SpecErrorKind::Missing,
                "no harness: set executor.harness (or executor.config.harness), e.g. openai-agents or claude-sdk",
            ));
        };
        let harness = Harness::parse(name)
            .map_err(|e| SpecError::new(path, SpecErrorKind::UnknownHarness, e.to_string()))?;
        let in_config = self
            .executor
            .as_ref()
            .and_then(|e| e.config.as_ref()?.harness.as_deref());
        if let Some(other) = in_config
            && path == "executor.harness"
            && Harness::parse(other).ok() != Some(harness)
        {
            return Err(SpecError::new(
                "executor.config.harness",
                SpecErrorKind::Invalid,
                format!("{other:?} disagrees with executor.harness {name:?}; set one of them"),
            ));
        }
        Ok(harness)
    }

    /// The model, if the spec names one.
    pub fn model(&self) -> Option<&str> {
        self.executor.as_ref()?.model.as_deref()
    }

    /// Where the instructions come from, with the field they were read from (`instructions` wins over
    /// `prompt`). A single-line value without whitespace that contains `/` or `.` followed by an extension
    /// (`system.md`, `prompts/agent.txt`) is a file; anything else is the text itself.
    pub fn instructions_source(&self) -> Option<(&'static str, InstructionsSource<'_>)> {
        let (path, value) = match (&self.instructions, &self.prompt) {
            (Some(text), _) => ("instructions", text.as_str()),
            (None, Some(text)) => ("prompt", text.as_str()),
            (None, None) => return None,
        };
        let trimmed = value.trim();
        let looks_like_path = !trimmed.is_empty()
            && !trimmed.contains(char::is_whitespace)
            && (trimmed.contains('/')
                || trimmed
                    .rsplit_once('.')
                    .is_some_and(|(stem, ext)| is_extension(stem, ext)));
        if looks_like_path {
            Some((path, InstructionsSource::File(trimmed)))
        } else {
            Some((path, InstructionsSource::Inline(value)))
        }
    }

    /// The instructions text, reading a file relative to `dir` (the spec's directory, or the unpacked bundle).
    pub fn instructions(&self, dir: &Path) -> Result<Option<String>, SpecError> {
        let Some((field, source)) = self.instructions_source() else {
            return Ok(None);
        };
        match source {
            InstructionsSource::Inline(text) => Ok(Some(text.to_owned())),
            InstructionsSource::File(file) => {
                let rel = relative_file(field, file)?;
                std::fs::read_to_string(dir.join(&rel))
                    .map(Some)
                    .map_err(|e| {
                        SpecError::new(
                            field,
                            SpecErrorKind::MissingFile,
                            format!("cannot read {file:?}: {e}"),
                        )
                    })
            }
        }
    }

    /// Checks that the spec can run, as the server does at upload: a harness the table knows, an instructions
    /// file that exists (`has_file` answers for a path relative to the spec, `/`-separated, as in the bundle),
    /// MCP servers with exactly one of `command` and `url`. Unset `${VAR}`s are not checked: they belong to the
    /// runner's machine.
    pub fn validate(&self, has_file: impl Fn(&str) -> bool) -> Result<(), SpecError> {
        self.harness()?;
        if let Some((field, InstructionsSource::File(file))) = self.instructions_source() {
            let rel = relative_file(field, file)?;
            if !has_file(&rel) {
                return Err(SpecError::new(
                    field,
                    SpecErrorKind::MissingFile,
                    format!("instructions file {file:?} is not in the agent's directory"),
                ));
            }
        }
        for (name, tool) in &self.tools {
            if !tool.is_mcp() {
                continue;
            }
            let path = format!("tools.{name}");
            match (&tool.command, &tool.url) {
                (Some(_), Some(_)) => {
                    return Err(SpecError::new(
                        path,
                        SpecErrorKind::Invalid,
                        "an MCP server has either command (stdio) or url (HTTP), not both",
                    ));
                }
                (None, None) => {
                    return Err(SpecError::new(
                        format!("{path}.command"),
                        SpecErrorKind::Missing,
                        "an MCP server needs command (stdio) or url (HTTP)",
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// [`AgentSpec::validate`] against a directory on disk (an agent directory, or an unpacked bundle).
    pub fn validate_in_dir(&self, dir: &Path) -> Result<(), SpecError> {
        self.validate(|rel| dir.join(rel).is_file())
    }

    /// The spec with every `${VAR}` in its string values replaced by `get(VAR)`; `$${` writes a literal `${`.
    /// The runner calls this with its environment. A variable `get` does not know is an error naming the field
    /// and the variable, so the runner can say what to set.
    ///
    /// Left as written: `prompt` and `instructions` (text for the model, where `${…}` is as likely a shell
    /// snippet as a variable; an instructions file is never interpolated either) and the unknown top-level
    /// fields (ignored, so an unset variable there must not stop the agent).
    pub fn interpolate(
        &self,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<AgentSpec, SpecError> {
        let verbatim = AgentSpec {
            prompt: None,
            instructions: None,
            extra: Extra::new(),
            ..self.clone()
        };
        let mut value = serde_json::to_value(verbatim)
            .map_err(|e| SpecError::new("$", SpecErrorKind::Invalid, e.to_string()))?;
        interpolate_value(&mut value, &mut String::new(), &get)?;
        let resolved: AgentSpec = serde_path_to_error::deserialize(value)
            .map_err(|e| syntax_error(e.path(), e.inner()))?;
        Ok(AgentSpec {
            prompt: self.prompt.clone(),
            instructions: self.instructions.clone(),
            extra: self.extra.clone(),
            ..resolved
        })
    }
}

fn is_extension(stem: &str, ext: &str) -> bool {
    !stem.is_empty()
        && !ext.is_empty()
        && ext.len() <= 8
        && ext.chars().all(|c| c.is_ascii_alphanumeric())
}

/// An instructions file made safe by [`super::relative_path`] (relative, inside the agent).
fn relative_file(field: &str, file: &str) -> Result<String, SpecError> {
    super::relative_path(file).map_err(|reason| {
        SpecError::new(
            field,
            SpecErrorKind::Invalid,
            format!("instructions file {file:?}: {reason}"),
        )
    })
}

fn document_error(e: &impl std::fmt::Display) -> SpecError {
    SpecError::new(
        "$",
        SpecErrorKind::Syntax,
        format!("not valid YAML or JSON: {e}"),
    )
}

fn syntax_error(path: &serde_path_to_error::Path, inner: &impl std::fmt::Display) -> SpecError {
    let path = path.to_string();
    let path = if path == "." { "$".to_owned() } else { path };
    SpecError::new(path, SpecErrorKind::Syntax, inner.to_string())
}

fn interpolate_value(
    value: &mut Value,
    path: &mut String,
    get: &impl Fn(&str) -> Option<String>,
) -> Result<(), SpecError> {
    match value {
        Value::String(text) => *text = interpolate_str(text, path, get)?,
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                interpolate_value(item, path, get)?;
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                interpolate_value(item, path, get)?;
                path.truncate(len);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// Replaces `${VAR}` in one string (`$${` is a literal `${`).
pub fn interpolate_str(
    text: &str,
    path: &str,
    get: &impl Fn(&str) -> Option<String>,
) -> Result<String, SpecError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                return Err(SpecError::new(
                    path,
                    SpecErrorKind::Invalid,
                    format!("unclosed ${{ in {text:?}"),
                ));
            };
            let name = &after[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(SpecError::new(
                    path,
                    SpecErrorKind::Invalid,
                    format!("${{{name}}} is not a variable name"),
                ));
            }
            let value = get(name).ok_or_else(|| {
                SpecError::new(
                    path,
                    SpecErrorKind::UnsetVariable,
                    format!("${{{name}}} is not set in the runner's environment; set {name}"),
                )
            })?;
            out.push_str(&value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}
