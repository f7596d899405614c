//! Who may do what (issue 13), enforced in this one layer for every route, stream and upgrade.
//!
//! 1. **Identity**: a loopback peer is the owner (unless the config says not to trust loopback, or the request
//!    carries `Forwarded` / `X-Forwarded-For` / `X-Real-IP`: a reverse proxy on this machine). Any other
//!    peer must present a device token, as the cookie `omnigent_device` / `__Host-omnigent_device` or
//!    `Authorization: Bearer`; [`crate::devices::Devices`] checks it. The result is a [`Caller`] in the
//!    request's extensions.
//! 2. **Role**: the route the request matched ([`MatchedPath`]) and its method look up [`RULES`]; a caller
//!    without a token where one is needed gets 401 (`unauthenticated`, saying how to pair), one whose role is
//!    not enough 403 (`forbidden`, with `required_role`). A route with no rule needs the owner.
//! 3. **Origin**: a state-changing request whose `Origin` is not absent, `omnigent://internal` or loopback is
//!    refused with 403, unless it carries a device token and the origin is this server's own (the `Host` it
//!    was sent to, or the public URL). WebSocket upgrades read [`Caller::origin_ok`] and close 4403.
//! 4. **Revocation**: a device's responses (SSE streams) end when it is revoked; its WebSockets watch
//!    [`Caller::device`]'s `revoked` token.
//!
//! Tokens are read from headers here and nowhere else, and never logged.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use omnigent_proto::api::ErrorCode;
use omnigent_proto::auth::{COOKIE_NAME, Role, SECURE_COOKIE_NAME};
use omnigent_tunnel::auth::origin_allowed;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::{ApiError, AppState};
use crate::devices::{AuthError, DeviceIdentity};

/// What a route needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Anyone (it shows nothing private and changes nothing without its own proof: pairing codes, the
    /// runner tunnel's binding token).
    Public,
    /// Any paired device, whatever its role.
    AnyDevice,
    /// This role or one that includes it ([`Role::satisfies`]).
    Role(Role),
}

use Need::{AnyDevice, Public};
const VIEWER: Need = Need::Role(Role::Viewer);
const DRIVER: Need = Need::Role(Role::Driver);
const HOST: Need = Need::Role(Role::Host);
const OWNER: Need = Need::Role(Role::Owner);

/// Every route and what it needs: `(method, path as routed, need)`. `GET` covers `HEAD`. Every `.route(…)`
/// of `http/mod.rs` has its methods here (`server/tests/auth.rs` checks on the source).
pub const RULES: &[(&str, &str, Need)] = &[
    ("GET", "/health", Public),
    ("GET", "/api/version", Public),
    ("GET", "/v1/info", Public),
    ("GET", "/v1/me", AnyDevice),
    ("GET", "/v1/agents", VIEWER),
    ("GET", "/v1/agents/{id}", VIEWER),
    ("GET", "/v1/hosts", VIEWER),
    ("GET", "/v1/hosts/{host_id}", VIEWER),
    ("GET", "/v1/hosts/{host_id}/tunnel", HOST),
    ("POST", "/v1/hosts/{host_id}/runners", DRIVER),
    ("GET", "/v1/hosts/{host_id}/filesystem", DRIVER),
    ("GET", "/v1/hosts/{host_id}/filesystem/stat", DRIVER),
    ("POST", "/v1/hosts/{host_id}/directories", DRIVER),
    ("GET", "/v1/runners", VIEWER),
    // The runner tunnel keeps its own rule (`tunnel::auth`): off loopback only with its binding token.
    ("GET", "/v1/runners/{runner_id}/tunnel", Public),
    ("GET", "/v1/runners/{runner_id}/status", VIEWER),
    // Mints nothing (answers 400): the runner asks before it dials.
    ("POST", "/v1/runners/{runner_id}/token", Public),
    ("GET", "/v1/sessions", VIEWER),
    ("POST", "/v1/sessions", DRIVER),
    ("GET", "/v1/sessions/{id}", VIEWER),
    ("PATCH", "/v1/sessions/{id}", DRIVER),
    ("DELETE", "/v1/sessions/{id}", OWNER),
    ("GET", "/v1/sessions/{id}/items", VIEWER),
    ("POST", "/v1/sessions/{id}/fork", DRIVER),
    ("POST", "/v1/sessions/{id}/events", DRIVER),
    ("GET", "/v1/sessions/{id}/stream", VIEWER),
    // Answering an approval drives the agent (0.19.1: LEVEL_EDIT for both, the question included).
    (
        "GET",
        "/v1/sessions/{id}/elicitations/{elicitation_id}",
        DRIVER,
    ),
    (
        "POST",
        "/v1/sessions/{id}/elicitations/{elicitation_id}/resolve",
        DRIVER,
    ),
    ("GET", "/v1/sessions/updates", VIEWER),
    ("GET", "/v1/sessions/projects", VIEWER),
    ("PUT", "/v1/sessions/{id}/read-state", DRIVER),
    ("GET", "/v1/sessions/{id}/agent", VIEWER),
    // The runner's callback: its own proof is the session's runner binding token, checked by the handler.
    ("GET", "/v1/sessions/{id}/agent/contents", Public),
    ("GET", "/v1/sessions/{id}/child_sessions", VIEWER),
    ("GET", "/v1/sessions/{id}/resources/terminals", VIEWER),
    ("GET", "/v1/harnesses", VIEWER),
    ("GET", "/v1/extensions", VIEWER),
    ("GET", "/v1/skills", VIEWER),
    ("GET", "/v1/projects/order", VIEWER),
    ("PUT", "/v1/projects/order", DRIVER),
    ("POST", "/v1/pairing/codes", OWNER),
    ("POST", "/v1/pairing/peek", Public),
    ("POST", "/v1/pairing/claim", Public),
    ("GET", "/v1/devices", OWNER),
    ("PATCH", "/v1/devices/{id}", OWNER),
    ("DELETE", "/v1/devices/{id}", OWNER),
];

/// What a route needs; the fallback (the web UI's files, JSON 404s) is public to read, and anything else
/// without a rule needs the owner.
pub fn need_of(method: &Method, matched: Option<&str>) -> Need {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    match matched {
        Some(path) => RULES
            .iter()
            .find(|(m, p, _)| *m == method && *p == path)
            .map_or(OWNER, |(_, _, need)| *need),
        None if method == "GET" => Public,
        None => OWNER,
    }
}

/// Who sent a request (in its extensions for every handler).
#[derive(Debug, Clone)]
pub struct Caller {
    /// `None`: an unpaired caller off loopback (only public routes reach a handler then).
    pub role: Option<Role>,
    /// The paired device, when the caller presented a valid token.
    pub device: Option<DeviceIdentity>,
    /// The peer is the owner on this machine.
    pub local_owner: bool,
    /// The request's `Origin` may change state / open a WebSocket here.
    pub origin_ok: bool,
    /// The TCP peer.
    pub peer: Option<SocketAddr>,
}

impl Caller {
    /// What presence shows for this caller: (device id, name, role).
    pub fn presence(&self) -> (Option<String>, String, Role) {
        match &self.device {
            Some(d) => (Some(d.id.clone()), d.name.clone(), d.role),
            None => (
                None,
                "this computer".to_owned(),
                self.role.unwrap_or(Role::Owner),
            ),
        }
    }
}

const PAIR_HINT: &str = "pair this device: run `omnigent share` on the server's machine and open the URL it \
                         prints, or run `omnigent login <URL>`";

/// The device token a request presents: `Authorization: Bearer`, else the device cookie.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    if let Some(auth) = headers.get(header::AUTHORIZATION)
        && let Ok(auth) = auth.to_str()
        && let Some((scheme, token)) = auth.trim().split_once(' ')
        && scheme.eq_ignore_ascii_case("bearer")
        && !token.trim().is_empty()
    {
        return Some(token.trim().to_owned());
    }
    for cookies in headers.get_all(header::COOKIE) {
        let Ok(cookies) = cookies.to_str() else {
            continue;
        };
        for pair in cookies.split(';') {
            if let Some((name, value)) = pair.trim().split_once('=')
                && (name == COOKIE_NAME || name == SECURE_COOKIE_NAME)
                && !value.is_empty()
            {
                return Some(value.to_owned());
            }
        }
    }
    None
}

/// Whether `origin` is this server's own as reached: the `Host` the request was sent to (any scheme), or the
/// configured public URL's origin.
fn own_origin(origin: &str, headers: &HeaderMap, public_origin: Option<&str>) -> bool {
    if public_origin.is_some_and(|p| p.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let Some((_, authority)) = origin.split_once("://") else {
        return false;
    };
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|host| host.eq_ignore_ascii_case(authority))
}

/// The layer (see the module doc).
pub async fn authorize(
    State(st): State<AppState>,
    mut req: Request,
    next: axum::middleware::Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    // A request a reverse proxy on this machine forwarded comes from loopback but not from the owner.
    let proxied = ["forwarded", "x-forwarded-for", "x-real-ip"]
        .iter()
        .any(|h| req.headers().contains_key(*h));
    let local_owner = st.auth.trust_loopback
        && !proxied
        && peer.is_some_and(|p| p.ip().to_canonical().is_loopback());
    let presented = if local_owner {
        None
    } else {
        presented_token(req.headers()).map(|t| st.devices.authenticate(&t, &st.store))
    };
    let (device, refused) = match presented {
        Some(Ok(device)) => (Some(device), None),
        Some(Err(why)) => (None, Some(why)),
        None => (None, None),
    };
    let role = if local_owner {
        Some(Role::Owner)
    } else {
        device.as_ref().map(|d| d.role)
    };
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .map(|o| o.to_str().unwrap_or("").to_owned());
    let origin_ok = match &origin {
        None => true,
        Some(o) => {
            origin_allowed(o)
                || ((device.is_some() || req.uri().path().starts_with("/v1/pairing/"))
                    && own_origin(o, req.headers(), st.auth.public_origin.as_deref()))
        }
    };
    let matched = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let need = need_of(req.method(), matched.as_deref());
    let what = format!(
        "{} {}",
        req.method(),
        matched.as_deref().unwrap_or(req.uri().path())
    );
    match (need, role) {
        (Public, _) => {}
        (AnyDevice, Some(_)) => {}
        (Need::Role(needed), Some(have)) if have.satisfies(needed) => {}
        (Need::Role(needed), Some(have)) => {
            return ApiError::forbidden_role(
                format!("{what} needs the {needed} role; this device is a {have}"),
                needed,
            )
            .into_response();
        }
        (_, None) => {
            let why = match refused {
                Some(AuthError::Expired { at }) => format!(
                    "its device's pairing expired at {} (it was paired for a limited time); pair it again",
                    crate::clock::iso8601_utc(at)
                ),
                Some(AuthError::Unknown) => {
                    "its device token is not valid (revoked, expired or mistyped)".to_owned()
                }
                None => "it carries no device token".to_owned(),
            };
            return ApiError::new(
                ErrorCode::Unauthenticated,
                format!(
                    "{what} refused: this request comes from another machine and {why}; {PAIR_HINT}"
                ),
            )
            .into_response();
        }
    }
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if writes && !origin_ok {
        let shown: String = origin.unwrap_or_default().chars().take(200).collect();
        return ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "cross-origin request from `{shown}` refused: only pages served by this server (its loopback, \
                 LAN or public address, with a paired device) may change sessions"
            ),
        )
        .into_response();
    }
    let revoked = device.as_ref().map(|d| d.revoked.clone());
    req.extensions_mut().insert(Caller {
        role,
        device,
        local_owner,
        origin_ok,
        peer,
    });
    let response = next.run(req).await;
    match revoked {
        // A device's response (an SSE stream above all) ends when the device is revoked.
        Some(revoked) => response.map(|body| {
            Body::new(Revocable {
                inner: body,
                revoked: Box::pin(revoked.cancelled_owned()),
            })
        }),
        None => response,
    }
}

/// A response body that ends when its device is revoked.
struct Revocable {
    inner: Body,
    revoked: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl HttpBody for Revocable {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.revoked.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(axum::Error::new(std::io::Error::other(
                "the device was revoked",
            )))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
