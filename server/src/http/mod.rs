//! The HTTP surface: routes, shared state, JSON errors and the extractors that enforce body caps and
//! content types before anything is allocated or parsed.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use omnigent_proto::api::{ErrorBody, ErrorCode, ErrorDetail};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::actor::{ActorError, ActorLimits, Sessions};
use crate::clock::now_ms;
use crate::config::ServerConfig;
use crate::store::{Store, StoreError};

mod agents;
pub mod auth;
mod catalog;
mod devices;
pub use devices::pairing_urls;
mod elicitations;
mod events;
mod host_check;
mod hosts;
mod info;
mod live;
mod runners;
mod sessions;
mod stream;
mod web;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Store,
    pub sessions: Sessions,
    /// Hosts: their tunnels, the host list, host-launched runners.
    pub hosts: crate::hosts::Hosts,
    /// Cancelled when the server shuts down: streams end with `[DONE]`.
    pub stop: CancellationToken,
    pub max_body_bytes: usize,
    pub heartbeat_interval: Duration,
    pub database: Arc<str>,
    pub started_at: i64,
    /// The `Host` names requests may be sent to.
    pub allowed_hosts: host_check::HostAllowList,
    /// Who is watching each session (`session.presence`).
    pub presence: crate::presence::Presence,
    /// Paired devices and pairing codes.
    pub devices: crate::devices::Devices,
    /// How callers are identified and what pairing URLs say.
    pub auth: Arc<AuthSettings>,
    /// Who opened each live host tunnel (a device id, or `None` for the owner on this machine): another
    /// principal may not take a live host id over (http/hosts.rs).
    pub host_principals: HostPrincipals,
}

/// Live host id → (tunnel generation, the device that opened it; `None` for the owner on this machine).
pub type HostPrincipals =
    Arc<std::sync::Mutex<std::collections::HashMap<String, (u64, Option<String>)>>>;

/// The identity settings of [`auth`] and the pairing routes.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// A loopback peer is the owner.
    pub trust_loopback: bool,
    /// The public URL without a trailing `/` (`https://omni.example.com`), if configured.
    pub public_url: Option<String>,
    /// Its origin (`scheme://host[:port]`, lower case).
    pub public_origin: Option<String>,
    /// Cookies get `Secure` and the `__Host-` prefix (the public URL is HTTPS).
    pub secure_cookie: bool,
    /// The addresses the server listens on.
    pub listening: Vec<std::net::SocketAddr>,
}

impl AppState {
    pub fn new(
        config: &ServerConfig,
        store: Store,
        stop: CancellationToken,
        devices: crate::devices::Devices,
        auth: AuthSettings,
    ) -> Self {
        let limits = ActorLimits {
            replay_buffer: config.replay_buffer.max(1),
            replay_buffer_bytes: config.replay_buffer_bytes,
            idle: config.actor_idle,
            runner_grace: config.runner_grace,
        };
        let runners = omnigent_tunnel::RunnerRegistry::new(config.tunnel.clone());
        let hosts =
            crate::hosts::Hosts::spawn(config.host_registry.clone(), store.clone(), stop.clone());
        AppState {
            sessions: Sessions::with_runners(store.clone(), limits, runners, Some(hosts.clone())),
            hosts,
            store,
            stop,
            max_body_bytes: config.max_body_bytes,
            heartbeat_interval: config.heartbeat_interval,
            database: config.database.display().into(),
            started_at: now_ms() / 1000,
            allowed_hosts: host_check::HostAllowList::new(&config.allowed_hosts)
                .with_ip_literals(
                    auth.listening
                        .iter()
                        .any(|a| !a.ip().to_canonical().is_loopback()),
                )
                .with_public_url(auth.public_url.as_deref()),
            presence: crate::presence::Presence::default(),
            devices,
            auth: Arc::new(auth),
            host_principals: Arc::default(),
        }
    }
}

pub fn router(state: AppState) -> Router {
    let allowed_hosts = state.allowed_hosts.clone();
    let auth_state = state.clone();
    Router::new()
        .route("/health", get(info::health))
        .route("/api/version", get(info::version))
        .route("/v1/info", get(info::info))
        .route("/v1/me", get(info::me))
        .route("/v1/agents", get(agents::list))
        .route("/v1/agents/{id}", get(agents::get_one))
        .route("/v1/hosts", get(hosts::list))
        .route("/v1/hosts/{host_id}", get(hosts::get_one))
        .route("/v1/hosts/{host_id}/tunnel", get(hosts::tunnel))
        .route(
            "/v1/hosts/{host_id}/runners",
            axum::routing::post(hosts::launch_runner),
        )
        .route("/v1/hosts/{host_id}/filesystem", get(hosts::list_dir))
        .route("/v1/hosts/{host_id}/filesystem/stat", get(hosts::stat))
        .route(
            "/v1/hosts/{host_id}/directories",
            axum::routing::post(hosts::create_dir),
        )
        .route("/v1/runners", get(runners::list))
        .route("/v1/runners/{runner_id}/tunnel", get(runners::tunnel))
        .route("/v1/runners/{runner_id}/status", get(runners::status))
        .route(
            "/v1/runners/{runner_id}/token",
            axum::routing::post(runners::token),
        )
        .route("/v1/sessions", get(sessions::list).post(sessions::create))
        .route(
            "/v1/sessions/{id}",
            get(sessions::get_one)
                .patch(sessions::patch)
                .delete(sessions::delete),
        )
        .route("/v1/sessions/{id}/items", get(sessions::items))
        // The session's agent bundle, for its runner (binding token checked in the handler).
        .route("/v1/sessions/{id}/agent/contents", get(agents::contents))
        .route(
            "/v1/sessions/{id}/fork",
            axum::routing::post(sessions::fork),
        )
        .route(
            "/v1/sessions/{id}/events",
            axum::routing::post(events::post_event),
        )
        .route("/v1/sessions/{id}/stream", get(stream::stream))
        // Approvals (issue 15 item 6): http/elicitations.rs.
        .route(
            "/v1/sessions/{id}/elicitations/{elicitation_id}",
            get(elicitations::get_one),
        )
        .route(
            "/v1/sessions/{id}/elicitations/{elicitation_id}/resolve",
            axum::routing::post(elicitations::resolve),
        )
        // Live web client routes (liveapi): http/live.rs, http/catalog.rs.
        .route("/v1/sessions/updates", get(live::updates))
        .route("/v1/sessions/projects", get(catalog::projects))
        .route(
            "/v1/sessions/{id}/read-state",
            axum::routing::put(live::put_read_state),
        )
        .route("/v1/sessions/{id}/agent", get(live::agent))
        .route(
            "/v1/sessions/{id}/child_sessions",
            get(live::child_sessions),
        )
        .route(
            "/v1/sessions/{id}/resources/terminals",
            get(live::terminals),
        )
        .route("/v1/harnesses", get(catalog::harnesses))
        .route("/v1/extensions", get(catalog::extensions))
        .route("/v1/skills", get(catalog::skills))
        .route(
            "/v1/projects/order",
            get(catalog::get_project_order).put(catalog::put_project_order),
        )
        .route(
            "/v1/pairing/codes",
            axum::routing::post(devices::create_code),
        )
        .route("/v1/pairing/peek", axum::routing::post(devices::peek))
        .route("/v1/pairing/claim", axum::routing::post(devices::claim))
        .route("/v1/devices", get(devices::list))
        .route(
            "/v1/devices/{id}",
            axum::routing::patch(devices::rename).delete(devices::revoke),
        )
        .fallback(web::serve)
        .method_not_allowed_fallback(method_not_allowed)
        // Identity, role and Origin: one layer over every route, the fallback and every upgrade (http/auth.rs).
        .layer(axum::middleware::from_fn_with_state(
            auth_state,
            auth::authorize,
        ))
        // Outside the auth check, inside the log: a rebinding page learns nothing, and the refusal is logged.
        .layer(axum::middleware::from_fn_with_state(
            allowed_hosts,
            host_check::refuse_foreign_hosts,
        ))
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state)
}

/// One log line per request (debug), and a warning for every server error.
async fn log_request(req: Request, next: axum::middleware::Next) -> Response {
    let start = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    if status >= 500 {
        tracing::warn!(%method, %path, status, micros, "request failed");
    } else {
        tracing::debug!(%method, %path, status, micros, "request");
    }
    response
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!(
            "no route {} {}; the API lives under /v1 (see GET /v1/info)",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// An error answer: `{"error":{"code","message"}}` with the status of the code.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
    required_role: Option<omnigent_proto::auth::Role>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            required_role: None,
        }
    }

    /// 403 `forbidden` from the role check, naming the role that would be needed.
    pub fn forbidden_role(message: impl Into<String>, needed: omnigent_proto::auth::Role) -> Self {
        ApiError {
            code: ErrorCode::Forbidden,
            message: message.into(),
            required_role: Some(needed),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidInput, message)
    }

    pub fn session_not_found() -> Self {
        Self::new(ErrorCode::NotFound, "Session not found")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                required_role: self.required_role.map(|r| r.as_str().to_owned()),
            },
        };
        (status, axum::Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::CursorNotFound(_) => ApiError::invalid(e.to_string()),
            // Logged by the store, with the file system and its free space.
            StoreError::Full { .. } => ApiError::new(ErrorCode::StorageFull, e.to_string()),
            StoreError::Unavailable { .. } => {
                ApiError::new(ErrorCode::StorageUnavailable, e.to_string())
            }
            e => {
                error!("database failure: {e}");
                ApiError::new(
                    ErrorCode::InternalError,
                    format!(
                        "the server's database failed: {e}; retry, and see the server log if it persists"
                    ),
                )
            }
        }
    }
}

impl From<ActorError> for ApiError {
    fn from(e: ActorError) -> Self {
        match e {
            ActorError::NotFound => ApiError::session_not_found(),
            ActorError::Store(e) => e.into(),
            ActorError::Gone => ApiError::new(ErrorCode::RunnerUnavailable, e.to_string()),
            ActorError::Untyped => ApiError::invalid(e.to_string()),
            ActorError::RunnerUnavailable(message) => {
                ApiError::new(ErrorCode::RunnerUnavailable, message)
            }
            ActorError::Launch(e) => e.into(),
            ActorError::AlreadyResolved(_) => {
                ApiError::new(ErrorCode::AlreadyResolved, e.to_string())
            }
            ActorError::UnknownElicitation(_) => ApiError::new(ErrorCode::NotFound, e.to_string()),
        }
    }
}

/// The canonical form of a session id from a path, or 404 (as omnigent answers for any unknown id).
pub fn session_id(raw: &str) -> Result<String, ApiError> {
    omnigent_proto::ids::canonical_id(raw).ok_or_else(ApiError::session_not_found)
}

/// A JSON body: `Content-Type: application/json` required (unless the body is empty, read as `{}`),
/// at most `max_body_bytes` (checked on `Content-Length` first, then while reading).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let max = state.max_body_bytes;
        let too_large = || {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("request body is larger than {max} bytes; send a smaller body"),
            )
        };
        let declared = content_length(req.headers());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                let mime = v.split(';').next().unwrap_or("").trim();
                mime.eq_ignore_ascii_case("application/json")
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        let body = axum::body::to_bytes(req.into_body(), max)
            .await
            .map_err(|e| {
                if std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                {
                    too_large()
                } else {
                    ApiError::invalid(format!("cannot read the request body: {e}"))
                }
            })?;
        let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            match is_json {
                Some(true) => &body,
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::UnsupportedMediaType,
                        "send the body as JSON with the header `Content-Type: application/json`",
                    ));
                }
            }
        };
        let mut de = serde_json::Deserializer::from_slice(text);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() || path == "." {
                ApiError::invalid(format!(
                    "request body is not valid JSON for this endpoint: {inner}"
                ))
            } else {
                ApiError::invalid(format!("request body field `{path}` is wrong: {inner}"))
            }
        })?;
        de.end().map_err(|e| {
            ApiError::invalid(format!(
                "request body is not valid JSON for this endpoint: {e}"
            ))
        })?;
        Ok(JsonBody(value))
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Query parameters, with a JSON 400 that names the bad parameter.
pub struct Q<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Q(q.0))
            .map_err(|e| ApiError::invalid(format!("bad query string: {}", e.body_text())))
    }
}

/// A JSON answer with a status.
pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            Body::from(bytes),
        )
            .into_response(),
        Err(e) => ApiError::new(
            ErrorCode::InternalError,
            format!("cannot encode the answer: {e}"),
        )
        .into_response(),
    }
}
