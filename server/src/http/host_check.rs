//! The `Host` allow-list (DNS rebinding defence, DESIGN §7): a page on `evil.example` whose name the attacker
//! re-points at 127.0.0.1 reaches this server with `Host: evil.example:PORT`. Every request and WebSocket
//! upgrade whose `Host` is not a loopback name or address, or a name the config adds, gets 421 before any
//! handler runs.
//!
//! A request with no `Host` at all (HTTP/1.0, raw clients on this machine) is served: a browser always sends
//! one, so its absence is never a rebinding page.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use omnigent_proto::api::ErrorCode;

use super::ApiError;

/// The names this server answers to: loopback ones always (`localhost`, `*.localhost`, `127.0.0.0/8`,
/// `[::1]`, any port), plus configured entries (`name`, `name:port` or `*.suffix`, compared without case).
#[derive(Debug, Clone, Default)]
pub struct HostAllowList {
    extra: Arc<[String]>,
    /// Any IP address literal is a name of this server (it listens off loopback). A rebinding page needs a
    /// DNS name, so an address literal is never one.
    ip_literals: bool,
}

impl HostAllowList {
    pub fn new(extra: &[String]) -> Self {
        HostAllowList {
            extra: extra
                .iter()
                .map(|e| e.trim().to_ascii_lowercase())
                .filter(|e| !e.is_empty())
                .collect(),
            ip_literals: false,
        }
    }

    /// Also answer to any IP address literal (the server listens on a LAN or public address).
    pub fn with_ip_literals(mut self, yes: bool) -> Self {
        self.ip_literals = yes;
        self
    }

    /// Also answer to the host of `public_url` (`https://omni.example.com[:port][/…]`), any port.
    pub fn with_public_url(mut self, public_url: Option<&str>) -> Self {
        let host = public_url
            .and_then(|u| u.split_once("://"))
            .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""))
            .and_then(|authority| {
                split_host(&authority.to_ascii_lowercase()).map(|(h, _)| h.to_owned())
            });
        if let Some(host) = host {
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            let mut extra = self.extra.to_vec();
            extra.push(host);
            self.extra = extra.into();
        }
        self
    }

    /// Whether a `Host` header value (or URI authority) names this server.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let Some((name, port)) = split_host(&host) else {
            return false;
        };
        if is_loopback_name(name) || (self.ip_literals && name.parse::<IpAddr>().is_ok()) {
            return true;
        }
        self.extra.iter().any(|entry| {
            let Some((want, want_port)) = split_host(entry) else {
                return false;
            };
            let name_ok = match want.strip_prefix("*.") {
                Some(suffix) => name
                    .strip_suffix(suffix)
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
                None => name == want,
            };
            name_ok && (want_port.is_none() || want_port == port)
        })
    }

    fn describe(&self) -> String {
        let mut s = String::from("localhost, *.localhost, 127.0.0.0/8 and [::1] (any port)");
        if self.ip_literals {
            s.push_str(", any IP address");
        }
        if !self.extra.is_empty() {
            s.push_str(", and ");
            s.push_str(&self.extra.join(", "));
        }
        s
    }
}

/// `name[:port]` or `[v6][:port]` → (name without brackets or one trailing dot, port). `None` when malformed.
fn split_host(host: &str) -> Option<(&str, Option<&str>)> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        match after {
            "" => (v6, None),
            p => (v6, Some(p.strip_prefix(':')?)),
        }
    } else {
        match host.rsplit_once(':') {
            // A bare IPv6 address without brackets is not a valid Host; read it as a name so `::1` still matches.
            Some((n, _)) if n.contains(':') => (host, None),
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    (!name.is_empty()).then_some((name, port))
}

fn is_loopback_name(name: &str) -> bool {
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The middleware: 421 `misdirected_request` for a `Host` (every one, if repeated) or absolute-form URI
/// authority that is not on the list.
pub async fn refuse_foreign_hosts(
    State(allowed): State<HostAllowList>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = req.headers().get_all(header::HOST);
    let authority = req.uri().authority().map(|a| a.as_str());
    let bad = headers
        .iter()
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
        .chain(authority)
        .find(|h| !allowed.allows(h));
    if let Some(host) = bad {
        let shown: String = host.chars().take(200).collect();
        tracing::debug!(host = %shown, path = %req.uri().path(), "refused a request for a foreign Host");
        return ApiError::new(
            ErrorCode::MisdirectedRequest,
            format!(
                "this server does not answer to the host `{shown}` (a page using DNS rebinding sends such \
                 requests); it answers to {}. To reach it under another name, add that name to \
                 OMNIGENT_ALLOWED_HOSTS",
                allowed.describe()
            ),
        )
        .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::HostAllowList;

    #[test]
    fn loopback_hosts_pass_and_others_do_not() {
        let list = HostAllowList::new(&[
            "omni.lan".into(),
            "box:7000".into(),
            "*.corp.example".into(),
        ]);
        for ok in [
            "localhost",
            "localhost:6767",
            "LOCALHOST.",
            "app.localhost:5173",
            "127.0.0.1",
            "127.0.0.1:6767",
            "127.8.9.10:1",
            "[::1]",
            "[::1]:6767",
            "::1",
            "omni.lan",
            "omni.lan:6767",
            "box:7000",
            "a.corp.example:1",
        ] {
            assert!(list.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:6767",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "evillocalhost",
            "192.168.1.2:6767",
            "[::2]:6767",
            "0.0.0.0:6767",
            "box:7001",
            "corp.example",
            "xcorp.example",
            "localhost:",
            "localhost:abc",
            "",
            ":6767",
        ] {
            assert!(!list.allows(bad), "{bad}");
        }
    }

    #[test]
    fn listening_off_loopback_adds_ip_literals_and_the_public_host() {
        let list = HostAllowList::new(&[])
            .with_ip_literals(true)
            .with_public_url(Some("https://Omni.Example.com:8443/base"));
        for ok in [
            "192.168.1.2:6767",
            "10.0.0.1",
            "[fe80::1]:6767",
            "omni.example.com",
            "omni.example.com:443",
        ] {
            assert!(list.allows(ok), "{ok}");
        }
        for bad in ["evil.example", "192.168.1.2.evil.example", "example.com"] {
            assert!(!list.allows(bad), "{bad}");
        }
        assert!(!HostAllowList::new(&[]).allows("10.0.0.1"));
    }
}
