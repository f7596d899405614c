//! A host played frame by frame over a raw WebSocket, with the `host.hello` a live 0.19.1 sent.

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::WAIT;

const GOLDEN: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../proto/tests/golden/omnigent-0.19.1-host-runner-tunnels.jsonl"
));

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The captured 0.19.1 `host.hello`, as the Python host sent it.
pub fn python_hello() -> Value {
    GOLDEN
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("golden line"))
        .find(|l| l["data"]["kind"] == "host.hello")
        .map(|l| l["data"].clone())
        .expect("a host.hello in the capture")
}

pub async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .expect("send");
}

/// The next text frame that is not a ping.
pub async fn next_frame(ws: &mut Ws) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await.expect("open").expect("frame") {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).expect("json");
                    if v["kind"] != "ping" {
                        return v;
                    }
                }
                Message::Close(frame) => panic!("closed: {frame:?}"),
                _ => {}
            }
        }
    })
    .await
    .expect("a frame in time")
}
