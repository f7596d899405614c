//! A runner whose tunnel blips mid-turn (the network drops, the process lives on) loses nothing: what its
//! harness emits while no relay is subscribed waits on the runner and reaches the server once the tunnel is
//! back, in order, once.
//!
//! Real processes over real sockets: `omnigent server run` and `omnigent runner` as children, a TCP proxy of the
//! test's own between them (cutting it drops the tunnel; while cut it refuses the runner's redials), and a
//! scripted fake OpenAI streaming API that holds its answer until the test says. Every wait is on a signal: a
//! log line of a process, an SSE event, a request reaching the fake vendor; never a sleep.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::{Notify, mpsc};

use common::{
    FakeVendor, Proc, Server, Step, WAIT, oa_call, oa_finish, oa_text, openai_env, start_runner,
    start_server, summary, token_and_id,
};
use omnigent_runner::{BACKLOG_TAKEN, NO_SUBSCRIBER_LEFT};

/// The runner grace of the server under test: far longer than any blip here.
const GRACE_MS: u64 = 30_000;

// ---------------------------------------------------------------------------------------------------------
// The proxy between runner and server

#[derive(Default)]
struct ProxyState {
    open: bool,
    conns: Vec<tokio::task::AbortHandle>,
}

/// A TCP proxy on 127.0.0.1 to one upstream. [`Proxy::cut`] drops every connection through it and refuses
/// new ones (accepted and closed at once, each one reported) until [`Proxy::reopen`].
struct Proxy {
    url: String,
    state: Arc<Mutex<ProxyState>>,
    refused: mpsc::UnboundedReceiver<()>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(ProxyState {
            open: true,
            conns: Vec::new(),
        }));
        let (refused_tx, refused) = mpsc::unbounded_channel();
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut downstream, _)) = listener.accept().await else {
                    return;
                };
                // Decided and recorded under the lock, so a cut cannot miss a connection being set up.
                let mut state = shared.lock().unwrap();
                if !state.open {
                    drop(downstream);
                    let _ = refused_tx.send(());
                    continue;
                }
                let task = tokio::spawn(async move {
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
                });
                state.conns.retain(|c| !c.is_finished());
                state.conns.push(task.abort_handle());
            }
        });
        Proxy {
            url,
            state,
            refused,
            accept,
        }
    }

    /// Drop every connection (both ends closed) and refuse new ones.
    fn cut(&self) {
        let mut state = self.state.lock().unwrap();
        state.open = false;
        for conn in state.conns.drain(..) {
            conn.abort();
        }
    }

    fn reopen(&self) {
        self.state.lock().unwrap().open = true;
    }

    /// Wait until a connection was refused since the cut.
    async fn refused_one(&mut self) {
        tokio::time::timeout(WAIT, self.refused.recv())
            .await
            .expect("a redial reaches the proxy in time")
            .expect("proxy running");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

// ---------------------------------------------------------------------------------------------------------
// Reading the stream

fn is_delta(kind: &str, v: &Value, text: &str) -> bool {
    kind == "response.output_text.delta" && v["delta"] == text
}

/// The session's status events settle: idle, failed or anything else than running.
fn settled(kind: &str, v: &Value) -> bool {
    kind == "session.status" && v["status"] != "running"
}

fn deltas(events: &[(String, Value)]) -> Vec<String> {
    events
        .iter()
        .filter(|(k, _)| k == "response.output_text.delta")
        .map(|(_, v)| v["delta"].as_str().unwrap().to_owned())
        .collect()
}

fn count(events: &[(String, Value)], kind: &str) -> usize {
    events.iter().filter(|(k, _)| k == kind).count()
}

// ---------------------------------------------------------------------------------------------------------
// The rig

/// A server, a proxy in front of it, and a runner dialling through the proxy, connected.
struct Rig {
    server: Server,
    proxy: Proxy,
    runner: Proc,
    runner_id: String,
}

async fn rig(home: &Path, workspace: &Path, vendor_url: &str, name: &str) -> Rig {
    let mut server = start_server(home, 0, GRACE_MS).await;
    let proxy = Proxy::start(server.addr()).await;
    let (token, runner_id) = token_and_id(name);
    let runner = start_runner(
        home,
        &proxy.url,
        &token,
        "openai",
        workspace,
        &openai_env(vendor_url),
    );
    server
        .proc
        .wait_log(&[omnigent_tunnel::server::RUNNER_CONNECTED, &runner_id])
        .await;
    Rig {
        server,
        proxy,
        runner,
        runner_id,
    }
}

impl Rig {
    /// Cut the tunnel and wait until the runner has let go of the session's stream (its events wait from
    /// now on) and has tried to dial again (and was refused).
    async fn blip(&mut self, session: &str) {
        self.proxy.cut();
        self.runner.wait_log(&[NO_SUBSCRIBER_LEFT, session]).await;
        self.server
            .proc
            .wait_log(&[
                omnigent_tunnel::server::RUNNER_DISCONNECTED,
                &self.runner_id,
            ])
            .await;
        self.proxy.refused_one().await;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Tests

/// The whole rest of the turn, its end included, happens while the tunnel is down: the server gets it all
/// when the runner is back, before it hears that the runner is idle, so the turn ends by its own events.
#[tokio::test]
async fn a_turn_that_ends_during_a_tunnel_blip_arrives_whole_once_the_runner_is_back() {
    let home = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let hold = Arc::new(Notify::new());
    let mut answer = vec![
        oa_text("one "),
        oa_text("two "),
        Step::Wait(hold.clone()),
        oa_text("three "),
        oa_text("four"),
    ];
    answer.extend(oa_finish("stop"));
    let vendor = FakeVendor::start(vec![answer]).await;
    let vendor_url = vendor.url.clone();
    let mut rig = rig(home.path(), ws.path(), &vendor_url, "blip-ends").await;
    let session = rig
        .server
        .bound_session("openai", ws.path(), &rig.runner_id)
        .await;
    let mut sse = rig.server.stream(&session).await;
    let (status, body) = rig.server.message(&session, "count to four").await;
    assert_eq!(status, 202, "{body}");
    let mut events = sse.until(|k, v| is_delta(k, v, "two ")).await;

    rig.blip(&session).await;
    hold.notify_one();
    // The runner finished the turn with nobody listening.
    rig.runner
        .wait_log(&[omnigent_runner::TURN_ENDED, &session])
        .await;
    rig.proxy.reopen();
    rig.runner.wait_log(&[BACKLOG_TAKEN, &session]).await;

    events.extend(sse.until(settled).await);
    let last = &events.last().unwrap().1;
    assert_eq!(last["status"], "idle", "{events:?}");
    // What the runner kept meanwhile comes as one delta (kept deltas of a message merge).
    assert_eq!(deltas(&events), ["one ", "two ", "three four"]);
    assert_eq!(count(&events, "response.completed"), 1, "{events:?}");
    assert_eq!(count(&events, "response.failed"), 0, "{events:?}");
    assert_eq!(count(&events, "response.output_item.done"), 1, "{events:?}");
    assert_eq!(
        summary(&rig.server.transcript(&session).await),
        ["user:count to four", "assistant:one two three four"]
    );
    let (_, snap) = rig.server.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(snap["status"], "idle");
    assert_eq!(snap["runner_online"], true);
}

/// Part of a turn (text, a tool call and its result) happens while the tunnel is down, the rest after it is
/// back: every delta and item arrives once, in order, and the turn ends idle.
#[tokio::test]
async fn a_turn_that_goes_on_across_a_tunnel_blip_loses_nothing_and_repeats_nothing() {
    let home = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let during = Arc::new(Notify::new());
    let after = Arc::new(Notify::new());
    let mut first = vec![
        oa_text("one "),
        oa_text("two "),
        Step::Wait(during.clone()),
        oa_text("three"),
        oa_call(
            "call_1",
            "write_file",
            r#"{"path": "notes/hello.txt", "content": "hi there"}"#,
        ),
    ];
    first.extend(oa_finish("tool_calls"));
    let mut second = vec![oa_text("four "), Step::Wait(after.clone()), oa_text("five")];
    second.extend(oa_finish("stop"));
    let vendor = FakeVendor::start(vec![first, second]).await;
    let vendor_url = vendor.url.clone();
    let mut rig = rig(home.path(), ws.path(), &vendor_url, "blip-goes-on").await;
    let session = rig
        .server
        .bound_session("openai", ws.path(), &rig.runner_id)
        .await;
    let mut sse = rig.server.stream(&session).await;
    let (status, body) = rig.server.message(&session, "write hello").await;
    assert_eq!(status, 202, "{body}");
    let mut events = sse.until(|k, v| is_delta(k, v, "two ")).await;

    rig.blip(&session).await;
    during.notify_one();
    // The second request proves the runner took the rest of the first answer and ran the tool, offline.
    vendor.asked(2).await;
    rig.proxy.reopen();
    rig.runner.wait_log(&[BACKLOG_TAKEN, &session]).await;
    events.extend(sse.until(|k, v| is_delta(k, v, "four ")).await);
    after.notify_one();
    events.extend(sse.until(settled).await);

    let last = &events.last().unwrap().1;
    assert_eq!(last["status"], "idle", "{events:?}");
    assert_eq!(deltas(&events), ["one ", "two ", "three", "four ", "five"]);
    assert_eq!(count(&events, "response.completed"), 1, "{events:?}");
    assert_eq!(
        count(&events, "response.output_item.done"),
        4,
        "text, call, output, text: {events:?}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("notes/hello.txt")).unwrap(),
        "hi there"
    );
    let items = rig.server.transcript(&session).await;
    assert_eq!(
        summary(&items),
        [
            "user:write hello",
            "assistant:one two three",
            "call:call_1:write_file",
            "output:call_1:wrote 8 bytes to notes/hello.txt",
            "assistant:four five",
        ]
    );
    let mut ids: Vec<&str> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), items.len(), "{items:?}");
    let (_, snap) = rig.server.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(snap["status"], "idle");
}
