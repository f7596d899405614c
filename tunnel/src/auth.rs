//! Who may open a tunnel, and which tunnel may replace which: one rule for the runner and the host tunnel
//! (DESIGN §7, reference omnigent-server-v1.md §3.1 and §5).
//!
//! The decision is taken from what the peer presented ([`PeerCredentials`]) before any frame is read:
//! 1. `Origin` must be absent, [`INTERNAL_ORIGIN`] or a loopback origin; anything else (a web page, `null`) is
//!    closed 4403 "forbidden origin".
//! 2. A runner id derived from a binding token (`runner_token_…`) is claimed only with that token; a token that
//!    does not match the id is refused; a non-loopback runner must present a token (4004).
//! 3. An admitted tunnel carries its [`Authentication`]; newest-wins applies only among equals: a tunnel never
//!    replaces one that is more strongly authenticated ([`may_replace`]).
//!
//! The peer address is part of the input. Device tokens (LAN co-driving, issue 13) are checked before the
//! upgrade by the server's one auth layer (`server/src/http/auth.rs`): a host tunnel from off loopback reaches
//! this rule only with a host-role (or owner) device token; the runner tunnel's binding-token rule here is
//! the only credential a runner needs.

use std::net::SocketAddr;

use omnigent_proto::headers::INTERNAL_ORIGIN;
use omnigent_proto::ids::{is_token_runner_id, runner_id_for_token};
use omnigent_proto::{host_frames, runner_frames};

/// What a peer presented when it opened a tunnel.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PeerCredentials {
    /// The `Origin` header as sent (`None` when absent; a value that is not text reads as `""`).
    pub origin: Option<String>,
    /// The tunnel token (runner: its binding token), trimmed; `None` when absent or empty.
    pub token: Option<String>,
    /// The TCP peer, when known. Unknown counts as not loopback.
    pub peer: Option<SocketAddr>,
}

impl std::fmt::Debug for PeerCredentials {
    // The token is a secret: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCredentials")
            .field("origin", &self.origin)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("peer", &self.peer)
            .finish()
    }
}

impl PeerCredentials {
    /// Read the credentials of an upgrade request: `Origin`, the token in `token_header`, and the peer.
    pub fn from_headers(
        headers: &http::HeaderMap,
        token_header: &str,
        peer: Option<SocketAddr>,
    ) -> Self {
        let origin = headers
            .get(http::header::ORIGIN)
            .map(|v| v.to_str().unwrap_or("").to_owned());
        let token = headers
            .get(token_header)
            .and_then(|v| v.to_str().ok())
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        PeerCredentials {
            origin,
            token,
            peer,
        }
    }

    fn is_loopback(&self) -> bool {
        self.peer
            .is_some_and(|p| p.ip().to_canonical().is_loopback())
    }
}

/// How strongly a tunnel's claim on its id is proven. Ordered: a tunnel may replace one of the same or a lower
/// rank only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Authentication {
    /// No credential: a loopback peer (the local-server case).
    Anonymous,
    /// The binding token its id is derived from.
    BindingToken,
}

/// What one tunnel wants to be.
#[derive(Debug, Clone, Copy)]
pub enum Claim<'a> {
    /// `/v1/runners/{id}/tunnel`
    Runner(&'a str),
    /// `/v1/hosts/{id}/tunnel`
    Host(&'a str),
}

/// The decision on one tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Admit(Authentication),
    /// Close with `code` and `reason` before reading any frame.
    Refuse {
        code: u16,
        reason: &'static str,
    },
}

/// The rule of this module for `claim`, presented with `credentials`.
pub fn admit(credentials: &PeerCredentials, claim: Claim<'_>) -> Admission {
    if let Some(origin) = &credentials.origin
        && !origin_allowed(origin)
    {
        let code = match claim {
            Claim::Runner(_) => runner_frames::close::FORBIDDEN_ORIGIN,
            Claim::Host(_) => host_frames::close::FORBIDDEN_ORIGIN,
        };
        return Admission::Refuse {
            code,
            reason: "forbidden origin",
        };
    }
    match claim {
        // This server has no managed-host tokens or accounts: every admitted host is owner "local" (reference
        // §5 local mode), so a host's claim is anonymous.
        Claim::Host(_) => Admission::Admit(Authentication::Anonymous),
        Claim::Runner(runner_id) => {
            let unauthenticated = |reason| Admission::Refuse {
                code: runner_frames::close::UNAUTHENTICATED,
                reason,
            };
            match &credentials.token {
                Some(token) if runner_id_for_token(token) == runner_id => {
                    Admission::Admit(Authentication::BindingToken)
                }
                Some(_) => unauthenticated("runner_id does not match tunnel token"),
                None if is_token_runner_id(runner_id) || !credentials.is_loopback() => {
                    unauthenticated("runner tunnel token is required")
                }
                None => Admission::Admit(Authentication::Anonymous),
            }
        }
    }
}

/// Whether a new tunnel authenticated as `new` may replace the live one authenticated as `old` (newest wins
/// among equals).
pub fn may_replace(old: Authentication, new: Authentication) -> bool {
    new >= old
}

/// Whether `origin` may open a tunnel or change state: [`INTERNAL_ORIGIN`], or an origin whose host is
/// `localhost` or a loopback address. `null` (sandboxed frames, `file:` pages) and every other site are not.
pub fn origin_allowed(origin: &str) -> bool {
    if origin == INTERNAL_ORIGIN {
        return true;
    }
    let Some((_, rest)) = origin.split_once("://") else {
        return false;
    };
    let host = if let Some(v6) = rest.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        rest.split([':', '/']).next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(origin: Option<&str>, token: Option<&str>, peer: &str) -> PeerCredentials {
        PeerCredentials {
            origin: origin.map(str::to_owned),
            token: token.map(str::to_owned),
            peer: Some(peer.parse().unwrap_or_else(|e| panic!("{peer}: {e}"))),
        }
    }

    const LOCAL: &str = "127.0.0.1:5000";
    const REMOTE: &str = "10.1.2.3:5000";

    #[test]
    fn the_rule_as_a_table() {
        let bound = runner_id_for_token("secret");
        let refuse = |code, reason| Admission::Refuse { code, reason };
        let cases: Vec<(PeerCredentials, Claim<'_>, Admission)> = vec![
            // Origin first, on both tunnels.
            (
                creds(Some("http://evil.example"), None, LOCAL),
                Claim::Runner("runner_a"),
                refuse(4403, "forbidden origin"),
            ),
            (
                creds(Some("null"), Some("secret"), LOCAL),
                Claim::Runner(&bound),
                refuse(4403, "forbidden origin"),
            ),
            (
                creds(Some("http://evil.example"), None, LOCAL),
                Claim::Host("h"),
                refuse(4403, "forbidden origin"),
            ),
            (
                creds(Some("null"), None, LOCAL),
                Claim::Host("h"),
                refuse(4403, "forbidden origin"),
            ),
            (
                creds(Some("http://localhost:5173"), None, LOCAL),
                Claim::Host("h"),
                Admission::Admit(Authentication::Anonymous),
            ),
            (
                creds(Some(INTERNAL_ORIGIN), None, LOCAL),
                Claim::Runner("runner_a"),
                Admission::Admit(Authentication::Anonymous),
            ),
            (
                creds(None, None, LOCAL),
                Claim::Runner("runner_a"),
                Admission::Admit(Authentication::Anonymous),
            ),
            // A token-bound id needs its token, even on loopback.
            (
                creds(Some(INTERNAL_ORIGIN), None, LOCAL),
                Claim::Runner(&bound),
                refuse(4004, "runner tunnel token is required"),
            ),
            (
                creds(Some(INTERNAL_ORIGIN), Some("wrong"), LOCAL),
                Claim::Runner(&bound),
                refuse(4004, "runner_id does not match tunnel token"),
            ),
            (
                creds(Some(INTERNAL_ORIGIN), Some("secret"), LOCAL),
                Claim::Runner(&bound),
                Admission::Admit(Authentication::BindingToken),
            ),
            (
                creds(None, Some("secret"), REMOTE),
                Claim::Runner(&bound),
                Admission::Admit(Authentication::BindingToken),
            ),
            (
                creds(None, None, REMOTE),
                Claim::Runner("runner_a"),
                refuse(4004, "runner tunnel token is required"),
            ),
        ];
        for (credentials, claim, expected) in cases {
            assert_eq!(
                admit(&credentials, claim),
                expected,
                "{credentials:?} {claim:?}"
            );
        }
    }

    #[test]
    fn only_an_equal_or_stronger_tunnel_replaces_a_live_one() {
        use Authentication::*;
        assert!(may_replace(Anonymous, Anonymous));
        assert!(may_replace(BindingToken, BindingToken));
        assert!(may_replace(Anonymous, BindingToken));
        assert!(!may_replace(BindingToken, Anonymous));
    }

    #[test]
    fn loopback_origins_are_allowed() {
        for ok in [
            "http://127.0.0.1:6767",
            "http://localhost:5173",
            "http://[::1]:80",
            "omnigent://internal",
        ] {
            assert!(origin_allowed(ok), "{ok}");
        }
        for bad in [
            "https://evil.example",
            "http://127.0.0.1.evil.example",
            "null",
            "",
            "http://192.168.1.2:6767",
        ] {
            assert!(!origin_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn the_token_is_never_printed() {
        let shown = format!("{:?}", creds(None, Some("secret-token"), LOCAL));
        assert!(!shown.contains("secret-token"), "{shown}");
    }
}
