//! The dialing end of both tunnels, written once for the runner (`omnigent-runner`) and the daemon's host
//! tunnel: the server's URLs ([`ServerUrl`]), the dial ([`dial`]: an informational HTTP request, then the
//! WebSocket upgrade, both with `Origin: omnigent://internal` and the caller's credentials), the redial
//! schedule ([`Backoff`]: full jitter under a doubling ceiling) and the socket's one writer ([`write_loop`]).

use std::time::Duration;

use omnigent_proto::headers::INTERNAL_ORIGIN;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::debug;

pub use crate::socket::write_loop;
pub use reqwest::Url;

/// The socket a dial opens.
pub type ClientSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A server's base URL, `http(s)://host:port[/prefix]` or `ws(s)://…`, from which both the HTTP and the
/// WebSocket URLs of its API are built (the prefix kept, query and fragment dropped).
#[derive(Debug, Clone)]
pub struct ServerUrl {
    base: Url,
    http_scheme: &'static str,
    ws_scheme: &'static str,
}

impl ServerUrl {
    /// Parse `server`; the error is the reason it is not usable.
    pub fn parse(server: &str) -> Result<Self, String> {
        let base = Url::parse(server.trim()).map_err(|e| e.to_string())?;
        let (http_scheme, ws_scheme) = match base.scheme() {
            "http" | "ws" => ("http", "ws"),
            "https" | "wss" => ("https", "wss"),
            other => return Err(format!("scheme {other:?} is not http, https, ws or wss")),
        };
        if base.host_str().is_none_or(str::is_empty) {
            return Err("it has no host".to_owned());
        }
        Ok(ServerUrl {
            base,
            http_scheme,
            ws_scheme,
        })
    }

    /// `http(s)://…{prefix}{path}`; `path` starts with `/`.
    pub fn http(&self, path: &str) -> Result<Url, String> {
        self.with(self.http_scheme, path)
    }

    /// `ws(s)://…{prefix}{path}`; `path` starts with `/`.
    pub fn ws(&self, path: &str) -> Result<Url, String> {
        self.with(self.ws_scheme, path)
    }

    /// Whether the server is on this machine (`localhost` or a loopback address).
    pub fn is_loopback(&self) -> bool {
        let host = self.base.host_str().unwrap_or_default();
        host.eq_ignore_ascii_case("localhost")
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    fn with(&self, scheme: &str, path: &str) -> Result<Url, String> {
        let prefix = self.base.path().trim_end_matches('/');
        let mut url = self.base.clone();
        url.set_path(&format!("{prefix}{path}"));
        url.set_query(None);
        url.set_fragment(None);
        url.set_scheme(scheme)
            .map_err(|()| format!("cannot use scheme {scheme}"))?;
        Ok(url)
    }
}

/// One dial: what to ask first, where to upgrade, with which credentials.
#[derive(Debug, Clone)]
pub struct DialRequest {
    /// An HTTP request sent before the upgrade, as omnigent 0.19.1 does (`POST …/token` for a runner, `GET
    /// /v1/me` for a host); its answer is only logged.
    pub announce: Option<(http::Method, Url)>,
    /// The `ws(s)://` URL of the tunnel.
    pub tunnel: Url,
    /// Credential headers, sent with both requests.
    pub headers: Vec<(http::HeaderName, String)>,
    /// Limit of each request (the announce, and the upgrade).
    pub timeout: Duration,
    /// Largest message and frame the socket accepts.
    pub max_message_bytes: usize,
}

/// Why a dial failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialError {
    /// The server answered the upgrade with this HTTP status.
    #[error("the server answered the upgrade with HTTP {0}")]
    Status(u16),
    #[error("{0}")]
    Other(String),
}

/// Dial `request`: the announce (whatever it answers, carry on), then the WebSocket upgrade.
pub async fn dial(
    http: &reqwest::Client,
    request: &DialRequest,
) -> Result<ClientSocket, DialError> {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::ORIGIN,
        http::HeaderValue::from_static(INTERNAL_ORIGIN),
    );
    for (name, value) in &request.headers {
        let value = http::HeaderValue::from_str(value).map_err(|_| {
            DialError::Other("the token contains characters not allowed in a header".to_owned())
        })?;
        headers.insert(name.clone(), value);
    }

    if let Some((method, url)) = &request.announce {
        let announce = http
            .request(method.clone(), url.clone())
            .headers(headers.clone())
            .timeout(request.timeout);
        match announce.send().await {
            Ok(response) => debug!(
                status = response.status().as_u16(),
                %url,
                "announce answered"
            ),
            Err(e) => debug!(error = %e, %url, "announce failed"),
        }
    }

    let mut upgrade = request
        .tunnel
        .as_str()
        .into_client_request()
        .map_err(|e| DialError::Other(format!("cannot build the tunnel request: {e}")))?;
    upgrade.headers_mut().extend(headers);
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(request.max_message_bytes))
        .max_frame_size(Some(request.max_message_bytes));
    let connect = tokio_tungstenite::connect_async_with_config(upgrade, Some(ws_config), true);
    match tokio::time::timeout(request.timeout, connect).await {
        Err(_) => Err(DialError::Other(format!(
            "no answer to the upgrade within {:?}",
            request.timeout
        ))),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
            Err(DialError::Status(response.status().as_u16()))
        }
        Ok(Err(e)) => Err(DialError::Other(format!(
            "cannot reach {}: {e}",
            request.tunnel
        ))),
    }
}

/// The redial schedule's numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// First ceiling (250 ms).
    pub base: Duration,
    /// Largest ceiling (10 s for a runner, 3 s for a host).
    pub cap: Duration,
    /// A connection that lasted this long resets the schedule (60 s).
    pub reset_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            base: Duration::from_millis(250),
            cap: Duration::from_secs(10),
            reset_after: Duration::from_secs(60),
        }
    }
}

/// The state of the redial schedule (DESIGN.md §6): full jitter `U(0, min(cap, base × 2^n))`, where `n`
/// counts the attempts that failed in a row.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    attempt: u32,
    jitter: bool,
}

impl Backoff {
    pub fn new(policy: BackoffPolicy) -> Self {
        Backoff {
            policy,
            attempt: 0,
            jitter: true,
        }
    }

    /// Without jitter every delay is its ceiling (for tests that count the schedule).
    pub fn with_jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    pub fn policy(&self) -> &BackoffPolicy {
        &self.policy
    }

    /// The ceiling of the next delay: `min(cap, base × 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.policy.base.saturating_mul(factor).min(self.policy.cap)
    }

    /// The next delay, drawn by `jitter` from `[0, ceiling]`; advances the schedule.
    pub fn next_delay_with(&mut self, jitter: impl FnOnce(Duration) -> Duration) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        jitter(ceiling).min(ceiling)
    }

    /// The next delay: full jitter (or the ceiling, without jitter).
    pub fn next_delay(&mut self) -> Duration {
        if self.jitter {
            self.next_delay_with(full_jitter)
        } else {
            self.next_delay_with(|ceiling| ceiling)
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// A connection that was up for `connected_for` ended: a long one resets the schedule.
    pub fn connection_ended(&mut self, connected_for: Duration) {
        if connected_for >= self.policy.reset_after {
            self.reset();
        }
    }
}

/// `U(0, ceiling)`, in whole milliseconds.
pub fn full_jitter(ceiling: Duration) -> Duration {
    use rand::Rng as _;
    let max = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=max))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_the_prefix_map_the_scheme_and_drop_query_and_fragment() {
        let server = ServerUrl::parse(" https://team.example.com/omni/?x=1#f ").unwrap();
        assert_eq!(
            server.http("/v1/me").unwrap().as_str(),
            "https://team.example.com/omni/v1/me"
        );
        assert_eq!(
            server.ws("/v1/hosts/abc/tunnel").unwrap().as_str(),
            "wss://team.example.com/omni/v1/hosts/abc/tunnel"
        );
        assert!(!server.is_loopback());
        let server = ServerUrl::parse("ws://127.0.0.1:6767").unwrap();
        assert_eq!(
            server.http("/v1/runners/r/token").unwrap().as_str(),
            "http://127.0.0.1:6767/v1/runners/r/token"
        );
        assert_eq!(
            server.ws("/v1/runners/r/tunnel").unwrap().as_str(),
            "ws://127.0.0.1:6767/v1/runners/r/tunnel"
        );
        assert!(server.is_loopback());
        assert!(
            ServerUrl::parse("http://localhost:1")
                .unwrap()
                .is_loopback()
        );
        assert!(ServerUrl::parse("http://[::1]:1").unwrap().is_loopback());
        assert!(ServerUrl::parse("ftp://x").unwrap_err().contains("ftp"));
        assert!(ServerUrl::parse("not a url").is_err());
        assert!(ServerUrl::parse("unix:/tmp/sock").is_err());
    }

    /// The schedule, measured on the clock: each redial waits for its ceiling without jitter.
    #[tokio::test(start_paused = true)]
    async fn schedule_doubles_from_its_base_to_its_cap() {
        let mut backoff = Backoff::new(BackoffPolicy::default()).with_jitter(false);
        let mut waited = Vec::new();
        for _ in 0..8 {
            let start = tokio::time::Instant::now();
            tokio::time::sleep(backoff.next_delay()).await;
            waited.push(start.elapsed().as_millis());
        }
        assert_eq!(waited, [250, 500, 1000, 2000, 4000, 8000, 10000, 10000]);
        let host = BackoffPolicy {
            cap: Duration::from_secs(3),
            ..BackoffPolicy::default()
        };
        let mut backoff = Backoff::new(host).with_jitter(false);
        let ceilings: Vec<u128> = (0..6).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(ceilings, [250, 500, 1000, 2000, 3000, 3000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(250));
    }

    #[test]
    fn full_jitter_stays_within_zero_and_the_ceiling_and_spreads_over_it() {
        let mut backoff = Backoff::new(BackoffPolicy::default());
        for _ in 0..200 {
            let ceiling = backoff.ceiling();
            assert!(backoff.next_delay() <= ceiling);
        }
        assert_eq!(backoff.ceiling(), Duration::from_secs(10));
        // A jitter that overshoots is held to the ceiling.
        assert_eq!(backoff.next_delay_with(|c| c * 2), Duration::from_secs(10));
        let draws: Vec<Duration> = (0..200)
            .map(|_| full_jitter(Duration::from_secs(10)))
            .collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_secs(10)));
        assert!(draws.iter().any(|d| *d < Duration::from_secs(3)));
        assert!(draws.iter().any(|d| *d > Duration::from_secs(7)));
        assert_eq!(full_jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn only_a_long_connection_resets_the_schedule() {
        let mut backoff = Backoff::new(BackoffPolicy::default());
        for _ in 0..5 {
            backoff.next_delay();
        }
        backoff.connection_ended(Duration::from_secs(59));
        assert_eq!(backoff.ceiling(), Duration::from_secs(8));
        backoff.connection_ended(Duration::from_secs(60));
        assert_eq!(backoff.ceiling(), Duration::from_millis(250));
    }
}
