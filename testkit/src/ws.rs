//! A raw WebSocket client for tests that play a peer of a tunnel route (an impostor, a web page): dial with
//! exactly the headers given, say a runner's hello, read until the close.

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::WAIT;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Open `url` (`http://…` is dialled as `ws://…`) as a WebSocket with exactly these `Origin` and runner-token
/// headers; `Err(status)` for an HTTP answer instead of the upgrade.
pub async fn dial(url: &str, origin: Option<&str>, token: Option<&str>) -> Result<Ws, u16> {
    let url = url.replacen("http://", "ws://", 1);
    let mut request = url.as_str().into_client_request().expect("request");
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().expect("header"));
    }
    if let Some(token) = token {
        request.headers_mut().insert(
            omnigent_proto::headers::RUNNER_TUNNEL_TOKEN,
            token.parse().expect("header"),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("dial {url}: {e}"),
    }
}

/// Say hello as a runner would, then read until the close; its code.
pub async fn hello_then_close_code(ws: &mut Ws) -> u16 {
    let hello = json!({"kind": "hello", "runner_version": "impostor", "frame_protocol_version": 1,
        "harnesses": ["echo"], "envs": [], "telemetry_opt_out": true});
    let _ = ws.send(Message::Text(hello.to_string().into())).await;
    close_code(ws).await
}

/// Read until the close; its code. Fails the test after [`WAIT`] or on an end without a code.
pub async fn close_code(ws: &mut Ws) -> u16 {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
                Some(Ok(_)) => {}
                other => panic!("closed without a code: {other:?}"),
            }
        }
    })
    .await
    .expect("closed in time")
}
