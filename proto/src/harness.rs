//! The harness table: the one place that says which harnesses exist, which names a server may use for them
//! (ours and Python omnigent's), which environment variables each reads, and how "configured" is decided.
//!
//! Both sides of the host tunnel read it: the daemon reports `configured_harnesses` in `host.hello` and refuses
//! a `host.launch_runner` for a name it does not know (`harness_not_configured`); the runner parses the
//! harness a session names and reads its credentials, through the same names and the same variables in the
//! same order, so the two cannot disagree.
//!
//! "Configured" is about credentials only (reference wire notes, host tunnel): a known harness without its
//! credentials is reported `"needs-auth"` and still launched, and the runner reports the missing credential as
//! a turn error. Only an unknown name is refused.

use serde_json::{Map, Value};

/// The harnesses a runner can run. The name on the wire is [`Harness::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Harness {
    Echo,
    OpenAi,
    Anthropic,
    Exec,
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
pub const HARNESSES: [HarnessSpec; 4] = [
    HarnessSpec {
        harness: Harness::Echo,
        name: "echo",
        aliases: &[],
        credentials: &[],
        base_url: &[],
        base_url_configures: false,
        command: &[],
    },
    HarnessSpec {
        harness: Harness::OpenAi,
        name: "openai",
        aliases: &["openai-agents", "openai-agents-sdk", "open-responses"],
        credentials: &[key("OPENAI_API_KEY"), key("OMNIGENT_OPENAI_API_KEY")],
        base_url: &["OPENAI_BASE_URL", "OMNIGENT_OPENAI_BASE_URL"],
        base_url_configures: true,
        command: &[],
    },
    HarnessSpec {
        harness: Harness::Anthropic,
        name: "anthropic",
        aliases: &["claude-sdk", "claude"],
        credentials: &[
            key("ANTHROPIC_API_KEY"),
            key("OMNIGENT_ANTHROPIC_API_KEY"),
            bearer("ANTHROPIC_AUTH_TOKEN"),
            bearer("OMNIGENT_ANTHROPIC_AUTH_TOKEN"),
        ],
        base_url: &["ANTHROPIC_BASE_URL", "OMNIGENT_ANTHROPIC_BASE_URL"],
        base_url_configures: false,
        command: &[],
    },
    HarnessSpec {
        harness: Harness::Exec,
        name: "exec",
        aliases: &["claude-native", "codex", "codex-native", "pi"],
        credentials: &[],
        base_url: &[],
        base_url_configures: false,
        command: &["OMNIGENT_EXEC_COMMAND"],
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
    /// Wire `"needs-auth"`: none of its credentials is set.
    NeedsAuth,
}

impl Readiness {
    /// The value in `configured_harnesses`.
    pub fn to_wire(self) -> Value {
        match self {
            Readiness::Configured => Value::Bool(true),
            Readiness::NeedsAuth => Value::String("needs-auth".to_owned()),
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
    pub const ALL: [Harness; 4] = [
        Harness::Echo,
        Harness::OpenAi,
        Harness::Anthropic,
        Harness::Exec,
    ];

    /// This harness's row of [`HARNESSES`].
    pub fn spec(self) -> &'static HarnessSpec {
        match self {
            Harness::Echo => &HARNESSES[0],
            Harness::OpenAi => &HARNESSES[1],
            Harness::Anthropic => &HARNESSES[2],
            Harness::Exec => &HARNESSES[3],
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

    /// Whether the harness is configured, from the same variables the runner reads.
    pub fn readiness(self, get: &impl Fn(&str) -> Option<String>) -> Readiness {
        let spec = self.spec();
        if spec.credentials.is_empty()
            || self.credential(get).is_some()
            || (spec.base_url_configures && self.base_url(get).is_some())
        {
            Readiness::Configured
        } else {
            Readiness::NeedsAuth
        }
    }
}

/// `configured_harnesses` of `host.hello`: every name and alias → `true` | `"needs-auth"` (`get` reads a
/// variable of the environment the runners will get).
pub fn configured_harnesses(get: impl Fn(&str) -> Option<String>) -> Map<String, Value> {
    let mut m = Map::new();
    for spec in &HARNESSES {
        let ready = spec.harness.readiness(&get).to_wire();
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
            ("claude-sdk", Harness::Anthropic),
            ("claude", Harness::Anthropic),
            ("exec", Harness::Exec),
            ("claude-native", Harness::Exec),
            ("codex", Harness::Exec),
            ("pi", Harness::Exec),
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
        assert!(text.contains("echo, openai, anthropic, exec"), "{text}");
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
        let none = configured_harnesses(only(&[]));
        assert_eq!(none["echo"], true);
        assert_eq!(none["exec"], true);
        assert_eq!(none["openai"], "needs-auth");
        assert_eq!(none["anthropic"], "needs-auth");
        assert_eq!(none["claude-sdk"], "needs-auth");

        for (var, kind) in [
            ("ANTHROPIC_API_KEY", CredentialKind::ApiKey),
            ("OMNIGENT_ANTHROPIC_API_KEY", CredentialKind::ApiKey),
            ("ANTHROPIC_AUTH_TOKEN", CredentialKind::BearerToken),
            ("OMNIGENT_ANTHROPIC_AUTH_TOKEN", CredentialKind::BearerToken),
        ] {
            let env = [(var, "secret")];
            let get = only(&env);
            let reported = configured_harnesses(&get);
            assert_eq!(reported["anthropic"], true, "{var}");
            assert_eq!(reported["claude-sdk"], true, "{var}");
            let (cred, value) = Harness::Anthropic.credential(&get).unwrap();
            assert_eq!((cred.var, cred.kind, value.as_str()), (var, kind, "secret"));
        }
        // A blank value is not a credential, on either side.
        let blank = [("ANTHROPIC_API_KEY", "  ")];
        assert_eq!(
            configured_harnesses(only(&blank))["anthropic"],
            "needs-auth"
        );
        assert_eq!(Harness::Anthropic.credential(&only(&blank)), None);
        // A base URL alone configures openai (a local server), not anthropic.
        let urls = [
            ("OPENAI_BASE_URL", "http://localhost:11434/v1"),
            ("ANTHROPIC_BASE_URL", "http://gw"),
        ];
        let reported = configured_harnesses(only(&urls));
        assert_eq!(reported["openai-agents"], true);
        assert_eq!(reported["anthropic"], "needs-auth");
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
            "OMNIGENT_OPENAI_WIRE_API",
        ] {
            assert!(vars.contains(&v), "{v}");
        }
    }
}
