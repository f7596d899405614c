//! The two halves of a server-side tunnel socket that the runner tunnel ([`crate::connection`]) and the host
//! tunnel ([`crate::host`]) share: the writer task (the only writer of the socket), what one inbound WebSocket
//! message means to a read loop, and the lingering end of a registered tunnel.

use futures_util::SinkExt;
use futures_util::stream::{SplitSink, SplitStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tracing::{debug, warn};

use crate::ws::{TunnelStream, is_oversized, linger};

/// Largest part of a frame shown in a trace line.
const TRACE_FRAME_CHARS: usize = 2048;

/// One frame as a trace line (`direction` is `"in"` or `"out"`), with its credentials redacted: the only frame
/// dump of the tunnels (the WebSocket library's own, which would show tokens, is filtered out by `ctl`).
pub(crate) fn trace_frame(peer: &'static str, direction: &'static str, text: &str) {
    if tracing::enabled!(tracing::Level::TRACE) {
        tracing::trace!(
            frame = %omnigent_proto::headers::redacted_frame(text, TRACE_FRAME_CHARS),
            "{peer} tunnel frame {direction}"
        );
    }
}

/// What one inbound WebSocket message means to a tunnel's read loop.
pub(crate) enum Inbound {
    /// A text frame to decode.
    Text(Utf8Bytes),
    /// Proof of life with nothing to decode (a protocol ping/pong, or a binary message, which v1 drops).
    Alive,
    /// The peer sent a frame above the socket's cap: close 1009.
    TooBig,
    /// The peer closed the socket, or reading failed: the tunnel is over.
    Closed,
}

/// Classify what `stream.next()` returned. `peer` names the tunnel in logs (`"runner"`, `"host"`).
pub(crate) fn inbound(message: Option<Result<Message, WsError>>, peer: &'static str) -> Inbound {
    match message {
        None => Inbound::Closed,
        Some(Err(e)) if is_oversized(&e, false) => {
            warn!(error = %e, "{peer} sent a frame above the cap; closing the tunnel");
            Inbound::TooBig
        }
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
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Inbound::Alive,
    }
}

/// The only writer of a tunnel socket, at either end (the server's tunnels, the runner's router, the host's
/// dialer): sends what its owner queues, stops after a close frame or a failed write, closes the sink (which
/// flushes a close reply the WebSocket layer queued) and hands it back (for [`finish`]). `peer` names the
/// tunnel in logs.
pub async fn write_loop<S>(
    mut sink: S,
    mut rx: mpsc::UnboundedReceiver<Message>,
    peer: &'static str,
) -> S
where
    S: futures_util::Sink<Message> + Unpin,
    S::Error: std::fmt::Display,
{
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
    sink
}

/// The end of a registered tunnel whose close frame is sent: put the halves back together and linger in the
/// background (see [`crate::ws::TunnelSocket`]), so a peer that was still sending reads its close code.
pub(crate) fn finish(
    stream: SplitStream<TunnelStream>,
    sink: Option<SplitSink<TunnelStream, Message>>,
) {
    if let Some(sink) = sink
        && let Ok(ws) = stream.reunite(sink)
    {
        tokio::spawn(linger(ws));
    }
}
