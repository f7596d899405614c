//! Pairing and devices (issue 13): `POST /v1/pairing/codes` (owner), `POST /v1/pairing/peek`, `POST
//! /v1/pairing/claim` (unauthenticated: the code is the proof), `GET /v1/devices`, `PATCH|DELETE
//! /v1/devices/{id}` (owner). Who may call which is [`super::auth::RULES`]; nothing here logs a code or a
//! token.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use omnigent_proto::api::ErrorCode;
use omnigent_proto::auth::{
    COOKIE_NAME, DEFAULT_PAIRING_TTL_SECS, DeviceList, DevicePatch, MAX_DEVICE_TTL_SECS,
    MAX_PAIRING_TTL_SECS, PairingClaim, PairingClaimRequest, PairingClient, PairingCode,
    PairingCodeRequest, PairingPeek, PairingPeekRequest, SECURE_COOKIE_NAME,
};

use super::auth::Caller;
use super::{ApiError, AppState, AuthSettings, JsonBody, json};
use crate::devices::{PairingError, clean_name};

/// Cookie lifetime: 400 days, the most browsers keep.
const COOKIE_MAX_AGE_SECS: u64 = 400 * 24 * 3600;

impl From<PairingError> for ApiError {
    fn from(e: PairingError) -> Self {
        match e {
            PairingError::Invalid => ApiError::new(ErrorCode::PairingCodeInvalid, e.to_string()),
            PairingError::TooManyAttempts => {
                ApiError::new(ErrorCode::TooManyAttempts, e.to_string())
            }
            PairingError::TooManyCodes => ApiError::new(ErrorCode::Conflict, e.to_string()),
            PairingError::Store(e) => e.into(),
        }
    }
}

/// `POST /v1/pairing/codes`.
pub async fn create_code(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<PairingCodeRequest>,
) -> Result<Response, ApiError> {
    let ttl = req.ttl_seconds.unwrap_or(DEFAULT_PAIRING_TTL_SECS);
    if !(1..=MAX_PAIRING_TTL_SECS).contains(&ttl) {
        return Err(ApiError::invalid(format!(
            "ttl_seconds={ttl} is out of range; use 1 to {MAX_PAIRING_TTL_SECS}"
        )));
    }
    let device_ttl = match req.device_ttl_seconds {
        Some(t) if !(1..=MAX_DEVICE_TTL_SECS).contains(&t) => {
            return Err(ApiError::invalid(format!(
                "device_ttl_seconds={t} is out of range; use 1 to {MAX_DEVICE_TTL_SECS} (10 years), or leave it \
                 out for a device that stays paired until it is revoked"
            )));
        }
        t => t.map(Duration::from_secs),
    };
    let session_id = match req.session_id.as_deref() {
        None => None,
        Some(raw) => {
            let id = super::session_id(raw)?;
            if st.store.get_session(&id).await?.is_none() {
                return Err(ApiError::session_not_found());
            }
            Some(id)
        }
    };
    let name = req
        .name
        .as_deref()
        .map(clean_name)
        .filter(|n| !n.is_empty());
    let (code, pending) = st.devices.create_code(
        req.role,
        Duration::from_secs(ttl),
        session_id.clone(),
        name,
        device_ttl,
    )?;
    let urls = pairing_urls(&st.auth, &code, session_id.as_deref());
    Ok(json(
        StatusCode::CREATED,
        &PairingCode {
            code,
            role: pending.role,
            session_id,
            expires_at: pending.expires_at,
            urls,
            device_ttl_seconds: pending.device_ttl_secs,
        },
    ))
}

/// `http://<address>:<port>/pair#code=…[&session=…]` for every address a device on the LAN can reach, and the
/// public URL; only when there is none, the loopback ones. The code rides in the fragment, so it never
/// reaches a server log or a `Referer`.
pub fn pairing_urls(auth: &AuthSettings, code: &str, session_id: Option<&str>) -> Vec<String> {
    let mut fragment = format!("#code={code}");
    if let Some(s) = session_id {
        fragment.push_str("&session=");
        fragment.push_str(s);
    }
    let mut bases: Vec<String> = Vec::new();
    let mut loopback: Vec<String> = Vec::new();
    for addr in &auth.listening {
        let port = addr.port();
        let ip = addr.ip().to_canonical();
        if ip.is_unspecified() {
            for local in interface_addresses(ip.is_ipv6()) {
                bases.push(base_of(SocketAddr::new(local, port)));
            }
            loopback.push(base_of(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                port,
            )));
        } else if ip.is_loopback() {
            loopback.push(base_of(SocketAddr::new(ip, port)));
        } else {
            bases.push(base_of(SocketAddr::new(ip, port)));
        }
    }
    if let Some(public) = &auth.public_url {
        bases.push(public.clone());
    }
    if bases.is_empty() {
        bases = loopback;
    }
    let mut urls: Vec<String> = Vec::new();
    for base in bases {
        let url = format!("{base}/pair{fragment}");
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    urls
}

fn base_of(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// The machine's non-loopback addresses: IPv4, and with `v6` also IPv6 ones that are not link-local.
fn interface_addresses(v6: bool) -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for ifa in addrs {
        let Some(address) = ifa.address else {
            continue;
        };
        let ip = if let Some(v4) = address.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(s6) = address.as_sockaddr_in6().filter(|_| v6) {
            let ip = s6.ip();
            if (ip.segments()[0] & 0xffc0) == 0xfe80 {
                continue;
            }
            IpAddr::V6(ip)
        } else {
            continue;
        };
        if !ip.is_loopback() && !ip.is_unspecified() && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

fn source_ip(caller: &Caller) -> IpAddr {
    caller
        .peer
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.ip().to_canonical())
}

/// `POST /v1/pairing/peek`: what a code would pair, without using it.
pub async fn peek(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<PairingPeekRequest>,
) -> Result<Response, ApiError> {
    let pending = st.devices.peek(&req.code, source_ip(&caller))?;
    Ok(json(
        StatusCode::OK,
        &PairingPeek {
            role: pending.role,
            session_id: pending.session_id,
            expires_at: pending.expires_at,
            name: pending.name,
            device_ttl_seconds: pending.device_ttl_secs,
        },
    ))
}

/// `POST /v1/pairing/claim`: use a code up for a new device. A browser gets the token as an `HttpOnly`
/// cookie and never sees it; a CLI gets it in the body.
pub async fn claim(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<PairingClaimRequest>,
) -> Result<Response, ApiError> {
    let from = source_ip(&caller);
    let suggested = st.devices.peek(&req.code, from)?.name;
    let name = req
        .name
        .as_deref()
        .map(clean_name)
        .filter(|n| !n.is_empty())
        .or(suggested)
        .unwrap_or_else(|| name_from_user_agent(&headers, req.client));
    let (device, token, session_id) = st.devices.claim(&st.store, &req.code, from, &name).await?;
    tracing::info!(device = %device.id, role = %device.role, "paired a device");
    match req.client {
        PairingClient::Cli => Ok(json(
            StatusCode::OK,
            &PairingClaim {
                device,
                session_id,
                token: Some(token),
            },
        )),
        PairingClient::Browser => {
            let mut response = json(
                StatusCode::OK,
                &PairingClaim {
                    device,
                    session_id,
                    token: None,
                },
            );
            let cookie = if st.auth.secure_cookie {
                format!(
                    "{SECURE_COOKIE_NAME}={token}; HttpOnly; SameSite=Strict; Path=/; Secure; \
                     Max-Age={COOKIE_MAX_AGE_SECS}"
                )
            } else {
                format!(
                    "{COOKIE_NAME}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={COOKIE_MAX_AGE_SECS}"
                )
            };
            let value = HeaderValue::from_str(&cookie).map_err(|_| {
                ApiError::new(ErrorCode::InternalError, "cannot encode the device cookie")
            })?;
            response.headers_mut().insert(header::SET_COOKIE, value);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(response)
        }
    }
}

/// A device name from its `User-Agent` when it gave none: the platform a browser names, else the client kind.
fn name_from_user_agent(headers: &HeaderMap, client: PairingClient) -> String {
    let ua = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let platform = [
        ("iPhone", "iPhone"),
        ("iPad", "iPad"),
        ("Android", "Android device"),
        ("Macintosh", "Mac"),
        ("Windows", "Windows PC"),
        ("CrOS", "Chromebook"),
        ("Linux", "Linux computer"),
    ]
    .into_iter()
    .find(|(needle, _)| ua.contains(needle))
    .map(|(_, name)| name);
    match (client, platform) {
        (PairingClient::Browser, Some(p)) => format!("browser on {p}"),
        (PairingClient::Browser, None) => "browser".to_owned(),
        (PairingClient::Cli, _) => "omnigent CLI".to_owned(),
    }
}

/// `GET /v1/devices`.
pub async fn list(State(st): State<AppState>) -> Response {
    json(
        StatusCode::OK,
        &DeviceList {
            data: st.devices.list(),
        },
    )
}

fn no_device(id: &str) -> ApiError {
    let shown: String = id.chars().take(64).collect();
    ApiError::new(
        ErrorCode::NotFound,
        format!("no device `{shown}`; `GET /v1/devices` (or `omnigent devices`) lists them"),
    )
}

/// `PATCH /v1/devices/{id}` `{"name"}`.
pub async fn rename(
    State(st): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<DevicePatch>,
) -> Result<Response, ApiError> {
    let name = clean_name(&req.name);
    if name.is_empty() {
        return Err(ApiError::invalid("name must not be empty"));
    }
    match st.devices.rename(&st.store, &id, &name).await? {
        Some(device) => Ok(json(StatusCode::OK, &device)),
        None => Err(no_device(&id)),
    }
}

/// `DELETE /v1/devices/{id}`: the device's token stops working at once, and its open streams and
/// WebSockets close.
pub async fn revoke(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if !st.devices.revoke(&st.store, &id).await? {
        return Err(no_device(&id));
    }
    tracing::info!(device = %id.chars().take(64).collect::<String>(), "revoked a device");
    Ok(StatusCode::NO_CONTENT.into_response())
}
