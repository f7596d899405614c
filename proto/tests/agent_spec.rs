//! Agent specs: a table of valid specs (what each field parses to) and of invalid ones (the field path each
//! is refused with), plus `${VAR}` interpolation.

use std::collections::BTreeMap;

use omnigent_proto::agent::spec::{AgentSpec, InstructionsSource, McpTransport, SpecErrorKind};
use omnigent_proto::harness::Harness;

const MINIMAL: &str = "
spec_version: 1
name: minimal
executor:
  type: omnigent
  model: gpt-4o-mini
  config:
    harness: openai-agents
  auth:
    type: api_key
    api_key: ${OPENAI_API_KEY}
    base_url: http://127.0.0.1:9/v1
os_env:
  type: caller_process
  cwd: \".\"
  sandbox:
    type: none
";

const FULL: &str = "
spec_version: 1
name: full
description: every field we read, and some we do not
instructions: prompts/system.md
executor:
  type: omnigent
  harness: claude-sdk
  model: claude-sonnet-4
  auth: {type: provider, api_key: k, base_url: https://gw.example/v1, region: eu}
  connection: {base_url: https://conn.example, api_key: c}
  config: {temperature: 0.2}
  retries: 3
os_env:
  type: caller_process
  cwd: work
  sandbox: {type: auto, network: false}
tools:
  files:
    type: mcp
    command: python3
    args: [server.py, --root, .]
    env: {TOKEN: \"${FILES_TOKEN}\"}
    allowed_tools: [read_file, list_dir]
  web:
    type: mcp
    url: https://mcp.example/mcp
    headers: {Authorization: \"Bearer ${WEB_TOKEN}\"}
  helper:
    type: agent
    path: agents/helper
future_field: {nested: [1, 2]}
";

fn files(names: &[&str]) -> impl Fn(&str) -> bool {
    let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    move |rel| names.iter().any(|n| n == rel)
}

#[test]
fn a_minimal_spec_parses_and_resolves_the_harness_from_executor_config() {
    let spec = AgentSpec::parse(MINIMAL).expect("parse");
    assert_eq!(spec.name.as_deref(), Some("minimal"));
    assert_eq!(spec.spec_version, Some(serde_json::json!(1)));
    assert_eq!(
        spec.harness_name(),
        Some(("executor.config.harness", "openai-agents"))
    );
    assert_eq!(spec.harness().expect("harness"), Harness::OpenAi);
    assert_eq!(spec.model(), Some("gpt-4o-mini"));
    let auth = spec
        .executor
        .as_ref()
        .and_then(|e| e.auth.as_ref())
        .expect("auth");
    assert_eq!(auth.kind.as_deref(), Some("api_key"));
    assert_eq!(
        auth.api_key.as_deref(),
        Some("${OPENAI_API_KEY}"),
        "never interpolated at parse time"
    );
    let os_env = spec.os_env.as_ref().expect("os_env");
    assert_eq!(os_env.kind.as_deref(), Some("caller_process"));
    assert_eq!(os_env.cwd.as_deref(), Some("."));
    assert_eq!(
        os_env.sandbox.as_ref().and_then(|s| s.kind.as_deref()),
        Some("none")
    );
    assert!(spec.tools.is_empty());
    assert_eq!(spec.instructions_source(), None);
    spec.validate(files(&[])).expect("valid");
}

#[test]
fn a_full_spec_keeps_every_field_and_the_unknown_ones() {
    let spec = AgentSpec::parse(FULL).expect("parse");
    assert_eq!(spec.harness().expect("harness"), Harness::ClaudeCode);
    let executor = spec.executor.as_ref().expect("executor");
    assert_eq!(executor.kind.as_deref(), Some("omnigent"));
    let auth = executor.auth.as_ref().expect("auth");
    assert_eq!(auth.base_url.as_deref(), Some("https://gw.example/v1"));
    assert_eq!(auth.extra.get("region"), Some(&serde_json::json!("eu")));
    let connection = executor.connection.as_ref().expect("connection");
    assert_eq!(connection.base_url.as_deref(), Some("https://conn.example"));
    assert_eq!(connection.api_key.as_deref(), Some("c"));
    assert_eq!(
        executor
            .config
            .as_ref()
            .and_then(|c| c.extra.get("temperature")),
        Some(&serde_json::json!(0.2))
    );
    assert_eq!(executor.extra.get("retries"), Some(&serde_json::json!(3)));
    assert_eq!(
        spec.extra.get("description"),
        Some(&serde_json::json!(
            "every field we read, and some we do not"
        ))
    );
    assert_eq!(
        spec.extra.get("future_field"),
        Some(&serde_json::json!({"nested": [1, 2]}))
    );
    assert_eq!(
        spec.os_env
            .as_ref()
            .and_then(|o| o.sandbox.as_ref())
            .and_then(|s| s.extra.get("network")),
        Some(&serde_json::json!(false))
    );
    assert_eq!(
        spec.instructions_source(),
        Some((
            "instructions",
            InstructionsSource::File("prompts/system.md")
        ))
    );

    let files_tool = &spec.tools["files"];
    let env: BTreeMap<String, String> = [("TOKEN".to_owned(), "${FILES_TOKEN}".to_owned())].into();
    assert_eq!(
        files_tool.mcp(),
        Some(McpTransport::Stdio {
            command: "python3",
            args: &["server.py".to_owned(), "--root".to_owned(), ".".to_owned()],
            env: &env,
        })
    );
    assert!(files_tool.allows("read_file"));
    assert!(!files_tool.allows("delete_file"));
    let web = &spec.tools["web"];
    assert!(matches!(
        web.mcp(),
        Some(McpTransport::Http {
            url: "https://mcp.example/mcp",
            ..
        })
    ));
    assert!(web.allows("anything"), "no allow-list offers every tool");
    let helper = &spec.tools["helper"];
    assert!(helper.is_sub_agent() && helper.mcp().is_none());
    assert_eq!(
        helper.extra.get("path"),
        Some(&serde_json::json!("agents/helper"))
    );

    spec.validate(files(&["prompts/system.md"]))
        .expect("valid with its file");
}

#[test]
fn json_specs_parse_like_yaml() {
    let json = r#"{"spec_version": 1, "name": "j", "prompt": "Be terse.",
        "executor": {"harness": "openai", "model": "m"}, "extra_top": true}"#;
    let spec = AgentSpec::parse(json).expect("parse");
    assert_eq!(spec.harness().expect("harness"), Harness::OpenAi);
    assert_eq!(
        spec.instructions_source(),
        Some(("prompt", InstructionsSource::Inline("Be terse.")))
    );
    assert_eq!(spec.extra.get("extra_top"), Some(&serde_json::json!(true)));
}

#[test]
fn inline_and_file_instructions_are_told_apart() {
    let cases = [
        ("You are a helpful assistant.", Some("inline")),
        ("hello", Some("inline")),
        ("line one\nline two.md", Some("inline")),
        ("system.md", Some("file")),
        ("./prompts/agent", Some("file")),
        ("prompts/agent.txt", Some("file")),
    ];
    for (text, want) in cases {
        let spec = AgentSpec {
            prompt: Some(text.to_owned()),
            ..AgentSpec::default()
        };
        let got = spec.instructions_source().map(|(_, source)| match source {
            InstructionsSource::Inline(_) => "inline",
            InstructionsSource::File(_) => "file",
        });
        assert_eq!(got, want, "{text:?}");
    }
}

#[test]
fn instructions_files_are_read_relative_to_the_spec() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("prompts")).expect("mkdir");
    std::fs::write(dir.path().join("prompts/system.md"), "Be kind.").expect("write");
    let spec = AgentSpec::parse(FULL).expect("parse");
    spec.validate_in_dir(dir.path()).expect("valid");
    assert_eq!(
        spec.instructions(dir.path()).expect("read").as_deref(),
        Some("Be kind.")
    );
}

#[test]
fn interpolation_replaces_variables_from_the_given_environment_only() {
    let spec = AgentSpec::parse(FULL).expect("parse");
    let env: BTreeMap<&str, &str> = [("FILES_TOKEN", "f-secret"), ("WEB_TOKEN", "w-secret")].into();
    let resolved = spec
        .interpolate(|name| env.get(name).map(|v| (*v).to_owned()))
        .expect("interpolate");
    assert_eq!(resolved.tools["files"].env["TOKEN"], "f-secret");
    assert_eq!(
        resolved.tools["web"].headers["Authorization"],
        "Bearer w-secret"
    );
    assert_eq!(resolved.extra, spec.extra, "everything else unchanged");
    assert_eq!(
        spec.tools["files"].env["TOKEN"], "${FILES_TOKEN}",
        "the original is not touched"
    );

    let verbatim = AgentSpec::parse(
        "prompt: \"Run echo ${HOME} for the user\"\nignored_field: \"${UNSET_HERE}\"\n",
    )
    .expect("parse");
    let out = verbatim
        .interpolate(|_| None)
        .expect("prompt and unknown fields are not interpolated");
    assert_eq!(out, verbatim);

    let literal = AgentSpec::parse("name: \"cost $5, literal $${HOME}\"").expect("parse");
    let out = literal.interpolate(|_| None).expect("no variables");
    assert_eq!(out.name.as_deref(), Some("cost $5, literal ${HOME}"));
}

#[test]
fn an_unset_variable_names_its_field_and_what_to_set() {
    let spec = AgentSpec::parse(MINIMAL).expect("parse");
    let err = spec.interpolate(|_| None).expect_err("unset");
    assert_eq!(err.path, "executor.auth.api_key");
    assert_eq!(err.kind, SpecErrorKind::UnsetVariable);
    assert!(err.reason.contains("OPENAI_API_KEY"), "{err}");
}

#[test]
fn specs_that_cannot_run_are_refused_with_their_field_path() {
    let cases: &[(&str, &str, SpecErrorKind, &[&str])] = &[
        ("name: a\n", "executor", SpecErrorKind::Missing, &[]),
        (
            "executor: {model: m}\n",
            "executor.harness",
            SpecErrorKind::Missing,
            &[],
        ),
        (
            "executor: {harness: nope}\n",
            "executor.harness",
            SpecErrorKind::UnknownHarness,
            &[],
        ),
        (
            "executor: {config: {harness: nope}}\n",
            "executor.config.harness",
            SpecErrorKind::UnknownHarness,
            &[],
        ),
        (
            "executor: {harness: openai, config: {harness: claude-sdk}}\n",
            "executor.config.harness",
            SpecErrorKind::Invalid,
            &[],
        ),
        (
            "executor: {harness: echo}\ninstructions: missing.md\n",
            "instructions",
            SpecErrorKind::MissingFile,
            &[],
        ),
        (
            "executor: {harness: echo}\nprompt: ../outside.md\n",
            "prompt",
            SpecErrorKind::Invalid,
            &["../outside.md"],
        ),
        (
            "executor: {harness: echo}\nprompt: /etc/passwd\n",
            "prompt",
            SpecErrorKind::Invalid,
            &[],
        ),
        (
            "executor: {harness: echo}\ntools: {t: {type: mcp}}\n",
            "tools.t.command",
            SpecErrorKind::Missing,
            &[],
        ),
        (
            "executor: {harness: echo}\ntools: {t: {command: x, url: http://y}}\n",
            "tools.t",
            SpecErrorKind::Invalid,
            &[],
        ),
        (
            "executor: {harness: [a, b]}\n",
            "executor.harness",
            SpecErrorKind::Syntax,
            &[],
        ),
        (
            "tools: {t: {args: notalist}}\n",
            "tools.t.args",
            SpecErrorKind::Syntax,
            &[],
        ),
        (
            "executor: {harness: echo\n",
            "$",
            SpecErrorKind::Syntax,
            &[],
        ),
        ("[1, 2]\n", "$", SpecErrorKind::Syntax, &[]),
        ("{\"executor\": 3}", "executor", SpecErrorKind::Syntax, &[]),
    ];
    for (text, path, kind, present) in cases {
        let err = AgentSpec::parse(text)
            .and_then(|spec| spec.validate(files(present)))
            .expect_err(text);
        assert_eq!(
            (err.path.as_str(), err.kind),
            (*path, *kind),
            "{text:?}: {err}"
        );
        assert!(!err.reason.is_empty());
    }
}

#[test]
fn tools_settings_such_as_pollys_sub_agent_list_are_kept_beside_the_entries() {
    // The shape of 0.19.1's built-in `polly` (`tools.agents` is a list of sub-agent directories), with the
    // other settings 0.19.1 reads in `tools`, and an MCP server beside them.
    let text = "name: polly
executor: {type: omnigent, config: {harness: claude-sdk}}
prompt: You are polly.
tools:
  agents:
    - claude_code
    - codex
  timeout: 60
  builtins: []
  files: {type: mcp, command: mcp-files}
";
    let spec = AgentSpec::parse(text).expect("parse");
    assert_eq!(spec.harness().expect("harness"), Harness::ClaudeCode);
    assert_eq!(spec.tools.keys().collect::<Vec<_>>(), ["files"]);
    assert!(spec.tools["files"].mcp().is_some());
    assert_eq!(
        spec.tools.settings.get("agents"),
        Some(&serde_json::json!(["claude_code", "codex"]))
    );
    assert_eq!(
        spec.tools.settings.get("timeout"),
        Some(&serde_json::json!(60))
    );
    spec.validate(files(&[])).expect("valid");
    // Interpolation (which writes the spec out and reads it back) keeps them.
    let resolved = spec.interpolate(|_| None).expect("nothing to resolve");
    assert_eq!(resolved, spec);
    // A setting that is not a tool is never read as one, whatever its shape.
    let spec = AgentSpec::parse(
        "executor: {harness: echo}\ntools: {sandbox: {type: mcp, container_image: x}}\n",
    )
    .expect("parse");
    assert!(spec.tools.entries.is_empty());
    spec.validate(files(&[])).expect("valid");
}
