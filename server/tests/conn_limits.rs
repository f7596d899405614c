//! Slow and idle clients (issue 9 hole 6): a half-sent request head, an idle kept-alive connection and a
//! trickled body are closed after their timeouts; at the connection cap the connection waiting longest with
//! nothing under way is closed for a new one, and only when every slot holds a stream is a new connection
//! closed at once; an SSE stream and a runner tunnel outlive every timeout. Waits are on the server closing the socket
//! (read → EOF) or on stream events, never on sleeps.

mod common;

use std::time::{Duration, Instant};

use common::fake_runner::FakeRunner;
use common::raw_http::{addr_of, read_head, request, send_raw, wait_closed};
use common::{TestServer, WAIT};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const SHORT: Duration = Duration::from_millis(300);

/// A server whose header, body and idle timeouts are all `timeouts` (heartbeats and tunnel pings every
/// 100 ms), with a connection cap of `max` if given.
async fn with_limits(home: &std::path::Path, timeouts: Duration, max: Option<usize>) -> TestServer {
    TestServer::start_with(home, |c| {
        c.header_read_timeout = timeouts;
        c.body_read_timeout = timeouts;
        c.idle_timeout = timeouts;
        c.heartbeat_interval = Duration::from_millis(100);
        c.tunnel.ping_interval = Duration::from_millis(100);
        if let Some(max) = max {
            c.max_connections = max;
        }
    })
    .await
}

async fn short_timeouts(home: &std::path::Path) -> TestServer {
    with_limits(home, SHORT, None).await
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

/// Long enough that a test passing in time proves the cap evicted, not a timeout.
const LONG: Duration = Duration::from_secs(60);

const HALF_HEAD: &[u8] = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";

#[tokio::test]
async fn at_the_cap_the_oldest_half_sent_head_is_closed_for_a_new_connection() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = with_limits(home.path(), LONG, Some(4)).await;
    let addr = addr_of(&srv.url);
    // Four half-sent request heads fill the cap (accepted in connection order: the first is the oldest).
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut sock = TcpStream::connect(&addr).await.expect("connect");
        sock.write_all(HALF_HEAD).await.expect("write");
        slow.push(sock);
    }
    // A normal request on a fifth connection is answered at once, long before any header timeout.
    let started = Instant::now();
    let (status, _) = request(&addr, "GET", "/health", Some("127.0.0.1")).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() < LONG / 4, "{:?}", started.elapsed());
    // The oldest slow connection was closed for it; the other three are still served once they finish.
    closed_in_time(&mut slow[0]).await;
    for sock in &mut slow[1..] {
        sock.write_all(b"1\r\n\r\n").await.expect("finish the head");
        assert_eq!(read_head(sock).await.0, 200);
    }
}

#[tokio::test]
async fn at_the_cap_streams_are_never_closed_and_a_new_connection_is_refused() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = with_limits(home.path(), LONG, Some(4)).await;
    let addr = addr_of(&srv.url);
    let session = srv.create_session("capped").await;
    // An idle kept-alive connection, then four SSE streams: the last streams get their slots by closing the
    // connections waiting with nothing under way (this one, and the client's pooled one if it kept it).
    let mut idle = TcpStream::connect(&addr).await.expect("connect");
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(read_head(&mut idle).await.0, 200);
    let mut streams = Vec::new();
    for _ in 0..4 {
        streams.push(srv.stream(&session, None).await);
    }
    closed_in_time(&mut idle).await;
    // Every slot holds a stream now: a fifth connection is closed unanswered, at once.
    let mut extra = TcpStream::connect(&addr).await.expect("connect");
    let _ = extra
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut extra, &mut buf))
        .await
        .expect("the refused connection is closed in time");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "a connection beyond the cap was answered: {read:?}"
    );
    // The streams keep streaming: five heartbeats each (100 ms apart, so most come after the refusal).
    for sse in &mut streams {
        let mut beats = 0;
        while beats < 5 {
            let m = sse.expect().await;
            if m.event.as_deref() == Some("session.heartbeat")
                || m.data.contains("session.heartbeat")
            {
                beats += 1;
            }
        }
    }
}

#[tokio::test]
async fn at_the_cap_a_runner_tunnel_is_never_closed_for_a_new_connection() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = with_limits(home.path(), LONG, Some(3)).await;
    let addr = addr_of(&srv.url);
    let token = "runner_token_conn_cap";
    // The tunnel is the oldest connection, then two half-sent heads fill the cap.
    let runner = FakeRunner::connect(&srv, token, "idle").await;
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut sock = TcpStream::connect(&addr).await.expect("connect");
        sock.write_all(HALF_HEAD).await.expect("write");
        slow.push(sock);
    }
    // A new connection takes the slot of the oldest half-sent head, not the tunnel's.
    let (status, _) = request(&addr, "GET", "/health", Some("127.0.0.1")).await;
    assert_eq!(status, 200);
    closed_in_time(&mut slow[0]).await;
    let runner_id = omnigent_proto::ids::runner_id_for_token(token);
    let (_, status) = srv.get(&format!("/v1/runners/{runner_id}/status")).await;
    assert_eq!(status["online"], true, "the tunnel is still up: {status}");
    assert!(!runner.task.is_finished());
}
