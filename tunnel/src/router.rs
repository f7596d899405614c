//! Runner side of the tunnel: an axum `Router` driven by `request` frames instead of a socket.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use omnigent_proto::runner_frames::{
    self, Hello, Ping, Request, ResponseBody, ResponseEnd, ResponseHead, RunnerFrame, WsClose,
    close,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, info, warn};

/// How long the writer may take to flush the final close frame.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of the runner side.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Give up on a server that sent nothing for this long (it pings every 30 s). `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Largest text frame accepted.
    pub max_frame_bytes: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            idle_timeout: Some(Duration::from_secs(90)),
            max_frame_bytes: omnigent_proto::MAX_FRAME_BYTES,
        }
    }
}

/// How a served tunnel ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServeEnd {
    /// The server closed the tunnel (`code` when it sent a close frame) or the connection broke.
    Closed { code: Option<u16>, reason: String },
    /// Nothing came from the server for `idle_timeout`.
    IdleTimeout,
    /// `shutdown` was cancelled; the tunnel was closed with 1000.
    Shutdown,
}

/// Send `hello`, then serve `router` over the tunnel until it ends. One task per request; response head, body
/// chunks and end are sent as the handler produces them (so SSE streams); `request.cancel` aborts the handler;
/// `ping` is answered with `pong`; `ws.open` is refused with `ws.close` 4404 (no channels served yet);
/// `event.ready` and unknown kinds are skipped.
pub async fn serve_router<S>(
    ws: WebSocketStream<S>,
    hello: Hello,
    router: Router,
    config: RouterConfig,
    shutdown: CancellationToken,
) -> ServeEnd
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, mut stream) = ws.split();
    let (out_tx, out_rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(crate::socket::write_loop(sink, out_rx, "runner"));
    let send = |frame: RunnerFrame| {
        let _ = out_tx.send(Message::Text(frame.encode().into()));
    };
    send(RunnerFrame::Hello(hello));

    let mut tasks: JoinSet<String> = JoinSet::new();
    let mut running: HashMap<String, AbortHandle> = HashMap::new();
    let mut last_inbound = Instant::now();
    let idle = config.idle_timeout;

    let end = loop {
        let idle_deadline = idle.map(|d| last_inbound + d);
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = out_tx.send(Message::Close(Some(CloseFrame {
                    code: 1000.into(),
                    reason: "runner shutting down".into(),
                })));
                break ServeEnd::Shutdown;
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => match done {
                Ok(id) => { running.remove(&id); }
                Err(e) => running.retain(|_, handle| handle.id() != e.id()),
            },
            _ = sleep_until_opt(idle_deadline) => {
                warn!("server sent nothing within the idle timeout; dropping the tunnel");
                break ServeEnd::IdleTimeout;
            }
            message = stream.next() => {
                let text = match message {
                    None => break ServeEnd::Closed { code: None, reason: "connection lost".to_owned() },
                    Some(Err(e)) => break ServeEnd::Closed { code: None, reason: e.to_string() },
                    Some(Ok(Message::Close(frame))) => break ServeEnd::Closed {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    },
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(_)) => {
                        last_inbound = Instant::now();
                        continue;
                    }
                };
                last_inbound = Instant::now();
                crate::socket::trace_frame("server", "in", text.as_str());
                let frame = match RunnerFrame::decode_capped(text.as_str(), config.max_frame_bytes) {
                    Ok(frame) => frame,
                    Err(runner_frames::FrameError::TooLarge { size, cap }) => {
                        warn!(size, cap, "server sent a frame above the cap; closing the tunnel");
                        let _ = out_tx.send(Message::Close(Some(CloseFrame {
                            code: close::MESSAGE_TOO_BIG.into(),
                            reason: "frame too large".into(),
                        })));
                        break ServeEnd::Closed { code: Some(close::MESSAGE_TOO_BIG), reason: "frame too large".to_owned() };
                    }
                    Err(e) => {
                        warn!(error = %e, "skipping a malformed frame from the server");
                        continue;
                    }
                };
                match frame {
                    RunnerFrame::Request(request) => {
                        if running.contains_key(&request.id) {
                            warn!(id = %request.id, "duplicate request id; ignored");
                            continue;
                        }
                        let id = request.id.clone();
                        let handle = tasks.spawn(handle_request(router.clone(), request, out_tx.clone()));
                        running.insert(id, handle);
                    }
                    RunnerFrame::RequestCancel(cancel) => {
                        if let Some(handle) = running.remove(&cancel.id) {
                            debug!(id = %cancel.id, reason = %cancel.reason, "request cancelled by the server");
                            handle.abort();
                        }
                    }
                    RunnerFrame::Ping(ping) => send(RunnerFrame::Pong(Ping { ts: ping.ts, extra: Default::default() })),
                    RunnerFrame::Pong(_) => {}
                    RunnerFrame::EventReady(_) => debug!("server offers event ingest; not used"),
                    RunnerFrame::WsOpen(open) => {
                        debug!(ch_id = %open.ch_id, path = %open.path, "ws channel refused: not served");
                        send(RunnerFrame::WsClose(WsClose {
                            ch_id: open.ch_id,
                            code: close::CHANNEL_NOT_FOUND,
                            reason: "websocket channels are not served by this runner".to_owned(),
                            extra: Default::default(),
                        }));
                    }
                    RunnerFrame::WsFrame(_) | RunnerFrame::WsClose(_) => {
                        debug!("frame for a ws channel this runner does not have; ignored");
                    }
                    RunnerFrame::Hello(_)
                    | RunnerFrame::ResponseHead(_)
                    | RunnerFrame::ResponseBody(_)
                    | RunnerFrame::ResponseEnd(_) => {
                        warn!(kind = frame.kind(), "runner-bound frame of a runner→server kind; ignored");
                    }
                    RunnerFrame::Unknown => {
                        debug!(kind = ?runner_frames::peek_kind(text.as_str()), "unknown frame kind; skipped");
                    }
                }
            }
        }
    };

    tasks.abort_all();
    drop(out_tx);
    if tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, writer)
        .await
        .is_err()
    {
        debug!("tunnel writer did not finish in time");
    }
    info!(?end, "runner tunnel ended");
    end
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Serve one request frame through `router`, streaming the answer back as frames. Returns the request id.
async fn handle_request(
    router: Router,
    request: Request,
    out: mpsc::UnboundedSender<Message>,
) -> String {
    let id = request.id.clone();
    let send = |frame: RunnerFrame| out.send(Message::Text(frame.encode().into())).is_ok();
    let response = match http_request(request) {
        Ok(req) => match router.oneshot(req).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        Err(message) => {
            warn!(%id, %message, "request frame cannot be served");
            http::Response::builder()
                .status(http::StatusCode::BAD_REQUEST)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Body::from(
                    serde_json::json!({"code": "invalid_input", "message": message}).to_string(),
                ))
                .unwrap_or_default()
        }
    };
    let (parts, mut body) = response.into_parts();
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    if !send(RunnerFrame::ResponseHead(ResponseHead {
        id: id.clone(),
        status: parts.status.as_u16(),
        headers,
        extra: Default::default(),
    })) {
        return id;
    }
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                let (body, encoding) = runner_frames::encode_body(content_type.as_deref(), &data);
                if !send(RunnerFrame::ResponseBody(ResponseBody {
                    id: id.clone(),
                    body,
                    encoding,
                    extra: Default::default(),
                })) {
                    return id;
                }
            }
            Err(e) => {
                warn!(%id, error = %e, "response body failed; ending it early");
                break;
            }
        }
    }
    send(RunnerFrame::ResponseEnd(ResponseEnd {
        id: id.clone(),
        extra: Default::default(),
    }));
    id
}

fn http_request(request: Request) -> Result<http::Request<Body>, String> {
    let uri = if request.query_string.is_empty() {
        request.path.clone()
    } else {
        format!("{}?{}", request.path, request.query_string)
    };
    let body = match &request.body {
        None => Vec::new(),
        Some(body) => {
            runner_frames::decode_body(body, request.encoding).map_err(|e| e.to_string())?
        }
    };
    let method = http::Method::from_bytes(request.method.as_bytes())
        .map_err(|e| format!("method {:?}: {e}", request.method))?;
    let mut builder = http::Request::builder().method(method).uri(&uri);
    for (name, value) in &request.headers {
        match (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => builder = builder.header(name, value),
            _ => debug!(header = %name, "dropping an invalid request header"),
        }
    }
    builder
        .body(Body::from(body))
        .map_err(|e| format!("request {uri:?}: {e}"))
}
