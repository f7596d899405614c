//! Agents from the terminal: what `omnigent run PATH` uploads (the PATH rule, the spec checked locally with its
//! field paths, `--harness` / `--model` written into the uploaded `config.yaml`, the bundle), and
//! `omnigent agents [list] [--json]` (the server's built-in and uploaded agents), `omnigent agents check PATH`
//! (the same local check and bundle, without a server).
//!
//! The PATH rule ([`agent_path`]): the first positional word of `run` is an agent when it is an existing agent
//! file (`.yaml`, `.yml`, `.json`) or an existing directory holding `config.yaml`; a word without whitespace
//! that is written as a path (starts with `/`, `./`, `../` or `~/`, is `.` or `..`, or ends in `.yaml`,
//! `.yml`, `.json`) is an agent too and must exist. Every other word starts the prompt. `--agent PATH` says it
//! explicitly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use omnigent_proto::agent::SPEC_FILE;
use omnigent_proto::agent::bundle::{self, BundleError, BundleFile, Limits};
use omnigent_proto::agent::spec::{AgentSpec, InstructionsSource, SpecError, SpecErrorKind};
use serde_json::{Value, json};

use crate::exit::ConfigError;

/// File name endings of an agent spec given as a single file.
const SPEC_EXTENSIONS: [&str; 3] = [".yaml", ".yml", ".json"];

/// Whether `word`, the first positional of `run`, names an agent (file or directory) rather than starting the
/// prompt; see the module docs for the rule. A word that is written as a path but does not exist is still a
/// path (so a typo is an error, not a prompt).
pub(crate) fn agent_path(word: &str) -> Option<PathBuf> {
    if word.is_empty() {
        return None;
    }
    let path = Path::new(word);
    if is_agent_file(path) || path.join(SPEC_FILE).is_file() {
        return Some(path.to_path_buf());
    }
    if word.contains(char::is_whitespace) {
        return None;
    }
    let written_as_path = matches!(word, "." | "..")
        || ["/", "./", "../", "~/"].iter().any(|p| word.starts_with(p))
        || SPEC_EXTENSIONS.iter().any(|ext| word.ends_with(ext));
    written_as_path.then(|| path.to_path_buf())
}

fn is_agent_file(path: &Path) -> bool {
    path.is_file()
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| SPEC_EXTENSIONS.iter().any(|ext| n.ends_with(ext)))
}

/// `~/x` as the shell would have expanded it (a quoted `~` reaches us as written).
fn expand_home(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path.to_path_buf(),
    }
}

/// What `--harness` and `--model` change in the uploaded spec.
#[derive(Debug, Default, Clone)]
pub(crate) struct Overrides {
    pub harness: Option<String>,
    pub model: Option<String>,
}

/// An agent ready to upload.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// The spec as uploaded (overrides applied).
    pub spec: AgentSpec,
    /// The `.tar.gz`.
    pub bundle: Vec<u8>,
    pub files: usize,
}

impl Prepared {
    /// The agent's name, else its file or directory name.
    pub fn name(&self, path: &Path) -> String {
        self.spec.name.clone().unwrap_or_else(|| {
            let p = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
            let stem = if p.is_dir() {
                p.file_name()
            } else {
                p.file_stem()
            };
            stem.and_then(|s| s.to_str()).unwrap_or("agent").to_owned()
        })
    }

    /// The harness as written in the spec (after overrides).
    pub fn harness(&self) -> String {
        self.spec
            .harness_name()
            .map(|(_, name)| name.to_owned())
            .unwrap_or_default()
    }
}

/// A spec that cannot run, or an agent that cannot be bundled: exit 78 with what to fix.
fn spec_error(file: &Path, e: &SpecError) -> anyhow::Error {
    ConfigError(format!(
        "{}: {e}; fix the spec and run again",
        file.display()
    ))
    .into()
}

fn bundle_error(what: &Path, e: &BundleError) -> anyhow::Error {
    let hint = match e {
        BundleError::TooLarge { .. }
        | BundleError::UnpackedTooLarge { .. }
        | BundleError::TooManyEntries { .. }
        | BundleError::ExpansionRatio { .. } => {
            "; an agent directory should hold only config.yaml and the files it needs: move the rest out"
        }
        BundleError::UnsafeEntry { .. } => {
            "; replace links with copies of their files, or move them out of the agent directory"
        }
        _ => "",
    };
    ConfigError(format!("cannot bundle {}: {e}{hint}", what.display())).into()
}

/// Read the agent at `path` (a spec file, or a directory holding `config.yaml`), apply `overrides`, check that
/// it can run (the server's upload check, here first so the error names the field before anything is sent),
/// and bundle it. Every refusal is a [`ConfigError`] (exit 78).
pub(crate) fn prepare(
    path: &Path,
    overrides: &Overrides,
    limits: &Limits,
    progress: &dyn Fn(&str),
) -> Result<Prepared> {
    let path = expand_home(path);
    let meta = std::fs::metadata(&path).map_err(|e| {
        ConfigError(format!(
            "agent {}: {e}; pass an agent YAML/JSON file or a directory holding {SPEC_FILE}",
            path.display()
        ))
    })?;
    let is_dir = meta.is_dir();
    let (dir, spec_file) = if is_dir {
        let spec_file = path.join(SPEC_FILE);
        if !spec_file.is_file() {
            return Err(ConfigError(format!(
                "agent directory {} has no {SPEC_FILE}; an agent directory holds its spec as {SPEC_FILE}",
                path.display()
            ))
            .into());
        }
        (path.clone(), spec_file)
    } else {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        (dir, path.clone())
    };
    let meta = std::fs::metadata(&spec_file)
        .with_context(|| format!("cannot read {}", spec_file.display()))?;
    if meta.len() > limits.max_spec_bytes {
        return Err(bundle_error(
            &spec_file,
            &BundleError::SpecTooLarge {
                size: meta.len(),
                limit: limits.max_spec_bytes,
            },
        ));
    }
    let text = std::fs::read_to_string(&spec_file).map_err(|e| {
        ConfigError(format!(
            "cannot read the agent spec {}: {e}",
            spec_file.display()
        ))
    })?;
    // The spec as written must parse (so a YAML error names its line, and a wrong type its field) before
    // anything is rewritten.
    AgentSpec::parse(&text).map_err(|e| spec_error(&spec_file, &e))?;
    let text = apply_overrides(&text, overrides).map_err(|e| spec_error(&spec_file, &e))?;
    let spec = AgentSpec::parse(&text).map_err(|e| spec_error(&spec_file, &e))?;
    spec.validate_in_dir(&dir)
        .map_err(|e| spec_error(&spec_file, &e))?;

    let mut files = if is_dir {
        let (count, bytes) = measure(&dir, limits)?;
        progress(&format!(
            "bundling {} ({count} files, {})…",
            dir.display(),
            human_bytes(bytes)
        ));
        let packed = bundle::pack_dir(&dir, limits).map_err(|e| bundle_error(&dir, &e))?;
        bundle::inspect(&packed, limits)
            .map_err(|e| bundle_error(&dir, &e))?
            .files
    } else {
        // A lone spec file: the bundle holds it as config.yaml, with the instructions file it names.
        let mut files = BTreeMap::new();
        if let Some((_, InstructionsSource::File(rel))) = spec.instructions_source() {
            let rel = canonical(rel);
            let contents = std::fs::read(dir.join(&rel))
                .with_context(|| format!("cannot read the instructions file {rel}"))?;
            files.insert(
                rel,
                BundleFile {
                    contents,
                    executable: false,
                },
            );
        }
        files
    };
    files.insert(
        SPEC_FILE.to_owned(),
        BundleFile {
            contents: text.into_bytes(),
            executable: false,
        },
    );
    let count = files.len();
    let bundle = bundle::pack(&files, limits).map_err(|e| bundle_error(&path, &e))?;
    Ok(Prepared {
        spec,
        bundle,
        files: count,
    })
}

/// Count the files and their bytes under `dir` before reading any of them, so a directory far over the caps (a
/// repository, a home directory) is refused at once with its size rather than read into memory.
fn measure(dir: &Path, limits: &Limits) -> Result<(usize, u64)> {
    let mut count = 0usize;
    let mut bytes = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in
            std::fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))?
        {
            let entry = entry.with_context(|| format!("cannot read {}", d.display()))?;
            let kind = entry.file_type()?;
            // Directories are implied by the files' paths (the bundle has no entry for them).
            if kind.is_dir() {
                stack.push(entry.path());
                continue;
            }
            count += 1;
            bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            if count > limits.max_entries {
                return Err(bundle_error(
                    dir,
                    &BundleError::TooManyEntries {
                        limit: limits.max_entries,
                    },
                ));
            }
            if bytes > limits.max_unpacked_bytes {
                return Err(bundle_error(
                    dir,
                    &BundleError::UnpackedTooLarge {
                        limit: limits.max_unpacked_bytes,
                    },
                ));
            }
        }
    }
    Ok((count, bytes))
}

pub(crate) fn human_bytes(n: u64) -> String {
    if n < 1024 {
        format!("{n} B")
    } else if n < 1024 * 1024 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
    }
}

/// The spec text with `--harness` / `--model` written in: `executor.harness` (and `executor.config.harness`
/// when the spec sets it, so the two never disagree) and `executor.model`. A JSON spec stays JSON, a YAML one
/// YAML (its comments are not kept in the uploaded copy; the file on disk is never touched). No override:
/// the text as written.
pub(crate) fn apply_overrides(text: &str, overrides: &Overrides) -> Result<String, SpecError> {
    if overrides.harness.is_none() && overrides.model.is_none() {
        return Ok(text.to_owned());
    }
    let mut doc: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| override_error("$", &e.to_string()))?
    } else {
        serde_norway::from_str(text).map_err(|e| override_error("$", &e.to_string()))?
    };
    let Some(root) = doc.as_object_mut() else {
        return Err(override_error("$", "the spec is not a mapping"));
    };
    let executor = root
        .entry("executor")
        .or_insert_with(|| Value::Object(Default::default()));
    if executor.is_null() {
        *executor = json!({});
    }
    let Some(executor) = executor.as_object_mut() else {
        return Err(override_error("executor", "is not a mapping"));
    };
    if let Some(harness) = &overrides.harness {
        executor.insert("harness".into(), harness.clone().into());
        if let Some(config) = executor.get_mut("config").and_then(Value::as_object_mut)
            && config.contains_key("harness")
        {
            config.insert("harness".into(), harness.clone().into());
        }
    }
    if let Some(model) = &overrides.model {
        executor.insert("model".into(), model.clone().into());
    }
    if text.trim_start().starts_with('{') {
        serde_json::to_string_pretty(&doc).map_err(|e| override_error("$", &e.to_string()))
    } else {
        serde_norway::to_string(&doc).map_err(|e| override_error("$", &e.to_string()))
    }
}

/// A spec the overrides cannot be written into, reported like any spec error (with its field).
fn override_error(path: &str, why: &str) -> SpecError {
    SpecError {
        path: path.to_owned(),
        kind: SpecErrorKind::Invalid,
        reason: format!("cannot apply --harness/--model: {why}"),
    }
}

/// A relative path the spec validation accepted (`./a//b.md`), as a bundle entry (`a/b.md`).
fn canonical(rel: &str) -> String {
    rel.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect::<Vec<_>>()
        .join("/")
}

// ---- `omnigent agents` ----

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentsArgs {
    #[command(subcommand)]
    command: Option<AgentsCommand>,
    #[command(flatten)]
    list: ListArgs,
}

#[derive(Debug, clap::Subcommand)]
enum AgentsCommand {
    /// List the server's agents (the default).
    List(ListArgs),
    /// Check an agent as `omnigent run PATH` would before uploading it (no server needed): exit 0 when it
    /// can run, 78 naming the field when it cannot; --bundle writes the .tar.gz that would be uploaded.
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// A spec file (YAML or JSON) or a directory holding config.yaml.
    path: PathBuf,
    /// Override the spec's executor.harness (as `run --harness` does).
    #[arg(long)]
    harness: Option<String>,
    /// Override the spec's executor.model (as `run --model` does).
    #[arg(long)]
    model: Option<String>,
    /// Write the bundle (.tar.gz) here.
    #[arg(long, value_name = "FILE")]
    bundle: Option<PathBuf>,
    /// Print JSON (schema in docs/cli.md) instead of text.
    #[arg(long)]
    json: bool,
}

fn check(args: CheckArgs) -> Result<()> {
    let overrides = Overrides {
        harness: args.harness,
        model: args.model,
    };
    let limits = Limits::default();
    let prepared = prepare(&args.path, &overrides, &limits, &crate::backend::progress)?;
    let entries: Vec<String> = bundle::inspect(&prepared.bundle, &limits)
        .map_err(|e| bundle_error(&args.path, &e))?
        .files
        .into_keys()
        .collect();
    if let Some(out) = &args.bundle {
        std::fs::write(out, &prepared.bundle)
            .with_context(|| format!("cannot write the bundle to {}", out.display()))?;
    }
    let name = prepared.name(&args.path);
    let harness = prepared.harness();
    if args.json {
        let v = json!({
            "name": name,
            "harness": harness,
            "model": prepared.spec.model(),
            "files": entries,
            "bundle_bytes": prepared.bundle.len(),
            "bundle": args.bundle.as_ref().map(|p| p.display().to_string()),
        });
        crate::exit::out(&format!("{v}\n"));
    } else {
        let written = match &args.bundle {
            Some(p) => format!("; written to {}", p.display()),
            None => String::new(),
        };
        crate::exit::out(&format!(
            "agent {name} ({harness}) can run: {} file(s), {} bundle{written}\n",
            entries.len(),
            human_bytes(prepared.bundle.len() as u64)
        ));
    }
    Ok(())
}

#[derive(Debug, Default, clap::Args)]
struct ListArgs {
    /// Print JSON (schema in docs/cli.md) instead of a table.
    #[arg(long)]
    json: bool,
    /// Ask this server (e.g. http://127.0.0.1:6767) instead of the local one, which is started if needed.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
}

/// Where an agent comes from, as `omnigent agents` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    BuiltIn,
    Uploaded,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::BuiltIn => "built-in",
            Kind::Uploaded => "uploaded",
        }
    }
}

/// An agent of `GET /v1/agents` is uploaded when the server says so: `session_scoped: true` (our server and
/// the `x-agent-session-scoped` header's field), `kind: "session"` (the Python server's agents table) or
/// `"uploaded"`, `scope: "session"`, `uploaded: true`, `builtin` / `built_in` / `is_builtin: false`, or
/// `source: "upload"`. Anything else is built-in.
pub(crate) fn kind_of(agent: &Value) -> Kind {
    let uploaded = agent["session_scoped"].as_bool() == Some(true)
        || agent["uploaded"].as_bool() == Some(true)
        || agent["kind"].as_str() == Some("session")
        || agent["kind"].as_str() == Some("uploaded")
        || agent["scope"].as_str() == Some("session")
        || ["builtin", "built_in", "is_builtin"]
            .iter()
            .any(|k| agent[*k].as_bool() == Some(false))
        || matches!(agent["source"].as_str(), Some("upload" | "uploaded"));
    if uploaded {
        Kind::Uploaded
    } else {
        Kind::BuiltIn
    }
}

/// Pages of `GET /v1/agents` read at most, 100 each.
const MAX_PAGES: usize = 100;

/// Every agent of the server, following `has_more` / `last_id`.
pub(crate) async fn list_all(api: &crate::commands::run::Api) -> Result<Vec<Value>> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let path = match &after {
            Some(id) => format!("/v1/agents?limit=100&after={id}"),
            None => "/v1/agents?limit=100".to_owned(),
        };
        let page = api.get_json(&path).await?;
        let data = page["data"].as_array().cloned().unwrap_or_default();
        let last = page["last_id"].as_str().map(str::to_owned).or_else(|| {
            data.last()
                .and_then(|a| a["id"].as_str())
                .map(str::to_owned)
        });
        all.extend(data);
        match (page["has_more"].as_bool(), last) {
            (Some(true), Some(id)) if after.as_deref() != Some(id.as_str()) => after = Some(id),
            _ => return Ok(all),
        }
    }
    Ok(all)
}

/// One agent as `omnigent agents --json` prints it (docs/cli.md): the server's fields, with `kind` set to
/// `built-in` or `uploaded` (the server's own `kind`, if any, kept as `server_kind`).
fn json_row(agent: &Value) -> Value {
    let mut row = agent.clone();
    if let Some(obj) = row.as_object_mut() {
        if let Some(k) = obj.remove("kind") {
            obj.insert("server_kind".into(), k);
        }
        obj.insert("kind".into(), kind_of(agent).word().into());
    }
    row
}

fn table(agents: &[Value]) -> String {
    let rows: Vec<[String; 4]> = agents
        .iter()
        .map(|a| {
            let s = |k: &str| a[k].as_str().unwrap_or("-").to_owned();
            [
                s("name"),
                s("harness"),
                kind_of(a).word().to_owned(),
                s("id"),
            ]
        })
        .collect();
    let header = [
        "NAME".to_owned(),
        "HARNESS".to_owned(),
        "KIND".to_owned(),
        "ID".to_owned(),
    ];
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub fn agents(args: AgentsArgs) -> Result<()> {
    let list = match args.command {
        Some(AgentsCommand::List(list)) => list,
        Some(AgentsCommand::Check(check_args)) => return check(check_args),
        None => args.list,
    };
    crate::backend::runtime()?.block_on(async move {
        let url = match list.server {
            Some(url) => url,
            None => crate::backend::local_server_url().await?,
        };
        let api = crate::commands::run::Api::new(&url)?;
        let agents = list_all(&api)
            .await
            .with_context(|| format!("cannot list the agents of {url}"))?;
        if list.json {
            let rows: Vec<Value> = agents.iter().map(json_row).collect();
            crate::exit::out(&format!(
                "{}\n",
                serde_json::to_string_pretty(&json!({"server": url, "agents": rows}))
                    .map_err(|e| anyhow!("cannot encode the agent list: {e}"))?
            ));
        } else if agents.is_empty() {
            crate::exit::out(&format!("{url} offers no agents.\n"));
        } else {
            crate::exit::out(&table(&agents));
        }
        Ok(())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn the_path_rule() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write(d, "agent/config.yaml", "executor: {harness: echo}\n");
        write(d, "solo.yml", "executor: {harness: echo}\n");
        write(d, "notes/readme.txt", "x");
        let at = |rel: &str| d.join(rel).display().to_string();
        // Existing agents, however written.
        assert!(agent_path(&at("agent")).is_some());
        assert!(agent_path(&at("solo.yml")).is_some());
        // Written as a path: an agent even when missing (the run then says it is not found).
        for word in [
            "./agent",
            "../x",
            "/nope/agent",
            "~/agents/a",
            ".",
            "spec.yaml",
            "x.json",
            "a.yml",
        ] {
            assert_eq!(agent_path(word).as_deref(), Some(Path::new(word)), "{word}");
        }
        // A directory without config.yaml and not written as a path, a plain word, a sentence: the prompt.
        assert!(agent_path(&at("notes")).is_some(), "absolute, so a path");
        for word in [
            "hello",
            "notes",
            "fix the bug in ./src",
            "./src is broken",
            "what is in x.yaml?",
            "",
        ] {
            assert_eq!(agent_path(word), None, "{word:?}");
        }
    }

    #[test]
    fn a_harness_override_rewrites_both_harness_fields_and_a_model_override_the_model() {
        let yaml =
            "# my agent\nname: a\nexecutor:\n  model: old\n  config:\n    harness: openai-agents\n";
        let out = apply_overrides(
            yaml,
            &Overrides {
                harness: Some("echo".into()),
                model: Some("gpt-x".into()),
            },
        )
        .unwrap();
        let spec = AgentSpec::parse(&out).unwrap();
        assert_eq!(spec.harness_name(), Some(("executor.harness", "echo")));
        assert_eq!(spec.model(), Some("gpt-x"));
        assert_eq!(
            spec.executor.unwrap().config.unwrap().harness.as_deref(),
            Some("echo")
        );
        assert_eq!(spec.name.as_deref(), Some("a"));
        // No override: byte for byte as written (comments kept).
        assert_eq!(apply_overrides(yaml, &Overrides::default()).unwrap(), yaml);
    }

    #[test]
    fn an_override_keeps_env_references_and_values_as_written_for_the_runner() {
        let yaml = "spec_version: 1\nexecutor:\n  harness: openai-agents\n  auth: {type: api_key, api_key: '${OPENAI_API_KEY}', base_url: 'http://x/v1'}\nos_env: {type: caller_process, cwd: '.'}\nfuture_field: {a: [1, 2.5, true, 'yes']}\n";
        let out = apply_overrides(
            yaml,
            &Overrides {
                harness: None,
                model: Some("m".into()),
            },
        )
        .unwrap();
        let before: Value = serde_norway::from_str(yaml).unwrap();
        let mut after: Value = serde_norway::from_str(&out).unwrap();
        assert_eq!(after["executor"]["model"], "m");
        after["executor"].as_object_mut().unwrap().remove("model");
        assert_eq!(before, after, "{out}");
        assert!(out.contains("${OPENAI_API_KEY}"), "{out}");
    }

    #[test]
    fn overrides_create_a_missing_executor_and_keep_json_json() {
        let out = apply_overrides(
            "{\"name\": \"j\", \"extra\": [1]}",
            &Overrides {
                harness: Some("echo".into()),
                model: None,
            },
        )
        .unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["executor"]["harness"], "echo");
        assert_eq!(v["extra"], json!([1]));
        let out = apply_overrides(
            "name: y\nexecutor:\n",
            &Overrides {
                harness: None,
                model: Some("m".into()),
            },
        )
        .unwrap();
        assert_eq!(AgentSpec::parse(&out).unwrap().model(), Some("m"));
        let err = apply_overrides(
            "executor: [1]\n",
            &Overrides {
                harness: Some("echo".into()),
                model: None,
            },
        )
        .unwrap_err();
        assert_eq!(err.path, "executor");
    }

    #[test]
    fn a_lone_spec_is_bundled_as_config_yaml_with_its_instructions_file() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write(
            d,
            "my.yaml",
            "name: m\ninstructions: prompts/sys.md\nexecutor: {harness: echo}\n",
        );
        write(d, "prompts/sys.md", "be brief");
        write(d, "unrelated.bin", "not bundled");
        let p = prepare(
            &d.join("my.yaml"),
            &Overrides::default(),
            &Limits::default(),
            &|_| {},
        )
        .unwrap();
        let b = bundle::inspect(&p.bundle, &Limits::default()).unwrap();
        assert_eq!(
            b.files.keys().collect::<Vec<_>>(),
            ["config.yaml", "prompts/sys.md"]
        );
        assert_eq!(p.name(&d.join("my.yaml")), "m");
        assert_eq!(p.harness(), "echo");
    }

    #[test]
    fn a_directory_is_bundled_whole_with_the_overridden_spec() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("bot");
        write(&d, "config.yaml", "executor: {harness: openai-agents}\n");
        write(&d, "data/a.txt", "a");
        let over = Overrides {
            harness: Some("echo".into()),
            model: None,
        };
        let p = prepare(&d, &over, &Limits::default(), &|_| {}).unwrap();
        let b = bundle::inspect(&p.bundle, &Limits::default()).unwrap();
        assert_eq!(
            b.files.keys().collect::<Vec<_>>(),
            ["config.yaml", "data/a.txt"]
        );
        assert_eq!(
            AgentSpec::parse(&b.spec_text).unwrap().harness_name(),
            Some(("executor.harness", "echo"))
        );
        assert_eq!(p.name(&d), "bot");
        // The same directory twice: the same bytes.
        let again = prepare(&d, &over, &Limits::default(), &|_| {}).unwrap();
        assert_eq!(p.bundle, again.bundle);
    }

    #[test]
    fn a_directory_over_the_caps_is_refused_before_it_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write(d, "config.yaml", "executor: {harness: echo}\n");
        for i in 0..5 {
            write(d, &format!("f{i}"), "x");
        }
        let limits = Limits {
            max_entries: 3,
            ..Limits::default()
        };
        let err = prepare(d, &Overrides::default(), &limits, &|_| {}).unwrap_err();
        assert!(err.downcast_ref::<ConfigError>().is_some());
        assert!(err.to_string().contains("more than 3 entries"), "{err}");
    }

    #[test]
    fn uploaded_agents_are_told_from_built_ins() {
        assert_eq!(kind_of(&json!({"name": "echo"})), Kind::BuiltIn);
        assert_eq!(kind_of(&json!({"session_scoped": false})), Kind::BuiltIn);
        for a in [
            json!({"session_scoped": true}),
            json!({"kind": "session"}),
            json!({"builtin": false}),
            json!({"uploaded": true}),
            json!({"built_in": false}),
            json!({"scope": "session"}),
        ] {
            assert_eq!(kind_of(&a), Kind::Uploaded, "{a}");
        }
        let row = json_row(&json!({"id": "1", "kind": "session"}));
        assert_eq!(row["kind"], "uploaded");
        assert_eq!(row["server_kind"], "session");
        let t = table(&[
            json!({"name": "echo", "harness": "echo", "id": "abc"}),
            json!({"name": "mine", "harness": "openai-agents", "id": "d", "session_scoped": true}),
        ]);
        assert_eq!(
            t,
            "NAME  HARNESS        KIND      ID\n\
             echo  echo           built-in  abc\n\
             mine  openai-agents  uploaded  d\n"
        );
    }
}
