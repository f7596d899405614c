//! Benchmark of the runner relay (not a test), against the real `omnigent server run` process:
//! - echo time to first token: a real `omnigent runner --harness echo`, an open SSE stream, then
//!   `POST …/events` until the first `response.output_text.delta` arrives (p50/p99 over sequential turns);
//! - fan-out: a scripted runner (a WebSocket client in this process speaking the tunnel frames) streams 100,000
//!   text deltas, each stamped with its send time, to 100 SSE subscribers: events/s through the relay, p99
//!   end-to-end latency, whether every subscriber got every event, and the server's CPU time;
//! - runner idle RSS (the real runner process, connected and idle);
//! - 1,000 idle runner tunnels on one server: server RSS before and after, per tunnel.
//!
//! `cargo bench -p omnigent --bench relay [-- TURNS DELTAS SUBSCRIBERS TUNNELS RATE]` (a 0 skips that part;
//! the fan-out runs paced at RATE deltas/s, default 50,000, then as an unpaced burst)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use omnigent_proto::events::SseParser;
use omnigent_testkit::Proc;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const EXE: &str = env!("CARGO_BIN_EXE_omnigent");

/// Resident set of `proc`, in KiB.
fn rss_kib(proc: &Proc) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", proc.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// User + system CPU time of `proc` so far, in clock ticks (1/100 s).
fn cpu_ticks(proc: &Proc) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", proc.child.id())).unwrap();
    // Fields after the `(comm)`: utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// `omnigent ARGS` with its own `home` (the testkit's command and process guard).
fn spawn(home: &std::path::Path, args: &[&str]) -> (Proc, std::process::ChildStdout) {
    let mut cmd = omnigent_testkit::process::omnigent(EXE, home);
    cmd.args(args);
    Proc::spawn(cmd)
}

async fn start_server(home: &std::path::Path) -> (Proc, String) {
    let mut cmd = omnigent_testkit::process::omnigent(EXE, home);
    cmd.args(["server", "run", "--port", "0"]);
    Proc::spawn_reporting_url(cmd).await
}

async fn bound_session(http: &reqwest::Client, url: &str, runner_id: &str) -> String {
    let created: Value = http
        .post(format!("{url}/v1/sessions"))
        .json(&json!({"agent_id": "echo"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let patched = http
        .patch(format!("{url}/v1/sessions/{id}"))
        .json(&json!({"runner_id": runner_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status().as_u16(), 200);
    id
}

/// An SSE client: returns a channel of (event type, data) and waits for the ready heartbeat.
async fn subscribe(
    http: &reqwest::Client,
    url: &str,
    session: &str,
) -> mpsc::UnboundedReceiver<(String, String)> {
    let mut resp = http
        .get(format!("{url}/v1/sessions/{session}/stream"))
        .send()
        .await
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut parser = SseParser::new(8 << 20);
        let mut ready_tx = Some(ready_tx);
        while let Ok(Some(chunk)) = resp.chunk().await {
            for m in parser.push(&chunk).unwrap() {
                let kind = m.event.unwrap_or_default();
                if kind == "session.heartbeat" {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                    continue;
                }
                if tx.send((kind, m.data)).is_err() {
                    return;
                }
            }
        }
    });
    ready.await.unwrap();
    rx
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn echo_ttft(turns: usize) {
    let home = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let (mut server, url) = start_server(home.path()).await;
    let token = "bench-echo-token";
    let runner_id = omnigent_proto::ids::runner_id_for_token(token);
    let (runner, _) = spawn(
        home.path(),
        &[
            "runner",
            "--server",
            &url,
            "--token",
            token,
            "--harness",
            "echo",
            "--workspace",
            ws.path().to_str().unwrap(),
        ],
    );
    server
        .wait_log(&[omnigent_tunnel::server::RUNNER_CONNECTED, &runner_id])
        .await;
    let http = reqwest::Client::new();
    let session = bound_session(&http, &url, &runner_id).await;
    let mut events = subscribe(&http, &url, &session).await;
    let mut samples = Vec::with_capacity(turns);
    for i in 0..turns + 5 {
        let body = json!({"type": "message", "data": {"role": "user", "content": [{"type": "input_text", "text": format!("ping {i}")}]}});
        let t = Instant::now();
        let post = http
            .post(format!("{url}/v1/sessions/{session}/events"))
            .json(&body)
            .send();
        let first = async {
            let mut consumed = false;
            loop {
                let (kind, _) = events.recv().await.unwrap();
                consumed |= kind == "session.input.consumed";
                if kind == "response.output_text.delta" {
                    return (t.elapsed(), consumed);
                }
            }
        };
        let (resp, (ttft, consumed)) = tokio::join!(post, first);
        assert_eq!(resp.unwrap().status().as_u16(), 202);
        // Drain to the end of the turn (both idle and the input announcement).
        let (mut idle, mut consumed) = (false, consumed);
        while !(idle && consumed) {
            let (kind, data) = events.recv().await.unwrap();
            idle |= kind == "session.status" && data.contains("\"idle\"");
            consumed |= kind == "session.input.consumed";
        }
        if i >= 5 {
            samples.push(ttft);
        }
    }
    samples.sort();
    println!(
        "echo time to first token ({turns} turns): p50 {:?}  p99 {:?}",
        pct(&samples, 0.5),
        pct(&samples, 0.99)
    );
    println!(
        "runner idle RSS (connected, one session served): {} KiB",
        rss_kib(&runner)
    );
}

/// A scripted runner on the tunnel: answers the server's requests; returns the sender of raw frames and the
/// request id of the session stream once opened.
async fn scripted_runner(
    url: &str,
    token: &str,
) -> (
    mpsc::UnboundedSender<Message>,
    mpsc::UnboundedReceiver<String>,
) {
    let runner_id = omnigent_proto::ids::runner_id_for_token(token);
    let mut request = format!(
        "{}/v1/runners/{runner_id}/tunnel",
        url.replace("http://", "ws://")
    )
    .into_client_request()
    .unwrap();
    request
        .headers_mut()
        .insert("x-omnigent-runner-tunnel-token", token.parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let (mut sink, mut source) = ws.split();
    let hello = json!({"kind": "hello", "runner_version": "bench", "frame_protocol_version": 1,
        "harnesses": ["echo"], "envs": [], "telemetry_opt_out": true});
    sink.send(Message::Text(hello.to_string().into()))
        .await
        .unwrap();
    let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
    let (streams_tx, streams) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
    });
    let reply = out.clone();
    tokio::spawn(async move {
        while let Some(Ok(Message::Text(text))) = source.next().await {
            let frame: Value = serde_json::from_str(text.as_str()).unwrap();
            let send = |v: Value| {
                let _ = reply.send(Message::Text(v.to_string().into()));
            };
            match frame["kind"].as_str().unwrap_or("") {
                "ping" => send(json!({"kind": "pong", "ts": frame["ts"]})),
                "request" => {
                    let id = frame["id"].as_str().unwrap().to_owned();
                    let path = frame["path"].as_str().unwrap_or("");
                    if path.ends_with("/stream") {
                        send(
                            json!({"kind": "response.head", "id": id, "status": 200, "headers": [["content-type", "text/event-stream"]]}),
                        );
                        send(
                            json!({"kind": "response.body", "id": id, "body": "data: {\"type\":\"session.heartbeat\"}\n\n", "encoding": "utf-8"}),
                        );
                        let _ = streams_tx.send(id);
                    } else {
                        let status = if frame["method"] == "GET" { 200 } else { 202 };
                        send(
                            json!({"kind": "response.head", "id": id, "status": status, "headers": [["content-type", "application/json"]]}),
                        );
                        send(
                            json!({"kind": "response.body", "id": id, "body": "{\"status\":\"idle\"}", "encoding": "utf-8"}),
                        );
                        send(json!({"kind": "response.end", "id": id}));
                    }
                }
                _ => {}
            }
        }
    });
    (out, streams)
}

/// What one fan-out subscriber saw.
struct Seen {
    latencies: Vec<Duration>,
    /// The `n` of the next delta it expected (== deltas when it got them all).
    next: u64,
    gaps: u64,
}

/// A lean SSE subscriber for the fan-out: a plain TCP connection and a hand-written `GET`, whose raw bytes are
/// scanned for the `"n":` and `"t":` stamps of each delta until `response.completed`. The subscribers share
/// the 2 cores with the server, so they do as little as a client can: no HTTP client stack, no per-event
/// allocation. (The server writes whole SSE events per HTTP chunk, so chunk-size lines never split one.)
async fn fan_out_subscriber(
    url: &str,
    session: &str,
    epoch: Instant,
    received: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Seen> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!(
            "GET /v1/sessions/{session}/stream HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut filled = 0;
    // Response head and the ready heartbeat: subscribed from here on.
    loop {
        let n = tcp.read(&mut buf[filled..]).await.unwrap();
        assert!(n > 0, "the stream closed before its ready heartbeat");
        filled += n;
        if let Some(at) = memchr::memmem::find(&buf[..filled], b"session.heartbeat") {
            assert!(buf.starts_with(b"HTTP/1.1 200"), "stream answered 200");
            let end = at + memchr::memmem::find(&buf[at..filled], b"\n\n").unwrap() + 2;
            buf.copy_within(end..filled, 0);
            filled -= end;
            break;
        }
    }
    tokio::spawn(async move {
        let stamp = memchr::memmem::Finder::new(b"\"n\":");
        let mut seen = Seen {
            latencies: Vec::new(),
            next: 0,
            gaps: 0,
        };
        loop {
            // Only whole events: up to the last blank line.
            if let Some(end) = memchr::memmem::rfind(&buf[..filled], b"\n\n") {
                let whole = &buf[..end + 2];
                let now = u64::try_from(epoch.elapsed().as_micros()).unwrap();
                let mut count = 0;
                for at in stamp.find_iter(whole) {
                    let n = digits(&whole[at + 4..]);
                    let t_at = at + memchr::memmem::find(&whole[at..], b"\"t\":").unwrap() + 4;
                    let sent = digits(&whole[t_at..]);
                    if n != seen.next {
                        seen.gaps += 1;
                    }
                    seen.next = n + 1;
                    seen.latencies
                        .push(Duration::from_micros(now.saturating_sub(sent)));
                    count += 1;
                }
                received.fetch_add(count, Ordering::Relaxed);
                let finished = memchr::memmem::find(whole, b"response.completed").is_some();
                buf.copy_within(end + 2..filled, 0);
                filled -= end + 2;
                if finished {
                    break;
                }
            }
            if filled == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
            match tcp.read(&mut buf[filled..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => filled += n,
            }
        }
        seen
    })
}

fn digits(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0, |n, b| n * 10 + u64::from(b - b'0'))
}

/// One runner streams `deltas` text deltas to `subscribers` SSE clients, at `rate` deltas/s (0: all at once).
async fn fan_out(deltas: usize, subscribers: usize, rate: usize) {
    let home = tempfile::tempdir().unwrap();
    let (mut server, url) = start_server(home.path()).await;
    let token = "bench-fanout-token";
    let runner_id = omnigent_proto::ids::runner_id_for_token(token);
    let (out, mut streams) = scripted_runner(&url, token).await;
    server
        .wait_log(&[omnigent_tunnel::server::RUNNER_CONNECTED, &runner_id])
        .await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(subscribers + 8)
        .build()
        .unwrap();
    let session = bound_session(&http, &url, &runner_id).await;
    // The first message opens the relay (the scripted runner accepts it and streams nothing yet).
    let resp = http
        .post(format!("{url}/v1/sessions/{session}/events"))
        .json(&json!({"type": "message", "data": {"role": "user", "content": "go"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let stream_id = streams.recv().await.unwrap();

    let epoch = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for _ in 0..subscribers {
        handles.push(fan_out_subscriber(&url, &session, epoch, received.clone()).await);
    }
    let cpu_before = cpu_ticks(&server);
    let start = Instant::now();
    let frame = |event: Value| {
        let body = format!("data: {event}\n\n");
        Message::Text(
            json!({"kind": "response.body", "id": stream_id, "body": body, "encoding": "utf-8"})
                .to_string()
                .into(),
        )
    };
    let mut n = 0;
    while n < deltas {
        // Paced: as many as are due by now, checked every millisecond; a burst: everything at once.
        let due = if rate == 0 {
            deltas
        } else {
            ((start.elapsed().as_secs_f64() * rate as f64) as usize).min(deltas)
        };
        while n < due {
            let t = u64::try_from(epoch.elapsed().as_micros()).unwrap();
            let event = json!({"type": "response.output_text.delta", "delta": "x", "n": n, "t": t});
            out.send(frame(event)).unwrap();
            n += 1;
        }
        if rate == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let sending = start.elapsed();
    out.send(frame(
        json!({"type": "response.completed", "response": {"id": "resp_bench"}}),
    ))
    .unwrap();
    let mut all = Vec::new();
    let mut complete = 0;
    let mut gaps = 0;
    for h in handles {
        let seen = h.await.unwrap();
        if seen.next as usize == deltas && seen.gaps == 0 {
            complete += 1;
        }
        gaps += seen.gaps;
        all.extend(seen.latencies);
    }
    let elapsed = start.elapsed();
    let cpu = cpu_ticks(&server) - cpu_before;
    all.sort();
    let pace = if rate == 0 {
        "unpaced burst".to_owned()
    } else {
        format!("paced at {rate}/s")
    };
    println!(
        "fan-out ({pace}): {deltas} deltas sent in {sending:.2?} ({:.0}/s), received by {subscribers} subscribers \
         in {elapsed:.2?}: {:.0} events/s through the relay ({:.0} deliveries/s); latency p50 {:?} p99 {:?} max \
         {:?}; {complete}/{subscribers} subscribers got every event ({gaps} gaps); server CPU {:.2} s",
        deltas as f64 / sending.as_secs_f64(),
        deltas as f64 / elapsed.as_secs_f64(),
        received.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
        pct(&all, 0.5),
        pct(&all, 0.99),
        all.last().copied().unwrap_or_default(),
        cpu as f64 / 100.0,
    );
    println!("server RSS after fan-out: {} KiB", rss_kib(&server));
}

async fn idle_tunnels(count: usize) {
    let home = tempfile::tempdir().unwrap();
    let (mut server, url) = start_server(home.path()).await;
    let before = rss_kib(&server);
    let mut keep = Vec::with_capacity(count);
    for i in 0..count {
        keep.push(scripted_runner(&url, &format!("bench-idle-{i}")).await);
    }
    for _ in 0..count {
        server
            .wait_log(&[omnigent_tunnel::server::RUNNER_CONNECTED])
            .await;
    }
    let after = rss_kib(&server);
    println!(
        "{count} idle runner tunnels: server RSS {before} KiB -> {after} KiB, {:.1} KiB per tunnel",
        (after.saturating_sub(before)) as f64 / count as f64
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let turns = args.first().copied().unwrap_or(200);
    let deltas = args.get(1).copied().unwrap_or(100_000);
    let subscribers = args.get(2).copied().unwrap_or(100);
    let tunnels = args.get(3).copied().unwrap_or(1000);
    let rate = args.get(4).copied().unwrap_or(50_000);
    if turns > 0 {
        echo_ttft(turns).await;
    }
    if deltas > 0 {
        fan_out(deltas, subscribers, rate).await;
        fan_out(deltas, subscribers, 0).await;
    }
    if tunnels > 0 {
        idle_tunnels(tunnels).await;
    }
}
