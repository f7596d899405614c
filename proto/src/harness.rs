//! The harness table: the one place that says which harnesses exist, which names a server may use for them
//! (ours and Python omnigent's), which environment variables each reads, and how "configured" is decided.
//!
//! Both sides of the host tunnel read it: the daemon reports `configured_harnesses` in `host.hello` and refuses
//! a `host.launch_runner` for a name it does not know (`harness_not_configured`); the runner parses the
//! harness a session names and reads its credentials, through the same names and the same variables in the
//! same order, so the two cannot disagree.
//!
//! "Configured" is about credentials and, for a harness that drives an agent CLI (a row with [`AgentCli`]), the
//! binary (reference wire notes, host tunnel): a known harness without its credentials is reported
//! `"needs-auth"`, one whose CLI is not installed `"binary-missing"`, and both are still launched; the runner
//! reports what is missing as a turn error naming the install or login command. Only an unknown name is refused.
//! The daemon probes the CLI (locates it with [`AgentCli::locate`], runs its version command) and passes the
//! result as a [`CliProbe`]; the runner locates the binary with the same function.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// The harnesses a runner can run. The name on the wire is [`Harness::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Harness {
    Echo,
    OpenAi,
    Anthropic,
    Exec,
    /// Claude Code through its own CLI (`claude -p --input-format stream-json …`), one process per session.
    ClaudeCode,
    /// Codex through `codex app-server` (JSON-RPC over stdio), one per session.
    Codex,
    /// Pi through `pi --mode rpc` (JSON lines over stdio), one per session.
    Pi,
}

/// How a credential goes to the vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// The vendor's API key (Anthropic: `x-api-key`; OpenAI-compatible: `Authorization: Bearer`).
    ApiKey,
    /// A bearer token (`Authorization: Bearer`), e.g. `ANTHROPIC_AUTH_TOKEN` for a gateway or proxy.
    BearerToken,
}

/// One credential variable of a harness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credential {
    pub var: &'static str,
    pub kind: CredentialKind,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HarnessSpec {
    pub harness: Harness,
    /// Our name: what our runner announces and what `omnigent runner --harness` documents.
    pub name: &'static str,
    /// Other names accepted for it: Python omnigent's harness names, so a Python server can launch our runners.
    pub aliases: &'static [&'static str],
    /// Credential variables, in the order they are read: the first one set wins.
    pub credentials: &'static [Credential],
    /// Base URL variables, in the order they are read.
    pub base_url: &'static [&'static str],
    /// Whether a base URL alone makes the harness configured (a local OpenAI-compatible server needs no key).
    pub base_url_configures: bool,
    /// The command line of a per-turn CLI harness, in the order read.
    pub command: &'static [&'static str],
    /// For a harness that drives an agent CLI: where its binary is, how to probe it, what a login looks like.
    pub cli: Option<AgentCli>,
}

/// The agent CLI a harness drives (Claude Code, Codex, Pi): one row's binary and login facts.
///
/// Paths in `install_paths` and `login_files` start with `~/` (the home: `HOME`) or `$VAR/` (that variable's
/// value; the entry is skipped when it is unset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentCli {
    /// The variable naming the binary's path (`OMNIGENT_CLAUDE_PATH`); when set, it is the only place looked at.
    pub path_var: &'static str,
    /// The program name looked up on `PATH` (`claude`).
    pub program: &'static str,
    /// The usual install locations, tried after `PATH`, in order.
    pub install_paths: &'static [&'static str],
    /// The arguments that make it print its version (`--version`): the daemon's probe.
    pub version_args: &'static [&'static str],
    /// Files whose presence means an existing login of the CLI (`~/.claude/.credentials.json`).
    pub login_files: &'static [&'static str],
    /// Other variables the CLI reads that a runner must receive (its config dir…), beside the credentials.
    pub env: &'static [&'static str],
    /// The command that installs it, for `"binary-missing"` turn errors.
    pub install_hint: &'static str,
    /// What to do when it has no credentials, for `"needs-auth"` turn errors.
    pub login_hint: &'static str,
}

/// What the daemon found of a row's CLI: the binary and its version (`None`: binary missing or not runnable),
/// and whether one of its login files exists.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CliProbe {
    pub binary: Option<PathBuf>,
    pub version: Option<String>,
    pub logged_in: bool,
}

/// The model every vendor harness uses when set (otherwise the harness's default).
pub const MODEL_VARS: &[&str] = &["OMNIGENT_MODEL"];

/// Which OpenAI API the `openai` harness speaks (`responses` or `chat`), over what the agent spec and the
/// harness name choose (`openai-agents` and `open-responses` default to Responses, `openai` to Chat).
pub const OPENAI_WIRE_API_VARS: &[&str] = &["OMNIGENT_OPENAI_WIRE_API"];

const fn key(var: &'static str) -> Credential {
    Credential {
        var,
        kind: CredentialKind::ApiKey,
    }
}

const fn bearer(var: &'static str) -> Credential {
    Credential {
        var,
        kind: CredentialKind::BearerToken,
    }
}

/// The table. Each credential and base URL is also accepted with an `OMNIGENT_` prefix (reference host §2),
/// read after the plain name.
pub const HARNESSES: [HarnessSpec; 7] = [
    HarnessSpec {
        harness: Harness::Echo,
        name: "echo",
        aliases: &[],
        credentials: &[],
        base_url: &[],
        base_url_configures: false,
        command: &[],
        cli: None,
    },
    HarnessSpec {
        harness: Harness::OpenAi,
        name: "openai",
        aliases: &["openai-agents", "openai-agents-sdk", "open-responses"],
        credentials: &[key("OPENAI_API_KEY"), key("OMNIGENT_OPENAI_API_KEY")],
        base_url: &["OPENAI_BASE_URL", "OMNIGENT_OPENAI_BASE_URL"],
        base_url_configures: true,
        command: &[],
        cli: None,
    },
    HarnessSpec {
        harness: Harness::Anthropic,
        name: "anthropic",
        aliases: &[],
        credentials: &[
            key("ANTHROPIC_API_KEY"),
            key("OMNIGENT_ANTHROPIC_API_KEY"),
            bearer("ANTHROPIC_AUTH_TOKEN"),
            bearer("OMNIGENT_ANTHROPIC_AUTH_TOKEN"),
        ],
        base_url: &["ANTHROPIC_BASE_URL", "OMNIGENT_ANTHROPIC_BASE_URL"],
        base_url_configures: false,
        command: &[],
        cli: None,
    },
    HarnessSpec {
        harness: Harness::Exec,
        name: "exec",
        aliases: &["claude-native", "codex-native"],
        credentials: &[],
        base_url: &[],
        base_url_configures: false,
        command: &["OMNIGENT_EXEC_COMMAND"],
        cli: None,
    },
    HarnessSpec {
        harness: Harness::ClaudeCode,
        name: "claude-sdk",
        aliases: &["claude", "claude-code"],
        credentials: &[
            key("ANTHROPIC_API_KEY"),
            key("OMNIGENT_ANTHROPIC_API_KEY"),
            bearer("CLAUDE_CODE_OAUTH_TOKEN"),
            bearer("ANTHROPIC_AUTH_TOKEN"),
        ],
        base_url: &["ANTHROPIC_BASE_URL", "OMNIGENT_ANTHROPIC_BASE_URL"],
        base_url_configures: false,
        command: &[],
        cli: Some(AgentCli {
            path_var: "OMNIGENT_CLAUDE_PATH",
            program: "claude",
            install_paths: &[
                "~/.claude/local/claude",
                "~/.local/bin/claude",
                "/usr/local/bin/claude",
            ],
            version_args: &["--version"],
            login_files: &[
                "$CLAUDE_CONFIG_DIR/.credentials.json",
                "~/.claude/.credentials.json",
            ],
            env: &[
                "CLAUDE_CONFIG_DIR",
                "OMNIGENT_CLAUDE_PATH",
                "OMNIGENT_CLAUDE_PERMISSION_MODE",
            ],
            install_hint: "npm install -g @anthropic-ai/claude-code",
            login_hint: "run `claude login` or set ANTHROPIC_API_KEY",
        }),
    },
    // Codex's credentials are its own: the key below, a `codex login` (auth.json), or a custom model provider
    // in its config.toml (which names its own key variable; the runner checks that too).
    HarnessSpec {
        harness: Harness::Codex,
        name: "codex",
        aliases: &[],
        credentials: &[key("OPENAI_API_KEY")],
        base_url: &[],
        base_url_configures: false,
        command: &[],
        cli: Some(AgentCli {
            path_var: "OMNIGENT_CODEX_PATH",
            program: "codex",
            install_paths: &["~/.local/bin/codex", "/usr/local/bin/codex"],
            version_args: &["--version"],
            login_files: &["$CODEX_HOME/auth.json", "~/.codex/auth.json"],
            env: &["CODEX_HOME", "OMNIGENT_CODEX_PATH"],
            install_hint: "npm install -g @openai/codex",
            login_hint: "set OPENAI_API_KEY or run `codex login`",
        }),
    },
    // Pi reads the provider keys below, its login (auth.json) and custom providers with their keys
    // (models.json) from its agent dir.
    HarnessSpec {
        harness: Harness::Pi,
        name: "pi",
        aliases: &[],
        credentials: &[
            key("ANTHROPIC_API_KEY"),
            bearer("ANTHROPIC_OAUTH_TOKEN"),
            key("OPENAI_API_KEY"),
            key("GEMINI_API_KEY"),
            key("GROQ_API_KEY"),
            key("XAI_API_KEY"),
            key("OPENROUTER_API_KEY"),
            key("MISTRAL_API_KEY"),
            key("DEEPSEEK_API_KEY"),
        ],
        base_url: &[],
        base_url_configures: false,
        command: &[],
        cli: Some(AgentCli {
            path_var: "OMNIGENT_PI_PATH",
            program: "pi",
            install_paths: &["~/.local/bin/pi", "/usr/local/bin/pi"],
            version_args: &["--version"],
            login_files: &[
                "$PI_CODING_AGENT_DIR/auth.json",
                "$PI_CODING_AGENT_DIR/models.json",
                "~/.pi/agent/auth.json",
                "~/.pi/agent/models.json",
            ],
            env: &["PI_CODING_AGENT_DIR", "OMNIGENT_PI_PATH"],
            install_hint: "npm install -g @mariozechner/pi-coding-agent",
            login_hint: "run `pi` then `/login`, set a provider key (ANTHROPIC_API_KEY, OPENAI_API_KEY…) or \
                         add a provider to ~/.pi/agent/models.json",
        }),
    },
];

/// A harness name the table does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown harness {name:?}; this runner knows {} (and the aliases {})",
    known_names(),
    known_aliases()
)]
pub struct UnknownHarness {
    pub name: String,
}

fn known_names() -> String {
    HARNESSES.map(|s| s.name).join(", ")
}

fn known_aliases() -> String {
    HARNESSES
        .iter()
        .flat_map(|s| s.aliases.iter().copied())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a harness has what it needs, as `configured_harnesses` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Wire `true`.
    Configured,
    /// Wire `"needs-auth"`: none of its credentials is set (and, for a CLI, no login of it found).
    NeedsAuth,
    /// Wire `"binary-missing"`: its CLI is not installed (or does not run).
    BinaryMissing,
}

impl Readiness {
    /// The value in `configured_harnesses`.
    pub fn to_wire(self) -> Value {
        match self {
            Readiness::Configured => Value::Bool(true),
            Readiness::NeedsAuth => Value::String("needs-auth".to_owned()),
            Readiness::BinaryMissing => Value::String("binary-missing".to_owned()),
        }
    }
}

/// The value of the first of `vars` that is set to something other than blanks, with its name.
pub fn first_set(
    vars: &[&'static str],
    get: &impl Fn(&str) -> Option<String>,
) -> Option<(&'static str, String)> {
    vars.iter()
        .find_map(|v| get(v).filter(|s| !s.trim().is_empty()).map(|s| (*v, s)))
}

impl Harness {
    pub const ALL: [Harness; 7] = [
        Harness::Echo,
        Harness::OpenAi,
        Harness::Anthropic,
        Harness::Exec,
        Harness::ClaudeCode,
        Harness::Codex,
        Harness::Pi,
    ];

    /// This harness's row of [`HARNESSES`].
    pub fn spec(self) -> &'static HarnessSpec {
        match self {
            Harness::Echo => &HARNESSES[0],
            Harness::OpenAi => &HARNESSES[1],
            Harness::Anthropic => &HARNESSES[2],
            Harness::Exec => &HARNESSES[3],
            Harness::ClaudeCode => &HARNESSES[4],
            Harness::Codex => &HARNESSES[5],
            Harness::Pi => &HARNESSES[6],
        }
    }

    /// Our name for it.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// A harness from our name or one of its aliases (exact, case-sensitive, as the wire carries it).
    pub fn parse(name: &str) -> Result<Harness, UnknownHarness> {
        HARNESSES
            .iter()
            .find(|s| s.name == name || s.aliases.contains(&name))
            .map(|s| s.harness)
            .ok_or_else(|| UnknownHarness {
                name: name.to_owned(),
            })
    }

    /// The credential the runner uses: the first variable of the table's list that is set (`get` reads one).
    pub fn credential(self, get: &impl Fn(&str) -> Option<String>) -> Option<(Credential, String)> {
        self.spec()
            .credentials
            .iter()
            .find_map(|c| get(c.var).filter(|v| !v.trim().is_empty()).map(|v| (*c, v)))
    }

    /// The base URL the runner uses, if any variable of the table's list is set.
    pub fn base_url(self, get: &impl Fn(&str) -> Option<String>) -> Option<String> {
        first_set(self.spec().base_url, get).map(|(_, v)| v)
    }

    /// Whether the harness is configured, from the same variables the runner reads and, for a CLI harness, the
    /// daemon's probe of its CLI (`None`: not probed, i.e. missing).
    pub fn readiness(
        self,
        get: &impl Fn(&str) -> Option<String>,
        probe: Option<&CliProbe>,
    ) -> Readiness {
        let spec = self.spec();
        let logged_in = match spec.cli {
            None => false,
            Some(_) => match probe {
                Some(p) if p.binary.is_some() && p.version.is_some() => p.logged_in,
                _ => return Readiness::BinaryMissing,
            },
        };
        if spec.credentials.is_empty()
            || logged_in
            || self.credential(get).is_some()
            || (spec.base_url_configures && self.base_url(get).is_some())
        {
            Readiness::Configured
        } else {
            Readiness::NeedsAuth
        }
    }
}

impl AgentCli {
    /// The binary: the path in `path_var` when set (only there: `None` if it is not a file), else `program`
    /// on `PATH`, else the first of `install_paths` that is a file.
    pub fn locate(&self, get: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
        if let Some((_, path)) = first_set(&[self.path_var], get) {
            let path = PathBuf::from(path);
            return is_file(&path).then_some(path);
        }
        if let Some(path) = get("PATH") {
            for dir in std::env::split_paths(&path) {
                let candidate = dir.join(self.program);
                if is_file(&candidate) {
                    return Some(candidate);
                }
            }
        }
        self.install_paths
            .iter()
            .filter_map(|p| expand(p, get))
            .find(|p| is_file(p))
    }

    /// Whether one of `login_files` exists.
    pub fn logged_in(&self, get: &impl Fn(&str) -> Option<String>) -> bool {
        self.login_files
            .iter()
            .filter_map(|p| expand(p, get))
            .any(|p| is_file(&p))
    }
}

fn is_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// `~/rest` → `$HOME/rest`, `$VAR/rest` → `$VAR`'s value + `/rest`, anything else as is; `None` when the variable
/// is unset or blank.
fn expand(path: &str, get: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let (var, rest) = if let Some(rest) = path.strip_prefix("~/") {
        ("HOME", rest)
    } else if let Some(var_rest) = path.strip_prefix('$') {
        var_rest.split_once('/')?
    } else {
        return Some(PathBuf::from(path));
    };
    let base = get(var).filter(|v| !v.trim().is_empty())?;
    Some(Path::new(&base).join(rest))
}

/// `configured_harnesses` of `host.hello`: every name and alias → `true` | `"needs-auth"` | `"binary-missing"`
/// (`get` reads a variable of the environment the runners will get; `probe` gives the daemon's probe of a CLI
/// harness's binary, `None` when it found none).
pub fn configured_harnesses(
    get: impl Fn(&str) -> Option<String>,
    probe: impl Fn(Harness) -> Option<CliProbe>,
) -> Map<String, Value> {
    let mut m = Map::new();
    for spec in &HARNESSES {
        let ready = spec
            .harness
            .readiness(&get, probe(spec.harness).as_ref())
            .to_wire();
        for name in std::iter::once(&spec.name).chain(spec.aliases) {
            m.insert((*name).to_owned(), ready.clone());
        }
    }
    m
}

/// Every environment variable the table names (credentials, base URLs, commands, model): what a runner must
/// receive from the daemon's environment for the table to mean the same on both sides.
pub fn env_vars() -> impl Iterator<Item = &'static str> {
    HARNESSES
        .iter()
        .flat_map(|s| {
            s.credentials
                .iter()
                .map(|c| c.var)
                .chain(s.base_url.iter().copied())
                .chain(s.command.iter().copied())
                .chain(s.cli.iter().flat_map(|c| c.env.iter().copied()))
        })
        .chain(MODEL_VARS.iter().copied())
        .chain(OPENAI_WIRE_API_VARS.iter().copied())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn only<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn our_names_and_python_omnigent_names_resolve() {
        for (name, harness) in [
            ("echo", Harness::Echo),
            ("openai", Harness::OpenAi),
            ("openai-agents", Harness::OpenAi),
            ("openai-agents-sdk", Harness::OpenAi),
            ("open-responses", Harness::OpenAi),
            ("anthropic", Harness::Anthropic),
            ("claude-sdk", Harness::ClaudeCode),
            ("claude", Harness::ClaudeCode),
            ("claude-code", Harness::ClaudeCode),
            ("exec", Harness::Exec),
            ("claude-native", Harness::Exec),
            ("codex-native", Harness::Exec),
            ("codex", Harness::Codex),
            ("pi", Harness::Pi),
        ] {
            assert_eq!(Harness::parse(name), Ok(harness), "{name}");
        }
        for h in Harness::ALL {
            assert_eq!(Harness::parse(h.name()), Ok(h));
            assert_eq!(h.spec().harness, h);
        }
    }

    #[test]
    fn an_unknown_name_is_refused_with_the_names_it_could_have_been() {
        let err = Harness::parse("nonesuch").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"nonesuch\""), "{text}");
        assert!(
            text.contains("echo, openai, anthropic, exec, claude-sdk"),
            "{text}"
        );
        assert!(text.contains("claude-sdk"), "{text}");
        assert!(Harness::parse("Claude-SDK").is_err());
        assert!(Harness::parse("").is_err());
    }

    #[test]
    fn no_name_is_in_two_rows() {
        let mut names: Vec<&str> = HARNESSES
            .iter()
            .flat_map(|s| std::iter::once(s.name).chain(s.aliases.iter().copied()))
            .collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
    }

    #[test]
    fn configured_is_decided_by_the_variables_the_runner_reads() {
        let none = configured_harnesses(only(&[]), |_| None);
        assert_eq!(none["echo"], true);
        assert_eq!(none["exec"], true);
        assert_eq!(none["openai"], "needs-auth");
        assert_eq!(none["anthropic"], "needs-auth");
        assert_eq!(none["claude-sdk"], "binary-missing");

        for (var, kind) in [
            ("ANTHROPIC_API_KEY", CredentialKind::ApiKey),
            ("OMNIGENT_ANTHROPIC_API_KEY", CredentialKind::ApiKey),
            ("ANTHROPIC_AUTH_TOKEN", CredentialKind::BearerToken),
            ("OMNIGENT_ANTHROPIC_AUTH_TOKEN", CredentialKind::BearerToken),
        ] {
            let env = [(var, "secret")];
            let get = only(&env);
            let reported = configured_harnesses(&get, |_| None);
            assert_eq!(reported["anthropic"], true, "{var}");
            let (cred, value) = Harness::Anthropic.credential(&get).unwrap();
            assert_eq!((cred.var, cred.kind, value.as_str()), (var, kind, "secret"));
        }
        // A blank value is not a credential, on either side.
        let blank = [("ANTHROPIC_API_KEY", "  ")];
        assert_eq!(
            configured_harnesses(only(&blank), |_| None)["anthropic"],
            "needs-auth"
        );
        assert_eq!(Harness::Anthropic.credential(&only(&blank)), None);
        // A base URL alone configures openai (a local server), not anthropic.
        let urls = [
            ("OPENAI_BASE_URL", "http://localhost:11434/v1"),
            ("ANTHROPIC_BASE_URL", "http://gw"),
        ];
        let reported = configured_harnesses(only(&urls), |_| None);
        assert_eq!(reported["openai-agents"], true);
        assert_eq!(reported["anthropic"], "needs-auth");
    }

    #[test]
    fn a_cli_harness_needs_its_binary_then_a_credential_or_a_login() {
        let found = |logged_in| CliProbe {
            binary: Some(PathBuf::from("/bin/claude")),
            version: Some("2.1.0 (Claude Code)".to_owned()),
            logged_in,
        };
        let key = [("ANTHROPIC_API_KEY", "k")];
        let h = Harness::ClaudeCode;
        // Missing binary wins over a credential: the turn could not run.
        assert_eq!(h.readiness(&only(&key), None), Readiness::BinaryMissing);
        let no_version = CliProbe {
            version: None,
            ..found(true)
        };
        assert_eq!(
            h.readiness(&only(&key), Some(&no_version)),
            Readiness::BinaryMissing
        );
        assert_eq!(
            h.readiness(&only(&[]), Some(&found(false))),
            Readiness::NeedsAuth
        );
        assert_eq!(
            h.readiness(&only(&[]), Some(&found(true))),
            Readiness::Configured
        );
        for var in ["ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"] {
            let env = [(var, "k")];
            let reported = configured_harnesses(only(&env), |h| {
                (h == Harness::ClaudeCode).then(|| found(false))
            });
            assert_eq!(reported["claude-sdk"], true, "{var}");
            assert_eq!(reported["claude"], true, "{var}");
        }
        assert_eq!(Readiness::BinaryMissing.to_wire(), "binary-missing");
        // A probe means nothing to a harness without a CLI.
        assert_eq!(
            Harness::Echo.readiness(&only(&[]), None),
            Readiness::Configured
        );
    }

    #[test]
    fn the_binary_is_found_by_its_variable_then_path_then_install_locations() {
        let dir = std::env::temp_dir().join(format!("omnigent-harness-{}", std::process::id()));
        let bin = dir.join("bin");
        let home = dir.join("home");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(home.join(".local/bin")).unwrap();
        std::fs::create_dir_all(home.join("cfg")).unwrap();
        let cli = Harness::ClaudeCode.spec().cli.unwrap();
        let home_s = home.to_str().unwrap().to_owned();
        let bin_s = bin.to_str().unwrap().to_owned();
        let get = |pairs: Vec<(&'static str, String)>| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.clone())
            }
        };
        let env = get(vec![("HOME", home_s.clone()), ("PATH", bin_s.clone())]);
        assert_eq!(cli.locate(&env), None);
        std::fs::write(home.join(".local/bin/claude"), "").unwrap();
        assert_eq!(cli.locate(&env), Some(home.join(".local/bin/claude")));
        std::fs::write(bin.join("claude"), "").unwrap();
        assert_eq!(cli.locate(&env), Some(bin.join("claude")));
        // The variable is the only place looked at when set.
        let env = get(vec![
            ("HOME", home_s.clone()),
            ("PATH", bin_s.clone()),
            ("OMNIGENT_CLAUDE_PATH", "/nonexistent/claude".to_owned()),
        ]);
        assert_eq!(cli.locate(&env), None);
        // Logins: the config dir's credentials file, or the home's.
        let env = get(vec![
            ("HOME", home_s.clone()),
            ("CLAUDE_CONFIG_DIR", format!("{home_s}/cfg")),
        ]);
        assert!(!cli.logged_in(&env));
        std::fs::write(home.join("cfg/.credentials.json"), "{}").unwrap();
        assert!(cli.logged_in(&env));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_first_variable_of_the_list_wins() {
        let env = [
            ("OMNIGENT_ANTHROPIC_API_KEY", "second"),
            ("ANTHROPIC_API_KEY", "first"),
            ("ANTHROPIC_AUTH_TOKEN", "third"),
        ];
        let (cred, value) = Harness::Anthropic.credential(&only(&env)).unwrap();
        assert_eq!((cred.var, value.as_str()), ("ANTHROPIC_API_KEY", "first"));
        let env = [("OMNIGENT_OPENAI_BASE_URL", "b"), ("OPENAI_BASE_URL", "a")];
        assert_eq!(Harness::OpenAi.base_url(&only(&env)).as_deref(), Some("a"));
    }

    #[test]
    fn env_vars_lists_every_variable_of_the_table() {
        let vars: Vec<&str> = env_vars().collect();
        for v in [
            "OPENAI_API_KEY",
            "OMNIGENT_ANTHROPIC_AUTH_TOKEN",
            "ANTHROPIC_BASE_URL",
            "OMNIGENT_EXEC_COMMAND",
            "OMNIGENT_MODEL",
            "CLAUDE_CODE_OAUTH_TOKEN",
            "OMNIGENT_CLAUDE_PATH",
            "CLAUDE_CONFIG_DIR",
            "OMNIGENT_OPENAI_WIRE_API",
        ] {
            assert!(vars.contains(&v), "{v}");
        }
    }

    #[test]
    fn codex_and_pi_need_their_binary_then_a_key_or_their_own_login_file() {
        let home = tempfile_dir();
        let found = CliProbe {
            binary: Some(PathBuf::from("/bin/true")),
            version: Some("1".to_owned()),
            logged_in: false,
        };
        for (h, key, login) in [
            (Harness::Codex, "OPENAI_API_KEY", ".codex/auth.json"),
            (Harness::Pi, "ANTHROPIC_API_KEY", ".pi/agent/models.json"),
        ] {
            let home_s = home.display().to_string();
            let env = [("HOME", home_s.as_str())];
            assert_eq!(h.readiness(&only(&env), None), Readiness::BinaryMissing);
            assert_eq!(h.readiness(&only(&env), Some(&found)), Readiness::NeedsAuth);
            let keyed = [("HOME", home_s.as_str()), (key, "k")];
            assert_eq!(
                h.readiness(&only(&keyed), Some(&found)),
                Readiness::Configured
            );
            let cli = h.spec().cli.unwrap();
            let path = home.join(login);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, "{}").unwrap();
            assert!(cli.logged_in(&only(&env)), "{login}");
            let _ = std::fs::remove_file(&path);
        }
        let _ = std::fs::remove_dir_all(&home);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "omnigent-proto-harness-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
