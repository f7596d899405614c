//! The real agent CLIs (Claude Code, Codex, Pi) the harness tests drive, installed from npm by
//! `testkit/agent-clis/install` into `target/agent-clis` (pinned by its lockfile; `scripts/test` and `.ci/run`
//! run it). A test that needs one and does not find it fails, naming the install command: it never skips.

use std::path::PathBuf;

/// The directory the CLIs are installed in: `OMNIGENT_AGENT_CLIS`, else the workspace's `target/agent-clis`.
pub fn install_dir() -> PathBuf {
    match std::env::var_os("OMNIGENT_AGENT_CLIS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/agent-clis"),
    }
}

/// The path of CLI `name` (`claude`, `codex`, `pi`); panics with the install command when it is missing.
pub fn agent_cli(name: &str) -> PathBuf {
    let path = install_dir().join("node_modules/.bin").join(name);
    assert!(
        path.exists(),
        "the agent CLI `{name}` is not installed at {}: run testkit/agent-clis/install",
        path.display()
    );
    path
}

/// Write `codex_home/config.toml` pointing Codex at a fake Responses API at `base_url` (model `gpt-test`,
/// provider `fake`, its key read from the variable `env_key`).
pub fn write_codex_config(codex_home: &std::path::Path, base_url: &str, env_key: &str) {
    std::fs::create_dir_all(codex_home).expect("create CODEX_HOME");
    let config = format!(
        "model = \"gpt-test\"\nmodel_provider = \"fake\"\n\n[model_providers.fake]\nname = \"fake\"\n\
         base_url = \"{base_url}/v1\"\nwire_api = \"responses\"\nenv_key = \"{env_key}\"\n"
    );
    std::fs::write(codex_home.join("config.toml"), config).expect("write the Codex config");
}
