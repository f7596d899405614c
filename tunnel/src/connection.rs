//! One live runner tunnel on the server side: the connection task that owns the socket and every in-flight
//! request, and [`RunnerConnection`], the cloneable handle that sends HTTP requests through it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use futures_util::Stream;
use futures_util::stream::{SplitSink, SplitStream};
use omnigent_proto::runner_frames::{
    self, Hello, Ping, Request, RequestCancel, ResponseHead, RunnerFrame, WsClose, WsFrame, WsOpen,
    close,
};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::auth::Authentication;
use crate::channel::{Channel, ChannelEvent, ChannelMessage, TUNNEL_LOST};
use crate::socket;
use crate::ws::TunnelStream;
use crate::{TunnelConfig, TunnelError, epoch_millis};

pub(crate) enum Command {
    Request {
        frame: Request,
        head_tx: oneshot::Sender<Result<ResponseHead, TunnelError>>,
        body_tx: mpsc::UnboundedSender<Result<Bytes, TunnelError>>,
    },
    Cancel {
        id: String,
    },
    Close {
        code: u16,
        reason: String,
    },
    OpenChannel {
        ch_id: String,
        path: String,
        query_string: String,
        events: mpsc::UnboundedSender<ChannelEvent>,
    },
    ChannelSend {
        ch_id: String,
        message: ChannelMessage,
    },
    ChannelClose {
        ch_id: String,
        code: u16,
        reason: String,
    },
}

/// A handle on one live runner tunnel. Cheap to clone; every clone talks to the same connection task.
#[derive(Clone)]
pub struct RunnerConnection {
    inner: Arc<Inner>,
}

struct Inner {
    runner_id: String,
    generation: u64,
    hello: Hello,
    peer: Option<SocketAddr>,
    authentication: Authentication,
    commands: mpsc::UnboundedSender<Command>,
    closed: CancellationToken,
}

impl std::fmt::Debug for RunnerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerConnection")
            .field("runner_id", &self.inner.runner_id)
            .field("generation", &self.inner.generation)
            .field("peer", &self.inner.peer)
            .finish()
    }
}

impl RunnerConnection {
    pub(crate) fn new(
        runner_id: String,
        generation: u64,
        hello: Hello,
        peer: Option<SocketAddr>,
        authentication: Authentication,
    ) -> (RunnerConnection, mpsc::UnboundedReceiver<Command>) {
        let (commands, rx) = mpsc::unbounded_channel();
        let conn = RunnerConnection {
            inner: Arc::new(Inner {
                runner_id,
                generation,
                hello,
                peer,
                authentication,
                commands,
                closed: CancellationToken::new(),
            }),
        };
        (conn, rx)
    }

    pub fn runner_id(&self) -> &str {
        &self.inner.runner_id
    }

    /// Increases with every accepted connection; tells a reconnected tunnel from the one it replaced.
    pub fn generation(&self) -> u64 {
        self.inner.generation
    }

    /// The runner's `hello` (harnesses, version, capabilities…).
    pub fn hello(&self) -> &Hello {
        &self.inner.hello
    }

    /// The TCP peer, when the server knew it.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.inner.peer
    }

    /// How the tunnel proved its claim on the runner id.
    pub fn authentication(&self) -> Authentication {
        self.inner.authentication
    }

    /// Whether the connection task has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    /// Resolves once the connection task has ended (closed, replaced, timed out).
    pub async fn closed(&self) {
        self.inner.closed.cancelled().await
    }

    /// Close the tunnel with `code`; in-flight requests fail with [`TunnelError::Closed`].
    pub fn close(&self, code: u16, reason: &str) {
        let _ = self.inner.commands.send(Command::Close {
            code,
            reason: reason.to_owned(),
        });
    }

    /// Open a WebSocket channel to `path` on the runner (a terminal attach, say). The runner answers with
    /// frames or a `ws.close` (4404 when it has no such channel), both delivered by [`Channel::recv`].
    pub fn open_channel(&self, path: &str, query_string: &str) -> Result<Channel, TunnelError> {
        let ch_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let (events_tx, events) = mpsc::unbounded_channel();
        self.inner
            .commands
            .send(Command::OpenChannel {
                ch_id: ch_id.clone(),
                path: path.to_owned(),
                query_string: query_string.to_owned(),
                events: events_tx,
            })
            .map_err(|_| TunnelError::Closed)?;
        Ok(Channel {
            ch_id,
            commands: self.inner.commands.clone(),
            events,
            closed: false,
        })
    }

    /// Send one HTTP request to the runner and wait for its response head. The response body streams the
    /// runner's `response.body` chunks until `response.end`; dropping it earlier sends `request.cancel`, and
    /// tunnel loss fails it with [`TunnelError::Closed`]. Apply your own timeout around this call.
    pub async fn request(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Body>, TunnelError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let frame = request_frame(id.clone(), request);
        let (head_tx, head_rx) = oneshot::channel();
        let (body_tx, body_rx) = mpsc::unbounded_channel();
        self.inner
            .commands
            .send(Command::Request {
                frame,
                head_tx,
                body_tx,
            })
            .map_err(|_| TunnelError::Closed)?;
        // From here on, giving up (the caller's future dropped) must tell the runner.
        let mut guard = CancelOnDrop {
            id: Some(id.clone()),
            commands: self.inner.commands.clone(),
        };
        let head = head_rx.await.map_err(|_| TunnelError::Closed)??;
        let mut builder = http::Response::builder().status(head.status);
        for (name, value) in &head.headers {
            match (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(value),
            ) {
                (Ok(name), Ok(value)) => builder = builder.header(name, value),
                _ => debug!(header = %name, "dropping an invalid response header from the runner"),
            }
        }
        let body = ResponseBodyStream {
            rx: body_rx,
            guard: CancelOnDrop {
                id: guard.id.take(),
                commands: self.inner.commands.clone(),
            },
        };
        builder
            .body(Body::from_stream(body))
            .map_err(|e| TunnelError::BadResponse(format!("response head {}: {e}", head.status)))
    }
}

/// Sends `request.cancel` for `id` when dropped while still armed.
struct CancelOnDrop {
    id: Option<String>,
    commands: mpsc::UnboundedSender<Command>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let _ = self.commands.send(Command::Cancel { id });
        }
    }
}

/// The body of a response coming through the tunnel.
struct ResponseBodyStream {
    rx: mpsc::UnboundedReceiver<Result<Bytes, TunnelError>>,
    guard: CancelOnDrop,
}

impl Stream for ResponseBodyStream {
    type Item = Result<Bytes, TunnelError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = self.rx.poll_recv(cx);
        match &item {
            // The body is complete (or failed for good): nothing left to cancel.
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.guard.id = None,
            _ => {}
        }
        item
    }
}

fn request_frame(id: String, request: http::Request<Bytes>) -> Request {
    let (parts, body) = request.into_parts();
    let mut headers: Vec<(String, String)> = Vec::with_capacity(parts.headers.len() + 1);
    if !parts.headers.contains_key(http::header::HOST) {
        headers.push(("host".to_owned(), "runner".to_owned()));
    }
    for (name, value) in &parts.headers {
        headers.push((
            name.as_str().to_owned(),
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        ));
    }
    let (body, encoding) = if body.is_empty() {
        (None, runner_frames::BodyEncoding::Utf8)
    } else {
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let (text, encoding) = runner_frames::encode_body(content_type, &body);
        (Some(text), encoding)
    };
    Request {
        id,
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query_string: parts.uri.query().unwrap_or("").to_owned(),
        headers,
        body,
        encoding,
        stream: true,
        extra: Default::default(),
    }
}

struct Pending {
    head_tx: Option<oneshot::Sender<Result<ResponseHead, TunnelError>>>,
    body_tx: mpsc::UnboundedSender<Result<Bytes, TunnelError>>,
}

impl Pending {
    fn fail(mut self, err: TunnelError) {
        match self.head_tx.take() {
            Some(head_tx) => {
                let _ = head_tx.send(Err(err));
            }
            None => {
                let _ = self.body_tx.send(Err(err));
            }
        }
    }
}

/// Drive one registered tunnel until it ends (through the one socket driver, [`socket::drive`]); returns
/// the close code and reason sent to the runner. The driver's task is the only owner of the in-flight
/// requests and channels.
pub(crate) async fn run_connection(
    conn: RunnerConnection,
    commands: mpsc::UnboundedReceiver<Command>,
    stream: SplitStream<TunnelStream>,
    sink: SplitSink<TunnelStream, Message>,
    config: TunnelConfig,
) -> (u16, String) {
    let config = socket::DriverConfig {
        ping_interval: config.ping_interval,
        liveness_timeout: config.liveness_timeout,
        max_frame_bytes: config.max_frame_bytes,
    };
    let protocol = RunnerTunnel {
        conn,
        pending: HashMap::new(),
        channels: HashMap::new(),
    };
    socket::drive(protocol, commands, stream, sink, config).await
}

/// What the runner tunnel holds: its requests awaiting a response and its open channels.
struct RunnerTunnel {
    conn: RunnerConnection,
    pending: HashMap<String, Pending>,
    channels: HashMap<String, mpsc::UnboundedSender<ChannelEvent>>,
}

impl socket::Protocol for RunnerTunnel {
    type Frame = RunnerFrame;
    type Command = Command;
    const PEER: &'static str = "runner";
    const CLOSED: u16 = close::TUNNEL_CLOSED;

    fn decode(text: &str, cap: usize) -> Result<RunnerFrame, socket::DecodeError> {
        RunnerFrame::decode_capped(text, cap).map_err(|e| match e {
            runner_frames::FrameError::TooLarge { size, cap } => {
                socket::DecodeError::TooLarge { size, cap }
            }
            e => socket::DecodeError::Malformed(e.to_string()),
        })
    }

    fn encode(frame: &RunnerFrame) -> String {
        frame.encode()
    }

    fn ping() -> RunnerFrame {
        RunnerFrame::Ping(Ping {
            ts: epoch_millis().into(),
            extra: Default::default(),
        })
    }

    fn on_frame(&mut self, frame: RunnerFrame, text: &str, out: &socket::Outbox<Self>) {
        on_frame(frame, text, &mut self.pending, &mut self.channels, &|f| {
            out.send(f)
        });
    }

    fn on_command(
        &mut self,
        command: Command,
        out: &socket::Outbox<Self>,
    ) -> Option<(u16, String)> {
        match command {
            Command::Request {
                frame,
                head_tx,
                body_tx,
            } => {
                let id = frame.id.clone();
                out.send(RunnerFrame::Request(frame));
                self.pending.insert(
                    id,
                    Pending {
                        head_tx: Some(head_tx),
                        body_tx,
                    },
                );
            }
            Command::Cancel { id } => {
                if self.pending.remove(&id).is_some() {
                    out.send(RunnerFrame::RequestCancel(RequestCancel {
                        id,
                        reason: "client_disconnected".to_owned(),
                        extra: Default::default(),
                    }));
                }
            }
            Command::Close { code, reason } => return Some((code, reason)),
            Command::OpenChannel {
                ch_id,
                path,
                query_string,
                events,
            } => {
                out.send(RunnerFrame::WsOpen(WsOpen {
                    ch_id: ch_id.clone(),
                    path,
                    query_string,
                    extra: Default::default(),
                }));
                self.channels.insert(ch_id, events);
            }
            Command::ChannelSend { ch_id, message } => {
                if self.channels.contains_key(&ch_id) {
                    let (data, encoding) = match message {
                        ChannelMessage::Text(text) => (text, runner_frames::BodyEncoding::Utf8),
                        ChannelMessage::Binary(bytes) => runner_frames::encode_body(None, &bytes),
                    };
                    out.send(RunnerFrame::WsFrame(WsFrame {
                        ch_id,
                        data,
                        encoding,
                        extra: Default::default(),
                    }));
                }
            }
            Command::ChannelClose {
                ch_id,
                code,
                reason,
            } => {
                if self.channels.remove(&ch_id).is_some() {
                    out.send(RunnerFrame::WsClose(WsClose {
                        ch_id,
                        code,
                        reason,
                        extra: Default::default(),
                    }));
                }
            }
        }
        None
    }

    fn on_end(&mut self, _commands: &mut mpsc::UnboundedReceiver<Command>) {
        for (_, p) in self.pending.drain() {
            p.fail(TunnelError::Closed);
        }
        for (_, events) in self.channels.drain() {
            let _ = events.send(ChannelEvent::Closed {
                code: TUNNEL_LOST,
                reason: "tunnel closed".to_owned(),
            });
        }
        self.conn.inner.closed.cancel();
    }
}

fn on_frame(
    frame: RunnerFrame,
    text: &str,
    pending: &mut HashMap<String, Pending>,
    channels: &mut HashMap<String, mpsc::UnboundedSender<ChannelEvent>>,
    send: &impl Fn(RunnerFrame),
) {
    match frame {
        RunnerFrame::ResponseHead(head) => match pending.get_mut(&head.id) {
            Some(p) => match p.head_tx.take() {
                Some(head_tx) => {
                    if head_tx.send(Ok(head)).is_err() {
                        // The caller gave up; its guard has queued the cancel.
                        debug!("response head for a request nobody waits for");
                    }
                }
                None => warn!(id = %head.id, "duplicate response.head; ignored"),
            },
            None => debug!(id = %head.id, "late response.head for an unknown request; ignored"),
        },
        RunnerFrame::ResponseBody(chunk) => {
            let Some(p) = pending.get_mut(&chunk.id) else {
                debug!(id = %chunk.id, "late response.body for an unknown request; ignored");
                return;
            };
            let err = if p.head_tx.is_some() {
                Some(TunnelError::BadResponse(
                    "response.body before response.head".to_owned(),
                ))
            } else {
                match runner_frames::decode_body(&chunk.body, chunk.encoding) {
                    Ok(bytes) => {
                        let _ = p.body_tx.send(Ok(Bytes::from(bytes)));
                        None
                    }
                    Err(e) => Some(TunnelError::BadResponse(e.to_string())),
                }
            };
            if let Some(err) = err
                && let Some(p) = pending.remove(&chunk.id)
            {
                warn!(id = %chunk.id, error = %err, "failing a request on a bad body chunk");
                p.fail(err.clone());
                send(RunnerFrame::RequestCancel(RequestCancel {
                    id: chunk.id,
                    reason: "invalid_response".to_owned(),
                    extra: Default::default(),
                }));
            }
        }
        RunnerFrame::ResponseEnd(end) => match pending.remove(&end.id) {
            Some(p) if p.head_tx.is_some() => p.fail(TunnelError::BadResponse(
                "response.end before response.head".to_owned(),
            )),
            // Dropping the body sender ends the body stream.
            Some(_) => {}
            None => debug!(id = %end.id, "late response.end for an unknown request; ignored"),
        },
        RunnerFrame::Ping(ping) => send(RunnerFrame::Pong(Ping {
            ts: ping.ts,
            extra: Default::default(),
        })),
        RunnerFrame::Pong(_) => {}
        RunnerFrame::Hello(_) => warn!("second hello on an established runner tunnel; ignored"),
        RunnerFrame::WsFrame(frame) => {
            let Some(events) = channels.get(&frame.ch_id) else {
                debug!(ch_id = %frame.ch_id, "ws.frame for an unknown channel; ignored");
                return;
            };
            let message = match frame.encoding {
                runner_frames::BodyEncoding::Utf8 => ChannelMessage::Text(frame.data),
                runner_frames::BodyEncoding::Base64 => {
                    match runner_frames::decode_body(&frame.data, frame.encoding) {
                        Ok(bytes) => ChannelMessage::Binary(Bytes::from(bytes)),
                        Err(e) => {
                            warn!(ch_id = %frame.ch_id, error = %e, "bad ws.frame payload; skipped");
                            return;
                        }
                    }
                }
            };
            let _ = events.send(ChannelEvent::Message(message));
        }
        RunnerFrame::WsClose(close) => match channels.remove(&close.ch_id) {
            Some(events) => {
                let _ = events.send(ChannelEvent::Closed {
                    code: close.code,
                    reason: close.reason,
                });
            }
            None => debug!(ch_id = %close.ch_id, "ws.close for an unknown channel; ignored"),
        },
        RunnerFrame::WsOpen(_) => warn!("ws.open from the runner; only the server opens channels"),
        RunnerFrame::Request(_) | RunnerFrame::RequestCancel(_) | RunnerFrame::EventReady(_) => {
            warn!(
                kind = frame.kind(),
                "server-bound frame of a server→runner kind; ignored"
            );
        }
        RunnerFrame::Unknown => {
            debug!(kind = ?runner_frames::peek_kind(text), "unknown runner frame kind; skipped");
        }
    }
}
