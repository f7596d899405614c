#![allow(clippy::unwrap_used)]
//! `omnigent server run` against hostile clients (issue 9 holes 5 and 6), as a real process: under a 256-file
//! limit, 300 half-sent requests are closed (the oldest evicted for newer ones beyond the connection cap, the
//! rest after the header timeout), the cap is logged, and a normal `GET /health` is answered; a request for a foreign `Host` (DNS
//! rebinding) gets 421. Waits are on the server closing sockets (read → EOF), never on sleeps.

mod common;

use std::process::Command;

use common::{WAIT, omnigent, start_server_cmd};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `omnigent server run --port 0` under `prlimit --nofile=N`, with the environment `omnigent()` sets.
fn server_under_fd_limit(home: &std::path::Path, nofile: u32) -> Command {
    let inner = omnigent(home);
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={nofile}:{nofile}"))
        .arg("--")
        .arg(inner.get_program())
        .args(["server", "run", "--port", "0"]);
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd
}

async fn raw(addr: std::net::SocketAddr, request: &str) -> String {
    let mut sock = TcpStream::connect(addr).await.unwrap();
    sock.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, sock.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn three_hundred_half_sent_requests_under_256_fds_do_not_lock_everyone_out() {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = server_under_fd_limit(home.path(), 256);
    cmd.env("OMNIGENT_SERVER_HEADER_TIMEOUT_MS", "1500");
    let mut server = start_server_cmd(cmd).await;
    let addr = server.addr();

    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut sock = TcpStream::connect(addr).await.unwrap();
        // The server may already have closed it (beyond the cap): the write may fail, which is the point.
        let _ = sock
            .write_all(b"GET /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await;
        slow.push(sock);
    }
    server
        .proc
        .wait_log(&[omnigent_server::CONNECTION_CAP_REACHED])
        .await;
    // Every slow socket is closed by the server: read → EOF (or reset), nothing answered.
    for sock in &mut slow {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(WAIT, sock.read(&mut buf))
            .await
            .expect("the server closes a slow connection in time")
            .unwrap_or(0);
        assert_eq!(n, 0, "a half-sent request got an answer");
    }
    let health = raw(
        addr,
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
}

#[tokio::test]
async fn a_rebinding_page_gets_421_from_the_real_server() {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = omnigent(home.path());
    cmd.args(["server", "run", "--port", "0"]);
    let server = start_server_cmd(cmd).await;
    let port = server.port();
    let refused = raw(
        server.addr(),
        &format!(
            "GET /v1/sessions HTTP/1.1\r\nHost: evil.example:{port}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 421"), "{refused}");
    assert!(refused.contains("misdirected_request"), "{refused}");
    let served = raw(
        server.addr(),
        &format!(
            "GET /v1/sessions HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
}
