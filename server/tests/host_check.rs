//! DNS rebinding: a request whose `Host` is not this server (a page on `evil.example` re-pointed at
//! 127.0.0.1) gets 421 `misdirected_request` on every route and WebSocket upgrade; loopback names pass.

mod common;

use common::TestServer;
use common::raw_http::{addr_of, request};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Every kind of route: reads of sessions, transcripts, the host's file system, the SSE stream, writes.
fn routes(session: &str) -> Vec<(&'static str, String)> {
    vec![
        ("GET", "/health".into()),
        ("GET", "/v1/info".into()),
        ("GET", "/v1/sessions".into()),
        ("GET", format!("/v1/sessions/{session}")),
        ("GET", format!("/v1/sessions/{session}/items")),
        ("GET", format!("/v1/sessions/{session}/stream")),
        ("GET", "/v1/hosts".into()),
        ("GET", "/v1/hosts/h1/filesystem?path=%2Froot".into()),
        ("GET", "/v1/runners".into()),
        ("GET", "/v1/agents".into()),
        ("POST", "/v1/sessions".into()),
        ("GET", "/no/such/route".into()),
    ]
}

#[tokio::test]
async fn a_foreign_host_gets_421_on_every_route_and_loopback_names_do_not() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start_with(home.path(), |c| {
        c.allowed_hosts = vec!["omni.lan".into()];
    })
    .await;
    let session = srv.create_session("secret").await;
    let addr = addr_of(&srv.url);
    let port = addr.rsplit(':').next().expect("port").to_owned();
    for (method, path) in routes(&session) {
        for host in [
            format!("evil.example:{port}"),
            "evil.example".to_owned(),
            format!("127.0.0.1.evil.example:{port}"),
            format!("localhost.evil.example:{port}"),
            format!("192.168.1.20:{port}"),
        ] {
            let (status, body) = request(&addr, method, &path, Some(&host)).await;
            assert_eq!(status, 421, "{method} {path} with Host {host}: {body}");
            assert_eq!(body["error"]["code"], "misdirected_request", "{body}");
            let message = body["error"]["message"].as_str().unwrap_or("");
            assert!(message.contains(&host), "names the host: {message}");
            assert!(
                message.contains("localhost"),
                "says what is allowed: {message}"
            );
        }
        for host in [
            Some(format!("127.0.0.1:{port}")),
            Some(format!("localhost:{port}")),
            Some("LocalHost".to_owned()),
            Some(format!("app.localhost:{port}")),
            Some(format!("[::1]:{port}")),
            Some(format!("127.0.0.2:{port}")),
            Some(format!("omni.lan:{port}")),
            // HTTP/1.0 style: no Host at all is never a browser, so never a rebinding page.
            None,
        ] {
            let (status, body) = request(&addr, method, &path, host.as_deref()).await;
            assert_ne!(status, 421, "{method} {path} with Host {host:?}: {body}");
        }
    }
}

#[tokio::test]
async fn a_foreign_host_cannot_open_the_runner_or_host_tunnel() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start(home.path()).await;
    let ws = srv.url.replacen("http", "ws", 1);
    for path in ["/v1/runners/r1/tunnel", "/v1/hosts/h1/tunnel"] {
        for (host, refused) in [("evil.example", true), ("localhost", false)] {
            let mut req = format!("{ws}{path}")
                .into_client_request()
                .expect("request");
            req.headers_mut()
                .insert("host", host.parse().expect("header"));
            req.headers_mut()
                .insert("origin", "omnigent://internal".parse().expect("header"));
            let status = match tokio_tungstenite::connect_async(req).await {
                Ok(_) => 101,
                Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
                Err(e) => panic!("connect {path}: {e}"),
            };
            if refused {
                assert_eq!(status, 421, "{path} with Host {host}");
            } else {
                assert_eq!(status, 101, "{path} with Host {host}");
            }
        }
    }
}
