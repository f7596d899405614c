//! Slow and idle clients (issue 9 hole 6): a half-sent request head, an idle kept-alive connection and a
//! trickled body are closed after their timeouts; beyond the connection cap a new connection is closed at
//! once; an SSE stream and a runner tunnel outlive every timeout. Waits are on the server closing the socket
//! (read → EOF) or on stream events, never on sleeps.

mod common;

use std::time::{Duration, Instant};

use common::fake_runner::FakeRunner;
use common::raw_http::{addr_of, read_head, send_raw, wait_closed};
use common::{TestServer, WAIT};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const SHORT: Duration = Duration::from_millis(300);

async fn short_timeouts(home: &std::path::Path) -> TestServer {
    TestServer::start_with(home, |c| {
        c.header_read_timeout = SHORT;
        c.body_read_timeout = SHORT;
        c.idle_timeout = SHORT;
        c.heartbeat_interval = Duration::from_millis(100);
        c.tunnel.ping_interval = Duration::from_millis(100);
    })
    .await
}

async fn closed_in_time(sock: &mut TcpStream) -> Duration {
    let started = Instant::now();
    tokio::time::timeout(WAIT, wait_closed(sock))
        .await
        .expect("the server closes the connection");
    started.elapsed()
}

#[tokio::test]
async fn a_half_sent_request_head_is_closed_after_the_header_timeout() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = short_timeouts(home.path()).await;
    let addr = addr_of(&srv.url);
    let mut sock = TcpStream::connect(&addr).await.expect("connect");
    sock.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .expect("write");
    let took = closed_in_time(&mut sock).await;
    assert!(
        took >= SHORT - Duration::from_millis(50),
        "closed after {took:?}"
    );
    // A connection that never sends a byte is closed the same way.
    let mut silent = TcpStream::connect(&addr).await.expect("connect");
    closed_in_time(&mut silent).await;
    // The server still answers.
    assert_eq!(srv.get("/health").await.0, 200);
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_idle_timeout() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = short_timeouts(home.path()).await;
    let addr = addr_of(&srv.url);
    let mut sock = TcpStream::connect(&addr).await.expect("connect");
    sock.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("write");
    let (status, _, _) = read_head(&mut sock).await;
    assert_eq!(status, 200);
    let took = closed_in_time(&mut sock).await;
    assert!(
        took >= SHORT - Duration::from_millis(50),
        "closed after {took:?}"
    );
}

#[tokio::test]
async fn a_trickled_body_fails_after_the_body_timeout() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = short_timeouts(home.path()).await;
    let (status, head, body) = send_raw(
        &addr_of(&srv.url),
        "POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{\"agent_id\"",
    )
    .await;
    assert_eq!(status, 400, "{head}");
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("did not arrive within"), "{body}");
}

#[tokio::test]
async fn an_sse_stream_and_a_runner_tunnel_outlive_every_timeout() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = short_timeouts(home.path()).await;
    let runner = FakeRunner::connect(&srv, "runner_token_conn_limits", "idle").await;
    let runner_id = omnigent_proto::ids::runner_id_for_token("runner_token_conn_limits");
    let session = srv.create_session("long").await;
    let mut sse = srv.stream(&session, None).await;
    // Ten heartbeats 100 ms apart: more than three times every timeout.
    let started = Instant::now();
    let mut beats = 0;
    while beats < 10 {
        let m = sse.expect().await;
        if m.event.as_deref() == Some("session.heartbeat") || m.data.contains("session.heartbeat") {
            beats += 1;
        }
    }
    assert!(started.elapsed() > SHORT * 3, "{:?}", started.elapsed());
    let (_, status) = srv.get(&format!("/v1/runners/{runner_id}/status")).await;
    assert_eq!(status["online"], true, "the tunnel is still up: {status}");
    assert!(!runner.task.is_finished());
}

#[tokio::test]
async fn beyond_the_connection_cap_a_new_connection_is_closed_at_once() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start_with(home.path(), |c| {
        c.max_connections = 4;
        c.header_read_timeout = WAIT * 3;
        c.idle_timeout = WAIT * 3;
    })
    .await;
    let addr = addr_of(&srv.url);
    // Four half-sent requests hold every slot (each answered once it is complete, so each is accepted).
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut sock = TcpStream::connect(&addr).await.expect("connect");
        sock.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .expect("write");
        assert_eq!(read_head(&mut sock).await.0, 200);
        held.push(sock);
    }
    let mut extra = TcpStream::connect(&addr).await.expect("connect");
    let _ = extra
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    closed_in_time(&mut extra).await;
    // A slot frees as soon as one client leaves.
    drop(held.pop());
    let mut again = TcpStream::connect(&addr).await.expect("connect");
    let mut status = 0;
    // The server may not have seen the close yet: a refused attempt is closed at once, so retry until served.
    for _ in 0..100 {
        if again
            .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .is_ok()
            && let Ok(Ok(s)) = tokio::time::timeout(WAIT, try_status(&mut again)).await
        {
            status = s;
            break;
        }
        again = TcpStream::connect(&addr).await.expect("connect");
    }
    assert_eq!(status, 200);
}

async fn try_status(sock: &mut TcpStream) -> std::io::Result<u16> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    let n = sock.read(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {text:?}")))
}
