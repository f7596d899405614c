//! The control API served on the local socket (connections: `serve`). Every error, including a body over
//! the cap, a body that does not arrive in time, a bad query string and a wrong method, is a
//! [`ControlError`] JSON body.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use omnigent_proto::CONTROL_PROTOCOL_VERSION;
use omnigent_proto::control::{
    self as ctl, ChildState, ControlError, ControlErrorCode, DaemonInfo, DaemonStatus, Hello,
    HelloReply, LogPaths, RemoveTargetReply, ServerStatus, ShutdownReply, StopRequest,
    TargetStatus,
};
use omnigent_proto::paths::Paths;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::task::{ConfigEdit, ConfigEditRequest, ConfigView, EditOutcome};
use crate::hosting::targets::{self, TargetCmd, normalize_url};
use crate::runtime::keeper;
use crate::supervise::local_server::{self, ServerCmd, ServerHandle};

/// Longest `after` wait a status call may ask for.
const MAX_STATUS_WAIT: Duration = Duration::from_secs(60);

pub(crate) struct ApiState {
    pub server: ServerHandle,
    pub targets: targets::Targets,
    pub revision: watch::Receiver<u64>,
    pub config: watch::Receiver<ConfigView>,
    pub config_edits: mpsc::Sender<ConfigEditRequest>,
    pub shutdown: mpsc::Sender<(StopRequest, oneshot::Sender<ShutdownReply>)>,
    pub paths: Paths,
    pub socket: String,
    pub started_at_ms: u64,
    pub started: tokio::time::Instant,
    pub started_by: String,
    /// Asks the keeper to check (and re-create) the runtime files now.
    pub checks: mpsc::Sender<keeper::CheckRequest>,
    pub limits: crate::ControlLimits,
    /// The agent CLIs' probe: a plain status call (`omnigent host status`) probes again.
    pub probes: crate::supervise::cli_probe::CliProbes,
}

pub(crate) fn router(state: Arc<ApiState>) -> Router {
    let limits = state.limits;
    Router::new()
        .route(ctl::HELLO_PATH, post(hello))
        .route(ctl::STATUS_PATH, get(status))
        .route(ctl::SERVER_PATH, get(server_status))
        .route(ctl::SERVER_START_PATH, post(server_start))
        .route(ctl::SERVER_STOP_PATH, post(server_stop))
        .route(ctl::SHUTDOWN_PATH, post(shutdown))
        .route(ctl::TARGETS_PATH, get(targets_list).post(target_add))
        .route(ctl::TARGETS_REMOVE_PATH, post(target_remove))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(check_protocol_header))
        .layer(middleware::from_fn(move |req, next| {
            buffer_body(limits.body_timeout, req, next)
        }))
        .with_state(state)
}

/// Read the whole body before any handler runs: at most [`ctl::MAX_CONTROL_BODY_BYTES`] (checked against
/// `Content-Length` before reading, and while reading), within the body timeout; each failure is a JSON
/// error, and one that leaves the body unread closes the connection.
async fn buffer_body(timeout: Duration, req: Request, next: Next) -> Response {
    use http_body_util::BodyExt;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ControlErrorCode::PayloadTooLarge,
            format!(
                "the request body is larger than the control API's cap of {} bytes",
                ctl::MAX_CONTROL_BODY_BYTES
            ),
        )
        .closing()
    };
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > ctl::MAX_CONTROL_BODY_BYTES as u64) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, ctl::MAX_CONTROL_BODY_BYTES);
    let bytes = match tokio::time::timeout(timeout, limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(e)) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                ControlErrorCode::BadRequest,
                format!("cannot read the request body: {e}"),
            )
            .closing();
        }
        Err(_) => {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                ControlErrorCode::RequestTimeout,
                format!(
                    "the request body did not arrive within {} ms",
                    timeout.as_millis()
                ),
            )
            .closing();
        }
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// A typed control error as an HTTP response.
pub(crate) struct ApiError(StatusCode, ControlError);

impl ApiError {
    fn new(status: StatusCode, code: ControlErrorCode, message: impl Into<String>) -> Self {
        ApiError(
            status,
            ControlError {
                code,
                message: message.into(),
                daemon: None,
            },
        )
    }
}

impl ApiError {
    /// The response, telling the client the connection closes (its request was not read to the end).
    fn closing(self) -> Response {
        let mut resp = self.into_response();
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

fn hello_reply(state: &ApiState) -> HelloReply {
    HelloReply {
        protocol_version: CONTROL_PROTOCOL_VERSION,
        build_version: omnigent_proto::BUILD_VERSION.to_owned(),
        pid: std::process::id(),
        started_at_ms: state.started_at_ms,
    }
}

fn mismatch(theirs: u32, daemon: HelloReply) -> ApiError {
    ApiError(
        StatusCode::UPGRADE_REQUIRED,
        ControlError {
            code: ControlErrorCode::ProtocolMismatch,
            message: format!(
                "this daemon (omnigent {}, pid {}) speaks control protocol {CONTROL_PROTOCOL_VERSION}, the client \
                 speaks {theirs}; run `omnigent restart` with the omnigent binary you mean to use",
                daemon.build_version, daemon.pid
            ),
            daemon: Some(daemon),
        },
    )
}

async fn check_protocol_header(req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(ctl::PROTOCOL_HEADER)
        .map(|v| v.to_str().unwrap_or("").trim().to_owned());
    if let Some(v) = header
        && v.parse::<u32>().ok() != Some(CONTROL_PROTOCOL_VERSION)
    {
        let daemon = HelloReply {
            protocol_version: CONTROL_PROTOCOL_VERSION,
            build_version: omnigent_proto::BUILD_VERSION.to_owned(),
            pid: std::process::id(),
            started_at_ms: 0,
        };
        return mismatch(v.parse().unwrap_or(0), daemon).into_response();
    }
    next.run(req).await
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ControlErrorCode::NotFound,
        format!(
            "no control route {} {}; see docs/cli.md for the control API",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ControlErrorCode::BadRequest,
        format!(
            "{} is not a method of the control route {}; see docs/cli.md for the control API",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn hello(
    State(state): State<Arc<ApiState>>,
    body: axum::body::Bytes,
) -> Result<Json<HelloReply>, ApiError> {
    let hello: Hello = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ControlErrorCode::BadRequest,
            format!("the hello must be {{\"protocol_version\": <int>, \"build_version\": <string>}}: {e}"),
        )
    })?;
    let reply = hello_reply(&state);
    if hello.protocol_version != CONTROL_PROTOCOL_VERSION {
        tracing::warn!(theirs = hello.protocol_version, client = %hello.build_version, "client speaks another control protocol");
        return Err(mismatch(hello.protocol_version, reply));
    }
    Ok(Json(reply))
}

#[derive(Debug, Deserialize)]
struct StatusQuery {
    after: Option<u64>,
    timeout_ms: Option<u64>,
}

async fn status(
    State(state): State<Arc<ApiState>>,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Json<DaemonStatus>, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ControlErrorCode::BadRequest,
            format!("bad query string: {e}; expected after=<revision>&timeout_ms=<ms>"),
        )
    })?;
    // What status reports is checked first: the runtime files it names are there (re-created if a tmp
    // cleaner removed them).
    let (tx, rx) = oneshot::channel();
    if state.checks.send(tx).await.is_ok()
        && let Ok(Err(why)) = rx.await
    {
        tracing::warn!("status: the runtime files are not all in place: {why}");
    }
    if q.after.is_none() {
        // `omnigent host status`: the next `host.hello` reports the CLIs as they are now.
        state.probes.refresh().await;
    }
    if let Some(after) = q.after {
        let wait = Duration::from_millis(q.timeout_ms.unwrap_or(30_000)).min(MAX_STATUS_WAIT);
        let mut rev = state.revision.clone();
        let _ = tokio::time::timeout(wait, rev.wait_for(|r| *r > after)).await;
    }
    let revision = *state.revision.borrow();
    let server = live_server_status(&state).await;
    let config = state.config.borrow().clone();
    let logs = state.paths.logs_dir();
    let (targets, runners) = state.targets.status();
    Ok(Json(DaemonStatus {
        revision,
        daemon: DaemonInfo {
            pid: std::process::id(),
            version: omnigent_proto::BUILD_VERSION.to_owned(),
            protocol_version: CONTROL_PROTOCOL_VERSION,
            started_at_ms: state.started_at_ms,
            uptime_ms: state.started.elapsed().as_millis() as u64,
            started_by: state.started_by.clone(),
            socket: state.socket.clone(),
            runtime_dir: state.paths.runtime_dir.display().to_string(),
        },
        server,
        targets,
        runners,
        config: ctl::ConfigStatus {
            path: state.paths.config_file().display().to_string(),
            error: config.error.clone(),
            loads: config.loads,
            host_id: config.config.host_id().to_owned(),
            host_name: config.config.host_name().to_owned(),
        },
        logs: LogPaths {
            dir: logs.display().to_string(),
            daemon: logs.join("daemon.log").display().to_string(),
            server: logs.join("server.log").display().to_string(),
        },
    }))
}

/// The supervisor's snapshot plus what the server itself says right now (health, database, sessions).
async fn live_server_status(state: &ApiState) -> ServerStatus {
    let mut s = state.server.status.borrow().clone();
    if matches!(s.state, ChildState::Running | ChildState::Adopted)
        && let Some(port) = s.port
    {
        match local_server::probe_info(port, Duration::from_millis(500)).await {
            Some(info) => {
                s.healthy = Some(true);
                s.database = info.database.or(s.database);
                s.session_count = info.session_count;
                s.storage = info.storage;
            }
            None => s.healthy = Some(false),
        }
    }
    s
}

async fn server_status(State(state): State<Arc<ApiState>>) -> Json<ServerStatus> {
    Json(live_server_status(&state).await)
}

async fn ask_server(
    state: &ApiState,
    make: impl FnOnce(oneshot::Sender<ServerStatus>) -> ServerCmd,
) -> Result<ServerStatus, ApiError> {
    let (tx, rx) = oneshot::channel();
    let gone = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ControlErrorCode::ShuttingDown,
            "the daemon is shutting down",
        )
    };
    state.server.cmds.send(make(tx)).await.map_err(|_| gone())?;
    rx.await.map_err(|_| gone())
}

async fn server_start(State(state): State<Arc<ApiState>>) -> Result<Json<ServerStatus>, ApiError> {
    let s = ask_server(&state, ServerCmd::Start).await?;
    if matches!(s.state, ChildState::Running | ChildState::Adopted) {
        return Ok(Json(live_server_status(&state).await));
    }
    let why = match (s.state, &s.last_error) {
        (ChildState::Stopped, _) => {
            "it was stopped (`omnigent stop` or `omnigent server stop`) before it was ready"
                .to_owned()
        }
        (_, Some(e)) => e.clone(),
        (state, None) => format!("it is {state:?}").to_lowercase(),
    };
    let mut message = format!("the local server did not start: {why}");
    if !s.log_tail.is_empty() {
        message.push_str(&format!(
            "\nlast lines of {}:\n{}",
            s.log_file,
            s.log_tail.join("\n")
        ));
    }
    Err(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        ControlErrorCode::ServerFailed,
        message,
    ))
}

fn parse_stop(body: &[u8]) -> Result<StopRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(StopRequest::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ControlErrorCode::BadRequest,
            format!("expected {{\"force\": bool}}: {e}"),
        )
    })
}

async fn server_stop(
    State(state): State<Arc<ApiState>>,
    body: axum::body::Bytes,
) -> Result<Json<ServerStatus>, ApiError> {
    let req = parse_stop(&body)?;
    let s = ask_server(&state, |reply| ServerCmd::Stop {
        force: req.force,
        reply,
    })
    .await?;
    Ok(Json(s))
}

async fn shutdown(
    State(state): State<Arc<ApiState>>,
    body: axum::body::Bytes,
) -> Result<Json<ShutdownReply>, ApiError> {
    let req = parse_stop(&body)?;
    let (tx, rx) = oneshot::channel();
    let gone = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ControlErrorCode::ShuttingDown,
            "the daemon is already shutting down",
        )
    };
    state.shutdown.send((req, tx)).await.map_err(|_| gone())?;
    rx.await.map(Json).map_err(|_| gone())
}

async fn targets_list(State(state): State<Arc<ApiState>>) -> Json<Vec<TargetStatus>> {
    Json(state.targets.status().0)
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ControlErrorCode::BadRequest,
            format!("expected {shape}: {e}"),
        )
    })
}

fn check_target_url(url: &str) -> Result<(), ApiError> {
    let ok = ["http://", "https://", "ws://", "wss://"]
        .iter()
        .any(|p| url.starts_with(p) && url.len() > p.len());
    if ok {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        ControlErrorCode::BadRequest,
        format!("{url:?} is not a server URL; use http(s)://host[:port][/prefix]"),
    ))
}

fn shutting_down() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ControlErrorCode::ShuttingDown,
        "the daemon is shutting down",
    )
}

/// Have the config task edit config.toml.
async fn edit_config(
    state: &ApiState,
    edit: ConfigEdit,
) -> Result<Result<EditOutcome, crate::config::ConfigError>, ApiError> {
    let (tx, rx) = oneshot::channel();
    state
        .config_edits
        .send((edit, tx))
        .await
        .map_err(|_| shutting_down())?;
    rx.await.map_err(|_| shutting_down())
}

fn config_failed(message: String) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        ControlErrorCode::ConfigFailed,
        message,
    )
}

async fn target_add(
    State(state): State<Arc<ApiState>>,
    body: axum::body::Bytes,
) -> Result<Json<TargetStatus>, ApiError> {
    let req: ctl::AddTarget = parse_body(&body, "{\"url\": \"http(s)://…\", \"persist\": bool}")?;
    check_target_url(req.url.trim())?;
    let url = normalize_url(&req.url);
    // Kept in config.toml first: if the file cannot take it, nothing is started.
    let config = if req.persist {
        let outcome = edit_config(&state, ConfigEdit::AddTarget(url.clone()))
            .await?
            .map_err(|e| {
                config_failed(format!(
                    "cannot keep {url} in config.toml, so it was not added: {e}. Fix the file, or run \
                     `omnigent host {url}` in the foreground, which does not write it"
                ))
            })?;
        Some(outcome.targets)
    } else {
        None
    };
    let (tx, rx) = oneshot::channel();
    state
        .targets
        .cmds
        .send(TargetCmd::Add {
            url,
            api: !req.persist,
            config,
            reply: tx,
        })
        .await
        .map_err(|_| shutting_down())?;
    rx.await.map(Json).map_err(|_| shutting_down())
}

async fn target_remove(
    State(state): State<Arc<ApiState>>,
    body: axum::body::Bytes,
) -> Result<Json<RemoveTargetReply>, ApiError> {
    let req: ctl::RemoveTarget =
        parse_body(&body, "{\"url\": \"http(s)://…\", \"from_config\": bool}")?;
    let url = normalize_url(&req.url);
    let hosted = |url: &str| {
        state
            .targets
            .views()
            .into_iter()
            .find(|v| v.url == url)
            .map(|v| v.runners.views().len() as u32)
    };
    let before = hosted(&url);
    let mut removed_from_config = false;
    let config = if req.from_config {
        match edit_config(&state, ConfigEdit::RemoveTarget(url.clone())).await? {
            Ok(outcome) => {
                removed_from_config = outcome.changed;
                Some(outcome.targets)
            }
            // A file we cannot edit only matters when the target comes from it.
            Err(e)
                if state
                    .config
                    .borrow()
                    .config
                    .targets
                    .iter()
                    .any(|t| normalize_url(&t.url) == url) =>
            {
                return Err(config_failed(format!(
                    "cannot remove {url} from config.toml, so it is still hosted: {e}"
                )));
            }
            Err(e) => {
                tracing::warn!(server = %url, "config.toml not edited: {e}");
                None
            }
        }
    } else {
        None
    };
    let (tx, rx) = oneshot::channel();
    state
        .targets
        .cmds
        .send(TargetCmd::Remove {
            url: url.clone(),
            config,
            reply: tx,
        })
        .await
        .map_err(|_| shutting_down())?;
    let mut reply = rx.await.map_err(|_| shutting_down())?;
    reply.removed_from_config = removed_from_config;
    // The config watcher may have applied the edit first, stopping the target before this call came.
    if !reply.removed
        && let Some(runners) = before
        && hosted(&url).is_none()
    {
        reply.removed = true;
        reply.runners_stopped = runners;
    }
    Ok(Json(reply))
}
