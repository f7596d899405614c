//! Servers on port 0 that report their address: the OS picks a free port at bind and the test reads it back,
//! so no port is ever released and reused (the `free_port` race).

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// An axum app being served on 127.0.0.1.
pub struct Served {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:port`
    pub url: String,
    pub task: JoinHandle<()>,
}

impl Served {
    /// The same address as a WebSocket URL base (`ws://127.0.0.1:port`).
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Stop serving: the listener closes (connections already upgraded live on in their own tasks).
    pub async fn stop(self) -> SocketAddr {
        self.task.abort();
        let _ = self.task.await;
        self.addr
    }
}

/// A listener on 127.0.0.1:0 and the address the OS gave it.
pub async fn bind_local() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    (listener, addr)
}

/// Serve `app` on a fresh port of 127.0.0.1 (with the peer address as `ConnectInfo`).
pub async fn serve(app: axum::Router) -> Served {
    let (listener, _) = bind_local().await;
    serve_on(listener, app)
}

/// Serve `app` on `listener` (one a test bound itself, say to keep its port across a simulated restart).
pub fn serve_on(listener: TcpListener, app: axum::Router) -> Served {
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .expect("serve");
    });
    Served {
        addr,
        url: format!("http://{addr}"),
        task,
    }
}

/// A port of 127.0.0.1 held for a child process that must be told its port up front (a daemon's configured
/// server port): a socket bound to `127.0.0.1:0` with `SO_REUSEADDR` and never listening. While it is held,
/// the kernel gives the port to no port-0 bind (every other test's server, vendor, child), yet the process
/// told the port can bind it with `SO_REUSEADDR` (std's and tokio's listeners set it) and listen; connecting
/// to it is refused until then, so it reads as free. Unlike bind-drop-reuse (`free_port`), nothing can take
/// the port in between, nor between a server's death and its restart.
pub struct PortReservation {
    fd: std::os::fd::OwnedFd,
    pub port: u16,
}

impl PortReservation {
    pub fn new() -> PortReservation {
        use nix::sys::socket::{
            AddressFamily, SockFlag, SockType, SockaddrIn, bind, getsockname, setsockopt, socket,
            sockopt,
        };
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        setsockopt(&fd, sockopt::ReuseAddr, &true).expect("SO_REUSEADDR");
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::new(127, 0, 0, 1, 0),
        )
        .expect("bind 127.0.0.1:0");
        let addr: SockaddrIn =
            getsockname(std::os::fd::AsRawFd::as_raw_fd(&fd)).expect("getsockname");
        PortReservation {
            fd,
            port: addr.port(),
        }
    }

    /// Start listening on the held port: a listener that is not the server under test (say, a foreign
    /// program on the server port).
    pub fn listen(self) -> std::net::TcpListener {
        nix::sys::socket::listen(&self.fd, nix::sys::socket::Backlog::new(16).unwrap())
            .expect("listen");
        std::net::TcpListener::from(self.fd)
    }
}

impl Default for PortReservation {
    fn default() -> Self {
        Self::new()
    }
}
