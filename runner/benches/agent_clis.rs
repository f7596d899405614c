//! The agent-CLI harnesses (`claude-sdk` = Claude Code, `codex` = `codex app-server`, `pi` = `pi --mode rpc`),
//! each the real CLI from testkit's pinned install against its fake vendor on loopback (Claude Code: a fake
//! Messages API; Codex and Pi: a fake Responses API their config points at): time to the first text delta and
//! to the turn's end, for a turn that starts the CLI (cold: what a per-turn CLI pays every turn) and for the
//! next turn on the same long-lived process (warm). Harness level (no server in between). Run with
//! `cargo bench -p omnigent-runner --bench agent_clis [-- claude codex pi]` (`OMNIGENT_AGENT_CLIS` names
//! another install); prints the medians.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use omnigent_runner::harness::claude_code::{ClaudeCode, Options};
use omnigent_runner::harness::codex::CodexHandle;
use omnigent_runner::harness::pi::PiHandle;
use omnigent_runner::harness::{self, EventSink, HarnessConfig, HarnessKind, HistoryEntry, Turn};
use omnigent_testkit::vendor::{Canned, FakeVendor, responses};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const ROUNDS: usize = 5;

fn event(payload: Value) -> String {
    format!(
        "event: {}\ndata: {payload}\n\n",
        payload["type"].as_str().unwrap()
    )
}

/// A Messages API answer of `text`.
fn messages_answer(text: &str) -> Canned {
    Canned::stream(vec![
        event(
            json!({"type": "message_start", "message": {"id": "msg_b", "type": "message",
            "role": "assistant", "content": [], "model": "claude-test", "stop_reason": null,
            "usage": {"input_tokens": 5, "output_tokens": 1}}}),
        ),
        event(
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        event(
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        ),
        event(json!({"type": "content_block_stop", "index": 0})),
        event(
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}),
        ),
        event(json!({"type": "message_stop"})),
    ])
}

/// One session of `cli` in `dir` against `vendor`: the turn it runs (its handle inside) and its harness.
fn session(cli: &str, dir: &Path, vendor: &FakeVendor) -> (Turn, HarnessKind) {
    let ws = dir.join("ws");
    let home = dir.join("home");
    std::fs::create_dir_all(&ws).unwrap();
    let binary = omnigent_testkit::agent_cli(cli).display().to_string();
    let mut turn = Turn {
        session_id: "conv_bench".into(),
        response_id: "resp_bench".into(),
        workspace: ws,
        history: vec![HistoryEntry::User { text: "hi".into() }],
        config: HarnessConfig::default(),
        claude_code: None,
        approvals: Default::default(),
        mcp: None,
        codex: None,
        pi: None,
        exec: None,
    };
    let kind = match cli {
        "claude" => {
            std::fs::create_dir_all(home.join(".claude")).unwrap();
            turn.config = HarnessConfig {
                model: Some("claude-sonnet-4-5".into()),
                base_url: Some(vendor.url.clone()),
                api_key: Some("test".into()),
                ..HarnessConfig::default()
            };
            turn.claude_code = Some(ClaudeCode::spawn(Options {
                env: vec![
                    ("HOME".into(), home.display().to_string()),
                    (
                        "CLAUDE_CONFIG_DIR".into(),
                        home.join(".claude").display().to_string(),
                    ),
                    ("OMNIGENT_CLAUDE_PATH".into(), binary),
                ],
                ..Options::default()
            }));
            HarnessKind::ClaudeCode
        }
        "codex" => {
            let codex_home = home.join(".codex");
            omnigent_testkit::agent_clis::write_codex_config(
                &codex_home,
                &vendor.url,
                "BENCH_CODEX_KEY",
            );
            turn.config.agent_env = vec![
                ("OMNIGENT_CODEX_PATH".into(), binary),
                ("HOME".into(), home.display().to_string()),
                ("CODEX_HOME".into(), codex_home.display().to_string()),
                ("BENCH_CODEX_KEY".into(), "test-key".into()),
                ("OPENAI_API_KEY".into(), String::new()),
            ];
            turn.codex = Some(CodexHandle::spawn());
            HarnessKind::Codex
        }
        "pi" => {
            let agent_dir = home.join(".pi/agent");
            std::fs::create_dir_all(&agent_dir).unwrap();
            let models = json!({"providers": {"fake": {
                "baseUrl": format!("{}/v1", vendor.url), "api": "openai-responses",
                "apiKey": "test-key", "models": [{"id": "gpt-test"}],
            }}});
            std::fs::write(agent_dir.join("models.json"), models.to_string()).unwrap();
            let settings = json!({"defaultProvider": "fake", "defaultModel": "gpt-test"});
            std::fs::write(agent_dir.join("settings.json"), settings.to_string()).unwrap();
            turn.config.agent_env = vec![
                ("OMNIGENT_PI_PATH".into(), binary),
                ("HOME".into(), home.display().to_string()),
                (
                    "PI_CODING_AGENT_DIR".into(),
                    agent_dir.display().to_string(),
                ),
                ("PI_OFFLINE".into(), "1".into()),
            ];
            for cred in HarnessKind::Pi.spec().credentials {
                turn.config
                    .agent_env
                    .push((cred.var.to_owned(), String::new()));
            }
            turn.pi = Some(PiHandle::spawn());
            HarnessKind::Pi
        }
        other => panic!("unknown CLI {other}: claude, codex or pi"),
    };
    (turn, kind)
}

/// (first delta, turn end) of one turn.
async fn timed_turn(turn: &Turn, kind: HarnessKind) -> (Duration, Duration) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sink = EventSink::new(tx);
    let start = Instant::now();
    let cancel = CancellationToken::new();
    let run = harness::run_turn(kind, turn, &sink, &cancel);
    tokio::pin!(run);
    let mut first = None;
    loop {
        tokio::select! {
            r = &mut run => { r.unwrap(); break; }
            Some(e) = rx.recv() => if first.is_none() && e["type"] == "response.output_text.delta" {
                first = Some(start.elapsed());
            },
        }
    }
    while let Ok(e) = rx.try_recv() {
        if first.is_none() && e["type"] == "response.output_text.delta" {
            first = Some(start.elapsed());
        }
    }
    let end = start.elapsed();
    (first.expect("a text delta"), end)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let mut clis: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if clis.is_empty() {
        clis = vec!["claude".into(), "codex".into(), "pi".into()];
    }
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    println!("against a fake vendor on loopback, median of {ROUNDS} sessions:");
    for cli in &clis {
        let base = tempfile::tempdir().unwrap();
        let (mut cold_first, mut cold_end, mut warm_first, mut warm_end) =
            (vec![], vec![], vec![], vec![]);
        for round in 0..ROUNDS {
            let answers = if cli == "claude" {
                vec![messages_answer("one"), messages_answer("two")]
            } else {
                vec![
                    Canned::stream(responses::text(&["o", "ne"])),
                    Canned::stream(responses::text(&["t", "wo"])),
                ]
            };
            let vendor = FakeVendor::start(answers).await;
            let (turn, kind) = session(cli, &base.path().join(format!("s{round}")), &vendor);
            let (f, e) = timed_turn(&turn, kind).await;
            cold_first.push(f);
            cold_end.push(e);
            let (f, e) = timed_turn(&turn, kind).await;
            warm_first.push(f);
            warm_end.push(e);
        }
        println!(
            "  {cli:<6} turn 1 (starts the CLI):      first token {}, turn end {}",
            ms(median(cold_first)),
            ms(median(cold_end))
        );
        println!(
            "  {cli:<6} turn 2 (same long-lived CLI): first token {}, turn end {}",
            ms(median(warm_first)),
            ms(median(warm_end))
        );
    }
}
