//! A minimal HTTP/1.1 client over any stream (the control socket, a loopback TCP port), with a body cap
//! checked before buffering. No proxy can ever be involved: we dial the socket ourselves.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::task::AbortOnDropHandle;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("HTTP request failed: {0}")]
    Request(#[source] hyper::Error),
    #[error("reply body is larger than {cap} bytes or broken: {why}")]
    Body { cap: usize, why: String },
    #[error("cannot build the request: {0}")]
    Build(#[from] http::Error),
}

/// One HTTP/1.1 connection; requests are sent one after the other.
pub struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
    cap: usize,
    _driver: AbortOnDropHandle<()>,
}

impl Connection {
    /// Handshake over `stream`; the connection driver runs on its own task until the stream closes.
    pub async fn open<S>(stream: S, cap: usize) -> Result<Self, HttpError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(HttpError::Handshake)?;
        // Tied to the connection: dropping it ends the driver, so none outlives its user.
        let driver = AbortOnDropHandle::new(tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP client connection ended");
            }
        }));
        Ok(Connection {
            sender,
            cap,
            _driver: driver,
        })
    }

    /// Send one request and buffer its reply (at most `cap` bytes).
    pub async fn send(
        &mut self,
        method: Method,
        host: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, host);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        self.sender.ready().await.map_err(HttpError::Request)?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(HttpError::Request)?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), self.cap)
            .collect()
            .await
            .map_err(|e| HttpError::Body {
                cap: self.cap,
                why: e.to_string(),
            })?
            .to_bytes();
        Ok((status, body))
    }
}
