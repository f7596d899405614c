//! HTTP/1.1 by hand over a TCP socket: requests a client library would not send (a foreign `Host`, no `Host`,
//! half a request), and answers read head first.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

/// The address (`127.0.0.1:PORT`) of a server URL.
pub fn addr_of(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

/// Send `request` as is and read the answer's head: (status, head text, whatever body bytes came with it).
pub async fn send_raw(addr: &str, request: &str) -> (u16, String, Vec<u8>) {
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    sock.write_all(request.as_bytes()).await.expect("write");
    read_head(&mut sock).await
}

/// Read until the end of a response head (`\r\n\r\n`).
pub async fn read_head(sock: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .expect("a status line");
                return (status, head, buf[end + 4..].to_vec());
            }
            let n = sock.read(&mut chunk).await.expect("read");
            assert!(n > 0, "connection closed before a response head: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("a response head in time")
}

/// A whole `Connection: close` answer: (status, body as JSON or Null).
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    host: Option<&str>,
) -> (u16, serde_json::Value) {
    let host_line = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
    let body = if method == "GET" { "" } else { "{}" };
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\n{host_line}Connection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes()).await.expect("write");
    let (status, head, mut rest) = read_head(&mut sock).await;
    if head.to_ascii_lowercase().contains("text/event-stream") {
        return (status, serde_json::Value::Null);
    }
    tokio::time::timeout(WAIT, sock.read_to_end(&mut rest))
        .await
        .expect("the body in time")
        .expect("read body");
    (
        status,
        serde_json::from_slice(&rest).unwrap_or(serde_json::Value::Null),
    )
}

/// Wait until the server closes `sock` (read → EOF or reset), discarding what it sends.
pub async fn wait_closed(sock: &mut TcpStream) {
    let mut chunk = [0u8; 4096];
    loop {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
