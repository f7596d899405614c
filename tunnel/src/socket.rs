//! The two halves of a server-side tunnel socket that the runner tunnel ([`crate::connection`]) and the host
//! tunnel ([`crate::host`]) share: the writer task (the only writer of the socket) and what one inbound
//! WebSocket message means to a read loop.

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use tokio::sync::mpsc;
use tracing::debug;

/// What one inbound WebSocket message means to a tunnel's read loop.
pub(crate) enum Inbound {
    /// A text frame to decode.
    Text(Utf8Bytes),
    /// Proof of life with nothing to decode (a protocol ping/pong, or a binary message, which v1 drops).
    Alive,
    /// The peer closed the socket, or reading failed: the tunnel is over.
    Closed,
}

/// Classify what `stream.next()` returned. `peer` names the tunnel in logs (`"runner"`, `"host"`).
pub(crate) fn inbound(
    message: Option<Result<Message, axum::Error>>,
    peer: &'static str,
) -> Inbound {
    match message {
        None => Inbound::Closed,
        Some(Err(e)) => {
            tracing::info!(error = %e, "{peer} tunnel read failed");
            Inbound::Closed
        }
        Some(Ok(Message::Close(frame))) => {
            debug!(?frame, "{peer} closed the tunnel");
            Inbound::Closed
        }
        Some(Ok(Message::Text(text))) => Inbound::Text(text),
        Some(Ok(Message::Binary(_))) => {
            debug!("dropping a binary message on the {peer} tunnel");
            Inbound::Alive
        }
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Inbound::Alive,
    }
}

/// The only writer of a tunnel socket: sends what the connection task queues, stops after a close frame or a
/// failed write, then closes the sink.
pub(crate) async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::UnboundedReceiver<Message>,
    peer: &'static str,
) {
    while let Some(message) = rx.recv().await {
        let is_close = matches!(message, Message::Close(_));
        if let Err(e) = sink.send(message).await {
            debug!(error = %e, "{peer} tunnel write failed");
            break;
        }
        if is_close {
            break;
        }
    }
    let _ = sink.close().await;
}
