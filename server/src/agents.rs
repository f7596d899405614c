//! Built-in agents: one per harness the runner ships (DESIGN §8). Their ids are stable across servers.

use std::sync::LazyLock;

use omnigent_proto::api::Agent;
use sha2::{Digest, Sha256};

/// 2026-01-01T00:00:00Z: when the built-in agents "were created" (a fixed value keeps pages stable).
const BUILTIN_CREATED_AT: i64 = 1_767_225_600;

const BUILTINS: &[(&str, &str)] = &[
    (
        "echo",
        "Streams your message back. For demos and tests; needs no API key.",
    ),
    (
        "openai",
        "Any OpenAI-compatible Chat Completions endpoint (OpenAI, Ollama, vLLM, LiteLLM, OpenRouter), with \
         shell and file tools in the session's workspace.",
    ),
    (
        "anthropic",
        "Anthropic's Messages API with streaming and tool use.",
    ),
    (
        "exec",
        "Runs an agent CLI per turn (claude -p, codex exec, or any command) and maps its JSON lines to events.",
    ),
    (
        "claude-sdk",
        "Claude Code through its own CLI, one process per session: its tools, CLAUDE.md, skills, MCP servers \
         and the host's login; asks before a tool its permission mode does not allow.",
    ),
    (
        "codex",
        "Codex through `codex app-server`, one thread per session, with the host's Codex login and config; asks \
         before a command leaves its sandbox.",
    ),
    (
        "pi",
        "Pi through `pi --mode rpc`, one process per session, with Pi's own config on the host.",
    ),
];

static AGENTS: LazyLock<Vec<Agent>> = LazyLock::new(|| {
    BUILTINS
        .iter()
        .map(|(name, description)| Agent {
            id: builtin_id(name),
            object: "agent".to_owned(),
            name: (*name).to_owned(),
            description: (*description).to_owned(),
            created_at: BUILTIN_CREATED_AT,
            harness: (*name).to_owned(),
            version: None,
            session_scoped: None,
        })
        .collect()
});

fn builtin_id(name: &str) -> String {
    let digest = Sha256::digest(format!("omnigent-rs:builtin-agent:{name}").as_bytes());
    hex::encode(&digest[..16])
}

/// The built-in agents' names, for messages: `echo, openai, …`.
pub fn names() -> String {
    BUILTINS
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every built-in agent, in a fixed order.
pub fn all() -> &'static [Agent] {
    &AGENTS
}

/// Find an agent by id (bare or `ag_`-prefixed) or by name.
pub fn find(id_or_name: &str) -> Option<&'static Agent> {
    let canonical = omnigent_proto::ids::canonical_id(id_or_name);
    AGENTS
        .iter()
        .find(|a| a.name == id_or_name || Some(&a.id) == canonical.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_are_found_by_id_prefix_or_name() {
        let echo = find("echo").expect("echo exists");
        assert_eq!(echo.id.len(), 32);
        assert_eq!(find(&echo.id).map(|a| &a.name), Some(&echo.name));
        assert_eq!(
            find(&format!("ag_{}", echo.id)).map(|a| &a.name),
            Some(&echo.name)
        );
        assert!(find("nope").is_none());
    }

    #[test]
    fn every_harness_of_the_table_has_a_built_in_agent_under_its_name() {
        let names: Vec<&str> = all().iter().map(|a| a.harness.as_str()).collect();
        let table: Vec<&str> = omnigent_proto::harness::Harness::ALL
            .iter()
            .map(|h| h.name())
            .collect();
        assert_eq!(names, table);
    }
}
