//! WebSocket channels over the runner tunnel (reference §3.6): the server opens a channel to a runner path
//! (a terminal attach), and messages flow both ways as `ws.frame` until either side sends `ws.close`.

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::TunnelError;
use crate::connection::Command;

/// One WebSocket message on a channel: utf-8 frames are text, base64 frames binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelMessage {
    Text(String),
    Binary(Bytes),
}

/// What arrives on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelEvent {
    Message(ChannelMessage),
    /// The runner closed the channel (`ws.close`), or the tunnel ended (1006 "tunnel closed").
    Closed {
        code: u16,
        reason: String,
    },
}

/// Close code reported to channels when the tunnel itself ends.
pub const TUNNEL_LOST: u16 = 1006;

/// An open channel. Dropping it without [`Channel::close`] sends `ws.close` 1000.
#[derive(Debug)]
pub struct Channel {
    pub(crate) ch_id: String,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) events: mpsc::UnboundedReceiver<ChannelEvent>,
    pub(crate) closed: bool,
}

impl Channel {
    /// The 8-hex channel id on the wire.
    pub fn id(&self) -> &str {
        &self.ch_id
    }

    /// Send one message to the runner.
    pub fn send(&self, message: ChannelMessage) -> Result<(), TunnelError> {
        if self.closed {
            return Err(TunnelError::Closed);
        }
        self.commands
            .send(Command::ChannelSend {
                ch_id: self.ch_id.clone(),
                message,
            })
            .map_err(|_| TunnelError::Closed)
    }

    /// The next event; `None` after the `Closed` event was delivered.
    pub async fn recv(&mut self) -> Option<ChannelEvent> {
        if self.closed {
            return None;
        }
        let event = self.events.recv().await;
        if matches!(event, Some(ChannelEvent::Closed { .. }) | None) {
            self.closed = true;
        }
        event
    }

    /// Close the channel with `code` (the browser's close code, say).
    pub fn close(mut self, code: u16, reason: &str) {
        self.send_close(code, reason);
    }

    fn send_close(&mut self, code: u16, reason: &str) {
        if !self.closed {
            self.closed = true;
            let _ = self.commands.send(Command::ChannelClose {
                ch_id: self.ch_id.clone(),
                code,
                reason: reason.to_owned(),
            });
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.send_close(1000, "");
    }
}
