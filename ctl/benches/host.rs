//! Benchmark of the host path of the real `omnigent` binary (not a test), each iteration in its own
//! OMNIGENT_HOME and free port:
//! - cold `omnigent start` until this machine is online as a host of the local server (`start` waits for the
//!   host tunnel; the bench checks it reports `online`);
//! - session cold start: `POST /v1/sessions` bound to this host (the server asks the host to launch a runner)
//!   → stream ready → message posted → first `response.output_text.delta` of the echo harness; reported in
//!   total and per step;
//! - reconnect after a server restart: SIGKILL the local server (the daemon restarts it on the same port), then
//!   the time from the restarted server's first healthy answer until `/health?session_id=` says the host and
//!   the session's runner are online again (target < 1 s).
//!
//! `cargo bench -p omnigent --bench host [-- ITERATIONS]`
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

const EXE: &str = env!("CARGO_BIN_EXE_omnigent");

fn omnigent(home: &std::path::Path, port: u16, args: &[&str]) -> std::process::Output {
    let out = Command::new(EXE)
        .args(args)
        .env("OMNIGENT_HOME", home)
        .env("OMNIGENT_SERVER_PORT", port.to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "omnigent {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn report(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{name:<40} n={:<4} median {:>8.2} ms   p90 {:>8.2} ms   min {:>8.2} ms",
        v.len(),
        p(0.5).as_secs_f64() * 1e3,
        p(0.9).as_secs_f64() * 1e3,
        v[0].as_secs_f64() * 1e3
    );
}

/// Times of one session cold start: (created, stream ready, first token), each from the previous step, and the
/// session's id.
async fn session_cold_start(base: &str, host_id: &str, workspace: &str) -> ([Duration; 3], String) {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let agents: Value = http
        .get(format!("{base}/v1/agents?limit=100"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent = agents["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["harness"] == "echo")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let t0 = Instant::now();
    let resp = http
        .post(format!("{base}/v1/sessions"))
        .json(&json!({"agent_id": agent, "host_id": host_id, "workspace": workspace}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "create: {}", resp.status());
    let session: Value = resp.json().await.unwrap();
    let id = session["id"].as_str().unwrap().to_owned();
    let created = t0.elapsed();
    let t1 = Instant::now();
    let stream = http
        .get(format!("{base}/v1/sessions/{id}/stream"))
        .send()
        .await
        .unwrap();
    let mut body = stream.bytes_stream();
    let mut buf = String::new();
    let mut next_event = async || -> String {
        loop {
            if let Some(end) = buf.find("\n\n") {
                let ev: String = buf.drain(..end + 2).collect();
                return ev;
            }
            let chunk = body.next().await.unwrap().unwrap();
            buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    while !next_event().await.contains("session.heartbeat") {}
    let ready = t1.elapsed();
    let t2 = Instant::now();
    // Until the launched runner has dialled the server, a message is answered 503: retry at once (this wait
    // is part of the cold start being measured).
    loop {
        let resp = http
            .post(format!("{base}/v1/sessions/{id}/events"))
            .json(&json!({"type": "message", "data": {"role": "user", "content": [{"type": "input_text", "text": "hello"}]}}))
            .send()
            .await
            .unwrap();
        if resp.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        assert!(resp.status().is_success(), "message: {}", resp.status());
        break;
    }
    while !next_event().await.contains("response.output_text.delta") {}
    ([created, ready, t2.elapsed()], id)
}

/// SIGKILLs the server `pid` and returns (kill → restarted server healthy, healthy → host and the session's
/// runner online again), polling `/health` every millisecond.
async fn server_restart(base: &str, pid: i32, session: &str) -> [Duration; 2] {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let t0 = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Until the old process is gone (reaped) or a zombie, a healthy answer could still be its own.
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if stat.is_empty() || zombie {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let url = format!("{base}/health?session_id={session}");
    let mut healthy_at = None;
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no reconnect after the server restart"
        );
        let resp = http.get(&url).send().await;
        if let Some(resp) = resp.ok().filter(|r| r.status().is_success()) {
            let now = Instant::now();
            let healthy = *healthy_at.get_or_insert(now);
            let v: Value = resp.json().await.unwrap_or_default();
            if v["session"]["runner_online"] == true && v["session"]["host_online"] == true {
                return [healthy - t0, now - healthy];
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn main() {
    let iterations: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut start, mut total, mut created, mut ready, mut token) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut restarted, mut reconnected) = (vec![], vec![]);
    for _ in 0..iterations {
        let home = tempfile::tempdir().unwrap();
        let ws = tempfile::tempdir().unwrap();
        // Held for the daemon's server (no bind-drop-reuse race).
        let reserved = omnigent_testkit::net::PortReservation::new();
        let port = reserved.port;
        let t = Instant::now();
        let out = omnigent(home.path(), port, &["start", "--json"]);
        start.push(t.elapsed());
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v["host"]["tunnel"], "online",
            "start returned before the host was online: {v}"
        );
        let st: Value =
            serde_json::from_slice(&omnigent(home.path(), port, &["status", "--json"]).stdout)
                .unwrap();
        let host_id = st["config"]["host_id"].as_str().unwrap().to_owned();
        let base = v["server"]["url"].as_str().unwrap().to_owned();
        let ([c, r, f], session) = rt.block_on(session_cold_start(
            &base,
            &host_id,
            ws.path().to_str().unwrap(),
        ));
        created.push(c);
        ready.push(r);
        token.push(f);
        total.push(c + r + f);
        let server_pid = st["server"]["pid"].as_i64().unwrap() as i32;
        let [h, o] = rt.block_on(server_restart(&base, server_pid, &session));
        restarted.push(h);
        reconnected.push(o);
        omnigent(home.path(), port, &["stop"]);
    }
    report("cold start → host online", start);
    report("session cold start → first echo token", total);
    report("  POST /v1/sessions (runner launched)", created);
    report("  stream open → ready heartbeat", ready);
    report("  message → first delta", token);
    report("server SIGKILL → restarted server healthy", restarted);
    report("server healthy → host + runner online", reconnected);
}
