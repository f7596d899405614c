//! The one socket driver of both server-side tunnels, the runner tunnel ([`crate::connection`]) and the host
//! tunnel ([`crate::host`]): [`drive`] runs the read loop (frame cap, liveness clock, app-level pings), feeds
//! each frame and each command to the tunnel's [`Protocol`], and ends the socket (what is open fails, the
//! close frame is flushed, the socket lingers). [`write_loop`], the only writer of a socket, is shared with
//! the dialing ends.

use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tracing::{debug, warn};

use crate::ws::{TunnelStream, is_oversized, linger};

/// How long the writer may take to flush the final close frame.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The timings and cap of one server-side tunnel.
#[derive(Debug, Clone)]
pub(crate) struct DriverConfig {
    /// App-level `ping` interval.
    pub ping_interval: Duration,
    /// Close after this long without any inbound frame.
    pub liveness_timeout: Duration,
    /// Largest text frame accepted: above it, close 1009.
    pub max_frame_bytes: usize,
}

/// Why a text frame did not decode.
pub(crate) enum DecodeError {
    /// Above the cap: close 1009.
    TooLarge { size: usize, cap: usize },
    /// Malformed: skip it.
    Malformed(String),
}

/// What one kind of tunnel does with its frames and its handles' commands; [`drive`] does the rest.
pub(crate) trait Protocol {
    type Frame;
    type Command;
    /// Names the peer in logs (`"runner"`, `"host"`).
    const PEER: &'static str;
    /// The close code when the socket closed, went silent, or every handle is gone.
    const CLOSED: u16;
    fn decode(text: &str, cap: usize) -> Result<Self::Frame, DecodeError>;
    fn encode(frame: &Self::Frame) -> String;
    /// The app-level ping sent every [`DriverConfig::ping_interval`].
    fn ping() -> Self::Frame;
    fn on_frame(&mut self, frame: Self::Frame, text: &str, out: &Outbox<Self>);
    /// `Some((code, reason))` closes the tunnel.
    fn on_command(&mut self, command: Self::Command, out: &Outbox<Self>) -> Option<(u16, String)>;
    /// The tunnel is over (its close frame not sent yet): fail every open request and refuse new ones.
    fn on_end(&mut self, commands: &mut mpsc::UnboundedReceiver<Self::Command>);
}

/// Where a [`Protocol`] sends frames: the queue of the socket's writer.
pub(crate) struct Outbox<P: Protocol + ?Sized> {
    tx: mpsc::UnboundedSender<Message>,
    _protocol: std::marker::PhantomData<fn(&P)>,
}

impl<P: Protocol + ?Sized> Outbox<P> {
    pub fn send(&self, frame: P::Frame) {
        let text = P::encode(&frame);
        trace_frame(P::PEER, "out", &text);
        let _ = self.tx.send(Message::Text(text.into()));
    }
}

/// Drive one registered tunnel until it ends; returns the close code and reason sent to the peer. This task
/// is the only reader and owns whatever `protocol` holds (in-flight requests); a writer task is the only
/// writer.
pub(crate) async fn drive<P: Protocol>(
    mut protocol: P,
    mut commands: mpsc::UnboundedReceiver<P::Command>,
    mut stream: SplitStream<TunnelStream>,
    sink: SplitSink<TunnelStream, Message>,
    config: DriverConfig,
) -> (u16, String) {
    let peer = P::PEER;
    let (out_tx, out_rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(write_loop(sink, out_rx, peer));
    let out = Outbox::<P> {
        tx: out_tx,
        _protocol: std::marker::PhantomData,
    };

    let mut last_inbound = Instant::now();
    let mut ping =
        tokio::time::interval_at(Instant::now() + config.ping_interval, config.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let (code, reason) = loop {
        let deadline = last_inbound + config.liveness_timeout;
        tokio::select! {
            message = stream.next() => {
                let text = match inbound(message, peer) {
                    Inbound::Closed => break (P::CLOSED, "tunnel closed".to_owned()),
                    Inbound::TooBig => break (
                        omnigent_proto::runner_frames::close::MESSAGE_TOO_BIG,
                        format!("frame exceeds {} bytes", config.max_frame_bytes),
                    ),
                    Inbound::Alive => {
                        last_inbound = Instant::now();
                        continue;
                    }
                    Inbound::Text(text) => text,
                };
                last_inbound = Instant::now();
                trace_frame(peer, "in", text.as_str());
                let frame = match P::decode(text.as_str(), config.max_frame_bytes) {
                    Ok(frame) => frame,
                    Err(DecodeError::TooLarge { size, cap }) => {
                        warn!(size, cap, "{peer} sent a frame above the cap; closing the tunnel");
                        break (
                            omnigent_proto::runner_frames::close::MESSAGE_TOO_BIG,
                            format!("frame exceeds {cap} bytes"),
                        );
                    }
                    Err(DecodeError::Malformed(e)) => {
                        warn!(error = %e, "skipping a malformed {peer} frame");
                        continue;
                    }
                };
                protocol.on_frame(frame, text.as_str(), &out);
            }
            command = commands.recv() => match command {
                Some(command) => {
                    if let Some(end) = protocol.on_command(command, &out) {
                        break end;
                    }
                }
                // Every handle is gone: nobody can use this tunnel any more.
                None => break (P::CLOSED, "tunnel closed".to_owned()),
            },
            _ = ping.tick() => out.send(P::ping()),
            _ = tokio::time::sleep_until(deadline) => {
                warn!(silent_for = ?config.liveness_timeout, "{peer} tunnel silent; closing");
                break (P::CLOSED, "ping timeout".to_owned());
            }
        }
    };

    protocol.on_end(&mut commands);
    let _ = out.tx.send(Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: reason.as_str().into(),
    })));
    drop(out);
    let sink = match tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, writer).await {
        Ok(Ok(sink)) => Some(sink),
        _ => {
            debug!("{peer} tunnel writer did not flush the close frame in time");
            None
        }
    };
    finish(stream, sink);
    (code, reason)
}

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
enum Inbound {
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
fn inbound(message: Option<Result<Message, WsError>>, peer: &'static str) -> Inbound {
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
fn finish(stream: SplitStream<TunnelStream>, sink: Option<SplitSink<TunnelStream, Message>>) {
    if let Some(sink) = sink
        && let Ok(ws) = stream.reunite(sink)
    {
        tokio::spawn(linger(ws));
    }
}
