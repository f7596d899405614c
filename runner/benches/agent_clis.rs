//! Claude Code (`claude-sdk`) against a fake Messages API on loopback: time to the first text delta and to
//! the turn's end, for a turn that starts the CLI (cold: what a per-turn CLI pays every turn) and for the next
//! turn on the same long-lived process (warm). Harness level (no server in between). Run with
//! `OMNIGENT_AGENT_CLIS=… cargo bench -p omnigent-runner --bench claude_code`; prints the medians.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use omnigent_runner::harness::claude_code::{ClaudeCode, Options};
use omnigent_runner::harness::{self, EventSink, HarnessConfig, HarnessKind, HistoryEntry, Turn};
use omnigent_testkit::vendor::{Canned, FakeVendor};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const ROUNDS: usize = 5;

fn event(payload: Value) -> String {
    format!(
        "event: {}\ndata: {payload}\n\n",
        payload["type"].as_str().unwrap()
    )
}

fn answer(text: &str) -> Canned {
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

/// (first delta, turn end) of one turn.
async fn timed_turn(
    agent: &ClaudeCode,
    ws: &std::path::Path,
    vendor: &FakeVendor,
) -> (Duration, Duration) {
    let turn = Turn {
        session_id: "conv_bench".into(),
        response_id: "resp_bench".into(),
        workspace: ws.to_owned(),
        history: vec![HistoryEntry::User { text: "hi".into() }],
        config: HarnessConfig {
            model: Some("claude-sonnet-4-5".into()),
            base_url: Some(vendor.url.clone()),
            api_key: Some("test".into()),
            ..HarnessConfig::default()
        },
        claude_code: Some(agent.clone()),
        mcp: None,
        codex: None,
        pi: None,
        exec: None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sink = EventSink::new(tx);
    let start = Instant::now();
    let cancel = CancellationToken::new();
    let run = harness::run_turn(HarnessKind::ClaudeCode, &turn, &sink, &cancel);
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
    let end = start.elapsed();
    (first.unwrap_or(end), end)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let binary = omnigent_testkit::agent_cli("claude");
    let base = tempfile::tempdir().unwrap();
    let (mut cold_first, mut cold_end, mut warm_first, mut warm_end) =
        (vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        let ws = base.path().join(format!("ws{round}"));
        let home = base.path().join(format!("home{round}"));
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::create_dir_all(home.join(".claude")).unwrap();
        let vendor = FakeVendor::start(vec![answer("one"), answer("two")]).await;
        let agent = ClaudeCode::spawn(Options {
            env: vec![
                ("HOME".into(), home.display().to_string()),
                (
                    "CLAUDE_CONFIG_DIR".into(),
                    home.join(".claude").display().to_string(),
                ),
                ("OMNIGENT_CLAUDE_PATH".into(), binary.display().to_string()),
            ],
            ..Options::default()
        });
        let (f, e) = timed_turn(&agent, &ws, &vendor).await;
        cold_first.push(f);
        cold_end.push(e);
        let (f, e) = timed_turn(&agent, &ws, &vendor).await;
        warm_first.push(f);
        warm_end.push(e);
    }
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    println!("claude-sdk against a fake Messages API on loopback, median of {ROUNDS}:");
    println!(
        "  turn 1 (starts the CLI):      first token {}, turn end {}",
        ms(median(cold_first)),
        ms(median(cold_end))
    );
    println!(
        "  turn 2 (same long-lived CLI): first token {}, turn end {}",
        ms(median(warm_first)),
        ms(median(warm_end))
    );
}
