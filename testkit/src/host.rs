//! The coordination server's end of the host tunnel, faked: `GET /v1/hosts/{id}/tunnel` served by
//! `omnigent_tunnel::host` into a [`HostRegistry`] the test reads, and `GET /v1/me`; with a switch to refuse,
//! counters of what was asked, and a way to die like a killed server. [`RawWs`] instead hands each upgraded
//! socket of a route to the test, to play the server frame by frame.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use omnigent_tunnel::host::{HostEvent, HostRegistry, serve_host_socket};
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::WAIT;
use crate::net::{PortReservation, Served, serve, serve_on};

#[derive(Clone)]
struct Shared {
    registry: HostRegistry,
    /// Non-zero: answer the tunnel upgrade with this HTTP status instead.
    refuse_tunnel: Arc<AtomicU16>,
    /// Non-zero: answer `/v1/me` with this HTTP status instead.
    refuse_me: Arc<AtomicU16>,
    upgrades: Arc<AtomicUsize>,
    tunnel_headers: Arc<Mutex<Vec<http::HeaderMap>>>,
    me_headers: Arc<Mutex<Vec<http::HeaderMap>>>,
    /// Drops every tunnel at once, without a close handshake (the server process died).
    kill: CancellationToken,
}

fn refusal(code: &AtomicU16) -> Option<Response> {
    let code = code.load(Ordering::SeqCst);
    (code != 0).then(|| http::StatusCode::from_u16(code).unwrap().into_response())
}

async fn tunnel_route(
    State(s): State<Shared>,
    Path(host_id): Path<String>,
    headers: http::HeaderMap,
    ws: omnigent_tunnel::TunnelUpgrade,
) -> Response {
    s.upgrades.fetch_add(1, Ordering::SeqCst);
    s.tunnel_headers.lock().unwrap().push(headers);
    if let Some(r) = refusal(&s.refuse_tunnel) {
        return r;
    }
    ws.on_upgrade(move |socket| async move {
        tokio::select! {
            () = serve_host_socket(socket, &host_id, Default::default(), s.registry.clone()) => {}
            () = s.kill.cancelled() => {}
        }
    })
}

async fn me_route(State(s): State<Shared>, headers: http::HeaderMap) -> Response {
    s.me_headers.lock().unwrap().push(headers);
    if let Some(r) = refusal(&s.refuse_me) {
        return r;
    }
    axum::Json(json!({"user_id": "local", "is_admin": true})).into_response()
}

/// A fake server end of the host tunnel on 127.0.0.1.
pub struct FakeHost {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:port`
    pub url: String,
    shared: Shared,
    served: Served,
    /// The port, held across a [`FakeHost::stop`] and [`FakeHost::restart`] (nothing else is given it).
    port: PortReservation,
}

/// A [`FakeHost`] that was stopped; its port is still held for the [`FakeHost::restart`].
pub struct StoppedHost {
    pub addr: SocketAddr,
    port: PortReservation,
}

impl FakeHost {
    /// On a fresh port, with a fresh registry.
    pub async fn start() -> FakeHost {
        Self::serve(PortReservation::new(), HostRegistry::default()).await
    }

    /// The same server coming back on the port of one [`FakeHost::stop`]ped before, into `registry`.
    pub async fn restart(stopped: StoppedHost, registry: HostRegistry) -> FakeHost {
        Self::serve(stopped.port, registry).await
    }

    async fn serve(port: PortReservation, registry: HostRegistry) -> FakeHost {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port.port))
            .await
            .expect("bind the held port");
        let shared = Shared {
            registry,
            refuse_tunnel: Arc::default(),
            refuse_me: Arc::default(),
            upgrades: Arc::default(),
            tunnel_headers: Arc::default(),
            me_headers: Arc::default(),
            kill: CancellationToken::new(),
        };
        let app = Router::new()
            .route("/v1/hosts/{id}/tunnel", get(tunnel_route))
            .route("/v1/me", get(me_route))
            .with_state(shared.clone());
        let served = serve_on(listener, app);
        FakeHost {
            addr: served.addr,
            url: served.url.clone(),
            shared,
            served,
            port,
        }
    }

    pub fn registry(&self) -> &HostRegistry {
        &self.shared.registry
    }

    pub fn subscribe(&self) -> broadcast::Receiver<HostEvent> {
        self.shared.registry.subscribe()
    }

    /// Answer every tunnel upgrade with `status` from now on (0: accept again).
    pub fn refuse_tunnel(&self, status: u16) {
        self.shared.refuse_tunnel.store(status, Ordering::SeqCst);
    }

    /// Answer every tunnel upgrade and `/v1/me` with `status` from now on (0: accept again).
    pub fn refuse(&self, status: u16) {
        self.refuse_tunnel(status);
        self.shared.refuse_me.store(status, Ordering::SeqCst);
    }

    /// How many tunnel upgrades were asked for (refused ones included).
    pub fn upgrades(&self) -> usize {
        self.shared.upgrades.load(Ordering::SeqCst)
    }

    /// The request headers of every tunnel upgrade asked for, in order.
    pub fn tunnel_headers(&self) -> Vec<http::HeaderMap> {
        self.shared.tunnel_headers.lock().unwrap().clone()
    }

    /// The request headers of every `/v1/me`, in order.
    pub fn me_headers(&self) -> Vec<http::HeaderMap> {
        self.shared.me_headers.lock().unwrap().clone()
    }

    /// The server process dies: the listener closes and every tunnel drops without a close handshake. Its
    /// port stays held, to [`FakeHost::restart`] on.
    pub async fn stop(self) -> StoppedHost {
        self.shared.kill.cancel();
        StoppedHost {
            addr: self.served.stop().await,
            port: self.port,
        }
    }
}

/// The next event of `events` for which `pred` holds; fails the test after [`WAIT`].
pub async fn next_event(
    events: &mut broadcast::Receiver<HostEvent>,
    mut pred: impl FnMut(&HostEvent) -> bool,
) -> HostEvent {
    tokio::time::timeout(WAIT, async {
        loop {
            let ev = events.recv().await.unwrap();
            if pred(&ev) {
                return ev;
            }
        }
    })
    .await
    .expect("the expected host event never came")
}

/// A hand-played server: every WebSocket upgraded on one route is handed to the test.
pub struct RawWs {
    pub served: Served,
    pub sockets: mpsc::UnboundedReceiver<WebSocket>,
}

impl RawWs {
    /// Upgrade every request to `route` (an axum path, say `/v1/hosts/{id}/tunnel`) and hand the socket over;
    /// `GET /v1/me` answers `{"user_id": "local"}`.
    pub async fn start(route: &str) -> RawWs {
        let (tx, sockets) = mpsc::unbounded_channel::<WebSocket>();
        let app = Router::new()
            .route(
                route,
                get(move |ws: WebSocketUpgrade| {
                    let tx = tx.clone();
                    async move {
                        ws.on_upgrade(move |socket| async move {
                            let _ = tx.send(socket);
                        })
                    }
                }),
            )
            .route(
                "/v1/me",
                get(|| async { axum::Json(json!({"user_id": "local"})) }),
            );
        RawWs {
            served: serve(app).await,
            sockets,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.served.addr
    }

    /// The next socket upgraded; fails the test after [`WAIT`].
    pub async fn next(&mut self) -> WebSocket {
        tokio::time::timeout(WAIT, self.sockets.recv())
            .await
            .expect("no connection")
            .unwrap()
    }
}
